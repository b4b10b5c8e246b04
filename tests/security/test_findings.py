"""Regression tests for what the security review and the edge fuzzing found (docs/security.md, "Findings")."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

from tests._helpers import MemoryListener, child_secret, plain, raw_memory_client
from urban_robot._errors import ProtocolError
from urban_robot.protocol import CacheMap, CacheSync
from urban_robot.socketio import Server
from urban_robot.socketio._packets import Decoder
from urban_robot.testing._plugin import SupervisorHarness


async def test_a_connection_that_closes_while_being_registered_leaves_no_ghost_worker(
    urban_robot_supervisor: SupervisorHarness,
) -> None:
    harness = urban_robot_supervisor
    robot = harness.robot
    secret = child_secret(harness.credentials, "child-ghost-1")
    host, port = harness.url.removeprefix("http://").split(":")
    with trio.fail_after(10):
        for _ in range(20):
            stream = await trio.open_tcp_stream(host, int(port))
            request = (
                b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            # CONNECT and an invalid packet in one write: the session closes while on_connect registers it.
            frames = b"".join(_masked(text) for text in ["40" + json.dumps({"secret": secret}), "4\x00"])
            await stream.send_all(request + frames)
            while await stream.receive_some(65536):
                pass
            await stream.aclose()
        while robot.server.sockets or robot.conns or robot.core.clients:
            await trio.sleep(0.01)  # real sockets: the server notices the closes in its own tasks
    assert robot.conns == {} and robot.core.clients == {}


def _masked(text: str) -> bytes:
    payload = text.encode()
    return bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload  # mask key 0: payload as is


def test_the_attachments_of_one_packet_together_are_bounded() -> None:
    decoder = Decoder(max_attachment_bytes=1000)
    assert decoder.feed('51000-["x",{"_placeholder":true,"num":0}]') is None
    assert decoder.feed(b"a" * 600) is None
    with pytest.raises(ProtocolError, match="exceed 1000 bytes"):
        decoder.feed(b"a" * 600)  # each alone fits max_payload; together they do not


async def test_an_unauthenticated_peer_cannot_pile_up_attachments(autojump_clock: Any) -> None:
    listener = MemoryListener()
    server = Server(max_payload=10_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.serve(listeners=[listener], task_status=task_status))
        async with raw_memory_client(listener) as client:
            await client.send('4510000-["x",{"_placeholder":true,"num":0}]')
            for _ in range(3):
                await client.send(b"\x00" * 4_000)  # 12 kB announced for one packet: over 10 kB
            with pytest.raises(trio_websocket.ConnectionClosed):
                while True:
                    await client.receive()
        nursery.cancel_scope.cancel()
    assert server._engine.sessions == {}


async def test_a_cache_too_deep_for_any_decoder_is_kept_as_bytes_and_the_old_form_is_refused(
    urban_robot_supervisor: SupervisorHarness,
) -> None:
    harness = urban_robot_supervisor
    holder = await harness.worker("1.0")
    await holder.wait_for("processing")
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    answer = await holder._emit("cache_sync", {"cache": {"deep": deep}})  # the old form: decoded by nobody
    assert "no longer accepted" in answer["error"] and "docs/protocol.md" in answer["error"]
    # What the supervisor never decodes it cannot choke on: 100,000 levels of nesting are just bytes to it.
    entry = b"[" * 100_000 + b"]" * 100_000
    part = CacheSync(1, 0, 1, True, {"deep": entry})
    assert await holder._emit("cache_sync", part.payload()) == {"accepted": True}
    assert harness.robot.core.cache.entries["deep"] == (entry,)
    assert await holder.write("flat", [1, 2]) is True  # the supervisor and the connection both live on
    assert plain(harness.robot.core.cache) == {"flat": [1, 2]}


async def test_refused_connections_are_logged_below_warning(
    urban_robot_supervisor: SupervisorHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A stranger's knocking must not reach the Discord log bridge (WARNING and up) and crowd out real alerts."""
    caplog.set_level(logging.DEBUG)
    harness = urban_robot_supervisor
    url = harness.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.get_message()
        await ws.send_message('40{"secret":"wrong"}')
        assert await ws.get_message() == '44{"message":"authentication failed"}'
    refusals = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert refusals and all(r.levelno < logging.WARNING for r in refusals)
    assert all("wrong" not in r.getMessage() for r in refusals)


async def test_a_reserved_event_sent_before_the_connect_ack_closes_only_that_connection(autojump_clock: Any) -> None:
    """protocol.md §17 used to say this stopped the whole server; it closes that one session."""
    listener = MemoryListener()
    server = Server(async_handlers=False)
    server.on("connect", lambda sid, environ, auth: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.serve(listeners=[listener], task_status=task_status))
        async with raw_memory_client(listener) as bystander:
            await bystander.connect_namespace()
            async with raw_memory_client(listener) as client:
                await client.send("40")
                await client.send('42["connect"]')  # buffered until the CONNECT ack, then refused
                with pytest.raises(trio_websocket.ConnectionClosed):
                    while True:
                        await client.receive()
            await bystander.send("3")  # the bystander's session is still served
            assert len(server._engine.sessions) == 1
        nursery.cancel_scope.cancel()


async def test_a_cache_key_with_a_lone_surrogate_is_refused_not_fatal(
    urban_robot_supervisor: SupervisorHarness,
) -> None:
    """JSON may carry ``"\\ud800"``: a str with no UTF-8 form. A holder that set or deleted such a key crashed the
    whole supervisor when cache.bin was written (UnicodeEncodeError in the cache writer). Refused at the door now."""
    harness = urban_robot_supervisor
    holder = await harness.worker("1.0")
    await holder.wait_for("processing")
    good = CacheSync(1, 0, 1, True, {"ok": b"1"}).payload()
    assert await holder._emit("cache_sync", good) == {"accepted": True}
    bad_set = {"sync": 2, "part": 0, "parts": 1, "full": True, "set": {"\ud800": b"1"}}
    answer = await holder._emit("cache_sync", bad_set)
    assert "accepted" not in answer and "valid Unicode" in answer["error"]  # malformed (§7)
    bad_delete = {"sync": 3, "part": 0, "parts": 1, "full": False, "set": {}, "delete": ["x\udfff"]}
    answer = await holder._emit("cache_sync", bad_delete)
    assert "accepted" not in answer and "valid Unicode" in answer["error"]  # malformed (§7)
    await harness.robot.caches_written()
    assert await holder.write("flat", [1, 2]) is True  # the supervisor and its cache writer both live on
    assert plain(harness.robot.core.cache) == {"flat": [1, 2]}
    with pytest.raises(TypeError, match="lone surrogates"):
        CacheMap()["\ud83d"] = 1  # a bot is told at once, not by a refused sync later
