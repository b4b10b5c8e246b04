"""Which handler answers a request: plain HTTP routes by method and path, and mounted apps by path.

A mounted app (the Engine.IO server under ``/socket.io/``) gets every request and WebSocket upgrade
for its path, with or without the trailing slash; a route (status API, webhook, dashboard page) gets
one method on one path. Each says what body it takes, from the head alone (``HttpApp.body_limit``), so
a body over it is answered 413 before it is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ._http import HttpApp, PeerWatch, Request, Response, Upgrade

ROUTE_BODY = 4096  # an added route's body limit unless it says otherwise (admin actions carry none)
RouteHandler = Callable[[Request], Awaitable[Response]]


class Router:
    """An ``HttpApp`` that dispatches to ``add_route`` handlers and ``mount``-ed apps."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], tuple[RouteHandler, int]] = {}
        self._mounts: dict[str, HttpApp] = {}

    def add_route(self, method: str, path: str, handler: RouteHandler, *, max_body: int = ROUTE_BODY) -> None:
        """Serve ``handler`` for ``METHOD path``; a body over ``max_body`` bytes is answered 413 unread."""
        self._routes[(method.upper(), path)] = (handler, max_body)

    def mount(self, path: str, app: HttpApp) -> None:
        """Hand every request for ``path`` (with or without its trailing slash) to ``app``."""
        self._mounts[_with_slash(path)] = app

    def _mounted(self, request: Request) -> HttpApp | None:
        return self._mounts.get(_with_slash(request.path))

    def body_limit(self, request: Request) -> int:
        app = self._mounted(request)
        if app is not None:
            return app.body_limit(request)
        route = self._routes.get((request.method, request.path))
        return route[1] if route is not None else 0

    def too_large(self, request: Request) -> Response:
        app = self._mounted(request)
        return app.too_large(request) if app is not None else Response.text(413, "Payload too large")

    async def handle_request(self, request: Request, peer: PeerWatch) -> Response:
        app = self._mounted(request)
        if app is not None:
            return await app.handle_request(request, peer)
        route = self._routes.get((request.method, request.path))
        if route is not None:
            return await route[0](request)
        if any(path == request.path for _, path in self._routes):
            return Response.text(405, "Method not allowed")
        return Response.text(404, "Not found")

    async def handle_websocket(self, request: Request, upgrade: Upgrade) -> Response | None:
        app = self._mounted(request)
        if app is not None:
            return await app.handle_websocket(request, upgrade)
        return Response.text(404, "Not found")


def _with_slash(path: str) -> str:
    return path if path.endswith("/") else path + "/"
