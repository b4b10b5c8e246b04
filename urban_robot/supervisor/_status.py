"""Read-only views of a running supervisor: ``GET /api/status`` (JSON) and ``GET /metrics`` (Prometheus).

``install_status_routes(robot, admin_token=...)`` adds both routes to ``robot.server``. Both need the admin
credential (``Authorization: Bearer <token>``, as the admin POST routes do): they name workers and pids.
``public_metrics=True`` serves ``/metrics`` without it (a scraper on a trusted network).

``GET /api/status`` answers ``200`` with::

    {
      "running": str | null,            # the connected lease holder's identity
      "epoch": int,                     # the last lease epoch handed out
      "is_sane": bool,                  # false: no spawns, deploys or hand-overs until try_again
      "last_known_good": str | null,    # the last deployed commit confirmed by a promotion
      "waiting_for": str | null,        # what a promotion waits for, and how long (null: a worker runs)
      "cache_age": float | null,        # seconds since the running worker's cache was accepted
      "lease": null | {"identity": str, "epoch": int, "connected": bool, "confirmed": bool,
                       "stopping": bool, "expires_in": float},
      "workers": [{"identity": str, "sid": str, "pid": int | null, "role": str, "version": str | null,
                   "generation": int | null, "heartbeat_age": float, "epoch": int | null,
                   "gateway": bool | null, "gateway_down_for": float | null}],
      "failures": [{"kind": str, "identity": str, "generation": int | null, "version": str | null,
                    "reason": str, "hint": str, "at": float}],             # oldest first
      "promotions": int, "failovers": int,   # since this supervisor process started
      "deploys": [{"commit": str, "outcome": str}],             # with a deployer: the last 10, oldest first
      "children": [{"identity": str, "pid": int, "generation": int}],  # with a process manager
      "notifications": {"queued": int, "dropped": int, "failed": int},  # with a Discord notifier
      "shard_count": int | null,        # null: unsharded
      "groups": [{"index": int, "name": str, "shard_ids": [int], "epoch": int, "running": str | null,
                  "lease": null | {...as "lease"}, "standbys": int, "workers": int,
                  "waiting_for": str | null, "cache_age": float | null}],   # one ("all shards") unsharded
      "group_timeline": {"now": float, "window": float, "marks": [mark],    # each group's last hour
                         "groups": [{"index": int, "known_from": float, "marks": [mark],
                                     "spans": [{"worker": str, "epoch": int | null, "version": str | null,
                                                "generation": int | null, "from": float, "to": float | null}],
                                     "gaps": [{"from": float, "to": float | null}]}]},
      "timeline": [{"at": float, "kind": str, "level": str, "worker": str | null, "text": str}],
      "cluster": {"name": str, "host": str, "url": str, "etcd": [str], "etcd_lease": str | null,
                  "view_left": float | null, "ttl": int, "peers": {name: url}, "deployer": str | null,
                  "elected": bool, "groups": {name: {"state": str, "held_here": bool, "granting": bool,
                                                    "epoch": int | null}},
                  "deploy": {"is_sane": bool, "last_known_good": str | null, "target": str | null,
                             "serial": int, "bad": [str]}}     # several hosts only (docs/protocol.md §19)
    }

Each worker also carries ``group`` (its group's index). ``group_timeline`` is ``_history.GroupHistory``'s
view (its docstring); a ``mark`` is ``{"at", "kind", "level", "text"}``. The tracker draws a span from a
worker's ``RoleChanged`` into ``running`` until it leaves ``running``/``stopping``; the core's ``Verdict``
on a group's candidate marks that group; a ``DeployResult`` (not a no-op) and rollbacks mark every group.
When the core leaves ``Snapshot.groups`` empty, ``groups_of`` makes the one group from the top-level fields.

A worker is named by its ``identity`` (the process manager's name for it, or ``worker:NAME``); ``sid`` is its
connection id, which tells two connections of one identity apart (a reconnect before the old one is gone).
``heartbeat_age`` is the time since the worker's last message of any kind (heartbeats are most of
them), or since it connected: the core's one liveness clock, which fences it off when it grows past the
limit. ``epoch`` in a worker is the lease epoch it holds, if it holds it.
``gateway`` is the worker's Discord Gateway as it last reported it (``null``: it never said, counted as
up); ``gateway_down_for`` the seconds since it reported it down, while it is down.

``failures`` holds the last ``failed`` (docs/protocol.md §5.9) of each kind of worker (a generation's
children, or one external worker): who, what could not work, what to do, and when (``at``, wall-clock
Unix time). One stays until a worker of its kind (or of a newer generation) passes a health check.

Everything but the tracker's counts and timeline is read from one ``Snapshot`` of the core. The tracker
hears (subscribed in ``_assembly.build``) each core event (``note``), each action (``observe``: promotions,
failovers, replacement spawns, ``is_sane`` from each persisted state) and each deploy's result (``deployed``).

``timeline`` is what happened lately, oldest first, at most ``TIMELINE_SIZE`` entries (a ring: the
oldest go first): ``at`` is wall-clock Unix time; ``kind`` one of ``role`` (a worker's role changed;
not the steps every start takes, to ``identified`` and ``checking``),
``worker`` (connected, disconnected, process exited, spawn asked for), ``deploy`` (a deploy's outcome),
``rollback`` (asked for, finished), ``sanity`` (``is_sane`` changed, ``try_again``), ``notice`` (a warning
the core raised: failed health check, crash loop...); ``level`` is ``info``, ``warning`` or ``critical``.
Repeated no-op deploy outcomes (``up to date``, ``known bad``, ``insane``: a periodic fetch) are noted once.
The tracker publishes ``ViewsChanged`` on the bus after anything the views show may have changed (the
dashboard pushes then).

Definitions behind the metrics (all times on the supervisor's trio clock):

- a *promotion* is a worker moving ``standby -> running`` (a new lease epoch). A holder that
  reconnects and takes its own lease back (``identified -> running``) is no promotion.
- a *failover* is a promotion whose previous lease did not end with the holder acknowledging a stop
  (coma or shutdown ack): the holder was lost (disconnected, silent, exited, lease expired), or the
  lease was restored from disk and ran out. A deploy's hand-over to newer code is no failover, and
  neither is the very first promotion (epoch 1).
- a *restart* is a ``Spawn`` the core asked for: a replacement for a worker process that exited
  unasked, or ``try_again`` with no worker left.
- ``urban_robot_cache_bytes`` is the size of the kept cache: its entries' bytes, as the worker encoded them.
- per group (label ``group``, its name; ``all shards`` unsharded): ``urban_robot_group_processing``,
  ``urban_robot_group_epoch``, ``urban_robot_group_standbys`` and the counter
  ``urban_robot_group_without_processor_seconds_total`` (since the tracker started, start-up included).
"""

from __future__ import annotations

import collections
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..web import Request, Response
from ._api import RouteHandler, cookie_matches, refusal
from ._auth import LoginThrottle
from ._bus import ViewsChanged
from ._events import (
    Action,
    Connected,
    Disconnected,
    Notify,
    Persist,
    ProcessExited,
    Reply,
    RoleChanged,
    RollBack,
    RollbackFinished,
    Spawn,
    TryAgain,
    Verdict,
)
from ._history import GroupHistory
from ._roles import Role
from ._service import UrbanRobot
from ._snapshot import GroupView, LeaseView, Snapshot

DEPLOY_HISTORY_SHOWN = 10
TIMELINE_SIZE = 200
QUIET_DEPLOY_OUTCOMES = frozenset({"up to date", "known bad", "insane"})  # noted once, not at every poll
QUIET_ROLES = frozenset({Role.IDENTIFIED.value, Role.CHECKING.value})  # steps of every start: not timeline news
DEPLOY_LEVELS = {"deployed": "info", "failed": "warning", "error": "warning", "insane": "warning"}
PROCESSING = frozenset({Role.RUNNING.value, Role.STOPPING.value})  # a stopping holder processes until it acks
UNSHARDED = "all shards"  # the one group's name when unsharded (as the core names it)


class _DeployerLike(Protocol):
    history: list[tuple[str, str]]


class Timeline:
    """The last ``size`` things that happened, oldest first, each stamped with wall-clock time."""

    def __init__(self, size: int = TIMELINE_SIZE, *, clock: Callable[[], float] = time.time) -> None:
        self.entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self.clock = clock

    def add(self, kind: str, text: str, *, level: str = "info", worker: str | None = None) -> None:
        self.entries.append({"at": self.clock(), "kind": kind, "level": level, "worker": worker, "text": text})


class _ChildrenLike(Protocol):
    @property
    def children(self) -> dict[str, Any]: ...


class _NotifierLike(Protocol):
    dropped: int
    failed: int


class StatusTracker:
    """Counts and the timeline the supervisor's public views add to the core's snapshot.

    What it hears is subscribed in one place (``_assembly.build``): ``note`` each core event,
    ``observe`` each action, ``noted`` each ``Handled``, ``deployed`` each ``DeployResult``."""

    def __init__(
        self,
        robot: UrbanRobot,
        *,
        deployer: _DeployerLike | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.robot = robot
        self.promotions = 0
        self.failovers = 0
        self.restarts = 0
        self.clock = wall_clock
        self.timeline = Timeline(clock=wall_clock)
        self.group_history = GroupHistory(wall_clock())  # each group's last hour: who processed, gaps, deploys
        self._clean_release: set[int] = set()  # groups whose last lease ended with the holder's ack
        self._names: dict[str, str] = {}  # sid -> identity, while connected (Disconnected names only the sid)
        self._sane: bool | None = None
        self._deploys_seen = 0
        self._deployer = deployer

    def deployed(self, result: object) -> None:
        """A deploy ended (``DeployResult``): note it in the timeline (the deployer's history has no clock)
        and, unless it was a no-op, mark it on every group's timeline."""
        self.sync_deploys()
        commit, outcome = str(getattr(result, "commit", "-")), str(getattr(result, "outcome", "?"))
        if outcome not in QUIET_DEPLOY_OUTCOMES:
            what = "deploy" if commit == "-" else f"deploy of {commit[:12]}"
            detail = getattr(result, "detail", "")
            text = f"{what}: {outcome}" + (f": {detail}" if detail else "")
            self.group_history.mark(None, self.clock(), "deploy", text, level=DEPLOY_LEVELS.get(outcome, "info"))
            self._changed()

    def sync_deploys(self) -> None:
        """Add the deploy outcomes not yet in the timeline; a repeated no-op outcome only once."""
        deployer = self._deployer
        if deployer is None:
            return
        history = deployer.history
        for index in range(self._deploys_seen, len(history)):
            commit, outcome = history[index]
            if outcome in QUIET_DEPLOY_OUTCOMES and index > 0 and history[index - 1] == (commit, outcome):
                continue
            what = "deploy" if commit == "-" else f"deploy of {commit[:12]}"
            self.timeline.add("deploy", f"{what}: {outcome}", level=DEPLOY_LEVELS.get(outcome, "info"))
            self._changed()
        self._deploys_seen = len(history)

    def note(self, event: Any) -> None:
        if isinstance(event, Connected):
            self._names[event.sid] = event.identity
            self._add("worker", f"{event.identity} connected", event.identity)
        elif isinstance(event, Disconnected) and event.sid in self._names:
            self._add("worker", f"{self._names[event.sid]} disconnected", self._names[event.sid])
        elif isinstance(event, ProcessExited):
            code = "" if event.returncode is None else f" with code {event.returncode}"
            self._add("worker", f"{event.identity} exited{code}", event.identity)
        elif isinstance(event, TryAgain):
            self._add("sanity", "try_again: an operator asked to resume")
        elif isinstance(event, RollbackFinished):
            text = f"rollback {'finished' if event.ok else 'FAILED'}: {event.detail}"
            level = "info" if event.ok else "critical"
            self.timeline.add("rollback", text, level=level)
            self.group_history.mark(None, self.clock(), "rollback", text, level=level)
            self._changed()

    def noted(self, handled: Any) -> None:
        """After the core handled an event (``Handled``): forget a gone connection's name."""
        if isinstance(handled.event, Disconnected):
            self._names.pop(handled.event.sid, None)
        if self._sane is None:  # the first look (an unhealthy start is news); then each persisted change
            self._check_sanity(self.robot.snapshot().is_sane)

    def observe(self, action: Action) -> None:
        if isinstance(action, RoleChanged):
            if action.old == Role.STANDBY.value and action.new == Role.RUNNING.value:
                self.promotions += 1
                if (action.epoch or 0) > 1 and action.group not in self._clean_release:
                    self.failovers += 1
                self._clean_release.discard(action.group)
            elif action.old in (Role.RUNNING.value, Role.STOPPING.value) and action.new in (
                Role.STANDBY.value,
                Role.SHUTTING_DOWN.value,
            ):
                self._clean_release.add(action.group)  # only the holder runs or stops: it acknowledged
            self._note_role(action)
            self._note_processing(action)
        elif isinstance(action, Verdict):
            self._note_verdict(action)
        elif isinstance(action, Spawn):
            self.restarts += 1
            self._add("worker", f"spawn: {action.reason}")
        elif isinstance(action, RollBack):
            text = f"rollback asked for: {action.version} {action.reason}"
            self.timeline.add("rollback", text, level="warning")
            self.group_history.mark(None, self.clock(), "rollback", text, level="warning")
        elif isinstance(action, Notify) and action.level != "info":  # info ones repeat other entries
            self.timeline.add("notice", action.message, level=action.level)
        elif isinstance(action, Persist):  # every change of is_sane is persisted
            self._check_sanity(bool(action.state.get("is_sane", True)))
        if not isinstance(action, Reply):  # a Reply alone (a heartbeat's renewal) changes nothing shown
            self._changed()

    def _note_role(self, action: RoleChanged) -> None:
        if action.new in QUIET_ROLES:
            return
        name = action.identity
        epoch = f" (epoch {action.epoch})" if action.epoch is not None else ""
        reason = f": {action.reason}" if action.reason else ""
        level = "warning" if action.new == Role.GONE.value and action.old == Role.RUNNING.value else "info"
        self.timeline.add("role", f"{name}: {action.old} → {action.new}{epoch}{reason}", level=level, worker=name)

    def _note_processing(self, action: RoleChanged) -> None:
        """A worker starts or stops processing its group: its group's timeline gets a bar or ends one."""
        was, now = action.old in PROCESSING, action.new in PROCESSING
        if now and not was:
            worker = self.robot.snapshot().worker(action.sid)  # its version and generation colour its bar
            self.group_history.began(
                action.group,
                action.sid,
                action.identity,
                self.clock(),
                epoch=action.epoch,
                version=None if worker is None else worker.version,
                generation=None if worker is None else worker.generation,
            )
        elif was and not now:
            self.group_history.ended(action.group, action.sid, self.clock())

    def _note_verdict(self, verdict: Verdict) -> None:
        """The core's verdict on a deploy candidate: a mark on its group's timeline."""
        text = f"generation {verdict.generation} ({verdict.identity}): {verdict.outcome}"
        text += f": {verdict.detail}" if verdict.detail and not verdict.promoted else ""
        level = "info" if verdict.promoted else "warning"
        self.group_history.mark(verdict.group, self.clock(), "deploy", text, level=level)

    def _check_sanity(self, sane: bool) -> None:
        if sane == self._sane:
            return
        if self._sane is not None or not sane:  # the first look notes only an unhealthy start
            text = "is_sane: true (spawns and deploys resume)" if sane else "is_sane: false (until try_again)"
            self.timeline.add("sanity", text, level="info" if sane else "critical")
        self._sane = sane
        self._changed()

    def _add(self, kind: str, text: str, worker: str | None = None) -> None:
        self.timeline.add(kind, text, worker=worker)
        self._changed()

    def _changed(self) -> None:
        self.robot.bus.publish(ViewsChanged())


def status(
    tracker: StatusTracker,
    *,
    deployer: _DeployerLike | None = None,
    children: _ChildrenLike | None = None,
    notifier: _NotifierLike | None = None,
    cluster: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The body of ``GET /api/status`` (see the module docstring)."""
    robot = tracker.robot
    snap = robot.snapshot()  # one moment for the whole body
    body = robot.status(snap)
    for entry, worker in zip(body["workers"], snap.workers, strict=True):
        entry.setdefault("group", worker.group)  # the core's part may say it already
    body["lease"] = _lease(snap.lease)
    groups = groups_of(snap)
    body["shard_count"] = snap.shard_count
    body["groups"] = [_group(g) for g in groups]
    if cluster is not None:
        body["cluster"] = cluster()
    body["promotions"] = tracker.promotions
    body["failovers"] = tracker.failovers
    if deployer is not None:
        shown = deployer.history[-DEPLOY_HISTORY_SHOWN:]
        body["deploys"] = [{"commit": commit, "outcome": outcome} for commit, outcome in shown]
    if children is not None:
        body["children"] = [
            {"identity": child.identity, "pid": child.pid, "generation": child.generation}
            for child in children.children.values()
        ]
    if notifier is not None:
        body["notifications"] = _notifications(notifier)
    tracker.sync_deploys()
    body["timeline"] = list(tracker.timeline.entries)
    body["group_timeline"] = tracker.group_history.view(tracker.clock(), len(groups))
    return body


def groups_of(snap: Snapshot) -> tuple[GroupView, ...]:
    """Every shard group of ``snap``; a core that does not fill ``groups`` yet has one, from the top-level fields."""
    if snap.groups:
        return snap.groups
    running = snap.running
    standbys = sum(1 for w in snap.workers if w.role == Role.STANDBY.value)
    return (
        GroupView(
            index=0,
            name=UNSHARDED,
            shard_ids=(),
            epoch=snap.epoch,
            lease=snap.lease,
            running=None if running is None else running.identity,
            standbys=standbys,
            workers=len(snap.workers),
            waiting_for=snap.waiting_for,
            health_line=snap.health_line,
            cache_age=snap.cache_age,
            cache_bytes=snap.cache_bytes,
        ),
    )


def _lease(lease: LeaseView | None) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {
        "identity": lease.identity,
        "epoch": lease.epoch,
        "connected": lease.sid is not None,
        "confirmed": lease.confirmed,
        "stopping": lease.stopping,
        "expires_in": lease.expires_in,
    }


def _group(group: GroupView) -> dict[str, Any]:
    return {
        "index": group.index,
        "name": group.name,
        "shard_ids": list(group.shard_ids),
        "epoch": group.epoch,
        "running": group.running,
        "lease": _lease(group.lease),
        "standbys": group.standbys,
        "workers": group.workers,
        "waiting_for": group.waiting_for,
        "cache_age": group.cache_age,
    }


def _notifications(notifier: _NotifierLike) -> dict[str, int]:
    queue = getattr(notifier, "_queue", ())
    return {"queued": len(queue), "dropped": notifier.dropped, "failed": notifier.failed}


class MetricsCollector(Collector):
    """Reads the supervisor at scrape time; registered in a private ``CollectorRegistry``."""

    def __init__(
        self,
        tracker: StatusTracker,
        *,
        deployer: _DeployerLike | None = None,
        children: _ChildrenLike | None = None,
        notifier: _NotifierLike | None = None,
        cluster: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.tracker = tracker
        self.deployer = deployer
        self.children = children
        self.notifier = notifier
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        snap = self.tracker.robot.snapshot()

        workers = GaugeMetricFamily("urban_robot_workers", "Connected workers by role.", labels=["role"])
        roles = collections.Counter(w.role for w in snap.workers)
        for role in Role:
            workers.add_metric([role.value], roles.get(role.value, 0))
        yield workers
        yield GaugeMetricFamily("urban_robot_epoch", "The last lease epoch handed out.", value=snap.epoch)
        yield GaugeMetricFamily(
            "urban_robot_is_sane", "1 while spawns, deploys and hand-overs are allowed.", value=int(snap.is_sane)
        )
        yield CounterMetricFamily(
            "urban_robot_promotions_total", "Workers promoted standby -> running.", value=self.tracker.promotions
        )
        yield CounterMetricFamily(
            "urban_robot_failovers_total",
            "Promotions after a lease holder was lost (not a hand-over it acknowledged).",
            value=self.tracker.failovers,
        )
        yield CounterMetricFamily(
            "urban_robot_restarts_total", "Replacement spawns the supervisor asked for.", value=self.tracker.restarts
        )

        ages: dict[str, float] = {}
        for w in snap.workers:
            ages[w.identity] = min(w.silent_for, ages.get(w.identity, math.inf))  # one series per worker identity
        heartbeat = GaugeMetricFamily(
            "urban_robot_heartbeat_age_seconds", "Seconds since the worker's last message.", labels=["worker"]
        )
        for identity, age in sorted(ages.items()):
            heartbeat.add_metric([identity], age)
        yield heartbeat

        gateway = GaugeMetricFamily(
            "urban_robot_gateway_up",
            "1 while the worker's Discord Gateway is connected, 0 while it is down (workers that report it).",
            labels=["worker"],
        )
        reported = {w.identity: w.gateway for w in snap.workers if w.gateway is not None}
        for identity, up in sorted(reported.items()):
            gateway.add_metric([identity], int(up))
        yield gateway
        yield GaugeMetricFamily(
            "urban_robot_worker_failures",
            "Kinds of worker whose last one said it cannot work (failed), not yet followed by one that works.",
            value=len(snap.failures),
        )

        if snap.cache_age is not None:
            yield GaugeMetricFamily(
                "urban_robot_cache_age_seconds", "Seconds since the kept cache was accepted.", value=snap.cache_age
            )
        if snap.cache_bytes is not None:
            yield GaugeMetricFamily(
                "urban_robot_cache_bytes",
                "Bytes of the kept cache's entries (as the worker encoded them).",
                value=snap.cache_bytes,
            )

        yield from self._groups(snap)
        if self.cluster is not None:
            yield from self._cluster(self.cluster())

        if self.deployer is not None:
            deploys = CounterMetricFamily("urban_robot_deploys", "Deploy attempts by outcome.", labels=["outcome"])
            for outcome, count in sorted(collections.Counter(o for _, o in self.deployer.history).items()):
                deploys.add_metric([outcome], count)
            yield deploys
        if self.children is not None:
            yield GaugeMetricFamily(
                "urban_robot_children", "Worker processes the supervisor manages.", value=len(self.children.children)
            )
        if self.notifier is not None:
            counts = _notifications(self.notifier)
            yield GaugeMetricFamily(
                "urban_robot_notifications_queued", "Notifications waiting to be sent.", value=counts["queued"]
            )
            yield GaugeMetricFamily(
                "urban_robot_notifications_dropped",
                "Notifications dropped (queue full) and not yet reported on Discord.",
                value=counts["dropped"],
            )
            yield GaugeMetricFamily(
                "urban_robot_notifications_failed",
                "Notifications that failed to send and are not yet reported on Discord.",
                value=counts["failed"],
            )

    @staticmethod
    def _cluster(view: dict[str, Any]) -> Iterator[Metric]:
        """Several hosts: this agent's etcd lease and view, the groups it holds, whether it is the deployer."""
        left = view.get("view_left")
        yield GaugeMetricFamily(
            "urban_robot_cluster_view_seconds",
            "How much longer this host may renew its workers without a new etcd keep-alive answer (0: none).",
            value=float(left) if isinstance(left, int | float) else 0.0,
        )
        held = GaugeMetricFamily(
            "urban_robot_cluster_group_held", "1 while etcd's lease key of the group names this host.", labels=["group"]
        )
        for name, group in sorted(view.get("groups", {}).items()):
            held.add_metric([name], int(bool(group.get("held_here"))))
        yield held
        yield GaugeMetricFamily(
            "urban_robot_cluster_deployer",
            "1 while this host is the cluster's elected deployer.",
            value=int(bool(view.get("elected"))),
        )
        yield GaugeMetricFamily(
            "urban_robot_cluster_peers",
            "Other hosts present in the cluster (etcd presence keys).",
            value=len(view.get("peers", {})),
        )

    def _groups(self, snap: Snapshot) -> Iterator[Metric]:
        """One series per shard group (label ``group``, its name; ``all shards`` unsharded)."""
        groups, now, history = groups_of(snap), self.tracker.clock(), self.tracker.group_history
        processing = GaugeMetricFamily(
            "urban_robot_group_processing", "1 while a connected worker processes the group.", labels=["group"]
        )
        epoch = GaugeMetricFamily("urban_robot_group_epoch", "The group's last lease epoch.", labels=["group"])
        standbys = GaugeMetricFamily(
            "urban_robot_group_standbys", "The group's standbys that may be promoted now.", labels=["group"]
        )
        idle = CounterMetricFamily(
            "urban_robot_group_without_processor_seconds",
            "Seconds the group had no worker processing it, since the supervisor started.",
            labels=["group"],
        )
        for g in groups:
            processing.add_metric([g.name], int(g.running is not None))
            epoch.add_metric([g.name], g.epoch)
            standbys.add_metric([g.name], g.standbys)
            idle.add_metric([g.name], history.without_processor(g.index, now))
        yield from (processing, epoch, standbys, idle)


def _json(status_code: int, body: dict[str, Any]) -> Response:
    return Response(status_code, json.dumps(body).encode(), content_type="application/json")


def _guarded(
    admin_token: str | None, public: bool, view: Callable[[], Response], throttle: LoginThrottle | None
) -> RouteHandler:
    async def handle(request: Request) -> Response:
        # The dashboard's cookie also reads (GET only; SameSite=Strict, and no CORS answer lets another site read).
        if not public and not cookie_matches(request.header("cookie"), admin_token):
            refused = refusal(request, admin_token, throttle)
            if refused is not None:
                return refused
        await trio.lowlevel.checkpoint()
        return view()

    return handle


def install_status_routes(
    robot: UrbanRobot,
    tracker: StatusTracker,
    *,
    admin_token: str | None,
    deployer: _DeployerLike | None = None,
    children: _ChildrenLike | None = None,
    notifier: _NotifierLike | None = None,
    public_metrics: bool = False,
    cluster: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Serve ``GET /api/status`` and ``GET /metrics`` on the supervisor's port, with ``tracker``'s counts."""
    registry = CollectorRegistry(auto_describe=False)  # private: never the process-global default registry
    registry.register(
        MetricsCollector(tracker, deployer=deployer, children=children, notifier=notifier, cluster=cluster)
    )

    def status_view() -> Response:
        return _json(200, status(tracker, deployer=deployer, children=children, notifier=notifier, cluster=cluster))

    def metrics_view() -> Response:
        return Response(200, generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    throttle = robot.logins
    robot.server.add_route("GET", "/api/status", _guarded(admin_token, False, status_view, throttle))
    robot.server.add_route("GET", "/metrics", _guarded(admin_token, public_metrics, metrics_view, throttle))


__all__ = ["MetricsCollector", "StatusTracker", "Timeline", "groups_of", "install_status_routes", "status"]
