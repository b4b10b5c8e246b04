"""Socket.IO v5 packets, sans-IO.

Wire form of one packet (https://socket.io/docs/v4/socket-io-protocol/)::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]

followed, for BINARY_EVENT / BINARY_ACK, by ``attachments`` binary Engine.IO
messages that replace the ``{"_placeholder": true, "num": n}`` objects of the data.

``encode`` turns a :class:`Packet` into its text part and attachments;
:class:`Decoder` turns Engine.IO messages back into packets, holding a binary
packet until its attachments arrived. Anything malformed raises
:class:`~urban_robot.ProtocolError` and nothing else.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable
from typing import Any

import attrs

from .._errors import ProtocolError

MAX_ACK_ID = 2**53 - 1  # what a JavaScript peer can represent exactly
#: Event names Socket.IO keeps for itself: a peer must never emit one (it could re-run ``connect``).
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)


class PacketType(enum.IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


_TYPES = {str(t.value): t for t in PacketType}
_BINARY = (PacketType.BINARY_EVENT, PacketType.BINARY_ACK)


@attrs.frozen
class Packet:
    """One Socket.IO packet, attachments already folded back into ``data`` as ``bytes``.

    ``type`` may be EVENT or ACK for data holding bytes: :func:`encode` picks the
    binary type by itself.
    """

    type: PacketType
    namespace: str = "/"
    data: Any = None
    id: int | None = None


#: ``json.dumps(data, separators=(",", ":"), allow_nan=False)`` without building an encoder per call.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode(packet: Packet) -> list[str | bytes]:
    """The Engine.IO messages that carry ``packet``: one text, then its attachments."""
    attachments: list[bytes] = []
    data = packet.data
    ptype = packet.type
    if data is not None and ptype in (PacketType.EVENT, PacketType.ACK, *_BINARY):
        data = _deconstruct(data, attachments)
        if attachments:
            is_event = ptype in (PacketType.EVENT, PacketType.BINARY_EVENT)
            ptype = PacketType.BINARY_EVENT if is_event else PacketType.BINARY_ACK
        elif ptype in _BINARY:
            ptype = PacketType.EVENT if ptype is PacketType.BINARY_EVENT else PacketType.ACK
    head = str(ptype.value)
    if attachments:
        head += f"{len(attachments)}-"
    if packet.namespace != "/":
        head += packet.namespace + ","
    if packet.id is not None:
        head += str(packet.id)
    if data is not None:
        head += _dumps(data)
    return [head, *attachments]


def _deconstruct(data: Any, attachments: list[bytes]) -> Any:
    if isinstance(data, (bytes, bytearray, memoryview)):
        attachments.append(bytes(data))
        return {"_placeholder": True, "num": len(attachments) - 1}
    if isinstance(data, (list, tuple)):
        return [_deconstruct(item, attachments) for item in data]
    if isinstance(data, dict):
        return {key: _deconstruct(value, attachments) for key, value in data.items()}
    return data


def _has_binary(data: Any) -> bool:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return True
    if isinstance(data, (list, tuple)):
        return any(_has_binary(item) for item in data)
    if isinstance(data, dict):
        return any(_has_binary(value) for value in data.values())
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # 1e400 overflows to inf, which no JSON encoder takes back
        raise ValueError(f"{literal} is out of range")
    return value


@attrs.frozen
class Head:
    """What precedes a packet's JSON: enough to decide whether parsing it is worth it."""

    type: PacketType
    namespace: str
    size: int  # characters of JSON data that follow


#: ``admit(head)``: True to parse the packet's data, False to drop the packet unparsed; may raise ProtocolError.
Admit = Callable[[Head], bool]


def decode_text(text: str, start: int = 0) -> tuple[Packet, int]:
    """Parse the text part of a packet: the packet (placeholders still in) and its attachment count.

    The packet begins at ``text[start]`` (the server passes a WebSocket frame
    whole, past its Engine.IO type digit, to save copying large messages).
    """
    packet, attachments = decode_admitted(text, start, None)
    assert packet is not None  # nothing refused it
    return packet, attachments


def decode_admitted(text: str, start: int, admit: Admit | None) -> tuple[Packet | None, int]:
    """``decode_text``, but ``admit`` sees the head before any JSON is parsed; if it says no, the packet is None."""
    if not isinstance(text, str):
        raise ProtocolError("a Socket.IO packet must start with a text message")
    if len(text) <= start:
        raise ProtocolError("empty Socket.IO packet")
    ptype = _TYPES.get(text[start])
    if ptype is None:
        raise ProtocolError(f"unknown Socket.IO packet type {text[start]!r}")
    pos = start + 1
    length = len(text)
    attachments = 0
    if ptype in _BINARY:
        dash = text.find("-", pos)
        digits = text[pos:dash] if dash >= 0 else ""
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 6:
            raise ProtocolError("binary packet without a valid attachment count")
        attachments = int(digits)
        pos = dash + 1
    namespace = "/"
    if pos < length and text[pos] == "/":
        comma = text.find(",", pos)
        end = comma if comma >= 0 else length
        namespace = text[pos:end]
        pos = end + 1 if comma >= 0 else end
    ack_id = None
    start = pos
    while pos < length and "0" <= text[pos] <= "9":
        pos += 1
    if pos > start:
        if pos - start > 16 or int(text[start:pos]) > MAX_ACK_ID:
            raise ProtocolError("ack id out of range")
        ack_id = int(text[start:pos])
    data = None
    while pos < length and text[pos] in _JSON_SPACE:
        pos += 1
    if admit is not None and not admit(Head(ptype, namespace, length - pos)):
        return None, attachments
    if pos < length:
        try:
            data, end = _JSON.raw_decode(text, pos)  # no copy of a large payload
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("Socket.IO packet data is not valid JSON") from exc
        if text[end:].strip(_JSON_SPACE):
            raise ProtocolError("Socket.IO packet data is not valid JSON")
    _validate(ptype, data, ack_id)
    return Packet(ptype, namespace, data, ack_id), attachments


def _validate(ptype: PacketType, data: Any, ack_id: int | None) -> None:
    if ptype is PacketType.CONNECT:
        ok = data is None or isinstance(data, dict)
    elif ptype is PacketType.DISCONNECT:
        ok = data is None
    elif ptype is PacketType.CONNECT_ERROR:
        ok = isinstance(data, (str, dict))
    elif ptype in (PacketType.EVENT, PacketType.BINARY_EVENT):
        ok = isinstance(data, list) and bool(data) and isinstance(data[0], str)
    else:  # ACK, BINARY_ACK
        ok = isinstance(data, list) and ack_id is not None
    if not ok:
        raise ProtocolError(f"invalid payload for a {ptype.name} packet")
    if ack_id is not None and ptype not in (PacketType.EVENT, PacketType.ACK, *_BINARY):
        raise ProtocolError(f"a {ptype.name} packet cannot carry an ack id")


def _reconstruct(data: Any, attachments: list[bytes], used: set[int]) -> Any:
    if isinstance(data, list):
        return [_reconstruct(item, attachments, used) for item in data]
    if isinstance(data, dict):
        if data.get("_placeholder") is True:
            num = data.get("num")
            if type(num) is not int or not 0 <= num < len(attachments) or len(data) != 2:
                raise ProtocolError("binary placeholder refers to no attachment")
            used.add(num)
            return attachments[num]
        return {key: _reconstruct(value, attachments, used) for key, value in data.items()}
    return data


class Decoder:
    """Reassembles packets from a stream of Engine.IO messages.

    ``feed(message)`` returns the finished :class:`Packet`, or ``None`` while a
    binary packet still waits for attachments.
    """

    def __init__(self, *, max_attachments: int = 10_000, max_attachment_bytes: int | None = None) -> None:
        self._max_attachments = max_attachments
        self._max_bytes = max_attachment_bytes  # all attachments of one packet together
        self._pending: Packet | None = None
        self._expected = 0
        self._attachments: list[bytes] = []
        self._size = 0

    @property
    def waiting(self) -> bool:
        return self._pending is not None

    def feed(self, message: str | bytes, start: int = 0, admit: Admit | None = None) -> Packet | None:
        """``start``: where the packet begins in a text ``message``; ``admit``: see ``decode_text``."""
        if self._pending is None:
            if not isinstance(message, str):
                raise ProtocolError("binary message without a binary packet announcing it")
            packet, count = decode_admitted(message, start, admit)
            if packet is None:
                if count:
                    raise ProtocolError("a binary packet was refused")  # its attachments would follow
                return None
            if packet.type not in _BINARY:
                return packet
            if count > self._max_attachments:
                raise ProtocolError("binary packet announces too many attachments")
            if count == 0:
                return self._finish(packet, [])
            self._pending, self._expected, self._attachments, self._size = packet, count, [], 0
            return None
        if isinstance(message, str):
            raise ProtocolError("text message while binary attachments were expected")
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise ProtocolError("a binary attachment must be bytes")
        self._size += len(message)
        if self._max_bytes is not None and self._size > self._max_bytes:
            # Without this bound a peer announcing many attachments could make us hold any amount.
            raise ProtocolError(f"binary attachments of one packet exceed {self._max_bytes} bytes")
        self._attachments.append(bytes(message))
        if len(self._attachments) < self._expected:
            return None
        packet, attachments = self._pending, self._attachments
        self._pending, self._expected, self._attachments, self._size = None, 0, [], 0
        return self._finish(packet, attachments)

    @staticmethod
    def _finish(packet: Packet, attachments: list[bytes]) -> Packet:
        used: set[int] = set()
        try:
            data = _reconstruct(packet.data, attachments, used)
        except RecursionError as exc:  # JSON nested deeper than Python's stack allows
            raise ProtocolError("binary packet data is nested too deeply") from exc
        if len(used) != len(attachments):
            raise ProtocolError("binary packet has attachments no placeholder refers to")
        ptype = PacketType.EVENT if packet.type is PacketType.BINARY_EVENT else PacketType.ACK
        return Packet(ptype, packet.namespace, data, packet.id)


_JSON_SPACE = " \t\n\r"
_JSON = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)
