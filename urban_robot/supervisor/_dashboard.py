"""The live dashboard: ``GET /`` (one static page) and the ``/dashboard`` Socket.IO namespace that feeds it.

The page (``dashboard.html``, package data) holds no data and no secret: inline CSS and JavaScript, no
build step, nothing fetched from anywhere but this port. ``GET /?token=...`` (the line ``python -m
urban_robot`` prints) is answered with a redirect to the clean ``/`` that sets an ``HttpOnly``,
``SameSite=Strict`` cookie derived from the token (``_api.cookie_value``), so the token leaves the
address bar, the history and any proxy's later log lines, and no script can read it. The page then
connects over a WebSocket to the namespace below (the browser sends the cookie with it). If the
WebSocket cannot be opened it falls back to ``GET /api/status`` once a second (the cookie again).

Why push over Socket.IO rather than let the page poll: the server speaks it already, on this port, and
a promotion then reaches the page one coalescing gap (``GAP``, 50 ms) after it happened instead of up
to a poll interval later.

The namespace ``/dashboard``:

- CONNECT needs the dashboard cookie on the WebSocket's request or ``auth = {"token": <admin token>}``,
  compared in constant time; anything else is refused with CONNECT_ERROR and nothing more is sent.
  Without an admin token configured, every dashboard is refused. Wrong tokens count against the
  address's ``LoginThrottle`` as for the admin API.
- Once connected: a ``status`` event with the body of ``GET /api/status`` (timeline included), again
  ``GAP`` after anything the tracker saw change (bursts coalesce into one), and every ``TICK`` seconds
  anyway (ages grow).
- It has no other handlers: what a dashboard sends is ignored. A dashboard is never a worker: workers
  live on ``/`` with secrets of their own, and nothing here reaches the core.

Each dashboard's pusher runs in its own connection's nursery (``server.start_task``): a slow browser
slows only its own updates, and the task ends with its connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.resources
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import trio

from ..logs import Throttled
from ..socketio import ConnectionRefusedError, Namespace
from ..web import Request, Response
from ._api import COOKIE, cookie_from, cookie_matches, cookie_value
from ._auth import LoginThrottle
from ._service import UrbanRobot
from ._status import StatusTracker, _ChildrenLike, _DeployerLike, _NotifierLike, status

log = logging.getLogger("urban_robot.dashboard")

NAMESPACE = "/dashboard"
TICK = 1.0  # seconds between snapshots when nothing happens (heartbeat and cache ages grow)
GAP = 0.05  # at most one snapshot per GAP seconds: a burst of actions becomes one push
REFUSED = "admin credential missing or wrong: open the dashboard URL printed at start"


def _sha256_sources(html: str, tag: str) -> list[str]:
    """CSP hash sources for each inline ``<tag>`` block: only this page's own code may run."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks]


def page_response(html: str) -> Response:
    """The page with headers that keep it to itself: no cache, no framing, no fetch but this origin."""
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {' '.join(_sha256_sources(html, 'script'))}",
            f"style-src {' '.join(_sha256_sources(html, 'style'))}",
            "img-src data:",
            "connect-src 'self'",  # CSP 3: 'self' covers ws:/wss: to this host and port
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    headers = (
        ("Cache-Control", "no-store"),
        ("Content-Security-Policy", policy),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
    )
    return Response(200, html.encode(), content_type="text/html; charset=utf-8", headers=headers)


CREDENTIAL_MARK = 'data-credential="none"'  # in dashboard.html's <body>: outside the hashed script and style


def exchange(token: str) -> Response:
    """``GET /?token=...``: the token becomes a cookie (derived, HttpOnly, SameSite=Strict) and the URL clean.

    A wrong token gets a cookie too (derived from it, so nothing is learnt from the answer); the page's
    WebSocket is then refused and it says so. Trying tokens this way is throttled with the CONNECT.
    """
    cookie = f"{COOKIE}={cookie_value(token[:512])}; Path=/; HttpOnly; SameSite=Strict"
    headers = (
        ("Location", "/"),
        ("Set-Cookie", cookie),
        ("Cache-Control", "no-store"),
        ("Referrer-Policy", "no-referrer"),
    )
    return Response(303, b"", headers=headers)


def token_matches(auth: Any, admin_token: str | None) -> bool:
    if not admin_token or not isinstance(auth, dict):
        return False
    token = auth.get("token")
    if not isinstance(token, str) or not token or len(token) > 512:
        return False
    return hmac.compare_digest(token.encode(), admin_token.encode())


class DashboardNamespace(Namespace):
    """``/dashboard``: snapshots pushed to authenticated dashboards; nothing taken from them."""

    def __init__(
        self,
        admin_token: str | None,
        snapshot: Callable[[], dict[str, Any]],
        *,
        tick: float = TICK,
        gap: float = GAP,
        throttle: LoginThrottle | None = None,
    ) -> None:
        super().__init__(NAMESPACE)
        self.admin_token = admin_token
        self.throttle = throttle
        self.snapshot = snapshot
        self.tick = tick
        self.gap = gap
        self.dashboards = 0
        self._changed = trio.Event()
        self.quiet = Throttled(log)  # refusals: at most a line per 10 s, with counts

    def poke(self, _changed: object = None) -> None:
        """Something shown may have changed: wake every pusher (each waits out its own gap)."""
        self._changed.set()
        self._changed = trio.Event()

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        peer, now = environ.get("REMOTE_ADDR", "?"), trio.current_time()
        if self.throttle is not None and self.throttle.wait(peer, now) > 0:
            raise ConnectionRefusedError("too many wrong admin tokens from this address: retry later")
        cookie = environ.get("HTTP_COOKIE")
        if not (token_matches(auth, self.admin_token) or cookie_matches(cookie, self.admin_token)):
            tried = cookie_from(cookie) is not None or (isinstance(auth, dict) and bool(auth.get("token")))
            if self.throttle is not None and tried:
                self.throttle.failed(peer, now)
            # INFO, as for refused workers: a stranger must not be able to fill Discord through the log bridge.
            self.quiet.info(
                "refused", "refused a dashboard from %s: bad or missing admin token", environ.get("REMOTE_ADDR", "?")
            )
            raise ConnectionRefusedError(REFUSED)
        self.server.start_task(sid, self._push, sid)

    async def _push(self, sid: str) -> None:
        self.dashboards += 1
        try:
            while sid in self.server.sockets:  # until it leaves the namespace or its connection goes
                changed = self._changed  # taken before the snapshot: a change after it wakes us at once
                await self.emit("status", self.snapshot(), to=sid)
                sent = trio.current_time()
                with trio.move_on_after(self.tick):
                    await changed.wait()
                await trio.sleep_until(sent + self.gap)
        finally:
            self.dashboards -= 1


def install_dashboard(
    robot: UrbanRobot,
    tracker: StatusTracker,
    *,
    admin_token: str | None,
    deployer: _DeployerLike | None = None,
    children: _ChildrenLike | None = None,
    notifier: _NotifierLike | None = None,
    tick: float = TICK,
    gap: float = GAP,
) -> DashboardNamespace:
    """Serve ``GET /`` and the ``/dashboard`` namespace on the supervisor's port (after ``install_status_routes``).

    The namespace pushes a new status when poked (``DashboardNamespace.poke``): the assembly subscribes that to
    ``ViewsChanged``."""
    html = importlib.resources.files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8")
    # The page learns only whether a cookie came (an HttpOnly one is invisible to it), not what it holds.
    pages = {
        has: page_response(html.replace(CREDENTIAL_MARK, f'data-credential="{has}"')) for has in ("cookie", "none")
    }

    async def serve_page(request: Request) -> Response:
        await trio.lowlevel.checkpoint()
        token = dict(parse_qsl(request.query)).get("token")
        if token is not None:
            return exchange(token)
        return pages["cookie" if cookie_from(request.header("cookie")) else "none"]

    def snapshot() -> dict[str, Any]:
        return status(tracker, deployer=deployer, children=children, notifier=notifier)

    namespace = DashboardNamespace(admin_token, snapshot, tick=tick, gap=gap, throttle=robot.logins)
    robot.server.register_namespace(namespace)
    robot.server.add_route("GET", "/", serve_page)
    return namespace  # the assembly has ViewsChanged poke it


__all__ = ["NAMESPACE", "DashboardNamespace", "install_dashboard", "page_response", "token_matches"]
