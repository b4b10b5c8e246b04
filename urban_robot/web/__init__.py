"""The trio HTTP layer: HTTP/1.1 (h11) and WebSocket (wsproto) on one port, and the router.

``ConnectionGate`` accepts and bounds connections and parses requests; it hands each one to an
``HttpApp``, in practice a ``Router``: plain routes (``add_route``: status API, webhook, dashboard) and
mounted apps (``mount``: the Engine.IO server, ``urban_robot.engineio.EngineServer``, under
``/socket.io/``). What runs over a WebSocket is the mounted app's business.
"""

from ._http import (
    ConnectionGate as ConnectionGate,
    HttpApp as HttpApp,
    Limits as Limits,
    PeerWatch as PeerWatch,
    Request as Request,
    Response as Response,
    Upgrade as Upgrade,
)
from ._router import ROUTE_BODY as ROUTE_BODY, RouteHandler as RouteHandler, Router as Router
from ._websocket import WebSocket as WebSocket, WebSocketClosed as WebSocketClosed
