"""The supervisor's decisions, sans-IO: events in (with ``now``), actions out.

State follows the seeds (``clients``, ``ready_clients``, ``running_client``,
``cache``, ``cache_age``, ``is_sane``, ``last_known_good_hash``) and keeps the
promises of DESIGN.md §1:

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

from ..protocol import MAX_VERSION_LENGTH, PROTOCOL_VERSION
from ._events import (
    Action,
    CacheSync,
    Close,
    ComaAck,
    Connected,
    DeployConfirmed,
    Disconnected,
    Event,
    HealthReport,
    Heartbeat,
    HeartbeatSilence,
    Identified,
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
    Stopping,
    TimerFired,
    TryAgain,
    WorkerFailed,
)
from ._roles import Role, RoleError, Trigger, next_role

STATE_VERSION = 1
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
    interval: float = 30.0  # how often workers heartbeat
    grace: float = 15.0  # silence past interval + grace = dead
    lease_margin: float = 5.0  # our view of a lease outlives the worker's by this much
    health_timeout: float = 30.0
    # A holder whose Discord Gateway has been down this long hands over to a standby whose Gateway is up:
    # longer than a RESUME after op 7 (well under 1 s), shorter than most re-identifies after op 9 (1-5 s).
    gateway_down_limit: float = 3.0
    stop_timeout: float = 30.0  # waiting for a coma/shutdown ack before relying on the lease
    spawn_workers: bool = False  # ask for replacements (when a process manager is attached)
    crash_loop_losses: int = 5  # this many unexpected worker losses ... (0: never a crash loop)
    crash_loop_window: float = 300.0  # ... within this many seconds = crash loop: is_sane = False
    max_message: int = 64 * 1024 * 1024  # largest Socket.IO message (a cache) a worker may send
    max_connections: int = 512  # HTTP connections open at once on the port (workers, dashboards, API, webhooks)

    @property
    def lease(self) -> float:
        return self.interval + self.grace

    @property
    def silence_limit(self) -> float:
        return self.interval + self.grace


@attrs.define(eq=False)
class Worker:
    wid: str
    identity: str
    role: Role = Role.CONNECTED
    version: str | None = None
    pid: int | None = None
    generation: int | None = None
    approved: bool = False  # passed its health check
    check_deadline: float = math.inf
    cache_seq: int = 0  # which of our caches it has
    spawned_generation: int | None = None  # what the process manager spawned it as: outranks its own claim
    gateway: bool | None = None  # its Discord Gateway as last reported (None: never reported, counts as up)
    gateway_down_since: float | None = None
    warned: set[str] = attrs.Factory(set)  # protocol rules it broke on this connection (each warned once)


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
    wid: str | None  # None while the holder is not connected (it may still be processing)
    epoch: int
    expires: float
    confirmed: bool = False  # the holder renewed at least once: it may be processing
    stopping: bool = False
    stop_deadline: float = math.inf
    final_cache: bool = False
    token: str | None = attrs.field(default=None, repr=False)  # proves a reconnecting holder is the same process


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
        cache: Any = None,
        now: float = 0.0,
        new_token: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self.settings = settings
        self._new_token = new_token
        self.clients: dict[str, Worker] = {}
        self.admins: set[str] = set()
        self.cache: Any = cache
        self.cache_age: float | None = None
        self.cache_seq = 1 if cache is not None else 0
        self.epoch = 0
        self.is_sane = True
        self.last_known_good_hash: str | None = None
        self.lease: Lease | None = None
        self.losses: list[float] = []  # when worker processes exited unasked (crash-loop detection)
        self.leaving: set[str] = set()  # identities WE asked to shut down: their exit is neither counted nor replaced
        self.quitting: set[str] = set()  # identities that said shutdown unasked: replaced, not counted
        self.failures: dict[str, Failure] = {}  # the last failure per kind of worker (``kind``)
        self.stopping: str | None = None  # why the supervisor stops; set: no promotion, no spawn, ever again
        if state:
            self._restore(state, now)

    # -- the seeds' views --------------------------------------------------------------
    @property
    def ready_clients(self) -> dict[str, Worker]:
        ready = (Role.STANDBY, Role.CHECKING, Role.RUNNING, Role.STOPPING)
        return {wid: w for wid, w in self.clients.items() if w.role in ready}

    @property
    def running_client(self) -> str | None:
        return self.lease.wid if self.lease is not None else None

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
                str(holder["identity"]), None, int(holder["epoch"]), expires, confirmed=True, token=token
            )

    # -- entry points ----------------------------------------------------------------------
    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` at time ``now``; the actions to carry out, in order."""
        out: list[Action] = []
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
            if self.lease.stopping:
                deadlines.append(self.lease.stop_deadline)
        gateway = self._gateway_deadline()
        if gateway is not None:
            deadlines.append(gateway)
        finite = [d for d in deadlines if d != math.inf]
        return min(finite) if finite else None

    @staticmethod
    def kind(w: Worker) -> str:
        """Workers of one kind fail alike: a generation's children, or one external worker's restarts."""
        return f"generation {w.generation}" if w.generation is not None else w.identity

    # -- helpers -------------------------------------------------------------------------------
    def _move(self, w: Worker, trigger: Trigger, out: list[Action], reason: str = "") -> None:
        new = next_role(w.role, trigger)
        if new is not w.role:
            epoch = self.lease.epoch if self.lease is not None and self.lease.wid == w.wid else None
            out.append(RoleChanged(w.wid, w.role.value, new.value, epoch, reason))
            w.role = new

    def _worker(self, wid: str) -> Worker:
        w = self.clients.get(wid)
        if w is None:
            raise RoleError("not an identified worker connection")
        return w

    def _cmd(self, w: Worker, name: str, data: dict[str, Any] | None = None) -> Send:
        return Send(w.wid, "cmd", {"t": name, "d": data or {}})

    def _newness(self, w: Worker) -> tuple[int, Version]:
        return (w.generation if w.generation is not None else -1, version_key(w.version))

    def _holds(self, w: Worker) -> bool:
        return self.lease is not None and self.lease.wid == w.wid

    def _candidate(self, w: Worker) -> bool:
        """May be promoted: an approved standby whose Discord Gateway is not known to be down."""
        return w.role is Role.STANDBY and w.approved and w.gateway is not False

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
        del self.clients[w.wid]
        if self._holds(w):
            assert self.lease is not None
            if not self.lease.confirmed:
                self._release(out, "never renewed, so never processed")
            else:
                self.lease.wid = None  # unreachable, maybe still processing: the lease stands
                if self.stopping is None:  # while stopping, nobody fails over: its process is stopped next
                    message = f"running worker {w.identity} lost ({reason}); failing over when its lease ends"
                    out.append(Notify("warning", message))

    def _count_loss(self, now: float, out: list[Action]) -> None:
        if not self.settings.crash_loop_losses:
            return  # crash-loop detection off
        window = self.settings.crash_loop_window
        self.losses = [t for t in self.losses if t > now - window] + [now]
        if len(self.losses) >= self.settings.crash_loop_losses and self.is_sane:
            self.is_sane = False
            out.append(Persist(self.state()))
            out.append(
                Notify(
                    "critical",
                    f"crash loop: {len(self.losses)} workers lost within {window:g}s; "
                    "no more spawns or deploys until an operator says try_again",
                )
            )

    def _release(self, out: list[Action], why: str) -> None:
        lease = self.lease
        assert lease is not None
        if lease.stopping and not lease.final_cache and self.cache is not None:
            out.append(Notify("warning", f"{lease.identity} stopped without a final cache; using the last one"))
        self.lease = None
        out.append(Persist(self.state()))

    # -- events from workers ----------------------------------------------------------------------
    def _on_Connected(self, e: Connected, now: float, out: list[Action]) -> None:
        if e.admin:
            self.admins.add(e.wid)
        else:
            self.clients[e.wid] = Worker(e.wid, e.identity, generation=e.generation, spawned_generation=e.generation)

    def _on_Identified(self, e: Identified, now: float, out: list[Action]) -> None:
        w = self._worker(e.wid)
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
            if lease.wid is not None and lease.wid in self.clients:
                stale = self.clients.pop(lease.wid)  # its own earlier connection: no loss, no alarm
                out.append(RoleChanged(stale.wid, stale.role.value, Role.GONE.value, None, "replaced"))
                out.append(Close(stale.wid, "replaced by a newer connection"))
            lease.wid = w.wid
            w.approved = True
            self._move(w, Trigger.ADOPT, out, "reconnected lease holder")
            hello["process_commands"] = True
            hello["epoch"] = lease.epoch
            self._ran_fine(w)
        if warning:
            hello["warning"] = warning  # a v1 worker ignores keys it does not know; a person reading its log won't
        out.append(Reply(hello))
        out.append(Send(w.wid, "hello", hello))
        if self.stopping is not None:  # (re)connected while we stop: its hello first, or a client cannot act on it
            self._shutdown(w, self.stopping, out)

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
        w = self._worker(e.wid)
        self._note_gateway(w, e.gateway, now)
        lease = self.lease
        holds = lease is not None and lease.wid == w.wid and lease.expires > now and not lease.stopping
        if holds and lease is not None and e.epoch == lease.epoch:
            lease.expires = now + self.settings.lease + self.settings.lease_margin
            lease.confirmed = True
            out.append(Reply({"epoch": lease.epoch, "lease": self.settings.lease}))
        elif holds and lease is not None and e.epoch is None:
            # The seeds' heartbeat has no epoch: still no renewal (P1), but now the holder learns why.
            fix = HEARTBEAT_FIX.format(epoch=lease.epoch)
            self._breach(w, "heartbeat_epoch", f"holds the lease but heartbeats without its epoch: {fix}", out)
            out.append(Reply({"epoch": lease.epoch, "lease": 0, "error": fix}))
        else:
            out.append(Reply({"epoch": self.epoch, "lease": 0}))

    def _on_Ready(self, e: Ready, now: float, out: list[Action]) -> None:
        w = self._worker(e.wid)
        self._move(w, Trigger.READY, out)
        out.append(Reply({}))
        if self._holds(w) and w.role is Role.RUNNING:
            out.append(self._cmd(w, "ok"))
        elif w.role is Role.STANDBY and not w.approved:
            self._move(w, Trigger.CHECK, out)
            w.check_deadline = now + self.settings.health_timeout
            out.append(self._cmd(w, "health_check"))

    def _on_HealthReport(self, e: HealthReport, now: float, out: list[Action]) -> None:
        w = self._worker(e.wid)
        if w.role is not Role.CHECKING:
            raise RoleError("no health check was asked of this worker")
        failure = self._judge(e.report)
        # Judged at once, malformed or not (no time-out to wait out); a malformed report is told the fix.
        out.append(Reply({"error": HEALTH_REPORT_FIX} if failure == "health_check_malformed" else {}))
        if failure is None:
            w.approved = True
            w.check_deadline = math.inf
            self._move(w, Trigger.PASS, out, "health check passed")
            self._ran_fine(w)  # it logged in to Discord and works
            if self.settings.shutdown_if_outdated and self._outdated(w):
                self._shutdown(w, "outdated", out)
        else:
            self._fail_check(w, failure, out)

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

    def _fail_check(self, w: Worker, reason: str, out: list[Action]) -> None:
        w.check_deadline = math.inf
        self._move(w, Trigger.FAIL, out, reason)
        self.leaving.add(w.identity)  # told to go (the deployer rolls back): its exit is no crash
        out.append(self._cmd(w, "shutdown", {"reason": reason, "cache_sync": False}))
        fix = f" — {HEALTH_REPORT_FIX}" if reason == "health_check_malformed" else ""
        out.append(Notify("warning", f"{w.identity} (version {w.version}) failed its health check: {reason}{fix}"))
        holder = self.clients.get(self.lease.wid) if self.lease is not None and self.lease.wid else None
        if holder is None or self._newness(w) > self._newness(holder):
            out.append(RollBack(reason, w.version, w.generation))  # new code failed: go back

    def _on_CacheSync(self, e: CacheSync, now: float, out: list[Action]) -> None:
        w = self._worker(e.wid)
        if not self._holds(w):
            out.append(Reply({"accepted": False, "error": "only the running worker's cache is kept"}))
            return
        assert self.lease is not None
        self.cache, self.cache_age = e.cache, now
        self.cache_seq += 1
        w.cache_seq = self.cache_seq
        if self.lease.stopping:
            self.lease.final_cache = True
        out.append(Reply({"accepted": True}))
        out.append(PersistCache(e.cache, now, final=self.lease.stopping))
        for other in self.clients.values():
            if other.role in (Role.STANDBY, Role.CHECKING):
                other.cache_seq = self.cache_seq
                out.append(Send(other.wid, "cache_sync", {"cache": e.cache}))

    def _on_ComaAck(self, e: ComaAck, now: float, out: list[Action]) -> None:
        w = self._worker(e.wid)
        self._move(w, Trigger.COMA_ACK, out, e.reason)
        out.append(Reply({}))
        if self._holds(w):
            self._release(out, "coma acknowledged")

    def _on_ShutdownAck(self, e: ShutdownAck, now: float, out: list[Action]) -> None:
        w = self._worker(e.wid)
        self._move(w, Trigger.SHUTDOWN_ACK, out, e.reason)
        if w.role is Role.SHUTTING_DOWN and w.identity not in self.leaving:
            self.quitting.add(w.identity)  # it goes by itself (a signal, bot.close()): no crash, but replaced
        out.append(Reply({}))
        if self._holds(w):
            self._release(out, "shutdown acknowledged")

    def _on_WorkerFailed(self, e: WorkerFailed, now: float, out: list[Action]) -> None:
        w = self._worker(e.wid)
        held = self._holds(w)
        w.check_deadline = math.inf
        self._move(w, Trigger.FAILED, out, f"failed: {e.reason}")
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
            self._release(out, "failed")  # it stopped processing before it said so (§5.9), as for a shutdown ack

    def _on_Disconnected(self, e: Disconnected, now: float, out: list[Action]) -> None:
        self.admins.discard(e.wid)
        w = self.clients.get(e.wid)
        if w is not None:
            self._forget(w, out, "disconnected", now)

    def _on_HeartbeatSilence(self, e: HeartbeatSilence, now: float, out: list[Action]) -> None:
        w = self.clients.get(e.wid)
        if w is not None:
            self._forget(w, out, "heartbeat silence", now)
            out.append(Close(w.wid, "heartbeat silence", w.identity, hung=True))

    def _on_ProcessExited(self, e: ProcessExited, now: float, out: list[Action]) -> None:
        # Counted (and replaced) whether or not its connection is still known: the disconnect often
        # comes first, and a child can die before it ever connects. Only an exit is a reason to
        # replace: a lost connection may come back, and a hung child is killed first (Close ... hung).
        # Asked (we told it to shut down): neither counted nor replaced. Quit by itself (it said shutdown
        # unasked: a SIGTERM, the bot's own close()): replaced, not counted. Anything else: counted and replaced.
        asked, by_itself = e.identity in self.leaving, e.identity in self.quitting
        self.leaving.discard(e.identity)
        self.quitting.discard(e.identity)
        if not asked and not e.candidate and self.stopping is None:
            if not by_itself:
                self._count_loss(now, out)
            if self.settings.spawn_workers and self.is_sane:
                how = "it shut down by itself" if by_itself else f"exited ({e.returncode})"
                out.append(Spawn(f"replace {e.identity}: {how}"))
        if self.lease is not None and self.lease.identity == e.identity:
            self._release(out, "process exited")  # proof: nothing runs in a dead process
        for w in [w for w in self.clients.values() if w.identity == e.identity]:
            self._forget(w, out, f"process exited ({e.returncode})", now)
            out.append(Close(w.wid, "process exited", w.identity))

    def _on_TimerFired(self, e: TimerFired, now: float, out: list[Action]) -> None:
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
        if e.wid is not None and e.wid not in self.admins:
            out.append(Reply({"error": "try_again needs the admin credential"}))
            return
        self.is_sane = True
        self.losses = []
        out.append(Reply({"is_sane": True}))
        out.append(Persist(self.state()))
        out.append(Notify("info", "try_again: deploying and spawning resumed"))
        if self.settings.spawn_workers and not self.clients and self.stopping is None:
            out.append(Spawn("try_again: no worker is left"))  # otherwise replacements follow exits

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
        out.append(Notify("warning", f"supervisor stopping: the bot goes offline ({e.reason})"))
        lease = self.lease
        if lease is not None and not lease.stopping:
            lease.stopping = True  # no renewal, and no adoption of a reconnecting holder, from now on
            lease.stop_deadline = now + self.settings.stop_timeout
        for w in list(self.clients.values()):
            if self._holds(w):
                self.leaving.add(w.identity)  # asked to go: its exit is no crash
                if w.role is Role.RUNNING:
                    self._move(w, Trigger.STOP, out, e.reason)
                out.append(self._cmd(w, "shutdown", {"reason": e.reason, "cache_sync": True}))
            elif w.role not in (Role.CONNECTED, Role.SHUTTING_DOWN, Role.GONE):  # CONNECTED: once it identifies
                self._shutdown(w, e.reason, out)

    # -- the decisions ----------------------------------------------------------------------------
    def _outdated(self, w: Worker) -> bool:
        holder = self.clients.get(self.lease.wid) if self.lease is not None and self.lease.wid else None
        return holder is not None and holder is not w and self._newness(w) < self._newness(holder)

    def _shutdown(self, w: Worker, reason: str, out: list[Action]) -> None:
        self._move(w, Trigger.SHUTDOWN, out, reason)
        self.leaving.add(w.identity)  # asked to go: its exit is no crash
        out.append(self._cmd(w, "shutdown", {"reason": reason, "cache_sync": False}))

    def _reconcile(self, now: float, out: list[Action]) -> None:
        lease = self.lease
        if lease is not None and lease.expires <= now:
            if lease.wid is not None and lease.wid in self.clients:
                # Connected yet not renewing in time (hung, or ignoring coma): fence it off for good.
                hung = self.clients[lease.wid]
                self._forget(hung, out, "lease expired", now)
                out.append(Close(hung.wid, "lease expired", hung.identity, hung=True))
            if self.lease is not None:  # forgetting an unconfirmed holder released it already
                self._release(out, "lease expired")
        if self.stopping is not None:
            return  # going down: nobody is promoted, nobody handed over to
        candidates = [w for w in self.clients.values() if self._candidate(w)]
        if not candidates:
            return
        best = max(candidates, key=self._newness)
        if self.lease is None:
            self._promote(best, now, out, "no worker running")
            return
        lease = self.lease
        holder = self.clients.get(lease.wid) if lease.wid is not None else None
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
            self._stop_holder(holder, f"newer version {best.version} takes over", now, out, shutdown=outdated)

    def _gateway_deadline(self) -> float | None:
        """When a holder whose Gateway is down hands over, if a standby with its Gateway up stands by."""
        lease = self.lease
        if lease is None or lease.stopping or lease.wid is None:
            return None
        holder = self.clients.get(lease.wid)
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
        self.lease.stop_deadline = now + self.settings.stop_timeout
        self._move(holder, Trigger.STOP, out, reason)
        if shutdown:
            self.leaving.add(holder.identity)  # asked to go (outdated): its exit is no crash
        out.append(self._cmd(holder, "shutdown" if shutdown else "coma", {"reason": reason, "cache_sync": True}))

    def _promote(self, w: Worker, now: float, out: list[Action], reason: str) -> None:
        self.epoch += 1
        expires = now + self.settings.lease + self.settings.lease_margin
        self.lease = Lease(w.identity, w.wid, self.epoch, expires, token=self._new_token())
        self._move(w, Trigger.PROMOTE, out, reason)
        out.append(Persist(self.state()))  # the epoch is on disk before anyone may use it
        if self.cache is not None and w.cache_seq < self.cache_seq:
            w.cache_seq = self.cache_seq
            out.append(Send(w.wid, "cache_sync", {"cache": self.cache}))
        grant = {"epoch": self.epoch, "lease": self.settings.lease, "lease_token": self.lease.token, "reason": reason}
        out.append(self._cmd(w, "process_commands", grant))
        out.append(Notify("info", f"{w.identity} (version {w.version}) is running, epoch {self.epoch}: {reason}"))
