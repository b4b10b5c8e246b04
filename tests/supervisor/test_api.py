"""Admin actions over real HTTP: the credential is required, compared exactly."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests._helpers import start_server
from urban_robot.socketio import Server
from urban_robot.supervisor._api import admin_route


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("Bearer wrong", 401),
        ("Basic admin-secret", 401),
        ("Bearer admin-secret-but-longer", 401),
        ("Bearer admin-secret", 202),
        ("bearer admin-secret", 202),
    ],
)
async def test_deploy_action_needs_the_admin_credential(nursery: trio.Nursery, header: str | None, status: int) -> None:
    calls: list[str] = []
    server = Server()
    server.add_route("POST", "/api/deploy", admin_route("admin-secret", lambda: calls.append("deploy") or {"ok": True}))
    url = await start_server(nursery, server)
    headers = {"Authorization": header} if header else {}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/api/deploy", headers=headers)
    assert response.status_code == status
    assert calls == (["deploy"] if status == 202 else [])
    assert "admin-secret" not in response.text


async def test_no_admin_token_configured_refuses_everyone(nursery: trio.Nursery) -> None:
    server = Server()
    server.add_route("POST", "/api/deploy", admin_route(None, lambda: {"ok": True}))
    url = await start_server(nursery, server)
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/api/deploy", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 401
