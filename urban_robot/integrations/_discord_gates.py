"""The lease gates on discord.py's entry points: no user code with side effects runs on a worker that does not process.

Every way discord.py runs a bot's code goes through one of four doors, and each is gated here
(docs/workers.md, "What is gated"):

- **listeners** — ``on_*`` methods, ``bot.listen()``, ``bot.add_listener``, cog listeners, and so
  ``Bot.on_message`` → ``process_commands``: discord.py schedules every one through
  ``Client._schedule_event(coro, event_name, ...)``; the bot instance gets a gated one.
- **interactions** — application commands, autocomplete, views (persistent or not, buttons and
  selects, dynamic items) and modals: ``ConnectionState.parse_interaction_create`` hands them to the
  command tree, the view store and the modal store itself. Its entry in ``state.parsers`` (the dict
  the Gateway reader looks parsers up in) is replaced.
- **prefix commands** — ``bot.process_commands`` is gated as well, for an ``on_message`` marked
  :func:`everywhere` that calls it.
- **background tasks** — each iteration of a ``discord.ext.tasks.Loop`` (``Loop.start`` wraps the
  loop's coroutine once; the gate is the attachment whose ``run()`` the loop was started under).

A standby's parsers still run (its caches stay warm); only the user code they would schedule does not.
Work admitted while processing is *in flight* (:class:`InFlight`) until it ends: when the lease ends it
is cancelled, or drained (bounded) before a coma or shutdown is acknowledged.

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

from discord.ext import tasks

from ..protocol import WorkerError

log = logging.getLogger("urban_robot.integrations.discord")

_EVERYWHERE = "__urban_robot_everywhere__"
_GATED = "__urban_robot_gated__"
F = TypeVar("F")


class IncompatibleDiscordPy(WorkerError):
    """discord.py no longer has an internal the gates rely on: running ungated would break the promise."""


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
    def in_flight(self) -> InFlight: ...


async def run_gated(lease: Lease, func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """``await func(...)`` as work in flight if processing; skipped (None) if not, or if the lease ends under it."""
    if not lease.processing:
        return None
    task = asyncio.ensure_future(func(*args, **kwargs))
    lease.in_flight.adopt(task)
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled
        return None  # only the work was cancelled: the lease ended


def install(bot: Any, lease: Lease) -> None:
    """Gate ``bot``'s listeners, interactions, prefix commands (and, process-wide, tasks.Loop iterations)."""
    state = getattr(bot, "_connection", None)
    parsers = getattr(state, "parsers", None)
    schedule = getattr(bot, "_schedule_event", None)
    process_commands = getattr(bot, "process_commands", None)
    if not isinstance(parsers, dict) or "INTERACTION_CREATE" not in parsers or schedule is None:
        raise IncompatibleDiscordPy(
            "this discord.py has no Client._schedule_event or ConnectionState.parsers['INTERACTION_CREATE']: "
            "Urban Robot cannot gate it (tested with discord.py 2.3–2.7)"
        )
    if getattr(schedule, _GATED, False):
        return
    bot._schedule_event = _gate_listeners(schedule, lease)
    parsers["INTERACTION_CREATE"] = _gate_interactions(parsers["INTERACTION_CREATE"], lease)
    if process_commands is not None:
        bot.process_commands = _gate_commands(process_commands, lease)
    _gate_loops()


def _gate_listeners(schedule: Callable[..., Any], lease: Lease) -> Callable[..., Any]:
    def _schedule_event(coro: Callable[..., Any], event_name: str, *args: Any, **kwargs: Any) -> Any:
        if runs_everywhere(coro):
            return schedule(coro, event_name, *args, **kwargs)
        if not lease.processing:
            return None  # the event is dropped for this worker; discord.py ignores the return value
        task = schedule(coro, event_name, *args, **kwargs)
        lease.in_flight.adopt(task)
        return task

    setattr(_schedule_event, _GATED, True)
    return _schedule_event


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
    """Wrap each ``tasks.Loop``'s coroutine at its (re)start; process-wide, installed once."""
    start = tasks.Loop.start
    if getattr(start, _GATED, False):
        return

    @functools.wraps(start)
    def gated_start(self: tasks.Loop[Any], *args: Any, **kwargs: Any) -> asyncio.Task[None]:
        if not runs_everywhere(self.coro) and not getattr(self.coro, _GATED, False):
            self.coro = _gate_iteration(self.coro)
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
