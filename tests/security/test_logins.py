"""Admin logins: throttled per address, and the dashboard's token exchanged for a cookie (issue 13, finding 9)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from urban_robot.supervisor._api import COOKIE, admin_route, cookie_value
from urban_robot.supervisor._auth import LoginThrottle
from urban_robot.supervisor._dashboard import install_dashboard
from urban_robot.supervisor._status import StatusTracker, install_status_routes

ADMIN = "admin-token-of-sixteen-or-more"


def test_after_three_free_failures_each_wait_doubles_up_to_a_minute() -> None:
    throttle = LoginThrottle()
    waits = []
    now = 0.0
    for _ in range(12):
        now += throttle.wait("10.0.0.1", now)  # a patient guesser: each try as soon as allowed
        throttle.failed("10.0.0.1", now)
        waits.append(throttle.wait("10.0.0.1", now))
    assert waits == [0, 0, 0, 0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert throttle.wait("10.0.0.2", now) == 0  # per address
    assert throttle.wait("10.0.0.1", now + 600) == 0  # forgotten ten minutes after the last failure
    assert now < 130  # 12 guesses took two minutes; from then on, one a minute


@pytest.fixture
async def admin(urban_robot_supervisor: Any) -> Any:
    robot = urban_robot_supervisor.robot
    robot.logins = LoginThrottle(base=30)  # waits no loaded machine outlasts between two requests
    tracker = StatusTracker(robot)
    install_status_routes(robot, tracker, admin_token=ADMIN)
    install_dashboard(robot, tracker, admin_token=ADMIN)
    return urban_robot_supervisor


async def test_wrong_admin_tokens_are_throttled_but_workers_still_connect(admin: Any) -> None:
    async with httpx.AsyncClient(base_url=admin.url) as http:
        answers = [
            (await http.get("/api/status", headers={"Authorization": f"Bearer guess-{n}"})).status_code
            for n in range(6)
        ]
        assert answers == [401, 401, 401, 401, 429, 429]  # before: 401 for ever, as fast as one could ask
        right = await http.get("/api/status", headers={"Authorization": f"Bearer {ADMIN}"})
        assert right.status_code == 429 and int(right.headers["retry-after"]) >= 1
    url = admin.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with trio_websocket.open_websocket_url(url) as ws:  # the admin secret over Socket.IO waits too
        await ws.get_message()
        await ws.send_message("40" + json.dumps({"secret": ADMIN}))
        assert (await ws.get_message()).startswith("44")
    worker = await admin.worker("1.0")  # a child's secret is no guess: never held up
    await worker.wait_for("hello")


async def test_the_dashboard_token_becomes_an_http_only_strict_cookie_and_leaves_the_url(admin: Any) -> None:
    acted: list[bool] = []
    admin.robot.server.add_route("POST", "/api/act", admin_route(ADMIN, lambda: acted.append(True) or {}))
    async with httpx.AsyncClient(base_url=admin.url) as http:
        answer = await http.get(f"/?token={ADMIN}")
        assert answer.status_code == 303 and answer.headers["location"] == "/"
        cookie = answer.headers["set-cookie"]
        assert cookie == f"{COOKIE}={cookie_value(ADMIN)}; Path=/; HttpOnly; SameSite=Strict"
        assert ADMIN not in cookie and ADMIN not in answer.text  # derived, never the token itself
        page = await http.get("/")  # the client keeps the cookie, as a browser does
        assert 'data-credential="cookie"' in page.text
        status = await http.get("/api/status")  # the page's polling fallback reads with the cookie alone
        assert status.status_code == 200 and "workers" in status.json()
        assert (await http.post("/api/act")).status_code == 401  # actions never take the cookie (no CSRF)
        assert acted == []
    async with httpx.AsyncClient(base_url=admin.url) as http:
        await http.get("/?token=wrong-token")
        assert (await http.get("/api/status")).status_code == 401
        assert 'data-credential="none"' in (await httpx.AsyncClient(base_url=admin.url).get("/")).text


async def test_the_dashboard_namespace_takes_the_cookie(admin: Any) -> None:
    url = admin.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    for cookie, accepted in ((cookie_value(ADMIN), True), (cookie_value("wrong-token"), False)):
        headers = [("Cookie", f"{COOKIE}={cookie}")]
        async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
            await ws.get_message()
            await ws.send_message("40/dashboard,{}")
            with trio.fail_after(5):
                answer = await ws.get_message()
            assert answer.startswith("40/dashboard," if accepted else "44/dashboard,"), answer
