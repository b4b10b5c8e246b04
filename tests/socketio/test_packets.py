"""Socket.IO v5 packets, byte for byte against the protocol page, then fuzzed.

https://socket.io/docs/v4/socket-io-protocol/#packet-encoding — the wire strings of
``SPEC`` are the page's examples; ``MORE`` adds nested and multiple attachments.
A peer's malformed input raises ``ProtocolError`` or decodes to a valid packet, never anything else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import assume, given, strategies as st

from tests._fuzz import examples
from urban_robot import ProtocolError
from urban_robot.socketio import Decoder, Packet, PacketType, decode_text, encode
from urban_robot.socketio._packets import MAX_ACK_ID

CONNECT = PacketType.CONNECT
DISCONNECT = PacketType.DISCONNECT
EVENT = PacketType.EVENT
ACK = PacketType.ACK
CONNECT_ERROR = PacketType.CONNECT_ERROR
BINARY_EVENT = PacketType.BINARY_EVENT
BINARY_ACK = PacketType.BINARY_ACK

BUF = b"\x01\x02\x03\x04"


def placeholder(num: Any) -> dict[str, Any]:
    return {"_placeholder": True, "num": num}


def wire(template: str) -> str:
    """``#0``, ``#1``, ... stand for the placeholders of attachments 0, 1, ..."""
    for num in range(10):
        template = template.replace(f"#{num}", json.dumps(placeholder(num), separators=(",", ":")))
    return template


def feed_all(decoder: Decoder, messages: Sequence[Any]) -> list[Packet | None]:
    return [decoder.feed(message) for message in messages]


def decoded(messages: Sequence[Any]) -> Packet | None:
    return feed_all(Decoder(), messages)[-1]


def assert_valid(packet: Packet) -> None:
    """A packet the decoder hands out can be sent again and reads back the same."""
    assert packet.type in (CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR)
    assert packet.namespace.startswith("/")
    assert packet.id is None or 0 <= packet.id <= MAX_ACK_ID
    assert decoded(encode(packet)) == packet


def decode_or_refuse(*messages: Any) -> list[Packet | None] | None:
    """Feed ``messages`` to a fresh decoder: ``None`` if refused, else the results, each checked."""
    try:
        results = feed_all(Decoder(), messages)
    except ProtocolError:
        return None
    for packet in results:
        if packet is not None:
            assert_valid(packet)
    return results


def nesting(value: Any) -> tuple[int, Any]:
    """How many lists wrap the first leaf of ``value``, and that leaf."""
    depth = 0
    while isinstance(value, list) and value:
        depth, value = depth + 1, value[0]
    return depth + isinstance(value, list), value


# -- the spec's examples -------------------------------------------------------------------------

SPEC = [
    # connection to a namespace
    (Packet(CONNECT), ["0"]),
    (Packet(CONNECT, "/", {"sid": "wZX3oN0bSVIhsaknAAAI"}), ['0{"sid":"wZX3oN0bSVIhsaknAAAI"}']),
    (Packet(CONNECT, "/admin"), ["0/admin,"]),
    (Packet(CONNECT, "/admin", {"sid": "oSO0OpakMV_3jnilAAAA"}), ['0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}']),
    (Packet(CONNECT_ERROR, "/", {"message": "Not authorized"}), ['4{"message":"Not authorized"}']),
    # sending and receiving data
    (Packet(EVENT, "/", ["foo"]), ['2["foo"]']),
    (Packet(EVENT, "/admin", ["bar"]), ['2/admin,["bar"]']),
    (Packet(EVENT, "/", ["baz", BUF]), [wire('51-["baz",#0]'), BUF]),
    (
        Packet(EVENT, "/admin", ["baz", b"\x01\x02", b"\x03\x04"]),
        [wire('52-/admin,["baz",#0,#1]'), b"\x01\x02", b"\x03\x04"],
    ),
    (Packet(EVENT, "/", ["hey", "Jude"]), ['2["hey","Jude"]']),
    # acknowledgement
    (Packet(EVENT, "/", ["foo"], 12), ['212["foo"]']),
    (Packet(ACK, "/", [], 12), ["312[]"]),
    (Packet(EVENT, "/admin", ["foo"], 13), ['2/admin,13["foo"]']),
    (Packet(ACK, "/admin", ["bar"], 13), ['3/admin,13["bar"]']),
    (Packet(EVENT, "/", ["foo", BUF], 14), [wire('51-14["foo",#0]'), BUF]),
    (Packet(ACK, "/", ["bar"], 14), ['314["bar"]']),
    (Packet(EVENT, "/", ["foo"], 15), ['215["foo"]']),
    (Packet(ACK, "/", ["bar", BUF], 15), [wire('61-15["bar",#0]'), BUF]),
    # disconnection from a namespace
    (Packet(DISCONNECT), ["1"]),
    (Packet(DISCONNECT, "/admin"), ["1/admin,"]),
]

MORE = [
    # CONNECT with an auth payload, on "/" and on a custom namespace
    (Packet(CONNECT, "/", {"token": "123"}), ['0{"token":"123"}']),
    (Packet(CONNECT, "/admin", {"token": "123"}), ['0/admin,{"token":"123"}']),
    (Packet(CONNECT_ERROR, "/admin", {"message": "Not authorized"}), ['4/admin,{"message":"Not authorized"}']),
    (Packet(CONNECT_ERROR, "/", "Not authorized"), ['4"Not authorized"']),
    (Packet(EVENT, "/admin", ["hey", {"a": [1, 2.5, None, True]}], 12), ['2/admin,12["hey",{"a":[1,2.5,null,true]}]']),
    (Packet(EVENT, "/", ["e"], 0), ['20["e"]']),
    (Packet(EVENT, "/", ["e"], MAX_ACK_ID), [f'2{MAX_ACK_ID}["e"]']),
    (Packet(ACK, "/admin", [], 7), ["3/admin,7[]"]),
    (
        Packet(EVENT, "/admin", ["upload", {"files": [b"a", b"b"], "thumb": {"png": b"c"}}], 7),
        [wire('53-/admin,7["upload",{"files":[#0,#1],"thumb":{"png":#2}}]'), b"a", b"b", b"c"],
    ),
    (
        Packet(ACK, "/admin", [[b"x", [b""]], {"k": b"z"}], 9),
        [wire('63-/admin,9[[#0,[#1]],{"k":#2}]'), b"x", b"", b"z"],
    ),
    (Packet(EVENT, "/", ["twice", b"x", b"x"]), [wire('52-["twice",#0,#1]'), b"x", b"x"]),
    (Packet(ACK, "/", [b"only"], 1), [wire("61-1[#0]"), b"only"]),
]


@pytest.mark.parametrize(("packet", "messages"), SPEC + MORE)
def test_encode(packet: Packet, messages: list[str | bytes]) -> None:
    assert encode(packet) == messages


@pytest.mark.parametrize(("packet", "messages"), SPEC + MORE)
def test_decode(packet: Packet, messages: list[str | bytes]) -> None:
    results = feed_all(Decoder(), messages)
    assert results == [None] * (len(messages) - 1) + [packet]


def test_decode_text_keeps_placeholders_and_counts_attachments() -> None:
    packet, count = decode_text(wire('52-/admin,12["baz",#0,{"x":#1}]'))
    assert count == 2
    assert packet == Packet(BINARY_EVENT, "/admin", ["baz", placeholder(0), {"x": placeholder(1)}], 12)


@pytest.mark.parametrize(
    ("text", "packet"),
    [
        ("0/admin", Packet(CONNECT, "/admin")),  # no trailing comma, as the reference parser allows
        ("1/admin", Packet(DISCONNECT, "/admin")),
        ('2/,["a"]', Packet(EVENT, "/", ["a"])),
        ('50-["a"]', Packet(EVENT, "/", ["a"])),  # a binary packet with no attachment at all
        ('60-3["a"]', Packet(ACK, "/", ["a"], 3)),
        ('2["ünï","€"]', Packet(EVENT, "/", ["ünï", "€"])),
        ('2[ "a" , 1 ]', Packet(EVENT, "/", ["a", 1])),
        ('2["a",1e308]', Packet(EVENT, "/", ["a", 1e308])),
        (wire('2["a",#0]'), Packet(EVENT, "/", ["a", placeholder(0)])),  # a text packet has no attachments
        ('2["a",{"_placeholder":false,"num":0}]', Packet(EVENT, "/", ["a", {"_placeholder": False, "num": 0}])),
    ],
)
def test_decode_accepts_lenient_forms(text: str, packet: Packet) -> None:
    assert Decoder().feed(text) == packet


def test_encode_picks_the_binary_type_by_itself() -> None:
    assert encode(Packet(BINARY_EVENT, "/", ["a"])) == ['2["a"]']
    assert encode(Packet(BINARY_ACK, "/", [], 1)) == ["31[]"]
    assert encode(Packet(BINARY_EVENT, "/", ["a", BUF])) == [wire('51-["a",#0]'), BUF]
    assert encode(Packet(BINARY_ACK, "/", [BUF], 2)) == [wire("61-2[#0]"), BUF]


def test_encode_takes_any_bytes_like_and_tuples() -> None:
    packet = Packet(EVENT, "/", ("a", bytearray(b"x"), memoryview(b"y"), (1,)))
    assert encode(packet) == [wire('52-["a",#0,#1,[1]]'), b"x", b"y"]


def test_decoder_waits_for_every_attachment() -> None:
    decoder = Decoder()
    assert decoder.feed(wire('52-["a",#0,#1]')) is None
    assert decoder.waiting
    assert decoder.feed(b"x") is None
    assert decoder.feed(b"y") == Packet(EVENT, "/", ["a", b"x", b"y"])
    assert not decoder.waiting


def test_decoder_goes_on_after_a_binary_packet() -> None:
    messages = [wire('51-["a",#0]'), bytearray(b"x"), '2["b"]', wire("61-4[#0]"), memoryview(b"y")]
    results = feed_all(Decoder(), messages)
    assert [r for r in results if r is not None] == [
        Packet(EVENT, "/", ["a", b"x"]),
        Packet(EVENT, "/", ["b"]),
        Packet(ACK, "/", [b"y"], 4),
    ]


def test_decoder_allows_max_attachments() -> None:
    assert Decoder(max_attachments=2).feed(wire('52-["a",#0,#1]')) is None


# -- malformed input -----------------------------------------------------------------------------

MALFORMED_TEXT = [
    # the type
    *["", "7", "9", "x", ' 2["a"]', '٢["a"]', '-2["a"]'],
    # a payload of the wrong type for the packet type
    *["2", "2[]", "2[1]", "2[null]", '2[["a"]]', "2{}", '2"a"', "2/admin,", "2/admin", "2/admin,12"],
    *["3[]", '3["a"]', '3/admin,["a"]', "31{}", '31"a"', "31", "31null"],
    *["0[]", '0"x"', "01", "00", "0true", '0/admin,1{"a":1}'],
    *["1{}", "1[]", '1"x"', "11", "1/admin,1"],
    *["4", "4[]", "41", '41"x"', "4null", "412[]"],
    # broken JSON
    *['2["a"', '2["a",]', "2['a']", '2["a"]x', '2["a"]["b"]', '2["\\x41"]', "2[undefined]", '0{"a":1,}'],
    # NaN and Infinity are not JSON, nor numbers that overflow to infinity
    *['2["a",NaN]', '2["a",Infinity]', '2["a",-Infinity]', '0{"n":NaN}', '4{"m":Infinity}'],
    *['2["a",1e400]', '2["a",-1e400]', '2["a",{"x":[1E999]}]', "3/x,1[123456789e999]"],
    # ack ids: at most 2**53 - 1, at most 16 digits
    *["2" + "9" * 17 + '["a"]', f'2{MAX_ACK_ID + 1}["a"]', "2" + "0" * 17 + '["a"]', "2" + "1" * 100_000 + '["a"]'],
    *[f"3{2**64}[]", f"3/admin,{10**30}[]"],
    # deep nesting and numbers too long to read
    *["2" + "[" * 100_000, '2["a",' + "[" * 100_000 + "]" * 100_000 + "]", "0" + '{"a":' * 100_000],
    '2["a",' + "1" * 5000 + "]",
    # the attachment count
    *["5", "5-", '5-["a"]', '5x-["a"]', '5["a"]', '51["a"]', '5-1["a"]', '5١-["a"]', '5+1-["a"]'],
    *['51234567-["a"]', "6", "61-[]", "61-1{}", '6-1["a"]'],
]


@pytest.mark.parametrize("text", MALFORMED_TEXT)
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(ProtocolError):
        Decoder().feed(text)


MALFORMED_STREAMS = {
    "attachment without a binary packet": [b"x"],
    "empty attachment without a binary packet": [memoryview(b"")],
    "attachment after a complete packet": ['2["a"]', bytearray(b"x")],
    "text while attachments are expected": [wire('52-["a",#0,#1]'), b"x", '2["b"]'],
    "binary header while attachments are expected": [wire('51-["a",#0]'), wire('51-["a",#0]')],
    "more attachments than placeholders": [wire('52-["a",#0]'), b"x", b"y"],
    "fewer attachments than placeholders": [wire('51-["a",#0,#1]'), b"x"],
    "placeholder but no attachment": [wire('50-["a",#0]')],
    "num past the end": [wire('51-["a",#1]'), b"x"],
    "negative num": ['51-["a",{"_placeholder":true,"num":-1}]', b"x"],
    "num as text": ['51-["a",{"_placeholder":true,"num":"0"}]', b"x"],
    "num as float": ['51-["a",{"_placeholder":true,"num":0.0}]', b"x"],
    "num as bool": ['51-["a",{"_placeholder":true,"num":false}]', b"x"],
    "num as null": ['51-["a",{"_placeholder":true,"num":null}]', b"x"],
    "num missing": ['51-["a",{"_placeholder":true}]', b"x"],
    "placeholder with extra keys": ['51-["a",{"_placeholder":true,"num":0,"x":1}]', b"x"],
    "placeholder as event name": [wire("51-[#0]"), b"x"],
    "attachment as int": [wire('51-["a",#0]'), 3],  # regression: bytes(3) became b"\0\0\0"
    "attachment as list": [wire('51-["a",#0]'), [1, 2]],
    "attachment as None": [wire('51-["a",#0]'), None],
    "text as bytes": [b'2["a"]'],
    "text as None": [None],
    "text as list": [["2", "a"]],
}


@pytest.mark.parametrize("messages", MALFORMED_STREAMS.values(), ids=MALFORMED_STREAMS.keys())
def test_malformed_stream_is_refused(messages: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        feed_all(Decoder(), messages)


def test_too_many_attachments_are_refused() -> None:
    with pytest.raises(ProtocolError):
        Decoder(max_attachments=2).feed(wire('53-["a",#0,#1,#2]'))


@pytest.mark.parametrize("text", [b'2["a"]', None, 2, ["2"]])
def test_decode_text_refuses_non_text(text: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_text(text)


@pytest.mark.parametrize("depth", [400, 900, 2000, 100_000])
def test_deeply_nested_binary_data_is_refused_or_decoded(depth: int) -> None:
    # regression: 500 nested lists around a placeholder parsed, then RecursionError escaped
    text = '51-["e",' + "[" * depth + wire("#0") + "]" * depth + "]"
    try:
        packet = decoded([text, b"x"])
    except ProtocolError:
        return
    assert packet is not None
    assert nesting(packet.data[1]) == (depth, b"x")


# -- strategies ----------------------------------------------------------------------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
keys = st.text(max_size=8).filter(lambda key: key != "_placeholder")


def json_trees(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=4),
        max_leaves=12,
    )


plain = json_trees(json_leaves)
with_binary = json_trees(json_leaves | st.binary(max_size=12))
objects = st.dictionaries(keys, plain, max_size=4)
namespaces = st.just("/") | st.text(st.characters(codec="utf-8", exclude_characters=","), max_size=10).map(
    lambda name: "/" + name
)
ack_ids = st.integers(0, MAX_ACK_ID)
event_data = st.builds(lambda name, args: [name, *args], st.text(max_size=10), st.lists(with_binary, max_size=4))

valid_packets = st.one_of(
    st.builds(Packet, st.just(CONNECT), namespaces, st.none() | objects),
    st.builds(Packet, st.just(DISCONNECT), namespaces),
    st.builds(Packet, st.just(CONNECT_ERROR), namespaces, st.text(max_size=20) | objects),
    st.builds(Packet, st.just(EVENT), namespaces, event_data, st.none() | ack_ids),
    st.builds(Packet, st.just(ACK), namespaces, st.lists(with_binary, max_size=4), ack_ids),
)
binary_events = st.builds(
    lambda ns, name, blob, args, ack: Packet(EVENT, ns, [name, blob, *args], ack),
    namespaces,
    st.text(max_size=5),
    st.binary(max_size=8),
    st.lists(with_binary, max_size=3),
    st.none() | ack_ids,
)
binary_acks = st.builds(
    lambda ns, blob, args, ack: Packet(ACK, ns, [*args, {"blob": blob}], ack),
    namespaces,
    st.binary(max_size=8),
    st.lists(with_binary, max_size=3),
    ack_ids,
)
binary_packets = binary_events | binary_acks

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E999", "-123456789e999", "1e+309"]
junk = st.none() | st.integers() | st.floats() | st.booleans() | st.lists(st.integers(0, 255), max_size=3) | objects

# Near-valid packets: every field drawn from good values and from junk of the wrong type.
fake_placeholders = st.fixed_dictionaries(
    {"_placeholder": st.just(True) | json_leaves, "num": st.integers(-2, 4) | json_leaves},
    optional={"x": json_leaves},
)
near_texts = st.tuples(
    st.sampled_from("0123456") | st.text(max_size=1),
    st.just("") | st.integers(-1, 12).map("{}-".format) | st.text(max_size=3).map("{}-".format),
    st.just("") | namespaces.map("{},".format) | st.text(max_size=5),
    st.just("") | st.integers(0, 10**20).map(str),
    st.just("") | json_trees(json_leaves | fake_placeholders).map(json.dumps) | st.sampled_from(NON_FINITE),
).map("".join)
followers = st.lists(st.binary(max_size=4) | st.text(max_size=6), max_size=4)


# -- round trips ---------------------------------------------------------------------------------


@examples(600)
@given(valid_packets)
def test_any_valid_packet_round_trips_through_the_decoder(packet: Packet) -> None:
    messages = encode(packet)
    assert isinstance(messages[0], str)
    assert all(isinstance(attachment, bytes) for attachment in messages[1:])
    assert feed_all(Decoder(), messages) == [None] * (len(messages) - 1) + [packet]


@examples(300)
@given(st.lists(valid_packets | binary_packets, max_size=6))
def test_a_stream_of_packets_decodes_in_order(packets: list[Packet]) -> None:
    decoder = Decoder()
    messages = [message for packet in packets for message in encode(packet)]
    assert [p for p in feed_all(decoder, messages) if p is not None] == packets
    assert not decoder.waiting


@examples(500)
@given(st.integers(0, 10**30), namespaces)
def test_ack_ids_past_2_53_are_refused(ack: int, namespace: str) -> None:
    text = encode(Packet(EVENT, namespace, ["e"], ack))[0]
    assert isinstance(text, str)
    if ack > MAX_ACK_ID:
        with pytest.raises(ProtocolError):
            decode_text(text)
    else:
        assert decode_text(text) == (Packet(EVENT, namespace, ["e"], ack), 0)


# -- malformed input, fuzzed ---------------------------------------------------------------------


@examples(1000)
@given(st.text())
def test_any_text_is_decoded_or_refused(text: str) -> None:
    outcome = decode_or_refuse(text)
    assert outcome is None or len(outcome) == 1


@examples(800)
@given(near_texts, followers)
def test_near_valid_packets_are_decoded_or_refused(text: str, more: list[str | bytes]) -> None:
    outcome = decode_or_refuse(text, *more)
    assert outcome is None or len(outcome) == 1 + len(more)


@examples(300)
@given(valid_packets | binary_packets)
def test_truncated_packets_are_decoded_or_refused(packet: Packet) -> None:
    text, *attachments = encode(packet)
    assert decode_or_refuse(text, *attachments) is not None
    for end in range(len(text)):
        decode_or_refuse(text[:end])
    if attachments:
        assert feed_all(Decoder(), [text, *attachments[:-1]])[-1] is None


ACCEPTS: dict[str, Callable[[Any], bool]] = {
    "0/n,": lambda data: data is None or isinstance(data, dict),
    "1/n,": lambda data: data is None,
    "2/n,": lambda data: isinstance(data, list) and bool(data) and isinstance(data[0], str),
    "2/n,7": lambda data: isinstance(data, list) and bool(data) and isinstance(data[0], str),
    "3/n,7": lambda data: isinstance(data, list),
    "3/n,": lambda data: False,  # an ACK needs its id
    "4/n,": lambda data: isinstance(data, (str, dict)),
    "50-/n,": lambda data: isinstance(data, list) and bool(data) and isinstance(data[0], str),
    "60-/n,7": lambda data: isinstance(data, list),
}


@examples(500)
@given(st.sampled_from(sorted(ACCEPTS)), plain)
def test_wrong_payload_types_are_refused_for_every_packet_type(head: str, data: Any) -> None:
    text = head + json.dumps(data)
    if ACCEPTS[head](data):
        assert decode_text(text)[0].data == data
    else:
        with pytest.raises(ProtocolError):
            decode_text(text)


@examples(500)
@given(st.sampled_from(NON_FINITE), st.integers(0, 30), st.booleans(), namespaces, st.none() | ack_ids)
def test_nan_and_infinity_are_refused(literal: str, depth: int, in_object: bool, ns: str, ack: int | None) -> None:
    value = "[" * depth + literal + "]" * depth
    if in_object:
        value = '{"k":' + value + "}"
    text = str(encode(Packet(EVENT, ns, ["e"], ack))[0])
    with pytest.raises(ProtocolError):
        decode_text(text[:-1] + "," + value + "]")


@examples(100)
@given(st.integers(1, 5000), st.booleans())
def test_deep_nesting_is_decoded_or_refused(depth: int, binary: bool) -> None:
    inner = wire("#0") if binary else ""
    text = ("51-" if binary else "2") + '["e",' + "[" * depth + inner + "]" * depth + "]"
    try:
        packet = decoded([text, b"x"] if binary else [text])
    except ProtocolError:
        return
    assert packet is not None
    assert nesting(packet.data[1]) == (depth, b"x" if binary else [])


@examples(300)
@given(binary_packets, st.integers(0, 12))
def test_lying_attachment_counts_are_refused(packet: Packet, claimed: int) -> None:
    text, *attachments = encode(packet)
    assume(claimed != len(attachments))
    assert isinstance(text, str)
    lie = text[0] + str(claimed) + text[text.index("-") :]
    blobs = (attachments + [b"x"] * claimed)[:claimed]
    with pytest.raises(ProtocolError):
        feed_all(Decoder(), [lie, *blobs])


@examples(500)
@given(st.integers(0, 4), st.lists(st.integers(-2, 5) | st.sampled_from(["0", 0.0, 1.5, True, None, [0]]), max_size=5))
def test_lying_placeholder_nums_are_refused(count: int, nums: list[Any]) -> None:
    blobs = [bytes([n]) for n in range(count)]
    text = f"5{count}-" + json.dumps(["e", *map(placeholder, nums)])
    honest = all(type(n) is int and 0 <= n < count for n in nums) and set(nums) == set(range(count))
    if honest:
        assert decoded([text, *blobs]) == Packet(EVENT, "/", ["e", *(blobs[n] for n in nums)])
    else:
        with pytest.raises(ProtocolError):
            feed_all(Decoder(), [text, *blobs])


@examples(300)
@given(st.lists(valid_packets, max_size=2), st.binary(), st.sampled_from([bytes, bytearray, memoryview]))
def test_attachments_without_a_binary_packet_are_refused(before: list[Packet], blob: bytes, kind: type) -> None:
    decoder = Decoder()
    for packet in before:
        feed_all(decoder, encode(packet))
    with pytest.raises(ProtocolError):
        decoder.feed(kind(blob))


@examples(300)
@given(binary_packets, st.data(), st.text())
def test_text_while_attachments_are_expected_is_refused(packet: Packet, data: st.DataObject, intruder: str) -> None:
    text, *attachments = encode(packet)
    received = data.draw(st.integers(0, len(attachments) - 1))
    decoder = Decoder()
    feed_all(decoder, [text, *attachments[:received]])
    assert decoder.waiting
    with pytest.raises(ProtocolError):
        decoder.feed(intruder)


@examples(300)
@given(junk, binary_packets)
def test_wrong_python_types_are_refused(value: Any, packet: Packet) -> None:
    with pytest.raises(ProtocolError):
        decode_text(value)
    with pytest.raises(ProtocolError):
        Decoder().feed(value)
    decoder = Decoder()
    decoder.feed(encode(packet)[0])
    with pytest.raises(ProtocolError):
        decoder.feed(value)
