"""The lease gates on discord.py's entry points: no user code with side effects runs on a worker that does not process.

Every way discord.py runs a bot's code goes through one of four doors, and each is gated here
(docs/workers.md, "What is gated"); a fifth gate, at the HTTP boundary, catches what runs anyway:

- **listeners** — ``on_*`` methods, ``bot.listen()``, ``bot.add_listener``, cog listeners, and so
  ``Bot.on_message`` → ``process_commands``: discord.py schedules every one through
  ``Client._schedule_event(coro, event_name, ...)``; the bot instance gets a gated one.
- **interactions** — application commands, autocomplete, views (persistent or not, buttons and
  selects, dynamic items) and modals: ``ConnectionState.parse_interaction_create`` hands them to the
  command tree, the view store and the modal store itself. Its entry in ``state.parsers`` (the dict
  the Gateway reader looks parsers up in) is replaced.
- **prefix commands** — ``bot.process_commands`` is gated as well, for an ``on_message`` marked
  :func:`everywhere` that calls it.
- **background tasks** — a ``discord.ext.tasks.Loop`` (``Loop.start`` wraps the loop's coroutine, its
  ``before_loop`` and its ``after_loop`` once; the gate is the attachment whose ``run()`` the loop was
  started under): ``before_loop`` — and so the first iteration — waits until the worker processes, each
  later iteration is skipped while it does not, ``after_loop`` runs only while it does.
- **writes to Discord** — the bot's ``http.request`` and the webhook adapter discord.py sends interaction
  responses and follow-ups through: a worker that is neither processing nor draining within its lease
  gets :class:`NotProcessing` for any write but the few that setting up needs (:func:`refuses`). This
  catches what the doors above cannot see: ``cog_unload``/``teardown`` at ``bot.close()``, a task of the
  bot's own, work that outlives a cancellation.

``on_ready`` is not dropped on a worker that does not process yet: READY comes before any lease can be
granted, so its listeners are kept (with their latest arguments) and run once, when this worker first
starts processing (:meth:`Gates.started`).

A standby's parsers still run (its caches stay warm); only the user code they would schedule does not.
Work admitted while processing is *in flight* (:class:`InFlight`) until it ends: when the lease ends it
is cancelled, or drained (never past the lease) before a coma or shutdown is acknowledged.

A coroutine function marked with :func:`everywhere` runs on every worker, processing or not.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import discord
from discord.ext import tasks
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

from ..protocol import ConfigError, WorkerError

log = logging.getLogger("urban_robot.integrations.discord")

_EVERYWHERE = "__urban_robot_everywhere__"
_GATED = "__urban_robot_gated__"
F = TypeVar("F")


class IncompatibleDiscordPy(WorkerError):
    """discord.py no longer has an internal the gates rely on: running ungated would break the promise."""


class NotProcessing(WorkerError, discord.ClientException):
    """A write to Discord from a worker that neither processes nor drains within its lease: refused, not sent."""


#: the listeners kept on a worker that has not processed yet, and run when it first does
DEFERRED_EVENTS = frozenset({"on_ready"})
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def refuses(method: str, path: str) -> bool:
    """Is this REST call a write a worker without the lease must not make? (``path``: discord.py's route template)

    Every write is, but what setting a bot up needs: application commands (``tree.sync()`` is
    ``PUT /applications/{application_id}/commands``) and opening a DM channel (``POST /users/@me/channels``
    sends nothing to anybody). Reads, the login (``GET /users/@me``) and the Gateway are never refused.
    """
    if method.upper() not in _WRITES:
        return False
    if path.startswith("/applications/"):
        return False
    return not (method.upper() == "POST" and path == "/users/@me/channels")


def everywhere(func: F) -> F:
    """Mark a listener or a ``tasks.loop`` to run on every worker, processing or not (a standby too).

    Use it for code that only touches the process itself (logging, metrics, a local cache); anything
    users see would happen once per worker.  Works above or below ``@bot.listen()``,
    ``@commands.Cog.listener()`` and ``@tasks.loop(...)``.
    """
    target = func.coro if isinstance(func, tasks.Loop) else func
    setattr(getattr(target, "__func__", target), _EVERYWHERE, True)
    return func


def runs_everywhere(func: Any) -> bool:
    return bool(getattr(func, _EVERYWHERE, False))


class InFlight:
    """User work admitted while processing, until it ends. Its tasks are discord.py's (or a loop's), not ours:
    this is the one place they are waited for or cancelled."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def adopt(self, task: asyncio.Task[Any]) -> None:
        if not task.done():
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def release(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)

    async def settle(self, *, until: float = -math.inf, timeout: float) -> None:
        """Let the work in flight finish until ``until`` (the loop's clock; in the past: not at all), then cancel
        what is left and wait (up to ``timeout``) until it is gone."""
        tasks_ = self._tasks - {asyncio.current_task()}  # work that stops the worker itself is not waited for
        drain = until - asyncio.get_running_loop().time()
        if drain > 0 and tasks_:
            await asyncio.wait(tasks_, timeout=drain)
        left = [t for t in tasks_ if not t.done()]
        for task in left:
            task.cancel()
        if left:
            log.warning("cancelled %d piece(s) of work in flight%s", len(left), " (drain time over)" * (drain > 0))
            _, stuck = await asyncio.wait(left, timeout=timeout)
            if stuck:
                names = [t.get_name() for t in stuck]
                log.error("%d piece(s) of work ignored their cancellation: %s", len(stuck), names)


class Lease(Protocol):
    @property
    def processing(self) -> bool: ...

    @property
    def acting(self) -> bool:
        """Processing, or draining work in flight within the lease: may write to Discord."""
        ...

    @property
    def in_flight(self) -> InFlight: ...

    async def until_processing(self) -> None: ...


_SKIPPED = object()


async def _admit(lease: Lease, func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """``await func(...)`` as work in flight if processing; ``_SKIPPED`` if not, or if the lease ends under it."""
    if not lease.processing:
        return _SKIPPED
    task = asyncio.ensure_future(func(*args, **kwargs))
    lease.in_flight.adopt(task)
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled
        return _SKIPPED  # only the work was cancelled: the lease ended


async def run_gated(lease: Lease, func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """``await func(...)`` as work in flight if processing; skipped (None) if not, or if the lease ends under it."""
    result = await _admit(lease, func, *args, **kwargs)
    return None if result is _SKIPPED else result


class Refusals:
    """Refused writes, said once per kind of route (``POST /channels/{channel_id}/messages``) until the next start."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def refuse(self, method: str, path: str) -> NotProcessing:
        kind = f"{method.upper()} {path}"
        if kind not in self._said:
            self._said.add(kind)
            log.warning("refused %s: this worker does not hold the lease (further ones are not logged)", kind)
        return NotProcessing(f"{kind} refused: this worker does not hold the lease (docs/workers.md)")

    def reset(self) -> None:
        self._said.clear()


class Gates:
    """What :func:`install` put on one bot; the attachment tells it when processing starts."""

    def __init__(self, lease: Lease, schedule: Callable[..., Any]) -> None:
        self.lease, self._schedule = lease, schedule
        self.refusals = Refusals()
        self.deferred: dict[Any, tuple[str, tuple[Any, ...], dict[str, Any]]] = {}  # listener -> latest call
        self.has_started = False

    def started(self) -> None:
        """Processing started: run the deferred ``on_ready`` listeners, the first time only."""
        self.refusals.reset()
        if self.has_started:
            return
        self.has_started = True
        deferred, self.deferred = self.deferred, {}
        for coro, (event_name, args, kwargs) in deferred.items():
            self.lease.in_flight.adopt(self._schedule(coro, event_name, *args, **kwargs))

    def defer(self, coro: Any, event_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self.has_started and event_name in DEFERRED_EVENTS:
            self.deferred[coro] = (event_name, args, kwargs)


def install(bot: Any, lease: Lease, lifecycle: dict[str, Callable[..., None]] | None = None) -> Gates:
    """Gate ``bot``'s listeners, interactions, prefix commands, writes to Discord (and, process-wide,
    tasks.Loop). ``lifecycle``: event name (``"ready"``) → a plain function called, on every worker, when
    discord.py dispatches it — the attachment's own view of the Gateway, for a ``Client`` as for a ``Bot``."""
    state = getattr(bot, "_connection", None)
    parsers = getattr(state, "parsers", None)
    schedule = getattr(bot, "_schedule_event", None)
    request = getattr(getattr(bot, "http", None), "request", None)
    process_commands = getattr(bot, "process_commands", None)
    if (
        not isinstance(parsers, dict)
        or "INTERACTION_CREATE" not in parsers
        or schedule is None
        or request is None
        or not callable(getattr(state, "dispatch", None))
    ):
        raise IncompatibleDiscordPy(
            "this discord.py has no Client._schedule_event, ConnectionState.dispatch/parsers['INTERACTION_CREATE'] "
            "or HTTPClient.request: Urban Robot cannot gate it (tested with discord.py 2.3–2.7)"
        )
    if getattr(schedule, _GATED, False):
        raise ConfigError("this bot is attached already: call attach() once per bot")
    gates = Gates(lease, schedule)
    bot._schedule_event = _gate_listeners(schedule, lease, gates)
    parsers["INTERACTION_CREATE"] = _gate_interactions(parsers["INTERACTION_CREATE"], lease)
    if process_commands is not None:
        bot.process_commands = _gate_commands(process_commands, lease)
    bot.http.request = _gate_requests(request, lease, gates.refusals)
    async_context.set(_GatedWebhookAdapter(lease, gates.refusals))  # interaction responses, follow-ups, webhooks
    if lifecycle:
        assert state is not None
        bot.dispatch = state.dispatch = _hook_dispatch(bot.dispatch, lifecycle)
    _gate_loops()
    return gates


def _hook_dispatch(dispatch: Callable[..., Any], lifecycle: dict[str, Callable[..., None]]) -> Callable[..., Any]:
    """Call ``lifecycle[event]`` first, then discord.py's own dispatch (which ``ConnectionState`` took at init)."""

    @functools.wraps(dispatch)
    def hooked(event_name: str, /, *args: Any, **kwargs: Any) -> Any:
        hook = lifecycle.get(event_name)
        if hook is not None:
            hook(*args)
        return dispatch(event_name, *args, **kwargs)

    return hooked


def _gate_listeners(schedule: Callable[..., Any], lease: Lease, gates: Gates) -> Callable[..., Any]:
    def _schedule_event(coro: Callable[..., Any], event_name: str, *args: Any, **kwargs: Any) -> Any:
        if runs_everywhere(coro):
            return schedule(coro, event_name, *args, **kwargs)
        if not lease.processing:
            gates.defer(coro, event_name, args, kwargs)  # on_ready, before the first start; else dropped
            return None  # discord.py ignores the return value
        task = schedule(coro, event_name, *args, **kwargs)
        lease.in_flight.adopt(task)
        return task

    setattr(_schedule_event, _GATED, True)
    return _schedule_event


def _gate_requests(request: Callable[..., Awaitable[Any]], lease: Lease, refusals: Refusals) -> Any:
    @functools.wraps(request)
    async def gated_request(route: Any, /, **kwargs: Any) -> Any:
        if not lease.acting and refuses(route.method, route.path):
            raise refusals.refuse(route.method, route.path)
        return await request(route, **kwargs)

    return gated_request


class _GatedWebhookAdapter(AsyncWebhookAdapter):
    """discord.py's webhook adapter (interaction callbacks, follow-ups, ``Webhook.send``), refusing writes off-lease."""

    def __init__(self, lease: Lease, refusals: Refusals) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._lease, self._refusals = lease, refusals

    async def request(self, route: Any, session: Any, **kwargs: Any) -> Any:
        if not self._lease.acting and route.method.upper() in _WRITES:
            raise self._refusals.refuse(route.method, route.path)
        return await super().request(route, session, **kwargs)


def _gate_interactions(parse: Callable[[Any], None], lease: Lease) -> Callable[[Any], None]:
    def parse_interaction_create(data: Any) -> None:
        if not lease.processing:
            return  # another worker answers it; the parser keeps no cache of interactions
        before = asyncio.all_tasks()
        parse(data)  # synchronous: every task born during it is this interaction's work
        for task in asyncio.all_tasks() - before:
            lease.in_flight.adopt(task)

    return parse_interaction_create


def _gate_commands(process_commands: Callable[..., Awaitable[Any]], lease: Lease) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(process_commands)
    async def gated(message: Any, /) -> None:
        await run_gated(lease, process_commands, message)

    return gated


#: the attachment a ``tasks.Loop`` was started under (tasks inherit it from ``Attachment.run``)
current_lease: contextvars.ContextVar[Lease] = contextvars.ContextVar("urban_robot_lease")


def _gate_loops() -> None:
    """Wrap each ``tasks.Loop``'s coroutine, ``before_loop`` and ``after_loop`` at its first start; process-wide."""
    start = tasks.Loop.start
    if getattr(start, _GATED, False):
        return

    @functools.wraps(start)
    def gated_start(self: tasks.Loop[Any], *args: Any, **kwargs: Any) -> asyncio.Task[None]:
        if not runs_everywhere(self.coro) and not getattr(self.coro, _GATED, False):
            self.coro = _gate_iteration(self.coro)
            self._before_loop = _gate_before_loop(self._before_loop)
            if self._after_loop is not None:
                self._after_loop = _gate_iteration(self._after_loop)
        return start(self, *args, **kwargs)

    setattr(gated_start, _GATED, True)
    tasks.Loop.start = gated_start  # type: ignore[method-assign]


def _gate_iteration(coro: Callable[..., Any]) -> Any:
    @functools.wraps(coro)
    async def iteration(*args: Any, **kwargs: Any) -> Any:
        lease = current_lease.get(None)
        if lease is None:  # started outside any attachment: not ours to gate
            return await coro(*args, **kwargs)
        return await run_gated(lease, coro, *args, **kwargs)

    setattr(iteration, _GATED, True)
    return iteration


def _gate_before_loop(before: Callable[..., Any] | None) -> Any:
    """The loop starts when the worker processes: wait for it, then run ``before_loop`` (again if the lease
    ended under it), so the first iteration comes after it on a worker that processes."""

    async def before_loop(*args: Any) -> None:
        lease = current_lease.get(None)
        if lease is None:  # started outside any attachment: not ours to gate
            if before is not None:
                await before(*args)
            return
        while True:
            await lease.until_processing()
            if before is None or await _admit(lease, before, *args) is not _SKIPPED:
                return

    return before_loop
