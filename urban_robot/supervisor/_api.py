"""Admin HTTP actions on the supervisor's port (the CLI's subcommands call them: docs/api.md).

Every action needs the admin credential as ``Authorization: Bearer <token>``,
compared in constant time; without it the answer is 401 and nothing happens.
An address whose wrong tokens pass ``LoginThrottle.free`` is answered 429 with
``Retry-After`` (the token unchecked) until its exponential wait is over.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qs

import trio

from ..web import Request, Response
from ._auth import LoginThrottle

RouteHandler = Callable[[Request], Awaitable[Response]]


def _json(status: int, body: Mapping[str, object], headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(body).encode(), content_type="application/json", headers=headers)


UNAUTHORIZED = {"error": "admin credential missing or wrong: send Authorization: Bearer <admin token>"}


def refusal(request: Request, admin_token: str | None, throttle: LoginThrottle | None) -> Response | None:
    """None if ``request`` carries the admin credential; else its answer: 401, or 429 while its address waits."""
    peer = request.client[0] if request.client else "?"
    now = trio.current_time()
    if throttle is not None and (wait := throttle.wait(peer, now)) > 0:
        seconds = math.ceil(wait)
        body = {"error": f"too many wrong admin credentials from {peer}: retry in {seconds} s"}
        return _json(429, body, (("Retry-After", str(seconds)),))
    if authorized(request, admin_token):
        return None
    if throttle is not None and request.header("authorization"):  # a try, not a browser that knows no better
        throttle.failed(peer, now)
    return _json(401, UNAUTHORIZED)


def authorized(request: Request, admin_token: str | None) -> bool:
    header = request.header("authorization") or ""
    scheme, _, token = header.partition(" ")
    if not admin_token or scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), admin_token.encode())


COOKIE = "urban_robot_dashboard"
_COOKIE_CONTEXT = b"urban-robot dashboard cookie v1"


def cookie_value(token: str) -> str:
    """What the dashboard's cookie holds for ``token``: derived from it, never the token itself."""
    return hmac.new(token.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def cookie_from(header: str | None) -> str | None:
    """Our cookie's value in a ``Cookie`` header, or None."""
    for part in (header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def cookie_matches(header: str | None, admin_token: str | None) -> bool:
    """Whether a ``Cookie`` header holds the dashboard cookie for ``admin_token`` (constant-time)."""
    given = cookie_from(header)
    if not admin_token or given is None or len(given) != 64:
        return False
    return hmac.compare_digest(given.encode(), cookie_value(admin_token).encode())


def admin_route(
    admin_token: str | None,
    action: Callable[[], dict[str, object]],
    throttle: LoginThrottle | None = None,
    *,
    wait: Callable[[], Awaitable[dict[str, object]]] | None = None,
) -> RouteHandler:
    """A POST route that runs ``action`` (sync, quick) for an authorized caller: 202, it is under way.

    With ``wait``, ``?wait=1`` runs that instead and answers 200 with its outcome once it is done.
    """

    async def handle(request: Request) -> Response:
        refused = refusal(request, admin_token, throttle)
        if refused is not None:
            return refused
        if wait is not None and parse_qs(request.query).get("wait", [""])[-1] in ("1", "true", "yes"):
            return _json(200, await wait())
        return _json(202, action())

    return handle
