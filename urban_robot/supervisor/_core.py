"""The supervisor's decisions, sans-IO: events in (with ``now``), actions out.

State follows the seeds (``clients``, ``ready_clients``, ``running_client``,
``cache``, ``cache_age``, ``is_sane``, ``last_known_good_hash``) and keeps the
promises below (rules: docs/protocol.md §8–§11; soak checks: docs/reliability.md):

P1  Processing is a lease (``Lease``) with a strictly increasing, persisted
    epoch. A worker is promoted only when no lease is held: the holder
    acknowledged coma/shutdown, its process exit was seen, or the lease
    expired on our clock (granted ``lease`` + ``lease_margin`` after we last
    answered its heartbeat; the worker counts ``lease`` from when it *sent*
    that heartbeat, so its view ends first). A new holder starts processing
    only after its first renewal, so a grant delivered late is never used.
P2  Approved standbys (health-checked when they became ready) are promoted
    the moment the lease is free.
P3  The running worker's caches are kept (and persisted) as they arrive; its
    final cache comes before its coma ack, and reaches the next holder before
    ``process_commands``.
P4  Only workers whose health check passed are promoted; a failed check asks
    for a rollback; ``is_sane = False`` stops hand-overs to newer code.

A worker's health includes its Discord Gateway (``heartbeat.gateway``): a standby
whose Gateway is down is never promoted, and a holder whose Gateway has been down
for ``gateway_down_limit`` hands over (coma, final cache) to a standby whose
Gateway is up. A worker that says ``failed`` (it cannot work) is a crash to
come: its exit is counted and replaced, and its failure is kept for the views
until a worker of its kind passes a health check.

Liveness is one deadline per worker, kept here (``Worker.heard``): any event a worker sends counts.
An external worker silent for ``silence_limit`` is dropped and its lease runs out, as P1 says. A child
of the process manager is fenced by the kernel instead: silent for ``frozen_limit`` while the kernel
reports its process stopped (``CheckFrozen`` -> ``Frozen``), or silent for ``hang_limit`` whatever its
state, it is dropped and killed (``Close(hung=True)``: SIGKILL), and its lease is released by the
``ProcessExited`` that confirms the kill, not before. ``hang_limit`` is longer than a slow but
healthy bot's stall (an event loop blocked 5 s) and shorter than the lease, so a silent child is
replaced in seconds, not a lease. The process manager also watches its children unasked: a holder it
sees stopped by a signal (``Frozen(seen=...)``, state ``T``: nothing healthy is ever in it) and silent
since is fenced at once, connected or not; a stopped standby is not promoted until it speaks again.

A deploy's candidate is the core's to judge too: the deployer spawns it and says so (``CandidateStarted``,
with its own time-out), and the core answers with exactly one ``Verdict`` on it: promoted when the lease is
granted to it; else a failed health check (and then no ``RollBack``: the deployer rolls back on the verdict),
its process's exit or its fencing before promotion, no verdict within the time-out, a newer candidate
replacing it, or the supervisor stopping. A verdict is final: a candidate judged against is told to shut
down and never promoted, whatever it does before its process is gone. ``RollBack`` is left for a newer
worker that is no candidate (a replacement of a newer generation) failing its check.

Stopping (``Stopping``) is for good: every worker is asked to shut down (the
holder with its final cache), and from then on nobody is promoted and no
spawn is asked for, whatever exits, drops or expires on the way down.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from typing import Any

import attrs
from packaging.version import InvalidVersion, Version

from ..protocol import (
    MAX_VERSION_LENGTH,
    PROTOCOL_VERSION,
    Assembly,
    CacheImage,
    CacheSync as CacheSyncMessage,
    MalformedMessage,
    ShardGroup,
)
from ._events import (
    Action,
    CacheReplicated,
    CacheSync,
    CandidateStarted,
    CheckFrozen,
    Claim,
    Close,
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
    Kill,
    Notify,
    Persist,
    PersistCache,
    ProcessExited,
    Ready,
    Reply,
    RetireOlder,
    RoleChanged,
    RollBack,
    RollbackFinished,
    Send,
    ShutdownAck,
    Spawn,
    Spoke,
    Stopping,
    TimerFired,
    TopUp,
    TryAgain,
    Verdict,
    WorkerFailed,
    Yield,
)
from ._roles import Role, RoleError, Trigger, next_role
from ._snapshot import FailureView, GroupView, LeaseView, Snapshot, WorkerView

STATE_VERSION = 1
# What a worker says (the §5 events): each one proves it alive. Connected starts its clock.
SPOKEN = (Identified, Heartbeat, Ready, HealthReport, CacheSync, ComaAck, ShutdownAck, WorkerFailed, Spoke)
# The error answers that name the fix (docs/protocol.md §7): a worker written to the seeds' protocol learns why.
HEALTH_REPORT_FIX = 'health_check needs {"OK": bool, "percent": number, "cogs": {name: bool}} (protocol v1 §9)'
HEARTBEAT_FIX = (
    'heartbeat needs {{"epoch": {epoch}}}: the epoch of the grant from cmd process_commands (protocol v1 §5.2)'
)
GENERATION_FIX = (
    'identify needs "generation": send URBAN_ROBOT_GENERATION from your environment (protocol v1 §5.1); '
    "generation {generation}, the one this child was spawned with, counts"
)


@attrs.frozen
class Settings:
    token: str = attrs.field(default="", repr=False)  # never in a repr, never in a log
    vital_cogs: tuple[str, ...] = ("modules.utilities",)
    healthy_percentage: float = 100.0
    shutdown_if_outdated: bool = False
    # docs/protocol.md §4 argues these with measurements (docs/benchmarks.md "Hang takeover").
    interval: float = 1.0  # how often workers heartbeat
    grace: float = 9.0  # lease = interval + grace; an external worker silent that long is dropped
    lease_margin: float = 2.0  # our view of a lease outlives the worker's by this much
    # A child silent this long is killed if the kernel reports its process stopped (frozen: it runs nothing) ...
    frozen_limit: float | None = None  # None: interval + 1.5 (2.5 s by default)
    # ... and killed whatever its state when silent this long: > an event loop blocked 5 s + interval, < the lease.
    hang_limit: float | None = None  # None: interval + 7 (8 s by default)
    health_timeout: float = 30.0
    # A holder whose Discord Gateway has been down this long hands over to a standby whose Gateway is up:
    # longer than a RESUME after op 7 (well under 1 s), shorter than most re-identifies after op 9 (1-5 s).
    gateway_down_limit: float = 3.0
    ack_timeout: float = 30.0  # waiting for a coma/shutdown ack before relying on the lease
    spawn_workers: bool = False  # ask for replacements (when a process manager is attached)
    crash_loop_losses: int = 5  # this many unexpected worker losses ... (0: never a crash loop)
    crash_loop_window: float = 300.0  # ... within this many seconds = crash loop: is_sane = False
    max_message: int = 4 * 1024 * 1024  # largest Socket.IO message a worker may send (a cache part is 1 MiB)
    cache_max: int = 256 * 1024 * 1024  # the largest cache (its entries' bytes) kept; it travels in parts
    max_connections: int = 512  # HTTP connections open at once on the port (workers, dashboards, API, webhooks)
    # Several hosts (docs/protocol.md §19): a group's lease is granted by etcd through this host's agent
    # (``ClusterGrant``): promotions wait for it (``Claim``), renewals never reach past its ``until``.
    cluster: bool = False

    @property
    def lease(self) -> float:
        return self.interval + self.grace

    @property
    def frozen_after(self) -> float:
        return self.frozen_limit if self.frozen_limit is not None else self.interval + 1.5

    @property
    def hang_after(self) -> float:
        return self.hang_limit if self.hang_limit is not None else self.interval + 7.0

    @property
    def silence_limit(self) -> float:
        """How long an external worker may be silent (a child: ``frozen_limit``, ``hang_limit``)."""
        return self.interval + self.grace


@attrs.define(eq=False)
class Worker:
    sid: str
    identity: str
    role: Role = Role.CONNECTED
    version: str | None = None
    pid: int | None = None
    generation: int | None = None
    approved: bool = False  # passed its health check
    check_deadline: float = math.inf
    cache_seq: int = 0  # which of our caches it has
    cache_in: Assembly | None = None  # the cache sync it is sending us, part by part (the holder only)
    cache_refused: tuple[int, str] | None = None  # (sync, why): the rest of a refused sync is refused alike
    spawned_generation: int | None = None  # what the process manager spawned it as: outranks its own claim
    release: str | None = None  # what the process manager started it from ("deploy 747c50f12ab3"), for reasons
    gateway: bool | None = None  # its Discord Gateway as last reported (None: never reported, counts as up)
    gateway_down_since: float | None = None
    warned: set[str] = attrs.Factory(set)  # protocol rules it broke on this connection (each warned once)
    heard: float = 0.0  # when it last said anything (core time): its one liveness clock
    probe_at: float = math.inf  # when to ask the kernel next whether its process is stopped (children only)
    stopped: bool = False  # the kernel saw its process stopped by a signal and it has not spoken since

    @property
    def child(self) -> bool:
        """Spawned (or adopted) by the process manager, which can stop it and see it exit."""
        return self.spawned_generation is not None


@attrs.frozen
class Failure:
    """A worker's ``failed``: what could not work and what to do, kept until a worker of its kind runs fine."""

    identity: str
    generation: int | None
    version: str | None
    reason: str
    hint: str
    at: float  # core time

    @property
    def text(self) -> str:
        return f"{self.reason} — {self.hint}" if self.hint else self.reason


@attrs.define
class Lease:
    identity: str
    sid: str | None  # None while the holder is not connected (it may still be processing)
    epoch: int
    expires: float
    confirmed: bool = False  # the holder renewed at least once: it may be processing
    stopping: bool = False
    stop_deadline: float = math.inf
    final_cache: bool = False
    token: str | None = attrs.field(default=None, repr=False)  # proves a reconnecting holder is the same process
    epochless: int = 0  # heartbeats without an epoch from the holder since the grant (one may cross the grant)
    reason: str = ""  # why it is stopping (the hand-over's reason): the successor's reason too
    lost: str | None = None  # how its holder was lost (disconnected, heartbeat silence), while it may still process
    lost_at: float | None = None
    restored: bool = False  # read from state.json at start: held by a worker of an earlier supervisor
    # Several hosts: the etcd revision of the key write it was promoted under (its grant must still be that one).
    granted: int | None = None
    # A child holder lost (no connection) and not back by then is killed (its exit releases the lease), as a
    # connected one silent for hang_limit would be: it cannot renew, and its lease may outlast hang_limit.
    fence_at: float = math.inf


@attrs.frozen
class Gate:
    """Several hosts: what this host's agent holds in etcd for the group (``ClusterGrant``)."""

    epoch: int
    identity: str
    until: float  # core time: no renewal reaches past it


@attrs.define(eq=False)
class Common:
    """What every shard group's core shares (``_fleet``): one bot, one code line, one sanity."""

    is_sane: bool = True
    last_known_good_hash: str | None = None
    losses: list[float] = attrs.Factory(list)  # when worker processes exited unasked (crash-loop detection)


@attrs.define
class Trial:
    """The deploy candidate awaiting its ``Verdict`` (``CandidateStarted``): at most one at a time."""

    identity: str
    generation: int
    deadline: float  # core time: "no verdict in time" then
    times: dict[str, float]  # when it reached each step: spawned, checking, passed, running


def quote_tail(tail: tuple[str, ...] | list[str]) -> str:
    """A worker's last lines for a message: ``; last lines:`` then each as ``  | line`` (empty: nothing)."""
    return "; last lines:\n" + "\n".join(f"  | {line}" for line in tail) if tail else ""


def version_key(version: str | None) -> Version:
    """PEP 440 order; anything unparsable sorts lowest (never compared as a string)."""
    try:
        return Version(version or "0")
    except InvalidVersion:
        return Version("0")


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        state: dict[str, Any] | None = None,
        cache: CacheImage | None = None,
        now: float = 0.0,
        new_token: Callable[[], str] = lambda: secrets.token_hex(16),
        group: ShardGroup | None = None,
        shard_count: int | None = None,
        common: Common | None = None,
    ) -> None:
        self.settings = settings
        self._new_token = new_token
        # A shard group's core (``_fleet``): None unsharded. Its workers run ``group.ids`` of ``shard_count``.
        self.group = group
        self.shard_count = shard_count if group is not None else None
        self.index = group.index if group is not None else 0
        self.common = common if common is not None else Common()
        self.clients: dict[str, Worker] = {}
        self.admins: set[str] = set()
        self.cache: CacheImage | None = cache
        self.cache_age: float | None = None
        self.cache_seq = 1 if cache is not None else 0
        self.epoch = 0
        self.lease: Lease | None = None
        self.leaving: set[str] = set()  # identities WE asked to shut down: their exit is neither counted nor replaced
        self.quitting: set[str] = set()  # identities that said shutdown unasked: replaced, not counted
        self.failures: dict[str, Failure] = {}  # the last failure per kind of worker (``kind``)
        self.stopping: str | None = None  # why the supervisor stops; set: no promotion, no spawn, ever again
        self.vacancy = "no worker running"  # why nobody holds the lease: the next promotion's reason
        self.trial: Trial | None = None  # the deploy candidate awaiting its verdict
        # Candidates judged against (identity -> why): told to shut down and never promoted, until they exit.
        self.rejected: dict[str, str] = {}
        # Several hosts (``settings.cluster``): the agent's grant, the Claim asked last, whether the key was yielded.
        self.gate: Gate | None = None
        self.claimed: tuple[str, int] | None = None
        self.gate_used = 0  # the etcd revision of the key write last promoted under (each write grants one promotion)
        self.yielded = False
        # The newest replicated cache taken from another host's holder: (origin, epoch, seq) — deltas build on it.
        self.replica: tuple[str, int, int] | None = None
        if state:
            self._restore(state, now)

    # -- shared by every shard group (``Common``) ---------------------------------------
    @property
    def is_sane(self) -> bool:
        return self.common.is_sane

    @is_sane.setter
    def is_sane(self, value: bool) -> None:
        self.common.is_sane = value

    @property
    def last_known_good_hash(self) -> str | None:
        return self.common.last_known_good_hash

    @last_known_good_hash.setter
    def last_known_good_hash(self, value: str | None) -> None:
        self.common.last_known_good_hash = value

    @property
    def losses(self) -> list[float]:
        return self.common.losses

    @losses.setter
    def losses(self, value: list[float]) -> None:
        self.common.losses = value

    # -- the seeds' views --------------------------------------------------------------
    @property
    def ready_clients(self) -> dict[str, Worker]:
        ready = (Role.STANDBY, Role.CHECKING, Role.RUNNING, Role.STOPPING)
        return {sid: w for sid, w in self.clients.items() if w.role in ready}

    @property
    def running_client(self) -> str | None:
        return self.lease.sid if self.lease is not None else None

    def state(self) -> dict[str, Any]:
        lease = self.lease
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "is_sane": self.is_sane,
            "last_known_good": self.last_known_good_hash,
            "holder": None
            if lease is None
            else {"identity": lease.identity, "epoch": lease.epoch, "token": lease.token},
        }

    def snapshot(self, now: float) -> Snapshot:
        """What this core knows at ``now``, frozen: the one thing views read (``_snapshot``)."""
        lease = self.lease
        holder_sid = lease.sid if lease is not None else None
        return Snapshot(
            at=now,
            epoch=self.epoch,
            is_sane=self.is_sane,
            stopping=self.stopping,
            last_known_good=self.last_known_good_hash,
            lease=None
            if lease is None
            else LeaseView(
                lease.identity, lease.sid, lease.epoch, lease.confirmed, lease.stopping, max(0.0, lease.expires - now)
            ),
            workers=tuple(
                WorkerView(
                    identity=w.identity,
                    sid=w.sid,
                    role=w.role.value,
                    pid=w.pid,
                    version=w.version,
                    generation=w.generation,
                    holds=lease.epoch if lease is not None and w.sid == holder_sid else None,
                    silent_for=max(0.0, now - w.heard),
                    gateway=w.gateway,
                    gateway_down_for=None if w.gateway_down_since is None else now - w.gateway_down_since,
                    cache_current=self.cache is not None and w.cache_seq == self.cache_seq,
                    group=self.index,
                )
                for w in self.clients.values()
            ),
            failures=tuple(
                FailureView(kind, f.identity, f.generation, f.version, f.reason, f.hint, now - f.at)
                for kind, f in sorted(self.failures.items(), key=lambda item: item[1].at)
            ),
            waiting_for=self.waiting_for(now),
            health_line=self.health_line(now),
            cache_age=None if self.cache_age is None else now - self.cache_age,
            cache_bytes=None if self.cache is None else self.cache.size,
            groups=(self.group_view(now),),
            shard_count=self.shard_count,
        )

    @property
    def name(self) -> str:
        """The shard group's name ("shards 0-3"), "all shards" unsharded."""
        return self.group.name if self.group is not None else "all shards"

    def group_view(self, now: float) -> GroupView:
        lease = self.lease
        holder = self.clients.get(lease.sid) if lease is not None and lease.sid is not None else None
        return GroupView(
            index=self.index,
            name=self.name,
            shard_ids=tuple(self.group.ids) if self.group is not None else (),
            epoch=self.epoch,
            lease=None
            if lease is None
            else LeaseView(
                lease.identity, lease.sid, lease.epoch, lease.confirmed, lease.stopping, max(0.0, lease.expires - now)
            ),
            running=holder.identity if holder is not None and lease is not None and not lease.stopping else None,
            standbys=sum(1 for w in self.clients.values() if self._candidate(w)),
            workers=sum(1 for w in self.clients.values() if w.role is not Role.GONE),
            waiting_for=self.waiting_for(now),
            health_line=self.health_line(now),
            cache_age=None if self.cache_age is None else now - self.cache_age,
            cache_bytes=None if self.cache is None else self.cache.size,
        )

    def _restore(self, state: dict[str, Any], now: float) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.is_sane = bool(state.get("is_sane", True))
        self.last_known_good_hash = state.get("last_known_good")
        holder = state.get("holder")
        if holder:
            # We cannot know whether it still processes: give it a whole lease from now.
            expires = now + self.settings.lease + self.settings.lease_margin
            token = holder.get("token")
            self.lease = Lease(
                str(holder["identity"]), None, int(holder["epoch"]), expires, confirmed=True, token=token, restored=True
            )

    # -- entry points ----------------------------------------------------------------------
    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` at time ``now``; the actions to carry out, in order."""
        out: list[Action] = []
        if isinstance(event, SPOKEN) and event.sid in self.clients:
            self._heard(self.clients[event.sid], now)
        handler = getattr(self, "_on_" + type(event).__name__)
        try:
            handler(event, now, out)
        except RoleError as exc:
            out.append(Reply({"error": str(exc)}))
            return out
        self._reconcile(now, out)
        return out

    def next_deadline(self) -> float | None:
        """When to feed ``TimerFired`` next (None: nothing is timed)."""
        deadlines = [w.check_deadline for w in self.clients.values() if w.role is Role.CHECKING]
        if self.lease is not None:
            deadlines.append(self.lease.expires)
            deadlines.append(self.lease.fence_at)
            if self.lease.stopping:
                deadlines.append(self.lease.stop_deadline)
        gateway = self._gateway_deadline()
        if gateway is not None:
            deadlines.append(gateway)
        deadlines.extend(self._silence_deadline(w) for w in self.clients.values())
        if self.trial is not None:
            deadlines.append(self.trial.deadline)
        finite = [d for d in deadlines if d != math.inf]
        return min(finite) if finite else None

    @staticmethod
    def kind(w: Worker) -> str:
        """Workers of one kind fail alike: a generation's children, or one external worker's restarts."""
        return f"generation {w.generation}" if w.generation is not None else w.identity

    # -- liveness ------------------------------------------------------------------------------
    def _heard(self, w: Worker, now: float) -> None:
        w.heard = now
        w.stopped = False  # it runs again (SIGCONT)
        w.probe_at = now + self.settings.frozen_after if w.child else math.inf

    def _silence_deadline(self, w: Worker) -> float:
        if not w.child:
            return w.heard + self.settings.silence_limit
        return min(w.probe_at, w.heard + self.settings.hang_after)

    def _check_silence(self, w: Worker, now: float, out: list[Action]) -> None:
        silent = now - w.heard  # compared as the deadline was computed: heard + limit (floating point)
        if not w.child:
            if now >= w.heard + self.settings.silence_limit:
                self._fence(w, f"heartbeat silence ({silent:.1f} s)", now, out)
        elif now >= w.heard + self.settings.hang_after:
            self._fence(w, f"hung: silent for {silent:.1f} s", now, out)
        elif w.probe_at <= now:
            w.probe_at = now + self.settings.interval  # asked again while the silence lasts
            out.append(CheckFrozen(w.sid, w.identity))

    def _fence(self, w: Worker, reason: str, now: float, out: list[Action]) -> None:
        """Drop ``w`` as hung: a child's process is killed (its connection ends with it, its exit releases its
        lease); an external worker's connection is closed."""
        self._judge_trial(w.identity, "fenced", f"fenced before it was promoted: {reason}", out, gone=True)
        self._forget(w, out, reason, now)
        if self.lease is not None and self.lease.identity == w.identity:
            self.lease.fence_at = math.inf  # killed just below
        if w.child:
            # Not closed from our side first: closing the connection of a process stopped a moment ago has stalled
            # the whole supervisor (docs/reliability.md); a killed process's connection ends as a crash's does.
            out.append(Kill(w.identity, reason))
        else:
            out.append(Close(w.sid, reason, w.identity, hung=True))

    def _check_lost_holder(self, now: float, out: list[Action]) -> None:
        lease = self.lease
        if lease is not None and lease.sid is None and lease.fence_at <= now:
            lease.fence_at = math.inf
            reason = f"hung: lost ({lease.lost}) and silent for {self.settings.hang_after:g} s"
            out.append(Kill(lease.identity, reason))

    # -- helpers -------------------------------------------------------------------------------
    def _move(self, w: Worker, trigger: Trigger, out: list[Action], reason: str = "") -> None:
        new = next_role(w.role, trigger)
        if new is not w.role:
            epoch = self.lease.epoch if self.lease is not None and self.lease.sid == w.sid else None
            out.append(RoleChanged(w.sid, w.identity, w.role.value, new.value, epoch, reason, self.index))
            w.role = new

    def _worker(self, sid: str) -> Worker:
        w = self.clients.get(sid)
        if w is None:
            raise RoleError("not an identified worker connection")
        return w

    def _cmd(self, w: Worker, name: str, data: dict[str, Any] | None = None) -> Send:
        return Send(w.sid, "cmd", {"t": name, "d": data or {}}, w.identity)

    def _newness(self, w: Worker) -> tuple[int, Version]:
        return (w.generation if w.generation is not None else -1, version_key(w.version))

    def _holds(self, w: Worker) -> bool:
        return self.lease is not None and self.lease.sid == w.sid

    def _candidate(self, w: Worker) -> bool:
        """May be promoted: an approved standby whose Discord Gateway is not known to be down."""
        return (
            w.role is Role.STANDBY
            and w.approved
            and w.gateway is not False
            and not w.stopped
            and w.identity not in self.rejected
        )

    def _ran_fine(self, w: Worker) -> None:
        """Forget the failures ``w`` proves past: its own kind's, and those of older generations than its."""
        for kind, failure in list(self.failures.items()):
            older = failure.generation is not None and w.generation is not None and failure.generation <= w.generation
            if kind == self.kind(w) or older:
                del self.failures[kind]

    def _breach(self, w: Worker, rule: str, text: str, out: list[Action]) -> None:
        """``w`` broke a v1 rule: warn once per connection (its answer says the fix every time)."""
        if rule not in w.warned:
            w.warned.add(rule)
            out.append(Notify("warning", f"{w.identity} {text}"))

    def _forget(self, w: Worker, out: list[Action], reason: str, now: float) -> None:
        if w.role is not Role.GONE:
            self._move(w, Trigger.LOST, out, reason)
        del self.clients[w.sid]
        if self._holds(w):
            assert self.lease is not None
            if not self.lease.confirmed:
                self._release(out, f"failover: {w.identity} lost ({reason}) before it processed")
            else:
                # Unreachable, maybe still processing: the lease stands. No word yet: its exit, seen a moment
                # later, usually ends the lease at once (and the promotion says so); if not, its expiry does.
                self.lease.sid = None
                self.lease.lost, self.lease.lost_at = reason, now
                if w.child and self.stopping is None:
                    self.lease.fence_at = w.heard + self.settings.hang_after

    def _count_loss(self, e: ProcessExited, now: float, out: list[Action]) -> None:
        """An unasked exit: a warning the first time in the window, quoting the worker's last lines; the next
        ones are the process manager's log lines only (each names a different worker: the notifier could not
        fold them into a count), until the one that makes a crash loop, critical, quotes its last lines."""
        window = self.settings.crash_loop_window
        self.losses = [t for t in self.losses if t > now - window] + [now]
        # A worker that said ``failed`` was announced already (critical, folded by kind): its exit adds nothing.
        said = any(w.identity == e.identity and w.role is Role.FAILED for w in self.clients.values())
        lived = f" after {e.uptime:.1f} s" if e.uptime is not None else ""
        died = f"{e.identity} exited ({e.returncode}){lived}{quote_tail(e.tail)}"
        limit = self.settings.crash_loop_losses
        if limit and len(self.losses) >= limit and self.is_sane:
            self.is_sane = False
            out.append(Persist(self.state()))
            left = sum(1 for w in self.clients.values() if w.identity != e.identity and w.role is not Role.GONE)
            out.append(
                Notify(
                    "critical",
                    f"crash loop: {len(self.losses)} workers lost within {window:g}s ({left} left); "
                    f"no more spawns or deploys until an operator says try_again. Last: {died}",
                )
            )
        elif len(self.losses) == 1 and not said:
            out.append(Notify("warning", f"worker {died}"))

    def _release(self, out: list[Action], why: str) -> None:
        """The lease is free; ``why`` (what happened, for people) becomes the next promotion's reason."""
        lease = self.lease
        assert lease is not None
        if lease.stopping and not lease.final_cache and self.cache is not None:
            out.append(Notify("warning", f"{lease.identity} stopped without a final cache; using the last one"))
        holder = self.clients.get(lease.sid) if lease.sid is not None else None
        if holder is not None:
            holder.cache_in = None  # a sync it left unfinished is never applied now: its staged bytes go
        self.lease = None
        self.vacancy = why
        out.append(Persist(self.state()))

    # -- events from workers ----------------------------------------------------------------------
    def _on_Connected(self, e: Connected, now: float, out: list[Action]) -> None:
        if e.admin:
            self.admins.add(e.sid)
        else:
            self.clients[e.sid] = Worker(
                e.sid, e.identity, generation=e.generation, spawned_generation=e.generation, release=e.release
            )
            self._heard(self.clients[e.sid], now)

    def _on_Spoke(self, e: Spoke, now: float, out: list[Action]) -> None:
        pass  # heard (in handle): that is all a message the shell could not parse does

    def _on_Frozen(self, e: Frozen, now: float, out: list[Action]) -> None:
        lease = self.lease
        lost = lease is not None and lease.identity == e.identity and lease.sid is None  # before any fence below
        for w in [w for w in self.clients.values() if w.identity == e.identity and w.child]:
            silent = now - w.heard
            if e.seen is not None and w.heard <= e.seen:  # stopped by a signal, and no word since
                w.stopped = True  # a standby is not promoted while it cannot even take its grant
                if self._holds(w):
                    # It processes nothing while stopped, and will not by itself: fenced now, not after a silence
                    # (nothing healthy is ever in state T; the lease is released by its exit, as for any fence).
                    # Killed, not closed first: its connection ends with the process, as a crashed worker's does.
                    reason = f"stopped: its process was stopped by a signal, silent for {silent:.1f} s"
                    self._forget(w, out, reason, now)
                    if self.lease is not None:  # (an unconfirmed grant was released by the forgetting)
                        self.lease.fence_at = math.inf
                    out.append(Kill(w.identity, reason))
                    continue
            if now >= w.heard + self.settings.frozen_after:  # it may have been continued (and spoken) since
                self._fence(w, f"frozen: its process is stopped, silent for {silent:.1f} s", now, out)
        if e.seen is not None and lease is not None and lost:
            # The holder's connection is gone (dropped while it was stopped, or an earlier supervisor's lease) and
            # its process is stopped: killed now, its exit releases the lease, instead of waiting out the lease.
            lease.fence_at = math.inf
            out.append(Kill(e.identity, "stopped holder without a connection"))

    def _on_Identified(self, e: Identified, now: float, out: list[Action]) -> None:
        w = self._worker(e.sid)
        if not isinstance(e.version, str) or len(e.version) > MAX_VERSION_LENGTH:
            raise RoleError("identify needs a version string")
        lease = self.lease
        adopt = (
            lease is not None
            and lease.identity == w.identity
            and e.epoch == lease.epoch
            and e.lease_token is not None
            and lease.token is not None
            and secrets.compare_digest(e.lease_token.encode(), lease.token.encode())
            and lease.expires > now
            and not lease.stopping
            and w.role is Role.CONNECTED
        )
        self._move(w, Trigger.IDENTIFY, out)
        w.version, w.pid = e.version, e.pid
        warning = self._generation(w, e.generation, out)
        hello: dict[str, Any] = {
            "protocol": PROTOCOL_VERSION,
            "token": self.settings.token,
            "process_commands": False,
            "interval": self.settings.interval,
            "lease": self.settings.lease,
            "epoch": self.epoch,
        }
        if adopt:
            assert lease is not None
            if lease.sid is not None and lease.sid in self.clients:
                stale = self.clients.pop(lease.sid)  # its own earlier connection: no loss, no alarm
                gone = Role.GONE.value
                out.append(RoleChanged(stale.sid, stale.identity, stale.role.value, gone, None, "replaced", self.index))
                out.append(Close(stale.sid, "replaced by a newer connection"))
            lease.sid = w.sid
            lease.fence_at = math.inf  # back in time
            w.approved = True
            self._move(w, Trigger.ADOPT, out, "reconnected lease holder")
            hello["process_commands"] = True
            hello["epoch"] = lease.epoch
            self._ran_fine(w)
        if self.group is not None:  # §18.3: the shards it runs (a v1 worker of an unsharded bot never sees these)
            hello["shards"] = list(self.group.ids)
            hello["shard_count"] = self.shard_count
        if warning:
            hello["warning"] = warning  # a v1 worker ignores keys it does not know; a person reading its log won't
        out.append(Reply(hello))
        out.append(Send(w.sid, "hello", hello))
        if self.stopping is not None:  # (re)connected while we stop: its hello first, or a client cannot act on it
            self._shutdown(w, self.stopping, out)
        elif w.identity in self.rejected:  # a deploy candidate judged against before it identified: the same
            self._shutdown(w, f"candidate rejected: {self.rejected[w.identity]}", out)

    def _generation(self, w: Worker, claimed: int | None, out: list[Action]) -> str | None:
        """Its generation: the one we spawned it with if we did, else its claim; a warning if they differ."""
        spawned = w.spawned_generation
        if spawned is None:
            w.generation = claimed
            return None
        w.generation = spawned
        if claimed == spawned:
            return None
        if claimed is None:
            fix = GENERATION_FIX.format(generation=spawned)
        else:
            fix = f"identify claims generation {claimed}, but this child was spawned as generation {spawned}: "
            fix += f"{spawned} counts (send URBAN_ROBOT_GENERATION unchanged, protocol v1 §5.1)"
        self._breach(w, "generation", f"identified with the wrong generation: {fix}", out)
        return fix

    def _note_gateway(self, w: Worker, up: bool | None, now: float) -> None:
        if up is None or up is w.gateway:
            return  # not reported (a worker that does not know), or no change: down_since keeps its start
        w.gateway = up
        w.gateway_down_since = None if up else now

    def _on_Heartbeat(self, e: Heartbeat, now: float, out: list[Action]) -> None:
        w = self._worker(e.sid)
        self._note_gateway(w, e.gateway, now)
        lease = self.lease
        holds = lease is not None and lease.sid == w.sid and lease.expires > now and not lease.stopping
        length = self._renewal(now) if holds else None
        if holds and lease is not None and e.epoch == lease.epoch and length is not None:
            lease.expires = now + length + self.settings.lease_margin
            lease.confirmed = True
            out.append(Reply({"epoch": lease.epoch, "lease": length}))
        elif holds and lease is not None and e.epoch == lease.epoch:
            out.append(Reply({"epoch": lease.epoch, "lease": 0}))  # etcd no longer grants it here (§19.3): fenced
            # A holder adopted after a restart (its etcd key went with the old agent's etcd lease), or one whose grant
            # ended: it stops at once on that answer; told to go into coma, it frees the group here when it says so.
            self._stop_holder(w, f"etcd does not grant {self.name} to it here", now, out)
        elif holds and lease is not None and e.epoch is None and lease.epochless == 0:
            lease.epochless = 1  # sent before the grant reached it, most likely: a v1 worker's next one has the epoch
            out.append(Reply({"epoch": self.epoch, "lease": 0}))
        elif holds and lease is not None and e.epoch is None:
            # The seeds' heartbeat has no epoch: still no renewal (P1), but now the holder learns why.
            fix = HEARTBEAT_FIX.format(epoch=lease.epoch)
            self._breach(w, "heartbeat_epoch", f"holds the lease but heartbeats without its epoch: {fix}", out)
            out.append(Reply({"epoch": lease.epoch, "lease": 0, "error": fix}))
        else:
            out.append(Reply({"epoch": self.epoch, "lease": 0}))

    def _on_Ready(self, e: Ready, now: float, out: list[Action]) -> None:
        w = self._worker(e.sid)
        self._move(w, Trigger.READY, out)
        out.append(Reply({}))
        if self._holds(w) and w.role is Role.RUNNING:
            out.append(self._cmd(w, "ok"))
        elif w.role is Role.STANDBY and not w.approved:
            self._move(w, Trigger.CHECK, out)
            w.check_deadline = now + self.settings.health_timeout
            self._trial_step(w, "checking", now)
            if self.cache is not None and w.cache_seq != self.cache_seq:  # warm from now on (§11.3): then deltas
                self._push_cache(w, self.cache.as_change().parts(self.cache_seq), out)
            out.append(self._cmd(w, "health_check"))  # after the cache: its report says it arrived (pushes keep order)

    def _renewal(self, now: float) -> float | None:
        """How long the holder's lease may be renewed for now: ``lease``, capped by the cluster's grant (§19.3)."""
        if not self.settings.cluster:
            return self.settings.lease
        gate, lease = self.gate, self.lease
        if gate is None or lease is None or gate.epoch != lease.granted or gate.identity != lease.identity:
            return None
        if now >= gate.until:
            return None
        return min(self.settings.lease, gate.until - now)

    def _on_HealthReport(self, e: HealthReport, now: float, out: list[Action]) -> None:
        w = self._worker(e.sid)
        if w.role is not Role.CHECKING:
            raise RoleError("no health check was asked of this worker")
        failure = self._judge(e.report)
        # Judged at once, malformed or not (no time-out to wait out); a malformed report is told the fix.
        out.append(Reply({"error": HEALTH_REPORT_FIX} if failure == "health_check_malformed" else {}))
        if failure is None:
            w.approved = True
            w.check_deadline = math.inf
            self._move(w, Trigger.PASS, out, "health check passed")
            self._trial_step(w, "passed", now)
            self._ran_fine(w)  # it logged in to Discord and works
            if self.settings.shutdown_if_outdated and self._outdated(w):
                self._shutdown(w, "outdated", out)
        else:
            self._fail_check(w, failure, out, e.report)

    def _judge(self, report: Any) -> str | None:
        """The Health Check Spec: None if healthy, else the shutdown reason."""
        if not isinstance(report, dict) or type(report.get("OK")) is not bool:
            return "health_check_malformed"
        cogs = report.get("cogs", {})
        if not isinstance(cogs, dict) or any(type(v) is not bool for v in cogs.values()):
            return "health_check_malformed"
        percent = report.get("percent")
        if percent is not None and (type(percent) not in (int, float) or not 0 <= percent <= 100):
            return "health_check_malformed"
        if cogs or not report["OK"]:
            if any(cogs.get(name) is not True for name in self.settings.vital_cogs):
                return "vital_cog_failed"
        if report["OK"]:
            return None
        if percent is None or percent < self.settings.healthy_percentage:
            return "health_check_failure"
        return None

    def _fail_check(self, w: Worker, reason: str, out: list[Action], report: Any = None) -> None:
        w.check_deadline = math.inf
        self._move(w, Trigger.FAIL, out, reason)
        self.leaving.add(w.identity)  # told to go (the deployer rolls back): its exit is no crash
        out.append(self._cmd(w, "shutdown", {"reason": reason, "cache_sync": False}))
        fix = f" — {HEALTH_REPORT_FIX}" if reason == "health_check_malformed" else self._failing_cogs(report, reason)
        out.append(Notify("warning", f"{w.identity} (version {w.version}) failed its health check: {reason}{fix}"))
        detail = self._failing_cogs(report, reason).strip(" ()") if reason != "health_check_malformed" else ""
        why = f"health check: {reason}" + (f" ({detail})" if detail else "")
        if self._judge_trial(w.identity, "failed health check", why, out):
            return  # a deploy's candidate: its verdict is the one word on it (the deployer rolls back on it)
        holder = self.clients.get(self.lease.sid) if self.lease is not None and self.lease.sid else None
        if holder is None or self._newness(w) > self._newness(holder):
            out.append(RollBack(reason, w.version, w.generation, detail, self.index))  # new code failed: go back

    def _failing_cogs(self, report: Any, reason: str) -> str:
        """`` (failing: modules.music, modules.x; missing vital: modules.utilities)`` from a well-formed report."""
        if not isinstance(report, dict) or not isinstance(report.get("cogs"), dict):
            return ""
        cogs: dict[str, Any] = report["cogs"]
        failing = sorted(str(name) for name, ok in cogs.items() if ok is not True)
        missing = [name for name in self.settings.vital_cogs if name not in cogs]
        parts = [f"failing: {', '.join(failing)}"] if failing else []
        parts += [f"missing vital: {', '.join(missing)}"] if missing and (cogs or not report.get("OK")) else []
        percent = report.get("percent")
        if isinstance(percent, int | float) and reason == "health_check_failure":
            parts.append(f"{percent:g}% healthy, {self.settings.healthy_percentage:g}% needed")
        return f" ({'; '.join(parts)})" if parts else ""

    def _on_CacheSync(self, e: CacheSync, now: float, out: list[Action]) -> None:
        """One part of the holder's cache sync (§11): staged as bytes, applied once the last part is in."""
        w, part = self._worker(e.sid), e.part
        if w.cache_refused is not None and w.cache_refused[0] == part.sync and part.part > 0:
            out.append(Reply({"accepted": False, "error": w.cache_refused[1]}))
            return
        w.cache_refused = None
        if not self._holds(w):
            self._refuse_cache(w, part.sync, {"error": "only the running worker's cache is kept"}, out)
            return
        assert self.lease is not None
        if not self.lease.confirmed and not self.lease.stopping:
            # It processes nothing before its first renewal (P1), and messages keep their order: a sync now was sent
            # before its grant (a stale one), never a cache it made under this lease. Kept, it would replace the
            # newer cache the grant pushed to it, and the next holder would start from the stale one (P3).
            why = "not processing yet: a cache is kept only once the grant's lease was renewed"
            self._refuse_cache(w, part.sync, {"error": why}, out)
            return
        if w.cache_in is None:
            w.cache_in = Assembly(self.settings.cache_max)
        try:
            change = w.cache_in.add(part)
        except MalformedMessage as exc:
            self._refuse_cache(w, part.sync, {"error": str(exc)}, out)
            return
        if change is None:
            out.append(Reply({"accepted": True, "part": part.part}))
            return
        if not change.full and (self.cache is None or w.cache_seq != self.cache_seq):
            why = "a delta on a cache this worker does not share with the supervisor: send the whole cache"
            self._refuse_cache(w, part.sync, {"error": why, "resync": True}, out)
            return
        base = self.cache_seq
        image = (self.cache or CacheImage()).apply(change)
        if image.size > self.settings.cache_max:
            why = f"cache larger than the supervisor's cache_max ({self.settings.cache_max} bytes)"
            self._refuse_cache(w, part.sync, {"error": why}, out)
            return
        self.cache, self.cache_age, self.replica = image, now, None
        self.cache_seq += 1
        w.cache_seq = self.cache_seq
        if self.lease.stopping:
            self.lease.final_cache = True
        out.append(Reply({"accepted": True}))
        final, epoch = self.lease.stopping, self.lease.epoch
        out.append(PersistCache(image, change, base, self.cache_seq, now, final=final, group=self.index, epoch=epoch))
        cut: dict[bool, list[CacheSyncMessage]] = {}  # the parts, made once and only if someone gets them
        for other in self.clients.values():
            if other.role in (Role.STANDBY, Role.CHECKING):
                whole = not change.full and other.cache_seq != base  # it missed an earlier sync: the whole image
                if whole not in cut:
                    cut[whole] = (image.as_change() if whole else change).parts(self.cache_seq)
                self._push_cache(other, cut[whole], out)

    def _refuse_cache(self, w: Worker, sync: int, answer: dict[str, Any], out: list[Action]) -> None:
        w.cache_in = None  # nothing staged is kept
        w.cache_refused = (sync, str(answer["error"]))
        out.append(Reply({"accepted": False, **answer}))

    def _push_cache(self, w: Worker, parts: list[CacheSyncMessage], out: list[Action]) -> None:
        w.cache_seq = self.cache_seq
        out.extend(Send(w.sid, "cache_sync", p.payload()) for p in parts)

    def _on_ComaAck(self, e: ComaAck, now: float, out: list[Action]) -> None:
        w = self._worker(e.sid)
        self._move(w, Trigger.COMA_ACK, out, e.reason)
        out.append(Reply({}))
        if self._holds(w):
            self._release(out, self._acknowledged(w, "went into a coma", e.reason))

    def _on_ShutdownAck(self, e: ShutdownAck, now: float, out: list[Action]) -> None:
        w = self._worker(e.sid)
        self._move(w, Trigger.SHUTDOWN_ACK, out, e.reason)
        if w.role is Role.SHUTTING_DOWN and w.identity not in self.leaving:
            self.quitting.add(w.identity)  # it goes by itself (a signal, bot.close()): no crash, but replaced
        out.append(Reply({}))
        if self._holds(w):
            self._release(out, self._acknowledged(w, "shut down", e.reason))

    def _acknowledged(self, w: Worker, what: str, said: str) -> str:
        """Why the lease is free after the holder stopped: the hand-over we asked for, or what it said."""
        assert self.lease is not None
        if self.lease.stopping and self.lease.reason:
            return self.lease.reason
        return f"{w.identity} {what} by itself" + (f" ({said})" if said else "")

    def _on_WorkerFailed(self, e: WorkerFailed, now: float, out: list[Action]) -> None:
        w = self._worker(e.sid)
        held = self._holds(w)
        w.check_deadline = math.inf
        self._move(w, Trigger.FAILED, out, e.reason)  # the role says "failed" already
        self.leaving.discard(w.identity)  # its exit is a crash (counted, replaced), whatever it was asked before
        self.quitting.discard(w.identity)
        out.append(Reply({}))
        failure = Failure(w.identity, w.generation, w.version, e.reason, e.hint, now)
        self.failures[self.kind(w)] = failure
        # One line, the same for every worker that fails alike, so the notifier folds repeats into a count.
        # Critical: a refused login is never fixed by a restart; only the operator can (token, intents).
        which = f" (version {w.version})" if w.version is not None else ""  # it may fail before it identifies
        out.append(Notify("critical", f"a worker{which} cannot work: {failure.text}"))
        if held:
            self._release(
                out, f"failover: {w.identity} failed ({e.reason})"
            )  # it stopped processing before it said so (§5.9), as for a shutdown ack

    def _on_Disconnected(self, e: Disconnected, now: float, out: list[Action]) -> None:
        self.admins.discard(e.sid)
        w = self.clients.get(e.sid)
        if w is not None:
            self._forget(w, out, "disconnected", now)

    def _on_ProcessExited(self, e: ProcessExited, now: float, out: list[Action]) -> None:
        # Counted (and replaced) whether or not its connection is still known: the disconnect often
        # comes first, and a child can die before it ever connects. Only an exit is a reason to
        # replace: a lost connection may come back, and a hung child is killed first (Close ... hung).
        # Asked (we told it to shut down): neither counted nor replaced. Quit by itself (it said shutdown
        # unasked: a SIGTERM, the bot's own close()): replaced, not counted. Anything else: counted and replaced.
        self._judge_trial(e.identity, "exited", f"exited with {e.returncode} before it was promoted", out, gone=True)
        self.rejected.pop(e.identity, None)  # identities are never reused: nothing more to refuse it
        asked, by_itself = e.identity in self.leaving, e.identity in self.quitting
        self.leaving.discard(e.identity)
        self.quitting.discard(e.identity)
        if not asked and not e.candidate and self.stopping is None:
            if not by_itself:
                self._count_loss(e, now, out)
            if self.settings.spawn_workers and self.is_sane:
                how = "it shut down by itself" if by_itself else f"exited ({e.returncode})"
                out.append(Spawn(f"replace {e.identity}: {how}", self.index))
        if self.lease is not None and self.lease.identity == e.identity:
            # Proof: nothing runs in a dead process.
            why = self.lease.reason if self.lease.stopping and self.lease.reason else ""
            self._release(out, why or f"failover: {e.identity} exited ({e.returncode})")
        for w in [w for w in self.clients.values() if w.identity == e.identity]:
            self._forget(w, out, f"process exited ({e.returncode})", now)
            out.append(Close(w.sid, "process exited", w.identity))

    def _on_TimerFired(self, e: TimerFired, now: float, out: list[Action]) -> None:
        trial = self.trial  # first: before any Persist (see _promote)
        if trial is not None and trial.deadline <= now:
            self._judge_trial(trial.identity, "timed out", "no verdict in time", out)
        for w in list(self.clients.values()):
            self._check_silence(w, now, out)
        self._check_lost_holder(now, out)
        for w in list(self.clients.values()):
            if w.role is Role.CHECKING and w.check_deadline <= now:
                self._fail_check(w, "health_check_timeout", out)
        lease = self.lease
        if lease is not None and lease.stopping and lease.stop_deadline <= now:
            lease.stop_deadline = math.inf
            if self.stopping is None:  # when stopping, the process manager signals it instead
                message = f"{lease.identity} did not acknowledge coma; waiting for its lease to end"
                out.append(Notify("warning", message))

    def _on_TryAgain(self, e: TryAgain, now: float, out: list[Action]) -> None:
        if e.sid is not None and e.sid not in self.admins:
            out.append(Reply({"error": "try_again needs the admin credential"}))
            return
        self.is_sane = True
        self.losses = []
        out.append(Reply({"is_sane": True}))
        out.append(Persist(self.state()))
        out.append(Notify("info", "try_again: deploying and spawning resumed"))
        if self.settings.spawn_workers and self.stopping is None:
            # What was there comes back at once: one running plus the standbys (the manager knows how many).
            out.append(TopUp("try_again"))

    def _on_DeployConfirmed(self, e: DeployConfirmed, now: float, out: list[Action]) -> None:
        self.last_known_good_hash = e.commit
        out.append(Persist(self.state()))
        out.append(Notify("info", f"deployed {e.commit[:12]}: it is the last known good commit now"))

    def _on_RetireOlder(self, e: RetireOlder, now: float, out: list[Action]) -> None:
        waiting = (Role.CONNECTED, Role.IDENTIFIED, Role.STANDBY, Role.CHECKING)
        for w in list(self.clients.values()):
            if w.generation is not None and w.generation < e.generation and w.role in waiting:
                self._shutdown(w, f"outdated: generation {e.generation} runs now", out)
        # How many new ones replace them is the process manager's count, not ours.

    def _on_RollbackFinished(self, e: RollbackFinished, now: float, out: list[Action]) -> None:
        if e.ok:
            out.append(Notify("info", f"rolled back to {self.last_known_good_hash}: {e.detail}"))
            return
        self.is_sane = False
        out.append(Persist(self.state()))
        out.append(Notify("critical", f"rollback failed, deploying stopped until try_again: {e.detail}"))

    def _on_Stopping(self, e: Stopping, now: float, out: list[Action]) -> None:
        if self.stopping is not None:
            return  # one stop, one notification
        self.stopping = e.reason
        if self.settings.cluster:  # the other hosts' standbys take this host's groups over
            out.append(
                Notify("warning", f"this host's supervisor stopping ({e.reason}): its groups go to the other hosts")
            )
        else:
            out.append(Notify("warning", f"supervisor stopping: the bot goes offline ({e.reason})"))
        if self.trial is not None:
            self._judge_trial(self.trial.identity, "stopping", f"supervisor stopping ({e.reason})", out)
        lease = self.lease
        if lease is not None and not lease.stopping:
            lease.stopping = True  # no renewal, and no adoption of a reconnecting holder, from now on
            lease.stop_deadline = now + self.settings.ack_timeout
        for w in list(self.clients.values()):
            if self._holds(w):
                self.leaving.add(w.identity)  # asked to go: its exit is no crash
                if w.role is Role.RUNNING:
                    self._move(w, Trigger.STOP, out, e.reason)
                out.append(self._cmd(w, "shutdown", {"reason": e.reason, "cache_sync": True}))
            elif w.role not in (Role.CONNECTED, Role.SHUTTING_DOWN, Role.GONE):  # CONNECTED: once it identifies
                self._shutdown(w, e.reason, out)

    def _on_CandidateStarted(self, e: CandidateStarted, now: float, out: list[Action]) -> None:
        old = self.trial
        if old is not None:
            # One candidate at a time (the deployer serialises them): the older one gets its verdict now and is
            # rejected as any other (told to shut down, never promoted); its process is whoever started it's to stop.
            self._judge_trial(old.identity, "replaced", f"replaced by a newer candidate, {e.identity}", out)
        self.trial = Trial(e.identity, e.generation, now + e.timeout, {"spawned": now})
        if self.stopping is not None:
            self._judge_trial(e.identity, "stopping", f"supervisor stopping ({self.stopping})", out)

    # -- the decisions ----------------------------------------------------------------------------
    def _trial_step(self, w: Worker, step: str, now: float) -> None:
        """The deploy candidate reached ``step`` (its first time counts), for the phases the deployer logs."""
        if self.trial is not None and self.trial.identity == w.identity:
            self.trial.times.setdefault(step, now)

    def _judge_trial(self, identity: str, outcome: str, detail: str, out: list[Action], *, gone: bool = False) -> bool:
        """If ``identity`` is the deploy candidate: its one ``Verdict``, and it is a candidate no more.

        A verdict is final: a candidate judged against is never promoted later (its process is the deployer's
        to stop, which takes a moment). Still waiting (identified, standing by, being checked), it is told to
        shut down now; not yet identified, as soon as it identifies (a client without its hello cannot act).
        ``gone``: its process exited or is being killed, so there is nobody to tell.
        """
        trial = self.trial
        if trial is None or trial.identity != identity:
            return False
        self.trial = None
        out.append(Verdict(identity, trial.generation, outcome, detail, tuple(trial.times.items()), self.index))
        if outcome not in ("promoted", "standing by") and not gone:
            self.rejected[identity] = detail
            for w in [w for w in self.clients.values() if w.identity == identity]:
                if w.role in (Role.IDENTIFIED, Role.STANDBY, Role.CHECKING):
                    w.check_deadline = math.inf
                    self._shutdown(w, f"candidate rejected: {detail}", out)
        return True

    def _outdated(self, w: Worker) -> bool:
        holder = self.clients.get(self.lease.sid) if self.lease is not None and self.lease.sid else None
        return holder is not None and holder is not w and self._newness(w) < self._newness(holder)

    def _shutdown(self, w: Worker, reason: str, out: list[Action]) -> None:
        self._move(w, Trigger.SHUTDOWN, out, reason)
        self.leaving.add(w.identity)  # asked to go: its exit is no crash
        out.append(self._cmd(w, "shutdown", {"reason": reason, "cache_sync": False}))

    def _reconcile(self, now: float, out: list[Action]) -> None:
        lease = self.lease
        if lease is not None and lease.expires <= now:
            why = self._expired(lease, now, out)
            if lease.sid is not None and lease.sid in self.clients:
                # Connected yet not renewing in time (hung, or ignoring coma): fence it off for good.
                self._fence(self.clients[lease.sid], "lease expired", now, out)
            if self.lease is not None:  # forgetting an unconfirmed holder released it already
                self._release(out, why)
        candidates = [w for w in self.clients.values() if self._candidate(w)] if self.stopping is None else []
        if not candidates:
            if self.settings.cluster and self.lease is None and not self.yielded:
                self.yielded, self.claimed = True, None  # another host's standby may take the group at once
                out.append(Yield(self.index))
            return  # going down (nobody is promoted, nobody handed over to), or nobody to promote
        best = max(candidates, key=self._newness)
        if self.lease is None and self.settings.cluster:
            self._promote_granted(best, candidates, now, out)
            return
        if self.lease is None:
            self._promote(best, now, out, self.vacancy)
            return
        lease = self.lease
        holder = self.clients.get(lease.sid) if lease.sid is not None else None
        if lease.stopping or holder is None:
            return
        due = self._gateway_deadline()
        if due is not None and due <= now and holder.gateway_down_since is not None:
            # Not processing anything Discord sends it: a hand-over like a failover, whatever is_sane says.
            down = now - holder.gateway_down_since
            self._stop_holder(holder, f"gateway down for {down:.1f} s: hand-over to {best.identity}", now, out)
            return
        if self.is_sane and self._newness(best) > self._newness(holder):
            outdated = self.settings.shutdown_if_outdated
            origin = best.release or (f"generation {best.generation}" if best.generation is not None else best.identity)
            reason = f"hand-over to {best.version} ({origin})"
            self._stop_holder(holder, reason, now, out, shutdown=outdated)

    def _promote_granted(self, best: Worker, candidates: list[Worker], now: float, out: list[Action]) -> None:
        """Several hosts: promote the standby etcd's key names here, under its (unused) epoch; else claim the key.

        A deploy's candidate that passed its check while the group is not held here stands by: that is its verdict
        (the holder's host hands over to its own candidate; a lost holder's group may come here, to it)."""
        gate = self.gate
        trial = (
            self.trial
        )  # (gate.epoch, the etcd revision, is the epoch unless a new etcd's revisions are behind ours)
        if trial is not None and gate is None:
            for w in candidates:
                if w.identity == trial.identity:
                    self._trial_step(w, "passed", now)
                    self._judge_trial(w.identity, "standing by", "passed its health check; another host holds", out)
        if gate is not None and gate.epoch != self.gate_used and now < gate.until:
            named = [w for w in candidates if w.identity == gate.identity]
            if named:
                epoch = gate.epoch
                if epoch <= self.epoch:  # etcd's revisions restarted (a new etcd, or one restored from a snapshot)
                    epoch = self.epoch + 1
                    out.append(
                        Notify(
                            "warning",
                            f"etcd's revision {gate.epoch} is not above this host's epoch {self.epoch} (a new or "
                            f"restored etcd?): epoch {epoch} is used, and epochs go on from it",
                        )
                    )
                self.gate_used = gate.epoch
                self._promote(named[0], now, out, self.vacancy, epoch=epoch)
                assert self.lease is not None
                self.lease.granted = gate.epoch
                return
        claim = (best.identity, self.gate_used)
        if self.claimed != claim:
            self.claimed, self.yielded = claim, False
            out.append(Claim(self.index, best.identity, self.gate_used))

    def _on_ClusterGrant(self, e: ClusterGrant, now: float, out: list[Action]) -> None:
        self.gate = Gate(e.epoch, e.identity, e.until)
        self.claimed = None  # a grant that does not fit (another identity, a used epoch) is claimed again

    def _on_ClusterStop(self, e: ClusterStop, now: float, out: list[Action]) -> None:
        self.gate, self.claimed = None, None
        lease = self.lease
        holder = self.clients.get(lease.sid) if lease is not None and lease.sid is not None else None
        if lease is not None and holder is not None and not lease.stopping and self.stopping is None:
            # Not renewed from now on: it stops by its lease's end anyway; asked now, it stops at once, hands its
            # final cache over, and its coma frees the group here (another host may already hold its key).
            self._stop_holder(holder, f"etcd no longer grants {self.name} here: {e.reason}", now, out)

    def _on_CacheReplicated(self, e: CacheReplicated, now: float, out: list[Action]) -> None:
        """A cache from the group's holder on another host (§19.7): kept, on disk, and pushed to our standbys."""
        if self.lease is not None:
            out.append(Reply({"refused": f"{self.name} has a holder on this host: a replica from {e.origin} is stale"}))
            return
        if self.replica is not None and (e.epoch, e.seq) <= self.replica[1:] and e.origin == self.replica[0]:
            out.append(Reply({"ok": True}))  # had it already (a retry whose answer was lost)
            return
        if self.replica is not None and e.epoch < self.replica[1]:
            # An older holder's (epochs are etcd revisions: a newer holder's is higher): kept, it would undo newer.
            out.append(Reply({"refused": f"a replica from epoch {e.epoch} is older than the one kept here"}))
            return
        if e.base == 0:
            base_image = CacheImage()
        elif self.replica == (e.origin, e.epoch, e.base) and self.cache is not None:
            base_image = self.cache
        else:
            out.append(Reply({"resync": True}))
            return
        image = base_image.apply(e.change)
        if image.size > self.settings.cache_max:
            out.append(Reply({"refused": f"cache larger than this host's cache_max ({self.settings.cache_max} bytes)"}))
            return
        base = self.cache_seq
        self.cache, self.cache_age, self.replica = image, now, (e.origin, e.epoch, e.seq)
        self.cache_seq += 1
        out.append(Reply({"ok": True}))
        change = e.change if e.base != 0 else image.as_change()
        out.append(PersistCache(image, change, base, self.cache_seq, now, group=self.index))
        cut: dict[bool, list[CacheSyncMessage]] = {}
        for w in self.clients.values():
            if w.role in (Role.STANDBY, Role.CHECKING):
                whole = e.base == 0 or w.cache_seq != base  # it missed one: the whole image
                if whole not in cut:
                    cut[whole] = (image.as_change() if whole else e.change).parts(self.cache_seq)
                self._push_cache(w, cut[whole], out)

    def _expired(self, lease: Lease, now: float, out: list[Action]) -> str:
        """Why an expired lease is free now (and a warning when its holder had been lost: the bot was silent)."""
        who = f"{lease.identity} epoch {lease.epoch}"
        if lease.restored and lease.sid is None and lease.lost is None:
            return f"failover: the previous holder's lease ({who}) ended"
        if lease.lost is not None and lease.lost_at is not None:
            later = now - lease.lost_at
            why = f"failover: {lease.identity} was lost ({lease.lost}) and its lease ended {later:.1f} s later"
            if self.stopping is None:
                out.append(Notify("warning", why))
            return why
        if lease.stopping:
            return f"failover: {who} did not stop when asked ({lease.reason}) and its lease ended"
        return f"failover: {who} stopped renewing its lease"

    def health_line(self, now: float) -> str:
        """The bot's health in one line (systemd's ``STATUS=``): who runs, how many stand by, or what is missing."""
        if self.stopping is not None:
            goes = "its groups go to the other hosts" if self.settings.cluster else "the bot goes offline"
            return f"stopping ({self.stopping}): {goes}"
        lease, waiting = self.lease, self.waiting_for(now)
        holder = self.clients.get(lease.sid) if lease is not None and lease.sid is not None else None
        standbys = sum(1 for w in self.clients.values() if self._candidate(w))
        insane = "" if self.is_sane else "; is_sane false: try_again needed"
        if holder is not None and lease is not None and not lease.stopping:
            return (
                f"running {holder.identity} (version {holder.version}, epoch {lease.epoch}); {standbys} standby{insane}"
            )
        return (waiting or "no worker running") + ("" if waiting and "try_again" in waiting else insane)

    def waiting_for(self, now: float) -> str | None:
        """What a promotion waits for, and how long (None: a worker runs, or nothing is to be waited for)."""
        lease = self.lease
        if self.stopping is not None:
            return f"nothing: the supervisor stops ({self.stopping})"
        if lease is not None:
            left = max(0.0, lease.expires - now)
            who = f"{lease.identity} epoch {lease.epoch}"
            if lease.sid is None and lease.restored:
                return f"waiting for the previous holder's lease ({who}) to end in {left:.0f} s"
            if lease.sid is None:
                lost = f", lost ({lease.lost})" if lease.lost else ""
                return f"waiting for the lease of {lease.identity} (epoch {lease.epoch}{lost}) to end in {left:.0f} s"
            if lease.stopping:
                return f"waiting for {lease.identity} to stop ({lease.reason}); its lease ends in {left:.0f} s at most"
            return None
        workers = [w for w in self.clients.values() if w.role is not Role.GONE]
        if any(self._candidate(w) for w in workers):
            return None  # promoted at the next event
        if any(w.role is Role.CHECKING for w in workers):
            return "waiting for a worker to pass its health check"
        if any(w.role is Role.STANDBY and w.approved for w in workers):
            return "waiting for a standby whose Discord Gateway is up"
        if any(w.role in (Role.CONNECTED, Role.IDENTIFIED, Role.STANDBY) for w in workers):
            return "waiting for a worker to log in to Discord (ready), then pass its health check"
        if not self.is_sane:
            return f"crash loop: {len(workers)} workers; try_again needed"
        return "waiting for a worker to start and connect"

    def _gateway_deadline(self) -> float | None:
        """When a holder whose Gateway is down hands over, if a standby with its Gateway up stands by."""
        lease = self.lease
        if lease is None or lease.stopping or lease.sid is None:
            return None
        holder = self.clients.get(lease.sid) if lease.sid is not None else None
        if holder is None or holder.gateway_down_since is None:
            return None
        if not any(self._candidate(w) for w in self.clients.values()):
            return None  # nobody better: keep the holder (its Gateway may come back)
        return holder.gateway_down_since + self.settings.gateway_down_limit

    def _stop_holder(
        self, holder: Worker, reason: str, now: float, out: list[Action], *, shutdown: bool = False
    ) -> None:
        assert self.lease is not None
        self.lease.stopping = True
        self.lease.reason = reason
        self.lease.stop_deadline = now + self.settings.ack_timeout
        self._move(holder, Trigger.STOP, out, reason)
        if shutdown:
            self.leaving.add(holder.identity)  # asked to go (outdated): its exit is no crash
        out.append(self._cmd(holder, "shutdown" if shutdown else "coma", {"reason": reason, "cache_sync": True}))

    def _promote(self, w: Worker, now: float, out: list[Action], reason: str, *, epoch: int | None = None) -> None:
        self.epoch = epoch if epoch is not None else self.epoch + 1
        expires = now + self.settings.lease + self.settings.lease_margin
        self.lease = Lease(w.identity, w.sid, self.epoch, expires, token=self._new_token())
        self._move(w, Trigger.PROMOTE, out, reason)
        self._trial_step(w, "running", now)
        # Before the Persist: the shell carries out nothing after a Persist that failed, and a verdict lost is a
        # deployer waiting for ever (the grant is not sent then either: the lease runs out unconfirmed).
        self._judge_trial(w.identity, "promoted", reason, out)
        out.append(Persist(self.state()))  # the epoch is on disk before anyone may use it
        if self.cache is not None and w.cache_seq != self.cache_seq:
            self._push_cache(w, self.cache.as_change().parts(self.cache_seq), out)
        grant = {"epoch": self.epoch, "lease": self.settings.lease, "lease_token": self.lease.token, "reason": reason}
        out.append(self._cmd(w, "process_commands", grant))
        out.append(Notify("info", f"{w.identity} (version {w.version}) is running, epoch {self.epoch}: {reason}"))
