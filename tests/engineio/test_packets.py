"""Engine.IO v4 packets and polling payloads, byte for byte against the protocol page.

https://socket.io/docs/v4/engine-io-protocol/ — every wire string below is one of
its examples (or the engine.io-parser v4 changelog's) unless a comment says otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, strategies as st

from tests._fuzz import examples
from urban_robot import ProtocolError
from urban_robot.engineio import (
    RECORD_SEPARATOR,
    Packet,
    PacketType,
    decode_packet,
    decode_payload,
    encode_packet,
    encode_payload,
)

HANDSHAKE = (
    '{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],'
    '"pingInterval":25000,"pingTimeout":5000,"maxPayload":1000000}'
)
BINARY = b"\x01\x02\x03\x04"

TEXT_PACKETS = [
    (Packet(PacketType.OPEN, HANDSHAKE), "0" + HANDSHAKE),
    (Packet(PacketType.CLOSE), "1"),
    (Packet(PacketType.PING), "2"),
    (Packet(PacketType.PONG), "3"),
    (Packet(PacketType.PING, "probe"), "2probe"),
    (Packet(PacketType.PONG, "probe"), "3probe"),
    (Packet(PacketType.MESSAGE, "hello"), "4hello"),
    (Packet(PacketType.MESSAGE, "HelloWorld"), "4HelloWorld"),
    (Packet(PacketType.MESSAGE, "€€€"), "4€€€"),
    (Packet(PacketType.MESSAGE, '2["foo"]'), '42["foo"]'),
    (Packet(PacketType.MESSAGE), "4"),
    (Packet(PacketType.UPGRADE), "5"),
    (Packet(PacketType.NOOP), "6"),
]


# -- single packets (one WebSocket frame each) ---------------------------------------------------


@pytest.mark.parametrize(("packet", "wire"), TEXT_PACKETS)
def test_encode_text_packet(packet: Packet, wire: str) -> None:
    assert encode_packet(packet) == wire


@pytest.mark.parametrize(("packet", "wire"), TEXT_PACKETS)
def test_decode_text_packet(packet: Packet, wire: str) -> None:
    assert decode_packet(wire) == packet


def test_binary_message_is_sent_as_is() -> None:
    packet = Packet(PacketType.MESSAGE, BINARY)
    assert packet.binary
    assert encode_packet(packet) == BINARY


@pytest.mark.parametrize("frame", [BINARY, bytearray(BINARY), memoryview(BINARY)])
def test_binary_frame_is_a_binary_message(frame: bytes | bytearray | memoryview) -> None:
    packet = decode_packet(frame)
    assert packet == Packet(PacketType.MESSAGE, BINARY)
    assert type(packet.data) is bytes


def test_empty_binary_frame_is_an_empty_binary_message() -> None:
    assert decode_packet(b"") == Packet(PacketType.MESSAGE, b"")


def test_text_packet_is_not_binary() -> None:
    assert not Packet(PacketType.MESSAGE, "hello").binary


@pytest.mark.parametrize("frame", ["", "7", "9probe", "x", "b", "bAQIDBA==", "\x1e4hello", "٤hello", " 4hello"])
def test_decode_packet_refuses_unknown_types(frame: str) -> None:
    with pytest.raises(ProtocolError):
        decode_packet(frame)


@pytest.mark.parametrize("frame", [None, 4, 4.0, ["4hello"], {"type": 4}])
def test_decode_packet_refuses_wrong_python_types(frame: Any) -> None:
    # regression: ``decode_packet(4)`` raised TypeError, not ProtocolError
    with pytest.raises(ProtocolError):
        decode_packet(frame)


# -- polling payloads ----------------------------------------------------------------------------

PAYLOADS = [
    ([Packet(PacketType.MESSAGE, "hello")], "4hello"),
    ([Packet(PacketType.MESSAGE, "hello"), Packet(PacketType.MESSAGE, "world")], "4hello\x1e4world"),
    ([Packet(PacketType.MESSAGE, "hello"), Packet(PacketType.MESSAGE, "€€€")], "4hello\x1e4€€€"),
    ([Packet(PacketType.MESSAGE, "hello"), Packet(PacketType.MESSAGE, BINARY)], "4hello\x1ebAQIDBA=="),
    ([Packet(PacketType.MESSAGE, "hello"), Packet(PacketType.MESSAGE, b"\x01\x02\x03")], "4hello\x1ebAQID"),
    (
        [Packet(PacketType.MESSAGE, '2["hello"]'), Packet(PacketType.MESSAGE, '2["world"]')],
        '42["hello"]\x1e42["world"]',
    ),
    ([Packet(PacketType.OPEN, HANDSHAKE)], "0" + HANDSHAKE),
    ([Packet(PacketType.PING)], "2"),
    ([Packet(PacketType.NOOP)], "6"),
    ([Packet(PacketType.CLOSE)], "1"),
    ([Packet(PacketType.PONG), Packet(PacketType.MESSAGE, "x"), Packet(PacketType.CLOSE)], "3\x1e4x\x1e1"),
    ([Packet(PacketType.MESSAGE, b"")], "b"),  # not on the page: an empty binary message
]


@pytest.mark.parametrize(("packets", "wire"), PAYLOADS)
def test_encode_payload(packets: list[Packet], wire: str) -> None:
    assert encode_payload(packets) == wire


@pytest.mark.parametrize(("packets", "wire"), PAYLOADS)
def test_decode_payload_text(packets: list[Packet], wire: str) -> None:
    assert decode_payload(wire) == packets


@pytest.mark.parametrize(("packets", "wire"), PAYLOADS)
def test_decode_payload_body_bytes(packets: list[Packet], wire: str) -> None:
    body = wire.encode("utf-8")
    assert decode_payload(body) == packets
    assert decode_payload(bytearray(body)) == packets


def test_decode_payload_body_memoryview() -> None:
    # regression: a memoryview body raised AttributeError, not decoded like bytes
    assert decode_payload(memoryview(b"4hello\x1ebAQID")) == PAYLOADS[4][0]


def test_record_separator_is_ascii_rs() -> None:
    assert RECORD_SEPARATOR == "\x1e"


def test_max_packets_allows_the_limit() -> None:
    assert len(decode_payload("2\x1e2\x1e2", max_packets=3)) == 3


def test_max_packets_refuses_more() -> None:
    with pytest.raises(ProtocolError):
        decode_payload("2\x1e2\x1e2\x1e2", max_packets=3)


@pytest.mark.parametrize(
    "body",
    [
        "",
        b"",
        "\x1e",
        "4hello\x1e",
        "\x1e4hello",
        "4a\x1e\x1e4b",
        "7",
        "x\x1e4hello",
        "b!!!!",
        "bAQI",  # bad padding
        "bAQ ID",
        "bAQID\n",
        "b€€€€",
        b"4\xff",
        b"\xc3",
        "4hello\x1ebAQIDBA",
    ],
)
def test_decode_payload_refuses_malformed(body: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(body)


@pytest.mark.parametrize("body", [None, 0, 4, 4.5, ["4hello"], {"4": "hello"}])
def test_decode_payload_refuses_wrong_python_types(body: Any) -> None:
    # regression: ``decode_payload(4)`` raised AttributeError, not ProtocolError
    with pytest.raises(ProtocolError):
        decode_payload(body)


# -- properties ----------------------------------------------------------------------------------

text_packets = st.builds(Packet, st.sampled_from(PacketType), st.text(max_size=40))
binary_packets = st.builds(Packet, st.just(PacketType.MESSAGE), st.binary(max_size=40))
packets = text_packets | binary_packets
# The record separator cannot appear in a text packet of a payload: nothing escapes it.
payload_text = st.text(st.characters(codec="utf-8", exclude_characters=RECORD_SEPARATOR), max_size=40)
payload_packets = st.builds(Packet, st.sampled_from(PacketType), payload_text) | binary_packets

junk_types = st.none() | st.integers() | st.floats() | st.lists(st.integers(), max_size=3) | st.booleans()
base64ish = st.text(alphabet="AQIDBAwx+/=b4 \n", max_size=12).map(lambda s: "b" + s)
record = st.text(max_size=12) | base64ish | st.sampled_from(["0", "1", "2probe", "3", "4hi", "5", "6", "b"])
near_payloads = st.lists(record, min_size=1, max_size=5).map(RECORD_SEPARATOR.join)


def assert_valid(packet: Packet) -> None:
    assert isinstance(packet, Packet)
    assert isinstance(packet.type, PacketType)
    assert isinstance(packet.data, (str, bytes))
    assert not packet.binary or packet.type is PacketType.MESSAGE


def decodes_or_refuses(body: Any, **kwargs: Any) -> list[Packet] | None:
    try:
        result = decode_payload(body, **kwargs)
    except ProtocolError:
        return None
    for packet in result:
        assert_valid(packet)
    assert decode_payload(encode_payload(result)) == result
    return result


@examples(1000)
@given(packets)
def test_packet_round_trip(packet: Packet) -> None:
    assert decode_packet(encode_packet(packet)) == packet


@examples(1000)
@given(st.lists(payload_packets, min_size=1, max_size=8))
def test_payload_round_trip(items: list[Packet]) -> None:
    wire = encode_payload(items)
    assert decode_payload(wire) == items
    assert decode_payload(wire.encode("utf-8")) == items


@examples(1000)
@given(st.text())
def test_any_text_frame_decodes_canonically_or_is_refused(frame: str) -> None:
    try:
        packet = decode_packet(frame)
    except ProtocolError:
        assert frame == "" or frame[0] not in "0123456"
        return
    assert_valid(packet)
    assert encode_packet(packet) == frame


@examples(300)
@given(st.binary())
def test_any_binary_frame_is_a_message(frame: bytes) -> None:
    assert decode_packet(frame) == Packet(PacketType.MESSAGE, frame)


@examples(1000)
@given(st.text() | st.binary() | near_payloads, st.none() | st.integers(0, 6))
def test_any_payload_decodes_or_is_refused(body: str | bytes, max_packets: int | None) -> None:
    result = decodes_or_refuses(body, max_packets=max_packets)
    assert result is None or max_packets is None or len(result) <= max_packets


@examples(500)
@given(st.lists(payload_packets, min_size=1, max_size=4))
def test_truncated_payload_decodes_or_is_refused(items: list[Packet]) -> None:
    wire = encode_payload(items).encode("utf-8")
    outcomes = [decodes_or_refuses(wire[:end]) for end in range(len(wire))]
    assert outcomes[0] is None  # the empty body


@examples(300)
@given(junk_types)
def test_wrong_python_types_are_refused(value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(value)
    with pytest.raises(ProtocolError):
        decode_packet(value)
