"""The core under random interleavings: crashes, hangs, partitions, restarts, duplicates, clock jumps.

A model of the worker processes stands around the core. Each simulated worker
does what the protocol asks of a worker (it processes only after a renewal,
counting its lease from when it *sent* the heartbeat; it stops before it
acknowledges coma/shutdown) and the model records when each one may have been
processing. After every step the promises are checked:

- P1: no two workers' processing intervals overlap;
- epochs only grow (in grants and in what is persisted, across restarts);
- P3: a worker starting to process holds the newest cache the core accepted,
  and every accepted cache was persisted before the answer;
- P4: every grant goes to a worker whose health check passed (or to the
  holder reconnecting with its own epoch);
- Gateway health: no grant goes to a worker whose Discord Gateway the core
  knows to be down, and a holder whose Gateway has been down for
  ``gateway_down_limit`` while a standby with its Gateway up stands by has
  been asked to hand over (no step ends with such a hand-over overdue).

Some children are a deploy's candidates (``CandidateStarted`` before they connect): each gets exactly
one ``Verdict`` (none twice, none lost while the core keeps no candidate pending), a candidate's failed
health check is no ``RollBack`` too, and a verdict is final: a candidate judged against is never granted
the lease, and one judged promoted holds it.

Workers report their Gateway up or down (or never, as the seeds' workers) in
heartbeats, and may say ``failed`` (they cannot work) before they exit.

Some workers are children of the process manager: when the core fences one off
as hung (``Close(hung=True)``: silent, or frozen as the kernel says when asked
with ``CheckFrozen``), the model SIGKILLs it, and its exit is reported
(``ProcessExited``) only some steps later. Meanwhile the killed worker is
counted as processing as long as its own lease view lasts: a lease released
before the exit would show up as an overlap (P1 under the kill path).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import attrs
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests._helpers import cache_sync, image, plain, pushed
from urban_robot.supervisor import (
    CacheSync,
    CandidateStarted,
    CheckFrozen,
    Close,
    ComaAck,
    Connected,
    Disconnected,
    Frozen,
    HealthReport,
    Heartbeat,
    Identified,
    Kill,
    Persist,
    PersistCache,
    ProcessExited,
    Ready,
    Reply,
    RoleChanged,
    RollBack,
    RollbackFinished,
    Send,
    Settings,
    ShutdownAck,
    Spawn,
    Stopping,
    Supervisor,
    TimerFired,
    TryAgain,
    Verdict,
    WorkerFailed,
)
from urban_robot.supervisor._roles import Role

SETTINGS = Settings(
    token="t",
    interval=10,
    grace=5,
    lease_margin=2,
    health_timeout=20,
    ack_timeout=8,
    gateway_down_limit=3,
    frozen_limit=4,
    hang_limit=12,
)
HEALTHY = {"OK": True, "percent": 100, "cogs": {"modules.utilities": True}}
SICK = {"OK": False, "percent": 40, "cogs": {"modules.utilities": True}}


@attrs.define(eq=False)
class Proc:
    identity: str
    version: str
    healthy: bool
    alive: bool = True
    hung: bool = False
    child: bool = False  # spawned by the process manager: fenced by a kill, released by its exit
    killed: bool = False  # SIGKILL sent, its exit not reported yet
    probed: bool = False  # the core asked the kernel whether it is stopped
    sid: str | None = None
    granted: int | None = None
    token: str | None = None
    passed: bool = False
    cache: Any = None
    gateway: bool | None = None  # its Discord Gateway: None = it never says (a seeds-era or demo worker)
    intervals: list[list[float]] = attrs.Factory(list)
    pending_heartbeats: list[tuple[float, int | None, bool | None]] = attrs.Factory(list)
    last_heard: float = 0.0

    def processing(self, now: float) -> bool:
        return self.alive and any(start <= now < end for start, end in self.intervals)

    def stop(self, now: float) -> None:
        for interval in self.intervals:
            interval[1] = min(interval[1], max(now, interval[0]))


CHECK_FAILURES = {"health_check_timeout", "health_check_failure", "vital_cog_failed", "health_check_malformed"}


class SupervisorWorld(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = Supervisor(SETTINGS)
        self.now = 0.0
        self.procs: list[Proc] = []
        self.inbox: dict[str, list[Send]] = {}
        self.ids = itertools.count()
        self.last_grant = 0
        self.last_persisted_epoch = 0
        self.state: dict[str, Any] | None = None
        self.persisted_cache: Any = None
        self.accepted_cache: Any = None
        self.cache_counter = itertools.count(1)
        self.admin = "admin-0"
        self.stopping = False  # the supervisor was told to stop: nothing is promoted or spawned any more
        self.candidates: set[str] = set()  # deploy candidates started (CandidateStarted) ...
        self.judged: dict[str, str] = {}  # ... and the verdict each got: identity -> outcome
        self.feed(Connected(self.admin, identity="admin", admin=True))

    # -- plumbing -------------------------------------------------------------------------
    def feed(self, event: Any) -> list[Any]:
        out = self.core.handle(event, self.now)
        for verdict in [a for a in out if isinstance(a, Verdict)]:
            assert verdict.identity in self.candidates, "a verdict on a worker that is no candidate"
            assert verdict.identity not in self.judged, f"a second verdict on {verdict.identity}"
            self.judged[verdict.identity] = verdict.outcome
            if verdict.promoted:
                assert self.core.lease is not None and self.core.lease.identity == verdict.identity
            if verdict.outcome == "failed health check":
                # Only another (non-candidate) worker failing its check in the same event may ask for a RollBack:
                # a tick can time out two checks at once (Hypothesis found it).
                others = {
                    a.identity
                    for a in out
                    if isinstance(a, RoleChanged) and a.reason in CHECK_FAILURES and a.identity not in self.candidates
                }
                rollbacks = sum(isinstance(a, RollBack) for a in out)
                assert rollbacks <= len(others), "a candidate's failure also asked for a RollBack"
        for action in out:
            if isinstance(action, Persist):
                assert action.state["epoch"] >= self.last_persisted_epoch, "persisted epoch went back"
                self.last_persisted_epoch = action.state["epoch"]
                self.state = action.state
            elif isinstance(action, PersistCache):
                self.persisted_cache = plain(action.image)
            elif isinstance(action, Send):
                self.check_send(action)
                self.inbox.setdefault(action.sid, []).append(action)
            elif isinstance(action, Spawn):
                assert not self.stopping, "a spawn asked for while stopping"
            elif isinstance(action, Close):
                self.closed(action)
            elif isinstance(action, Kill):
                self.killed(action)
            elif isinstance(action, CheckFrozen):
                proc = self.proc_of(action.sid)
                if proc is not None:
                    proc.probed = True
        return out

    def killed(self, action: Kill) -> None:
        """The process manager SIGKILLs a child (its exit reported later); it says nothing more from now on."""
        proc = next((p for p in self.procs if p.identity == action.identity and p.alive), None)
        if proc is None or not proc.child:
            return
        if proc.sid is not None:
            self.inbox.pop(proc.sid, None)
        proc.sid = None
        proc.pending_heartbeats.clear()
        proc.killed = True

    def closed(self, action: Close) -> None:
        """The core closed a connection; a child fenced off as hung is SIGKILLed (its exit reported later)."""
        proc = self.proc_of(action.sid)
        if proc is None:
            return
        self.inbox.pop(action.sid, None)
        proc.sid = None
        proc.pending_heartbeats.clear()
        if action.hung and proc.child and proc.alive:
            proc.killed = True

    def check_send(self, action: Send) -> None:
        if action.event == "cmd" and action.data["t"] == "process_commands":
            assert not self.stopping, "promoted while stopping"
            epoch = action.data["d"]["epoch"]
            assert epoch > self.last_grant, "epochs must strictly increase"
            assert epoch <= self.last_persisted_epoch, "grant sent before its epoch was persisted"
            self.last_grant = epoch
            proc = self.proc_of(action.sid)
            assert proc is not None and proc.passed, "promoted without a passed health check"
            judged = self.judged.get(proc.identity, "promoted")
            assert judged == "promoted", f"{proc.identity} promoted after its verdict: {judged}"
            assert self.core.clients[action.sid].gateway is not False, "promoted while its Gateway is down"

    def proc_of(self, sid: str) -> Proc | None:
        return next((p for p in self.procs if p.sid == sid), None)

    def connected(self) -> list[Proc]:
        return [p for p in self.procs if p.sid is not None and p.alive]

    def start_processing(self, proc: Proc, sent_at: float, lease: float) -> None:
        end = sent_at + lease
        if end <= self.now:
            return  # the renewal came too late to use
        if not proc.processing(self.now) and self.accepted_cache is not None:
            assert proc.cache == self.accepted_cache, "a worker began processing without the newest cache"
        for other in self.procs:
            if other is proc:
                continue
            for start, stop in other.intervals:
                assert stop <= self.now or end <= start, (
                    f"P1 violated: {proc.identity} and {other.identity} both processing at {self.now}"
                )
        proc.intervals.append([self.now, end])

    def connect(self, proc: Proc) -> None:
        proc.sid = f"w{next(self.ids)}"
        proc.last_heard = self.now
        self.feed(Connected(proc.sid, identity=proc.identity, generation=1 if proc.child else None))
        self.feed(Identified(proc.sid, version=proc.version, pid=1, epoch=proc.granted, lease_token=proc.token))

    # -- workers arriving and talking ---------------------------------------------------------
    @initialize(pair=st.booleans(), order=st.randoms(use_true_random=False))
    def begin(self, pair: bool, order: Any) -> None:
        """Half the runs start from the steady state (a holder and a warm standby), where hand-overs happen."""
        if pair:
            for gateway in (True, True):
                self.spawn("1.0", True, gateway)
                self.settle(order)

    @precondition(lambda self: len(self.procs) < 6)
    @rule(
        version=st.sampled_from(["1.0", "1.1", "2.0"]),
        healthy=st.booleans(),
        gateway=st.sampled_from([None, True]),
        child=st.booleans(),
        candidate=st.sampled_from([False, False, True]),
        timeout=st.sampled_from([5, 30, 60]),
    )
    def spawn(
        self,
        version: str,
        healthy: bool,
        gateway: bool | None,
        child: bool = True,
        candidate: bool = False,
        timeout: float = 60,
    ) -> None:
        proc = Proc(identity=f"p{len(self.procs)}", version=version, healthy=healthy, gateway=gateway, child=child)
        self.procs.append(proc)
        if candidate and child:  # a deploy's: announced before it can connect, as the deployer does
            self.candidates.add(proc.identity)
            self.feed(CandidateStarted(proc.identity, 2, timeout))
        self.connect(proc)
        self.feed(Ready(proc.sid))  # type: ignore[arg-type]  # logging in to Discord is quick here

    @precondition(lambda self: any(p.alive and p.sid is None and not p.killed for p in self.procs))
    @rule(data=st.data())
    def reconnect(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from([p for p in self.procs if p.alive and p.sid is None and not p.killed]))
        self.connect(proc)
        self.feed(Ready(proc.sid))  # type: ignore[arg-type]  # still logged in to Discord

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data())
    def ready(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from(self.connected()))
        self.feed(Ready(proc.sid))  # type: ignore[arg-type]

    @precondition(lambda self: any(self.inbox.get(p.sid or "") for p in self.connected() if not p.hung))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from([p for p in self.connected() if self.inbox.get(p.sid or "") and not p.hung]))
        self.deliver_one(proc)

    @rule(order=st.randoms(use_true_random=False))
    def settle(self, order: Any) -> None:
        """Every responsive worker reads everything, then heartbeats once: the quiet path."""
        for _ in range(50):
            busy = [p for p in self.connected() if self.inbox.get(p.sid or "") and not p.hung]
            if not busy:
                break
            order.shuffle(busy)
            for proc in busy:
                while proc.sid is not None and self.inbox.get(proc.sid) and not proc.hung:
                    self.deliver_one(proc)
        beating = [p for p in self.connected() if not p.hung]
        order.shuffle(beating)
        for proc in beating:
            if proc.sid is not None:
                proc.pending_heartbeats.append((self.now, proc.granted, proc.gateway))
                self.heartbeat_now(proc)

    def deliver_one(self, proc: Proc) -> None:
        message = self.inbox[proc.sid].pop(0)  # type: ignore[index]
        if message.event == "hello" and message.data["process_commands"]:
            proc.granted = message.data["epoch"]
        elif message.event == "cache_sync":
            proc.cache = pushed([message], message.sid)
        elif message.event == "cmd":
            self.obey(proc, message.data["t"], message.data["d"])

    def obey(self, proc: Proc, name: str, data: dict[str, Any]) -> None:
        sid = proc.sid
        assert sid is not None
        if name == "health_check":
            self.report(proc, HealthReport(sid, HEALTHY if proc.healthy else SICK), proc.healthy)
        elif name == "process_commands":
            proc.granted = data["epoch"]
            proc.token = data["lease_token"]
        elif name in ("coma", "shutdown"):
            proc.stop(self.now)
            proc.granted = None
            if data.get("cache_sync"):
                self.feed(cache_sync(sid, proc.cache))
            self.feed(ComaAck(sid, "asked") if name == "coma" else ShutdownAck(sid, "asked"))

    def report(self, proc: Proc, event: HealthReport, healthy: bool) -> None:
        """The worker's health report; ``passed`` follows the report the core took."""
        before, proc.passed = proc.passed, healthy
        out = self.feed(event)
        if any(isinstance(a, Reply) and "error" in a.data for a in out):
            proc.passed = before

    @precondition(lambda self: any(not p.hung for p in self.connected()))
    @rule(data=st.data())
    def send_heartbeat(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from([p for p in self.connected() if not p.hung]))
        proc.pending_heartbeats.append((self.now, proc.granted, proc.gateway))

    @precondition(lambda self: any(not p.hung for p in self.connected()))
    @rule(data=st.data(), up=st.booleans())
    def gateway_changes(self, data: st.DataObject, up: bool) -> None:
        """Its Discord Gateway goes down or comes back: a heartbeat says so at once (as the worker SDKs do)."""
        proc = data.draw(st.sampled_from([p for p in self.connected() if not p.hung]))
        self.report_gateway(proc, up)

    @precondition(lambda self: any(p.sid == self.core.running_client and not p.hung for p in self.connected()))
    @rule(outage=st.sampled_from([0.5, 2.9, 3, 4]))
    def holder_gateway_down(self, outage: float) -> None:
        """The holder's Gateway goes down (an outage, an op 9) for a while: the case hand-overs are for."""
        self.report_gateway(next(p for p in self.connected() if p.sid == self.core.running_client), False)
        self.tick(outage)

    def report_gateway(self, proc: Proc, up: bool) -> None:
        proc.gateway = up
        proc.pending_heartbeats.append((self.now, proc.granted, up))
        self.heartbeat_now(proc)

    @precondition(lambda self: any(p.pending_heartbeats for p in self.connected()))
    @rule(data=st.data())
    def deliver_heartbeat(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from([p for p in self.connected() if p.pending_heartbeats]))
        self.heartbeat_now(proc)

    def heartbeat_now(self, proc: Proc) -> None:
        sent_at, epoch, up = proc.pending_heartbeats.pop(0)
        proc.last_heard = self.now
        replies = [a for a in self.feed(Heartbeat(proc.sid, epoch, up)) if isinstance(a, Reply)]  # type: ignore[arg-type]
        lease = replies[0].data.get("lease", 0)
        if lease and epoch == proc.granted and not proc.hung:
            self.start_processing(proc, sent_at, lease)
        elif not lease and epoch is not None:
            proc.stop(self.now)  # refused renewal: the worker fences itself off
            proc.granted = None

    @precondition(lambda self: any(p.processing(self.now) and not p.hung for p in self.connected()))
    @rule(data=st.data())
    def write_cache(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from([p for p in self.connected() if p.processing(self.now) and not p.hung]))
        proc.cache = {"write": next(self.cache_counter), "by": proc.identity}
        out = self.feed(cache_sync(proc.sid, proc.cache))  # type: ignore[arg-type]
        replies = [a for a in out if isinstance(a, Reply)]
        if replies[0].data.get("accepted"):
            self.accepted_cache = proc.cache
            assert self.persisted_cache == proc.cache, "accepted cache not persisted"

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data(), coma=st.booleans())
    def volunteer_stop(self, data: st.DataObject, coma: bool) -> None:
        proc = data.draw(st.sampled_from(self.connected()))
        proc.stop(self.now)
        proc.granted = None
        self.feed(ComaAck(proc.sid, "by itself") if coma else ShutdownAck(proc.sid, "by itself"))  # type: ignore[arg-type]

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data())
    def duplicate_or_stale(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from(self.connected()))
        sid = proc.sid
        assert sid is not None
        event = data.draw(
            st.sampled_from(
                [
                    Ready(sid),
                    HealthReport(sid, HEALTHY),
                    Heartbeat(sid, 0),
                    Heartbeat(sid, 99),
                    Identified(sid, version="9.9"),
                    TryAgain(sid),
                    cache_sync(sid, {"forged": True}),
                ]
            )
        )
        if isinstance(event, HealthReport):
            self.report(proc, event, True)
            return
        out = self.feed(event)
        if isinstance(event, CacheSync) and any(isinstance(a, Reply) and a.data.get("accepted") for a in out):
            assert proc.processing(self.now) or proc.granted is not None or self.core.running_client == sid
            proc.cache = self.accepted_cache = {"forged": True}

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        """Discord refused its login for good: it stops processing, says ``failed``, and will exit (crash)."""
        proc = data.draw(st.sampled_from(self.connected()))
        proc.stop(self.now)
        proc.granted = None
        proc.healthy = False  # whatever it becomes after a reconnection, it cannot pass a check any more
        self.feed(WorkerFailed(proc.sid, "the token was refused", "reset it"))  # type: ignore[arg-type]

    # -- faults ------------------------------------------------------------------------------------
    @precondition(lambda self: bool([p for p in self.procs if p.alive]))
    @rule(data=st.data(), disconnect_first=st.booleans())
    def crash(self, data: st.DataObject, disconnect_first: bool) -> None:
        proc = data.draw(st.sampled_from([p for p in self.procs if p.alive]))
        proc.stop(self.now)
        proc.alive = proc.killed = False
        if proc.sid is not None and disconnect_first:
            self.feed(Disconnected(proc.sid))
        self.feed(ProcessExited(proc.identity, -9))
        if proc.sid is not None and not disconnect_first:
            self.feed(Disconnected(proc.sid))
        proc.sid = None

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data())
    def partition(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from(self.connected()))
        self.feed(Disconnected(proc.sid))  # type: ignore[arg-type]
        self.inbox.pop(proc.sid, None)  # type: ignore[arg-type]
        proc.sid = None
        proc.pending_heartbeats.clear()

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data())
    def hang_or_resume(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from(self.connected()))
        proc.hung = not proc.hung

    @precondition(lambda self: any(p.probed and p.alive for p in self.procs))
    @rule(data=st.data())
    def kernel_says_stopped(self, data: st.DataObject) -> None:
        """The answer to CheckFrozen: for a hung worker, or (a race with SIGCONT) one that spoke since."""
        proc = data.draw(st.sampled_from([p for p in self.procs if p.probed and p.alive]))
        proc.probed = False
        self.feed(Frozen(proc.identity))

    @precondition(lambda self: any(p.child and p.alive for p in self.procs))
    @rule(data=st.data())
    def watch_sees_stopped(self, data: st.DataObject) -> None:
        """The process manager's watch saw a child stopped by a signal, connected or not, silent since or (a race
        with SIGCONT) not: whatever the core does about it, no lease may be released before the exit."""
        proc = data.draw(st.sampled_from([p for p in self.procs if p.child and p.alive]))
        self.feed(Frozen(proc.identity, seen=self.now - data.draw(st.sampled_from([0.0, 0.5, 5.0]))))

    @precondition(lambda self: any(p.killed for p in self.procs))
    @rule(data=st.data())
    def reap_killed(self, data: st.DataObject) -> None:
        """waitpid returns for a SIGKILLed child: only now is its exit reported (and its lease released)."""
        proc = data.draw(st.sampled_from([p for p in self.procs if p.killed]))
        proc.stop(self.now)
        proc.alive = proc.killed = False
        self.feed(ProcessExited(proc.identity, -9))

    @rule(dt=st.sampled_from([0.5, 1, 3, 7, 16, 40]))
    def tick(self, dt: float) -> None:
        """Time passes; the timer fires at each deadline on the way, as the shell's does."""
        end = self.now + dt
        for _ in range(100):
            deadline = self.core.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.feed(TimerFired())
        else:
            c = self.core
            raise AssertionError(
                f"a deadline not acted on: {c.next_deadline()} {c.lease} {c.stopping} {list(c.clients.values())}"
            )
        self.now = end

    @rule(ok=st.booleans())
    def rollback_result(self, ok: bool) -> None:
        self.feed(RollbackFinished(ok, "simulated"))

    @rule()
    def operator_try_again(self) -> None:
        self.feed(TryAgain(self.admin))

    @rule()
    def stop_supervisor(self) -> None:
        """SIGTERM, the admin API: every worker is asked to shut down; the workers carry on as they do."""
        self.feed(Stopping("test"))
        self.stopping = True

    @rule()
    def restart_supervisor(self) -> None:
        """Our own crash: a new core from what was persisted; every connection drops."""
        kept = image(self.persisted_cache) if self.persisted_cache is not None else None
        self.core = Supervisor(SETTINGS, state=self.state, cache=kept, now=self.now)
        self.stopping = False
        # The new core knows no candidate (the deployer that waited for verdicts went with the old one): from now
        # on those workers are workers like any other, judged against or not.
        self.candidates.clear()
        self.judged.clear()
        assert self.core.epoch == self.last_persisted_epoch
        self.inbox.clear()
        for proc in self.procs:
            proc.sid = None
            proc.pending_heartbeats.clear()
        if self.persisted_cache is not None:
            assert self.persisted_cache == self.accepted_cache, "a restart lost an accepted cache"
        self.feed(Connected(self.admin, identity="admin", admin=True))

    @invariant()
    def no_gateway_handover_overdue(self) -> None:
        lease = self.core.lease
        if lease is None or lease.stopping or lease.sid not in self.core.clients:
            return
        since = self.core.clients[lease.sid].gateway_down_since
        better = [
            w
            for w in self.core.clients.values()
            if w.role is Role.STANDBY and w.approved and w.gateway is not False and not w.stopped  # §12: a stopped
        ]  # standby is not promoted until it speaks again
        assert since is None or not better or self.now < since + SETTINGS.gateway_down_limit, (
            f"the holder's Gateway is down since {since}, a standby has one, and no hand-over began by {self.now}"
        )

    @invariant()
    def every_candidate_judged_or_pending(self) -> None:
        pending = self.candidates - set(self.judged)
        trial = self.core.trial
        assert pending <= ({trial.identity} if trial is not None else set()), f"a verdict lost: {pending}"

    @invariant()
    def at_most_one_processing_now(self) -> None:
        busy = [p.identity for p in self.procs if p.processing(self.now)]
        assert len(busy) <= 1, f"P1 violated at {self.now}: {busy}"


# A mutation run (HYPOTHESIS_PROFILE=mutation) repeats this once per planted bug: a tenth of the examples.
EXAMPLES = 200 if os.environ.get("HYPOTHESIS_PROFILE") == "mutation" else 2000
TestSupervisorWorld = SupervisorWorld.TestCase
TestSupervisorWorld.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
