"""Attach an asyncio Discord bot (discord.py's ``commands.Bot`` API) to Urban Robot in one call.

    bot = commands.Bot(command_prefix="!", intents=intents)
    attachment = attach(bot, version="1.2.0", get_cache=..., set_cache=...)
    attachment.run_forever()  # or: await attachment.run()

The attachment speaks Urban Robot protocol v1 (docs/protocol.md) over python-socketio's
``AsyncClient``: ``identify`` → ``hello`` → logs the bot in with the token from ``hello`` →
``ready`` on Discord's READY → heartbeats, health checks, cache hand-overs, coma and shutdown.

**The bot processes commands only while it holds a renewed lease.** ``bot.process_commands`` is
wrapped so that it does nothing otherwise, a global check (``bot.add_check``) refuses commands, and
``bot.tree.interaction_check`` refuses application commands. A bot that acts on messages in its own
``on_message`` without ``process_commands`` must test :attr:`Attachment.processing` itself.

The lease follows §8.1: it counts from when the heartbeat was *sent*, a timer stops processing
when it runs out (in-flight ``process_commands`` calls are cancelled), ``lease: 0`` drops the grant
at once, and ``coma``/``shutdown`` stop processing before they are acknowledged.

discord.py is never imported here: the bot is duck-typed (``extensions``, ``add_listener``,
``process_commands``, ``add_check``, ``tree``, ``start``/``login``+``connect``, ``close``).
Neither the secret nor the Discord token is ever logged or shown in a ``repr``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

__all__ = ["AttachError", "Attachment", "attach"]

log = logging.getLogger("urban_robot.integrations.discord")
STEPS_KEPT = 500

CacheGetter = Callable[[], Any]  # returns the cache, or an awaitable of it
CacheSetter = Callable[[Any], Any]  # may return an awaitable


class AttachError(RuntimeError):
    """A configuration error: no supervisor URL or secret, or the supervisor refused the secret."""


class _NoAnswer(Exception):
    """An event got no ack (the connection went, or the time ran out)."""


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def attach(
    bot: Any,
    *,
    version: str,
    vital_cogs: Iterable[str] = ("modules.utilities",),
    get_cache: CacheGetter | None = None,
    set_cache: CacheSetter | None = None,
    url: str | None = None,
    secret: str | None = None,
    generation: int | None = None,
) -> Attachment:
    """Wire ``bot`` to the Urban Robot supervisor and gate its commands; start it with ``run()``.

    ``url``, ``secret`` and ``generation`` default to ``URBAN_ROBOT_URL``, ``URBAN_ROBOT_SECRET``
    and ``URBAN_ROBOT_GENERATION``, which the supervisor gives every child it spawns.
    ``get_cache()`` returns the bot's cache (any JSON value, bytes allowed) for ``cache_sync``;
    ``set_cache(cache)`` receives the caches the supervisor pushes. Either may be a coroutine.
    """
    url = url if url is not None else os.environ.get("URBAN_ROBOT_URL")
    secret = secret if secret is not None else os.environ.get("URBAN_ROBOT_SECRET")
    if generation is None and os.environ.get("URBAN_ROBOT_GENERATION"):
        try:
            generation = int(os.environ["URBAN_ROBOT_GENERATION"])
        except ValueError:
            raise AttachError("URBAN_ROBOT_GENERATION must be an integer") from None
    if not url:
        raise AttachError("no supervisor URL: pass url= or run under Urban Robot (URBAN_ROBOT_URL)")
    if not secret:
        raise AttachError("no worker secret: pass secret= or run under Urban Robot (URBAN_ROBOT_SECRET)")
    attachment = Attachment(
        bot,
        version=version,
        vital_cogs=tuple(vital_cogs),
        get_cache=get_cache,
        set_cache=set_cache,
        url=url,
        secret=secret,
        generation=generation,
    )
    attachment.install()
    return attachment


class Attachment:
    """One bot's link to the supervisor. Made by :func:`attach`."""

    #: how long ``coma``/``shutdown`` wait for commands in flight before cancelling them
    drain_timeout: float = 5.0
    #: how long to wait for ``hello`` and for acks of events other than heartbeats
    answer_timeout: float = 30.0

    def __init__(
        self,
        bot: Any,
        *,
        version: str,
        vital_cogs: tuple[str, ...],
        get_cache: CacheGetter | None,
        set_cache: CacheSetter | None,
        url: str,
        secret: str,
        generation: int | None,
    ) -> None:
        self.bot = bot
        self.version = version
        self.vital_cogs = vital_cogs
        self.get_cache = get_cache
        self.set_cache = set_cache
        self.url = url.rstrip("/")
        self._secret = secret  # never logged, never in repr
        self.generation = generation
        self.interval = 30.0
        self.epoch: int | None = None  # the grant held (not yet permission: see ``processing``)
        self._lease_token: str | None = None  # never logged
        self._until = -math.inf  # end of our lease view, on the event loop's (monotonic) clock
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._discord_ready = False
        self._identified = False
        self._shut_down = False
        self._sio: Any = None
        self._inbox: asyncio.Queue[tuple[str, Any]] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._send_lock: asyncio.Lock | None = None
        self._stop_session: asyncio.Event | None = None
        self._wake = asyncio.Event()
        self._bot_task: asyncio.Task[None] | None = None
        self._bot_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._installed = False
        self._closing = False
        #: the latest steps, in order: (monotonic time, step, data). Tests and status pages read them.
        self.steps: collections.deque[tuple[float, str, Any]] = collections.deque(maxlen=STEPS_KEPT)
        self._waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<Attachment version={self.version!r} epoch={self.epoch} processing={self.processing}>"

    # -- state -----------------------------------------------------------------------------------
    @property
    def lease_ends(self) -> float:
        """When our view of the lease ends (the event loop's monotonic clock); -inf without a renewal."""
        return self._until if self.epoch is not None else -math.inf

    @property
    def processing(self) -> bool:
        """True while the bot may act on user commands: a grant, renewed, and its lease not run out."""
        return self.epoch is not None and self._now() < self._until

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _note(self, step: str, data: Any = None) -> None:
        self.steps.append((self._now(), step, data))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(self, step: str) -> tuple[float, Any]:
        """The first step called ``step`` (``"processing"``, ``"cmd:coma"``, ``"stopped"``...), waiting for it."""
        await self.wait_until(lambda: any(name == step for _, name, _ in self.steps))
        return next((at, data) for at, name, data in self.steps if name == step)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` is true, testing it again after each step."""
        while not predicate():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    # -- the gates -------------------------------------------------------------------------------
    def install(self) -> None:
        """Gate the bot's commands and listen for READY (``attach`` does this)."""
        if self._installed:
            return
        self._installed = True
        bot = self.bot
        original = bot.process_commands

        async def process_commands(message: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.processing:
                return None
            task = asyncio.current_task()
            if task is not None:
                self._inflight.add(task)
            try:
                return await original(message, *args, **kwargs)
            finally:
                if task is not None:
                    self._inflight.discard(task)

        bot.process_commands = process_commands

        add_check = getattr(bot, "add_check", None)
        if add_check is not None:

            def urban_robot_lease(ctx: Any) -> bool:
                return self.processing

            add_check(urban_robot_lease)

        tree = getattr(bot, "tree", None)
        if tree is not None and hasattr(tree, "interaction_check"):
            tree_check = tree.interaction_check

            async def interaction_check(interaction: Any) -> bool:
                if not self.processing:
                    return False
                return bool(await _maybe_await(tree_check(interaction)))

            tree.interaction_check = interaction_check

        bot.add_listener(self._on_discord_ready, "on_ready")

    async def _on_discord_ready(self) -> None:
        self._discord_ready = True
        self._note("discord_ready")
        if self._identified:
            await self._send_ready()

    async def _send_ready(self) -> None:
        try:
            reply = await self._call("ready", {})
        except _NoAnswer:
            return
        self._note("ready_sent", reply)
        self._check_error("ready", reply)

    # -- running ---------------------------------------------------------------------------------
    def run_forever(self) -> None:
        """``asyncio.run(self.run())``, for a bot's ``main``."""
        asyncio.run(self.run())

    async def run(self) -> None:
        """Connect (and reconnect, with backoff), log the bot in, serve the supervisor until shut down.

        Returns once the supervisor shut the bot down, :meth:`shutdown` was called, or the bot
        closed by itself. Raises :class:`AttachError` if the supervisor refuses the secret, and
        re-raises an exception the bot's own ``start`` raised.
        """
        try:
            import socketio  # noqa: F401
        except ImportError as exc:  # pragma: no cover - an installation problem
            hint = 'pip install "python-socketio[asyncio-client]"'
            raise AttachError(f"Urban Robot needs python-socketio: {hint}") from exc
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        delay = 0.1
        try:
            while not self._shut_down and not self._bot_finished():
                try:
                    await self._session()
                    delay = 0.1
                except AttachError:
                    raise
                except Exception as exc:  # a refused or broken connection: come back with backoff
                    log.warning("urban robot connection failed: %s", type(exc).__name__)
                if self._shut_down or self._bot_finished():
                    break
                log.info("reconnecting to urban robot in %.1f s", delay)
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)  # shutdown() cuts the wait short
                except TimeoutError:
                    pass
                delay = min(10.0, delay * 2)
        finally:
            await self._stop_processing("stopped running", drain=False)
            await self._close_bot()
            self._note("done")
        if self._bot_error is not None:
            raise self._bot_error

    def _bot_finished(self) -> bool:
        return self._bot_task is not None and self._bot_task.done()

    async def _session(self) -> None:
        import socketio

        sio = socketio.AsyncClient(reconnection=False)
        refused: list[Any] = []
        lost = asyncio.Event()
        stop = self._stop_session = asyncio.Event()
        inbox = self._inbox = asyncio.Queue()
        hello: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_hello(data: Any = None) -> None:
            if not hello.done():
                hello.set_result(data)

        # Plain (not async) handlers: they run in arrival order, and queue work for _serve.
        sio.on("connect_error", lambda data=None: refused.append(data))
        sio.on("disconnect", lambda *args: lost.set())
        sio.on("hello", on_hello)
        sio.on("cmd", lambda data=None: inbox.put_nowait(("cmd", data)))
        sio.on("cache_sync", lambda data=None: inbox.put_nowait(("cache_sync", data)))
        try:
            await sio.connect(
                self.url, auth={"secret": self._secret}, transports=["websocket"], wait_timeout=self.answer_timeout
            )
        except socketio.exceptions.ConnectionError:
            if any(isinstance(r, dict) and r.get("message") == "authentication failed" for r in refused):
                self._note("refused")
                raise AttachError("the supervisor refused this worker's secret (authentication failed)") from None
            raise
        self._sio = sio
        self._note("connected")
        try:
            await self._identify(sio, on_hello, hello)
            self._spawn(self._heartbeats())
            self._spawn(self._serve(inbox))
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(stop.wait())]
            if self._bot_task is not None:
                waits.append(asyncio.ensure_future(asyncio.shield(self._bot_task)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if self._bot_finished() and not self._shut_down and not lost.is_set():
                await self.shutdown("the bot closed")  # not to be replaced
        finally:
            self._identified = False
            self._sio = None
            for task in list(self._tasks):
                if task is not asyncio.current_task():
                    task.cancel()
            for future in list(self._pending):
                if not future.done():
                    future.set_exception(_NoAnswer("disconnected"))
            self._tasks.clear()
            self._pending.clear()
            try:
                await sio.disconnect()
            except Exception:  # pragma: no cover - already gone
                pass
            self._note("disconnected")

    async def _identify(self, sio: Any, on_hello: Callable[[Any], None], hello: asyncio.Future[Any]) -> None:
        identity = {
            "version": self.version,
            "pid": os.getpid(),
            "generation": self.generation,
            "epoch": self.epoch,
            "lease_token": self._lease_token,
        }
        assert self._send_lock is not None
        async with self._send_lock:
            await sio.emit("identify", identity, callback=on_hello)
        data = await asyncio.wait_for(hello, self.answer_timeout)
        if not isinstance(data, dict) or "error" in data or not isinstance(data.get("token"), str):
            error = data.get("error") if isinstance(data, dict) else data
            raise RuntimeError(f"identify was refused: {error!r}")
        token = data["token"]
        self.interval = float(data.get("interval", self.interval))
        self._identified = True
        self._note("hello", {k: v for k, v in data.items() if k != "token"})
        log.info(
            "urban robot says hello: protocol %s, interval %s s, lease %s s",
            data.get("protocol"),
            data.get("interval"),
            data.get("lease"),
        )
        if data.get("process_commands"):
            self.epoch = data.get("epoch")  # our claim was adopted: renew it now
            self._spawn(self._heartbeat())
        elif self.epoch is not None:
            self._fence("our lease claim was not adopted")
        if self._bot_task is None:
            self._bot_task = asyncio.create_task(self._run_bot(token))
        elif self._discord_ready:
            self._spawn(self._send_ready())  # again, after each reconnection

    async def _run_bot(self, token: str) -> None:
        """Log the bot in with the token from ``hello`` (``start``, or ``login`` + ``connect``)."""
        self._note("bot_starting")
        try:
            start = getattr(self.bot, "start", None)
            if start is not None:
                await start(token)
            else:
                await self.bot.login(token)
                await self.bot.connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._bot_error = exc
            log.error("the bot stopped with %s", type(exc).__name__)
        finally:
            self._note("bot_stopped")

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- talking to the supervisor ---------------------------------------------------------------
    async def _call(self, event: str, data: Any, timeout: float | None = None) -> Any:
        """Emit with an ack and return the answer; _NoAnswer if it does not come."""
        sio = self._sio
        if sio is None or self._send_lock is None:
            raise _NoAnswer("not connected")
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_ack(*args: Any) -> None:
            if not answer.done():
                answer.set_result(args[0] if args else None)

        self._pending.add(answer)
        try:
            async with self._send_lock:
                await sio.emit(event, data, callback=on_ack)
            return await asyncio.wait_for(answer, self.answer_timeout if timeout is None else timeout)
        except _NoAnswer:
            raise
        except Exception as exc:  # disconnected, timed out
            raise _NoAnswer(event) from exc
        finally:
            self._pending.discard(answer)

    def _check_error(self, event: str, reply: Any) -> None:
        if isinstance(reply, dict) and "error" in reply:
            log.warning("urban robot answered %s with an error: %s", event, reply["error"])

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._spawn(self._heartbeat())

    async def _heartbeat(self) -> None:
        sent_at = self._now()  # the lease counts from here (§8.1)
        epoch = self.epoch
        try:
            reply = await self._call("heartbeat", {"epoch": epoch}, timeout=max(self.interval, 1.0))
        except _NoAnswer:
            return  # not a renewal: the timer stops us when our view ends
        self._check_error("heartbeat", reply)
        if epoch is None or epoch != self.epoch or not isinstance(reply, dict):
            return
        lease = reply.get("lease")
        if reply.get("epoch") == epoch and isinstance(lease, int | float) and lease > 0:
            self._extend(sent_at + lease)
            self._note("renewed", sent_at + lease)
        elif lease == 0:
            self._fence("the supervisor refused our lease")

    def _extend(self, until: float) -> None:
        if until <= self._now():
            return  # a renewal that came too late is useless
        was = self.processing
        self._until = max(self._until, until)
        self._arm_timer()
        if not was:
            log.info("processing commands (epoch %s)", self.epoch)
            self._note("processing", self.epoch)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_at(self._until, self._lease_ran_out)

    def _lease_ran_out(self) -> None:
        self._timer = None
        if self.processing:  # the loop woke a hair early
            self._arm_timer()
            return
        log.warning("our lease ran out without a renewal: stopped processing commands")
        self._note("lease_ran_out", self.epoch)
        self._cancel_inflight()

    def _fence(self, why: str) -> None:
        """Drop the grant at once (lease: 0, or a claim not adopted)."""
        was = self.processing
        self.epoch, self._lease_token, self._until = None, None, -math.inf
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._cancel_inflight()
        log.warning("%s: stopped processing commands", why)
        self._note("fenced", {"why": why, "was_processing": was})

    def _cancel_inflight(self) -> None:
        for task in list(self._inflight):
            task.cancel()

    async def _stop_processing(self, why: str, *, drain: bool = True) -> None:
        """Stop taking commands, then let the ones in flight finish (up to ``drain_timeout``)."""
        was = self.processing
        self.epoch, self._lease_token, self._until = None, None, -math.inf
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        inflight = [t for t in self._inflight if t is not asyncio.current_task()]
        if inflight and drain:
            await asyncio.wait(inflight, timeout=self.drain_timeout)
        for task in inflight:
            task.cancel()
        if was:
            log.info("stopped processing commands: %s", why)
        self._note("stopped", why)

    async def _serve(self, inbox: asyncio.Queue[tuple[str, Any]]) -> None:
        """Handle the supervisor's pushes one at a time, in the order they came."""
        while True:
            kind, data = await inbox.get()
            if kind == "cache_sync":
                cache = data.get("cache") if isinstance(data, dict) else None
                self._note("cache_received")  # not the cache itself: it may be large
                if self.set_cache is not None:
                    await _maybe_await(self.set_cache(cache))
            elif kind == "cmd" and isinstance(data, dict) and isinstance(data.get("t"), str):
                d = data.get("d")
                await self._on_cmd(data["t"], d if isinstance(d, dict) else {})

    async def _on_cmd(self, name: str, data: dict[str, Any]) -> None:
        self._note("cmd:" + name, {k: v for k, v in data.items() if k != "lease_token"})
        if name == "health_check":
            report = self.health_report()
            self._note("health_report", report)
            try:
                self._check_error("health_check", await self._call("health_check", report))
            except _NoAnswer:
                pass
        elif name == "process_commands":
            if isinstance(data.get("epoch"), int):
                self.epoch = data["epoch"]
                token = data.get("lease_token")
                self._lease_token = token if isinstance(token, str) else None
                await self._heartbeat()  # a grant is used only once renewed
        elif name in ("coma", "shutdown"):
            reason = data.get("reason") if isinstance(data.get("reason"), str) else ""
            log.info("urban robot says %s: %s", name, reason)
            if name == "shutdown":
                self._shut_down = True
            await self._stop_processing(name)  # first, before anything is acknowledged
            try:
                if data.get("cache_sync"):
                    cache = await _maybe_await(self.get_cache()) if self.get_cache is not None else None
                    self._check_error("cache_sync", await self._call("cache_sync", {"cache": cache}))
                self._check_error(name, await self._call(name, {"reason": reason}))
            except _NoAnswer:
                pass
            if name == "shutdown":
                await self._close_bot()
                if self._stop_session is not None:
                    self._stop_session.set()
        # "ok" and names we do not know: nothing to do

    # -- what the bot can call -------------------------------------------------------------------
    def health_report(self) -> dict[str, Any]:
        """``{OK, percent, cogs}`` (§9): every loaded extension, and every vital cog, loaded or not."""
        loaded = list(getattr(self.bot, "extensions", {}) or {})
        cogs = {name: True for name in loaded}
        for name in self.vital_cogs:
            cogs[name] = name in cogs
        working = sum(cogs.values())
        percent = 100.0 * working / len(cogs) if cogs else 100.0
        return {"OK": all(cogs.values()), "percent": percent, "cogs": cogs}

    async def sync_cache(self) -> bool:
        """Send the cache (from ``get_cache``) to the supervisor after a change; only while processing."""
        if not self.processing or self.get_cache is None:
            return False
        cache = await _maybe_await(self.get_cache())
        try:
            reply = await self._call("cache_sync", {"cache": cache})
        except _NoAnswer:
            return False
        self._check_error("cache_sync", reply)
        return bool(isinstance(reply, dict) and reply.get("accepted"))

    async def shutdown(self, reason: str = "shutting down") -> None:
        """Stop processing, tell the supervisor (not to be replaced), close the bot, and end ``run``."""
        self._shut_down = True
        await self._stop_processing(reason)
        try:
            self._check_error("shutdown", await self._call("shutdown", {"reason": reason}))
        except _NoAnswer:
            pass
        await self._close_bot()
        if self._stop_session is not None:
            self._stop_session.set()
        self._wake.set()

    async def _close_bot(self) -> None:
        if self._bot_task is None or self._closing:
            return
        self._closing = True
        try:
            await self.bot.close()
            self._note("bot_closed")
        except Exception as exc:
            log.error("closing the bot failed: %s", type(exc).__name__)
