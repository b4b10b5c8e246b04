"""The cluster's deploy record and its deployer election (docs/protocol.md §19.1, §19.7), against real etcd."""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from urban_robot.cluster import EtcdClient, EtcdUnavailable, LeaseNotFound
from urban_robot.cluster._deploy_state import (
    MAX_BAD,
    DeployRecord,
    DeployStore,
    Election,
    InvalidDeployer,
    InvalidDeployRecord,
    Unreadable,
    UpdateContended,
    UpdateRefused,
    deploy_key,
    deployer_key,
    parse_deployer,
    parse_record,
)
from urban_robot.testing.etcd import EtcdCluster, free_port

from .conftest import ATTEMPT

A, B, C = "a" * 40, "b" * 40, "c" * 40


def commit(n: int) -> str:
    return f"{n:040x}"


def increment(record: DeployRecord) -> DeployRecord:
    return attrs.evolve(record, serial=record.serial + 1)


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A cluster name of this test only: the session's etcd is shared."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:60] + "-" + secrets.token_hex(3)


@pytest.fixture
async def other(client: EtcdClient) -> AsyncIterator[EtcdClient]:
    """A second client with its own connections: another agent."""
    async with EtcdClient.open(client.endpoints, attempt_timeout=ATTEMPT) as opened:
        yield opened


# --- the record, sans-IO -------------------------------------------------------------------------------------------


def test_a_record_is_compact_json_with_sorted_keys_and_reads_back_the_same() -> None:
    record = DeployRecord(is_sane=False, last_known_good=A, bad=(B, C), target=None, serial=3, reason="rollback")
    value = record.to_json("0" * 32)
    assert value == (
        b'{"bad":["' + B.encode() + b'","' + C.encode() + b'"],"is_sane":false,"last_known_good":"' + A.encode() + b'",'
        b'"reason":"rollback","serial":3,"target":null,"write":"' + b"0" * 32 + b'"}'
    )
    assert parse_record(value) == (record, "0" * 32)
    assert parse_record(DeployRecord().to_json()) == (DeployRecord(), "")


def valid(**changes: object) -> bytes:
    data: dict[str, object] = {"is_sane": True, "last_known_good": A, "bad": [B], "target": None, "serial": 1}
    data.update(changes)
    return json.dumps(data).encode()


TAMPERED = {
    "not JSON": b"is_sane=true",
    "not UTF-8": b'{"is_sane": \xff}',
    "a list": b"[]",
    "nested deep": b"[" * 100_000,
    "too big": b" " * 20_000 + valid(),
    "is_sane a string": valid(is_sane="yes"),
    "is_sane a number": valid(is_sane=1),
    "serial a boolean": valid(serial=True),
    "serial negative": valid(serial=-1),
    "serial huge": valid(serial=2**64),
    "serial a float": valid(serial=1.5),
    "serial NaN": valid().replace(b'"serial": 1', b'"serial": NaN'),
    "serial with 5000 digits": valid().replace(b'"serial": 1', b'"serial": ' + b"9" * 5000),
    "hash in capitals": valid(last_known_good=A.upper()),
    "hash short": valid(last_known_good=A[:39]),
    "target not a string": valid(target=123),
    "bad not a list": valid(bad=B),
    "bad too long": valid(bad=[commit(n) for n in range(MAX_BAD + 1)]),
    "bad twice the same": valid(bad=[B, B]),
    "bad holding junk": valid(bad=[B, "HEAD"]),
    "an unknown field": valid(deployer="x"),
    "a field twice": valid()[:-1] + b', "serial": 2}',
    "a field missing": json.dumps({"is_sane": True}).encode(),
    "reason of two lines": valid(reason="one\nERROR forged log line"),
    "reason too long": valid(reason="x" * 1000),
    "write tag not hex": valid(write="me"),
}


@pytest.mark.parametrize("value", TAMPERED.values(), ids=TAMPERED.keys())
def test_a_tampered_value_is_refused_in_one_line_that_says_what_to_do(value: bytes) -> None:
    with pytest.raises(InvalidDeployRecord) as caught:
        parse_record(value, "/prod/deploy")
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300
    assert message.startswith("etcd key /prod/deploy holds no valid deploy record: ")
    assert message.endswith("(etcdctl get/put/del /prod/deploy; docs/protocol.md §19.7)")
    assert "ERROR forged" not in message and "HEAD" not in message  # it quotes nothing of the value


def test_a_rollout_starts_from_a_sane_record_without_one_in_progress_and_bumps_the_serial() -> None:
    start = DeployRecord(last_known_good=A, serial=4)
    rolling = start.with_rollout(B)
    assert (rolling.target, rolling.serial) == (B, 5)
    assert rolling.with_rollout(B) is rolling and start.with_rollout(A) is start  # nothing new to do
    with pytest.raises(UpdateRefused, match=r"rollout of bbbbbbbbbbbb \(serial 5\) is in progress"):
        rolling.with_rollout(C)
    with pytest.raises(UpdateRefused, match="it failed before"):
        start.with_bad(C).with_rollout(C)
    with pytest.raises(UpdateRefused, match=r"is_sane is false \(rollback failed\): try-again first"):
        start.with_sane(False, "rollback failed").with_rollout(C)
    assert start.with_sane(False, "x").tried_again().with_rollout(C).target == C
    with pytest.raises(UpdateRefused, match="in progress"):  # back to the last known good: mark B bad first
        rolling.with_rollout(A)


def test_only_the_target_is_confirmed_and_a_bad_commit_ends_its_rollout() -> None:
    rolling = DeployRecord(last_known_good=A).with_rollout(B)
    done = rolling.confirmed(B)
    assert (done.last_known_good, done.target, done.serial) == (B, None, 1)
    assert done.confirmed(B) is done
    with pytest.raises(UpdateRefused, match="cannot confirm cccccccccccc: the rollout in progress is bbbbbbbbbbbb"):
        rolling.confirmed(C)
    failed = rolling.with_bad(B)
    assert (failed.target, failed.bad, failed.last_known_good) == (None, (B,), A)
    with pytest.raises(UpdateRefused):
        failed.confirmed(B)


def test_bad_commits_keep_the_newest_hundred_and_try_again_forgets_them() -> None:
    record = DeployRecord()
    for n in range(MAX_BAD + 5):
        record = record.with_bad(commit(n))
    assert record.bad == tuple(commit(n) for n in range(5, MAX_BAD + 5))
    assert record.with_bad(commit(50)) == record  # known already: stays where it was
    assert parse_record(record.to_json())[0] == record
    assert record.with_sane(False, "x").tried_again() == DeployRecord()


def test_values_and_names_are_checked_where_they_are_made() -> None:
    with pytest.raises(ValueError, match="40 lowercase hex"):
        DeployRecord().with_bad("HEAD")
    with pytest.raises(ValueError):
        DeployRecord(serial=-1)
    assert DeployRecord().with_sane(False, "a\nb" + "x" * 500).reason == "a b" + "x" * 197
    assert (deploy_key("prod"), deployer_key("prod")) == ("/prod/deploy", "/prod/deployer")
    for bad_name in ("", "a/b"):
        with pytest.raises(ValueError, match="without '/'"):
            deploy_key(bad_name)
    assert [parse_deployer(v) for v in (b'{"agent":"h1"}', b"junk", b'{"agent":7}', b"[" * 5000)] == ["h1", "", "", ""]


# --- the store, with etcd ------------------------------------------------------------------------------------------


async def test_an_absent_record_reads_as_the_default_and_updates_write_it(client: EtcdClient, name: str) -> None:
    store = DeployStore(client, name)
    assert await store.read() == (DeployRecord(), 0)
    rolling = await store.start_rollout(A)
    record, revision = await store.read()
    raw = (await client.get(f"/{name}/deploy".encode())).kv
    assert record == rolling == DeployRecord(target=A, serial=1)
    assert raw is not None and raw.mod_revision == revision > 0 and raw.lease == 0  # it outlives every agent
    assert await store.confirm(A) == DeployRecord(last_known_good=A, serial=1)
    assert await store.mark_bad(B) == DeployRecord(last_known_good=A, bad=(B,), serial=1)
    assert (await store.set_sane(False, "rollback failed")).reason == "rollback failed"
    assert await store.try_again() == DeployRecord(last_known_good=A, serial=1)


async def test_a_refused_or_empty_change_writes_nothing(client: EtcdClient, name: str) -> None:
    store = DeployStore(client, name)
    await store.start_rollout(A)
    before = await store.read()
    with pytest.raises(UpdateRefused):
        await store.start_rollout(B)
    assert await store.start_rollout(A) == before[0]
    assert await store.read() == before


async def test_two_clients_updating_at_once_lose_no_update_and_apply_none_twice(
    client: EtcdClient, other: EtcdClient, name: str
) -> None:
    serials = await both_increment(DeployStore(client, name), DeployStore(other, name), 20)
    assert sorted(serials) == list(range(1, 41))
    assert (await DeployStore(client, name).read())[0].serial == 40


async def both_increment(
    one: DeployStore, two: DeployStore, times: int, landed: Callable[[int], None] = lambda count: None
) -> list[int]:
    serials: list[int] = []

    async def updater(store: DeployStore) -> None:
        for _ in range(times):
            serials.append((await store.update(increment)).serial)
            landed(len(serials))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(updater, one)
        nursery.start_soon(updater, two)
    return serials


class LosesTheFirstTxnAnswer(httpx.AsyncBaseTransport):
    """Carries requests to etcd, but drops the answer to the first txn after etcd applied it, once ``meanwhile``
    (another writer) has run: the client sees a broken connection and asks the next endpoint."""

    def __init__(self, meanwhile: Callable[[], Awaitable[object]]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.meanwhile = meanwhile
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path == "/v3/kv/txn" and not self.lost:
            self.lost += 1
            await response.aread()
            await response.aclose()
            await self.meanwhile()
            raise httpx.ReadError("the connection broke before the answer", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("rival", [False, True], ids=["alone", "another-writer-in-between"])
async def test_an_update_whose_answer_was_lost_is_not_applied_twice(client: EtcdClient, name: str, rival: bool) -> None:
    """Alone: one endpoint, the call fails, the update reads its own write back. With a rival: the client asks a
    second endpoint, whose compare fails on our write and whose read shows the rival's write on top of it."""
    rival_store = DeployStore(client, name)
    await rival_store.update(increment)
    transport = LosesTheFirstTxnAnswer(lambda: rival_store.update(increment) if rival else trio.lowlevel.checkpoint())
    calls = 0

    def counted(record: DeployRecord) -> DeployRecord:
        nonlocal calls
        calls += 1
        return increment(record)

    endpoints = client.endpoints * (2 if rival else 1)
    async with EtcdClient.open(endpoints, attempt_timeout=ATTEMPT, transport=transport) as lossy:
        written = await DeployStore(lossy, name, retry_after=0.05).update(counted)
    final, _ = await rival_store.read()
    assert transport.lost == 1 and calls == 1 and written.serial == 2
    assert final.serial == (3 if rival else 2)


class RivalBeforeEachTxn(httpx.AsyncBaseTransport):
    """Carries requests to etcd; before each txn, ``rival`` writes the record: every compare fails."""

    def __init__(self, rival: Callable[[], Awaitable[object]]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.rival = rival

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v3/kv/txn":
            await self.rival()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_an_update_that_loses_every_compare_gives_up_in_one_line(client: EtcdClient, name: str) -> None:
    rival = DeployStore(client, name)
    transport = RivalBeforeEachTxn(lambda: rival.update(increment))
    async with EtcdClient.open(client.endpoints, attempt_timeout=ATTEMPT, transport=transport) as contended:
        with pytest.raises(UpdateContended) as caught:
            await DeployStore(contended, name, attempts=3).update(increment)
    assert str(caught.value) == (
        f"the deploy record /{name}/deploy changed before each of 3 attempts to update it: too many writers; "
        "try again (are several deployers elected?)"
    )
    assert (await rival.read())[0].serial == 3  # the rival's three, none of ours


async def test_an_update_waits_for_etcd_up_to_its_patience_then_lets_the_error_through() -> None:
    async with EtcdClient.open([f"http://127.0.0.1:{free_port()}"], attempt_timeout=ATTEMPT) as nowhere:
        with pytest.raises(EtcdUnavailable, match="cannot reach etcd at"):
            await DeployStore(nowhere, "prod", patience=0.2, retry_after=0.05).update(increment)


async def test_a_tampered_value_is_an_error_to_log_never_overwritten_and_fixed_with_etcdctl(
    client: EtcdClient, name: str
) -> None:
    key = f"/{name}/deploy".encode()
    store = DeployStore(client, name)
    async with store.watch() as records:
        assert await records.next() == DeployRecord()
        await client.put(key, b'{"is_sane": "yes please"}')  # what a forged or broken write leaves
        with trio.fail_after(5):
            seen = await records.next()
        for call in (store.read, lambda: store.start_rollout(A), store.try_again):
            with pytest.raises(InvalidDeployRecord, match=f"^etcd key /{name}/deploy holds no valid deploy record: "):
                await call()
        raw = (await client.get(key)).kv
        assert raw is not None and raw.value == b'{"is_sane": "yes please"}'  # nothing written over it

        # the operator: etcdctl put /<cluster>/deploy '<a valid record>' (no "write" tag needed)
        fixed = json.dumps({"is_sane": True, "last_known_good": A, "bad": [], "target": None, "serial": 7})
        await client.put(key, fixed.encode())
        with trio.fail_after(5):
            after_fix = await records.next()
        await client.delete(key)  # or etcdctl del: the default record
        with trio.fail_after(5):
            after_delete = await records.next()
    assert isinstance(seen, Unreadable) and "'is_sane' must be true or false" in str(seen.error)
    assert seen.mod_revision == raw.mod_revision
    assert after_fix == DeployRecord(last_known_good=A, serial=7) and after_delete == DeployRecord()
    assert await store.read() == (DeployRecord(), 0)


async def test_a_watch_hands_out_the_record_then_each_change_and_reads_again_after_compaction(
    client: EtcdClient, other: EtcdClient, name: str, etcd: EtcdCluster
) -> None:
    writer = DeployStore(other, name)
    await writer.start_rollout(A)
    async with DeployStore(client, name).watch() as records:
        assert await records.next() == DeployRecord(target=A, serial=1)
        await writer.confirm(A)
        with trio.fail_after(5):
            assert await records.next() == DeployRecord(last_known_good=A, serial=1)

        with trio.CancelScope() as scope:  # a cancelled wait drops the stream; the next one opens another
            scope.cancel()
            await records.next()
        await writer.start_rollout(B)
        latest = await writer.confirm(B)
        revision = (await other.get(b"/")).revision
        compacted = await client.http.post(f"{etcd.endpoints[0]}/v3/kv/compaction", json={"revision": str(revision)})
        assert compacted.status_code == 200, compacted.text
        with trio.fail_after(5):
            assert await records.next() == latest  # the changes in between are gone: the key as it is now
        await writer.mark_bad(C)
        with trio.fail_after(5):
            assert await records.next() == latest.with_bad(C)


# --- the election ----------------------------------------------------------------------------------------------------


async def test_of_two_campaigners_exactly_one_wins_until_its_etcd_lease_is_revoked(
    client: EtcdClient, other: EtcdClient, name: str
) -> None:
    leases = [(await c.lease_grant(10)).id for c in (client, other)]
    elections = [Election(client, name), Election(other, name)]
    won: dict[str, bool] = {}

    async def campaign(index: int) -> None:
        won[f"h{index}"] = await elections[index].campaign(f"h{index}", leases[index])

    async with trio.open_nursery() as nursery:
        for index in range(2):
            nursery.start_soon(campaign, index)
    [winner] = [agent for agent, ok in won.items() if ok]
    w, lo = (0, 1) if winner == "h0" else (1, 0)
    assert await elections[lo].leader() == await elections[w].leader() == winner
    assert await elections[w].campaign(winner, leases[w])  # campaigning again while leading: still leading
    assert not await elections[lo].campaign(f"h{lo}", leases[lo])
    assert (elections[w].leading, elections[lo].leading) == (True, False)

    await (client, other)[w].lease_revoke(leases[w])  # the winner's agent lost its etcd lease
    with trio.fail_after(5):
        reason = await elections[w].wait_lost()
    assert "deleted" in reason and not elections[w].leading
    assert await elections[lo].campaign(f"h{lo}", leases[lo])
    assert await elections[w].leader() == f"h{lo}"
    assert not await elections[w].campaign(winner, leases[w])  # the key is taken: its lease is not even looked at
    await elections[lo].resign()
    with pytest.raises(LeaseNotFound):  # free, but not on a lease that is gone: the agent campaigns on its next one
        await elections[w].campaign(winner, leases[w])


async def test_a_resign_deletes_our_key_only(client: EtcdClient, other: EtcdClient, name: str) -> None:
    first, second = Election(client, name), Election(other, name)
    lease_1, lease_2 = (await client.lease_grant(10)).id, (await other.lease_grant(10)).id
    assert await first.campaign("h1", lease_1)
    await first.resign()
    assert await first.leader() is None

    assert await first.campaign("h1", lease_1)
    await client.lease_revoke(lease_1)  # h1 does not know yet: it still has its term
    assert await second.campaign("h2", lease_2)
    before = (await other.get(f"/{name}/deployer".encode())).kv
    await first.resign()  # its compare on the old key's mod_revision fails: nothing deleted
    after = (await other.get(f"/{name}/deployer".encode())).kv
    assert first.term is None and before is not None and after == before
    assert await second.leader() == "h2"


async def test_a_key_overwritten_by_someone_else_ends_the_term_and_an_unreadable_one_still_leads(
    client: EtcdClient, name: str
) -> None:
    election = Election(client, name)
    lease = (await client.lease_grant(10)).id
    assert await election.campaign("h1", lease)
    intruder = (await client.lease_grant(10)).id
    await client.put(f"/{name}/deployer".encode(), b"garbage", lease=intruder)  # forged, or a bug
    with trio.fail_after(5):
        reason = await election.wait_lost()  # it watches from its own write on: nothing is missed
    assert reason == "the deployer key names someone else" and not election.leading
    assert await election.leader() == ""  # somebody unknown: nobody else can win until it is deleted
    unnamed = rf"^etcd key /{name}/deployer holds no deployer a campaign wrote \(it does not name an agent\)"
    with pytest.raises(InvalidDeployer, match=unnamed):
        await election.campaign("h1", lease)  # an error to log, once a campaign finds it
    await client.put(f"/{name}/deployer".encode(), b'{"agent":"h2"}')  # by hand: on no lease, it would never go
    with pytest.raises(InvalidDeployer, match=r"attached to no etcd lease\): no agent can be elected while it is"):
        await election.campaign("h1", lease)
    await client.delete(f"/{name}/deployer".encode())  # what the operator does
    assert await election.campaign("h1", lease)


# --- three members, the leader killed ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_updates_from_two_clients_all_land_once_and_the_deployer_stays_when_the_etcd_leader_is_killed(
    tmp_path: Path, etcd_binary: str
) -> None:
    cluster = await trio.to_thread.run_sync(lambda: EtcdCluster.start(tmp_path, size=3, binary=etcd_binary))
    with cluster:
        leader = await trio.to_thread.run_sync(cluster.leader)
        endpoints = [leader.client_url, *(m.client_url for m in cluster.members if m is not leader)]
        five_landed, killed = trio.Event(), trio.Event()

        async def kill_the_leader() -> None:
            await five_landed.wait()
            await trio.to_thread.run_sync(lambda: cluster.kill(leader))
            killed.set()

        def landed(count: int) -> None:
            if count == 5:
                five_landed.set()

        async with (
            EtcdClient.open(endpoints, attempt_timeout=ATTEMPT) as one,
            EtcdClient.open(endpoints[::-1], attempt_timeout=ATTEMPT) as two,
            trio.open_nursery() as nursery,
        ):
            deployer, rival = Election(one, "c"), Election(two, "c")
            assert await deployer.campaign("h1", (await one.lease_grant(30)).id)
            lost: list[str] = []

            async def watch_the_term() -> None:
                lost.append(await deployer.wait_lost())

            nursery.start_soon(watch_the_term)
            nursery.start_soon(kill_the_leader)  # while both go on updating
            with trio.fail_after(60):
                serials = await both_increment(DeployStore(one, "c"), DeployStore(two, "c"), 20, landed)
            final, _ = await DeployStore(one, "c").read()
            # a new etcd leader extends the leases: the deployer's key, and its term, outlive the old one
            still = (await rival.leader(), await rival.campaign("h2", (await two.lease_grant(30)).id))
            nursery.cancel_scope.cancel()
        successor = await trio.to_thread.run_sync(cluster.leader)
    assert killed.is_set() and successor is not leader
    assert sorted(serials) == list(range(1, 41)) and final.serial == 40
    assert still == ("h1", False) and lost == [] and deployer.leading


class OnLog(logging.Handler):
    """Sets ``event`` when a log line containing ``text`` is emitted (on trio's thread: the watch logs there)."""

    def __init__(self, text: str, event: trio.Event) -> None:
        super().__init__()
        self.text, self.event = text, event

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@pytest.mark.slow
async def test_a_watch_waits_through_an_etcd_outage_and_resumes_where_it_was(
    tmp_path: Path, etcd_binary: str, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = await trio.to_thread.run_sync(lambda: EtcdCluster.start(tmp_path, binary=etcd_binary))
    with cluster:
        [member] = cluster.members
        async with EtcdClient.open(cluster.endpoints, attempt_timeout=ATTEMPT) as client:
            store = DeployStore(client, "c", retry_after=0.05)
            async with store.watch() as records:
                assert await records.next() == DeployRecord()
                await trio.to_thread.run_sync(lambda: cluster.kill(member))
                seen: list[DeployRecord | Unreadable] = []
                outage = trio.Event()
                handler = OnLog("watching /c/deploy: cannot reach etcd", outage)
                logging.getLogger("urban_robot.cluster").addHandler(handler)
                try:
                    with trio.fail_after(30):  # the watch gets the update, or the test fails
                        async with trio.open_nursery() as nursery:

                            async def watch() -> None:
                                seen.append(await records.next())

                            nursery.start_soon(watch)
                            await outage.wait()
                            await trio.to_thread.run_sync(lambda: cluster.restart(member))
                            written = await store.start_rollout(A)
                finally:
                    logging.getLogger("urban_robot.cluster").removeHandler(handler)
    assert seen == [written]
    assert caplog.text.count("cannot reach etcd") == 1  # once per outage, not once per try
