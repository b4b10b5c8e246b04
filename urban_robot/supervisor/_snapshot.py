"""What the core knows, frozen at one instant: the one thing every view reads (sans-IO).

``Supervisor.snapshot(now)`` makes one; ``UrbanRobot.snapshot()`` takes it at the trio clock's now. The
status API, the metrics, the dashboard, the CLI banner, systemd's status line, dev mode, the deployer and
the pytest plugin read a snapshot, never the core's mutable insides: what they show is one consistent
moment, and the core may change its insides without breaking them.

Times are durations relative to the snapshot's ``at`` (seconds), except ``at`` itself (core time).
A worker is named by its identity (what the process manager spawned, or ``worker:NAME``); ``sid`` is its
connection id, for where one identity has two connections (a reconnect before the old one is gone).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class WorkerView:
    identity: str
    sid: str  # its connection id
    role: str
    pid: int | None
    version: str | None
    generation: int | None
    holds: int | None  # the lease epoch it holds, if it holds the lease
    silent_for: float  # since it last said anything (its one liveness clock, the core's)
    gateway: bool | None  # its Discord Gateway as last reported (None: never said)
    gateway_down_for: float | None
    cache_current: bool  # it holds the supervisor's newest cache
    group: int = 0  # its shard group (index in ``Snapshot.groups``)


@attrs.frozen
class LeaseView:
    identity: str
    sid: str | None  # None while its holder is not connected
    epoch: int
    confirmed: bool
    stopping: bool
    expires_in: float


@attrs.frozen
class FailureView:
    kind: str
    identity: str
    generation: int | None
    version: str | None
    reason: str
    hint: str
    ago: float


@attrs.frozen
class GroupView:
    """One shard group (docs/protocol.md §18): its own lease, epoch sequence, standbys and cache.

    Unsharded there is one, named ``"all shards"``, holding what the top-level fields say.
    """

    index: int
    name: str  # "shards 0-3", "shard 4": stable across restarts (its ids only)
    shard_ids: tuple[int, ...]  # empty when unsharded
    epoch: int
    lease: LeaseView | None
    running: str | None  # the connected holder's identity
    standbys: int  # approved standbys that may be promoted now
    workers: int  # its connected workers, in any role
    waiting_for: str | None
    health_line: str
    cache_age: float | None
    cache_bytes: int | None


@attrs.frozen
class Snapshot:
    at: float  # core time
    epoch: int
    is_sane: bool
    stopping: str | None  # why the supervisor stops (None: it does not)
    last_known_good: str | None
    lease: LeaseView | None
    workers: tuple[WorkerView, ...]
    failures: tuple[FailureView, ...]  # oldest first
    waiting_for: str | None  # what a promotion waits for (None: a worker runs)
    health_line: str  # the bot's health in one line (systemd's STATUS=)
    cache_age: float | None  # since the kept cache was accepted
    cache_bytes: int | None  # the kept cache's entries, as the worker encoded them
    # Every shard group, in order (one when unsharded: what the fields above say). With several, the fields
    # above (epoch, lease, waiting_for, cache) are group 0's; ``workers`` and ``health_line`` are everyone's.
    groups: tuple[GroupView, ...] = ()
    shard_count: int | None = None  # None: unsharded

    @property
    def running(self) -> WorkerView | None:
        """The connected lease holder, if any."""
        return next((w for w in self.workers if w.holds is not None), None)

    @property
    def spawning(self) -> bool:
        """Whether new workers may start: sane, and not stopping."""
        return self.is_sane and self.stopping is None

    def worker(self, sid: str) -> WorkerView | None:
        """The worker on connection ``sid``, if it is connected."""
        return next((w for w in self.workers if w.sid == sid), None)
