"""Shard groups with real worker processes (issue 16, docs/protocol.md §18): one running worker per group, each
group with its own standbys, lease, epochs (persisted) and cache; one group is today's supervisor."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import trio

from tests._helpers import QUICK, worker_options
from urban_robot.supervisor import App, Notify, ProcessExited, RoleChanged, build


async def until(app: App, predicate: Any) -> None:
    while not predicate():
        await app.changed().wait()


def all_running(app: App, standbys: int = 1) -> bool:
    snap = app.robot.snapshot()
    return all(g.running is not None and g.standbys >= standbys for g in snap.groups)


def sharded(tmp_path: Path, **overrides: Any) -> App:
    return build(worker_options(tmp_path, QUICK, shard_count=4, shards_per_worker=2, **overrides))


async def test_each_group_runs_its_own_worker_with_its_shards_and_its_own_standby(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = sharded(tmp_path)
    with trio.fail_after(60):
        await nursery.start(app.run)
        await until(app, lambda: all_running(app))
    snap = app.robot.snapshot()
    assert [g.name for g in snap.groups] == ["shards 0-1", "shards 2-3"]
    assert [g.shard_ids for g in snap.groups] == [(0, 1), (2, 3)]
    assert snap.shard_count == 4
    by_group = {g.index: [w for w in snap.workers if w.group == g.index] for g in snap.groups}
    assert all(len(workers) == 2 for workers in by_group.values())  # one running + one standby each
    holders = {g.index: g.running for g in snap.groups}
    assert holders[0] != holders[1]
    for index, workers in by_group.items():
        assert holders[index] in {w.identity for w in workers}  # a group's holder is one of its own workers
    # Each child was told its own shards in its hello (the rehearsal bot logs them).
    for index, shards in ((0, "[0, 1]"), (1, "[2, 3]")):
        for w in by_group[index]:
            log = Path(app.children.logs[w.identity]).read_text()
            assert f"hello shards {shards} of 4" in log
    # state.json: each group's epoch and holder, by name; the top-level epoch is the highest.
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert set(state["groups"]) == {"shards 0-1", "shards 2-3"}
    assert state["groups"]["shards 2-3"]["holder"]["identity"] == holders[1]
    assert state["epoch"] == max(g["epoch"] for g in state["groups"].values())
    app.stop("test over")


async def test_a_dead_holder_fails_over_in_its_group_only(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = sharded(tmp_path)
    changes: list[RoleChanged] = []
    exits: list[ProcessExited] = []
    with trio.fail_after(60):
        await nursery.start(app.run)
        await until(app, lambda: all_running(app))
        app.bus.subscribe(RoleChanged, changes.append)
        app.bus.subscribe(ProcessExited, exits.append)
        before = app.robot.snapshot().groups
        victim = before[1].running
        assert victim is not None
        os.kill(app.children.children[victim].pid, signal.SIGKILL)
        await until(app, lambda: app.robot.snapshot().groups[1].running not in (None, victim))
        after = app.robot.snapshot().groups
    assert after[0].running == before[0].running and after[0].epoch == before[0].epoch  # group 0 untouched
    assert after[1].epoch == before[1].epoch + 1  # group 1's own sequence moved on
    assert [e.group for e in exits if e.identity == victim] == [1]
    promoted = [c for c in changes if c.new == "running"]
    assert promoted and all(c.group == 1 for c in promoted)
    # Its replacement was spawned for group 1: that group is back to one running and one standby.
    with trio.fail_after(60):
        await until(app, lambda: all_running(app))
    assert sum(1 for w in app.robot.snapshot().workers if w.group == 1) == 2
    app.stop("test over")


async def test_epochs_and_holders_per_group_survive_a_restart_and_only_grow(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = sharded(tmp_path)
    with trio.fail_after(60):
        await nursery.start(app.run)
        await until(app, lambda: all_running(app))
        first = [g.epoch for g in app.robot.snapshot().groups]
        app.stop("restart")
        await app.stop_requested.wait()
    # wait for the first run to end: its lock released
    with trio.fail_after(60):
        while True:
            try:
                again = sharded(tmp_path)
                break
            except Exception:  # the state directory is still locked by the stopping app
                await trio.sleep(0.05)
        await nursery.start(again.run)
        await until(again, lambda: all_running(again))
    second = [g.epoch for g in again.robot.snapshot().groups]
    assert all(b > a for a, b in zip(first, second, strict=True))
    again.stop("test over")


async def test_a_change_of_plan_waits_out_the_old_holders_and_never_reuses_an_epoch(tmp_path: Path) -> None:
    """state.json of an unsharded run read by a sharded one: every group starts above the old epoch and waits for
    the old holder's lease (it may still process any shard); nobody adopts it."""
    from urban_robot.protocol import ShardPlan
    from urban_robot.supervisor._fleet import Fleet

    old = {
        "version": 1,
        "epoch": 7,
        "is_sane": True,
        "last_known_good": "abc",
        "holder": {"identity": "child-x-1", "epoch": 7, "token": "t"},
    }
    fleet = Fleet(QUICK, ShardPlan(4, 2), state=old, now=100.0)
    for core in fleet.groups:
        assert core.epoch == 7
        assert core.lease is not None and core.lease.identity == "child-x-1" and core.lease.token is None
    assert fleet.last_known_good_hash == "abc"
    state = fleet.state()
    assert state["epoch"] == 7 and set(state["groups"]) == {"shards 0-1", "shards 2-3"}
    # The same plan read back: each group's own epoch and holder.
    state["groups"]["shards 2-3"] = {"epoch": 12, "holder": None}
    again = Fleet(QUICK, ShardPlan(4, 2), state=state, now=200.0)
    assert [core.epoch for core in again.groups] == [7, 12]
    assert again.groups[1].lease is None


async def test_one_group_keeps_the_v1_state_file(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = build(worker_options(tmp_path, QUICK, shard_count=4))  # all shards in one worker: one group
    notes: list[Notify] = []
    app.bus.subscribe(Notify, notes.append)
    with trio.fail_after(60):
        await nursery.start(app.run)
        await until(app, lambda: all_running(app))
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert "groups" not in state and state["holder"] is not None
    assert [g.name for g in app.robot.snapshot().groups] == ["all shards"]
    assert not any(n.message.startswith("shards") for n in notes)  # no group prefix on what is said
    app.stop("test over")
