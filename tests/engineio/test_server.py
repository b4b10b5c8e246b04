"""Engine.IO edge cases, spoken raw: httpx for polling, trio-websocket for WebSocket."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests._helpers import MemoryListener, raw_client, raw_memory_client, start_server
from urban_robot.socketio import Server
from urban_robot.web import Response


def recording_server(**kwargs: Any) -> tuple[Server, list[tuple[str, str]], trio.Event]:
    server = Server(**kwargs)
    gone: list[tuple[str, str]] = []
    event = trio.Event()

    @server.on("echo")
    async def echo(sid: str, data: Any) -> Any:
        return data

    @server.on("disconnect")
    async def disconnect(sid: str, reason: str) -> None:
        gone.append((sid, reason))
        event.set()

    return server, gone, event


async def polling_handshake(http: httpx.AsyncClient, url: str) -> str:
    response = await http.get(f"{url}/socket.io/", params={"EIO": "4", "transport": "polling"})
    assert response.status_code == 200
    assert response.text[0] == "0"
    return str(json.loads(response.text[1:])["sid"])


async def polling_connect(http: httpx.AsyncClient, url: str) -> str:
    """Open a polling session and join "/" (reading away the CONNECT ack); its Engine.IO sid."""
    sid = await polling_handshake(http, url)
    await http.post(f"{url}/socket.io/", params=poll_params(sid), content="40")
    await http.get(f"{url}/socket.io/", params=poll_params(sid))
    return sid


def poll_params(sid: str) -> dict[str, str]:
    return {"EIO": "4", "transport": "polling", "sid": sid}


@pytest.mark.parametrize(
    ("params", "method", "code"),
    [
        ({"EIO": "3", "transport": "polling"}, "GET", 5),
        ({"transport": "polling"}, "GET", 5),
        ({"EIO": "4", "transport": "carrier-pigeon"}, "GET", 0),
        ({"EIO": "4", "transport": "polling", "sid": "nope"}, "GET", 1),
        ({"EIO": "4", "transport": "polling", "sid": "nope"}, "POST", 1),
        ({"EIO": "4", "transport": "polling"}, "PUT", 2),
        ({"EIO": "4", "transport": "polling"}, "POST", 2),
    ],
)
async def test_bad_requests_get_400_with_the_reference_error_code(
    nursery: trio.Nursery, params: dict[str, str], method: str, code: int
) -> None:
    url = await start_server(nursery, Server())
    async with httpx.AsyncClient() as http:
        response = await http.request(
            method, f"{url}/socket.io/", params=params, content=b"" if method != "GET" else None
        )
    assert response.status_code == 400
    assert response.json()["code"] == code


async def test_polling_handshake_and_connect(nursery: trio.Nursery) -> None:
    server, _, _ = recording_server(ping_interval=10, ping_timeout=5, max_payload=5000)
    url = await start_server(nursery, server)
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/socket.io/", params={"EIO": "4", "transport": "polling"})
        opened = json.loads(response.text[1:])
        assert opened["upgrades"] == ["websocket"]
        assert (opened["pingInterval"], opened["pingTimeout"], opened["maxPayload"]) == (10000, 5000, 5000)
        assert response.headers["content-type"].startswith("text/plain")
        sid = opened["sid"]
        posted = await http.post(f"{url}/socket.io/", params=poll_params(sid), content="40")
        assert posted.text == "ok"
        got = await http.get(f"{url}/socket.io/", params=poll_params(sid))
        assert got.text.startswith('40{"sid":"')
        posted = await http.post(
            f"{url}/socket.io/", params=poll_params(sid), content='421["echo",{"a":1}]\x1e421["nope"]'
        )
        got = await http.get(f"{url}/socket.io/", params=poll_params(sid))
        assert got.text == '431[{"a":1}]'


async def test_binary_over_polling_is_base64(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, recording_server()[0])
    async with httpx.AsyncClient() as http:
        sid = await polling_connect(http, url)
        body = '451-7["echo",{"_placeholder":true,"num":0}]\x1ebAAH/'
        await http.post(f"{url}/socket.io/", params=poll_params(sid), content=body)
        got = await http.get(f"{url}/socket.io/", params=poll_params(sid))
    assert got.text == '461-7[{"_placeholder":true,"num":0}]\x1ebAAH/'


async def test_second_concurrent_get_is_refused_and_closes_the_session(nursery: trio.Nursery) -> None:
    server, gone, event = recording_server()
    url = await start_server(nursery, server)
    async with httpx.AsyncClient() as http:
        sid = await polling_connect(http, url)
        first: list[httpx.Response] = []

        async def long_poll() -> None:
            first.append(await http.get(f"{url}/socket.io/", params=poll_params(sid)))

        async with trio.open_nursery() as inner:
            inner.start_soon(long_poll)
            await trio.testing.wait_all_tasks_blocked()
            second = await http.get(f"{url}/socket.io/", params=poll_params(sid))
        assert second.status_code == 400
        assert first[0].text.endswith("1")  # the pending GET is told the session closed
        with trio.fail_after(5):
            await event.wait()
    assert gone[0][1] == "transport error"


async def test_invalid_packet_in_post_closes_only_that_session(nursery: trio.Nursery) -> None:
    server, gone, _event = recording_server()
    url = await start_server(nursery, server)
    async with httpx.AsyncClient() as http, raw_client(url) as bystander:
        await bystander.connect_namespace()
        sid = await polling_connect(http, url)
        bad = await http.post(f"{url}/socket.io/", params=poll_params(sid), content='42["echo", nonsense')
        assert bad.status_code == 400
        after = await http.get(f"{url}/socket.io/", params=poll_params(sid))
        assert after.status_code == 400
        await bystander.send('421["echo","still here"]')
        assert await bystander.receive() == '431["still here"]'
    assert gone[0][1] == "transport error"


async def test_oversize_post_is_refused_and_closes_the_session(nursery: trio.Nursery) -> None:
    server, _gone, _event = recording_server(max_payload=1000)
    url = await start_server(nursery, server)
    async with httpx.AsyncClient() as http, raw_client(url) as bystander:
        await bystander.connect_namespace()
        sid = await polling_connect(http, url)
        big = await http.post(f"{url}/socket.io/", params=poll_params(sid), content='42["echo","' + "x" * 2000 + '"]')
        assert big.status_code == 413
        assert (await http.get(f"{url}/socket.io/", params=poll_params(sid))).status_code == 400
        await bystander.send('421["echo","fine"]')
        assert await bystander.receive() == '431["fine"]'


async def test_oversize_websocket_message_closes_only_that_session(nursery: trio.Nursery) -> None:
    server, gone, event = recording_server(max_payload=1000)
    url = await start_server(nursery, server)
    async with raw_client(url) as victim, raw_client(url) as bystander:
        await victim.connect_namespace()
        await bystander.connect_namespace()
        await victim.send('42["echo","' + "x" * 5000 + '"]')
        with trio.fail_after(5):
            await event.wait()
        assert gone[0][1] == "transport error"
        await bystander.send('421["echo","fine"]')
        assert await bystander.receive() == '431["fine"]'
        assert victim.ws.closed is None or victim.ws.closed.code == 1009


async def test_invalid_websocket_packet_closes_the_session(nursery: trio.Nursery) -> None:
    server, gone, event = recording_server()
    url = await start_server(nursery, server)
    async with raw_client(url) as client:
        await client.connect_namespace()
        await client.send('42{"not": "an array"}')
        assert await client.receive() == "1"  # Engine.IO CLOSE, then the socket goes
        with trio.fail_after(5):
            await event.wait()
    assert gone[0][1] == "transport error"


async def test_upgrade_answers_pending_get_with_noop_then_moves_to_websocket(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, recording_server()[0])
    async with httpx.AsyncClient() as http:
        sid = await polling_connect(http, url)
        pending: list[httpx.Response] = []

        async def long_poll() -> None:
            pending.append(await http.get(f"{url}/socket.io/", params=poll_params(sid)))

        async with trio.open_nursery() as inner:
            inner.start_soon(long_poll)
            await trio.testing.wait_all_tasks_blocked()
            import trio_websocket

            ws_url = url.replace("http", "ws") + f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
            async with trio_websocket.open_websocket_url(ws_url) as ws:
                await ws.send_message("2probe")
                assert await ws.get_message() == "3probe"
                with trio.fail_after(5):
                    while not pending:
                        await trio.sleep(0)  # the pending GET answers by itself
                assert pending[0].text == "6"
                late = await http.get(f"{url}/socket.io/", params=poll_params(sid))
                assert late.text == "6"  # any GET after the probe gets NOOP at once
                await ws.send_message("5")
                await ws.send_message('421["echo","over ws"]')
                assert await ws.get_message() == '431["over ws"]'
                after = await http.get(f"{url}/socket.io/", params=poll_params(sid))
                assert after.status_code == 400


async def test_client_vanishing_during_long_poll_closes_the_session(nursery: trio.Nursery) -> None:
    server, gone, event = recording_server()
    url = await start_server(nursery, server)
    port = int(url.rsplit(":", 1)[1])
    async with httpx.AsyncClient() as http:
        sid = await polling_connect(http, url)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await trio.testing.wait_all_tasks_blocked()
    await stream.aclose()
    with trio.fail_after(5):
        await event.wait()
    assert gone[0][1] == "transport close"


@pytest.mark.parametrize(
    ("allowed", "origin", "ok"),
    [
        ("*", "http://anywhere.example", True),
        (["http://app.example"], "http://app.example", True),
        (["http://app.example"], "http://evil.example", False),
        (None, "http://evil.example", False),
    ],
)
async def test_cors(nursery: trio.Nursery, allowed: Any, origin: str, ok: bool) -> None:
    url = await start_server(nursery, Server(cors_allowed_origins=allowed))
    async with httpx.AsyncClient() as http:
        params = {"EIO": "4", "transport": "polling"}
        preflight = await http.options(
            f"{url}/socket.io/",
            params=params,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-a",
            },
        )
        response = await http.get(f"{url}/socket.io/", params=params, headers={"Origin": origin})
    if ok:
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == origin
        assert preflight.headers["access-control-allow-headers"] == "x-a"
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        assert response.headers["access-control-allow-credentials"] == "true"
    else:
        assert preflight.status_code == 400
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers


async def test_same_origin_is_allowed_by_default(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, Server())
    host = url.removeprefix("http://")
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{url}/socket.io/", params={"EIO": "4", "transport": "polling"}, headers={"Origin": f"http://{host}"}
        )
    assert response.status_code == 200


async def test_other_routes_share_the_port(nursery: trio.Nursery) -> None:
    server = Server()

    async def status(request: Any) -> Response:
        return Response(200, b'{"ok":true}', content_type="application/json")

    server.add_route("GET", "/api/status", status)
    url = await start_server(nursery, server)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{url}/api/status")).json() == {"ok": True}
        assert (await http.post(f"{url}/api/status")).status_code == 405
        assert (await http.get(f"{url}/nothing")).status_code == 404


# -- timing, on a virtual clock over in-memory streams ---------------------------------------


async def serve_in_memory(nursery: trio.Nursery, server: Server) -> MemoryListener:
    listener = MemoryListener()
    await nursery.start(lambda task_status: server.serve(listeners=[listener], task_status=task_status))
    return listener


async def test_client_that_stops_answering_pings_is_dropped_in_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server, gone, event = recording_server(ping_interval=25, ping_timeout=20)
    listener = await serve_in_memory(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.connect_namespace()
        start = trio.current_time()
        assert await client.receive(answer_pings=False) == "2"
        assert trio.current_time() - start == pytest.approx(25)
        with trio.fail_after(60):
            await event.wait()
        assert trio.current_time() - start == pytest.approx(45)
    assert gone[0][1] == "ping timeout"


async def test_client_answering_pings_stays(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    server, gone, _event = recording_server(ping_interval=25, ping_timeout=20)
    listener = await serve_in_memory(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.connect_namespace()
        for _ in range(10):
            assert await client.receive(answer_pings=False) == "2"
            await client.send("3")
        await client.send('421["echo",1]')
        assert await client.receive() == "431[1]"
    assert gone == [] or gone[0][1] == "transport close"


async def test_no_connect_within_connect_timeout_closes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(ping_interval=25, ping_timeout=20, connect_timeout=10)
    listener = await serve_in_memory(nursery, server)
    async with raw_memory_client(listener) as client:
        start = trio.current_time()
        assert await client.receive() == "1"
        assert trio.current_time() - start == pytest.approx(10)


async def test_slow_request_head_is_cut_off(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    listener = await serve_in_memory(nursery, Server())
    stream = await listener.connect()
    await stream.send_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
    start = trio.current_time()
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 408")
    assert trio.current_time() - start == pytest.approx(20)
