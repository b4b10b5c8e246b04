"""Shared test helpers: an in-memory listener and a raw Engine.IO/Socket.IO WebSocket client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
import trio_websocket

from urban_robot.socketio import Server


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs (for autojump_clock tests)."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](100)

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        await self._send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._receive.aclose()


async def start_server(nursery: trio.Nursery, server: Server) -> str:
    """Serve on 127.0.0.1 (port 0) and return the base URL."""
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    return f"http://127.0.0.1:{port}"


class RawClient:
    """A bare Engine.IO v4 WebSocket client: frames in, frames out, nothing hidden."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.open: dict[str, Any] = {}

    async def handshake(self) -> dict[str, Any]:
        first = await self.ws.get_message()
        assert isinstance(first, str) and first[0] == "0", first
        self.open = json.loads(first[1:])
        return self.open

    async def send(self, message: str | bytes) -> None:
        await self.ws.send_message(message)

    async def receive(self, *, answer_pings: bool = True) -> str | bytes:
        """The next frame, answering Engine.IO pings on the way unless told not to."""
        while True:
            message = await self.ws.get_message()
            if answer_pings and message == "2":
                await self.ws.send_message("3")
                continue
            return message

    async def connect_namespace(self, namespace: str = "/", auth: Any = None) -> str:
        prefix = "" if namespace == "/" else namespace + ","
        await self.send("40" + prefix + (json.dumps(auth) if auth is not None else ""))
        reply = await self.receive()
        assert isinstance(reply, str) and reply.startswith("40" + prefix), reply
        return str(json.loads(reply[2 + len(prefix) :])["sid"])


@asynccontextmanager
async def raw_client(url: str, *, query: str = "") -> AsyncIterator[RawClient]:
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket" + query
    async with trio_websocket.open_websocket_url(ws_url) as ws:
        client = RawClient(ws)
        await client.handshake()
        yield client


@asynccontextmanager
async def raw_memory_client(listener: MemoryListener, *, query: str = "") -> AsyncIterator[RawClient]:
    stream = await listener.connect()
    async with trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(
            nursery, stream, "localhost", "/socket.io/?EIO=4&transport=websocket" + query
        )
        client = RawClient(ws)
        await client.handshake()
        try:
            yield client
        finally:
            await ws.aclose()
