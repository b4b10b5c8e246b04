"""The trio listener: HTTP/1.1 (h11) and WebSocket (wsproto) on one port."""

from ._http import Limits as Limits, Request as Request, Response as Response
