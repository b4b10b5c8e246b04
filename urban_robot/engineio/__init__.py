"""Engine.IO v4: the sans-IO codec, and the trio server built on it.

Two layers, one face:

- the codec (``_packets``, ``_handshake``): packets, polling payloads, the handshake. Plain values, no
  I/O, no trio, no clock (``tests/test_sans_io.py`` checks it). Imported with this package.
- the server (``_server``: ``EngineServer``, ``Session``, ``Reason``): sessions over HTTP long-polling
  and WebSocket, on trio and ``urban_robot.web``. Loaded on first use of one of its names, so the
  codec's users (the worker client, the protocol) never load the server stack
  (``tests/client/test_imports.py`` checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import ProtocolError as ProtocolError
from ._handshake import (
    EngineError as EngineError,
    EngineQuery as EngineQuery,
    open_packet as open_packet,
    parse_query as parse_query,
)
from ._packets import (
    RECORD_SEPARATOR as RECORD_SEPARATOR,
    Packet as Packet,
    PacketType as PacketType,
    decode_packet as decode_packet,
    decode_payload as decode_payload,
    encode_packet as encode_packet,
    encode_payload as encode_payload,
)

if TYPE_CHECKING:  # the server's names, for type checkers; at run time ``__getattr__`` loads them
    from ._server import (
        PREAUTH_MESSAGE as PREAUTH_MESSAGE,
        EngineHandler as EngineHandler,
        EngineServer as EngineServer,
        Reason as Reason,
        Session as Session,
    )

_SERVER_NAMES = frozenset({"PREAUTH_MESSAGE", "EngineHandler", "EngineServer", "Reason", "Session"})


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        from . import _server

        return getattr(_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
