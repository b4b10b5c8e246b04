"""Discord notifications against a fake Discord at the HTTP boundary (httpx.MockTransport), on a virtual clock."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from urban_robot.supervisor import Notify
from urban_robot.supervisor._notify import (
    ALREADY_NOTIFIED,
    MESSAGE_LIMIT,
    DiscordLogHandler,
    DiscordState,
    Notifier,
    NotifyError,
    discord_send,
    parse_log_level,
    split_message,
)

TOKEN = "MTA5ODc2NTQz.Gx7yQk.s3cr3t-b0t-t0k3n"
CHANNEL = "123456789012345678"
USER = "42"
DM_CHANNEL = "900"
NO_MENTIONS: dict[str, list[str]] = {"parse": []}


@attrs.define(eq=False)
class Call:
    at: float
    path: str
    body: Any
    headers: httpx.Headers


@attrs.define(eq=False)
class FakeDiscord:
    """Records every request with its virtual time; answers from ``script`` first, then 200 (or a dead network)."""

    script: list[httpx.Response] = attrs.Factory(list)
    calls: list[Call] = attrs.Factory(list)
    dead: bool = False  # every request fails to connect
    gate: trio.Event | None = None  # while unset, requests hang: a slow Discord
    chatty: bool = False  # logs a warning per request, as a library under httpx might
    arrived: trio.Event = attrs.Factory(trio.Event)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v10")
        self.calls.append(Call(trio.current_time(), path, json.loads(request.content), request.headers))
        self.arrived.set()
        self.arrived = trio.Event()
        if self.chatty:
            logging.getLogger("tests.transport").warning("socket hiccup on %s", path)
        if self.gate is not None:
            await self.gate.wait()
        if self.dead:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.script:
            return self.script.pop(0)
        return httpx.Response(200, json={"id": DM_CHANNEL} if path == "/users/@me/channels" else {"id": "1"})

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(3600):  # on the virtual clock a regression fails at once instead of hanging
            while len(self.calls) < count:
                await self.arrived.wait()

    @property
    def contents(self) -> list[str]:
        return [c.body["content"] for c in self.calls if c.path.endswith("/messages")]

    def times(self, since: float = 0.0) -> list[float]:
        return [c.at - since for c in self.calls]


def rate_limited(retry_after: float, *, is_global: bool = False) -> httpx.Response:
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}
    return httpx.Response(429, json=body, headers={"X-RateLimit-Global": "true"} if is_global else {})


@pytest.fixture
def discord() -> FakeDiscord:
    return FakeDiscord()


@pytest.fixture
async def client(discord: FakeDiscord) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(discord.handle)) as client:
        yield client


async def start(nursery: trio.Nursery, client: httpx.AsyncClient, **kwargs: Any) -> Notifier:
    notifier = Notifier(client, TOKEN, CHANNEL, **kwargs)
    await nursery.start(notifier.run)
    return notifier


# -- discord_send -------------------------------------------------------------------------------------------
async def test_channel_message_is_one_authorized_post(
    client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    await discord_send(CHANNEL, "hello", TOKEN, client=client)
    [call] = discord.calls
    assert call.path == f"/channels/{CHANNEL}/messages"
    assert call.body == {"content": "hello", "allowed_mentions": NO_MENTIONS}
    assert call.headers["Authorization"] == f"Bot {TOKEN}"
    assert call.headers["User-Agent"].startswith("DiscordBot (")


async def test_base_url_is_configurable(discord: FakeDiscord, autojump_clock: trio.testing.MockClock) -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"id": "1"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        await discord_send(CHANNEL, "hi", TOKEN, client=client, base_url="http://fake.test/api/")
    assert seen == [f"http://fake.test/api/channels/{CHANNEL}/messages"]


async def test_dm_opens_the_channel_then_posts_and_remembers_it(
    client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    state = DiscordState()
    await discord_send(USER, "psst", TOKEN, dm=True, client=client, state=state)
    assert [(c.path, c.body) for c in discord.calls] == [
        ("/users/@me/channels", {"recipient_id": USER}),
        (f"/channels/{DM_CHANNEL}/messages", {"content": "psst", "allowed_mentions": NO_MENTIONS}),
    ]
    await discord_send(USER, "again", TOKEN, dm=True, client=client, state=state)
    assert [c.path for c in discord.calls[2:]] == [f"/channels/{DM_CHANNEL}/messages"]


async def test_long_message_is_split_at_lines_without_losing_text(
    client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    text = "".join(f"line {i}: " + "x" * (i % 97) + "\n" for i in range(200))[:4500]
    assert len(text) == 4500
    await discord_send(CHANNEL, text, TOKEN, client=client)
    parts = discord.contents
    assert len(parts) == 3
    assert all(len(part) <= MESSAGE_LIMIT for part in parts)
    assert "".join(parts) == text
    assert all(part.endswith("\n") for part in parts[:-1])


async def test_blank_parts_are_not_sent(client: httpx.AsyncClient, discord: FakeDiscord) -> None:
    await discord_send(CHANNEL, " \n ", TOKEN, client=client)
    await discord_send(CHANNEL, "\n" * 2500 + "end", TOKEN, client=client)
    assert discord.contents == ["\n" * 500 + "end"]  # Discord answers 400 to blank content


@given(st.text(alphabet="ab \n", max_size=300), st.integers(min_value=1, max_value=40))
def test_split_keeps_every_character_in_order(text: str, limit: int) -> None:
    parts = split_message(text, limit)
    assert "".join(parts) == text
    assert all(0 < len(part) <= limit for part in parts)
    for part, rest in itertools.pairwise(parts):
        if "\n" in (part + rest)[:limit]:
            assert part.endswith("\n")  # a line boundary within reach is where it cuts


async def test_429_waits_exactly_retry_after(
    client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    discord.script = [rate_limited(1.5)]
    start_time = trio.current_time()
    await discord_send(CHANNEL, "hello", TOKEN, client=client)
    assert discord.times(start_time) == pytest.approx([0.0, 1.5])
    assert trio.current_time() - start_time == pytest.approx(1.5)
    assert discord.contents == ["hello", "hello"]


async def test_global_429_holds_every_route(
    client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    discord.script = [rate_limited(2.0, is_global=True)]
    state = DiscordState()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: discord_send(CHANNEL, "first", TOKEN, client=client, state=state))
        await trio.testing.wait_all_tasks_blocked()  # the 429 is in: the first send is waiting
        await discord_send("777", "other route", TOKEN, client=client, state=state)
    assert sorted((c.at, c.path) for c in discord.calls) == [
        (0.0, f"/channels/{CHANNEL}/messages"),
        (2.0, f"/channels/{CHANNEL}/messages"),
        (2.0, "/channels/777/messages"),
    ]


async def test_empty_bucket_delays_the_next_request_on_that_route_only(
    client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "3.25"}
    discord.script = [httpx.Response(200, json={"id": "1"}, headers=headers)]
    state = DiscordState()
    await discord_send(CHANNEL, "one", TOKEN, client=client, state=state)
    await discord_send("777", "elsewhere", TOKEN, client=client, state=state)
    await discord_send(CHANNEL, "two", TOKEN, client=client, state=state)
    assert discord.times() == pytest.approx([0.0, 0.0, 3.25])


async def test_5xx_is_retried_with_backoff(
    client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    discord.script = [httpx.Response(502), httpx.Response(503)]
    await discord_send(CHANNEL, "hello", TOKEN, client=client)
    assert discord.times() == pytest.approx([0.0, 1.0, 3.0])


async def test_retries_are_bounded(
    client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    discord.script = [httpx.Response(500)] * 10
    with pytest.raises(NotifyError) as caught:
        await discord_send(CHANNEL, "hello", TOKEN, client=client)
    assert discord.times() == pytest.approx([0.0, 1.0, 3.0, 7.0, 15.0])
    assert str(caught.value) == (
        f"sending a message to channel {CHANNEL} failed 5 times (last: HTTP 500): "
        "check the network and https://discordstatus.com"
    )


async def test_401_is_one_clear_line_without_the_token(
    client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    discord.script = [httpx.Response(401, json={"message": "401: Unauthorized", "code": 0})]
    with pytest.raises(NotifyError) as caught:
        await discord_send(CHANNEL, "hello", TOKEN, client=client)
    assert str(caught.value) == "Discord refused the bot token (401): check BOT_TOKEN"
    assert caught.value.status == 401
    assert len(discord.calls) == 1  # no retry can fix a refusal
    assert TOKEN not in repr(caught.value)


@pytest.mark.parametrize(
    ("dm", "status", "detail", "expected"),
    [
        (
            False,
            403,
            "Missing Permissions",
            f"Discord refused sending a message to channel {CHANNEL} (403: Missing Permissions): "
            "give the bot View Channel and Send Messages there",
        ),
        (
            False,
            404,
            "Unknown Channel",
            f"Discord refused sending a message to channel {CHANNEL} (404: Unknown Channel): "
            "check the channel id (LOGGING_CHANNEL)",
        ),
        (
            True,
            403,
            "Cannot send messages to this user",
            f"Discord refused opening a DM with user {USER} (403: Cannot send messages to this user): "
            "the user must share a server with the bot and accept DMs from it",
        ),
    ],
)
async def test_other_refusals_say_what_to_do(
    client: httpx.AsyncClient,
    discord: FakeDiscord,
    dm: bool,
    status: int,
    detail: str,
    expected: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    discord.script = [httpx.Response(status, json={"message": detail, "code": 50013})]
    with pytest.raises(NotifyError) as caught:
        await discord_send(USER if dm else CHANNEL, "hello", TOKEN, dm=dm, client=client)
    assert str(caught.value) == expected
    assert len(discord.calls) == 1


# -- Notifier -----------------------------------------------------------------------------------------------
async def test_notifier_forwards_at_or_above_its_level(
    nursery: trio.Nursery, client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = await start(nursery, client, level="warning")
    notifier.notify(Notify("info", "deployed 1.2"))
    notifier.notify(Notify("critical", "state directory unwritable"))
    await discord.wait_for(1)
    await trio.testing.wait_all_tasks_blocked()
    assert discord.contents == ["🚨 state directory unwritable"]


async def test_full_queue_never_blocks_notify_and_reports_the_drops(
    nursery: trio.Nursery, client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    discord.gate = trio.Event()  # Discord hangs until we say so
    notifier = await start(nursery, client, queue_size=3)
    notifier.notify(Notify("info", "m0"))
    await discord.wait_for(1)  # m0 is in flight, stuck
    with trio.testing.assert_no_checkpoints():
        for i in range(1, 11):
            notifier.notify(Notify("info", f"m{i}"))
    assert notifier.dropped == 7  # m1..m7: the oldest go
    discord.gate.set()
    await discord.wait_for(4)
    await trio.testing.wait_all_tasks_blocked()
    assert discord.contents == ["m0", "(7 dropped (queue full): earlier notifications lost)\nm8", "m9", "m10"]
    assert notifier.dropped == 0


async def test_flush_returns_once_everything_queued_was_sent(
    nursery: trio.Nursery, client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    """What a stopping supervisor waits for, so "the bot goes offline" is not lost with the process."""
    notifier = await start(nursery, client)
    await notifier.flush()  # nothing queued: at once
    assert trio.current_time() == 0
    discord.gate = trio.Event()
    notifier.notify(Notify("info", "is running, epoch 3"))
    notifier.notify(Notify("warning", "supervisor stopping: the bot goes offline (SIGTERM)"))
    flushed = trio.Event()

    async def flush() -> None:
        await notifier.flush()
        flushed.set()

    nursery.start_soon(flush)
    await discord.wait_for(1)
    await trio.sleep(30)  # Discord is slow: the first one is still in flight, the second queued
    assert not flushed.is_set()
    discord.gate.set()
    await flushed.wait()
    assert discord.contents == ["is running, epoch 3", "⚠️ supervisor stopping: the bot goes offline (SIGTERM)"]


async def test_identical_alerts_collapse_into_the_first_and_one_summary(
    nursery: trio.Nursery, client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = await start(nursery, client, window=300)
    for _ in range(14):
        notifier.notify(Notify("critical", "child-x crashed"))
        await trio.sleep(10)  # a crash loop, on the virtual clock
    notifier.notify(Notify("warning", "something else"))
    await discord.wait_for(3)
    assert discord.contents == ["🚨 child-x crashed", "⚠️ something else", "🚨 child-x crashed — 14 times in 5 min"]
    assert discord.times() == pytest.approx([0.0, 140.0, 300.0])  # the summary waits for the window's end
    notifier.notify(Notify("critical", "child-x crashed"))  # a new window: out at once again
    await discord.wait_for(4)
    assert discord.calls[-1].at == pytest.approx(300.0)


async def test_dead_discord_costs_messages_never_the_notifier(
    nursery: trio.Nursery, client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    discord.dead = True
    notifier = await start(nursery, client, queue_size=5)
    with trio.testing.assert_no_checkpoints():  # what the supervisor sees: notify() returns at once
        for i in range(1000):
            notifier.notify(Notify("warning", f"worker {i} died"))
    await discord.wait_for(5 * 5)  # five queued messages, five bounded attempts each
    await trio.testing.wait_all_tasks_blocked()
    assert (notifier.dropped, notifier.failed) == (995, 5)
    assert trio.current_time() == pytest.approx(5 * (1 + 2 + 4 + 8))  # backoff between attempts, then give up
    discord.dead = False
    notifier.notify(Notify("info", "back"))
    await discord.wait_for(26)
    await trio.testing.wait_all_tasks_blocked()
    assert discord.contents[-1] == "(995 dropped (queue full) and 5 failed to send: earlier notifications lost)\nback"
    assert (notifier.dropped, notifier.failed) == (0, 0)


async def test_notifier_survives_a_refusing_discord(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    discord: FakeDiscord,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    discord.script = [httpx.Response(401)]
    notifier = await start(nursery, client)
    notifier.notify(Notify("warning", "one"))
    notifier.notify(Notify("warning", "two"))
    await discord.wait_for(2)
    await trio.testing.wait_all_tasks_blocked()
    assert discord.contents == ["⚠️ one", "(1 failed to send: earlier notifications lost)\n⚠️ two"]
    assert "a notification did not reach Discord" not in caplog.text  # a refused token is said once, below
    ours = [r for r in caplog.records if r.name.startswith("urban_robot")]  # not httpx's request lines
    assert [r.levelno for r in ours] == [logging.CRITICAL]
    assert ours[0].getMessage() == (
        "notifications cannot be delivered: Discord refused the bot token (401): check BOT_TOKEN; "
        "set URBAN_ROBOT_NOTIFY_WEBHOOK to a channel webhook's URL so they reach you even then"
    )


async def test_notifier_can_send_to_a_dm(
    client: httpx.AsyncClient, discord: FakeDiscord, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = Notifier(client, TOKEN, USER, dm=True)
    await nursery.start(notifier.run)
    notifier.notify(Notify("critical", "rollback failed"))
    notifier.notify(Notify("critical", "rollback failed again"))
    await discord.wait_for(3)
    assert [c.path for c in discord.calls] == ["/users/@me/channels"] + [f"/channels/{DM_CHANNEL}/messages"] * 2
    assert discord.contents == ["🚨 rollback failed", "🚨 rollback failed again"]


# -- the logging bridge -------------------------------------------------------------------------------------
Attach = Callable[[logging.Handler], None]


@pytest.fixture
def attach() -> Iterator[Attach]:
    """Attach handlers to the root logger, at DEBUG, for one test: where they meet httpx's and our own records."""
    root, attached = logging.getLogger(), list[logging.Handler]()
    level = root.level
    root.setLevel(logging.DEBUG)

    def attach(handler: logging.Handler) -> None:
        attached.append(handler)
        root.addHandler(handler)

    yield attach
    for handler in attached:
        root.removeHandler(handler)
    root.setLevel(level)


async def test_log_bridge_forwards_warnings_not_debug_and_never_itself(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    discord: FakeDiscord,
    attach: Attach,
    autojump_clock: trio.testing.MockClock,
) -> None:
    notifier = await start(nursery, client)
    attach(DiscordLogHandler(notifier, logging.WARNING))
    app = logging.getLogger("tests.bridge")
    app.debug("debug detail")
    app.info("routine")
    app.warning("disk at 91%")
    app.error("cannot reach %s", "github")
    logging.getLogger("urban_robot.supervisor.notify").warning("the notifier's own")
    logging.getLogger("urban_robot.supervisor").critical("already sent by notify()", extra=ALREADY_NOTIFIED)
    await trio.to_thread.run_sync(app.warning, "from a worker thread")
    await discord.wait_for(3)
    await trio.testing.wait_all_tasks_blocked()
    assert discord.contents == [
        "⚠️ tests.bridge: disk at 91%",
        "❌ tests.bridge: cannot reach github",
        "⚠️ tests.bridge: from a worker thread",
    ]


async def test_log_bridge_at_info_does_not_feed_on_httpx_or_failures(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    discord: FakeDiscord,
    attach: Attach,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")  # its request lines (configure_logging quiets them, if it ran)
    discord.script = [httpx.Response(403, json={"message": "Missing Access"})]
    discord.chatty = True
    notifier = await start(nursery, client)
    attach(DiscordLogHandler(notifier, logging.INFO))
    logging.getLogger("tests.bridge").info("first")  # refused: the notifier logs a warning while sending
    logging.getLogger("tests.bridge").info("second")  # sent: httpx logs the request at INFO while sending
    await discord.wait_for(2)
    await trio.testing.wait_all_tasks_blocked()
    assert len(discord.calls) == 2  # neither record made a third ...
    assert "HTTP Request: POST" in caplog.text  # ... although both reached the root logger
    assert "a notification did not reach Discord" in caplog.text
    assert "socket hiccup" in caplog.text


async def test_log_bridge_redacts_the_token(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    discord: FakeDiscord,
    attach: Attach,
    autojump_clock: trio.testing.MockClock,
) -> None:
    notifier = await start(nursery, client)
    attach(DiscordLogHandler(notifier))
    logging.getLogger("tests.bridge").warning("connecting with %s failed", TOKEN)
    await discord.wait_for(1)
    assert discord.contents == ["⚠️ tests.bridge: connecting with [redacted] failed"]


# -- the token never leaks ----------------------------------------------------------------------------------
async def test_token_never_in_logs_errors_or_reprs(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    discord: FakeDiscord,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    echo = {"message": f"bad header Bot {TOKEN}"}  # a Discord that quotes the token back at us
    for script in ([httpx.Response(401)], [httpx.Response(400, json=echo)], [httpx.Response(500)] * 5):
        discord.script = list(script)
        with pytest.raises(NotifyError) as caught:
            await discord_send(CHANNEL, f"text with {TOKEN}", TOKEN, client=client)
        errors.append(caught.value)
    discord.dead = True
    with pytest.raises(NotifyError) as caught:
        await discord_send(USER, "hi", TOKEN, dm=True, client=client)
    errors.append(caught.value)
    for bad in ("", f"{TOKEN}\r\nX-Evil: 1", f"é{TOKEN}"):
        with pytest.raises(NotifyError) as caught:
            Notifier(client, bad, CHANNEL)
        errors.append(caught.value)

    discord.dead = False
    discord.script = [httpx.Response(401)]
    notifier = await start(nursery, client)
    notifier.notify(Notify("critical", "boom"))
    await discord.wait_for(len(discord.calls) + 1)
    await trio.testing.wait_all_tasks_blocked()

    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [repr(notifier), caplog.text]
    texts += [c.body.get("content", "") for c in discord.calls]
    assert "notifications cannot be delivered" in caplog.text
    assert "[redacted]" in "".join(texts)
    assert not [text for text in texts if TOKEN in text]


# -- configuration ------------------------------------------------------------------------------------------
async def test_configuration_from_the_original_environment(client: httpx.AsyncClient) -> None:
    assert Notifier.from_env(client, {}) is None
    notifier = Notifier.from_env(client, {"BOT_TOKEN": TOKEN, "LOGGING_CHANNEL": CHANNEL})
    assert notifier is not None and (notifier.destination, notifier.dm) == (CHANNEL, False)
    assert DiscordLogHandler.from_env(notifier, {}).level == logging.WARNING
    assert DiscordLogHandler.from_env(notifier, {"DISCORD_LOG_LEVEL": "error"}).level == logging.ERROR
    assert parse_log_level("25") == 25
    with pytest.raises(NotifyError, match="DISCORD_LOG_LEVEL='loud' is not a log level"):
        parse_log_level("loud")
    with pytest.raises(NotifyError, match="is not a Discord id"):
        Notifier(client, TOKEN, "../../guilds/1")


async def test_workers_failing_alike_reach_discord_once_then_as_a_count(
    nursery: trio.Nursery, client: httpx.AsyncClient, discord: FakeDiscord, autojump_clock: trio.testing.MockClock
) -> None:
    """A refused token makes every replacement fail the same way: the core says one line, the notifier folds it."""
    from urban_robot.supervisor import Connected, Identified, ProcessExited, Settings, Supervisor, WorkerFailed

    notifier = await start(nursery, client, window=300)
    core = Supervisor(Settings(spawn_workers=True, crash_loop_losses=0))
    for n in range(6):  # each replacement fails in turn, as children with a refused token do
        now = trio.current_time()
        core.handle(Connected(f"w{n}", f"child-3f9a2c-{n}", generation=2), now)
        core.handle(Identified(f"w{n}", "1.4.0", generation=2), now)
        out = core.handle(WorkerFailed(f"w{n}", "the token was refused", "reset it and update BOT_TOKEN"), now)
        out += core.handle(ProcessExited(f"child-3f9a2c-{n}", 1), now)
        for action in out:
            if isinstance(action, Notify):
                notifier.notify(action)
        await trio.sleep(20)
    await discord.wait_for(2)  # the count comes when the window ends, with no other message to wake the sender
    line = "a worker (version 1.4.0) cannot work: the token was refused — reset it and update BOT_TOKEN"
    assert discord.contents == [f"🚨 {line}", f"🚨 {line} — 6 times in 5 min"]
    assert discord.times() == pytest.approx([0.0, 300.0])
