"""The etcd client against one real etcd member (the session's): keys, transactions, leases, watches, fail-over.

Each test keeps to its own key prefix. Waits are on watch events or bounded by ``fail_after``, never a bare
sleep; the only sleeps are a renewal loop's cadence.
"""

from __future__ import annotations

import pytest
import trio

from urban_robot.cluster import (
    Compare,
    EtcdClient,
    EtcdUnavailable,
    LeaseNotFound,
    Op,
    Range,
    WatchEvent,
)
from urban_robot.testing.etcd import EtcdCluster, free_port

from .conftest import ATTEMPT


async def test_put_get_delete_with_revisions(client: EtcdClient, prefix: bytes) -> None:
    put = await client.put(prefix + b"a", b"\x00binary\xff")
    await client.put(prefix + b"b", b"two")
    got = await client.get(prefix + b"a")
    assert got.kv is not None and got.kv.value == b"\x00binary\xff"
    assert got.kv.create_revision == got.kv.mod_revision == put.revision and got.kv.version == 1
    assert got.revision > put.revision and got.member_id == put.member_id != 0

    both = await client.get(prefix, prefix=True)
    assert [kv.key for kv in both.kvs] == [prefix + b"a", prefix + b"b"] and both.count == 2

    deleted = await client.delete(prefix, prefix=True)
    assert deleted.deleted == 2 and deleted.revision > got.revision
    assert (await client.get(prefix, prefix=True)).kvs == ()
    assert (await client.delete(prefix + b"a")).deleted == 0


async def test_the_revision_strictly_increases_with_every_change(client: EtcdClient, prefix: bytes) -> None:
    seen = [
        (await client.put(prefix + b"k", b"1")).revision,
        (await client.put(prefix + b"k", b"2")).revision,
        (await client.txn([Compare.absent(prefix + b"j")], [Op.put(prefix + b"j", b"x")])).revision,
        (await client.delete(prefix + b"k")).revision,
    ]
    assert seen == sorted(set(seen)) and len(seen) == 4
    assert (await client.get(prefix + b"k")).revision == seen[-1]  # a read changes nothing


async def test_create_if_absent_two_agents_race_one_wins_the_other_sees_the_holder(
    etcd: EtcdCluster, prefix: bytes
) -> None:
    key = prefix + b"group-0/holder"
    results = {}
    async with (
        EtcdClient.open(etcd.endpoints, attempt_timeout=ATTEMPT) as a,
        EtcdClient.open(etcd.endpoints, attempt_timeout=ATTEMPT) as b,
    ):
        leases = {"a": (await a.lease_grant(5)).id, "b": (await b.lease_grant(5)).id}

        async def acquire(name: str, client: EtcdClient) -> None:
            results[name] = await client.create_if_absent(key, name.encode(), lease=leases[name])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(acquire, "a", a)
            nursery.start_soon(acquire, "b", b)
        [winner] = [name for name, result in results.items() if result.created]
        [loser] = [name for name in results if name != winner]
        won, lost = results[winner], results[loser]
        assert won.mine and not lost.mine
        assert lost.holder is not None and lost.holder.value == winner.encode()
        assert lost.holder.lease == leases[winner] and lost.epoch == won.epoch == won.revision
        assert lost.holder.create_revision == won.revision  # the epoch is the key's creation revision
        for client, lease in ((a, leases["a"]), (b, leases["b"])):
            await client.lease_revoke(lease)
    async with EtcdClient.open(etcd.endpoints) as fresh:
        assert (await fresh.get(key)).kv is None  # revoking the winner's lease deleted its key


async def test_a_lost_answer_to_our_own_create_is_recognised_as_ours(client: EtcdClient, prefix: bytes) -> None:
    lease = (await client.lease_grant(5)).id
    first = await client.create_if_absent(prefix + b"h", b"agent-1", lease=lease)
    again = await client.create_if_absent(prefix + b"h", b"agent-1", lease=lease)  # as a retry after a timeout
    assert first.created and not again.created and again.mine and again.epoch == first.epoch
    other = await client.create_if_absent(prefix + b"h", b"agent-2", lease=lease)
    assert not other.mine
    await client.lease_revoke(lease)


async def test_compare_mod_revision_guards_replace_and_release(client: EtcdClient, prefix: bytes) -> None:
    key = prefix + b"holder"
    mine = (await client.put(key, b"v1")).revision
    newer = (await client.put(key, b"v2")).revision

    stale = await client.put_if_unchanged(key, b"v3", mod_revision=mine)
    assert not stale.succeeded
    [current] = stale.responses
    assert isinstance(current, Range) and current.kv is not None and current.kv.mod_revision == newer

    assert not (await client.delete_if_unchanged(key, mod_revision=mine)).succeeded
    assert (await client.put_if_unchanged(key, b"v3", mod_revision=newer)).succeeded
    latest = (await client.get(key)).kv
    assert latest is not None and latest.value == b"v3"
    released = await client.delete_if_unchanged(key, mod_revision=latest.mod_revision)
    assert released.succeeded and (await client.get(key)).kv is None


@pytest.mark.slow
async def test_an_expired_lease_removes_its_key_and_keepalives_hold_it(client: EtcdClient, prefix: bytes) -> None:
    key = prefix + b"holder"
    grant = await client.lease_grant(1)
    assert grant.ttl >= 1
    created = await client.create_if_absent(key, b"agent", lease=grant.id)
    assert created.created

    async with client.watch(key, start_revision=created.revision + 1) as events:
        # Renewed every third of the TTL, the key outlives three TTLs: no event comes.
        with trio.move_on_after(3 * grant.ttl):
            while True:
                renewed = await client.lease_keepalive_once(grant.id)
                assert renewed.ttl == grant.ttl
                with trio.move_on_after(grant.ttl / 3):
                    event = await anext(events)
                    pytest.fail(f"the key changed while its lease was renewed: {event}")
        alive = await client.lease_ttl(grant.id)  # whole seconds left, rounded down: maybe 0
        assert alive.granted_ttl == grant.ttl and 0 <= alive.ttl <= grant.ttl

        # No more renewals: etcd expires the lease and deletes the key (a DELETE event), within the TTL and
        # etcd's expiry check (every 0.5 s).
        with trio.fail_after(grant.ttl + 3):
            event = await anext(events)
    assert event.kind == "delete" and event.kv.key == key and event.kv.mod_revision > created.revision
    assert (await client.get(key)).kv is None
    with pytest.raises(LeaseNotFound):
        await client.lease_keepalive_once(grant.id)
    with pytest.raises(LeaseNotFound):
        await client.lease_ttl(grant.id)
    with pytest.raises(LeaseNotFound, match="lease not found"):
        await client.put(key, b"late", lease=grant.id)


async def test_a_revoked_lease_takes_its_keys_with_it(client: EtcdClient, prefix: bytes) -> None:
    grant = await client.lease_grant(30)
    await client.put(prefix + b"a", b"1", lease=grant.id)
    await client.put(prefix + b"b", b"2", lease=grant.id)
    remaining = await client.lease_ttl(grant.id)
    assert 0 < remaining.ttl <= 30 and remaining.granted_ttl == grant.ttl
    await client.lease_revoke(grant.id)
    assert (await client.get(prefix, prefix=True)).kvs == ()
    with pytest.raises(LeaseNotFound):
        await client.lease_revoke(grant.id)


async def test_watch_replays_from_a_start_revision_then_follows(client: EtcdClient, prefix: bytes) -> None:
    first = (await client.put(prefix + b"a", b"1")).revision
    await client.put(prefix + b"b", b"2")
    await client.delete(prefix + b"a")
    await client.put(prefix[:-1] + b"-sibling", b"not under the prefix")

    seen: list[WatchEvent] = []
    with trio.fail_after(5):
        async with client.watch(prefix, prefix=True, start_revision=first) as events:
            async for event in events:
                seen.append(event)
                if len(seen) == 3:
                    live = await client.put(prefix + b"c", b"3")  # after the replay: a live event
                if len(seen) == 4:
                    break
    assert [(e.kind, e.kv.key, e.kv.value) for e in seen] == [
        ("put", prefix + b"a", b"1"),
        ("put", prefix + b"b", b"2"),
        ("delete", prefix + b"a", b""),
        ("put", prefix + b"c", b"3"),
    ]
    revisions = [e.kv.mod_revision for e in seen]
    assert revisions == sorted(set(revisions)) and revisions[0] == first and revisions[-1] == live.revision


async def test_one_endpoint_down_the_client_uses_the_next(etcd: EtcdCluster, prefix: bytes) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with EtcdClient.open([dead, *etcd.endpoints], attempt_timeout=ATTEMPT) as client:
        put = await client.put(prefix + b"k", b"v")
        assert put.member_id == etcd.members[0].member_id
        got = await client.get(prefix + b"k")
        assert got.kv is not None and got.kv.value == b"v"
        async with client.watch(prefix, prefix=True, start_revision=put.revision) as events:
            with trio.fail_after(5):
                event = await anext(events)
        assert event.kv.mod_revision == put.revision


async def test_every_endpoint_down_is_one_line_naming_them(prefix: bytes) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    async with EtcdClient.open(dead, attempt_timeout=ATTEMPT) as client:
        with pytest.raises(EtcdUnavailable) as caught:
            await client.get(prefix)
        with pytest.raises(EtcdUnavailable):
            async with client.watch(prefix) as events:
                await anext(events)
    message = str(caught.value)
    assert message.startswith(f"cannot reach etcd at {dead[0]}, {dead[1]}: ") and "\n" not in message
    assert message.endswith("start etcd (or the missing members) or correct the cluster's endpoints")


async def test_status_names_the_member_and_its_leader(etcd: EtcdCluster, client: EtcdClient) -> None:
    status = await client.status()
    assert status.member_id == status.leader == etcd.members[0].member_id != 0
    assert status.version.startswith("3.") and status.raft_term >= 1 and status.revision >= 1
