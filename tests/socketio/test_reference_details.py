"""Details the official socket.io-protocol test suite exercises, over real sockets on 127.0.0.1.

- A WebSocket opened for a session that has already upgraded is accepted and then closed, as the reference
  server does (engine.io's ``onWebSocket``), not refused with 400; an unknown sid still is (400).
- Packets a ``connect`` handler emits are not written in the same write as the CONNECT acknowledgement: a
  client that attaches its listener once it has the acknowledgement still gets them as messages of their own.
- The library ``Server`` has no connection cap unless given one (the supervisor keeps its own).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from tests._helpers import raw_client, start_server
from urban_robot.socketio import Server
from urban_robot.web import Limits

pytestmark = pytest.mark.timeout(30)


async def polling_session(url: str) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/socket.io/?EIO=4&transport=polling")
    assert response.status_code == 200 and response.text.startswith("0")
    return str(json.loads(response.text[1:])["sid"])


def websocket_url(url: str, sid: str) -> str:
    return url.replace("http://", "ws://") + f"/socket.io/?EIO=4&transport=websocket&sid={sid}"


async def test_a_websocket_for_an_already_upgraded_session_is_accepted_then_closed(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, Server())
    sid = await polling_session(url)
    async with trio_websocket.open_websocket_url(websocket_url(url, sid)) as upgraded:
        await upgraded.send_message("2probe")
        assert await upgraded.get_message() == "3probe"
        await upgraded.send_message("5")  # the session is on this WebSocket now
        async with trio_websocket.open_websocket_url(websocket_url(url, sid)) as second:  # accepted: no 400
            with pytest.raises(trio_websocket.ConnectionClosed):
                await second.get_message()  # ... and closed at once
        await upgraded.send_message("40")  # the upgraded session lives on
        answer = await upgraded.get_message()
        assert isinstance(answer, str) and answer.startswith("40{")


async def test_a_websocket_for_an_unknown_session_is_still_refused(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, Server())
    with pytest.raises(trio_websocket.ConnectionRejected) as refused:
        async with trio_websocket.open_websocket_url(websocket_url(url, "no-such-sid")):
            pass
    assert refused.value.status_code == 400


class RecordingStream(trio.abc.Stream):
    """A real TCP connection whose every write is kept, so a test can see what left in one write."""

    def __init__(self, stream: trio.SocketStream, writes: list[bytes]) -> None:
        self.stream, self.writes = stream, writes
        self.socket = stream.socket  # the server reads the peer's address from it

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


class RecordingListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self, listener: trio.SocketListener) -> None:
        self.listener = listener
        self.writes: list[bytes] = []

    async def accept(self) -> trio.abc.Stream:
        return RecordingStream(await self.listener.accept(), self.writes)

    async def aclose(self) -> None:
        await self.listener.aclose()


@pytest.mark.parametrize("emits", [1, 2])
async def test_what_a_connect_handler_emits_is_not_in_the_write_of_the_connect_ack(
    nursery: trio.Nursery, emits: int
) -> None:
    server = Server()

    @server.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        for n in range(emits):
            await server.emit("auth", [n, auth], to=sid)  # before the acknowledgement exists: buffered

    [tcp] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = tcp.socket.getsockname()[1]
    listener = RecordingListener(tcp)
    await nursery.start(lambda task_status: server.serve(listeners=[listener], task_status=task_status))
    async with raw_client(f"http://127.0.0.1:{port}") as client:
        await client.send('40{"token":"t"}')
        ack = await client.receive()
        emitted = [await client.receive() for _ in range(emits)]
    assert isinstance(ack, str) and ack.startswith("40{") and '"sid"' in ack
    assert emitted == [f'42["auth",[{n},{{"token":"t"}}]]' for n in range(emits)]
    [ack_write] = [w for w in listener.writes if ack.encode() in w]
    assert b'42["auth"' not in ack_write  # the acknowledgement left alone
    assert all(sum(1 for w in listener.writes if packet.encode() in w) == 1 for packet in emitted)


def test_the_library_server_has_no_connection_cap_by_default() -> None:
    assert Limits().max_connections is None
    assert Server().connections.full() is False
    assert Server(http_limits=Limits(max_connections=8)).connections.limits.max_connections == 8
