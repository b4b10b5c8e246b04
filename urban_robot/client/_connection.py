"""One Engine.IO v4 / Socket.IO v5 connection over a WebSocket: handshake, frames, acks, reading.

It knows nothing of the Urban Robot protocol: events go out as ``[name, payload]`` with an ack id,
events that come in are handed on as ``(name, data)``. Every wait is bounded; a broken or hung
connection surfaces as :class:`ConnectionLost` (or :class:`AckTimeout`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio_websocket

from .._errors import ProtocolError
from ..engineio import PacketType as EioType, decode_packet
from ..protocol import AckTimeout, AuthenticationFailed, ConnectionLost, MessageTooLarge, Timeouts
from ..socketio import Decoder, Packet, PacketType as SioType, encode

log = logging.getLogger("urban_robot.client")

Frame = str | bytes
MAX_MESSAGE = 64 * 1024 * 1024
WIRE_ERRORS = (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed, ProtocolError)


def event_frames(event: str, payload: Any, ack_id: int | None) -> list[Frame]:
    """The exact WebSocket frames that carry ``[event, payload]``: text first, then attachments."""
    messages = encode(Packet(SioType.EVENT, "/", [event, payload], ack_id))
    return ["4" + m if isinstance(m, str) else m for m in messages]


@attrs.define
class AckIds:
    """Ack ids, counted across connections (so a dry run can say which one comes next)."""

    _next: int = 1

    def peek(self) -> int:
        return self._next

    def take(self) -> int:
        self._next += 1
        return self._next - 1


@attrs.define(eq=False)
class _Waiter:
    done: trio.Event = attrs.field(factory=trio.Event)
    answer: list[Any] = attrs.field(factory=list)


@attrs.define(eq=False)
class Connection:
    ws: trio_websocket.WebSocketConnection
    ack_ids: AckIds
    timeouts: Timeouts
    max_payload: int = MAX_MESSAGE
    silence: float = 45.0  # pingInterval + pingTimeout: no frame for this long = dead
    sid: str = ""
    _waiters: dict[int, _Waiter] = attrs.field(factory=dict)
    _lock: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock)
    _decoder: Decoder = attrs.field(factory=Decoder)

    # -- handshake -------------------------------------------------------------------------------
    async def handshake(self, secret: str) -> None:
        with trio.fail_after(self.timeouts.handshake):
            self._opened(await self._receive())
            await self._write(["40" + json.dumps({"secret": secret}, separators=(",", ":"))])
            while not self.sid:
                frame = await self._receive()
                if frame != "2":
                    self._connect_answer(frame)

    def _opened(self, frame: Frame) -> None:
        if not isinstance(frame, str) or not frame.startswith("0"):
            raise ConnectionLost(f"expected an Engine.IO OPEN packet, got {str(frame)[:80]!r}")
        opened = json.loads(frame[1:])
        self.max_payload = int(opened.get("maxPayload", MAX_MESSAGE))
        self.silence = (opened.get("pingInterval", 25000) + opened.get("pingTimeout", 20000)) / 1000

    def _connect_answer(self, frame: Frame) -> None:
        if isinstance(frame, str) and frame.startswith("44"):
            raise AuthenticationFailed(f"the supervisor refused the connection: {frame[2:200]}")
        if not (isinstance(frame, str) and frame.startswith("40")):
            raise ConnectionLost(f"expected a CONNECT answer, got {str(frame)[:80]!r}")
        self.sid = str(json.loads(frame[2:] or "{}").get("sid", "?"))

    async def _receive(self) -> Frame:
        """The next frame, answering Engine.IO pings."""
        while True:
            frame = await self.ws.get_message()
            if frame != "2":
                return frame
            await self._write(["3"])

    # -- writing -----------------------------------------------------------------------------------
    async def _write(self, frames: list[Frame]) -> None:
        for frame in frames:
            if len(frame) > self.max_payload:
                raise MessageTooLarge(f"a {len(frame)}-byte frame exceeds maxPayload {self.max_payload}")
        async with self._lock:
            for frame in frames:
                await self.ws.send_message(frame)

    async def send(self, event: str, payload: Any) -> tuple[int, list[Frame]]:
        """Write the event with the next ack id; ``(ack id, frames)``. Wait for it with :meth:`answer`."""
        ack_id = self.ack_ids.peek()
        frames = event_frames(event, payload, ack_id)
        self._waiters[ack_id] = _Waiter()
        self.ack_ids.take()
        await self._write(frames)
        return ack_id, frames

    async def answer(self, ack_id: int) -> Any:
        """The ack's first argument (None for an empty ack); :class:`AckTimeout` if it is late."""
        waiter = self._waiters[ack_id]
        try:
            with trio.fail_after(self.timeouts.ack):
                await waiter.done.wait()
        except trio.TooSlowError:
            raise AckTimeout(f"no ack for message {ack_id} within {self.timeouts.ack} s") from None
        finally:
            self._waiters.pop(ack_id, None)
        return waiter.answer[0] if waiter.answer else None

    async def call(self, event: str, payload: Any) -> Any:
        ack_id, _ = await self.send(event, payload)
        return await self.answer(ack_id)

    # -- reading -----------------------------------------------------------------------------------
    async def read(self, pushes: trio.MemorySendChannel[tuple[str, Any]]) -> None:
        """Read until the connection ends, handing events to ``pushes``; raises :class:`ConnectionLost`."""
        while True:
            with trio.move_on_after(self.silence) as scope:
                frame = await self._receive()
            if scope.cancelled_caught:
                raise ConnectionLost(f"nothing heard from the supervisor for {self.silence} s")
            packet = decode_packet(frame)
            if packet.type is EioType.CLOSE:
                raise ConnectionLost("the supervisor closed the Engine.IO session")
            if packet.type is EioType.MESSAGE:
                await self._on_message(packet.data, pushes)

    async def _on_message(self, data: str | bytes, pushes: trio.MemorySendChannel[tuple[str, Any]]) -> None:
        packet = self._decoder.feed(data)
        if packet is None:
            return
        if packet.type is SioType.ACK and packet.id is not None:
            self._acked(packet.id, packet.data)
        elif packet.type is SioType.EVENT:
            event, *args = packet.data
            await pushes.send((event, args[0] if args else None))
        elif packet.type is SioType.DISCONNECT:
            raise ConnectionLost("the supervisor disconnected the namespace")

    def _acked(self, ack_id: int, data: list[Any]) -> None:
        waiter = self._waiters.get(ack_id)
        if waiter is None:
            log.debug("ack %d came for nothing we wait for", ack_id)
            return
        waiter.answer.extend(data)
        waiter.done.set()


RECEIVE_BUFFER = 256 * 1024


@asynccontextmanager
async def open_connection(ws_url: str, secret: str, ack_ids: AckIds, timeouts: Timeouts) -> AsyncIterator[Connection]:
    """A connected, authenticated connection (CONNECT acknowledged), closed on exit."""
    try:
        async with trio_websocket.open_websocket_url(
            ws_url,
            max_message_size=MAX_MESSAGE,
            receive_buffer_size=RECEIVE_BUFFER,  # trio-websocket's 4 KiB makes a 1 MiB cache part 256 reads
            connect_timeout=timeouts.connect,
            disconnect_timeout=timeouts.close,
        ) as ws:
            connection = Connection(ws, ack_ids, timeouts)
            await connection.handshake(secret)
            yield connection
    except trio.TooSlowError:
        raise ConnectionLost("the Engine.IO / Socket.IO handshake timed out") from None
    except WIRE_ERRORS as exc:
        raise ConnectionLost(f"{type(exc).__name__}: {exc}") from exc
