"""Socket.IO v5: the sans-IO codec, and a trio server shaped like python-socketio's.

Two layers, one face:

- the codec (``_packets``: ``Packet``, ``PacketType``, ``encode``, ``Decoder``, ``decode_text``): plain
  values, no I/O, no trio (``tests/test_sans_io.py`` checks it). Imported with this package.
- the server (``_server``, ``_namespace``: ``Server``, ``Namespace``, ``Later``, ...): namespaces,
  handlers, acks and rooms on the Engine.IO server (``urban_robot.engineio``) and the HTTP layer
  (``urban_robot.web``). Loaded on first use of one of its names, so the codec's users (the worker
  client, the protocol) never load the server stack (``tests/client/test_imports.py`` checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import ProtocolError as ProtocolError
from ._packets import (
    RESERVED_EVENTS as RESERVED_EVENTS,
    Decoder as Decoder,
    Packet as Packet,
    PacketType as PacketType,
    decode_text as decode_text,
    encode as encode,
)

if TYPE_CHECKING:  # the server's names, for type checkers; at run time ``__getattr__`` loads them
    from ..engineio import Reason as Reason
    from ._namespace import AsyncNamespace as AsyncNamespace, Namespace as Namespace
    from ._server import (
        AsyncServer as AsyncServer,
        ConnectionRefusedError as ConnectionRefusedError,
        Disconnected as Disconnected,
        Later as Later,
        Server as Server,
    )

_NAMESPACE_NAMES = frozenset({"AsyncNamespace", "Namespace"})
_SERVER_NAMES = frozenset({"AsyncServer", "ConnectionRefusedError", "Disconnected", "Later", "Server"})


def __getattr__(name: str) -> Any:
    if name in _NAMESPACE_NAMES:
        from . import _namespace

        return getattr(_namespace, name)
    if name == "Reason":  # why a session ended: Engine.IO's, as python-socketio re-exports it
        from .. import engineio

        return engineio.Reason
    if name in _SERVER_NAMES:
        from . import _server

        return getattr(_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
