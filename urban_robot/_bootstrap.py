"""What ``python -m urban_robot`` and its dev mode share from the command line to a running supervisor.

Configuration errors (one line per problem, exit 2), the admin credential (exit 1 with one line when it cannot
be made), logging with every secret redacted, the dashboard line, and the one way both stop:
``run_until_stopped`` turns SIGTERM and SIGINT (Ctrl+C) into ``App.stop(reason)`` — the same stop the admin
API asks for: every worker is asked to shut down, then signalled (``serve``). A later signal during the stop is
taken and said, never left to its default action (which would kill the supervisor halfway and orphan workers).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import attrs
import trio

from .cli import dashboard_url, ensure_admin_token
from .config import ConfigError
from .logs import LogFormat, configure_logging
from .supervisor import App, Options, StateError
from .systemd import SdNotify

T = TypeVar("T")
SIGNAL_REASONS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl+C)"}
Say = Callable[[str, bool], None]  # (line, again): again is true for a signal that came during the stop


def config_errors(exc: ConfigError, err: TextIO | None = None) -> int:
    """Print one line per configuration problem; the exit status (2)."""
    for problem in exc.problems:
        print(f"urban-robot: configuration: {problem}", file=err or sys.stderr)
    return 2


def prepare(options: Options, log_level: int, log_format: LogFormat) -> Options | int:
    """``options`` with its admin credential (created if need be), logging set up with every secret redacted;
    or the exit status (1) after one line on stderr."""
    try:
        options = attrs.evolve(options, admin_token=ensure_admin_token(options.state_dir, options.admin_token))
    except StateError as exc:
        print(f"urban-robot: {exc}", file=sys.stderr)
        return 1
    secrets = (
        options.settings.token,
        options.discord_token,
        options.admin_token,
        options.webhook_secret,
        options.notify_webhook.token if options.notify_webhook else None,  # the URL's secret part
        *options.worker_secrets.values(),
    )
    configure_logging(log_level, log_format, secrets)
    return options


def dashboard_line(url: str, admin_token: str | None, state_dir: Path, out: TextIO) -> str:
    """The token goes into the clickable URL on a terminal only; a log (journal, file) gets where to find it."""
    if admin_token and out.isatty():
        return f"Dashboard: {dashboard_url(url, admin_token)}"
    return f"Dashboard: {url}/ (add ?token=<the admin token, in {state_dir / 'admin.token'} unless configured>)"


async def run_until_stopped(
    start: Callable[..., Awaitable[None]],
    *,
    say: Say,
    app_of: Callable[[Any], App] = lambda started: started,
    started: Callable[[Any, trio.Nursery, SdNotify], Awaitable[None]] | None = None,
) -> None:
    """Run ``start`` (a ``serve``-like task whose ``task_status`` gives an App, or what ``app_of`` finds it in)
    until it returns; SIGTERM and SIGINT stop it through ``App.stop``, as the admin API does.

    ``started(value, nursery, notify)`` runs once it is up (banner, systemd watchdog); systemd is told
    STOPPING=1 with the reason when a stop begins.
    """
    notify = SdNotify.from_environ()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def serving(task_status: trio.TaskStatus[Any]) -> None:
                await start(task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped: nothing else here has a reason to go on

            value = await nursery.start(serving)
            app = app_of(value)
            nursery.start_soon(_stop_on_signals, signals, app, say)
            nursery.start_soon(_tell_systemd, app, notify)
            if started is not None:
                await started(value, nursery, notify)


async def _stop_on_signals(signals: AsyncIterator[int], app: App, say: Say) -> None:
    async for signum in signals:
        reason = SIGNAL_REASONS.get(signal.Signals(signum), signal.Signals(signum).name)
        if app.stop(reason):
            policy, count = app.children.policy, len(app.children.children)
            say(
                f"{reason}: stopping the supervisor, the bot goes offline: {count} workers are asked to shut down "
                f"(the holder hands in its final cache and its lease), SIGTERM after {policy.term_timeout:g} s, "
                f"SIGKILL {policy.kill_timeout:g} s later",
                False,
            )
        else:
            say(f"{reason}: already stopping the workers in order; kill -9 {os.getpid()} forces", True)


async def _tell_systemd(app: App, notify: SdNotify) -> None:
    await app.stop_requested.wait()
    await notify.stopping(f"stopping ({app.stop_reason}): the workers are asked to shut down")
