"""Server API behaviour, over in-memory streams with raw Engine.IO frames and a virtual clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from tests._helpers import MemoryListener, raw_memory_client
from urban_robot.socketio import Disconnected, Later, Namespace, Server
from urban_robot.socketio._server import MAX_EARLY_EVENTS


async def serve(nursery: trio.Nursery, server: Server) -> MemoryListener:
    listener = MemoryListener()
    await nursery.start(lambda task_status: server.serve(listeners=[listener], task_status=task_status))
    return listener


def event_of(frame: str | bytes) -> list[Any]:
    """The arguments of an EVENT frame on "/" (an ack id, if any, skipped)."""
    assert isinstance(frame, str) and frame.startswith("42"), frame
    return list(json.loads(frame[2:].lstrip("0123456789")))


async def test_rooms_broadcast_and_skip_sid(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    server = Server()

    @server.on("join")
    async def join(sid: str, room: str) -> list[str]:
        await server.enter_room(sid, room)
        return server.rooms(sid)

    @server.on("leave")
    async def leave(sid: str, room: str) -> None:
        await server.leave_room(sid, room)

    @server.on("tell")
    async def tell(sid: str, room: str | None, text: str) -> None:
        await server.emit("told", text, room=room, skip_sid=sid)

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as a, raw_memory_client(listener) as b, raw_memory_client(listener) as c:
        sid_a = await a.connect_namespace()
        await b.connect_namespace()
        await c.connect_namespace()
        for client in (a, b):
            await client.send('421["join","red"]')
            reply = await client.receive()
            assert isinstance(reply, str) and reply.startswith("431") and '"red"' in reply
        await a.send('42["tell","red","to red"]')
        assert event_of(await b.receive()) == ["told", "to red"]
        await b.send('42["leave","red"]')
        await b.send('42["tell",null,"to all"]')
        assert event_of(await a.receive()) == ["told", "to all"]
        assert event_of(await c.receive()) == ["told", "to all"]  # c never heard "to red"
        await a.send('42["tell","red","again"]')  # only a is in red now, and a is skipped
        await a.send('42["tell",null,"last"]')
        assert event_of(await b.receive()) == ["told", "last"]
        assert event_of(await c.receive()) == ["told", "last"]
        assert server.rooms(sid_a) == sorted([sid_a, "red"])


async def test_catch_all_handler_gets_unknown_events(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server()

    @server.on("*")
    async def anything(event: str, sid: str, *args: Any) -> tuple[Any, ...]:
        return (event, *args)

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.connect_namespace()
        await client.send('425["whatever",1,2]')
        assert await client.receive() == '435["whatever",1,2]'


async def test_call_times_out_and_fails_fast_on_disconnect(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(ping_interval=1000, ping_timeout=1000)
    outcomes: list[str] = []
    joined = trio.Event()
    sids: list[str] = []

    @server.on("connect")
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        sids.append(sid)
        joined.set()

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.connect_namespace()
        await joined.wait()
        start = trio.current_time()
        with pytest.raises(TimeoutError):
            await server.call("question", to=sids[0], timeout=7)
        assert trio.current_time() - start == pytest.approx(7)
        assert event_of(await client.receive())[0] == "question"

        async def ask() -> None:
            try:
                await server.call("question", to=sids[0], timeout=100)
            except Disconnected:
                outcomes.append("disconnected")

        async with trio.open_nursery() as inner:
            inner.start_soon(ask)
            await client.receive()
            await client.send("41")  # leave the namespace instead of answering
    assert outcomes == ["disconnected"]
    with pytest.raises(Disconnected):
        await server.call("question", to="no-such-sid")


async def test_handler_errors_are_logged_and_the_client_lives_on(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server()

    @server.on("boom")
    async def boom(sid: str) -> None:
        raise RuntimeError("handler bug")

    @server.on("echo")
    def echo(sid: str, data: Any) -> Any:  # plain functions work too
        return data

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.connect_namespace()
        await client.send('421["boom"]')
        await client.send('422["echo","alive"]')
        assert await client.receive() == '432["alive"]'
    assert "handler for an event on / failed" in caplog.text


async def test_in_order_handlers_when_async_handlers_is_false(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(async_handlers=False)
    seen: list[int] = []

    @server.on("n")
    async def n(sid: str, value: int) -> int:
        await trio.sleep(10 - value)  # later events finish sooner if run concurrently
        seen.append(value)
        return value

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.connect_namespace()
        for i in range(5):
            await client.send(f'42{i}["n",{i}]')
        replies = [await client.receive() for _ in range(5)]
    assert seen == [0, 1, 2, 3, 4]
    assert replies == [f"43{i}[{i}]" for i in range(5)]


async def test_namespace_class_helpers_default_to_their_namespace(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server()
    answers: list[Any] = []

    class Chat(Namespace):
        async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
            await self.enter_room(sid, "lobby")

        async def on_ask(self, sid: str) -> None:
            answers.append(await self.call("question", "?", to=sid, timeout=5))
            await self.emit("done", to="lobby")

    server.register_namespace(Chat("/chat"))
    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.connect_namespace("/chat")
        await client.send('42/chat,["ask"]')
        question = await client.receive()
        assert isinstance(question, str) and question.startswith("42/chat,")
        ack_id = question[len("42/chat,") : question.index("[")]
        await client.send(f'43/chat,{ack_id}["yes",2]')
        assert await client.receive() == '42/chat,["done"]'
    assert answers == [("yes", 2)]


async def test_refusal_by_returning_false_and_with_builtin_exception(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server()

    @server.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> bool:
        if auth == {"how": "builtin"}:
            raise ConnectionRefusedError("nope", [1, 2])
        return False

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.send('40{"how":"false"}')
        assert await client.receive() == '44{"message":"Connection rejected by server"}'
        await client.send('40{"how":"builtin"}')
        assert await client.receive() == '44{"message":"nope","data":[1,2]}'
    assert server.sockets == {}


async def test_shutdown_closes_every_client(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    server = Server()
    reasons: list[str] = []
    gone = trio.Event()

    @server.on("disconnect")
    async def disconnect(sid: str, reason: str) -> None:
        reasons.append(reason)
        gone.set()

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.connect_namespace()
        await server.shutdown()
        assert await client.receive() == "1"
    await gone.wait()
    assert reasons == ["server shutdown"]


def test_bad_configuration_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="ping_interval must be positive"):
        Server(ping_interval=0)
    with pytest.raises(ValueError, match="transports"):
        Server(transports=["carrier-pigeon"])


@pytest.mark.parametrize("event", ["connect", "disconnect", "connect_error"])
async def test_clients_cannot_fire_lifecycle_handlers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, event: str
) -> None:
    server = Server()
    calls: list[str] = []

    @server.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        calls.append("connect")

    @server.on("disconnect")
    async def disconnect(sid: str, reason: str) -> None:
        calls.append(reason)

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.connect_namespace(auth={"secret": "x"})
        await client.send(f'42["{event}",{{"secret":"admin"}}]')
        assert await client.receive() == "1"  # a protocol error: the session is closed
    assert calls == ["connect", "transport error"]


async def test_reserved_event_sent_before_the_connect_ack_closes_only_that_client(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server()
    gate = trio.Event()

    @server.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        await gate.wait()  # the client's next packets arrive while we decide

    @server.on("echo")
    async def echo(sid: str, data: Any) -> Any:
        return data

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as rude:
        await rude.send("40")
        await rude.send('42["disconnect"]')
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        frames = [await rude.receive(), await rude.receive()]
        assert frames[0].startswith("40") and frames[1] == "1"  # type: ignore[union-attr]
    async with raw_memory_client(listener) as polite:  # the server is still serving
        await polite.connect_namespace()
        await polite.send('421["echo","ok"]')
        assert await polite.receive() == '431["ok"]'


@pytest.mark.parametrize("trusted", [False, True])
async def test_events_past_the_early_buffer_wait_for_the_connect_and_are_all_answered(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, trusted: bool
) -> None:
    """Found by fuzzing (tests/web/test_fuzz_edge.py, in CI): an event past the early buffer was dropped unanswered.

    Before its CONNECT is decided, a client's events are buffered up to 4 KiB of JSON (untrusted) and 100 events;
    past that the reader now waits for the decision instead of dropping them, and all are handled in order.
    """
    server = Server(async_handlers=False, namespaces=["/", "/first"])
    gate = trio.Event()
    handled: list[int] = []

    @server.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        await gate.wait()  # the client's burst arrives while we decide

    @server.on("echo")
    async def echo(sid: str, n: int, padding: str) -> int:
        handled.append(n)
        return n

    listener = await serve(nursery, server)
    count = MAX_EARLY_EVENTS + 20
    async with raw_memory_client(listener) as client:
        if trusted:  # a second namespace's events: no byte bound (trusted), the count bound still holds
            await client.connect_namespace("/first")
        await client.send("40")
        for n in range(1, count + 1):
            padding = "x" * 1000 if n <= 5 else ""  # 5 kB at first: past the 4 KiB buffered before authentication
            await client.send(f'42{n}["echo",{n},"{padding}"]')
        await trio.testing.wait_all_tasks_blocked()
        assert handled == []  # nothing handled before the CONNECT is accepted ...
        gate.set()
        acks: list[str | bytes] = []
        with trio.move_on_after(60):  # virtual time: every answer comes at once, or never
            connected = await client.receive()
            assert isinstance(connected, str) and connected.startswith("40{"), connected
            while len(acks) < count:
                acks.append(await client.receive())
    assert acks == [f"43{n}[{n}]" for n in range(1, count + 1)]  # ... then every one, in order
    assert handled == list(range(1, count + 1))


async def test_events_waiting_for_a_refused_connect_are_dropped_with_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(async_handlers=False, connect_timeout=5)
    gate = trio.Event()
    handled: list[int] = []

    @server.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        await gate.wait()
        raise ConnectionRefusedError("no")

    @server.on("echo")
    async def echo(sid: str, n: int, padding: str) -> int:
        handled.append(n)
        return n

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.send("40")
        for n in range(1, 10):
            await client.send(f'42{n}["echo",{n},"{"x" * 1000}"]')
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        assert await client.receive() == '44{"message":"no"}'  # the refusal is the answer: no acks follow
        assert await client.receive() == "1"  # closed when no CONNECT succeeded within connect_timeout
    assert handled == []


async def test_a_later_answer_does_not_hold_up_the_clients_next_events(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(async_handlers=False)  # in arrival order: a slow handler would block the next ones
    slow_done = trio.Event()

    @server.on("slow")
    async def slow(sid: str) -> Later:
        async def answer() -> str:
            await slow_done.wait()
            return "slow answer"

        return Later(answer)

    @server.on("quick")
    async def quick(sid: str) -> str:
        return "quick answer"

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as client:
        await client.connect_namespace()
        await client.send('421["slow"]')
        await client.send('422["quick"]')
        assert await client.receive() == '432["quick answer"]'  # answered while "slow" still waits
        slow_done.set()
        assert await client.receive() == '431["slow answer"]'


async def test_an_event_named_star_reaches_the_catch_all_as_an_event(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Found by the chaos-scale fuzzing: "*" was dispatched to the catch-all without its event name."""
    server = Server()
    seen: list[tuple[Any, ...]] = []

    @server.on("*")
    async def anything(event: str, sid: str, *args: Any) -> str:
        seen.append((event, sid, *args))
        return "caught"

    listener = await serve(nursery, server)
    async with raw_memory_client(listener) as client:
        sid = await client.connect_namespace()
        await client.send('421["*",{"x":[1]}]')
        assert await client.receive() == '431["caught"]'
    assert seen == [("*", sid, {"x": [1]})]
