from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from urban_robot.systemd import Liveness, SdNotify, run_watchdog, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A real unix datagram socket standing in for systemd's: (its NOTIFY_SOCKET value, the socket)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    with sock:
        yield str(path), sock


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_messages_reach_the_socket(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    notify = SdNotify.from_environ({"NOTIFY_SOCKET": address})
    assert notify.enabled
    assert await notify.ready("supervising")
    assert await notify.status("deploying abc123")
    assert await notify.watchdog()
    assert await notify.stopping()
    assert received(sock) == ["READY=1\nSTATUS=supervising", "STATUS=deploying abc123", "WATCHDOG=1", "STOPPING=1"]


async def test_a_newline_in_a_status_cannot_forge_a_field(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    await SdNotify(address).status("ok\nREADY=1")
    assert received(sock) == ["STATUS=ok READY=1"]


async def test_abstract_socket_name() -> None:
    name = f"urban-robot-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        notify = SdNotify("@" + name)
        assert notify.address == "\0" + name
        assert await notify.ready()
        assert received(sock) == ["READY=1"]


async def test_no_op_without_notify_socket() -> None:
    notify = SdNotify.from_environ({})
    assert not notify.enabled
    assert not await notify.ready()
    assert not await notify.watchdog()
    with trio.move_on_after(1) as scope:  # returns at once: nothing to ping
        await run_watchdog(notify, lambda: True, interval=1)
    assert not scope.cancelled_caught


async def test_unusable_addresses_are_not_fatal(tmp_path: Path) -> None:
    assert not SdNotify("vsock:2:1234").enabled
    assert not SdNotify("relative/path").enabled
    # A socket nobody listens on (systemd went away): logged, not raised.
    assert not await SdNotify(str(tmp_path / "gone")).ready()


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=42) is None  # not us
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}) is None


async def test_watchdog_pings_at_half_the_interval(
    notify_socket: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    address, sock = notify_socket
    environ = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    notify = SdNotify.from_environ(environ)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_watchdog(notify, lambda: True, environ=environ))
        await trio.sleep(1)
        assert received(sock) == ["WATCHDOG=1"]  # one at once
        await trio.sleep(13)  # t=14: not yet
        assert received(sock) == []
        await trio.sleep(2)  # t=16: the one at 15
        assert received(sock) == ["WATCHDOG=1"]
        await trio.sleep(43)  # t=59: pings at 30 and 45
        assert received(sock) == ["WATCHDOG=1", "WATCHDOG=1"]
        nursery.cancel_scope.cancel()


async def test_no_pings_while_unhealthy(
    notify_socket: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    address, sock = notify_socket
    healthy = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_watchdog(SdNotify(address), lambda: healthy, interval=15))
        await trio.sleep(1)
        assert received(sock) == ["WATCHDOG=1"]
        healthy = False
        await trio.sleep(60)
        assert received(sock) == []  # systemd's watchdog would now fire
        healthy = True
        await trio.sleep(15)
        assert received(sock) == ["WATCHDOG=1"]
        nursery.cancel_scope.cancel()


async def test_liveness_turns_false_when_the_probe_hangs(autojump_clock: trio.testing.MockClock) -> None:
    hang = trio.Event()
    hung = False

    async def probe() -> None:
        if hung:
            await hang.wait()

    liveness = Liveness(probe, every=5, stale_after=20)
    assert not liveness()  # never probed
    async with trio.open_nursery() as nursery:
        await nursery.start(liveness.run)
        assert liveness()
        await trio.sleep(60)
        assert liveness()
        hung = True
        await trio.sleep(30)
        assert not liveness()
        hang.set()
        await trio.sleep(1)
        assert liveness()
        nursery.cancel_scope.cancel()
