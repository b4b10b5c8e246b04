"""Snapshots of a sharded supervisor built by hand (the core that fills ``groups`` is not needed to test the views)."""

from __future__ import annotations

from typing import Any

import attrs

from urban_robot.socketio import Server
from urban_robot.supervisor._auth import LoginThrottle
from urban_robot.supervisor._bus import Bus
from urban_robot.supervisor._service import UrbanRobot
from urban_robot.supervisor._snapshot import GroupView, LeaseView, Snapshot, WorkerView


def sharded(groups: int = 64, per_group: int = 4, *, idle: tuple[int, ...] = (17,)) -> Snapshot:
    """``groups`` groups of ``per_group`` shards, each with a running worker (1.1, generation 2) and a standby
    (1.2, generation 3), but those in ``idle``: nobody processes them (their holder is gone, the standby waits
    out its lease)."""
    workers: list[WorkerView] = []
    views: list[GroupView] = []
    for i in range(groups):
        ids = tuple(range(i * per_group, (i + 1) * per_group))
        name = f"shards {ids[0]}-{ids[-1]}" if per_group > 1 else f"shard {ids[0]}"
        holder = f"child-{i}-a"
        running = i not in idle
        standby = WorkerView(
            f"child-{i}-b", f"sid-{i}-b", "standby", 2000 + i, "1.2", 3, None, 1.0, True, None, True, i
        )
        workers.append(standby)
        if running:
            workers.append(WorkerView(holder, f"sid-{i}-a", "running", 1000 + i, "1.1", 2, 3, 0.5, True, None, True, i))
        lease = LeaseView(holder, f"sid-{i}-a" if running else None, 3, True, False, 12.0)
        waiting = None if running else f"waiting for the previous holder's lease ({holder} epoch 3) to end in 12 s"
        views.append(
            GroupView(i, name, ids, 3, lease, holder if running else None, 1, 1 + running, waiting, "ok", 4.0, 10)
        )
    return Snapshot(
        at=100.0,
        epoch=3,
        is_sane=True,
        stopping=None,
        last_known_good="0123456789abcdef",
        lease=views[0].lease,
        workers=tuple(workers),
        failures=(),
        waiting_for=views[0].waiting_for,
        health_line="ok",
        cache_age=4.0,
        cache_bytes=10,
        groups=tuple(views),
        shard_count=groups * per_group,
    )


@attrs.define
class SnapshotRobot:
    """What the views read of a robot, answering ``snap``: the core's part of the status as ``UrbanRobot`` makes it."""

    snap: Snapshot
    bus: Bus = attrs.Factory(Bus)
    server: Server = attrs.Factory(Server)  # where the dashboard and the status routes are served
    logins: LoginThrottle = attrs.Factory(LoginThrottle)

    def snapshot(self) -> Snapshot:
        return self.snap

    def status(self, snap: Snapshot | None = None) -> dict[str, Any]:
        return UrbanRobot.status(self, snap)  # type: ignore[arg-type]
