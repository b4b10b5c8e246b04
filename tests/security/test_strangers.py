"""A stranger costs kilobytes: limits before authentication, one deadline per request, the Host allow-list.

Issue 13, findings 1-3. Real sockets on 127.0.0.1 where bytes on the wire matter, a virtual clock (and
in-memory streams) where time does.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import trio_websocket
import wsproto
import wsproto.events

from tests._helpers import MemoryListener, raw_client, start_server
from urban_robot._errors import ProtocolError
from urban_robot.logs import Throttled
from urban_robot.socketio import ConnectionRefusedError, Decoder, PacketType, Server
from urban_robot.socketio._packets import Head
from urban_robot.web import Limits, Response

PREAUTH_MESSAGE = 4096  # urban_robot.engineio.PREAUTH_MESSAGE

BIG = 8 * 1024 * 1024  # what every peer could send before: the workers' max_message was 64 MiB


def guarded_server(**kwargs: Any) -> Server:
    """A server like the supervisor's: large messages for those its connect handler lets in, no one else."""
    server = Server(max_payload=BIG, **kwargs)

    @server.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        if auth != {"secret": "open sesame"}:
            raise ConnectionRefusedError("authentication failed")

    @server.on("echo")
    async def echo(sid: str, data: Any) -> Any:
        return len(data)

    async def action(request: Any) -> Response:
        return Response.text(202, "done")

    server.add_route("POST", "/api/action", action)
    server.add_route("POST", "/hook", action, max_body=100_000)
    return server


async def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read the answer until the server closes (or 5 s pass: then what came)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    answer = b""
    with trio.move_on_after(5):
        await stream.send_all(data)
        try:
            while chunk := await stream.receive_some(65536):
                answer += chunk
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return answer


async def test_a_body_over_its_routes_limit_is_refused_from_content_length_before_it_is_read(
    nursery: trio.Nursery,
) -> None:
    server = guarded_server()
    port = int((await start_server(nursery, server)).rsplit(":", 1)[1])
    with trio.fail_after(3):  # before: read up to max_payload (8 MiB here) before routing
        admin = await _exchange(port, b"POST /api/action HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n")
        hook = await _exchange(port, b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100001\r\n\r\n")
        polling = await _exchange(
            port,
            b"POST /socket.io/?EIO=4&transport=polling&sid=nope HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 1000000\r\n\r\n",
        )
    for answer in (admin, hook, polling):
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:60]
    async with httpx.AsyncClient() as http:  # within the limits all is as before
        assert (await http.post(f"http://127.0.0.1:{port}/api/action", content=b"x" * 4000)).status_code == 202
        assert (await http.post(f"http://127.0.0.1:{port}/hook", content=b"x" * 100_000)).status_code == 202


async def test_a_chunked_body_is_counted_as_it_comes_and_cut_at_the_routes_limit(nursery: trio.Nursery) -> None:
    server = guarded_server()
    port = int((await start_server(nursery, server)).rsplit(":", 1)[1])
    head = b"POST /api/action HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    with trio.fail_after(3):
        answer = await _exchange(port, head + chunk * 5)  # 5 KiB, never finished: cut at 4 KiB
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:60]


async def test_a_trickled_body_is_cut_at_one_deadline_for_the_whole_request(autojump_clock: Any) -> None:
    listener = MemoryListener()
    server = Server(http_limits=Limits(request_timeout=20))

    async def action(request: Any) -> Response:
        return Response.text(202, "done")

    server.add_route("POST", "/api/action", action)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.serve(listeners=[listener], task_status=task_status))
        stream = await listener.connect()
        started = trio.current_time()
        await stream.send_all(b"POST /api/action HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
        answer = b""

        async def trickle() -> None:  # one byte every 5 s: each one used to restart the 20 s
            for _ in range(1000):
                await trio.sleep(5)
                try:
                    await stream.send_all(b"x")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        nursery.start_soon(trickle)
        with trio.fail_after(60):
            while chunk := await stream.receive_some(65536):
                answer += chunk
        ended = trio.current_time()
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert ended - started == pytest.approx(20, abs=0.5)


async def test_before_authentication_a_message_is_kilobytes_and_after_it_max_payload(nursery: trio.Nursery) -> None:
    server = guarded_server()
    url = await start_server(nursery, server)
    async with raw_client(url) as stranger:  # a JSON bomb in place of a CONNECT: closed, never parsed
        await stranger.send("40" + json.dumps({"secret": [{}] * (PREAUTH_MESSAGE // 2)}))
        with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed):
            while True:
                await stranger.receive()
        assert stranger.ws.closed is not None and stranger.ws.closed.code == 1009
    async with raw_client(url) as worker:  # the same size once authenticated
        await worker.connect_namespace(auth={"secret": "open sesame"})
        await worker.send('421["echo",' + json.dumps("x" * (BIG - 100)) + "]")
        with trio.fail_after(10):
            assert await worker.receive() == f"431[{BIG - 100}]"


async def test_before_authentication_binary_packets_close_the_connection(nursery: trio.Nursery) -> None:
    server = guarded_server()
    url = await start_server(nursery, server)
    async with raw_client(url) as stranger:
        await stranger.send('451-["echo",{"_placeholder":true,"num":0}]')
        with trio.fail_after(5):
            while True:
                try:
                    await stranger.receive()
                except Exception:
                    break
        assert not server._engine.sessions


async def test_an_unfinished_fragmented_message_is_cut_before_authentication(nursery: trio.Nursery) -> None:
    server = guarded_server()
    port = int((await start_server(nursery, server)).rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(
        ws.send(wsproto.events.Request(host="127.0.0.1", target="/socket.io/?EIO=4&transport=websocket"))
    )
    closed: wsproto.events.CloseConnection | None = None
    sent = 0
    with trio.fail_after(10):
        while closed is None:
            ws.receive_data(await stream.receive_some(65536))
            for event in ws.events():
                if isinstance(event, wsproto.events.CloseConnection):
                    closed = event
            # Astral characters, 4 bytes each in memory, and the message never finished: before, up to 64 MiB.
            while closed is None and sent < 1024 * 1024:
                try:
                    await stream.send_all(
                        ws.send(wsproto.events.TextMessage("42" + "😀" * 1000, message_finished=False))
                    )
                except trio.BrokenResourceError:
                    break
                sent += 1000
                if sent % 16000 == 0:
                    break  # read what the server said
    assert closed is not None and closed.code == 1009
    assert sent < 64 * 1024  # cut after a few kilobytes, not megabytes
    await stream.aclose()


async def test_unauthenticated_polling_sessions_count_against_max_connections(nursery: trio.Nursery) -> None:
    server = guarded_server(http_limits=Limits(max_connections=8))
    url = await start_server(nursery, server)
    statuses = []
    async with httpx.AsyncClient() as http:
        for _ in range(12):  # each handshake's connection is closed after it: only the session stays
            try:
                answer = await http.get(
                    f"{url}/socket.io/", params={"EIO": "4", "transport": "polling"}, headers={"Connection": "close"}
                )
                statuses.append(answer.status_code)
            except httpx.HTTPError:
                statuses.append(0)
    assert statuses.count(200) < 8  # parked sessions hold slots: before, all 12 were opened
    assert len(server._engine.sessions) < 8
    async with raw_client(url) as worker:  # a WebSocket's slot is its connection; authenticated, it holds none
        await worker.connect_namespace(auth={"secret": "open sesame"})


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("attacker.example", 421),
        ("attacker.example:80", 421),
        ("127.0.0.1.attacker.example", 421),
        ("localhost", 200),
        ("localhost:{port}", 200),
        ("127.0.0.1:{port}", 200),
        ("[::1]:{port}", 200),
        ("bot.example.org", 200),
        ("BOT.example.org:443", 200),
    ],
)
async def test_only_known_host_names_are_served(nursery: trio.Nursery, host: str, status: int) -> None:
    server = guarded_server(http_limits=Limits(allowed_hosts=frozenset({"bot.example.org"})))
    port = int((await start_server(nursery, server)).rsplit(":", 1)[1])
    answer = await _exchange(
        port,
        f"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {host.format(port=port)}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:60]
    assert len(server._engine.sessions) == (status == 200)  # nothing was opened for a foreign Host


async def test_the_supervisor_answers_a_rebound_host_421_before_anything_else(urban_robot_supervisor: Any) -> None:
    port = int(urban_robot_supervisor.url.rsplit(":", 1)[1])
    for target in ("/socket.io/?EIO=4&transport=polling", "/api/status", "/"):
        answer = await _exchange(
            port, f"GET {target} HTTP/1.1\r\nHost: attacker.example:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 421 "), (target, answer[:60])
    answer = await _exchange(
        port,
        f"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: localhost:{port}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 200 ")


KNOCKS = 2000


async def test_one_strangers_refused_connects_make_one_line_not_thousands(
    urban_robot_supervisor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: one INFO line per refused CONNECT (7,885 lines in 2 s from one client); now one per 10 s."""
    caplog.set_level(logging.DEBUG)
    url = urban_robot_supervisor.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.get_message()
        for _ in range(KNOCKS):
            await ws.send_message('40{"secret":"wrong"}')
            assert await ws.get_message() == '44{"message":"authentication failed"}'
    refusals = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(refusals) == 1


def test_throttled_lines_say_how_many_were_held_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    now = [0.0]
    quiet = Throttled(logging.getLogger("test.quiet"), every=10, clock=lambda: now[0])
    for step in range(7886):
        now[0] = step * 0.001
        quiet.info("refused", "refused a connection from %s", "10.0.0.1")
    quiet.info("other", "another kind is not held back by the first")
    now[0] = 12.0
    quiet.info("refused", "refused a connection from %s", "10.0.0.2")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a connection from 10.0.0.1",
        "another kind is not held back by the first",
        "refused a connection from 10.0.0.2 (and 7,885 more like it in the last 12 s)",
    ]


def test_the_decoder_parses_no_json_a_packet_was_refused_before() -> None:
    heads: list[Head] = []

    def refuse(head: Head) -> bool:
        heads.append(head)
        return False

    # Invalid JSON after the head: parsing would raise; the head alone decides it is not worth it.
    assert Decoder().feed('2/elsewhere,["event", {{{{' + "[" * 100_000, 0, refuse) is None
    assert heads == [Head(PacketType.EVENT, "/elsewhere", len('["event", {{{{') + 100_000)]
    with pytest.raises(ProtocolError, match="refused"):
        Decoder().feed('51-["event",{"_placeholder":true,"num":0}]', 0, refuse)  # its attachments would follow


async def test_a_packet_for_a_namespace_the_client_is_not_on_is_dropped_unparsed(nursery: trio.Nursery) -> None:
    server = guarded_server()
    url = await start_server(nursery, server)
    async with raw_client(url) as worker:
        await worker.connect_namespace(auth={"secret": "open sesame"})
        await worker.send('42/elsewhere,["x", {{{{ not json')  # before: parsed, invalid, connection closed
        await worker.send('421["echo","still here"]')
        with trio.fail_after(5):
            assert await worker.receive() == "431[10]"
