"""Sans-IO Engine.IO v4: packets, polling payloads, the handshake. No I/O, no trio."""

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
