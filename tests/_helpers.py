"""Shared test helpers: an in-memory listener and a raw Engine.IO/Socket.IO WebSocket client."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import socketio
import trio
import trio.testing
import trio_websocket

from urban_robot.socketio import Server
from urban_robot.supervisor import Credentials, Options, Settings, StateStore, UrbanRobot
from urban_robot.supervisor._dashboard import NAMESPACE as DASHBOARD

# Real worker processes (python -m urban_robot.testing.worker) on a quick clock, for serve(Options) tests.
WORKER = (sys.executable, "-m", "urban_robot.testing.worker")
QUICK = Settings(token="bot-token", interval=2, grace=2, lease_margin=0.5, health_timeout=10, spawn_workers=True)


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; its output, stripped (a failure raises)."""
    import subprocess

    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


class GitUpstream:
    """A bare upstream (``upstream.git``), a developer's clone that pushes to it (``work``) and where the
    supervisor's managed checkout goes (``helium``): the deploy tests' bot repository."""

    def __init__(self, tmp: Path) -> None:
        self.upstream, self.work, self.checkout = tmp / "upstream.git", tmp / "work", tmp / "helium"
        git(tmp, "init", "-q", "--bare", "-b", "main", str(self.upstream))
        git(tmp, "clone", "-q", str(self.upstream), str(self.work))
        for key, value in (("user.name", "dev"), ("user.email", "dev@example.invalid")):
            git(self.work, "config", key, value)

    def push(self, message: str) -> str:
        """Commit everything in ``work`` and push it to main; the new commit's id."""
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", "HEAD:main")
        return git(self.work, "rev-parse", "HEAD")


def child_secret(credentials: Credentials, identity: str) -> str:
    """``identity``'s child secret, its spawn bound first if it has none: a simulated worker stands in for a child
    process the supervisor started (a real one is bound by ``Children`` when it spawns it)."""
    bound = credentials.nonce(identity) is not None
    return credentials.child_secret(identity) if bound else credentials.bind(identity)


def worker_options(tmp_path: Path, settings: Settings = QUICK, **overrides: Any) -> Options:
    """``Options`` for a supervisor of real ``WORKER`` processes in ``tmp_path`` (bot/, state/), any free port."""
    (tmp_path / "bot").mkdir(exist_ok=True)
    fields: dict[str, Any] = {"helium_path": tmp_path / "bot", "state_dir": tmp_path / "state", "port": 0}
    fields["discord_api_url"] = "http://127.0.0.1:9/api/v10"  # never Discord's: nothing listens there (refused)
    return Options(**({"settings": settings, "command": WORKER} | fields | overrides))


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs (for autojump_clock tests)."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](100)

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        await self._send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._receive.aclose()


async def start_server(nursery: trio.Nursery, server: Server) -> str:
    """Serve on 127.0.0.1 (port 0) and return the base URL."""
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    return f"http://127.0.0.1:{port}"


class RawClient:
    """A bare Engine.IO v4 WebSocket client: frames in, frames out, nothing hidden."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.open: dict[str, Any] = {}

    async def handshake(self) -> dict[str, Any]:
        first = await self.ws.get_message()
        assert isinstance(first, str) and first[0] == "0", first
        self.open = json.loads(first[1:])
        return self.open

    async def send(self, message: str | bytes) -> None:
        await self.ws.send_message(message)

    async def receive(self, *, answer_pings: bool = True) -> str | bytes:
        """The next frame, answering Engine.IO pings on the way unless told not to."""
        while True:
            message = await self.ws.get_message()
            if answer_pings and message == "2":
                await self.ws.send_message("3")
                continue
            return message

    async def connect_namespace(self, namespace: str = "/", auth: Any = None) -> str:
        prefix = "" if namespace == "/" else namespace + ","
        await self.send("40" + prefix + (json.dumps(auth) if auth is not None else ""))
        reply = await self.receive()
        assert isinstance(reply, str) and reply.startswith("40" + prefix), reply
        return str(json.loads(reply[2 + len(prefix) :])["sid"])


@asynccontextmanager
async def raw_client(url: str, *, query: str = "") -> AsyncIterator[RawClient]:
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket" + query
    async with trio_websocket.open_websocket_url(ws_url) as ws:
        client = RawClient(ws)
        await client.handshake()
        yield client


@asynccontextmanager
async def raw_memory_client(listener: MemoryListener, *, query: str = "") -> AsyncIterator[RawClient]:
    stream = await listener.connect()
    async with trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(
            nursery, stream, "localhost", "/socket.io/?EIO=4&transport=websocket" + query
        )
        client = RawClient(ws)
        await client.handshake()
        try:
            yield client
        finally:
            await ws.aclose()


async def inline(fn: Any, *args: Any) -> Any:
    """File writes without a thread: a thread's real time would let the virtual clock jump."""
    return fn(*args)


class RestartableSupervisor:
    """A real supervisor in a test's nursery that can be stopped and started again on the same state."""

    def __init__(self, nursery: trio.Nursery, state_dir: Path, settings: Settings) -> None:
        self.nursery = nursery
        self.settings = settings
        self.store = StateStore(state_dir)
        self.store.prepare()
        self.credentials = Credentials(self.store.secret_key(), admin_token="admin-secret")
        self.robot: UrbanRobot | None = None
        self.url = ""
        self.scope = trio.CancelScope()
        self.count = 0

    async def start(self, port: int = 0) -> UrbanRobot:
        robot = UrbanRobot(self.settings, self.store, self.credentials, blocking_io=inline)

        async def run(task_status: trio.TaskStatus[int | None]) -> None:
            with self.scope:
                await robot.run("127.0.0.1", port, task_status=task_status)

        self.scope = trio.CancelScope()
        bound = await self.nursery.start(run)
        self.robot, self.url = robot, f"http://127.0.0.1:{bound}"
        return robot

    def stop(self) -> None:
        self.scope.cancel()


async def read_until(stream: trio.abc.ReceiveStream, *markers: bytes, seen: bytes = b"") -> bytes:
    """Read a child's output until every marker has appeared; fails with what was seen if it ends first."""
    while not all(marker in seen for marker in markers):
        chunk = await stream.receive_some(65536)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    return seen


def dashboard_client(url: str, auth: Any) -> dict[str, Any]:
    """Connect a python-socketio client to /dashboard; what it got (in a thread: it is a threads program)."""
    client = socketio.Client(reconnection=False)
    got: dict[str, Any] = {"status": []}
    first = threading.Event()

    @client.on("status", namespace=DASHBOARD)
    def on_status(body: Any) -> None:
        got["status"].append(body)
        first.set()

    try:
        client.connect(url, namespaces=[DASHBOARD], auth=auth, transports=["websocket"], wait_timeout=5)
    except socketio.exceptions.ConnectionError as exc:
        got["refused"] = str(exc)
        return got
    try:
        first.wait(5)
        client.emit("try_again", {}, namespace=DASHBOARD)  # a dashboard cannot act: nothing handles it
        client.emit("identify", {"version": "9"}, namespace=DASHBOARD)
    finally:
        client.disconnect()
    return got


# -- caches as the wire carries them (docs/protocol.md §11): parts of bytes ---------------------------------
def cache_sync(sid: str, value: Any, sync: int = 1) -> Any:
    """The core's event for a plain cache ``value`` sent by ``sid`` in one part (small values fit one)."""
    from urban_robot.protocol import plain_change
    from urban_robot.supervisor import CacheSync

    [part] = plain_change(value).parts(sync)
    return CacheSync(sid, part)


def image(value: Any) -> Any:
    """A supervisor's kept cache (bytes) holding the plain cache ``value``."""
    from urban_robot.protocol import CacheImage, plain_change

    return CacheImage().apply(plain_change(value))


def plain(image_or_none: Any) -> Any:
    """The plain value a kept cache (a ``CacheImage``) holds."""
    from urban_robot.protocol import CacheMap, plain_value

    cache = CacheMap()
    cache.apply(image_or_none.as_change())
    return plain_value(cache)


NOTHING_PUSHED = object()


def pushed(actions: Any, sid: str) -> Any:
    """The plain cache the core's ``Send`` actions pushed to ``sid`` (applied in order), or ``NOTHING_PUSHED``."""
    from urban_robot.protocol import Assembly, CacheMap, parse_cache_sync, plain_value
    from urban_robot.supervisor import Send

    assembly, cache, got = Assembly(1 << 62), CacheMap(), False
    for action in actions:
        if isinstance(action, Send) and action.sid == sid and action.event == "cache_sync":
            change = assembly.add(parse_cache_sync(action.data))
            if change is not None:
                cache.apply(change)
                got = True
    return plain_value(cache) if got else NOTHING_PUSHED
