"""A server-side WebSocket over a trio stream, framed by wsproto.

Deliberately small: the handshake was already answered by the HTTP front
(``_http.py``); this object only exchanges messages. One writer at a time
(a ``StrictFIFOLock``), messages larger than ``max_message`` close the
connection with 1009 as soon as their fragments pass it (nothing larger is
held), pings are answered, and closing is bounded in time.
"""

from __future__ import annotations

import struct

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason

RECEIVE_SIZE = 65536
PREAUTH_SLACK = 1024  # read a little past a small max_message, so the frame that passes it is seen
CLOSE_TIMEOUT = 2.0


LARGE = 64 * 1024


def _frame(message: str | bytes, text_prefix: str) -> list[bytes]:
    """A whole unfragmented server frame (servers never mask): header, then payload parts.

    wsproto's sender copies a payload several times over; for messages of
    megabytes (a bot's cache) that is most of the memory a send needs, so
    data frames are laid out here and only the parsing is left to wsproto.
    """
    if isinstance(message, str):
        opcode, head, body = 0x1, text_prefix.encode(), message.encode()
    else:
        opcode, head, body = 0x2, b"", bytes(message)
    length = len(head) + len(body)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    if len(body) < LARGE:
        return [header + head + body]
    return [header + head, body]


class WebSocketClosed(Exception):
    """The peer closed the WebSocket, or the connection broke."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class WebSocket:
    def __init__(self, stream: trio.abc.Stream, trailing_data: bytes, *, max_message: int) -> None:
        self._stream = stream
        self._ws = Connection(ConnectionType.SERVER, trailing_data=trailing_data)
        self.max_message = max_message  # may be raised later (once the peer authenticated)
        self._send_lock = trio.StrictFIFOLock()
        self._parts: list[str | bytes] = []
        self._size = 0
        self.closed: WebSocketClosed | None = None

    async def receive(self) -> str | bytes:
        """The next whole message; raises ``WebSocketClosed`` when the connection ends."""
        while True:
            for event in self._ws.events():
                message = await self._handle(event)
                if message is not None:
                    return message
            if self.closed is not None:
                raise self.closed
            try:
                # A peer allowed only a few kilobytes is read a few kilobytes at a time: a flood of them
                # then costs the supervisor little memory and little work per connection.
                data = await self._stream.receive_some(min(RECEIVE_SIZE, self.max_message + PREAUTH_SLACK))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.closed = WebSocketClosed(CloseReason.ABNORMAL_CLOSURE, "connection lost")
                raise self.closed from exc
            self._ws.receive_data(bytes(data) if data else None)

    async def _handle(self, event: object) -> str | bytes | None:
        if isinstance(event, (TextMessage, BytesMessage)):
            self._size += len(event.data)
            if self._size > self.max_message:
                await self.close(CloseReason.MESSAGE_TOO_BIG, "message too big")
                raise WebSocketClosed(CloseReason.MESSAGE_TOO_BIG, "message too big")
            data: str | bytes = event.data if isinstance(event.data, str) else bytes(event.data)
            if not event.message_finished:
                self._parts.append(data)
                return None
            if self._parts:
                self._parts.append(data)
                data = "".join(self._parts) if isinstance(data, str) else b"".join(self._parts)  # type: ignore[arg-type]
                self._parts = []
            self._size = 0
            return data if isinstance(data, str) else bytes(data)
        if isinstance(event, Ping):
            async with self._send_lock:
                await self._send_raw(self._ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            if self.closed is None:
                self.closed = WebSocketClosed(event.code, event.reason or "")
                if self._ws.state is ConnectionState.REMOTE_CLOSING:  # a close frame, not a lost line
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        async with self._send_lock:
                            await self._send_raw(self._ws.send(event.response()), ignore_errors=True)
                await trio.aclose_forcefully(self._stream)
        elif isinstance(event, Pong):
            pass
        return None

    async def send(self, message: str | bytes) -> None:
        await self.send_many([message])

    async def send_many(self, messages: list[str | bytes], *, text_prefix: str = "") -> None:
        """Send messages in order; raises ``WebSocketClosed`` if closed.

        ``text_prefix`` goes in front of every text message without copying it
        (Engine.IO's "4"). Small frames leave in one write; a large payload is
        written straight from its encoded bytes, never joined into a copy.
        """
        if self.closed is not None:
            raise self.closed
        async with self._send_lock:
            if self.closed is not None:
                raise self.closed
            small: list[bytes] = []
            for message in messages:
                for part in _frame(message, text_prefix):
                    if len(part) < LARGE:
                        small.append(part)
                        continue
                    if small:
                        await self._send_raw(b"".join(small))
                        small = []
                    await self._send_raw(part)
            if small:
                await self._send_raw(b"".join(small))

    async def _send_raw(self, data: bytes, *, ignore_errors: bool = False) -> None:
        """Write ``data``; the caller holds ``_send_lock``."""
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self.closed is None:
                self.closed = WebSocketClosed(CloseReason.ABNORMAL_CLOSURE, "connection lost")
            if not ignore_errors:
                raise self.closed from exc

    async def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame and drop the connection; time-limited, idempotent."""
        if self.closed is not None:
            return
        self.closed = WebSocketClosed(code, reason)
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            try:
                async with self._send_lock:
                    await self._stream.send_all(self._ws.send(CloseConnection(code=code, reason=reason)))
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass
        await trio.aclose_forcefully(self._stream)
