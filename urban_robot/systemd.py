"""systemd integration without a dependency: ``sd_notify`` datagrams and the service watchdog.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket) and,
with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). :class:`SdNotify` sends the
``KEY=value`` datagrams; :func:`run_watchdog` pings at half the interval while the supervisor is healthy,
so a hung supervisor stops pinging and systemd restarts it. Without ``NOTIFY_SOCKET`` all of it is a no-op,
and a failed send is logged, never raised: the supervisor must not die because systemd went away.
"""

from __future__ import annotations

import logging
import os
import socket as stdlib_socket
from collections.abc import Awaitable, Callable, Mapping

import trio

log = logging.getLogger("urban_robot.systemd")


def _address(raw: str) -> str | None:
    """``NOTIFY_SOCKET`` as a socket address: ``@name`` is the abstract ``\\0name``; else an absolute path."""
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # systemd also knows vsock: addresses; we don't speak them


class SdNotify:
    """Send ``sd_notify`` messages to systemd, or nothing when not started by systemd (``NOTIFY_SOCKET`` unset)."""

    def __init__(self, notify_socket: str | None) -> None:
        self.address = _address(notify_socket) if notify_socket else None
        if notify_socket and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket address: not notifying systemd", notify_socket)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SdNotify:
        environ = os.environ if environ is None else environ
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    async def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; True if it was sent."""
        if self.address is None:
            return False
        message = "\n".join(field.replace("\n", " ") for field in fields).encode()
        try:
            with trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_DGRAM) as sock:
                await sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("cannot notify systemd (%s): %s", self.address.replace("\0", "@"), exc)
            return False
        return True

    async def ready(self, status: str | None = None) -> bool:
        return await self.send("READY=1", *([f"STATUS={status}"] if status else []))

    async def status(self, text: str) -> bool:
        return await self.send(f"STATUS={text}")

    async def watchdog(self) -> bool:
        return await self.send("WATCHDOG=1")

    async def stopping(self, status: str | None = None) -> bool:
        return await self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when no watchdog is asked of us.

    ``WATCHDOG_PID``, when set, must be this process: the variables may have leaked from a parent.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number: no watchdog pings", raw)
        return None
    if usec <= 0:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID", "").strip()
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000 / 2


async def run_watchdog(
    notify: SdNotify,
    is_healthy: Callable[[], bool],
    interval: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Ping ``WATCHDOG=1`` every ``interval`` (default: from the environment) while ``is_healthy()``.

    Returns at once when there is nothing to do (no ``NOTIFY_SOCKET``, no ``WATCHDOG_USEC``); else runs
    until cancelled. An unhealthy check skips the ping, so systemd's watchdog fires if it stays unhealthy.
    """
    if interval is None:
        interval = watchdog_interval(environ)
    if not notify.enabled or interval is None:
        return
    unhealthy = False
    while True:
        if is_healthy():
            if unhealthy:
                log.warning("supervisor healthy again: resuming watchdog pings")
            unhealthy = False
            await notify.watchdog()
        elif not unhealthy:
            unhealthy = True
            log.error("supervisor unhealthy: no watchdog pings (systemd restarts it if this lasts)")
        await trio.sleep(interval)


class Liveness:
    """A health check for :func:`run_watchdog`: healthy while ``probe()`` keeps completing.

    :meth:`run` awaits ``probe`` every ``every`` seconds (e.g. a no-op round-trip through the supervisor's
    event loop); calling the object says whether one completed in the last ``stale_after`` seconds. A hung
    loop never completes the probe, so the check turns false and the watchdog stops pinging.
    """

    def __init__(self, probe: Callable[[], Awaitable[object]], every: float, stale_after: float) -> None:
        self.probe = probe
        self.every = every
        self.stale_after = stale_after
        self.last_ok: float | None = None

    def __call__(self) -> bool:
        return self.last_ok is not None and trio.current_time() - self.last_ok <= self.stale_after

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe until cancelled; started (for ``nursery.start``) once the first probe has completed."""
        await self.probe()
        self.last_ok = trio.current_time()
        task_status.started()
        while True:
            await trio.sleep(self.every)
            await self.probe()
            self.last_ok = trio.current_time()
