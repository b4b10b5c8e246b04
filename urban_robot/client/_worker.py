"""The worker: a long-lived client of the Urban Robot supervisor (docs/protocol.md §15).

One :class:`Worker` outlives its connections. Each connection (a *session*) runs four tasks in its
own nursery: the reader, the dispatcher of pushes (``hello``/``cmd``/``cache_sync``, in arrival
order), the heartbeat loop and the outbox drain. Any of them finding the connection broken or hung
cancels the session; :meth:`Worker.run` then reconnects after a back-off. The lease view and the
fence timer belong to the worker, not to a session: a worker that loses its supervisor stops
processing when its own view ends, connected or not (§8.1 rule 3).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from ._callbacks import call_user
from ._config import Backoff, Endpoint, Timeouts
from ._connection import WIRE_ERRORS, AckIds, Connection, Frame, event_frames, open_connection
from ._errors import AuthenticationFailed, ConnectionLost, MalformedMessage, MessageTooLarge
from ._health import Check, health_report
from ._lease import HeartbeatSent, LeaseView
from ._messages import (
    CachePush,
    CacheSync,
    Coma,
    Custom,
    HealthCheck,
    Heartbeat,
    Hello,
    Identify,
    Message,
    Ok,
    ProcessCommands,
    Push,
    Ready,
    Shutdown,
    Stop,
    UnknownCommand,
    parse_hello,
    parse_push,
    parse_renewal,
    redact,
)
from ._outbox import Delivery, Outbox
from ._signals import Flag

log = logging.getLogger("urban_robot.client")

Callback = Callable[..., Any | Awaitable[Any]]


def _error_of(answer: Any) -> str | None:
    return answer["error"] if isinstance(answer, dict) and isinstance(answer.get("error"), str) else None


class Worker:
    """A worker process's connection to its supervisor. ``await worker.run()`` until shut down.

    Callbacks (sync or async; exceptions are logged and ignored): ``on_hello(hello)`` when a
    ``hello`` arrives (``hello.token`` logs in to Discord), ``on_start_processing()`` /
    ``on_stop_processing(reason)`` at the edges of the lease, ``get_cache()`` for the final cache
    before a coma/shutdown, ``set_cache(cache)`` for each ``cache_sync`` push.
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
        self.identity = Identify(version, pid if pid is not None else os.getpid(), self.endpoint.generation)
        self.health_checks = dict(health_checks or {})
        self.extra_checks = dict(extra_checks or {})
        self.get_cache, self.set_cache, self.on_hello = get_cache, set_cache, on_hello
        self.on_start_processing, self.on_stop_processing = on_start_processing, on_stop_processing
        self.auto_ready = auto_ready
        self.timeouts, self.backoff = timeouts or Timeouts(), backoff or Backoff()
        self.rng = rng or random.Random()
        self.outbox = Outbox(outbox_size)
        self.lease = LeaseView()
        self.hello: Hello | None = None
        self.shut_down = False
        self.connected = Flag()
        self.processing_flag = Flag()
        self.sessions = 0  # connections that got as far as hello
        self._ack_ids = AckIds()
        self._conn: Connection | None = None
        self._session_scope: trio.CancelScope | None = None
        self._run_scope = trio.CancelScope()
        self._beat_now = trio.Event()
        self._discord_ready = False

    def __repr__(self) -> str:
        return f"<Worker {self.identity.version} {self.endpoint.url} processing={self.processing}>"

    # -- what the bot looks at -------------------------------------------------------------------------
    @property
    def token(self) -> str | None:
        """The Discord token from the last ``hello`` (never logged)."""
        return self.hello.token if self.hello is not None else None

    @property
    def processing(self) -> bool:
        """May the bot act on user commands right now (a renewed lease that has not run out)?"""
        return bool(self.processing_flag) and self.lease.processing(trio.current_time())

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
        refused: AuthenticationFailed | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._fence)
                with self._run_scope:
                    try:
                        await self._connect_forever(task_status)
                    except AuthenticationFailed as exc:
                        refused = exc  # raised bare, not in an exception group
                nursery.cancel_scope.cancel()
            if refused is not None:
                raise refused
        finally:
            with trio.CancelScope(shield=True):
                self.lease.drop()
                await self._stop_processing("the worker stopped")

    async def _connect_forever(self, task_status: trio.TaskStatus[None]) -> None:
        attempt = 0
        while not self.shut_down:
            before = self.sessions
            try:
                await self._session(task_status)
            except ConnectionLost as exc:
                log.warning("connection to the supervisor lost: %s", exc)
            if self.sessions > before:
                task_status, attempt = trio.TASK_STATUS_IGNORED, 0
            if not self.shut_down:
                delay = self.backoff.delay(attempt, self.rng)
                log.info("reconnecting in %.2f s", delay)
                await trio.sleep(delay)
                attempt += 1

    async def _session(self, task_status: trio.TaskStatus[None]) -> None:
        async with open_connection(self.endpoint.ws_url, self.endpoint.secret, self._ack_ids, self.timeouts) as conn:
            pushes, incoming = trio.open_memory_channel[tuple[str, Any]](1024)
            try:
                async with trio.open_nursery() as nursery:
                    self._conn, self._session_scope = conn, nursery.cancel_scope
                    nursery.start_soon(self._guard, conn.read, pushes)
                    await self._guard(self._greet, conn, nursery, incoming, task_status)
            finally:
                self._conn, self._session_scope = None, None
                self.connected.set(False)

    async def _guard(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a session task; a broken or hung connection ends the whole session."""
        try:
            await fn(*args)
        except (ConnectionLost, *WIRE_ERRORS) as exc:
            log.warning("dropping the connection: %s", exc)
            self._drop_connection()

    def _drop_connection(self) -> None:
        if self._session_scope is not None:
            self._session_scope.cancel()

    async def _greet(
        self,
        conn: Connection,
        nursery: trio.Nursery,
        incoming: trio.MemoryReceiveChannel[tuple[str, Any]],
        task_status: trio.TaskStatus[None],
    ) -> None:
        hello = await self._identify(conn)
        self.connected.set(True)
        self.sessions += 1
        nursery.start_soon(self._guard, self._dispatch, conn, incoming)
        nursery.start_soon(self._guard, self._heartbeats, conn, hello.interval)
        nursery.start_soon(self._guard, self._drain, conn)
        task_status.started()
        if self._discord_ready or self.auto_ready:
            await self._call(Ready(), conn)

    async def _identify(self, conn: Connection) -> Hello:
        grant = self.lease.grant
        claim = {"epoch": grant.epoch, "lease_token": grant.lease_token} if grant else {}
        identify = Identify(**{**self.identity.payload(), **claim})
        answer = await self._call(identify, conn)
        try:
            hello = parse_hello(answer)
        except MalformedMessage as exc:
            raise ConnectionLost(f"identify answered with {redact(answer)!r}: {exc}") from None
        await self._on_hello(hello)
        return hello

    async def _on_hello(self, hello: Hello) -> None:
        self.hello = hello
        log.info("hello: protocol %d, interval %s s, lease %s s, epoch %d", hello.protocol, hello.interval,
                 hello.lease, hello.epoch)  # fmt: skip
        grant = self.lease.grant
        if grant is not None and hello.process_commands and hello.epoch == grant.epoch:
            self._beat_now.set()  # adopted: renew at once
        elif grant is not None:
            log.warning("the supervisor did not adopt epoch %d: dropping it", grant.epoch)
            self.lease.drop()
            await self._stop_processing("grant not adopted")
        await call_user(self.on_hello, hello, what="on_hello")

    # -- pushes ---------------------------------------------------------------------------------------
    async def _dispatch(self, conn: Connection, incoming: trio.MemoryReceiveChannel[tuple[str, Any]]) -> None:
        async for event, data in incoming:
            try:
                push = parse_push(event, data)
            except MalformedMessage as exc:
                log.error("ignored a malformed message from the supervisor: %s", exc)
                continue
            if push is None:
                log.info("ignored unknown event %r from the supervisor", event)
                continue
            await self._handle_safely(conn, push)

    async def _handle_safely(self, conn: Connection, push: Push) -> None:
        try:
            await self._handle(conn, push)
        except (ConnectionLost, *WIRE_ERRORS):
            raise
        except Exception:
            log.exception("handling %r failed", push)

    async def _handle(self, conn: Connection, push: Push) -> None:
        if isinstance(push, CachePush):
            await call_user(self.set_cache, push.cache, what="set_cache")
        elif isinstance(push, HealthCheck):
            await self.report_health(conn=conn)
        elif isinstance(push, ProcessCommands):
            log.info("granted epoch %d (%s)", push.epoch, push.reason)
            self.lease.take(push.epoch, push.lease_token)
            self._beat_now.set()  # the grant means nothing until renewed
        elif isinstance(push, Stop):
            await self._stop_for(conn, push)
        elif isinstance(push, UnknownCommand):
            log.info("ignored unknown cmd %r", push.name)
        elif not isinstance(push, (Ok, Hello)):  # ok grants nothing; a hello after the ack is its twin
            log.warning("unexpected %r", push)

    async def _stop_for(self, conn: Connection, stop: Stop) -> None:
        """Stop first, then the final cache, then the acknowledgement (§8.1 rule 5)."""
        kind = "shutdown" if stop.shutdown else "coma"
        log.info("asked for %s: %s", kind, stop.reason)
        self.lease.drop()
        await self._stop_processing(kind)
        if stop.cache_sync:
            await self._final_cache(conn)
        await self._call(Shutdown(stop.reason) if stop.shutdown else Coma(stop.reason), conn)
        if stop.shutdown:
            self._finish()

    async def _final_cache(self, conn: Connection) -> None:
        cache = await call_user(self.get_cache, what="get_cache")
        answer = await self._call(CacheSync(cache), conn)
        if not (isinstance(answer, dict) and answer.get("accepted") is True):
            log.warning("final cache not accepted: %r", redact(answer))

    def _finish(self) -> None:
        self.shut_down = True
        self._run_scope.cancel()

    # -- the lease ------------------------------------------------------------------------------------
    async def _heartbeats(self, conn: Connection, interval: float) -> None:
        while True:
            with trio.move_on_after(interval):
                await self._beat_now.wait()
            self._beat_now = trio.Event()
            await self.heartbeat(conn=conn)

    async def _renewed(self, sent: HeartbeatSent, answer: Any) -> None:
        try:
            renewal = parse_renewal(answer)
        except MalformedMessage:
            if sent.grant is not None:
                log.warning("heartbeat for epoch %d not renewed: %r", sent.grant.epoch, redact(answer))
            return
        outcome = self.lease.answer(sent, renewal, trio.current_time())
        if outcome == "renewed":
            await self._start_processing()
        elif outcome == "fenced":
            log.warning("fenced off: the supervisor answered %r", renewal)
            await self._stop_processing("fenced off")
        elif outcome == "late":
            log.warning("a renewal came after the lease it granted had ended")

    async def _start_processing(self) -> None:
        if self.processing_flag.set(True):
            log.info("processing under epoch %s", self.lease.grant.epoch if self.lease.grant else None)
            await call_user(self.on_start_processing, what="on_start_processing")

    async def _stop_processing(self, reason: str) -> None:
        if self.processing_flag.set(False):
            log.info("stopped processing: %s", reason)
            await call_user(self.on_stop_processing, reason, what="on_stop_processing")

    async def _fence(self) -> None:
        """Stop processing the instant the lease view ends, whatever the connection does."""
        while True:
            await self.processing_flag.on.wait()
            await trio.sleep_until(self.lease.until)
            if self.processing_flag and not self.lease.processing(trio.current_time()):
                await self._stop_processing("lease ran out")

    # -- sending ---------------------------------------------------------------------------------------
    def frames(self, message: Message) -> list[Frame]:
        """The frames ``message`` would be written as, were it the next message on the wire."""
        return event_frames(message.event, message.payload(), self._ack_ids.peek())

    async def _call(self, message: Message, conn: Connection | None = None) -> Any:
        """Send on the live connection and wait for the ack; error answers are logged."""
        conn = conn or self._conn
        if conn is None:
            raise ConnectionLost(f"not connected: {message.event!r} not sent")
        try:
            answer = await conn.call(message.event, message.payload())
        except ConnectionLost:
            if conn is self._conn:
                self._drop_connection()  # hung: redo it, whoever noticed
            raise
        if (error := _error_of(answer)) is not None:
            log.error("the supervisor refused %r: %s", message.event, error)
        return answer

    async def heartbeat(self, *, dry_run: bool = False, conn: Connection | None = None) -> Any:
        """One heartbeat for the current grant, its answer applied to the lease view."""
        grant = self.lease.grant
        message = Heartbeat(grant.epoch if grant else None)
        if dry_run:
            return self.frames(message)
        sent = self.lease.sent(trio.current_time())  # taken before the write (§8.1)
        answer = await self._call(message, conn)
        await self._renewed(sent, answer)
        return answer

    async def ready(self, *, dry_run: bool = False) -> Any:
        """Tell the supervisor Discord is READY (again after every reconnection, by itself)."""
        if dry_run:
            return self.frames(Ready())
        self._discord_ready = True
        if self._conn is None or not self.connected:
            return None  # sent after the next hello
        try:
            return await self._call(Ready())
        except (ConnectionLost, *WIRE_ERRORS) as exc:
            log.warning("ready not delivered (%s): it is sent again after reconnecting", exc)
            return None

    async def report_health(self, *, dry_run: bool = False, conn: Connection | None = None) -> Any:
        """Run the health checks and send the report (§9)."""
        report = await health_report(self.health_checks, self.extra_checks, self.timeouts.health)
        if dry_run:
            return self.frames(report)
        log.info("health report: %r", report)
        return await self._call(report, conn)

    def emit(self, event: str, data: dict[str, Any] | None = None, *, dry_run: bool = False) -> Any:
        """Queue an event (delivered once, in order, across reconnects): a :class:`Delivery`."""
        return self._queue(Custom(event, data if data is not None else {}), dry_run)

    def sync_cache(self, cache: Any, *, dry_run: bool = False) -> Any:
        """Queue ``cache_sync {cache}`` (the holder's whole cache): a :class:`Delivery`."""
        return self._queue(CacheSync(cache), dry_run)

    def _queue(self, message: Message, dry_run: bool) -> Any:
        return self.frames(message) if dry_run else self.outbox.put(message)

    async def call(self, event: str, data: dict[str, Any] | None = None) -> Any:
        """Queue an event and wait for its answer (None if it was lost with its connection)."""
        return await self.emit(event, data).wait()

    async def coma(self, reason: str = "", *, dry_run: bool = False) -> Any:
        """Stop processing by ourselves, then tell the supervisor (releases the lease)."""
        if dry_run:
            return self.frames(Coma(reason))
        self.lease.drop()
        await self._stop_processing("coma")
        return await self._call(Coma(reason))

    async def shutdown(self, reason: str = "", *, dry_run: bool = False) -> Any:
        """Stop processing, send the final cache if we held the lease, say ``shutdown`` and end :meth:`run`."""
        if dry_run:
            return self.frames(Shutdown(reason))
        held = self.lease.grant is not None
        self.lease.drop()
        await self._stop_processing("shutdown")
        try:
            if held and self.get_cache is not None and self._conn is not None:
                await self._final_cache(self._conn)
            return await self._call(Shutdown(reason)) if self._conn is not None else None
        finally:
            self._finish()

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
        if (error := _error_of(answer)) is not None:
            log.error("the supervisor refused %r: %s", message.event, error)
