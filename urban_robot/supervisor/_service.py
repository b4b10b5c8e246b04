"""The trio shell around the core: Socket.IO wiring, watchdogs, timers, persistence.

One task (``_loop``) feeds the core, one event at a time, and carries out the
actions it returns, in order: that single sequence is what makes the core's
decisions the system's. Everything that could block sits elsewhere: each
worker has a sender task (its bounded outbox), started in its connection's
nursery, so it ends when the connection does; the cache is written by its own
task (latest wins). A worker's silence is no task here: it is a deadline of
the core's, fed by the one timer (``_timer``) like every other deadline. The state (epoch!) is
written before any later action of the same event is carried out.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import attrs
import trio

from .. import protocol
from ..cluster._replica import replica_body_limit
from ..logs import Throttled
from ..protocol import MalformedMessage, parse_request
from ..socketio import ConnectionRefusedError, Later, Namespace, Server
from ..web import Limits
from ._auth import Credentials, Identity, LoginThrottle
from ._bus import Bus, Handled
from ._core import Settings, Supervisor
from ._events import (
    Action,
    CacheSync,
    Close,
    ComaAck,
    Connected,
    Disconnected,
    Event,
    HealthReport,
    Heartbeat,
    Identified,
    IdentifyAsked,
    Notify,
    Persist,
    PersistCache,
    Ready,
    Reply,
    RoleChanged,
    Send,
    ShutdownAck,
    Spoke,
    TimerFired,
    TryAgain,
    WorkerFailed,
)
from ._fleet import Fleet
from ._notify import ALREADY_NOTIFIED
from ._snapshot import Snapshot
from ._store import StateStore

log = logging.getLogger("urban_robot.supervisor")

OUTBOX_SIZE = 1024
# Said to a peer that sent no secret at all (a worker written to the seeds' protocol); a wrong secret gets no hint.
AUTH_HINT = "send auth={'secret': <URBAN_ROBOT_SECRET>} with the Socket.IO CONNECT (protocol v1 §3)"
NOTIFY_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


@attrs.define(eq=False)
class _Slot:
    done: trio.Event = attrs.Factory(trio.Event)
    value: Any = None
    write: int | None = None  # the cache write its answer must wait for (an ack means the cache is kept)


@attrs.define(eq=False)
class _Conn:
    sid: str
    identity: Identity
    outbox: trio.MemorySendChannel[tuple[str, Any]]
    inbox: trio.MemoryReceiveChannel[tuple[str, Any]]


class ClusterPart(Protocol):
    """What the service asks of this host's agent (``_cluster.ClusterLink``) with several hosts."""

    async def identify_slot(self, key: int) -> None: ...

    async def replicate(self, group: int, writes: list[PersistCache]) -> bool: ...


class UrbanRobot:
    """The supervisor service: ``port = await nursery.start(robot.run, host, port)``."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        credentials: Credentials,
        *,
        bus: Bus | None = None,
        server: Server | None = None,
        blocking_io: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync,
        allowed_hosts: Iterable[str] = (),
        plan: protocol.ShardPlan | None = None,
        cluster: ClusterPart | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.plan = plan if plan is not None else protocol.ShardPlan.unsharded()
        # Discord's session start limit (GET /gateway/bot), learnt before ``run``; None: the Fleet's cautious default.
        self.identify_limit: protocol.SessionStartLimit | None = None
        self.credentials = credentials
        # Only workers that authenticated may send max_message; strangers get the server's pre-auth limits.
        # Host names beyond loopback and the address connected to are only those configured (DNS rebinding).
        self.server = server or Server(
            async_handlers=False,
            max_payload=settings.max_message,
            http_limits=Limits(
                # Several hosts: a whole cache from another host's agent (its route reads that much only from an
                # authentic sender; every other route and the Engine.IO mount keep their own limits).
                max_body=max(settings.max_message + 16 * 1024, replica_body_limit(settings.cache_max))
                if settings.cluster
                else settings.max_message + 16 * 1024,
                max_connections=settings.max_connections,
                allowed_hosts=frozenset(allowed_hosts),
            ),
        )
        # Each event as the core takes it, each action as it is carried out, ``Handled`` after: who hears them
        # is the assembly's business (``_assembly.build``); Spawn, TopUp, RollBack and Notify are carried out there.
        self.bus = bus or Bus()
        self.blocking_io = blocking_io  # file writes; tests on a virtual clock run them inline
        self.quiet = Throttled(log)  # lines strangers cause: at most one per kind per 10 s, with counts
        self.logins = LoginThrottle()  # wrong credentials per address: admin logins wait, exponentially
        self.fleet = Fleet(settings, self.plan)
        self.conns: dict[str, _Conn] = {}
        self._send_events, self._events = trio.open_memory_channel[tuple[Event, _Slot | None]](OUTBOX_SIZE)
        self._timer_scope = trio.CancelScope()
        self._cache_stores: dict[int, StateStore] = {}  # shard group -> its cache's store (sharded only)
        self._cache_pending: list[tuple[int, PersistCache]] = []  # (write number, what to keep), in order
        self._cache_wake = trio.Event()
        self._cache_queued = 0  # caches handed to the writer
        self._cache_written = 0  # the newest of them on disk (or given up on, loudly)
        self._cache_progress = trio.Event()
        self._ack_after: int | None = None  # the write the current event's reply waits for
        # Several hosts (``ClusterLink``): an IDENTIFY slot granted here also waits for the cluster's bucket, and the
        # holder's cache also goes to another host's disk before it is acknowledged (§19.8).
        self.cluster = cluster
        self._unreplicated: set[int] = set()  # cache writes (numbers) no other host acknowledged in time
        self._nursery: trio.Nursery | None = None
        self.server.register_namespace(_WorkerNamespace(self))
        self.server.on("*", self._unknown_event)

    # -- running -------------------------------------------------------------------------------------
    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.restore()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._loop)
            nursery.start_soon(self._timer)
            nursery.start_soon(self._cache_writer)
            bound = await nursery.start(self.server.serve, host, port)
            task_status.started(bound)

    def use_plan(self, plan: protocol.ShardPlan, limit: protocol.SessionStartLimit | None = None) -> None:
        """Run ``plan``'s shard groups (and grant IDENTIFYs within ``limit``): before ``run``, which restores them."""
        self.plan, self.identify_limit = plan, limit
        self._cache_stores.clear()
        self.fleet = Fleet(self.settings, plan, limit=limit)

    @property
    def core(self) -> Supervisor:
        """The first shard group's core: the only one unsharded (tests and measurements read it)."""
        return self.fleet.groups[0]

    def cache_store(self, group: int) -> StateStore:
        """Where shard group ``group``'s cache is kept (unsharded: the state directory's ``cache.bin``)."""
        if not self.plan.sharded:
            return self.store
        if group not in self._cache_stores:
            self._cache_stores[group] = self.store.cache_store(self.plan.groups[group].name)
        return self._cache_stores[group]

    def restore(self) -> None:
        """Load the state directory: epochs, sanity, the lease holders, the caches."""
        self.store.prepare()
        state = self.store.load_state()
        now = trio.current_time()
        caches, ages = {}, {}
        for group in self.plan.groups:
            if state and _plan_of(state) != _plan_key(self.plan):
                # Kept under another shard plan: a file of this name is from an earlier plan (A, then B, then A
                # again) and older than what the bot wrote since; loading it would bring back stale data.
                store = self.cache_store(group.index)
                aside = store.set_cache_aside("other-plan")
                if aside is not None:
                    log.warning(
                        "%s is from an earlier shard plan: set aside as %s, not loaded", store.cache_path, aside
                    )
                continue
            cache, saved_at = self.cache_store(group.index).load_cache()
            if cache is not None:
                caches[group.index] = cache
            if saved_at is not None:
                ages[group.index] = now - max(0.0, time.time() - saved_at)
        self.fleet = Fleet(
            self.settings,
            self.plan,
            state=state,
            caches=caches,
            now=now,
            limit=self.identify_limit,
            restarted=bool(state),
        )
        for index, age in ages.items():
            self.fleet.groups[index].cache_age = age
        if state:
            epochs = ", ".join(str(core.epoch) for core in self.fleet.groups)
            log.info("restored state: epoch %s, is_sane %s", epochs, self.fleet.is_sane)

    def submit_nowait(self, event: Event) -> None:
        """Queue ``event`` for the core without waiting for it (HTTP routes, other threads of work)."""
        self._send_events.send_nowait((event, None))

    async def submit(self, event: Event) -> Any:
        """Feed ``event`` to the core (in order with all others); the reply it produced."""
        return (await self._submit(event)).value

    async def _submit(self, event: Event) -> _Slot:
        slot = _Slot()
        await self._send_events.send((event, slot))
        await slot.done.wait()
        return slot

    async def _loop(self) -> None:
        async for event, slot in self._events:
            self.bus.publish(event)
            actions = self.fleet.handle(event, trio.current_time())
            self._ack_after = None
            reply = await self._carry_out(actions)
            self.bus.publish(Handled(event))
            if slot is not None:
                slot.value, slot.write = reply, self._ack_after
                slot.done.set()
            self._timer_scope.cancel()  # the next deadline may have moved

    async def cache_written(self, write: int) -> None:
        """Return once cache write number ``write`` (or a newer one that replaced it) is done."""
        while self._cache_written < write:
            await self._cache_progress.wait()

    def replicated(self, write: int) -> bool:
        """Several hosts: whether cache write ``write`` reached another host too (always true on one host)."""
        if write in self._unreplicated:
            self._unreplicated.discard(write)
            return False
        return True

    def caches_pending(self) -> bool:
        """Whether a cache accepted so far is not on disk (and, with several hosts, another host's) yet."""
        return self._cache_written < self._cache_queued

    async def caches_written(self) -> None:
        """Return once every cache accepted so far is on disk (or its write failed, loudly): before stopping."""
        await self.cache_written(self._cache_queued)

    async def _carry_out(self, actions: list[Action]) -> Any:
        reply = None
        for action in actions:
            self.bus.publish(action)
            if isinstance(action, Reply):
                reply = action.data
            elif isinstance(action, Send):
                self._send(action)
            elif isinstance(action, Persist):
                if not await self._persist(action):
                    return reply  # never hand out an epoch that is not on disk
            else:
                self._side_effect(action)
        return reply

    async def _persist(self, action: Persist) -> bool:
        try:
            await self.blocking_io(self.store.save_state, action.state)
        except OSError as exc:
            message = f"cannot write {self.store.state_path}: {exc.strerror}; promotions wait until it can"
            # As the core's own notifications are carried out: published, and logged once, marked as notified
            # (it was also logged unmarked first, so the Discord log bridge posted it a second time).
            await self._carry_out([Notify("critical", message)])
            return False
        return True

    def _send(self, action: Send) -> None:
        cluster, nursery = self.cluster, self._nursery
        if cluster is not None and nursery is not None and _identify_grant(action) is not None:
            nursery.start_soon(self._send_when_cleared, cluster, action)
            return
        self._deliver(action)

    async def _send_when_cleared(self, cluster: ClusterPart, action: Send) -> None:
        shard_id = _identify_grant(action)
        assert shard_id is not None
        await cluster.identify_slot(self.fleet.slots.limit.key(shard_id))
        self._deliver(action)

    def _deliver(self, action: Send) -> None:
        conn = self.conns.get(action.sid)
        if conn is None:
            return
        try:
            conn.outbox.send_nowait((action.event, action.data))
        except trio.WouldBlock:
            log.warning("worker %s is not reading its messages; closing its connection", conn.identity.name)
            self.server.close(action.sid, "outbox full")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _side_effect(self, action: Action) -> None:
        if isinstance(action, Close):
            if action.hung:
                name = action.identity or action.sid
                log.warning("worker %s fenced off (%s): connection closed", name, action.reason)
            self.server.close(action.sid, action.reason)
        elif isinstance(action, PersistCache):
            self._cache_queued += 1
            self._cache_pending.append((self._cache_queued, action))  # written together: appended, or the newest whole
            self._cache_wake.set()
            if not action.final:
                self._ack_after = self._cache_queued
        elif isinstance(action, RoleChanged):
            epoch = f" (epoch {action.epoch})" if action.epoch is not None else ""
            log.info(
                "worker %s (%s): %s -> %s%s%s",
                action.identity,
                action.sid,
                action.old,
                action.new,
                epoch,
                f": {action.reason}" if action.reason else "",
            )
        elif isinstance(action, Notify):
            # Marked so the Discord log bridge does not post what the notifier posts already.
            log.log(NOTIFY_LEVELS.get(action.level, logging.INFO), "%s", action.message, extra=ALREADY_NOTIFIED)
        # Spawn, TopUp, RollBack, Kill, CheckFrozen, Notify's delivery: the bus's subscribers carry them out.

    async def _timer(self) -> None:
        while True:
            deadline = self.fleet.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as self._timer_scope:
                await trio.sleep_forever()
            if deadline is not None and trio.current_time() >= deadline:
                await self.submit(TimerFired())

    async def _cache_writer(self) -> None:
        while True:
            await self._cache_wake.wait()
            self._cache_wake = trio.Event()
            batch, self._cache_pending = self._cache_pending, []
            write = batch[-1][0]
            for group in sorted({a.group for _, a in batch}):  # each shard group's own file (one unsharded)
                mine = [a for _, a in batch if a.group == group]
                store, newest = self.cache_store(group), mine[-1]
                changes = [(a.base, a.change) for a in mine]
                try:
                    await self.blocking_io(store.save_cache, newest.image, newest.seq, changes)
                except OSError as exc:
                    log.critical("cannot write %s: %s", store.cache_path, exc.strerror)
                held = [a for a in mine if a.epoch]  # the holder's caches (a replica taken here goes nowhere)
                if self.cluster is not None and held and not await self.cluster.replicate(group, held):
                    self._unreplicated.update(n for n, a in batch if a.group == group and a.epoch)
            self._cache_written = write  # also every older write it replaced
            self._cache_progress.set()
            self._cache_progress = trio.Event()

    # -- per connection ------------------------------------------------------------------------------
    async def _sender(self, conn: _Conn) -> None:
        async with conn.inbox:
            async for event, data in conn.inbox:
                await self.server.emit(event, data, to=conn.sid)

    async def _unknown_event(self, event: str, sid: str, *args: Any) -> dict[str, str]:
        name = self.conns[sid].identity.name if sid in self.conns else sid
        log.info("unknown event %r from %s ignored", event[:80], name)  # a name can be megabytes long
        return {"error": f"unknown event {event!r}"}

    async def ask_shutdown(self, identity: str, reason: str) -> None:
        """Ask the worker(s) of ``identity`` to shut down (the polite first step of stopping a child)."""
        for conn in list(self.conns.values()):
            if conn.identity.name == identity:
                self._send(Send(conn.sid, "cmd", {"t": "shutdown", "d": {"reason": reason, "cache_sync": False}}))
        await trio.lowlevel.checkpoint()

    def snapshot(self) -> Snapshot:
        """What the core knows now, frozen: what every view reads (``_snapshot``)."""
        return self.fleet.snapshot(trio.current_time())

    def status(self, snap: Snapshot | None = None) -> dict[str, Any]:
        """The core's part of ``GET /api/status`` (``_status`` adds the rest), from one snapshot (``snap``: now's)."""
        snap = snap if snap is not None else self.snapshot()
        running = snap.running
        wall = time.time()
        return {
            "running": None if running is None else running.identity,
            "epoch": snap.epoch,
            "is_sane": snap.is_sane,
            "last_known_good": snap.last_known_good,
            "waiting_for": snap.waiting_for,
            "cache_age": snap.cache_age,
            "workers": [
                {
                    "identity": w.identity,
                    "sid": w.sid,
                    "pid": w.pid,
                    "role": w.role,
                    "version": w.version,
                    "generation": w.generation,
                    "epoch": w.holds,
                    "heartbeat_age": w.silent_for,
                    "gateway": w.gateway,
                    "gateway_down_for": w.gateway_down_for,
                    "group": w.group,
                }
                for w in snap.workers
            ],
            "failures": [
                {
                    "kind": f.kind,
                    "identity": f.identity,
                    "generation": f.generation,
                    "version": f.version,
                    "reason": f.reason,
                    "hint": f.hint,
                    "at": wall - f.ago,  # wall-clock Unix time, as the timeline's
                }
                for f in snap.failures
            ],
        }


class _WorkerNamespace(Namespace):
    """The Urban Robot v1 protocol on "/": each event becomes a core event."""

    def __init__(self, robot: UrbanRobot) -> None:
        super().__init__("/")
        self.robot = robot

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        identity = self.robot.credentials.verify(auth)
        peer, now = environ.get("REMOTE_ADDR", "?"), trio.current_time()
        if identity is None and isinstance(auth, dict) and auth.get("secret"):
            self.robot.logins.failed(peer, now)  # it may have been a guess at the admin token
        if identity is not None and identity.admin and self.robot.logins.wait(peer, now) > 0:
            self.robot.quiet.info("throttled", "refused an admin connection from %s: too many wrong credentials", peer)
            raise ConnectionRefusedError("too many wrong credentials from this address: retry later")
        if identity is None:
            # INFO, as for webhooks: anyone can knock, and the Discord log bridge must not relay a stranger's flood.
            missing = not _has_secret(auth)
            what = "no secret (auth={'secret': ...} missing)" if missing else "bad secret"
            # Throttled: one client can knock thousands of times a second (issue 13, finding 4).
            kind = "refused-missing" if missing else "refused-bad"  # a seeds-era worker is not an attacker
            self.robot.quiet.info(kind, "refused a connection from %s: %s", environ.get("REMOTE_ADDR", "?"), what)
            if missing:  # a seeds-era worker: say what v1 wants; a wrong secret learns nothing more
                raise ConnectionRefusedError("authentication failed", {"hint": AUTH_HINT})
            raise ConnectionRefusedError("authentication failed")
        outbox, inbox = trio.open_memory_channel[tuple[str, Any]](OUTBOX_SIZE)
        conn = _Conn(sid, identity, outbox, inbox)
        self.robot.conns[sid] = conn
        self.server.start_task(sid, self.robot._sender, conn)
        try:
            # A child's generation and release are what we spawned it as (its credential says), not its own claim.
            connected = Connected(
                sid,
                identity.name,
                admin=identity.admin,
                generation=identity.generation,
                release=identity.release,
                group=identity.group,
            )
            await self.robot.submit(connected)
        except BaseException:
            # Cancelled: the connection closed while it was being registered. No disconnect handler
            # will run for it, so undo here, or it stays in the core as a ghost worker for good.
            self.robot.conns.pop(sid, None)
            outbox.close()
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                self.robot.submit_nowait(Disconnected(sid))  # after Connected, if that was queued
            raise

    async def on_disconnect(self, sid: str, reason: str) -> None:
        conn = self.robot.conns.pop(sid, None)
        if conn is not None:
            conn.outbox.close()
            await self.robot.submit(Disconnected(sid))

    async def _event(
        self,
        sid: str,
        name: str,
        args: tuple[Any, ...],
        make: Callable[[Any], Event],
        malformed: Callable[[Any], Event] | None = None,
    ) -> Any:
        """Parse a worker's ``name`` event with the protocol's vocabulary, feed it to the core, answer.

        ``malformed`` makes the core's event of a message that does not parse (the core judges it);
        without it, such a message is answered with the error and goes no further.
        """
        conn = self.robot.conns.get(sid)
        if conn is None:
            return {"error": "not connected"}
        data = args[0] if args else None
        try:
            event = make(parse_request(name, data))
        except MalformedMessage as exc:
            if malformed is None:
                await self.robot.submit(Spoke(sid))  # garbage, but from a live worker (§5.2: it resets the silence)
                return {"error": str(exc)}
            event = malformed(data)
        slot = await self.robot._submit(event)
        write = slot.write
        if write is None:
            return slot.value

        async def answer_once_written() -> Any:  # an accepted cache is acknowledged once it is on disk
            await self.robot.cache_written(write)
            if not self.robot.replicated(write):  # several hosts: on this host's disk only (§19.8)
                why = "kept on this host only: no other host of the cluster acknowledged it in time; send it again"
                return {"accepted": False, "error": why}
            return slot.value

        return Later(answer_once_written)

    async def on_identify(self, sid: str, *args: Any) -> Any:
        def make(m: protocol.Identify) -> Event:
            return Identified(sid, m.version, m.pid, m.generation, m.epoch, m.lease_token)

        return await self._event(sid, "identify", args, make)

    async def on_heartbeat(self, sid: str, *args: Any) -> Any:
        return await self._event(sid, "heartbeat", args, lambda m: Heartbeat(sid, m.epoch, m.gateway))

    async def on_ready(self, sid: str, *args: Any) -> Any:
        return await self._event(sid, "ready", args, lambda m: Ready(sid))

    async def on_health_check(self, sid: str, *args: Any) -> Any:
        # A report that is no object (the seeds' bare "OK") is still a report: the core fails it at once (§9).
        def make(report: Any) -> Event:
            return HealthReport(sid, report)

        return await self._event(sid, "health_check", args, make, malformed=make)

    async def on_cache_sync(self, sid: str, *args: Any) -> Any:
        return await self._event(sid, "cache_sync", args, lambda m: CacheSync(sid, m))

    async def on_coma(self, sid: str, *args: Any) -> Any:
        return await self._event(sid, "coma", args, lambda m: ComaAck(sid, m.reason))

    async def on_shutdown(self, sid: str, *args: Any) -> Any:
        return await self._event(sid, "shutdown", args, lambda m: ShutdownAck(sid, m.reason))

    async def on_failed(self, sid: str, *args: Any) -> Any:
        return await self._event(sid, "failed", args, lambda m: WorkerFailed(sid, m.reason, m.hint))

    async def on_identify_slot(self, sid: str, *args: Any) -> Any:
        return await self._event(sid, "identify_slot", args, lambda m: IdentifyAsked(sid, m.shard_id))

    async def on_try_again(self, sid: str, *args: Any) -> Any:
        return await self._event(sid, "try_again", args, lambda m: TryAgain(sid))


def _identify_grant(action: Send) -> int | None:
    """The shard id of an IDENTIFY slot's grant (``cmd identify``), None for any other message."""
    data = action.data
    if action.event != "cmd" or not isinstance(data, dict) or data.get("t") != "identify":
        return None
    shard = data.get("d", {}).get("shard_id") if isinstance(data.get("d"), dict) else None
    return shard if isinstance(shard, int) else None


def _plan_key(plan: protocol.ShardPlan) -> tuple[Any, Any] | None:
    """What identifies a shard plan in ``state.json``: None for one group (the v1 file)."""
    return (plan.shard_count, plan.shards_per_worker) if plan.sharded else None


def _plan_of(state: dict[str, Any]) -> tuple[Any, Any] | None:
    """The shard plan ``state.json`` was written under (as ``_plan_key``)."""
    return (state.get("shard_count"), state.get("shards_per_worker")) if "groups" in state else None


def _has_secret(auth: Any) -> bool:
    """Whether a CONNECT ``auth`` carries a secret at all (right or wrong): a non-empty string."""
    return isinstance(auth, dict) and isinstance(auth.get("secret"), str) and bool(auth["secret"])
