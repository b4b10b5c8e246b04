"""Fuzzing the edge: hypothesis throws garbage at a live supervisor over real sockets.

One supervisor (``UrbanRobot``, small limits) runs for the whole module in its own thread with its own
trio loop, and a *bystander* worker stays connected throughout, heartbeating every 0.1 s. The tests are
plain synchronous hypothesis tests that talk to it with blocking sockets: arbitrary bytes and broken
HTTP requests, WebSocket frames that are truncated, oversize, masked wrongly or lie about their length,
malformed Engine.IO/Socket.IO packets (huge ack ids, deep JSON, binary placeholder counts that lie),
and every protocol event with wrong types in every field, from an authenticated worker.

What must hold: the server answers or closes every connection (never hangs on a peer that has sent
everything), never logs an internal error, keeps answering the bystander, accepts a fresh connection
afterwards, and its session tables go back to the bystander alone (memory does not grow without bound).

Example counts come from the hypothesis profile: modest by default, large with ``HYPOTHESIS_PROFILE=chaos``.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings, strategies as st

from tests._fuzz import examples
from tests._helpers import child_secret
from urban_robot.socketio import Server
from urban_robot.supervisor import Credentials, Settings, StateStore, UrbanRobot

pytestmark = pytest.mark.slow

MAX_PAYLOAD = 64 * 1024
TOKEN = "fuzz-discord-token"
SETTINGS = Settings(token=TOKEN, interval=5, grace=5, lease_margin=1, health_timeout=2)
READ_TIMEOUT = 10.0  # a server that neither answers nor closes within this is a hang: the test fails


def fuzz(ci: int) -> settings:
    """``ci`` examples in CI (scaled up under chaos: tests/_fuzz.py), no deadline: each runs a network round."""
    return examples(ci, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class _Errors(logging.Handler):
    """Collects ERROR records: an internal error while serving a peer is a bug even if it was contained."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Critical *notifications* (a fuzz worker can fail a health check) are the protocol at work.
        if record.exc_info is not None or record.name.split(".")[:2] != ["urban_robot", "supervisor"]:
            self.records.append(record)


@attrs.define(eq=False)
class Live:
    url: str
    port: int
    robot: UrbanRobot
    credentials: Credentials
    token: trio.lowlevel.TrioToken
    answers: list[float] = attrs.Factory(list)  # when each bystander heartbeat was answered (monotonic)
    stop: trio.CancelScope = attrs.Factory(trio.CancelScope)
    errors: _Errors = attrs.Factory(_Errors)

    def run(self, fn: Any, *args: Any) -> Any:
        """Call a sync function in the server's trio thread (its tables are not ours to read mid-change)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def tables(self) -> dict[str, int]:
        def sizes() -> dict[str, int]:
            server = self.robot.server
            return {
                "sessions": len(server._engine.sessions),
                "sockets": len(server.sockets),
                "conns": len(self.robot.conns),
                "workers": len(self.robot.core.clients),
                "http": server.connections.open,
            }

        return dict(self.run(sizes))


async def _bystander(live: Live) -> None:
    """A connected worker that heartbeats every 0.1 s and notes every answer."""
    ws_url = live.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with trio_websocket.open_websocket_url(ws_url) as ws:
        await ws.get_message()
        await ws.send_message("40" + json.dumps({"secret": child_secret(live.credentials, "child-bystander-1")}))
        ack = 0
        pending: dict[int, trio.Event] = {}

        async def reader() -> None:
            while True:
                frame = await ws.get_message()
                if frame == "2":
                    await ws.send_message("3")
                elif isinstance(frame, str) and frame.startswith("43"):
                    digits = frame[2:].split("[", 1)[0]
                    pending.pop(int(digits), trio.Event()).set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for event, data in itertools.chain([("identify", {"version": "1.0"})], itertools.repeat(("heartbeat", {}))):
                ack += 1
                pending[ack] = done = trio.Event()
                await ws.send_message(f"42{ack}" + json.dumps([event, data]))
                await done.wait()
                live.answers.append(time.monotonic())
                await trio.sleep(0.1)


async def _serve(state_dir: Path, box: dict[str, Any], ready: threading.Event) -> None:
    store = StateStore(state_dir)
    store.prepare()
    credentials = Credentials(store.secret_key(), admin_token="fuzz-admin-token")
    server = Server(async_handlers=False, max_payload=MAX_PAYLOAD, connect_timeout=1)
    robot = UrbanRobot(SETTINGS, store, credentials, server=server)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(robot.run, "127.0.0.1", 0)
        live = Live(f"http://127.0.0.1:{port}", port, robot, credentials, trio.lowlevel.current_trio_token())
        nursery.start_soon(_bystander, live)
        box["live"] = live
        ready.set()
        with live.stop:
            await trio.sleep_forever()
        nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    box: dict[str, Any] = {}
    ready = threading.Event()
    thread = threading.Thread(target=trio.run, args=(_serve, tmp_path_factory.mktemp("fuzz"), box, ready))
    thread.start()
    assert ready.wait(30)
    server: Live = box["live"]
    root = logging.getLogger()
    root.addHandler(server.errors)
    deadline = time.monotonic() + 10
    while len(server.answers) < 2:  # the bystander is identified and renewing
        assert time.monotonic() < deadline, "the bystander never got going"
        time.sleep(0.01)  # another thread's progress: nothing here to wait on
    try:
        yield server
    finally:
        root.removeHandler(server.errors)
        server.run(server.stop.cancel)
        thread.join(30)


@pytest.fixture(autouse=True)
def _still_healthy(live: Live) -> Iterator[None]:
    """After each fuzz test: no internal error, bystander answered, tables back to the bystander, fresh peer ok."""
    started = time.monotonic()
    yield
    assert not live.errors.records, [r.getMessage() for r in live.errors.records]
    answers = [*live.answers, time.monotonic()]
    gaps = [b - a for a, b in zip([started, *answers], answers, strict=False) if b > started]
    assert gaps and max(gaps) < 2.0, f"bystander went unanswered for {max(gaps or [0]):.2f}s"
    deadline = time.monotonic() + 15  # sessions without a namespace close after connect_timeout (1 s)
    while (tables := live.tables()) != {"sessions": 1, "sockets": 1, "conns": 1, "workers": 1, "http": 1}:
        assert time.monotonic() < deadline, f"server tables did not shrink back: {tables}"
        time.sleep(0.05)
    with socket.create_connection(("127.0.0.1", live.port), timeout=READ_TIMEOUT) as sock:
        sock.sendall(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_all(sock).startswith(b"HTTP/1.1 200 ")


# -- blocking socket helpers -------------------------------------------------------------------------------
def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; fails if it neither sends nor closes in time."""
    sock.settimeout(READ_TIMEOUT)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            pytest.fail(f"the server neither answered nor closed; got {data[:200]!r}")
        if not chunk:
            return data
        data += chunk


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server already closed (a refusal, or a reset): that is an answer too
            return b""
        return _read_all(sock)


def _ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, length: int | None = None) -> bytes:
    """A client WebSocket frame; ``length`` overrides the declared payload length (a lie)."""
    declared = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (opcode & 0x0F)])
    mask_bit = 0x80 if mask else 0
    if declared < 126:
        head += bytes([mask_bit | declared])
    elif declared < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", declared)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", declared)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


WS_HANDSHAKE = (
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _text(message: str) -> bytes:
    return _ws_frame(0x1, message.encode())


def _auth(live: Live, identity: str = "child-fuzz-1") -> bytes:
    return _text("40" + json.dumps({"secret": child_secret(live.credentials, identity)}))


# -- strategies ----------------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
wrong_values = (
    json_values
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.text(min_size=100, max_size=2000)
    | st.just(2**53)
    | st.just(-1)
)
PROTOCOL = {
    "identify": ("version", "pid", "generation", "epoch", "lease_token"),
    "heartbeat": ("epoch",),
    "ready": (),
    "health_check": ("OK", "percent", "cogs"),
    "cache_sync": ("cache",),
    "coma": ("reason",),
    "shutdown": ("reason",),
    "try_again": (),
}
event_names = st.sampled_from(sorted(PROTOCOL)) | st.text(max_size=30)


@st.composite
def protocol_events(draw: st.DrawFn) -> tuple[str, list[Any]]:
    """A protocol event with wrong types in its fields (or not an object at all), maybe extra arguments."""
    name = draw(event_names)
    keys = PROTOCOL.get(name, ())
    payload: Any = draw(
        st.fixed_dictionaries({}, optional={key: wrong_values for key in keys})
        | st.dictionaries(st.sampled_from([*keys, "x"]) | st.text(max_size=5), wrong_values, max_size=6)
        | wrong_values
    )
    extra = draw(st.lists(json_values, max_size=2))
    return name, [payload, *extra]


def _deep(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


sio_garbage = st.one_of(
    st.text(max_size=200).map(lambda t: "4" + t),  # anything after the MESSAGE type
    st.builds(
        lambda d, k: f'42["cache_sync",{{"cache":{_deep(d, k)}}}]',
        st.integers(1, 3000),
        st.sampled_from(["list", "dict"]),
    ),
    st.builds(lambda n: f'42{n}["heartbeat",{{}}]', st.integers(0, 10**40)),  # huge ack ids
    st.builds(lambda n: f"43{n}[]", st.integers(0, 10**40)),  # acks for nothing we asked
    st.builds(
        lambda count, num: f'45{count}-["cache_sync",{{"cache":{{"_placeholder":true,"num":{num}}}}}]',
        st.integers(0, 10**7),
        st.integers(-5, 10**7),
    ),  # binary placeholder counts that lie
    st.sampled_from(['42["connect"]', '42["disconnect"]', "41", "40/other,", '44{"message":"x"}', "46-[]", "40[]"]),
)


# -- the tests --------------------------------------------------------------------------------------------
@fuzz(150)
@given(payload=st.binary(max_size=2000))
def test_arbitrary_bytes_are_answered_or_closed(live: Live, payload: bytes) -> None:
    answer = _exchange(live.port, payload)
    assert not answer or answer.startswith(b"HTTP/1.1 "), answer[:100]
    assert b" 500 " not in answer[:20]


header_text = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=40)


@fuzz(150)
@given(
    method=st.sampled_from(["GET", "POST", "OPTIONS", "PUT", "G\x00T", ""]) | header_text,
    path=st.sampled_from(["/socket.io/", "/api/status", "/webhook/github", "/metrics", "/api/stop"]) | header_text,
    query=st.sampled_from(["EIO=4&transport=polling", "EIO=4&transport=websocket&sid=x", "EIO=3", "sid=%00"])
    | header_text,
    headers=st.lists(st.tuples(header_text, header_text), max_size=6),
    body=st.binary(max_size=300),
    length=st.none() | st.integers(-5, 10**12).map(str) | header_text,
)
def test_malformed_http_requests(
    live: Live, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes, length: str | None
) -> None:
    head = f"{method} {path}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    answer = _exchange(live.port, head.encode("latin-1") + b"\r\n" + body)
    assert not answer or answer.startswith(b"HTTP/1.1 "), answer[:100]
    assert b" 500 " not in answer[:20]


frames = st.lists(
    st.builds(
        lambda opcode, payload, fin, mask, lie: _ws_frame(opcode, payload, fin=fin, mask=mask, length=lie),
        st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]) | st.integers(0, 15),
        st.binary(max_size=300) | st.just(b"4" * (MAX_PAYLOAD + 10)),
        st.booleans(),
        st.booleans() | st.just(True),
        st.none() | st.integers(0, 2**63 - 1) | st.just(MAX_PAYLOAD + 1),
    )
    | st.binary(max_size=50),  # raw bytes mid-stream: truncated headers and the like
    max_size=5,
)


@fuzz(150)
@given(frames=frames, authenticate=st.booleans())
def test_websocket_frames_truncated_oversize_and_lying(live: Live, frames: list[bytes], authenticate: bool) -> None:
    opening = _auth(live) if authenticate else b""
    answer = _exchange(live.port, WS_HANDSHAKE + opening + b"".join(frames))
    assert not answer or answer.startswith(b"HTTP/1.1 101 ")  # empty: reset, as a close with unread data is
    assert TOKEN.encode() not in answer  # no identify was sent: no hello, whatever else happened


@fuzz(150)
@given(messages=st.lists(sio_garbage, min_size=1, max_size=4), authenticate=st.booleans())
def test_malformed_engineio_and_socketio_packets(live: Live, messages: list[str], authenticate: bool) -> None:
    opening = _auth(live) if authenticate else b""
    binary = b"".join(_ws_frame(0x2, b"x") for _ in range(3))  # attachments for placeholders, too few or too many
    answer = _exchange(live.port, WS_HANDSHAKE + opening + b"".join(_text(m) for m in messages) + binary)
    assert not answer or answer.startswith(b"HTTP/1.1 101 ")
    assert TOKEN.encode() not in answer


@fuzz(150)
@given(
    messages=st.lists(st.text(max_size=300).map(lambda t: t.encode()) | st.binary(max_size=300), max_size=4),
    polling_packets=st.lists(st.sampled_from(["4", "40", "42", "b", "2", "3", "1", "6", "5", "0"]), max_size=4),
)
def test_polling_posts_of_garbage(live: Live, messages: list[bytes], polling_packets: list[str]) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=READ_TIMEOUT) as sock:
        sock.sendall(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        opened = _read_all(sock)
    sid = json.loads(opened.split(b"\r\n\r\n", 1)[1][1:])["sid"]
    records = [p.encode() + m for p, m in zip(polling_packets, messages, strict=False)] or messages or [b""]
    records += [b"b" + base64.b64encode(m) for m in messages[:1]]
    body = b"\x1e".join(records)
    request = (
        f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    answer = _exchange(live.port, request)
    assert answer.split(b" ", 2)[1] in (b"200", b"400", b"413"), answer[:100]


@fuzz(200)
@given(events=st.lists(protocol_events(), min_size=1, max_size=4), identify_first=st.booleans())
def test_protocol_events_with_wrong_types_in_every_field(
    live: Live, events: list[tuple[str, list[Any]]], identify_first: bool
) -> None:
    """An authenticated worker sends nonsense; every event with an ack id is answered or the connection closes.

    The burst is sent with the CONNECT, before its ack: once it passed the 4 KiB buffered before authentication,
    events used to be dropped unanswered (found here in CI; regression tests: tests/supervisor/test_service.py
    ``test_a_burst_sent_before_the_connect_ack_is_answered_whole`` and tests/socketio/test_server.py).
    """
    if identify_first:
        events = [("identify", [{"version": "0.1"}]), *events]
    messages = [f"42{n}" + json.dumps([name, *args]) for n, (name, args) in enumerate(events, start=1)]
    answer = asyncio_free_ws_session(live, messages)
    acks = {
        int(frame[2 : frame.index("[")]): json.loads(frame[frame.index("[") :]) for frame in answer if frame[:2] == "43"
    }
    closed_early = answer[-1:] == ["<closed>"]
    assert set(acks) == set(range(1, len(events) + 1)) or closed_early, (events, answer)
    for reply in acks.values():
        assert len(reply) == 1 and isinstance(reply[0], dict), reply  # one answer object, maybe {"error": ...}


def asyncio_free_ws_session(live: Live, messages: list[str]) -> list[str]:
    """Authenticate, send ``messages`` (Socket.IO text, with ack ids), read until every ack came or it closed."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=READ_TIMEOUT) as sock:
        sock.sendall(WS_HANDSHAKE + _auth(live, "child-fuzz-2") + b"".join(_text(m) for m in messages))
        reader = _FrameReader(sock)
        wanted = {n for n in range(1, len(messages) + 1)}
        seen: list[str] = []
        while wanted:
            frame = reader.next()
            if frame is None:
                seen.append("<closed>")
                break
            if frame[:2] == "43":
                wanted.discard(int(frame[2 : frame.index("[")]))
            seen.append(frame)
        return seen


class _FrameReader:
    """Unmasked server frames from a blocking socket, after the 101 head; text frames only matter here."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(READ_TIMEOUT)
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 "), head

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except TimeoutError:
            pytest.fail("the server neither answered an event nor closed the connection")
        self.buffer += chunk
        return bool(chunk)

    def _take(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            if not self._fill():
                return None
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def next(self) -> str | None:
        while True:
            head = self._take(2)
            if head is None:
                return None
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                ext = self._take(2)
                length = struct.unpack("!H", ext)[0] if ext else 0
            elif length == 127:
                ext = self._take(8)
                length = struct.unpack("!Q", ext)[0] if ext else 0
            payload = self._take(length)
            if payload is None or opcode == 0x8:
                return None
            if opcode == 0x1:
                return payload.decode()
