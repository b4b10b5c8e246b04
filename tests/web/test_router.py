"""The router alone: plain routes by method and path, a mounted app by its path, body limits from the head."""

from __future__ import annotations

from typing import Any

from urban_robot.web import ROUTE_BODY, PeerWatch, Request, Response, Router, Upgrade


def request(method: str, path: str) -> Request:
    return Request(method, path, "", {}, b"", None)


class Mounted:
    """An ``HttpApp`` that says who asked."""

    def body_limit(self, request: Request) -> int:
        return 123

    def too_large(self, request: Request) -> Response:
        return Response.text(413, "mounted says too large")

    async def handle_request(self, request: Request, peer: PeerWatch) -> Response:
        return Response.text(200, f"mounted {request.method} {request.path}")

    async def handle_websocket(self, request: Request, upgrade: Upgrade) -> Response | None:
        return Response.text(200, "mounted websocket")


def router() -> Router:
    router = Router()
    router.mount("/socket.io/", Mounted())

    async def status(request: Request) -> Response:
        return Response.text(200, "status")

    router.add_route("get", "/api/status", status)
    router.add_route("POST", "/webhook", status, max_body=1_000_000)
    return router


PEER: Any = None
UPGRADE: Any = None


async def test_a_route_answers_its_method_and_path_only() -> None:
    r = router()
    assert (await r.handle_request(request("GET", "/api/status"), PEER)).body == b"status"
    assert (await r.handle_request(request("POST", "/api/status"), PEER)).status == 405
    assert (await r.handle_request(request("GET", "/nowhere"), PEER)).status == 404
    assert (await r.handle_websocket(request("GET", "/api/status"), UPGRADE)).status == 404  # type: ignore[union-attr]


async def test_a_mounted_app_gets_its_path_with_or_without_the_slash() -> None:
    r = router()
    for path in ("/socket.io/", "/socket.io"):
        assert (await r.handle_request(request("POST", path), PEER)).body == f"mounted POST {path}".encode()
        assert (await r.handle_websocket(request("GET", path), UPGRADE)).body == b"mounted websocket"  # type: ignore[union-attr]
    assert (await r.handle_request(request("GET", "/socket.io//"), PEER)).status == 404
    assert (await r.handle_request(request("GET", "/socket.io/x"), PEER)).status == 404


def test_body_limits_come_from_the_route_or_the_mounted_app() -> None:
    r = router()
    assert r.body_limit(request("GET", "/api/status")) == ROUTE_BODY
    assert r.body_limit(request("POST", "/webhook")) == 1_000_000
    assert r.body_limit(request("POST", "/socket.io/")) == 123
    assert r.body_limit(request("POST", "/nowhere")) == 0  # nothing to read for a 404
    assert r.too_large(request("POST", "/socket.io")).body == b"mounted says too large"
    assert r.too_large(request("POST", "/webhook")).status == 413
