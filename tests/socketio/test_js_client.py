"""Interoperability with the official JavaScript client, ``socket.io-client`` from npm.

Each test starts our server in-process and runs ``tests/js/client.mjs`` under node
as a real child process; that script prints one JSON line per step of its scenario.
Both sides are checked: what the JS client printed and what the server's handlers saw.
Every test runs with the client's default transports (long-polling, then the upgrade
to WebSocket), with WebSocket only, and with long-polling only (binary as base64).

``tests/js/node_modules`` comes from ``just js-deps`` (``npm ci``; ``just test`` runs it).
``DEBUG='socket.io-client*,engine.io-client*'`` in the environment puts the client's
own trace in a failing test's report.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from urban_robot import socketio
from urban_robot.socketio import Namespace, Server

JS_DIR = Path(__file__).resolve().parent.parent / "js"
CLIENT_SCRIPT = JS_DIR / "client.mjs"
TIME_LIMIT = 10  # seconds for a whole test, so a hang fails fast
NODE_TIME_LIMIT = TIME_LIMIT - 3  # node gives up first, so its own error message is shown
NODE = shutil.which("node")

# A node process per test: 0.15 s on a quiet machine, 0.4 s and more on a busy one.
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _js_deps() -> None:
    if NODE is None:
        pytest.fail("node is not on PATH: the socket.io-client interoperability tests need node 20+ and npm")
    if not (JS_DIR / "node_modules" / "socket.io-client" / "package.json").is_file():
        pytest.fail(f"{JS_DIR / 'node_modules'} is missing: run `just js-deps` (npm ci of tests/js) first")


# ---------------------------------------------------------------------------- JSON helpers
def printable(value: Any) -> Any:
    """``value`` with bytes as ``{"$bin": hex}``, the form client.mjs reads and prints."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    return value


def unprintable(value: Any) -> Any:
    """The inverse of :func:`printable`."""
    if isinstance(value, list):
        return [unprintable(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: unprintable(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------- the node side
class JsClient:
    """A running ``client.mjs``; its steps arrive in order through :meth:`expect`."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.process: trio.Process | None = None
        self._send, self._steps = trio.open_memory_channel[dict[str, Any]](math.inf)
        self.stderr = bytearray()
        self.exited = trio.Event()

    async def run(self, command: list[str], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run node until it exits; cancelling this kills it."""
        async with trio.open_nursery() as nursery:
            self.process = await nursery.start(
                partial(
                    trio.run_process, command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
                    cwd=JS_DIR, env={**os.environ, "NODE_OPTIONS": ""},
                )
            )  # fmt: skip
            task_status.started()
            nursery.start_soon(self._read_stdout)
            nursery.start_soon(self._read_stderr)
        self.exited.set()

    async def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        buffer = b""
        async with self._send:
            async for chunk in self.process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    try:
                        step = json.loads(line)
                    except ValueError:
                        step = {"step": None, "not JSON": line.decode(errors="replace")}
                    self._send.send_nowait(step)

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk

    async def _end(self) -> str:
        await self.exited.wait()
        assert self.process is not None
        stderr = self.stderr.decode(errors="replace").strip() or "(empty)"
        return f"node ({self.scenario}) exited with {self.process.returncode}; its stderr:\n{stderr}"

    async def expect(self, step: str) -> dict[str, Any]:
        """The next step printed, which must be ``step``: its fields, binary as bytes."""
        try:
            line = await self._steps.receive()
        except trio.EndOfChannel:
            raise AssertionError(f"expected step {step!r}, but {await self._end()}") from None
        assert line.get("step") == step, f"expected step {step!r}, got {line!r}"
        return unprintable(line)  # type: ignore[no-any-return]

    async def finish(self) -> None:
        """Wait for the script to exit by itself; it must print nothing more and succeed."""
        extra = [line async for line in self._steps]
        assert not extra, f"unexpected steps {extra!r}"
        message = await self._end()
        assert self.process is not None and self.process.returncode == 0, message


TRANSPORTS = {"default": "polling,websocket", "websocket-only": "websocket", "polling-only": "polling"}


@pytest.fixture(params=list(TRANSPORTS))
def transports(request: pytest.FixtureRequest) -> str:
    return TRANSPORTS[request.param]


def final_transport(transports: str) -> str:
    return "websocket" if "websocket" in transports else "polling"


# ---------------------------------------------------------------------------- the server side
class Seen:
    """What the server's handlers saw, in order."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[Any, ...]](math.inf)

    def record(self, *item: Any) -> None:
        self._send.send_nowait(item)

    async def next(self, kind: str) -> tuple[Any, ...]:
        item = await self._receive.receive()
        assert item[0] == kind, f"expected the server to see {kind!r}, it saw {item!r}"
        return item[1:]


async def on_connect(seen: Seen, sid: str, environ: dict[str, Any], auth: Any) -> None:
    seen.record("connect", sid, auth, environ["QUERY_STRING"])
    if isinstance(auth, dict) and "refuse" in auth:
        raise socketio.ConnectionRefusedError("not welcome here", {"why": auth["refuse"], "retry": False})


async def on_echo(seen: Seen, sid: str, *args: Any) -> tuple[Any, ...]:
    return args


async def on_report(seen: Seen, sid: str, *args: Any) -> None:
    seen.record("report", sid, args)


async def on_disconnect(seen: Seen, sid: str, reason: str) -> None:
    seen.record("disconnect", sid, reason)


class Recording(Namespace):
    """The same handlers as a class-based namespace."""

    def __init__(self, namespace: str, seen: Seen) -> None:
        super().__init__(namespace)
        self.seen = seen

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        await on_connect(self.seen, sid, environ, auth)

    async def on_echo(self, sid: str, *args: Any) -> tuple[Any, ...]:
        return await on_echo(self.seen, sid, *args)

    async def on_report(self, sid: str, *args: Any) -> None:
        await on_report(self.seen, sid, *args)

    async def on_disconnect(self, sid: str, reason: str) -> None:
        await on_disconnect(self.seen, sid, reason)


@attrs.define
class Harness:
    server: Server
    port: int
    seen: Seen
    nursery: trio.Nursery

    async def client(self, scenario: str, *, transports: str, namespace: str = "/", auth: Any = None) -> JsClient:
        """Start ``client.mjs``; it is killed when the test ends, if still running."""
        command = [
            NODE or "node", str(CLIENT_SCRIPT),
            "--url", f"http://127.0.0.1:{self.port}",
            "--scenario", scenario,
            "--namespace", namespace,
            "--transports", transports,
            "--auth", json.dumps(printable(auth)),
            "--timeout-ms", str(NODE_TIME_LIMIT * 1000),
        ]  # fmt: skip
        client = JsClient(scenario)
        await self.nursery.start(client.run, command)
        return client


@pytest.fixture
async def harness(nursery: trio.Nursery) -> Harness:
    """A server with recording handlers on ``/`` (functions) and ``/custom`` (a Namespace)."""
    server = Server(ping_interval=25, ping_timeout=20, cors_allowed_origins="*")
    seen = Seen()
    for event, handler in (("connect", on_connect), ("echo", on_echo), ("report", on_report),
                           ("disconnect", on_disconnect)):  # fmt: skip
        server.on(event, partial(handler, seen))
    server.register_namespace(Recording("/custom", seen))
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    return Harness(server, port, seen, nursery)


async def connected(client: JsClient, seen: Seen, transports: str, auth: Any = None) -> str:
    """Both sides agree on the connection (auth included); the client is on its final transport."""
    sid, got_auth, query = await seen.next("connect")
    assert got_auth == auth
    assert "EIO=4" in query
    connect = await client.expect("connect")
    assert connect["id"] == sid
    assert connect["initial"] == transports.split(",")[0]
    assert (await client.expect("transport"))["name"] == final_transport(transports)
    return sid  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("namespace", ["/", "/custom"])
async def test_exchange(harness: Harness, transports: str, namespace: str) -> None:
    """Auth, events both ways, binary both ways, acks both ways, then a server-side disconnect."""
    server, seen = harness.server, harness.seen
    auth = {"token": "s3cret", "user": {"id": 7, "roles": ["admin"]}}
    with trio.fail_after(TIME_LIMIT):
        client = await harness.client("exchange", transports=transports, namespace=namespace, auth=auth)
        sid = await connected(client, seen, transports, auth)

        # the client's emit with an ack callback gets the handler's return value: several arguments, binary
        echo = await client.expect("echo")
        assert echo["args"] == [1, "two", {"three": [3, None, True]}, b"\x00\x01\x02\xff"]
        assert server.transport(sid, namespace) == final_transport(transports)
        assert (await client.expect("emitWithAck"))["value"] == "solo"  # the first ack argument
        # an event with several arguments, binary nested and empty, reaches its handler
        await client.expect("report")
        assert await seen.next("report") == (sid, ("text", 42, {"nested": b"bin"}, b""))

        await server.emit("hello", ("world", 7, b"\x00\xff", {"deep": [b"\x01"]}), to=sid, namespace=namespace)
        hello = await client.expect("hello")
        assert hello["args"] == ["world", 7, b"\x00\xff", {"deep": [b"\x01"]}]
        assert hello["transport"] == final_transport(transports)

        # the server's call gets what the client's ack callback sent: several arguments, binary both ways
        reply = await server.call("ask", ("q", b"\x10\x20"), to=sid, namespace=namespace, timeout=5)
        assert reply == ("answer", ["q", b"\x10\x20"], b"\xca\xfe")
        assert (await client.expect("ask"))["args"] == ["q", b"\x10\x20"]

        await server.disconnect(sid, namespace=namespace)
        assert (await client.expect("disconnect"))["reason"] == "io server disconnect"
        assert await seen.next("disconnect") == (sid, "server disconnect")
        await client.finish()
    assert sid not in server.sockets


@pytest.mark.parametrize("namespace", ["/", "/custom"])
async def test_client_disconnect(harness: Harness, transports: str, namespace: str) -> None:
    with trio.fail_after(TIME_LIMIT):
        client = await harness.client("client-disconnect", transports=transports, namespace=namespace)
        sid = await connected(client, harness.seen, transports)
        bye = await client.expect("disconnect")
        assert (bye["reason"], bye["connected"]) == ("io client disconnect", False)
        assert await harness.seen.next("disconnect") == (sid, "client disconnect")
        await client.finish()
    assert sid not in harness.server.sockets


async def test_connect_refused(harness: Harness, transports: str) -> None:
    """``ConnectionRefusedError(message, data)`` reaches the client's connect_error."""
    with trio.fail_after(TIME_LIMIT):
        client = await harness.client("connect-error", transports=transports, auth={"refuse": "banned"})
        sid, auth, _ = await harness.seen.next("connect")
        assert auth == {"refuse": "banned"}
        error = await client.expect("connect_error")
        assert error["message"] == "not welcome here"
        assert error["data"] == {"why": "banned", "retry": False}
        assert error["active"] is False  # a refusal is final: the client does not try again
        await client.finish()
    assert sid not in harness.server.sockets


async def test_unknown_namespace(harness: Harness, transports: str) -> None:
    with trio.fail_after(TIME_LIMIT):
        client = await harness.client("connect-error", transports=transports, namespace="/nowhere")
        error = await client.expect("connect_error")
        assert error["message"] == "Invalid namespace"
        assert error["data"] is None
        await client.finish()
    assert not harness.server.sockets
