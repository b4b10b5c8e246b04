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

from tests._helpers import QUICK, worker_options
from urban_robot.cluster import EtcdClient
from urban_robot.cluster._lease import Timing
from urban_robot.supervisor import App, ClusterOptions, build
from urban_robot.testing.etcd import EtcdCluster

# Short leases so that a host's loss costs a test seconds: the view is 3 × 0.99 − 0.3 = 2.67 s past a keep-alive.
FAST = Timing(ttl=3, margin=0.3, keepalive_every=0.5, retry_after=0.5)
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
