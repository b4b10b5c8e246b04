"""Socket.IO v5 for trio: the sans-IO codec and a server shaped like python-socketio's.

The codec (``Packet``, ``PacketType``, ``encode``, ``Decoder``) imports no trio.
"""

from .._errors import ProtocolError as ProtocolError
from ..web._engine import Reason as Reason
from ._namespace import AsyncNamespace as AsyncNamespace, Namespace as Namespace
from ._packets import (
    Decoder as Decoder,
    Packet as Packet,
    PacketType as PacketType,
    decode_text as decode_text,
    encode as encode,
)
from ._server import (
    ConnectionRefusedError as ConnectionRefusedError,
    Disconnected as Disconnected,
    Later as Later,
    Server as Server,
)

AsyncServer = Server
