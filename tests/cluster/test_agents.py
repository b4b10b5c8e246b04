"""Three agents on loopback, one real etcd, real worker processes (issue 17, docs/protocol.md §19).

Each agent is a whole supervisor (``build``) with a ``cluster`` section, its own port and state directory;
etcd's key names the one holder; a host lost with its workers hands its groups to another host's standby.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry, generate_latest

from tests._helpers import QUICK, worker_options
from urban_robot.cli import format_status
from urban_robot.cluster import EtcdClient
from urban_robot.cluster._lease import Timing
from urban_robot.protocol import CacheImage
from urban_robot.supervisor import App, ClusterLink, ClusterOptions, RoleChanged, Yield, build
from urban_robot.supervisor._status import MetricsCollector, status
from urban_robot.testing.etcd import EtcdCluster

# Short leases so that a host's loss costs a test seconds: the view is 5 × 0.99 − 0.3 = 4.65 s past a keep-alive;
# each etcd call gets 0.5 s per endpoint (a third of the keep-alive period), room for a loaded machine.
FAST = Timing(ttl=5, margin=0.3, keepalive_every=1.5, retry_after=0.5)
HOSTS = ("alpha", "beta", "gamma")


@attrs.define
class Host:
    name: str
    app: App
    scope: trio.CancelScope
    done: trio.Event


def agent_app(tmp_path: Path, etcd: EtcdCluster, cluster: str, host: str, **overrides: Any) -> App:
    (tmp_path / host).mkdir(exist_ok=True)
    options = ClusterOptions(cluster, host, etcd.endpoints, secret=b"s" * 32, timing=FAST)
    fields = {"standbys": 0, "cluster": options} | overrides
    return build(worker_options(tmp_path / host, QUICK, **fields))


async def start(nursery: trio.Nursery, name: str, app: App) -> Host:
    scope, done = trio.CancelScope(), trio.Event()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        try:
            with scope:
                await app.run(task_status=task_status)
        finally:
            done.set()

    await nursery.start(run)
    return Host(name, app, scope, done)


async def until(hosts: list[Host], predicate: Callable[[], bool]) -> None:
    """Wait (on the apps' changes, and every 50 ms for etcd's side) until ``predicate`` holds."""
    while not predicate():
        with trio.move_on_after(0.05):
            await hosts[0].app.changed().wait()


def running(hosts: list[Host], group: int = 0) -> list[tuple[str, str]]:
    """(host, identity) of every host whose core has a running worker in ``group``."""
    out = []
    for h in hosts:
        if h.done.is_set():
            continue
        view = h.app.robot.snapshot().groups
        if view and view[group].running is not None:
            out.append((h.name, view[group].running))
    return out


async def holder(client: EtcdClient, cluster: str, group: str) -> tuple[dict[str, str] | None, int]:
    found = await client.get(f"/{cluster}/groups/{group}/lease".encode())
    kv = found.kv
    return (json.loads(kv.value), kv.mod_revision) if kv is not None else (None, 0)


def same(one: CacheImage | None, other: CacheImage | None) -> bool:
    """The same entries, however their bytes are cut into chunks."""
    if one is None or other is None:
        return one is other
    return one.as_change().digest() == other.as_change().digest()


def lose_host(h: Host) -> None:
    """A host lost: every worker process SIGKILLed, the agent gone without a word (its etcd lease is not revoked)."""
    for child in list(h.app.children.children.values()):
        os.kill(child.pid, signal.SIGKILL)
    h.scope.cancel()


async def test_three_hosts_one_processor_named_by_etcd_and_a_lost_host_moves_its_group(
    nursery: trio.Nursery, tmp_path: Path, etcd: EtcdCluster, client: EtcdClient, request: Any
) -> None:
    cluster = f"c-{os.getpid()}-{request.node.name[-20:].replace('_', '-')}"
    hosts = [await start(nursery, name, agent_app(tmp_path, etcd, cluster, name)) for name in HOSTS]
    with trio.fail_after(60):
        await until(hosts, lambda: len(running(hosts)) == 1 and all(h.app.robot.snapshot().workers for h in hosts))
        [(where, identity)] = running(hosts)
        value, epoch = await holder(client, cluster, "shard 0")
        assert value == {"agent": where, "identity": identity}
        first = next(h for h in hosts if h.name == where)
        assert first.app.robot.snapshot().groups[0].epoch == epoch  # the epoch is etcd's revision of that write
        # Every other host runs a standby of the group (placement: the standbys are on other hosts).
        for h in hosts:
            if h is not first:
                await until(hosts, lambda h=h: h.app.robot.snapshot().groups[0].standbys == 1)
        # Each host says what it holds: GET /api/status's "cluster", and `urban-robot status`'s lines.
        for h in hosts:
            body = status(h.app.tracker, cluster=h.app.cluster_deploys.view if h.app.cluster_deploys else None)
            here = body["cluster"]["groups"]["shard 0"]
            assert (here["held_here"], here["granting"]) == ((True, True) if h is first else (False, False))
            assert body["cluster"]["host"] == h.name and body["cluster"]["etcd_lease"]
            text = format_status(body)
            assert ("held here:       shard 0" in text) is (h is first), text
            registry = CollectorRegistry(auto_describe=False)
            registry.register(MetricsCollector(h.app.tracker, cluster=h.app.cluster_deploys.view))
            scraped = generate_latest(registry)
            held = f'urban_robot_cluster_group_held{{group="shard 0"}} {1.0 if h is first else 0.0}'.encode()
            assert held in scraped, scraped
        lost_at = trio.current_time()
        lose_host(first)
        await first.done.wait()
        await until(hosts, lambda: len(running(hosts)) == 1)
        took = trio.current_time() - lost_at
        [(where2, identity2)] = running(hosts)
        value2, epoch2 = await holder(client, cluster, "shard 0")
    assert where2 != where and value2 == {"agent": where2, "identity": identity2}
    assert epoch2 > epoch
    # Not before etcd expired the lost agent's lease (3 s after its last refresh, at most 0.5 s before the loss).
    assert FAST.ttl - FAST.keepalive_every <= took <= FAST.ttl + 3, took
    for h in hosts:
        if not h.done.is_set():
            h.app.stop("test over")


def cluster_name(request: Any) -> str:
    return f"c-{os.getpid()}-{request.node.name[-24:].replace('_', '-')}"


async def settled(hosts: list[Host], groups: int = 1) -> None:
    """Every group runs somewhere, and every live host has a standby for each group it does not run."""

    def ok() -> bool:
        for g in range(groups):
            if len(running(hosts, g)) != 1:
                return False
        for h in hosts:
            if h.done.is_set():
                continue
            for view in h.app.robot.snapshot().groups:
                if view.running is None and view.standbys < 1:
                    return False
        return True

    await until(hosts, ok)


async def test_a_crashed_holder_moves_its_group_to_another_host_at_once(
    nursery: trio.Nursery, tmp_path: Path, etcd: EtcdCluster, client: EtcdClient, request: Any
) -> None:
    """Nobody of the group is left on the holder's host: it yields the key, another host's standby takes it."""
    cluster = cluster_name(request)
    hosts = [await start(nursery, name, agent_app(tmp_path, etcd, cluster, name)) for name in HOSTS]
    with trio.fail_after(60):
        await settled(hosts)
        [(where, identity)] = running(hosts)
        _, epoch = await holder(client, cluster, "shard 0")
        first = next(h for h in hosts if h.name == where)
        killed_at = trio.current_time()
        os.kill(first.app.children.children[identity].pid, signal.SIGKILL)
        await until(hosts, lambda: running(hosts) and running(hosts)[0][1] != identity)
        took = trio.current_time() - killed_at
        [(where2, identity2)] = running(hosts)
        value2, epoch2 = await holder(client, cluster, "shard 0")
    assert where2 != where and value2 == {"agent": where2, "identity": identity2} and epoch2 > epoch
    assert took < FAST.ttl - FAST.keepalive_every, took  # no lease to wait out: the key was given up
    for h in hosts:
        h.app.stop("test over")


async def test_a_stopped_agent_gives_its_groups_up_before_its_ttl(
    nursery: trio.Nursery, tmp_path: Path, etcd: EtcdCluster, client: EtcdClient, request: Any
) -> None:
    """``systemctl stop`` on the holder's host: its worker shuts down, its etcd lease is revoked, another takes over."""
    cluster = cluster_name(request)
    hosts = [await start(nursery, name, agent_app(tmp_path, etcd, cluster, name)) for name in HOSTS]
    with trio.fail_after(60):
        await settled(hosts)
        [(where, _)] = running(hosts)
        first = next(h for h in hosts if h.name == where)
        stopped_at = trio.current_time()
        first.app.stop("maintenance")
        await first.done.wait()
        await until(hosts, lambda: len(running(hosts)) == 1)
        took = trio.current_time() - stopped_at
        [(where2, identity2)] = running(hosts)
        value2, _ = await holder(client, cluster, "shard 0")
        presence = await client.get(f"/{cluster}/hosts/{where}".encode())
    assert where2 != where and value2 == {"agent": where2, "identity": identity2}
    assert presence.kv is None  # its presence went with its etcd lease
    assert took < FAST.ttl, took
    for h in hosts:
        if not h.done.is_set():
            h.app.stop("test over")


async def test_etcd_down_stops_every_processor_within_the_view_and_back_up_one_processes_again(
    nursery: trio.Nursery, tmp_path: Path, request: Any
) -> None:
    """etcd without quorum (its one member frozen): every agent stops granting at its view's end, every worker
    stops by its lease's end; nothing new is granted; once etcd is back, exactly one processes again."""
    cluster = cluster_name(request)
    with EtcdCluster.start(tmp_path / "etcd", heartbeat_ms=25, election_ms=250) as etcd:
        hosts = [await start(nursery, name, agent_app(tmp_path, etcd, cluster, name)) for name in HOSTS]
        with trio.fail_after(60):
            await settled(hosts)
            etcd.pause(etcd.members[0])
            paused_at = trio.current_time()
            await until(hosts, lambda: not running(hosts))
            took = trio.current_time() - paused_at
            # Nobody is promoted while etcd is down, however long.
            with trio.move_on_after(FAST.ttl):
                await until(hosts, lambda: bool(running(hosts)))
            assert running(hosts) == []
            etcd.resume(etcd.members[0])
            await until(hosts, lambda: len(running(hosts)) == 1)
        # The view ends by ttl × (1 − ρ) − m after the last keep-alive sent; the worker's lease then stops it
        # (QUICK's lease is 4 s, capped by the view), and the core notices at the lease's end plus its margin.
        assert took <= FAST.view_length + QUICK.lease_margin + 1.0, took
        for h in hosts:
            h.app.stop("test over")


async def test_two_shard_groups_on_three_hosts_each_processed_once_and_a_lost_host_moves_only_its_groups(
    nursery: trio.Nursery, tmp_path: Path, etcd: EtcdCluster, client: EtcdClient, request: Any
) -> None:
    cluster = cluster_name(request)
    hosts = [
        await start(nursery, name, agent_app(tmp_path, etcd, cluster, name, shard_count=4, shards_per_worker=2))
        for name in HOSTS
    ]
    with trio.fail_after(60):
        await settled(hosts, groups=2)
        before = {g: running(hosts, g)[0] for g in (0, 1)}
        for g, name in enumerate(("shards 0-1", "shards 2-3")):
            value, _ = await holder(client, cluster, name)
            assert value == {"agent": before[g][0], "identity": before[g][1]}
        victim = next(h for h in hosts if h.name == before[0][0])
        lose_host(victim)
        await victim.done.wait()
        await until(hosts, lambda: all(len(running(hosts, g)) == 1 for g in (0, 1)))
        after = {g: running(hosts, g)[0] for g in (0, 1)}
    assert after[0][0] != victim.name
    if before[1][0] != victim.name:
        assert after[1] == before[1]  # a group held elsewhere is untouched
    for h in hosts:
        if not h.done.is_set():
            h.app.stop("test over")


async def test_identify_slots_are_spaced_across_hosts(client: EtcdClient, request: Any) -> None:
    """Discord's IDENTIFY rate limit is the bot's, whichever host a shard runs on: a bucket taken by one host is
    taken for every host until its short etcd lease runs out; another bucket is free meanwhile."""
    cluster = cluster_name(request)

    def link(host: str) -> ClusterLink:
        made = ClusterLink(ClusterOptions(cluster, host, ("http://unused",), timing=FAST), list)
        made.client, made.identify_ttl = client, 2
        return made

    alpha, beta = link("alpha"), link("beta")
    with trio.fail_after(20):
        await alpha.identify_slot(0)
        taken = trio.current_time()
        await beta.identify_slot(1)  # another rate limit key: at once
        assert trio.current_time() - taken < 1.0
        await beta.identify_slot(0)  # key 0 again, from another host: once alpha's bucket went
        waited = trio.current_time() - taken
    assert waited >= 2 - 0.1, waited  # etcd expires a lease no sooner than its TTL (its clock, ours within 5%)


async def test_the_holders_cache_is_on_another_hosts_disk_and_follows_the_group_to_it(
    nursery: trio.Nursery, tmp_path: Path, etcd: EtcdCluster, client: EtcdClient, request: Any
) -> None:
    """§19.8: the holder's acknowledged cache is on at least one other host's disk; a lost host's successor starts
    from it (its core has it, and pushes it to its new holder)."""
    from tests._helpers import WORKER

    cluster = cluster_name(request)
    command = (*WORKER, "--cache-bytes", "3000000")  # three 1 MB entries, synced once processing
    hosts = [await start(nursery, name, agent_app(tmp_path, etcd, cluster, name, command=command)) for name in HOSTS]
    with trio.fail_after(60):
        await settled(hosts)
        [(where, _)] = running(hosts)
        first = next(h for h in hosts if h.name == where)
        await until(hosts, lambda: first.app.robot.core.cache is not None)
        image = first.app.robot.core.cache
        assert image is not None and image.size >= 3_000_000
        # Acknowledged to the worker only once another host had it on disk: both others have it by now or soon.
        others = [h for h in hosts if h is not first]
        await until(hosts, lambda: all(same(h.app.robot.core.cache, image) for h in others))
        for h in others:  # on that host's disk too (a moment after its core has it: the writer is behind)
            await until(hosts, lambda h=h: same(h.app.robot.store.load_cache()[0], image))
        lose_host(first)
        await first.done.wait()
        await until(hosts, lambda: len(running(hosts)) == 1)
        [(where2, _)] = running(hosts)
        second = next(h for h in hosts if h.name == where2)
    assert same(second.app.robot.core.cache, image)
    for h in hosts:
        if not h.done.is_set():
            h.app.stop("test over")


async def test_a_cache_no_other_host_took_is_not_acknowledged_to_the_worker(
    nursery: trio.Nursery, tmp_path: Path, etcd: EtcdCluster, request: Any
) -> None:
    """Alone in its cluster, a host keeps the holder's cache on its own disk but does not acknowledge it: an
    acknowledged write is on two hosts' disks (§19.8); the worker hears why, and sends it again later."""
    from tests._helpers import WORKER

    cluster = cluster_name(request)
    command = (*WORKER, "--cache-bytes", "1000")
    alone = await start(nursery, "alpha", agent_app(tmp_path, etcd, cluster, "alpha", command=command))
    with trio.fail_after(60):
        await until([alone], lambda: alone.app.robot.core.cache is not None)
        [(_, identity)] = running([alone])
        log = Path(alone.app.children.logs[identity])
        while "cache_refused: kept on this host only" not in log.read_text():
            await trio.sleep(0.05)  # the worker's log file (another process) says it once the answer is in
    stored, _ = alone.app.robot.store.load_cache()
    assert same(stored, alone.app.robot.core.cache)  # on this host's disk all the same
    alone.app.stop("test over")


async def test_the_etcd_leader_killed_under_three_agents_changes_nothing_they_do(
    nursery: trio.Nursery, tmp_path: Path, request: Any
) -> None:
    """A 3-member etcd loses its leader (SIGKILL): the other two elect a new one within an election timeout, and
    the agents' keep-alives, watches and txns fail over to them. The holder keeps processing (its grant never
    lapses), nobody else is promoted, and a host lost afterwards still fails over through the two members left."""
    cluster = cluster_name(request)
    with EtcdCluster.start(tmp_path / "etcd", size=3, heartbeat_ms=25, election_ms=250) as etcd:
        hosts = [await start(nursery, name, agent_app(tmp_path, etcd, cluster, name)) for name in HOSTS]
        changes: list[RoleChanged] = []
        with trio.fail_after(90):
            await settled(hosts)
            for h in hosts:
                h.app.bus.subscribe(RoleChanged, changes.append)
            [(where, identity)] = running(hosts)
            epoch = next(h for h in hosts if h.name == where).app.robot.snapshot().groups[0].epoch
            etcd.kill(etcd.leader())
            new_leader = await trio.to_thread.run_sync(etcd.leader)
            # Several keep-alive periods pass on the two members left: the holder is renewed all along.
            deadline = trio.current_time() + 3 * FAST.keepalive_every
            while trio.current_time() < deadline:
                assert running(hosts) == [(where, identity)]
                await trio.sleep(0.1)
            assert next(h for h in hosts if h.name == where).app.robot.snapshot().groups[0].epoch == epoch
            assert [c for c in changes if c.new == "running"] == []  # no promotion anywhere
            victim = next(h for h in hosts if h.name == where)
            lose_host(victim)
            await victim.done.wait()
            await until(hosts, lambda: len(running(hosts)) == 1)
        assert running(hosts)[0][0] != where and new_leader.running
        for h in hosts:
            if not h.done.is_set():
                h.app.stop("test over")


async def test_a_planned_stop_hands_the_final_cache_to_the_next_host(
    nursery: trio.Nursery, tmp_path: Path, etcd: EtcdCluster, request: Any
) -> None:
    """The holder's host stops: its worker's final cache (changes made since its last sync) reaches another host
    before the group's key goes, so the next holder, there, starts from it (P3 across hosts)."""
    cluster = cluster_name(request)
    for name in HOSTS:  # the rehearsal bot: 2 MB synced once processing, then 1 MB changed, left for the final cache
        (tmp_path / name / "bot").mkdir(parents=True)
        (tmp_path / name / "bot" / "rehearsal.toml").write_text("cache_bytes = 2000000\ncache_changed = 1000000\n")
    hosts = [await start(nursery, name, agent_app(tmp_path, etcd, cluster, name)) for name in HOSTS]
    promoted_with: dict[str, CacheImage | None] = {}  # host -> its core's cache as it promoted (what it pushed)
    with trio.fail_after(60):
        await settled(hosts)
        for h in hosts:

            def note(change: RoleChanged, h: Host = h) -> None:
                if change.new == "running":
                    promoted_with[h.name] = h.app.robot.core.cache

            h.app.bus.subscribe(RoleChanged, note)
        [(where, identity)] = running(hosts)
        first = next(h for h in hosts if h.name == where)
        log = Path(first.app.children.logs[identity])
        while f"{identity} cache_changed" not in log.read_text():
            await trio.sleep(0.05)  # the worker's log (another process): its changes made, not synced yet
        given_up: list[CacheImage | None] = []  # its cache as its host gave the group up (later, as it stops, it
        first.app.bus.subscribe(Yield, lambda _: given_up.append(first.app.robot.core.cache))  # takes replicas)
        first.app.stop("maintenance")
        await first.done.wait()
        final = given_up[0]
        assert final is not None
        await until(hosts, lambda: len(running(hosts)) == 1)
        [(where2, _)] = running(hosts)
        second = next(h for h in hosts if h.name == where2)
    assert same(promoted_with[second.name], final)  # (its new holder writes a cache of its own right after)
    for h in hosts:
        if not h.done.is_set():
            h.app.stop("test over")
