"""Sans-IO Engine.IO v4: packets, polling payloads, the handshake. No I/O, no trio."""

from .._errors import ProtocolError as ProtocolError
from ._handshake import (
    EngineError as EngineError,
)
from ._handshake import (
    EngineQuery as EngineQuery,
)
from ._handshake import (
    open_packet as open_packet,
)
from ._handshake import (
    parse_query as parse_query,
)
from ._packets import (
    RECORD_SEPARATOR as RECORD_SEPARATOR,
)
from ._packets import (
    Packet as Packet,
)
from ._packets import (
    PacketType as PacketType,
)
from ._packets import (
    decode_packet as decode_packet,
)
from ._packets import (
    decode_payload as decode_payload,
)
from ._packets import (
    encode_packet as encode_packet,
)
from ._packets import (
    encode_payload as encode_payload,
)
