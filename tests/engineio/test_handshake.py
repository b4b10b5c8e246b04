"""The Engine.IO v4 handshake: query validation and the OPEN packet.

https://socket.io/docs/v4/engine-io-protocol/#handshake
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings, strategies as st

from urban_robot.engineio import EngineError, EngineQuery, PacketType, encode_packet, open_packet, parse_query
from urban_robot.engineio._handshake import TRANSPORTS, EngineErrorCode

SPEC_OPEN = (
    '0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],'
    '"pingInterval":25000,"pingTimeout":5000,"maxPayload":1000000}'
)


def refusal(query: str | bytes) -> EngineError:
    with pytest.raises(EngineError) as info:
        parse_query(query)
    return info.value


# -- parse_query ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("EIO=4&transport=polling&t=N8hyd6w", EngineQuery("polling", None)),
        ("EIO=4&transport=polling&t=N8hyd7H&sid=lv_VI97HAXpY6yYWAAAC", EngineQuery("polling", "lv_VI97HAXpY6yYWAAAC")),
        ("EIO=4&transport=websocket&sid=lv_VI97HAXpY6yYWAAAC", EngineQuery("websocket", "lv_VI97HAXpY6yYWAAAC")),
        ("EIO=4&transport=websocket", EngineQuery("websocket", None)),
        ("transport=polling&EIO=4&sid=", EngineQuery("polling", None)),
        (b"EIO=4&transport=polling&sid=a%2Fb", EngineQuery("polling", "a/b")),
    ],
)
def test_parse_query_accepts(query: str | bytes, expected: EngineQuery) -> None:
    assert parse_query(query) == expected


@pytest.mark.parametrize(
    "query", ["", "transport=polling", "EIO=3&transport=polling", "EIO=&transport=polling", "EIO=04&transport=polling"]
)
def test_parse_query_refuses_other_protocol_versions(query: str) -> None:
    error = refusal(query)
    assert error.code is EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION
    assert error.status == 400


@pytest.mark.parametrize("query", ["EIO=4", "EIO=4&transport=", "EIO=4&transport=flashsocket", "EIO=4&transport=WS"])
def test_parse_query_refuses_unknown_transports(query: str) -> None:
    error = refusal(query)
    assert error.code is EngineErrorCode.UNKNOWN_TRANSPORT
    assert error.status == 400


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (EngineErrorCode.UNKNOWN_TRANSPORT, "Transport unknown"),
        (EngineErrorCode.UNKNOWN_SID, "Session ID unknown"),
        (EngineErrorCode.BAD_HANDSHAKE_METHOD, "Bad handshake method"),
        (EngineErrorCode.BAD_REQUEST, "Bad request"),
        (EngineErrorCode.FORBIDDEN, "Forbidden"),
        (EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version"),
    ],
)
def test_engine_error_body_uses_the_reference_codes(code: EngineErrorCode, message: str) -> None:
    error = EngineError(code)
    assert str(error) == message
    assert json.loads(error.body()) == {"code": int(code), "message": message}


def test_engine_error_keeps_its_status() -> None:
    assert EngineError(EngineErrorCode.FORBIDDEN, status=403).status == 403


# -- open_packet ---------------------------------------------------------------------------------


def test_open_packet_matches_the_spec_example() -> None:
    packet = open_packet(
        "lv_VI97HAXpY6yYWAAAC", upgrades=["websocket"], ping_interval=25, ping_timeout=5, max_payload=1_000_000
    )
    assert packet.type is PacketType.OPEN
    assert encode_packet(packet) == SPEC_OPEN


def test_open_packet_without_upgrades() -> None:
    packet = open_packet("abc", upgrades=[], ping_interval=0.3, ping_timeout=0.2, max_payload=100)
    assert packet.data == '{"sid":"abc","upgrades":[],"pingInterval":300,"pingTimeout":200,"maxPayload":100}'


def test_open_packet_rounds_to_the_nearest_millisecond() -> None:
    # regression: int(1.005 * 1000) truncated 1004.9999999999999 to 1004
    packet = open_packet("abc", upgrades=[], ping_interval=1.005, ping_timeout=1.001, max_payload=1)
    body = json.loads(packet.data)
    assert (body["pingInterval"], body["pingTimeout"]) == (1005, 1001)


# -- properties ----------------------------------------------------------------------------------


@settings(max_examples=1000)
@given(st.integers(0, 10**8), st.integers(0, 10**8))
def test_open_packet_sends_whole_milliseconds_exactly(interval_ms: int, timeout_ms: int) -> None:
    packet = open_packet(
        "s", upgrades=[], ping_interval=interval_ms / 1000, ping_timeout=timeout_ms / 1000, max_payload=1
    )
    body = json.loads(packet.data)
    assert (body["pingInterval"], body["pingTimeout"]) == (interval_ms, timeout_ms)


@settings(max_examples=500)
@given(st.sampled_from(TRANSPORTS), st.text(min_size=1), st.dictionaries(st.sampled_from(["t", "j", "b64"]), st.text()))
def test_parse_query_round_trips_urlencoded_queries(transport: str, sid: str, extra: dict[str, str]) -> None:
    query = urlencode({**extra, "EIO": "4", "transport": transport, "sid": sid})
    assert parse_query(query) == EngineQuery(transport, sid)
    assert parse_query(query.encode("ascii")) == EngineQuery(transport, sid)


@settings(max_examples=1000)
@given(st.text() | st.binary())
def test_any_query_is_accepted_or_refused_with_an_engine_error(query: str | bytes) -> None:
    try:
        result = parse_query(query)
    except EngineError as error:
        assert json.loads(error.body())["code"] == int(error.code)
        return
    assert result.transport in TRANSPORTS
    assert result.sid is None or isinstance(result.sid, str)
