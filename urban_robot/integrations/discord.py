"""Attach a discord.py bot (``commands.Bot``, ``AutoShardedBot`` or a ``discord.Client``) to Urban Robot in one call.

    bot = commands.Bot(command_prefix="!", intents=intents)
    attachment = attach(bot, version="1.2.0", get_cache=..., set_cache=...)
    attachment.run_forever()  # instead of bot.run(token): the token comes from the supervisor

An asyncio shell over :class:`urban_robot.protocol.WorkerProtocol`, which decides everything — what
to send, when the lease ends, when a connection is hung, how long to back off. The shell owns the
Socket.IO connection (python-socketio's ``AsyncClient``, the reference client), the clock
(``loop.time()``), discord.py and the user's callbacks. In one ``asyncio.TaskGroup`` for the whole run:

- the connection loop (in ``run`` itself): connect, serve until the connection goes, back off as told;
- the timer: feeds ``timer(now)`` at ``next_deadline()``;
- the *wire* executor writes messages in order; the *user* executor carries out effects that touch the
  bot in order — an input's effects that hold any such effect run there as one batch, so a cache push is
  applied before processing starts and a coma's drain ends before its acknowledgement is written;
- Discord: log in (transient errors retried with the protocol's back-off), then the Gateway.

Answers need no task of their own: python-socketio calls the ack callback, which feeds ``answered``;
the protocol's deadlines catch the ones that never come.

The lease gates (:mod:`._discord_gates`) keep a worker that does not hold a renewed lease from running
any user code with side effects. Errors (all in the project's tree, ``urban_robot._errors``)::

    WorkerError (urban_robot.protocol)
     ├─ ConfigError            no supervisor URL or secret (also exported here as AttachError)
     ├─ AuthenticationFailed   the supervisor refused the secret
     ├─ DiscordRefused         Discord refused the bot for good (bad token, privileged intents…)
     ├─ IncompatibleDiscordPy  a discord.py without the internals the gates need
     └─ NotProcessing          a write to Discord from a worker without the lease (also a discord.ClientException)

Neither the secret nor the Discord token is ever logged or shown in a ``repr``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

import attrs

from ..protocol import (
    ApplyCache,
    AuthenticationFailed,
    Backoff,
    CacheMap,
    CollectCache,
    ConfigError,
    ConnectionLost,
    DropConnection,
    Effect,
    Endpoint,
    Finish,
    HealthReport,
    Identify,
    Log,
    Login,
    Reconnect,
    RunHealthCheck,
    Send,
    ShardError,
    SlotGranted,
    SlotRefused,
    StartProcessing,
    StopProcessing,
    Timeouts,
    WorkerError,
    WorkerProtocol,
)
from ._discord_gates import Gates, IncompatibleDiscordPy, InFlight, NotProcessing, current_lease, everywhere, install
from ._discord_health import judge
from ._discord_shards import ONE_SHARD_HINT, gate_identify, place_on_shards

__all__ = [
    "AttachError",
    "Attachment",
    "BotClosed",
    "CacheMap",
    "Connected",
    "Disconnected",
    "DiscordRefused",
    "IncompatibleDiscordPy",
    "NotProcessing",
    "attach",
    "everywhere",
]

log = logging.getLogger("urban_robot.integrations.discord")

AttachError = ConfigError  # the name this module's configuration error had before urban_robot.protocol
START_HINT = "start the bot under the supervisor: python -m urban_robot (README step 4)"
_UNCONFIGURED = Endpoint("http://unconfigured.invalid", "")  # attach() without an endpoint: run() raises instead
CacheGetter = Callable[[], Any]  # returns the cache, or an awaitable of it
CacheSetter = Callable[[Any], Any]  # may return an awaitable
_WIRE = (Send, Log, DropConnection, Reconnect, SlotGranted, SlotRefused)
_LIFECYCLE = ("ready", "connect", "disconnect", "resumed", "shard_ready", "shard_connect", "shard_disconnect",
              "shard_resumed")  # fmt: skip


class DiscordRefused(WorkerError):
    """Discord refused the bot for good (token, intents…): the worker told the supervisor, and ends as a failure."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(f"{reason}: {hint}" if hint else reason)
        self.reason, self.hint = reason, hint


# -- what an observer sees besides the effects carried out ---------------------------------------------
@attrs.frozen
class Connected:
    """The Socket.IO connection is up (``identify`` follows)."""


@attrs.frozen
class Disconnected:
    why: str


@attrs.frozen
class BotClosed:
    """``bot.close()`` returned: the Gateway got a close frame (discord.py 2.x: code 4000), sessions are closed."""


Observer = Callable[[Any], None]  # gets each Effect once carried out, and Connected/Disconnected/BotClosed


class SocketIOClient(Protocol):
    """What the shell uses of python-socketio's ``AsyncClient`` (the seam tests fill with an in-memory one)."""

    def on(self, event: str, handler: Callable[..., Any]) -> Any: ...

    async def connect(self, url: str, *, auth: Any, transports: list[str], wait_timeout: float) -> None: ...

    async def emit(self, event: str, data: Any = None, *, callback: Callable[..., Any] | None = None) -> None: ...

    async def disconnect(self) -> None: ...


ClientFactory = Callable[[], contextlib.AbstractAsyncContextManager[SocketIOClient]]


@contextlib.asynccontextmanager
async def socketio_client() -> AsyncIterator[SocketIOClient]:
    """A python-socketio ``AsyncClient`` on an aiohttp session that is closed whatever happens."""
    import aiohttp
    import socketio

    async with aiohttp.ClientSession() as http:
        client = socketio.AsyncClient(reconnection=False, http_session=http)
        try:
            yield client
        finally:
            await client.disconnect()  # no-op when it never connected; ends engine.io's tasks otherwise


def attach(
    bot: Any,
    *,
    version: str,
    vital_cogs: Iterable[str] | None = None,
    get_cache: CacheGetter | None = None,
    set_cache: CacheSetter | None = None,
    cache: CacheMap | None = None,
    url: str | None = None,
    secret: str | None = None,
    generation: int | None = None,
    observer: Observer | None = None,
    drain_timeout: float = 5.0,
) -> Attachment:
    """Wire ``bot`` to the Urban Robot supervisor and gate every entry point by the lease; start it with ``run()``.

    ``url``, ``secret`` and ``generation`` default to ``URBAN_ROBOT_URL``, ``URBAN_ROBOT_SECRET``
    and ``URBAN_ROBOT_GENERATION``, which the supervisor gives every child it spawns.
    ``get_cache()`` returns the bot's cache (any JSON value, bytes allowed) for ``cache_sync``, sent whole;
    ``set_cache(cache)`` receives the caches the supervisor pushes. Either may be a coroutine. Or
    ``cache=CacheMap()``: a mapping whose changed keys alone are synced (``await attachment.sync_cache()``)
    and which the supervisor's pushes update in place (``set_cache``, if given, then gets the map).
    ``observer(step)`` (optional) sees each step the shell carries out, for status pages and tests.
    ``vital_cogs`` defaults to ``("modules.utilities",)`` for a bot with extensions (``commands.Bot``) and to
    none for a ``discord.Client``, which has none.
    With ``URBAN_ROBOT_DISCORD_URL`` set, discord.py is pointed at that (fake) Discord first.

    A configuration error (no ``URBAN_ROBOT_URL``: the bot was started by hand) does not raise here: it is
    kept, ``run()`` raises it and ``run_forever()`` says it in one line and exits with status 2.
    """
    if os.environ.get("URBAN_ROBOT_DISCORD_URL"):
        from ..testing.fake_discord import configure_from_environment  # test code, imported only when asked

        configure_from_environment()
    problem: ConfigError | None = None
    try:
        endpoint = Endpoint.resolve(url, secret, generation)
    except ConfigError as exc:
        endpoint, problem = _UNCONFIGURED, exc
    if vital_cogs is None:
        vital_cogs = ("modules.utilities",) if hasattr(bot, "load_extension") else ()
    return Attachment(
        bot,
        endpoint,
        problem=problem,
        version=version,
        vital_cogs=tuple(vital_cogs),
        get_cache=get_cache,
        set_cache=set_cache,
        cache=cache,
        observer=observer,
        drain_timeout=drain_timeout,
    )


class Attachment:
    """One bot's link to the supervisor. Made by :func:`attach`; the constructor's extra seams are for tests."""

    def __init__(
        self,
        bot: Any,
        endpoint: Endpoint,
        *,
        version: str,
        vital_cogs: tuple[str, ...] = ("modules.utilities",),
        get_cache: CacheGetter | None = None,
        set_cache: CacheSetter | None = None,
        cache: CacheMap | None = None,
        observer: Observer | None = None,
        drain_timeout: float = 5.0,
        timeouts: Timeouts | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        client: ClientFactory = socketio_client,
        problem: WorkerError | None = None,
    ) -> None:
        self.bot, self.endpoint, self.vital_cogs = bot, endpoint, vital_cogs
        self.get_cache, self.set_cache, self.observer = get_cache, set_cache, observer
        self.drain_timeout = drain_timeout
        self.timeouts = timeouts or Timeouts()
        identity = Identify(version, os.getpid(), endpoint.generation)
        self.protocol = WorkerProtocol(identity, self.timeouts, backoff or Backoff(), rng or random.Random())
        if cache is not None:
            self.protocol.cache, self.protocol.mapped = cache, True
        self.in_flight = InFlight()
        self._client = client
        self._processing = False  # StartProcessing carried out, StopProcessing not yet
        self._drain_until = -math.inf  # the last StopProcessing's drain ends then (never past the lease)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._group: asyncio.TaskGroup | None = None
        self._sio: SocketIOClient | None = None
        self._lost = asyncio.Event()
        self._why = ""
        self._finished = asyncio.Event()
        self._deadline_moved = asyncio.Event()
        self._wire: asyncio.Queue[list[Effect]] = asyncio.Queue()
        self._user: asyncio.Queue[list[Effect]] = asyncio.Queue()
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._reconnect = 0.0
        self._error: WorkerError | None = None
        self._stopping: str | None = None
        self._bot_closed = False
        self._shards_down: set[int] = set()
        self._edge = asyncio.Event()  # set (and replaced) at each start and stop of processing
        self._slots: dict[int, asyncio.Future[str | None]] = {}  # shard → its slot: None granted, or why refused
        lifecycle = {event: getattr(self, f"_on_{event}") for event in _LIFECYCLE}
        self.problem = problem  # a reason this attachment cannot run: run() raises it, run_forever() says it
        if problem is None:
            try:
                self.gates: Gates | None = install(bot, self, lifecycle)
                gate_identify(bot, lambda: self.protocol.shards is not None, self._identify_slot_or_fail)
            except WorkerError as exc:
                self.gates, self.problem = None, exc
        else:
            self.gates = None

    def __repr__(self) -> str:
        return f"<Attachment {self.version} {self.endpoint.url} processing={self.processing}>"

    # -- what the bot looks at -------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.protocol.identity.version

    @property
    def epoch(self) -> int | None:
        grant = self.protocol.lease.grant
        return grant.epoch if grant is not None else None

    @property
    def lease_ends(self) -> float:
        """When this worker's view of its lease ends, on the event loop's clock (-inf: no renewal)."""
        return self.protocol.lease.until

    @property
    def processing(self) -> bool:
        """May the bot act for users right now (a renewed lease that has not run out)?"""
        return self._processing and self._loop is not None and self.protocol.processing(self._loop.time())

    @property
    def acting(self) -> bool:
        """Processing, or draining the work in flight within the lease: may the bot write to Discord now?"""
        return self.processing or (self._loop is not None and self._loop.time() < self._drain_until)

    async def until_processing(self) -> None:
        """Return once this worker processes (at once if it does)."""
        while not self.processing:
            await self._edge.wait()

    def health_report(self) -> dict[str, Any]:
        """``{OK, percent, cogs}`` (§9): every loaded extension, and every vital cog, loaded or not."""
        cogs = {name: True for name in getattr(self.bot, "extensions", {}) or {}}
        for name in self.vital_cogs:
            cogs[name] = name in cogs
        percent = 100.0 * sum(cogs.values()) / len(cogs) if cogs else 100.0
        return {"OK": all(cogs.values()), "percent": percent, "cogs": cogs}

    # -- running ---------------------------------------------------------------------------------------
    def run_forever(self) -> None:
        """Run until shut down; SIGTERM and SIGINT shut down cleanly. A failure exits with status 1; an attachment
        that cannot run (not started by the supervisor, a discord.py it cannot gate) says why in one line and
        exits with status 2."""
        if self.problem is not None:
            hint = f" — {START_HINT}" if isinstance(self.problem, ConfigError) else ""
            print(f"urban_robot: cannot attach the bot: {self.problem}{hint}", file=sys.stderr)
            raise SystemExit(2)
        try:
            asyncio.run(self._run_with_signals())
        except WorkerError as exc:
            log.error("%s", exc)
            raise SystemExit(1) from None

    async def _run_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig.name)
        try:
            await self.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def run(self) -> None:
        """Connect (and reconnect), log the bot in, serve the supervisor until shut down.

        Returns once shut down (``cmd shutdown``, :meth:`shutdown`, a signal, or the bot closed by itself),
        after ``bot.close()``. Raises :class:`AuthenticationFailed` if the supervisor refuses the secret and
        :class:`DiscordRefused` if Discord refuses the bot for good, and what kept :func:`attach` from wiring
        the bot (:class:`ConfigError`, :class:`IncompatibleDiscordPy`) before doing anything.
        """
        if self.problem is not None:
            raise self.problem
        self._loop = asyncio.get_running_loop()
        current_lease.set(self)  # tasks.Loop iterations started from here on are gated by this attachment
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._timer())
                group.create_task(self._execute(self._wire))
                group.create_task(self._execute(self._user))
                await self._connect_forever()
                await self._finished.wait()  # the Finish effect carried out, after everything before it
                await self._close_bot()  # a close frame to the Gateway; bot.connect() returns
                raise _Done
        except* _Done:
            pass
        finally:
            self._group = None
            self._processing = False
            await self.in_flight.settle(timeout=self.timeouts.close)
            await self._close_bot()
        if self._error is not None:
            raise self._error

    def stop(self, why: str = "stopped") -> None:
        """Begin a shutdown without waiting for it (what a signal does); a second call only logs."""
        if self._stopping is not None:
            log.warning("%s while stopping (%s): still stopping cleanly", why, self._stopping)
            return
        self._stopping = why
        log.info("shutting down: %s", why)
        self._feed(self.protocol.shutdown(why, self._now()))

    async def shutdown(self, reason: str = "shutting down") -> None:
        """Stop processing, hand the cache over if we held the lease, say ``shutdown``; ``run`` then closes the bot."""
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.release(task)  # a command that shuts the bot down is not waited for by its own drain
        self.stop(reason)
        if self._group is not None:
            await self._finished.wait()

    async def sync_cache(self) -> bool:
        """Send the cache to the supervisor after a change, only while processing: from ``get_cache``, whole,
        or with ``cache=CacheMap()`` its changed keys. True once the supervisor kept it."""
        if not self.processing:
            return False
        if self.protocol.mapped:
            effects = self.protocol.sync_cache(None, self._now())
        elif self.get_cache is not None:
            cache = await _call_user(self.get_cache, what="get_cache")
            effects = self.protocol.sync_cache(cache, self._now())
        else:
            return False
        answer = await self._request(list(effects))
        return isinstance(answer, dict) and answer.get("accepted") is True

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shard ids this worker runs, from ``hello`` (None: unsharded, or before the first hello)."""
        return self.protocol.shards

    @property
    def shard_count(self) -> int | None:
        return self.protocol.shard_count

    async def identify_slot(self, shard_id: int) -> None:
        """Wait for the supervisor's slot to IDENTIFY ``shard_id`` (§18.3); the bot's ``before_identify_hook``
        does it for every IDENTIFY of a sharded bot. Returns with a grant still fresh (an older one is thrown
        away and asked for again); raises :class:`ShardError` if the supervisor refuses it."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                granted = self._slots[shard_id] = loop.create_future()
                self._feed(self.protocol.ask_identify(shard_id, self._now()))
                refused = await granted
                if refused is not None:
                    raise ShardError(f"the supervisor refused an identify slot for shard {shard_id}: {refused}")
                if self.protocol.use_identify_grant(shard_id, self._now()):
                    return
                log.warning("the identify slot for shard %d came too long ago to use: asking again", shard_id)
        finally:
            self._slots.pop(shard_id, None)
            self.protocol.withdraw_identify(shard_id)  # nothing once used; a wait given up (cancelled) ends here

    async def _identify_slot_or_fail(self, shard_id: int) -> None:
        try:
            await self.identify_slot(shard_id)
        except ShardError as exc:  # the supervisor and this worker disagree on its shards: end, be replaced
            if self._stopping is None and self._group is not None:
                self._group.create_task(self._discord_failed("identify slot refused", str(exc)))
            raise

    @property
    def cache(self) -> CacheMap:
        """The bot's cache map (with ``cache=CacheMap()``; for a plain cache, the last values pushed)."""
        return self.protocol.cache

    # -- the connection --------------------------------------------------------------------------------
    async def _connect_forever(self) -> None:
        while not self.protocol.finished:
            why = "connection closed"
            try:
                why = await self._session()
            except AuthenticationFailed as exc:
                self._error = exc
                self._feed(self.protocol.refused(self._now(), str(exc)))
                return
            except ConnectionLost as exc:
                why = str(exc)
            self._settle_all()
            self._observe(Disconnected(why))
            self._feed(self.protocol.disconnected(self._now(), why))
            if not self.protocol.finished:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._reconnect):
                        await self._finished.wait()

    async def _session(self) -> str:
        """One connection, from connect to its loss; returns why it ended."""
        import socketio

        async with self._client() as sio:
            self._lost, self._why, refusals = asyncio.Event(), "connection closed", list[Any]()
            sio.on("connect_error", lambda data=None: refusals.append(data))
            sio.on("disconnect", lambda *_: self._lost.set())
            for event in ("hello", "cmd", "cache_sync"):
                sio.on(event, self._push_handler(event))
            try:
                async with asyncio.timeout(self.timeouts.connect + self.timeouts.handshake):
                    url, secret = self.endpoint.url, self.endpoint.secret
                    wait = self.timeouts.handshake
                    await sio.connect(url, auth={"secret": secret}, transports=["websocket"], wait_timeout=wait)
            except socketio.exceptions.ConnectionError as exc:
                if any(isinstance(r, dict) and r.get("message") == "authentication failed" for r in refusals):
                    raise AuthenticationFailed("the supervisor refused this worker's secret") from None
                raise ConnectionLost(f"cannot connect: {exc}") from None
            except TimeoutError:
                raise ConnectionLost("connecting timed out") from None
            self._sio = sio
            try:
                self._observe(Connected())
                self._feed(self.protocol.connected(self._now()))
                await self._lost.wait()
            finally:
                self._sio = None
            return self._why

    def _push_handler(self, event: str) -> Callable[..., None]:
        def handler(data: Any = None) -> None:  # plain, not async: python-socketio runs these in arrival order
            self._feed(self.protocol.pushed(event, data, self._now()))

        return handler

    async def _timer(self) -> None:
        while True:
            self._deadline_moved.clear()
            try:
                async with asyncio.timeout_at(self.protocol.next_deadline()):
                    await self._deadline_moved.wait()
            except TimeoutError:
                self._feed(self.protocol.timer(self._now()))

    # -- carrying out the protocol's effects -----------------------------------------------------------
    def _feed(self, effects: list[Effect]) -> None:
        """Queue one input's effects: on the wire executor if they only write, else all on the user executor."""
        for effect in effects:
            if isinstance(effect, Reconnect):
                self._reconnect = effect.delay
            elif isinstance(effect, StopProcessing):  # decided now: the HTTP gate lets the drain write until then
                self._drain_until = effect.drain_until(self._now(), self.drain_timeout)
            elif isinstance(effect, SlotGranted | SlotRefused):  # at once: a grant is good for a moment only
                waiter = self._slots.get(effect.shard_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(effect.reason if isinstance(effect, SlotRefused) else None)
        if effects:
            (self._wire if all(isinstance(e, _WIRE) for e in effects) else self._user).put_nowait(effects)
            self._deadline_moved.set()

    async def _execute(self, queue: asyncio.Queue[list[Effect]]) -> None:
        while True:
            for effect in await queue.get():
                await self._carry_out(effect)
                self._observe(effect)

    async def _carry_out(self, effect: Effect) -> None:
        if isinstance(effect, Send):
            await self._write(effect)
        elif isinstance(effect, Log):
            log.log(effect.level, "%s", effect.message)
        elif isinstance(effect, StartProcessing):
            self._processing = True
            self._flip()
            assert self.gates is not None  # run() does not start without them
            self.gates.started()  # the first time: on_ready's listeners run now
        elif isinstance(effect, StopProcessing):
            self._processing = False  # no new work from here; then the work in flight ends, within the lease
            self._flip()
            await self.in_flight.settle(until=self._drain_until, timeout=self.timeouts.close)
            self._drain_until = -math.inf  # drained: nothing more is written, the acknowledgement may follow
            log.info("stopped processing: %s", effect.reason)
        elif isinstance(effect, ApplyCache):
            await _call_user(self.set_cache, effect.cache, what="set_cache")
        elif isinstance(effect, CollectCache):
            cache = await _call_user(self.get_cache, what="get_cache")
            self._feed(self.protocol.cache_collected(cache, self._now()))
        elif isinstance(effect, RunHealthCheck):
            report = self.health_report()
            log.info("health report: %r", report)
            self._feed(self.protocol.health_collected(HealthReport(**report), self._now()))
        elif isinstance(effect, DropConnection):
            self._drop(effect.reason)
        elif isinstance(effect, Login):
            assert self._group is not None
            problem = None
            if effect.shards is not None and effect.shard_count is not None:
                problem = place_on_shards(self.bot, effect.shards, effect.shard_count)
            if problem is not None:
                self._group.create_task(self._discord_failed(problem, ONE_SHARD_HINT))
            else:
                self._group.create_task(self._discord(effect.token))
        elif isinstance(effect, Finish):
            if effect.error is not None and self._error is None:
                self._error = WorkerError(effect.error)
            self._finished.set()
            self._drop("the worker has finished", expected=True)
        # Reconnect: read by _feed

    async def _write(self, send: Send) -> None:
        request, sio = send.request, self._sio
        if sio is None or request.session != self.protocol.session:
            self._settle(request.id, None)
            return  # its connection is gone; the protocol forgot it already

        def on_ack(*args: Any) -> None:
            answer = args[0] if args else None
            self._feed(self.protocol.answered(request.id, answer, self._now()))
            self._settle(request.id, answer)

        try:
            await sio.emit(request.message.event, request.message.payload(), callback=on_ack)
        except Exception as exc:  # python-socketio: not connected, or the transport broke
            self._drop(f"writing {request.message.event!r} failed: {exc}")
            self._settle(request.id, None)

    async def _request(self, effects: list[Effect]) -> Any:
        """Feed ``effects`` and wait for the answer to the (last) message they send; None if it is lost."""
        sends = [e for e in effects if isinstance(e, Send)]
        if not sends:
            self._feed(effects)
            return None
        waiter = self._waiters[sends[-1].request.id] = asyncio.get_running_loop().create_future()
        self._feed(effects)
        return await waiter

    def _drop(self, why: str, *, expected: bool = False) -> None:
        if not self._lost.is_set():
            log.log(logging.INFO if expected else logging.WARNING, "dropping the connection: %s", why)
            self._why = why
            self._lost.set()

    def _settle(self, request_id: int, answer: Any) -> None:
        waiter = self._waiters.pop(request_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _settle_all(self) -> None:
        for request_id in list(self._waiters):
            self._settle(request_id, None)

    # -- Discord -------------------------------------------------------------------------------------------
    async def _discord(self, token: str) -> None:
        """Log in (transient errors retried with the protocol's back-off), then run the Gateway until closed."""
        attempt = 0
        while True:
            try:
                await self.bot.login(token)
                break
            except Exception as exc:
                verdict = judge(exc, getattr(self.bot, "intents", None))
                if not verdict.transient:
                    return await self._discord_failed(verdict.reason, verdict.hint)
                await self._reset_http()
                delay = self.protocol.backoff.delay(attempt, self.protocol.rng)
                attempt += 1
                log.warning("logging in to Discord failed (%s); retrying in %.2f s", verdict.reason, delay)
                await asyncio.sleep(delay)
        try:
            await self.bot.connect(reconnect=True)  # discord.py resumes and reconnects the Gateway itself
        except Exception as exc:  # what connect lets out is permanent: it retried the rest
            verdict = judge(exc, getattr(self.bot, "intents", None))
            return await self._discord_failed(verdict.reason, verdict.hint)
        if self._stopping is None and not self.protocol.finished:
            self.stop("the bot closed")  # by itself (bot.close() in its own code): no crash, but replaced

    async def _reset_http(self) -> None:
        """Close the session a failed ``static_login`` opened; closing it closed its connector: let login make one."""
        import discord

        await self.bot.http.close()
        self.bot.http.connector = discord.utils.MISSING

    async def _discord_failed(self, reason: str, hint: str) -> None:
        log.error("%s", f"{reason}: {hint}" if hint else reason)
        self._error = DiscordRefused(reason, hint)
        self._stopping = reason
        self._feed(self.protocol.fail(reason, hint, self._now()))
        await self._close_bot()

    # discord.py's Gateway events, seen by the attachment on every worker (called from the bot's dispatch)
    def _on_ready(self) -> None:
        self._feed(self.protocol.discord_is_ready(self._now()))
        self._feed(self.protocol.gateway_changed(True, self._now()))

    def _on_connect(self) -> None:
        if not self._sharded:
            self._feed(self.protocol.gateway_changed(True, self._now()))

    def _on_resumed(self) -> None:
        self._on_connect()

    def _on_disconnect(self) -> None:
        if not self._sharded:
            self._feed(self.protocol.gateway_changed(False, self._now()))

    def _on_shard_ready(self, shard_id: int) -> None:
        self._on_shard_connect(shard_id)

    def _on_shard_connect(self, shard_id: int) -> None:
        self._shards_down.discard(shard_id)
        self._feed(self.protocol.gateway_changed(not self._shards_down, self._now()))

    def _on_shard_resumed(self, shard_id: int) -> None:
        self._on_shard_connect(shard_id)

    def _on_shard_disconnect(self, shard_id: int) -> None:
        self._shards_down.add(shard_id)
        self._feed(self.protocol.gateway_changed(False, self._now()))

    @property
    def _sharded(self) -> bool:
        import discord

        return isinstance(self.bot, discord.AutoShardedClient)

    async def _close_bot(self) -> None:
        """``bot.close()`` once, bounded: the Gateway gets a close frame (discord.py 2.x sends 4000, which Discord
        treats as resumable, not 1000), aiohttp sessions are closed."""
        if self._bot_closed:
            return
        self._bot_closed = True
        try:
            async with asyncio.timeout(10):
                await self.bot.close()
        except Exception as exc:
            log.error("closing the bot failed: %s", type(exc).__name__)
        self._observe(BotClosed())

    # -- small things ----------------------------------------------------------------------------------------
    def _flip(self) -> None:
        self._edge.set()
        self._edge = asyncio.Event()

    def _now(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    def _observe(self, step: Any) -> None:
        if self.observer is not None:
            try:
                self.observer(step)
            except Exception:
                log.exception("the observer raised")


class _Done(Exception):
    """Internal: leave ``run``'s task group (cancelling its background tasks)."""


async def _call_user(func: Callable[..., Any] | None, *args: Any, what: str) -> Any:
    """Call a user callback (sync or async); its exception is logged, never raised into the shell."""
    if func is None:
        return None
    try:
        result = func(*args)
        return await result if inspect.isawaitable(result) else result
    except Exception:
        log.exception("%s raised", what)
        return None
