"""The worker: a trio shell around :class:`urban_robot.protocol.WorkerProtocol` (docs/protocol.md §15).

The protocol object decides everything — what to send, when the lease ends, when a connection is
hung, how long to back off. This shell owns the sockets, the clock and the user's callbacks:

- ``run`` connects, reconnects after the back-off the protocol chose, and ends when it says so;
- per connection (a *session*, its own nursery): the reader, the dispatcher of pushes, the outbox
  drain, and one task per answer awaited;
- for the worker's whole life: the timer (feeds ``timer(now)`` at ``next_deadline()``) and two
  executors — the *wire* executor writes messages in order; the *user* executor runs callbacks in
  order (a cache push is applied before processing starts; a coma's drain ends before its ack is
  written: an effect batch that holds any user effect runs there as a whole, in order).
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from ..protocol import (
    ApplyCache,
    AuthenticationFailed,
    Backoff,
    CacheMap,
    CacheSync,
    CollectCache,
    Coma,
    ConnectionLost,
    Custom,
    DropConnection,
    Effect,
    Endpoint,
    Finish,
    Heartbeat,
    Hello,
    Identify,
    LeaseView,
    Link,
    Log,
    Message,
    MessageTooLarge,
    Ready,
    Reconnect,
    RunHealthCheck,
    Send,
    ShardError,
    Shutdown,
    SlotGranted,
    SlotRefused,
    StartProcessing,
    StopProcessing,
    Timeouts,
    WorkerProtocol,
)
from ._callbacks import call_user
from ._connection import WIRE_ERRORS, AckIds, Connection, Frame, event_frames, open_connection
from ._health import Check, health_report
from ._outbox import Delivery, Outbox
from ._signals import Flag

log = logging.getLogger("urban_robot.client")

Callback = Callable[..., Any | Awaitable[Any]]
_WIRE = (Send, Log, DropConnection, SlotGranted, SlotRefused)


class Worker:
    """A worker process's connection to its supervisor. ``await worker.run()`` until shut down.

    Callbacks (sync or async; exceptions are logged and ignored): ``on_hello(hello)`` when a
    ``hello`` arrives (``hello.token`` logs in to Discord), ``on_start_processing()`` /
    ``on_stop_processing(reason)`` at the edges of the lease, ``get_cache()`` for the final cache
    before a coma/shutdown, ``set_cache(cache)`` for each ``cache_sync`` push.

    The cache (docs/workers.md "Cache"): a plain value (``get_cache``/``set_cache``, sent whole), or
    ``cache=CacheMap()``: a mapping whose changed keys alone are synced (``await sync_cache()``) and
    which pushes update in place (``set_cache``, if given, then gets the map).
    """

    def __init__(
        self,
        url: str | None = None,
        secret: str | None = None,
        *,
        version: str,
        generation: int | None = None,
        health_checks: Mapping[str, Check] | None = None,
        extra_checks: Mapping[str, Check] | None = None,
        get_cache: Callback | None = None,
        set_cache: Callback | None = None,
        cache: CacheMap | None = None,
        on_hello: Callback | None = None,
        on_start_processing: Callback | None = None,
        on_stop_processing: Callback | None = None,
        auto_ready: bool = False,
        outbox_size: int = 1000,
        timeouts: Timeouts | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        pid: int | None = None,
    ) -> None:
        self.endpoint = Endpoint.resolve(url, secret, generation)
        identity = Identify(version, pid if pid is not None else os.getpid(), self.endpoint.generation)
        self.timeouts = timeouts or Timeouts()
        self.protocol = WorkerProtocol(identity, self.timeouts, backoff or Backoff(), rng or random.Random())
        self.protocol.discord_ready = auto_ready
        if cache is not None:
            self.protocol.cache, self.protocol.mapped = cache, True
        self.health_checks = dict(health_checks or {})
        self.extra_checks = dict(extra_checks or {})
        self.get_cache, self.set_cache, self.on_hello = get_cache, set_cache, on_hello
        self.on_start_processing, self.on_stop_processing = on_start_processing, on_stop_processing
        self.outbox = Outbox(outbox_size)
        self.connected = Flag()
        self.processing_flag = Flag()
        self.error: str | None = None  # why the worker ended, when it ended as a failure
        self._ack_ids = AckIds()
        self._conn: Connection | None = None
        self._session: trio.Nursery | None = None
        self._served = trio.Event()
        self._run_scope = trio.CancelScope()
        self._deadline_moved = trio.Event()
        self._wire, self._wire_queue = trio.open_memory_channel[list[Effect | _HelloArrived]](math.inf)
        self._user, self._user_queue = trio.open_memory_channel[list[Effect | _HelloArrived]](math.inf)
        self._waiters: dict[int, trio.Event] = {}
        self._answers: dict[int, Any] = {}
        self._reconnect = 0.0
        self._refused: AuthenticationFailed | None = None
        self._finished = trio.Event()
        self._slots: dict[int, _SlotWait] = {}  # shard id → the identify_slot call waiting for its grant

    def __repr__(self) -> str:
        return f"<Worker {self.identity.version} {self.endpoint.url} processing={self.processing}>"

    # -- what the bot looks at -------------------------------------------------------------------------
    @property
    def identity(self) -> Identify:
        return self.protocol.identity

    @property
    def lease(self) -> LeaseView:
        return self.protocol.lease

    @property
    def hello(self) -> Hello | None:
        return self.protocol.hello

    @property
    def token(self) -> str | None:
        """The Discord token from the last ``hello`` (never logged)."""
        return self.hello.token if self.hello is not None else None

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shard ids this worker runs, from ``hello`` (None: unsharded, or before the first hello)."""
        return self.protocol.shards

    @property
    def shard_count(self) -> int | None:
        """The bot's shard count, from ``hello`` (None: unsharded, or before the first hello)."""
        return self.protocol.shard_count

    @property
    def shut_down(self) -> bool:
        return self.protocol.finished

    @property
    def sessions(self) -> int:
        """Connections that got as far as ``hello``."""
        return self.protocol.sessions_served

    @property
    def processing(self) -> bool:
        """May the bot act on user commands right now (a renewed lease that has not run out)?"""
        return bool(self.processing_flag) and self.protocol.processing(trio.current_time())

    @property
    def processing_started(self) -> trio.Event:
        """Set while processing (a fresh one after each stop)."""
        return self.processing_flag.on

    @property
    def processing_stopped(self) -> trio.Event:
        """Set while not processing (a fresh one after each start)."""
        return self.processing_flag.off

    # -- running ---------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, reconnect and serve until shut down (``cmd shutdown`` or :meth:`shutdown`) or cancelled.

        ``task_status.started()`` comes with the first ``hello``. An authentication failure is raised.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer)
                nursery.start_soon(self._execute, self._wire_queue)
                nursery.start_soon(self._execute, self._user_queue)
                with self._run_scope:
                    await self._connect_forever(task_status)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                self.protocol.lease.drop()
                await self._stop_processing(StopProcessing("the worker stopped", drain=False))
        if self._refused is not None:
            raise self._refused

    async def _connect_forever(self, task_status: trio.TaskStatus[None]) -> None:
        while not self.protocol.finished:
            why = "connection closed"
            try:
                await self._session_run(task_status)
            except AuthenticationFailed as exc:
                self._refused = exc
                self._feed(self.protocol.refused(trio.current_time(), str(exc)))
                return
            except ConnectionLost as exc:
                why = str(exc)
            if self.protocol.sessions_served:
                task_status = trio.TASK_STATUS_IGNORED  # started() was called with the first hello
            self._feed(self.protocol.disconnected(trio.current_time(), why))
            if not self.protocol.finished:
                await trio.sleep(self._reconnect)

    async def _session_run(self, task_status: trio.TaskStatus[None]) -> None:
        async with open_connection(self.endpoint.ws_url, self.endpoint.secret, self._ack_ids, self.timeouts) as conn:
            pushes, incoming = trio.open_memory_channel[tuple[str, Any]](1024)
            try:
                async with trio.open_nursery() as nursery:
                    self._conn, self._session = conn, nursery
                    nursery.start_soon(self._guard, conn.read, pushes)
                    nursery.start_soon(self._guard, self._dispatch, incoming)
                    self._feed(self.protocol.connected(trio.current_time()))
                    await self._served.wait()
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    nursery.start_soon(self._guard, self._drain, conn)
            finally:
                self._conn, self._session, self._served = None, None, trio.Event()
                self.connected.set(False)

    async def _guard(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a session task; a broken or hung connection ends the whole session."""
        try:
            await fn(*args)
        except (ConnectionLost, *WIRE_ERRORS) as exc:
            log.warning("dropping the connection: %s", exc)
            self._drop_connection()

    def _start_in_session(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Start ``fn`` in the current connection's nursery; False if there is none (or it is closing)."""
        if self._session is None:
            return False
        try:
            self._session.start_soon(fn, *args)
        except RuntimeError:  # the nursery is closing: its connection is gone
            return False
        return True

    def _drop_connection(self) -> None:
        if self._session is not None:
            self._session.cancel_scope.cancel()

    async def _dispatch(self, incoming: trio.MemoryReceiveChannel[tuple[str, Any]]) -> None:
        async for event, data in incoming:
            self._feed(self.protocol.pushed(event, data, trio.current_time()))

    async def _timer(self) -> None:
        while True:
            deadline = self.protocol.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._deadline_moved.wait()
                self._deadline_moved = trio.Event()
                continue
            self._feed(self.protocol.timer(trio.current_time()))

    # -- carrying out the protocol's effects -----------------------------------------------------------
    def _feed(self, effects: list[Effect]) -> None:
        """Queue one input's effects, after noting what the shell itself must know at once."""
        batch: list[Effect | _HelloArrived] = list(effects)
        if self.protocol.link is Link.SERVING and self._conn is not None and not self._served.is_set():
            self._served.set()
            self.connected.set(True)
            batch.insert(0, _HelloArrived())
        for effect in batch:
            if isinstance(effect, Reconnect):
                self._reconnect = effect.delay
            elif isinstance(effect, SlotGranted | SlotRefused):  # at once: a grant is good for a moment only
                self._wake_slot(effect)
        if not batch:
            return
        if all(isinstance(e, (*_WIRE, Reconnect)) for e in batch):
            self._wire.send_nowait(batch)
        else:
            self._user.send_nowait(batch)
        self._deadline_moved.set()

    def _wake_slot(self, effect: SlotGranted | SlotRefused) -> None:
        wait = self._slots.get(effect.shard_id)
        if wait is not None:
            wait.refused = effect.reason if isinstance(effect, SlotRefused) else None
            wait.event.set()

    async def _execute(self, queue: trio.MemoryReceiveChannel[list[Effect | _HelloArrived]]) -> None:
        async for effects in queue:
            for effect in effects:
                await self._carry_out(effect)

    async def _carry_out(self, effect: Effect | _HelloArrived) -> None:
        if isinstance(effect, Send):
            await self._write(effect)
        elif isinstance(effect, Log):
            log.log(effect.level, "%s", effect.message)
        elif isinstance(effect, _HelloArrived):
            await call_user(self.on_hello, self.protocol.hello, what="on_hello")
        elif isinstance(effect, StartProcessing):
            if self.processing_flag.set(True):
                await call_user(self.on_start_processing, what="on_start_processing")
        elif isinstance(effect, StopProcessing):
            await self._stop_processing(effect)
        elif isinstance(effect, ApplyCache):
            await call_user(self.set_cache, effect.cache, what="set_cache")
        elif isinstance(effect, CollectCache):
            cache = await call_user(self.get_cache, what="get_cache")
            self._feed(self.protocol.cache_collected(cache, trio.current_time()))
        elif isinstance(effect, RunHealthCheck):
            self._start_in_session(self._health_check)
        elif isinstance(effect, DropConnection):
            log.warning("dropping the connection: %s", effect.reason)
            self._drop_connection()
        elif isinstance(effect, Finish):
            self.error = effect.error
            self._finished.set()
            self._run_scope.cancel()
        # Login: the trio client leaves logging in to on_hello (hello.token); Reconnect: read by _feed

    async def _write(self, send: Send) -> None:
        request, conn = send.request, self._conn
        if conn is None or request.session != self.protocol.session:
            self._settle(request.id, None)
            return  # its connection is gone; the protocol forgot it already
        try:
            ack_id, _ = await conn.send(request.message.event, request.message.payload())
        except MessageTooLarge as exc:
            log.error("dropped %r: %s", request.message.event, exc)
            self._feed(self.protocol.answered(request.id, {"error": str(exc)}, trio.current_time()))
            self._settle(request.id, None)
            return
        except (ConnectionLost, *WIRE_ERRORS) as exc:
            log.warning("dropping the connection: %s", exc)
            self._drop_connection()
            self._settle(request.id, None)
            return
        if not self._start_in_session(self._guard, self._await_answer, conn, ack_id, request.id):
            self._settle(request.id, None)

    async def _await_answer(self, conn: Connection, ack_id: int, request_id: int) -> None:
        try:
            answer = await conn.answer(ack_id)
        except BaseException:
            self._settle(request_id, None)
            raise
        self._feed(self.protocol.answered(request_id, answer, trio.current_time()))
        self._settle(request_id, answer)

    def _settle(self, request_id: int, answer: Any) -> None:
        waiter = self._waiters.pop(request_id, None)
        if waiter is not None:
            self._answers[request_id] = answer
            waiter.set()

    async def _health_check(self) -> None:
        report = await health_report(self.health_checks, self.extra_checks, self.timeouts.health)
        log.info("health report: %r", report)
        self._feed(self.protocol.health_collected(report, trio.current_time()))

    async def _stop_processing(self, stop: StopProcessing) -> None:
        if not self.processing_flag.set(False):
            return
        log.info("stopped processing: %s", stop.reason)
        # A drain (coma/shutdown): on_stop_processing may wait for the work in flight, but not past the lease
        # view (§8.1 rule 3): the supervisor may promote another worker then. Not a drain: the lease is over
        # already, the callback is how the bot learns it, so it runs whole (it should cancel, not wait).
        deadline = stop.drain_until(trio.current_time(), math.inf) if stop.drain else math.inf
        with trio.move_on_at(deadline) as scope:
            await call_user(self.on_stop_processing, stop.reason, what="on_stop_processing")
        if scope.cancelled_caught:
            log.warning("on_stop_processing was cancelled: the lease ended before it returned")

    # -- what the bot can call -----------------------------------------------------------------------
    def frames(self, message: Message) -> list[Frame]:
        """The frames ``message`` would be written as, were it the next message on the wire."""
        return event_frames(message.event, message.payload(), self._ack_ids.peek())

    async def _request(self, effects: list[Effect], kind: type) -> Any:
        """Feed ``effects`` and wait for the answer to the request of type ``kind`` among them (None if lost)."""
        sends = [e for e in effects if isinstance(e, Send) and isinstance(e.request.message, kind)]
        waiter = trio.Event()
        if sends:
            self._waiters[sends[-1].request.id] = waiter
        self._feed(effects)
        if not sends:
            return None
        await waiter.wait()
        return self._answers.pop(sends[-1].request.id, None)

    async def heartbeat(self, *, dry_run: bool = False) -> Any:
        """One heartbeat now, for the grant held; its answer is applied to the lease view and returned."""
        if dry_run:
            grant = self.lease.grant
            return self.frames(Heartbeat(grant.epoch if grant else None, self.protocol.gateway))
        return await self._request(self.protocol.beat(trio.current_time()), Heartbeat)

    async def ready(self, *, dry_run: bool = False) -> Any:
        """Tell the supervisor Discord is READY (again after every reconnection, by itself)."""
        if dry_run:
            return self.frames(Ready())
        return await self._request(self.protocol.discord_is_ready(trio.current_time()), Ready)

    async def gateway(self, up: bool) -> None:
        """The bot's Discord Gateway connection went up or down (a holder without one may be replaced)."""
        self._feed(self.protocol.gateway_changed(up, trio.current_time()))
        await trio.lowlevel.checkpoint()

    async def identify_slot(self, shard_id: int) -> None:
        """Wait for the supervisor's slot to IDENTIFY ``shard_id`` with Discord (§18.3); send the IDENTIFY at once
        when this returns. Call it only when about to IDENTIFY (the shard's Gateway connection is open and
        Discord's HELLO came), never for a RESUME, one call per shard at a time. Survives reconnections to the
        supervisor (the ask goes again); a grant that could not be used within ``IDENTIFY_MARGIN`` seconds is
        thrown away and asked for again. Raises :class:`ShardError` for a shard that is not this worker's
        (or an unsharded worker) and if the supervisor refuses the slot."""
        try:
            while True:
                wait = self._slots[shard_id] = _SlotWait()
                self._feed(self.protocol.ask_identify(shard_id, trio.current_time()))
                await wait.event.wait()
                if wait.refused is not None:
                    raise ShardError(f"the supervisor refused an identify slot for shard {shard_id}: {wait.refused}")
                if self.protocol.use_identify_grant(shard_id, trio.current_time()):
                    return
                log.warning("the identify slot for shard %d came too long ago to use: asking again", shard_id)
        finally:
            self._slots.pop(shard_id, None)
            self.protocol.withdraw_identify(shard_id)  # nothing once the grant is used; a cancelled wait ends here

    async def report_health(self, *, dry_run: bool = False) -> Any:
        """Run the health checks and send the report (§9)."""
        report = await health_report(self.health_checks, self.extra_checks, self.timeouts.health)
        if dry_run:
            return self.frames(report)
        log.info("health report: %r", report)
        return await self._request(self.protocol.health_collected(report, trio.current_time()), type(report))

    def emit(self, event: str, data: dict[str, Any] | None = None, *, dry_run: bool = False) -> Any:
        """Queue an event (delivered once, in order, across reconnects): a :class:`Delivery`."""
        return self._queue(Custom(event, data if data is not None else {}), dry_run)

    async def sync_cache(self, cache: Any = None) -> Any:
        """Send the cache now, in parts (§5.5): a plain ``cache`` whole, or with ``cache=CacheMap()`` the keys
        that changed (``cache`` ignored). The answer to its last part (``{"accepted": true}`` once kept);
        None when not connected or lost with the connection."""
        return await self._request(list(self.protocol.sync_cache(cache, trio.current_time())), CacheSync)

    @property
    def cache(self) -> CacheMap:
        """The worker's cache map (with ``cache=CacheMap()``; for a plain cache, the last values pushed)."""
        return self.protocol.cache

    def _queue(self, message: Message, dry_run: bool) -> Any:
        return self.frames(message) if dry_run else self.outbox.put(message)

    async def call(self, event: str, data: dict[str, Any] | None = None) -> Any:
        """Queue an event and wait for its answer (None if it was lost with its connection)."""
        return await self.emit(event, data).wait()

    async def coma(self, reason: str = "", *, dry_run: bool = False) -> Any:
        """Stop processing by ourselves, then tell the supervisor (releases the lease)."""
        if dry_run:
            return self.frames(Coma(reason))
        return await self._request(self.protocol.coma(reason, trio.current_time()), Coma)

    async def shutdown(self, reason: str = "", *, dry_run: bool = False) -> Any:
        """Stop processing, send the final cache if we held the lease, say ``shutdown`` and end :meth:`run`."""
        if dry_run:
            return self.frames(Shutdown(reason))
        effects = self.protocol.shutdown(reason, trio.current_time())
        if any(isinstance(e, CollectCache) or (isinstance(e, Send) and isinstance(e.request.message, CacheSync))
               for e in effects):  # fmt: skip
            self._feed(effects)  # the shutdown goes out after the final cache; run ends after its answer
            await self._run_done_or_finished()
            return None
        return await self._request(effects, Shutdown)

    async def fail(self, reason: str, hint: str = "") -> None:
        """The bot cannot work (Discord refused it for good): tell the supervisor why, then end :meth:`run`."""
        self._feed(self.protocol.fail(reason, hint, trio.current_time()))
        await self._run_done_or_finished()

    async def _run_done_or_finished(self) -> None:
        """Wait for the Finish effect (after the supervisor's answer, or a lost connection); at once if not running."""
        if self._conn is not None:
            await self._finished.wait()

    async def _drain(self, conn: Connection) -> None:
        while True:
            delivery = await self.outbox.next()
            await self._deliver(conn, delivery)

    async def _deliver(self, conn: Connection, delivery: Delivery) -> None:
        message = delivery.message
        try:
            ack_id, _ = await conn.send(message.event, message.payload())
        except MessageTooLarge as exc:
            self.outbox.pop(delivery)
            log.error("dropped %r: %s", message.event, exc)
            delivery.settle("rejected")
            return
        self.outbox.pop(delivery)
        try:
            answer = await conn.answer(ack_id)
        except BaseException:
            delivery.settle("lost")  # written, maybe handled: not resent
            raise
        delivery.settle("acked", answer)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            log.error("the supervisor refused %r: %s", message.event, answer["error"])


class _SlotWait:
    """Internal: one ``identify_slot`` call waiting; ``refused`` says why it will not come."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.refused: str | None = None


class _HelloArrived:
    """Internal: run ``on_hello`` in order with the user's other callbacks."""
