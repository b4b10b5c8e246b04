"""Floods and slowloris: bounded by ``Limits``, and supervision goes on meanwhile.

Real sockets for the flood (a thousand connections opened at once, two hundred of them half-open
requests) against a real supervisor whose workers keep heartbeating and fail over; a virtual clock for
the timing of half-open requests.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from tests._helpers import MemoryListener
from urban_robot.socketio import Server
from urban_robot.testing._plugin import SupervisorHarness
from urban_robot.web import Limits
from urban_robot.web._http import LIMIT_LOG_EVERY

FLOOD = 1000
HALF_OPEN = 200


async def _open(port: int, streams: list[trio.SocketStream], half_open: bool) -> None:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return  # the backlog overflowed: that is the flood being bounded too
    streams.append(stream)
    if half_open:
        try:
            await stream.send_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
        except trio.BrokenResourceError:
            pass


@pytest.mark.slow
async def test_connection_flood_is_bounded_and_supervision_goes_on(
    urban_robot_supervisor: SupervisorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness = urban_robot_supervisor
    server = harness.robot.server
    port = int(harness.url.rsplit(":", 1)[1])
    limit = server._limits.max_connections
    holder = await harness.worker("1.0")
    await holder.wait_for("processing")
    standby = await harness.worker("1.0")
    await standby.wait_for("cmd:health_check")
    streams: list[trio.SocketStream] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(FLOOD):
                nursery.start_soon(_open, port, streams, n < HALF_OPEN)
        await trio.testing.wait_all_tasks_blocked()
        assert server.connections.open <= limit  # bounded while the flood holds its connections open
        assert len(streams) > limit
        assert any("connection limit reached" in r.getMessage() for r in caplog.records)
        # Supervision is not stopped: heartbeats are answered and a failover happens, over open connections.
        renewed_at = trio.current_time()
        await holder.heartbeat()
        assert holder.processing_until > renewed_at
        await harness.crash(holder)
        await standby.wait_for("processing")
        assert harness.running == standby.name
        for stream in streams:
            await stream.aclose()
        while server.connections.open > 1:  # the flood's connections end; the standby's stays
            await trio.sleep(0.01)  # real sockets closing in the server's tasks
        fresh = await harness.worker("1.0")  # after the flood, a new worker connects again
        await fresh.wait_for("hello")


async def test_half_open_requests_are_bounded_in_number_and_in_time(autojump_clock: Any) -> None:
    listener = MemoryListener()
    server = Server(http_limits=Limits(max_connections=50, request_timeout=20))
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.serve(listeners=[listener], task_status=task_status))
        streams = [await listener.connect() for _ in range(HALF_OPEN)]
        await trio.testing.wait_all_tasks_blocked()
        for stream in streams:
            try:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            except trio.BrokenResourceError:
                pass  # closed on arrival
        assert server.connections.open == 50
        started = trio.current_time()
        answers = [await _read_all(stream) for stream in streams]
        assert trio.current_time() - started == pytest.approx(20)  # each served one ended at request_timeout
        nursery.cancel_scope.cancel()
    assert sum(a.startswith(b"HTTP/1.1 408 ") for a in answers) == 50
    assert answers.count(b"") == HALF_OPEN - 50  # the rest were closed on arrival


async def _read_all(stream: trio.abc.Stream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data


async def test_limit_log_line_is_rate_limited(autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "urban_robot.web")
    listener = MemoryListener()
    server = Server(http_limits=Limits(max_connections=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.serve(listeners=[listener], task_status=task_status))
        kept = await listener.connect()
        for _ in range(10):
            await listener.connect()
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(LIMIT_LOG_EVERY)
        await listener.connect()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "connection limit reached" in r.getMessage()]
    assert lines == [
        "connection limit reached: 1 connections open (max_connections); closed 1 new connection(s)",
        "connection limit reached: 1 connections open (max_connections); closed 10 new connection(s)",
    ]
    await kept.aclose()
