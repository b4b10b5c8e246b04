"""The Engine.IO v4 handshake: validating a request's query, building OPEN.

A request is refused with HTTP 400 and a JSON body ``{"code": n, "message": ...}``
using the reference server's codes, so clients show the same errors.
"""

from __future__ import annotations

import enum
import json
from urllib.parse import parse_qsl

import attrs

from ._packets import Packet, PacketType

TRANSPORTS = ("polling", "websocket")


class EngineErrorCode(enum.IntEnum):
    UNKNOWN_TRANSPORT = 0
    UNKNOWN_SID = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_PROTOCOL_VERSION = 5


_MESSAGES = {
    EngineErrorCode.UNKNOWN_TRANSPORT: "Transport unknown",
    EngineErrorCode.UNKNOWN_SID: "Session ID unknown",
    EngineErrorCode.BAD_HANDSHAKE_METHOD: "Bad handshake method",
    EngineErrorCode.BAD_REQUEST: "Bad request",
    EngineErrorCode.FORBIDDEN: "Forbidden",
    EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}


class EngineError(Exception):
    """A request the Engine.IO endpoint refuses with HTTP ``status``."""

    def __init__(self, code: EngineErrorCode, status: int = 400) -> None:
        super().__init__(_MESSAGES[code])
        self.code = code
        self.status = status

    def body(self) -> bytes:
        return json.dumps({"code": int(self.code), "message": _MESSAGES[self.code]}).encode()


@attrs.frozen
class EngineQuery:
    transport: str
    sid: str | None


def parse_query(query_string: str | bytes) -> EngineQuery:
    """Validate ``EIO``, ``transport`` and ``sid`` of an Engine.IO request."""
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    params = dict(parse_qsl(query_string, keep_blank_values=True))
    if params.get("EIO") != "4":
        raise EngineError(EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION)
    transport = params.get("transport", "")
    if transport not in TRANSPORTS:
        raise EngineError(EngineErrorCode.UNKNOWN_TRANSPORT)
    sid = params.get("sid") or None
    return EngineQuery(transport=transport, sid=sid)


def open_packet(
    sid: str, *, upgrades: list[str], ping_interval: float, ping_timeout: float, max_payload: int
) -> Packet:
    """The OPEN packet that starts a session (intervals in seconds, sent as ms)."""
    body = {
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": round(ping_interval * 1000),
        "pingTimeout": round(ping_timeout * 1000),
        "maxPayload": max_payload,
    }
    return Packet(PacketType.OPEN, json.dumps(body, separators=(",", ":")))
