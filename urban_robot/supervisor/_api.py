"""Admin HTTP actions on the supervisor's port (the CLI's subcommands call them: docs/api.md).

Every action needs the admin credential as ``Authorization: Bearer <token>``,
compared in constant time; without it the answer is 401 and nothing happens.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from ..web import Request, Response

RouteHandler = Callable[[Request], Awaitable[Response]]


def _json(status: int, body: dict[str, object]) -> Response:
    return Response(status, json.dumps(body).encode(), content_type="application/json")


def authorized(request: Request, admin_token: str | None) -> bool:
    header = request.header("authorization") or ""
    scheme, _, token = header.partition(" ")
    if not admin_token or scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), admin_token.encode())


def admin_route(
    admin_token: str | None,
    action: Callable[[], dict[str, object]],
    *,
    wait: Callable[[], Awaitable[dict[str, object]]] | None = None,
) -> RouteHandler:
    """A POST route that runs ``action`` (sync, quick) for an authorized caller: 202, it is under way.

    With ``wait``, ``?wait=1`` runs that instead and answers 200 with its outcome once it is done.
    """

    async def handle(request: Request) -> Response:
        if not authorized(request, admin_token):
            return _json(401, {"error": "admin credential missing or wrong: send Authorization: Bearer <admin token>"})
        if wait is not None and parse_qs(request.query).get("wait", [""])[-1] in ("1", "true", "yes"):
            return _json(200, await wait())
        return _json(202, action())

    return handle
