"""Every shard group's core in one, sans-IO: events in (with ``now``), actions out (docs/protocol.md §18).

A sharded bot's shards are cut into groups (``ShardPlan``); each group keeps the promises of ``_core`` on its
own: its roles, its lease and epoch sequence (persisted), its health checks, hand-overs, standbys and cache.
``Fleet`` holds one ``Supervisor`` per group and routes each event to the group it concerns: a connection's
events to the group its worker was spawned for (``Connected.group``, from its credential), a process's to its
group (``ProcessExited.group``), timers and stopping to every group. What the groups share lives in one
``Common`` (sanity, the last known good commit, the crash-loop count) and is handled here once: ``try_again``,
a deploy's confirmation, a rollback's end. So is what spans the groups: the IDENTIFY slots Discord allows per
5 s (``IdentifySlots``), asked for by any worker, granted across all of them.

**One group is today's supervisor**: unsharded, the one core's actions pass through unchanged and
``state.json`` keeps its v1 shape. Sharded, ``state.json`` adds ``groups`` (each group's epoch and holder, by
name), ``epoch`` is the highest of them (what an older supervisor would read: still never reused), and a
group new to the plan starts above every epoch ever persisted, so epochs stay strictly increasing per group
whatever the plan was before.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from ..protocol import (
    CacheImage,
    IdentifyGrant,
    IdentifySlots,
    SessionsExhausted,
    SessionStartLimit,
    ShardPlan,
)
from ._core import STATE_VERSION, Common, Settings, Supervisor
from ._events import (
    Action,
    CacheReplicated,
    CacheSync,
    CandidateStarted,
    ClusterGrant,
    ClusterStop,
    ComaAck,
    Connected,
    DeployConfirmed,
    Disconnected,
    Event,
    Frozen,
    HealthReport,
    Heartbeat,
    Identified,
    IdentifyAsked,
    IdentifyLimit,
    Notify,
    Persist,
    ProcessExited,
    Ready,
    Reply,
    RetireOlder,
    RollbackFinished,
    Send,
    ShutdownAck,
    Spoke,
    Stopping,
    TryAgain,
    WorkerFailed,
)
from ._roles import Role
from ._snapshot import Snapshot

# A connection's own events: to its group's core.
BY_CONNECTION = (Identified, Heartbeat, Ready, HealthReport, CacheSync, ComaAck, ShutdownAck, WorkerFailed, Spoke)
# Without Discord's own figures (no token, or GET /gateway/bot unreachable): one IDENTIFY per 5 s, and a day's
# budget as Discord gives every bot at least (1,000 session starts).
DEFAULT_LIMIT = SessionStartLimit(total=1000, remaining=1000, reset_after=86_400_000, max_concurrency=1)


class Fleet:
    def __init__(
        self,
        settings: Settings,
        plan: ShardPlan | None = None,
        *,
        state: dict[str, Any] | None = None,
        caches: dict[int, CacheImage] | None = None,
        now: float = 0.0,
        new_token: Callable[[], str] = lambda: secrets.token_hex(16),
        limit: SessionStartLimit | None = None,
        restarted: bool = False,
    ) -> None:
        self.settings = settings
        self.plan = plan if plan is not None else ShardPlan.unsharded()
        self.common = Common()
        self.admins: set[str] = set()
        self.where: dict[str, int] = {}  # connection id -> its group's index
        caches = caches or {}
        sharded = self.plan.sharded
        # One group after a sharded run (the plan changed): its state is made like a new group's, so the holders
        # of the old groups are waited out (they may still process shards of this group) and no epoch is reused.
        was_sharded = state is not None and isinstance(state.get("groups"), dict)
        states = self._group_states(state) if sharded or was_sharded else [state]
        self.groups = [
            Supervisor(
                settings,
                state=states[g.index],
                cache=caches.get(g.index),
                now=now,
                new_token=new_token,
                group=g if sharded else None,
                shard_count=self.plan.shard_count,
                common=self.common,
            )
            for g in self.plan.groups
        ]
        if state:
            self.common.is_sane = bool(state.get("is_sane", True))
            self.common.last_known_good_hash = state.get("last_known_good")
        # IDENTIFY slots, across every worker of every group; after a restart none before grants in flight land.
        window = limit if limit is not None else DEFAULT_LIMIT
        self.slots = IdentifySlots(window, now, not_before=now + 5.5 if restarted else float("-inf"))
        self.slots_told: set[float] = set()

    # -- state ---------------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return self.plan.sharded

    @property
    def is_sane(self) -> bool:
        return self.common.is_sane

    @property
    def last_known_good_hash(self) -> str | None:
        return self.common.last_known_good_hash

    def group_of_sid(self, sid: str) -> Supervisor | None:
        index = self.where.get(sid)
        return self.groups[index] if index is not None else None

    def _group_states(self, state: dict[str, Any] | None) -> list[dict[str, Any] | None]:
        """Each group's part of ``state.json``: its saved epoch and holder, or above every epoch ever saved."""
        if not state:
            return [None] * len(self.plan.groups)
        saved = state.get("groups") if isinstance(state.get("groups"), dict) else {}
        assert isinstance(saved, dict)
        same_plan = (
            state.get("shard_count") == self.plan.shard_count
            and state.get("shards_per_worker") == self.plan.shards_per_worker
        )
        floor = max([int(state.get("epoch", 0))] + [int(g.get("epoch", 0)) for g in saved.values()])
        # Holders of another plan (or of the unsharded bot) ran other shards: no group may adopt them, and every
        # group waits out their leases (they may still process any shard) before its first promotion.
        strangers = [g.get("holder") for g in saved.values() if g.get("holder")] if not same_plan else []
        if not same_plan and state.get("holder"):
            strangers.append(state["holder"])
        out: list[dict[str, Any] | None] = []
        for group in self.plan.groups:
            own = saved.get(group.name) if same_plan else None
            if own is not None:
                out.append({"epoch": int(own.get("epoch", 0)), "holder": own.get("holder")})
                continue
            holder = None
            if strangers:  # the newest epoch's: one lease to wait out (each group's promotion waits for it)
                newest = max(strangers, key=lambda h: int(h.get("epoch", 0)))
                holder = {"identity": newest.get("identity"), "epoch": int(newest.get("epoch", 0)), "token": None}
            out.append({"epoch": floor, "holder": holder})
        return out

    def state(self) -> dict[str, Any]:
        """What ``state.json`` keeps: the v1 shape unsharded; with ``groups`` (by name) sharded."""
        if not self.sharded:
            return self.groups[0].state()
        groups = {}
        for core in self.groups:
            lease = core.lease
            holder = None if lease is None else {"identity": lease.identity, "epoch": lease.epoch, "token": lease.token}
            groups[core.name] = {"epoch": core.epoch, "holder": holder}
        return {
            "version": STATE_VERSION,
            "epoch": max(core.epoch for core in self.groups),
            "is_sane": self.common.is_sane,
            "last_known_good": self.common.last_known_good_hash,
            "holder": None,
            "shard_count": self.plan.shard_count,
            "shards_per_worker": self.plan.shards_per_worker,
            "groups": groups,
        }

    # -- entry points ----------------------------------------------------------------------------
    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` at ``now``; the actions to carry out, in order (as ``Supervisor.handle``)."""
        out = self._route(event, now)
        out += self._identify_slots(now)
        return self._one_state(out) if self.sharded else out

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (core.next_deadline() for core in self.groups) if d is not None]
        slots = self.slots.next_deadline()
        if slots is not None:
            deadlines.append(slots)
        return min(deadlines) if deadlines else None

    def _route(self, event: Event, now: float) -> list[Action]:
        if isinstance(event, Connected):
            if event.admin:
                self.admins.add(event.sid)
                return []
            index = event.group if 0 <= event.group < len(self.groups) else 0
            self.where[event.sid] = index
            return self._in(index, event, now)
        if isinstance(event, Disconnected):
            self.admins.discard(event.sid)
            left = self.where.pop(event.sid, None)
            self.slots.release(event.sid)  # its waiting asks go; a grant already given still counts
            return self._in(left, event, now) if left is not None else []
        if isinstance(event, BY_CONNECTION):
            return self._in(self.where.get(event.sid, 0), event, now)
        if isinstance(event, Frozen | ProcessExited | CandidateStarted | ClusterGrant | ClusterStop | CacheReplicated):
            return self._in(event.group if 0 <= event.group < len(self.groups) else 0, event, now)
        if isinstance(event, RetireOlder) and event.group is not None:
            return self._in(event.group, event, now)
        if isinstance(event, IdentifyAsked):
            return self._ask_identify(event, now)
        if isinstance(event, IdentifyLimit):
            self._learn_limit(event.limit, now)
            return []
        if isinstance(event, TryAgain):
            return self._try_again(event, now)
        if isinstance(event, DeployConfirmed | RollbackFinished):
            return self._in(0, event, now, named=False)  # the groups' common state: said once, not per group
        if isinstance(event, Stopping):
            out: list[Action] = []
            for index in range(len(self.groups)):
                acts = self._in(index, event, now, named=False)
                out += acts if index == 0 else [a for a in acts if not isinstance(a, Notify)]  # one "stopping"
            return out
        out = []
        for index in range(len(self.groups)):  # TimerFired, RetireOlder for every group
            out += self._in(index, event, now)
        return out

    def _in(self, index: int, event: Event, now: float, *, named: bool = True) -> list[Action]:
        actions = self.groups[index].handle(event, now)
        if not self.sharded or not named:
            return actions
        name = self.groups[index].name
        return [Notify(a.level, f"{name}: {a.message}") if isinstance(a, Notify) else a for a in actions]

    def _one_state(self, actions: list[Action]) -> list[Action]:
        """Sharded: every group's ``Persist`` becomes one, of the whole state as it is after this event, where the
        first one was (before any grant of any group: an epoch is on disk before anyone may use it)."""
        out: list[Action] = []
        persisted = False
        for action in actions:
            if isinstance(action, Persist):
                if not persisted:
                    out.append(Persist(self.state()))
                    persisted = True
                continue
            out.append(action)
        return out

    def _try_again(self, e: TryAgain, now: float) -> list[Action]:
        if e.sid is not None and e.sid not in self.admins:
            return [Reply({"error": "try_again needs the admin credential"})]
        out = self._in(0, TryAgain(None), now, named=False)  # sanity and losses are the groups' common state
        return out

    # -- identify slots (§18.3) --------------------------------------------------------------------
    def _ask_identify(self, e: IdentifyAsked, now: float) -> list[Action]:
        core = self.group_of_sid(e.sid)
        w = core.clients.get(e.sid) if core is not None else None
        if core is None or w is None or w.role in (Role.CONNECTED, Role.GONE):
            return [Reply({"error": "identify_slot needs an identified worker connection (identify first)"})]
        if core.group is None:
            return [
                Reply({"error": "identify_slot is for sharded bots: this bot is not sharded (hello had no shards)"})
            ]
        if e.shard_id not in core.group.ids:
            ids = core.group.ids
            why = f"shard {e.shard_id} is not this worker's: it runs shards {ids[0]}-{ids[-1]} (hello's shards)"
            return [Reply({"error": why})]
        self.slots.request(e.shard_id, now, owner=e.sid)
        return [Reply({"queued": True})]

    def _learn_limit(self, limit: SessionStartLimit, now: float) -> None:
        """Discord's limit, learnt after the start: slots follow it from now on. Grants under the old one may still
        be on their way, so no key is granted for a window; waiting asks keep their order."""
        waiting = sorted(
            ((ticket, shard, owner) for (owner, shard), ticket in self.slots._asked.items()), key=lambda t: t[0]
        )
        self.slots = IdentifySlots(limit, now, not_before=now + self.slots.spacing)
        for _ticket, shard, owner in waiting:
            self.slots.request(shard, now, owner=owner)

    def _identify_slots(self, now: float) -> list[Action]:
        out: list[Action] = []
        for decided in self.slots.poll(now):
            if isinstance(decided, IdentifyGrant):
                core = self.group_of_sid(decided.owner)
                w = core.clients.get(decided.owner) if core is not None else None
                identity = w.identity if w is not None else None
                grant = {"t": "identify", "d": {"shard_id": decided.shard_id}}
                out.append(Send(decided.owner, "cmd", grant, identity))
            elif isinstance(decided, SessionsExhausted):
                wait = max(0.0, decided.until - now)
                out.append(
                    Notify(
                        "critical",
                        f"Discord's session starts for today are used up: {decided.waiting} shards wait "
                        f"{wait / 3600:.1f} h to IDENTIFY (a shard that could RESUME is not affected); "
                        "find what keeps re-identifying (a crash loop, a token shared with another bot)",
                    )
                )
        return out

    # -- views ---------------------------------------------------------------------------------------
    def snapshot(self, now: float) -> Snapshot:
        """Group 0's snapshot (every field, unsharded) with every group's workers, failures and view."""
        first = self.groups[0].snapshot(now)
        if not self.sharded:
            return first
        snaps = [first] + [core.snapshot(now) for core in self.groups[1:]]
        views = tuple(core.group_view(now) for core in self.groups)
        failures = {f.kind: f for snap in snaps for f in snap.failures}
        return Snapshot(
            at=now,
            epoch=first.epoch,
            is_sane=self.common.is_sane,
            stopping=first.stopping,
            last_known_good=self.common.last_known_good_hash,
            lease=first.lease,
            workers=tuple(w for snap in snaps for w in snap.workers),
            failures=tuple(sorted(failures.values(), key=lambda f: -f.ago)),
            waiting_for=first.waiting_for,
            health_line=self.health_line(now, views),
            cache_age=first.cache_age,
            cache_bytes=first.cache_bytes,
            groups=views,
            shard_count=self.plan.shard_count,
        )

    def health_line(self, now: float, views: Any = None) -> str:
        if not self.sharded:
            return self.groups[0].health_line(now)
        views = views if views is not None else [core.group_view(now) for core in self.groups]
        first = self.groups[0]
        if first.stopping is not None:
            return first.health_line(now)
        waiting = [v for v in views if v.running is None]
        insane = "" if self.common.is_sane else "; is_sane false: try_again needed"
        line = f"{len(views)} shard groups: {len(views) - len(waiting)} running"
        if waiting:
            worst = waiting[0]
            line += f", {len(waiting)} waiting ({worst.name}: {worst.waiting_for or 'no worker running'})"
        return line + insane
