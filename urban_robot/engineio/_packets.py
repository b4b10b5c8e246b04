"""Engine.IO v4 packets and HTTP long-polling payloads, sans-IO.

Wire forms (https://socket.io/docs/v4/engine-io-protocol/):

- a text packet is its type digit followed by its data: ``"4hello"``, ``"2probe"``;
- on WebSocket a binary message is a binary frame, sent as is;
- in a polling payload packets are joined by the record separator ``"\\x1e"``
  and a binary message is ``"b"`` followed by its base64.
"""

from __future__ import annotations

import base64
import binascii
import enum

import attrs

from .._errors import ProtocolError

RECORD_SEPARATOR = "\x1e"


class PacketType(enum.IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


_TYPES = {str(t.value): t for t in PacketType}


@attrs.frozen
class Packet:
    """One Engine.IO packet. ``data`` is ``bytes`` only for a binary MESSAGE."""

    type: PacketType
    data: str | bytes = ""

    @property
    def binary(self) -> bool:
        return isinstance(self.data, bytes)


def encode_packet(packet: Packet) -> str | bytes:
    """The packet as one WebSocket frame: ``str`` → text frame, ``bytes`` → binary."""
    if isinstance(packet.data, bytes):
        return packet.data
    return f"{packet.type.value}{packet.data}"


def decode_packet(frame: str | bytes) -> Packet:
    """A packet from one WebSocket frame."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return Packet(PacketType.MESSAGE, bytes(frame))
    if not isinstance(frame, str):
        raise ProtocolError("an Engine.IO packet must be text or binary")
    if not frame:
        raise ProtocolError("empty Engine.IO packet")
    ptype = _TYPES.get(frame[0])
    if ptype is None:
        raise ProtocolError(f"unknown Engine.IO packet type {frame[0]!r}")
    return Packet(ptype, frame[1:])


def encode_payload(packets: list[Packet]) -> str:
    """Packets as one HTTP long-polling body."""
    return RECORD_SEPARATOR.join(_encode_polling(p) for p in packets)


def _encode_polling(packet: Packet) -> str:
    if isinstance(packet.data, bytes):
        return "b" + base64.b64encode(packet.data).decode("ascii")
    return f"{packet.type.value}{packet.data}"


def decode_payload(body: str | bytes, *, max_packets: int | None = None) -> list[Packet]:
    """Packets from one HTTP long-polling body (a POST from the client)."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("polling payload is not valid UTF-8") from exc
    if not isinstance(body, str):
        raise ProtocolError("a polling payload must be text or bytes")
    if not body:
        raise ProtocolError("empty polling payload")
    records = body.split(RECORD_SEPARATOR)
    if max_packets is not None and len(records) > max_packets:
        raise ProtocolError(f"polling payload holds more than {max_packets} packets")
    return [_decode_polling(record) for record in records]


def _decode_polling(record: str) -> Packet:
    if record[:1] == "b":
        try:
            data = base64.b64decode(record[1:], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("invalid base64 in binary polling packet") from exc
        return Packet(PacketType.MESSAGE, data)
    return decode_packet(record)
