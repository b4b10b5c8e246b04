"""Red team, issue 17 (several hosts on etcd, docs/protocol.md §19): probes with real etcd, real agents (whole
supervisors built in this process) and real worker processes.

Each probe says what it attacks. Those marked ``xfail(strict=True)`` are bugs found: they fail today and pass
once fixed (then drop the mark). The others are regression tests of attacks that are refused today.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.cluster.conftest import client, etcd, etcd_binary  # noqa: F401 (fixtures)
from tests.cluster.test_agents import FAST, Host, agent_app, running, settled, start, until
from urban_robot.cluster import EtcdClient
from urban_robot.cluster._replica import PATH, Record, encode_record, sign
from urban_robot.protocol import CacheImage
from urban_robot.supervisor import ClusterLink, ClusterOptions
from urban_robot.testing.etcd import EtcdCluster

SECRET = b"s" * 32  # agent_app's


def cluster_name(request: Any) -> str:
    return f"r-{os.getpid()}-{request.node.name[-24:].replace('_', '-')}"


def stop_all(hosts: list[Host]) -> None:
    for h in hosts:
        if not h.done.is_set():
            h.app.stop("test over")


async def raw(url: str, head: bytes, *, body: bytes = b"", wait: float = 5.0) -> bytes:
    """Send ``head`` (and ``body``) on a fresh connection; what the server answered within ``wait`` seconds."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    got = b""
    async with stream:
        await stream.send_all(head + body)
        with trio.move_on_after(wait):
            while b"\r\n\r\n" not in got:
                part = await stream.receive_some(65536)
                if not part:
                    break
                got += part
    return got


# -- an attacker with a local account, and a hostile web page: the agent's port -------------------------------
async def test_the_replica_route_refuses_strangers_before_their_body_and_a_browser_gets_nothing(
    nursery: trio.Nursery,
    tmp_path: Path,
    etcd: EtcdCluster,  # noqa: F811
    request: Any,
) -> None:
    """Unsigned: 401 on the head, with 100 MB announced and not one byte sent; a wrong secret: 401; a browser's
    preflight gets no CORS grant and its form post 401; a signed request replayed: 401; a signed oversize head:
    413 before its body; every other route keeps its own small limit although max_body is raised for the replica."""
    cluster = cluster_name(request)
    h = await start(nursery, "alpha", agent_app(tmp_path, etcd, cluster, "alpha"))
    url = h.app.url.replace("localhost", "127.0.0.1")
    with trio.fail_after(30):
        # A stranger announcing 100 MB is answered on its head alone.
        got = await raw(url, b"POST /cluster/replica HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 401"), got[:200]
        # The same from a page: a "simple" cross-origin form post cannot set the X- headers, so it is unsigned.
        async with httpx.AsyncClient(base_url=url, trust_env=False) as web:
            page = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
            assert (await web.post(PATH, content=b"x" * 1000, headers=page)).status_code == 401
            pre = await web.request(
                "OPTIONS",
                PATH,
                headers={
                    "Origin": "http://evil.example",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "x-urban-robot-signature",
                },
            )
            assert "access-control-allow-origin" not in pre.headers and pre.status_code >= 400
            # A record signed with another secret: 401.
            record = Record.of_image("shard 0", "beta", 1, 1, CacheImage.of({"k": [b"v"]}))
            body = encode_record(record)
            forged = sign(b"x" * 32, "beta", "alpha", body, time.time())
            assert (await web.post(PATH, content=body, headers=forged)).status_code == 401
            # A genuine request, replayed byte for byte: the second is refused.
            headers = sign(SECRET, "beta", "alpha", body, time.time())
            first = await web.post(PATH, content=body, headers=headers)
            assert first.status_code == 200, first.text
            again = await web.post(PATH, content=body, headers=headers)
            assert again.status_code == 401 and "replayed" in again.text
            # A genuine head announcing more than twice cache_max: 413 before the body.
            limit = 2 * h.app.robot.settings.cache_max + 1
            big = sign(SECRET, "beta", "alpha", b"", time.time(), digest=hashlib.sha256(b"").hexdigest())
            lines = "".join(f"{k}: {v}\r\n" for k, v in big.items())
            got = await raw(
                url, f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}Content-Length: {limit}\r\n\r\n".encode()
            )
            assert got.startswith((b"HTTP/1.1 413", b"HTTP/1.1 401")), got[:200]
        # Every other route: a body far beyond its own limit is refused on the head (max_body is raised for the
        # replica route only).
        for path in (
            "/api/deploy",
            "/api/stop",
            "/api/try-again",
            "/webhook/github",
            "/engine.io/?EIO=4&transport=polling",
            "/nowhere",
        ):
            got = await raw(
                url, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000000\r\n\r\n".encode()
            )
            assert got.startswith((b"HTTP/1.1 413", b"HTTP/1.1 400", b"HTTP/1.1 404")), (path, got[:200])
    stop_all([h])


# -- an etcd writer (etcd on loopback without auth: any local account) ------------------------------------------
async def test_an_identify_bucket_taken_after_a_wait_still_lives_its_six_seconds(
    client: EtcdClient,  # noqa: F811
    request: Any,
) -> None:
    """§19.9: a bucket key lives ≥ IDENTIFY_TTL (6 s), so IDENTIFYs of one key are ≥ 6 s apart across hosts. A host
    that has to wait for the bucket (another host took it 0.5 s before) keeps the etcd lease it was granted while
    waiting for up to TTL/2 = 3 s; the key it finally creates sits on that old lease and lives ~3-4 s only: the
    next host's IDENTIFY of that key follows inside Discord's 5 s window (the real Discord answers op 9)."""
    cluster = cluster_name(request)

    def link(host: str) -> ClusterLink:
        made = ClusterLink(ClusterOptions(cluster, host, ("http://unused",), timing=FAST), list)
        made.client = client
        return made

    bucket = f"/{cluster}/identify/0".encode()
    with trio.fail_after(25):
        await link("alpha").identify_slot(0)
        await trio.sleep(0.5)  # beta starts waiting half a second later: the scenario's schedule
        await link("beta").identify_slot(0)
        taken = trio.current_time()
        while (await client.get(bucket)).kv is not None:
            await trio.sleep(0.05)  # etcd's expiry, polled
        lived = trio.current_time() - taken
    assert lived >= 5.5, f"beta's IDENTIFY bucket lived {lived:.2f} s: another host may IDENTIFY that soon"


async def start_catching(nursery: trio.Nursery, name: str, app: Any) -> tuple[Host, list[BaseException]]:
    """Like ``start``, but a supervisor that dies of an exception is recorded, not raised into the test."""
    scope, done, crashed = trio.CancelScope(), trio.Event(), []

    async def run(task_status: trio.TaskStatus[None]) -> None:
        try:
            with scope:
                await app.run(task_status=task_status)
        except Exception as exc:  # the finding: recorded for the assertion
            crashed.append(exc)
        finally:
            done.set()

    await nursery.start(run)
    return Host(name, app, scope, done), crashed


@pytest.mark.parametrize(
    ("key", "value"),
    [("hosts", b"not json"), ("hosts", b'[["alpha"], "alpha"]'), ("result/zeta", b"[1]")],
    ids=["hosts-garbage", "hosts-unhashable", "result-not-an-object"],
)
async def test_a_tampered_rollout_key_is_survived_with_one_line(
    nursery: trio.Nursery,
    tmp_path: Path,
    etcd: EtcdCluster,  # noqa: F811
    client: EtcdClient,  # noqa: F811
    request: Any,
    key: str,
    value: bytes,
) -> None:
    """An etcd writer puts a value no deployer wrote at ``/<cluster>/rollout/<serial>/...`` while a rollout is in
    progress. Every agent reads it every 0.25 s (``ClusterDeploys._take_turn``): ``json.loads`` raises
    ``JSONDecodeError`` (a ValueError), ``said[host].get`` ``AttributeError``, a list in the order ``TypeError``;
    ``_follow`` catches only ``EtcdError`` and ``UrbanRobotError``, so the supervisor dies with a traceback, and
    again after every restart while the record's target is set. Expected: a warning naming the key, and the
    agent runs on."""
    from urban_robot.cluster._deploy_state import DeployStore

    cluster = cluster_name(request)
    h, crashed = await start_catching(nursery, "alpha", agent_app(tmp_path, etcd, cluster, "alpha"))
    with trio.fail_after(30):
        await settled([h])
        record = await DeployStore(client, cluster).update(lambda r: r.with_rollout("a" * 40))
        if key.startswith("result/"):
            await client.put(f"/{cluster}/rollout/{record.serial}/hosts".encode(), b'["zeta", "alpha"]')
        await client.put(f"/{cluster}/rollout/{record.serial}/{key}".encode(), value)
        with trio.move_on_after(3):  # a dozen reads of the key
            await h.done.wait()
    stop_all([h])
    assert crashed == [], repr(crashed[0])[:300]


# -- a mistake: two agents with the same cluster.host ---------------------------------------------------------
async def test_two_agents_with_one_host_name_still_run_one_processor(
    nursery: trio.Nursery,
    tmp_path: Path,
    etcd: EtcdCluster,  # noqa: F811
    client: EtcdClient,  # noqa: F811
    request: Any,
) -> None:
    """Two hosts both configured ``host = "alpha"`` (a copied config file): the lease keys carry the etcd lease, so
    neither takes the other's key for its own: one processor, and the other's worker stands by."""
    cluster = cluster_name(request)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    hosts = [
        await start(nursery, "alpha", agent_app(tmp_path / "one", etcd, cluster, "alpha")),
        await start(nursery, "alpha", agent_app(tmp_path / "two", etcd, cluster, "alpha")),
    ]
    with trio.fail_after(30):
        await settled(hosts)
        # Several re-reads and watch events later, still one.
        deadline = trio.current_time() + 3.0
        while trio.current_time() < deadline:
            assert len(running(hosts)) == 1
            await trio.sleep(0.1)
    stop_all(hosts)


async def test_two_agents_with_one_host_name_are_told_so(
    nursery: trio.Nursery,
    tmp_path: Path,
    etcd: EtcdCluster,  # noqa: F811
    request: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same mistake: each agent overwrites the other's presence key ``/<cluster>/hosts/alpha`` on its own etcd
    lease and never notices. Consequences: the other hosts see one "alpha" (caches replicate to one of the two),
    rollout results of the two mix under one name, and when one of them stops, its lease's revocation deletes the
    presence key the live one relies on, which it never writes again (``_presence_lease`` is unchanged): the
    live "alpha" is invisible to the other hosts (no replicas, skipped by rollouts) for as long as it runs.
    Expected: a one-line error on the second agent naming the clash (e.g. the presence key found on another
    etcd lease: "another agent is already called 'alpha' in cluster ...: give each host its own cluster.host")."""
    caplog.set_level(logging.INFO, logger="urban_robot")
    cluster = cluster_name(request)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    hosts = [
        await start(nursery, "alpha", agent_app(tmp_path / "one", etcd, cluster, "alpha")),
        await start(nursery, "alpha", agent_app(tmp_path / "two", etcd, cluster, "alpha")),
    ]
    with trio.fail_after(30):
        await settled(hosts)
        with trio.move_on_after(5):  # two re-reads of the presence keys and more
            while not any(
                "alpha" in r.getMessage()
                and r.levelno >= logging.WARNING
                and "host" in r.getMessage()
                and ("already" in r.getMessage() or "same" in r.getMessage())
                for r in caplog.records
            ):
                await hosts[0].app.changed().wait()
    stop_all(hosts)
    clash = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "alpha" in r.getMessage()]
    assert any("already" in m or "same" in m for m in clash), clash


# -- an etcd writer: keys no agent wrote ------------------------------------------------------------------------
async def test_a_hand_written_lease_key_on_no_etcd_lease_is_named_in_the_log(
    nursery: trio.Nursery,
    tmp_path: Path,
    etcd: EtcdCluster,  # noqa: F811
    client: EtcdClient,  # noqa: F811
    request: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``etcdctl put "/<cluster>/groups/shard 0/lease" x`` (no lease): the holder stops at once (safe), and then no
    agent can ever acquire (the key never expires): the bot is down for good. Inherent: an etcd writer is
    trusted, like a state.json editor. The bug is the silence: the holder logs "the lease key was deleted"
    (it was overwritten) and nothing says which key blocks the group or how to fix it, unlike ``/deployer``'s
    ``InvalidDeployer``. Expected: a warning naming the key and ``etcdctl del``."""
    caplog.set_level(logging.INFO, logger="urban_robot")
    cluster = cluster_name(request)
    hosts = [await start(nursery, n, agent_app(tmp_path, etcd, cluster, n)) for n in ("alpha", "beta")]
    with trio.fail_after(30):
        await settled(hosts)
        await client.put(f"/{cluster}/groups/shard 0/lease".encode(), b"x")
        await until(hosts, lambda: not running(hosts))  # the holder stopped
        with trio.move_on_after(5):
            while not any("etcdctl del" in r.getMessage() for r in caplog.records):
                await hosts[0].app.changed().wait()
    stop_all(hosts)
    assert any("etcdctl del" in r.getMessage() and "shard 0" in r.getMessage() for r in caplog.records)


async def test_a_hand_written_identify_bucket_on_no_etcd_lease_is_named_in_the_log(
    client: EtcdClient,  # noqa: F811
    request: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``etcdctl put /<cluster>/identify/0 x``: no host of the cluster may IDENTIFY a shard of key 0 again, ever
    (the key never expires); ``identify_slot`` polls every 0.25 s without a word. Expected: a warning naming the
    key and the fix (``etcdctl del``), as for ``/deployer``."""
    caplog.set_level(logging.INFO, logger="urban_robot")
    cluster = cluster_name(request)
    await client.put(f"/{cluster}/identify/0".encode(), b"x")
    made = ClusterLink(ClusterOptions(cluster, "alpha", ("http://unused",), timing=FAST), list)
    made.client = client
    with trio.move_on_after(3):
        await made.identify_slot(0)
    assert any("etcdctl del" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


# -- deploys across hosts --------------------------------------------------------------------------------------
async def test_a_rollout_failing_on_a_later_host_puts_the_earlier_hosts_back_even_in_a_new_cluster(
    nursery: trio.Nursery,
    tmp_path: Path,
    etcd: EtcdCluster,  # noqa: F811
    client: EtcdClient,  # noqa: F811
    request: Any,
) -> None:
    """A fresh cluster (its record has no last known good yet) rolls out a commit: the deployer's host runs it,
    the next host's turn fails (here: its checkout cannot fetch). The record marks it bad; the deployer's host
    logs "failed elsewhere; no earlier deploy to return to: this host keeps it" and runs the bad commit for good,
    while the others ran the old one (it went back to the record's last known good, None, not to what the host ran
    before its turn: ``Deployer._codes_before`` now). Expected (§19.7 step 3): every host that moved goes back."""
    from tests._helpers import git
    from tests.cluster.test_cluster_deploys import deployer_of, three_hosts as deploy_hosts, versions
    from urban_robot.cluster._deploy_state import DeployStore

    cluster = cluster_name(request)
    with trio.fail_after(120):
        repo, hosts = await deploy_hosts(nursery, tmp_path, etcd, cluster)
        await until(hosts, lambda: any(h.app.cluster_deploys and h.app.cluster_deploys.elected for h in hosts))
        deployer = deployer_of(hosts)
        for h in hosts:
            if h is not deployer:
                git(tmp_path / h.name / "helium", "remote", "set-url", "origin", str(tmp_path / "nowhere.git"))
        new = repo.commit('version = "2.0"\n')
        result = await deployer.app.deployer.outcome_of(deployer.app.deployer.request("test"))
        assert result.outcome == "failed", result
        record, _ = await DeployStore(client, cluster).read()
        assert new in record.bad and record.last_known_good is None
        with trio.move_on_after(20):
            await until(hosts, lambda: versions(hosts) == {"1.0"} and len(running(hosts)) == 1)
    stop_all(hosts)
    assert versions(hosts) == {"1.0"}, {h.name: [w.version for w in h.app.robot.snapshot().workers] for h in hosts}
