"""Notifications through a Discord webhook: alone, and standing in when Discord refuses the bot's route.

At the HTTP boundary (httpx.MockTransport), on a virtual clock, as tests/supervisor/test_notify.py does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from urban_robot.supervisor import Notify
from urban_robot.supervisor._notify import (
    BOT_ROUTE_RETRY,
    MESSAGE_LIMIT,
    DiscordLogHandler,
    DiscordWebhook,
    Notifier,
    NotifyError,
    webhook_send,
)
from urban_robot.testing.fake_discord import FakeDiscord

TOKEN = "MTA5ODc2NTQz.Gx7yQk.s3cr3t-b0t-t0k3n"
CHANNEL = "123456789012345678"
HOOK_ID = "1122334455667788"
HOOK_TOKEN = "wh-s3cr3t_t0k3n-0123456789abcdefABCDEF"
HOOK_URL = f"https://discord.com/api/webhooks/{HOOK_ID}/{HOOK_TOKEN}"
HOOK_PATH = f"/api/webhooks/{HOOK_ID}/{HOOK_TOKEN}"
CHANNEL_PATH = f"/api/v10/channels/{CHANNEL}/messages"
NO_MENTIONS: dict[str, list[str]] = {"parse": []}


@attrs.frozen
class Call:
    at: float
    path: str
    query: str
    body: Any
    headers: httpx.Headers


@attrs.define(eq=False)
class MockDiscord:
    """Records every request with its virtual time; answers from ``script`` first (by path), then 200."""

    script: dict[str, list[httpx.Response]] = attrs.Factory(dict)  # path -> answers, in order
    calls: list[Call] = attrs.Factory(list)
    arrived: trio.Event = attrs.Factory(trio.Event)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        query = request.url.query.decode()
        self.calls.append(Call(trio.current_time(), path, query, json.loads(request.content), request.headers))
        self.arrived.set()
        self.arrived = trio.Event()
        answers = self.script.get(path)
        if answers:
            return answers.pop(0)
        return httpx.Response(200, json={"id": "1"})

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(3600):  # virtual time: a regression fails at once instead of hanging
            while len(self.calls) < count:
                await self.arrived.wait()

    def to(self, path: str) -> list[str]:
        return [c.body["content"] for c in self.calls if c.path == path]

    def times(self) -> list[float]:
        return [c.at for c in self.calls]


@pytest.fixture
def discord() -> MockDiscord:
    return MockDiscord()


@pytest.fixture
async def client(discord: MockDiscord) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(discord.handle)) as client:
        yield client


@pytest.fixture
def webhook() -> DiscordWebhook:
    return DiscordWebhook.parse(HOOK_URL)


def refused(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"message": message, "code": 0})


# -- the URL ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        HOOK_URL,
        f"https://discord.com/api/v10/webhooks/{HOOK_ID}/{HOOK_TOKEN}/",
        f"http://127.0.0.1:8089/c/supervisor/api/v10/webhooks/{HOOK_ID}/{HOOK_TOKEN}",
        f"https://egress.internal/discord/webhooks/{HOOK_ID}/{HOOK_TOKEN}",
    ],
)
def test_a_webhook_url_is_discords_or_any_http_url_ending_in_webhooks_id_token(url: str) -> None:
    webhook = DiscordWebhook.parse(f"  {url} ")
    assert (webhook.url, webhook.id, webhook.token) == (url.rstrip("/"), HOOK_ID, HOOK_TOKEN)
    assert repr(webhook) == f"DiscordWebhook(id='{HOOK_ID}', token='[redacted]')"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "not an http:// or https:// URL"),
        (f"discord.com/api/webhooks/{HOOK_ID}/{HOOK_TOKEN}", "not an http:// or https:// URL"),
        (f"ftp://discord.com/api/webhooks/{HOOK_ID}/{HOOK_TOKEN}", "not an http:// or https:// URL"),
        (f"https://discord.com/api/webhooks/{HOOK_ID}/{HOOK_TOKEN} x", "not an http:// or https:// URL"),
        (f"https://discord.com/api/webhooks/{HOOK_ID}/{HOOK_TOKEN}?wait=true", "a user@, ?query or #fragment"),
        (f"https://u:{HOOK_TOKEN}@proxy/webhooks/{HOOK_ID}/x", "a user@, ?query or #fragment"),
        (f"https://discord.com/api/webhooks/{HOOK_TOKEN}/{HOOK_ID}", "does not end in /webhooks/<id>/<token>"),
        (f"https://discord.com/api/webhooks/{HOOK_ID}", "does not end in /webhooks/<id>/<token>"),
        (f"https://discord.com/api/channels/{HOOK_ID}/{HOOK_TOKEN}", "does not end in /webhooks/<id>/<token>"),
    ],
)
def test_a_bad_webhook_url_is_one_line_that_never_shows_it(url: str, problem: str) -> None:
    with pytest.raises(NotifyError) as caught:
        DiscordWebhook.parse(url)
    text = str(caught.value)
    assert problem in text and text.endswith("(value hidden)") and "\n" not in text
    assert HOOK_TOKEN not in text + repr(caught.value)


# -- webhook_send -------------------------------------------------------------------------------------------
async def test_a_webhook_post_carries_no_credential_and_waits_for_the_message(
    client: httpx.AsyncClient, discord: MockDiscord, webhook: DiscordWebhook, autojump_clock: trio.testing.MockClock
) -> None:
    await webhook_send(webhook, "hello", client=client)
    [call] = discord.calls
    assert (call.path, call.query) == (HOOK_PATH, "wait=true")
    assert call.body == {"content": "hello", "allowed_mentions": NO_MENTIONS}
    assert "Authorization" not in call.headers
    assert call.headers["User-Agent"].startswith("DiscordBot (")


async def test_a_long_message_through_the_webhook_is_split_without_losing_text(
    client: httpx.AsyncClient, discord: MockDiscord, webhook: DiscordWebhook, autojump_clock: trio.testing.MockClock
) -> None:
    text = "".join(f"line {i}: " + "y" * (i % 89) + "\n" for i in range(200))[:4500]
    await webhook_send(webhook, text, client=client)
    parts = discord.to(HOOK_PATH)
    assert len(parts) == 3 and all(len(part) <= MESSAGE_LIMIT for part in parts)
    assert "".join(parts) == text


async def test_a_webhook_429_waits_exactly_retry_after(
    client: httpx.AsyncClient, discord: MockDiscord, webhook: DiscordWebhook, autojump_clock: trio.testing.MockClock
) -> None:
    limited = httpx.Response(429, json={"message": "You are being rate limited.", "retry_after": 2.5, "global": False})
    discord.script[HOOK_PATH] = [limited]
    await webhook_send(webhook, "hello", client=client)
    assert discord.times() == pytest.approx([0.0, 2.5])
    assert discord.to(HOOK_PATH) == ["hello", "hello"]


async def test_webhook_5xx_are_retried_with_backoff_and_bounded(
    client: httpx.AsyncClient, discord: MockDiscord, webhook: DiscordWebhook, autojump_clock: trio.testing.MockClock
) -> None:
    discord.script[HOOK_PATH] = [httpx.Response(502), httpx.Response(503)]
    await webhook_send(webhook, "hello", client=client)
    assert discord.times() == pytest.approx([0.0, 1.0, 3.0])

    discord.calls.clear()
    discord.script[HOOK_PATH] = [httpx.Response(500)] * 10
    start = trio.current_time()
    with pytest.raises(NotifyError) as caught:
        await webhook_send(webhook, "hello", client=client)
    assert [t - start for t in discord.times()] == pytest.approx([0.0, 1.0, 3.0, 7.0, 15.0])
    assert str(caught.value) == (
        f"posting through webhook {HOOK_ID} failed 5 times (last: HTTP 500): "
        "check the network and https://discordstatus.com"
    )


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (
            401,
            "Invalid Webhook Token",
            "Discord refused the webhook (401: its token is wrong): create a webhook in the channel's settings "
            "(Integrations → Webhooks) and set URBAN_ROBOT_NOTIFY_WEBHOOK to its URL",
        ),
        (
            404,
            "Unknown Webhook",
            f"Discord refused posting through webhook {HOOK_ID} (404: Unknown Webhook): it was deleted or its URL "
            "is wrong: create a webhook in the channel's settings (Integrations → Webhooks) and set "
            "URBAN_ROBOT_NOTIFY_WEBHOOK to its URL",
        ),
    ],
)
async def test_a_refused_webhook_says_what_to_do(
    client: httpx.AsyncClient,
    discord: MockDiscord,
    webhook: DiscordWebhook,
    status: int,
    message: str,
    expected: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    discord.script[HOOK_PATH] = [refused(status, message)]
    with pytest.raises(NotifyError) as caught:
        await webhook_send(webhook, "hello", client=client)
    assert (str(caught.value), caught.value.status) == (expected, status)
    assert len(discord.calls) == 1  # no retry can fix a refusal


# -- the Notifier -------------------------------------------------------------------------------------------
async def test_a_webhook_alone_is_a_destination_without_a_token(
    nursery: trio.Nursery, client: httpx.AsyncClient, discord: MockDiscord, webhook: DiscordWebhook
) -> None:
    notifier = Notifier(client, webhook=webhook)
    await nursery.start(notifier.run)
    notifier.notify(Notify("critical", "a worker cannot work: Discord refused the token"))
    await discord.wait_for(1)
    assert discord.to(HOOK_PATH) == ["🚨 a worker cannot work: Discord refused the token"]
    with pytest.raises(NotifyError, match="no destination for notifications"):
        Notifier(client)
    with pytest.raises(NotifyError, match="no Discord bot token"):
        Notifier(client, None, CHANNEL, webhook=webhook)  # a channel needs the bot's token


@pytest.mark.parametrize(
    ("status", "message", "why"),
    [
        (401, "401: Unauthorized", "Discord refused the bot token (401): check BOT_TOKEN"),
        (
            403,
            "Missing Permissions",
            f"Discord refused sending a message to channel {CHANNEL} (403: Missing Permissions): "
            "give the bot View Channel and Send Messages there",
        ),
        (
            404,
            "Unknown Channel",
            f"Discord refused sending a message to channel {CHANNEL} (404: Unknown Channel): "
            "check the channel id (LOGGING_CHANNEL)",
        ),
    ],
)
async def test_a_refused_bot_route_falls_back_to_the_webhook_and_says_so_once(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    discord: MockDiscord,
    webhook: DiscordWebhook,
    caplog: pytest.LogCaptureFixture,
    status: int,
    message: str,
    why: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    discord.script[CHANNEL_PATH] = [refused(status, message)] * 2
    notifier = Notifier(client, TOKEN, CHANNEL, webhook=webhook)
    await nursery.start(notifier.run)
    notifier.notify(Notify("critical", "boom"))
    notifier.notify(Notify("warning", "again"))
    await discord.wait_for(3)
    await trio.testing.wait_all_tasks_blocked()
    # The refused route is tried once; the webhook carries both, the first saying why it is the webhook.
    assert [c.path for c in discord.calls] == [CHANNEL_PATH, HOOK_PATH, HOOK_PATH]
    assert discord.to(HOOK_PATH) == [f"(sent through the webhook: {why})\n🚨 boom", "⚠️ again"]
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("urban_robot")] == [
        (logging.WARNING, f"notifications go through the webhook for 10 min: {why}")
    ]
    assert (notifier.failed, notifier.dropped) == (0, 0)

    await trio.sleep(BOT_ROUTE_RETRY)  # then the bot's route is tried again: still refused, so the webhook again
    notifier.notify(Notify("warning", "later"))
    await discord.wait_for(5)
    assert [c.path for c in discord.calls[3:]] == [CHANNEL_PATH, HOOK_PATH]
    await trio.sleep(BOT_ROUTE_RETRY)  # and once the bot's route is taken again, it is used alone
    notifier.notify(Notify("warning", "fixed"))
    await discord.wait_for(6)
    assert [c.path for c in discord.calls[5:]] == [CHANNEL_PATH]


@pytest.mark.parametrize("answer", [refused(400, "Invalid Form Body"), httpx.Response(503)])
async def test_other_failures_of_the_bot_route_do_not_fall_back(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    discord: MockDiscord,
    webhook: DiscordWebhook,
    caplog: pytest.LogCaptureFixture,
    answer: httpx.Response,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bad message or a Discord outage would fail through the webhook too: the message is counted as lost."""
    discord.script[CHANNEL_PATH] = [answer] * 5
    notifier = Notifier(client, TOKEN, CHANNEL, webhook=webhook)
    await nursery.start(notifier.run)
    notifier.notify(Notify("warning", "boom"))
    with trio.fail_after(60):
        while not notifier.failed:
            await trio.sleep(1)
    assert {c.path for c in discord.calls} == {CHANNEL_PATH}
    assert "a notification did not reach Discord" in caplog.text


async def test_a_refused_token_without_a_webhook_is_one_critical_line_not_one_per_message(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    discord: MockDiscord,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    discord.script[CHANNEL_PATH] = [refused(401, "401: Unauthorized")] * 5
    notifier = Notifier(client, TOKEN, CHANNEL)
    await nursery.start(notifier.run)
    for n in range(5):
        notifier.notify(Notify("critical", f"worker {n} cannot work"))
    await discord.wait_for(5)
    await trio.testing.wait_all_tasks_blocked()
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelno, r.getMessage()) for r in said] == [
        (
            logging.CRITICAL,
            "notifications cannot be delivered: Discord refused the bot token (401): check BOT_TOKEN; "
            "set URBAN_ROBOT_NOTIFY_WEBHOOK to a channel webhook's URL so they reach you even then",
        )
    ]
    assert notifier.failed == 5


async def test_the_webhook_secret_is_never_in_logs_errors_reprs_or_messages(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    discord: MockDiscord,
    webhook: DiscordWebhook,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx logs each request's URL at INFO
    caplog.set_level(logging.DEBUG, logger="httpx")  # (configure_logging quiets it, if another test ran it)
    errors: list[BaseException] = []
    echo = refused(400, f"bad webhook {HOOK_URL}")  # a Discord (or proxy) that quotes the URL back at us
    for script in ([refused(401, "Invalid Webhook Token")], [echo], [httpx.Response(500)] * 5):
        discord.script[HOOK_PATH] = list(script)
        with pytest.raises(NotifyError) as caught:
            await webhook_send(webhook, f"text with {HOOK_URL}", client=client)
        errors.append(caught.value)
    for bad in (f"{HOOK_URL}?x=1", f"ftp://h/webhooks/1/{HOOK_TOKEN}", f"{HOOK_URL}\r\nX-Evil: 1"):
        with pytest.raises(NotifyError) as caught:
            DiscordWebhook.parse(bad)
        errors.append(caught.value)

    discord.script[CHANNEL_PATH] = [refused(401, "401: Unauthorized")]
    discord.script[HOOK_PATH] = [refused(404, "Unknown Webhook")]
    notifier = Notifier(client, TOKEN, CHANNEL, webhook=webhook)
    await nursery.start(notifier.run)
    record = logging.LogRecord("tests.somewhere", logging.ERROR, __file__, 1, "posting to %s failed", (HOOK_URL,), None)
    DiscordLogHandler(notifier).handle(record)  # through the log bridge: 401 on the channel, 404 on the webhook
    notifier.notify(Notify("critical", f"boom {HOOK_URL}"))  # straight to the webhook, which takes it
    await discord.wait_for(len(discord.calls) + 3)
    await trio.testing.wait_all_tasks_blocked()

    assert discord.to(HOOK_PATH)[-1] == (  # the reason for the webhook waits for a message that gets through
        "(sent through the webhook: Discord refused the bot token (401): check BOT_TOKEN)\n"
        "(1 failed to send: earlier notifications lost)\n🚨 boom https://discord.com/api/webhooks/"
        f"{HOOK_ID}/[redacted]"
    )
    assert "HTTP Request: POST" in caplog.text  # httpx did log the requests, with the token redacted
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [repr(notifier), repr(webhook), caplog.text]
    texts += [c.body.get("content", "") for c in discord.calls]
    assert "[redacted]" in "".join(texts)
    assert not [text for text in texts if HOOK_TOKEN in text]
    assert not logging.getLogger("httpx").filters  # the redaction lasts while the webhook is in use


# -- against the fake Discord, over real sockets ------------------------------------------------------------
async def test_the_fake_discords_webhook_made_over_its_control_api_carries_a_refused_bots_notification(
    nursery: trio.Nursery,
) -> None:
    fake = FakeDiscord(token="the-right-token")
    await nursery.start(fake.serve)
    async with httpx.AsyncClient(timeout=10) as http:
        made = await http.post(f"{fake.url}/_fake/webhooks", json={"channel": "bot-log", "client": "supervisor"})
        url = made.json()["url"]
        assert url.startswith(f"{fake.url}/c/supervisor/api/webhooks/")
        log_channel = fake.channel("bot-log").id
        notifier = Notifier(
            http,
            "a-token-discord-refuses",
            str(log_channel),
            base_url=f"{fake.url}/c/supervisor/api/v10",
            webhook=DiscordWebhook.parse(url),
        )
        await nursery.start(notifier.run)
        notifier.notify(Notify("critical", "a worker cannot work: Discord refused the token"))
        post = await fake.wait_for_post(lambda post: post.route == "webhook", timeout=10)
        records = (await http.get(f"{fake.url}/_fake/records")).json()
    assert (post.channel_id, post.client, post.token) == (log_channel, "supervisor", "")  # no bot token: none sent
    assert post.content == (
        "(sent through the webhook: Discord refused the bot token (401): check BOT_TOKEN)\n"
        "🚨 a worker cannot work: Discord refused the token"
    )
    assert [(p["route"], p["webhook_id"]) for p in records["posted"]] == [("webhook", post.webhook_id)]
    assert f"/webhooks/{post.webhook_id}/" in url
