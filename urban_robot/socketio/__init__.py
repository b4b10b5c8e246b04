"""Socket.IO v5 for trio: the sans-IO codec and a server shaped like python-socketio's.

The codec (``Packet``, ``PacketType``, ``encode``, ``Decoder``) imports no trio.
"""

from .._errors import ProtocolError as ProtocolError
from ..web._engine import Reason as Reason
from ._namespace import AsyncNamespace as AsyncNamespace
from ._namespace import Namespace as Namespace
from ._packets import (
    Decoder as Decoder,
)
from ._packets import (
    Packet as Packet,
)
from ._packets import (
    PacketType as PacketType,
)
from ._packets import (
    decode_text as decode_text,
)
from ._packets import (
    encode as encode,
)
from ._server import (
    ConnectionRefusedError as ConnectionRefusedError,
)
from ._server import (
    Disconnected as Disconnected,
)
from ._server import (
    Server as Server,
)

AsyncServer = Server
