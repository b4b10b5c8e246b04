"""The trio listener: HTTP/1.1 (h11) and WebSocket (wsproto) on one port."""

from ._http import Limits as Limits
from ._http import Request as Request
from ._http import Response as Response
