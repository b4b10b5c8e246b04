"""A server-side WebSocket over a trio stream, framed by wsproto.

Deliberately small: the handshake was already answered by the HTTP front
(``_http.py``); this object only exchanges messages. One writer at a time
(a ``StrictFIFOLock``), messages larger than ``max_message`` close the
connection with 1009 as soon as their fragments pass it (nothing larger is
held), pings are answered, and closing is bounded in time.

The hot path is one small message in, one out; its cost per message is most of
the server's CPU per ack. So, on a TCP socket:

- the common frame (final, masked, text or binary, no reserved bits, at most
  ``FAST_FRAME`` bytes and ``max_message``, minimal length encoding) is
  unmasked and decoded here; every other frame, and any frame that fails to
  decode, is handed to wsproto whole (a large one as it arrives), so wsproto is
  at a frame boundary whenever this parser takes over again and rules on
  everything unusual exactly as before;
- reads and writes go to the socket's descriptor directly: a write that the
  kernel takes at once costs no trip through trio's scheduler (trio's stream
  would yield after each), and a read after a short one waits for readability
  first instead of trying a ``recv`` that would fail (a full read tries again
  at once, at most ``EAGER_READS`` times in a row, so a flood still yields).
  Both still raise ``Cancelled`` when cancelled, as trio's do; and every
  ``YIELD_EVERY`` writes that did not wait (all connections together) yield
  once, so a task that does nothing but send cannot starve the others.
"""

from __future__ import annotations

import os
import struct
from typing import ClassVar

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason

RECEIVE_SIZE = 65536
PREAUTH_SLACK = 1024  # read a little past a small max_message, so the frame that passes it is seen
CLOSE_TIMEOUT = 2.0


LARGE = 64 * 1024
FAST_FRAME = 64 * 1024  # the largest payload parsed here; larger frames stream through wsproto
EAGER_READS = 16  # reads in a row without waiting, while each fills its buffer
YIELD_EVERY = 32  # writes that did not wait, across all connections, between two yields
_POSIX = os.name == "posix"  # os.read / os.write on a socket's descriptor


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class _Handed:
    """``_split``'s answer when it gave (part of) a frame to wsproto."""


HANDED = _Handed()


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
    _fast_frames = True  # False: wsproto parses every frame (the tests compare both)
    _unyielded: ClassVar[list[int]] = [0]  # writes since the last yield, shared by every connection

    def __init__(self, stream: trio.abc.Stream, trailing_data: bytes, *, max_message: int) -> None:
        self._stream = stream
        self._sock = stream.socket if _POSIX and isinstance(stream, trio.SocketStream) else None
        self._ws = Connection(ConnectionType.SERVER)
        self._buf = bytes(trailing_data)  # from ``_pos`` on: received, not yet parsed nor handed to wsproto
        self._pos = 0
        self._owed = 0  # bytes of the frame wsproto is parsing that it has not been given yet
        self._fragmented = False  # wsproto holds the start of a fragmented message
        self._full_read = True  # the last read filled its buffer: more may be waiting
        self._eager = 0  # reads in a row without waiting
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
            split = self._split()
            if split is HANDED:
                continue
            if split is not None:
                return split  # type: ignore[return-value]
            try:
                # A peer allowed only a few kilobytes is read a few kilobytes at a time: a flood of them
                # then costs the supervisor little memory and little work per connection.
                data = await self._read(min(RECEIVE_SIZE, self.max_message + PREAUTH_SLACK))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.closed = WebSocketClosed(CloseReason.ABNORMAL_CLOSURE, "connection lost")
                raise self.closed from exc
            if not data:
                self._ws.receive_data(None)
            elif self._pos < len(self._buf):
                self._buf = self._buf[self._pos :] + data
                self._pos = 0
            else:
                self._buf, self._pos = data, 0

    def _split(self) -> str | bytes | _Handed | None:
        """The next common frame's message; HANDED if a frame went to wsproto; None if more bytes are needed."""
        # Offsets into one buffer: consuming a frame copies nothing but its payload, however many a read held.
        buf, start = self._buf, self._pos
        size = len(buf)
        if self._owed:
            n = min(self._owed, size - start)
            if not n:
                return None
            self._owed -= n
            self._pos = start + n
            self._ws.receive_data(buf[start : start + n])
            return HANDED
        if size - start < 2:
            return None
        b0, b1 = buf[start], buf[start + 1]
        length = b1 & 0x7F
        pos = start + 2
        minimal = True
        if length == 126:
            if size - start < 4:
                return None
            length, pos = int.from_bytes(buf[pos : pos + 2], "big"), pos + 2
            minimal = length > 125
        elif length == 127:
            if size - start < 10:
                return None
            length, pos = int.from_bytes(buf[pos : pos + 8], "big"), pos + 8
            minimal = length > 0xFFFF
        masked = b1 & 0x80
        if masked:
            pos += 4
        end = pos + length
        opcode = b0 & 0x0F
        if (
            b0 & 0xF0 == 0x80  # final, no reserved bits
            and opcode in (1, 2)
            and masked
            and minimal
            and not self._fragmented
            and length <= FAST_FRAME
            and length <= self.max_message  # so a text frame's characters fit too: no size check needed
            and self._fast_frames
        ):
            if size < end:
                return None  # at most FAST_FRAME bytes and a header wait here
            payload = _unmask(buf[pos:end], buf[pos - 4 : pos])
            if opcode == 2:
                self._pos = end
                return payload
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                pass  # wsproto closes with its usual code and reason
            else:
                self._pos = end
                return text
        # Anything else goes to wsproto, whole frames only (a large one as it arrives).
        if opcode in (1, 2):
            self._fragmented = not b0 & 0x80
        elif opcode == 0 and b0 & 0x80:
            self._fragmented = False
        n = min(end, size)
        self._owed = end - n
        self._pos = n
        self._ws.receive_data(buf[start:n])
        return HANDED

    async def _read(self, max_bytes: int) -> bytes:
        sock = self._sock
        if sock is None:
            return bytes(await self._stream.receive_some(max_bytes))
        await trio.lowlevel.checkpoint_if_cancelled()
        eager = self._full_read and self._eager < EAGER_READS
        while True:
            if eager:
                self._eager += 1
            else:
                self._eager = 0
                await trio.lowlevel.wait_readable(sock)
            fd = sock.fileno()
            if fd == -1:
                raise trio.ClosedResourceError("socket was closed")
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                eager = False
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            self._full_read = len(data) == max_bytes
            return data

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
        await trio.lowlevel.checkpoint_if_cancelled()
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()  # free: taking it needs no trip through the scheduler
        try:
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
                await self._send_raw(small[0] if len(small) == 1 else b"".join(small))
        finally:
            lock.release()

    async def _send_raw(self, data: bytes | memoryview, *, ignore_errors: bool = False) -> None:
        """Write ``data``; the caller holds ``_send_lock``."""
        try:
            sock = self._sock
            if sock is not None:
                fd = sock.fileno()
                if fd == -1:
                    raise trio.ClosedResourceError("socket was closed")
                try:
                    sent = os.write(fd, data)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc
                if sent == len(data):
                    unyielded = self._unyielded
                    unyielded[0] += 1
                    if unyielded[0] >= YIELD_EVERY:
                        unyielded[0] = 0
                        await trio.lowlevel.cancel_shielded_checkpoint()  # what was written stays written
                    return
                data = memoryview(data)[sent:]  # the rest as trio writes it: waiting for room
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
