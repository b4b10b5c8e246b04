"""Real, unmodified discord.py (a ``commands.Bot`` in a child process) against the fake Discord.

Each bot reports what it sees as messages in #bot-log (see ``bot.py``); the tests wait for those
reports and for the fake's own records, never for time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from urban_robot.testing.fake_discord import DEFAULT_TOKEN, FakeDiscord, PostedMessage

pytest.importorskip("discord")

BOT = Path(__file__).with_name("bot.py")
ROOT = Path(__file__).parents[3]
pytestmark = pytest.mark.slow


@pytest.fixture
async def fake(fake_discord_server: FakeDiscord) -> FakeDiscord:
    """The plugin's fixture, as a bot author would use it."""
    return fake_discord_server


def bot_env(fake: FakeDiscord, client: str, intents: str, token: str) -> dict[str, str]:
    return env_for(fake.url, client, intents, token, fake.channel("bot-log").id)


def env_for(url: str, client: str, intents: str, token: str, log_channel: int | str) -> dict[str, str]:
    """The environment of a test bot process talking to the fake at ``url``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("URBAN_ROBOT", "FAKE_BOT"))}
    env.update(
        URBAN_ROBOT_DISCORD_URL=url,
        URBAN_ROBOT_DISCORD_CLIENT=client,
        FAKE_BOT_TOKEN=token,
        FAKE_BOT_INTENTS=intents,
        FAKE_BOT_LOG=str(log_channel),
        PYTHONPATH=str(ROOT),
    )
    return env


@asynccontextmanager
async def bot(
    fake: FakeDiscord,
    tmp_path: Path,
    client: str = "bot",
    *,
    intents: str = "message_content,members",
    token: str = DEFAULT_TOKEN,
    sync: bool = False,
) -> AsyncIterator[trio.Process]:
    """A bot process for the body of the ``async with``; its output goes to ``tmp_path/<client>.log``."""
    env = bot_env(fake, client, intents, token)
    if sync:
        env["FAKE_BOT_SYNC"] = "1"
    with open(tmp_path / f"{client}.log", "wb") as log:
        async with trio.open_nursery() as nursery:
            command = [sys.executable, str(BOT)]
            run = partial(trio.run_process, command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
            process: trio.Process = await nursery.start(run)
            try:
                yield process
            finally:
                nursery.cancel_scope.cancel()


async def run_bot_to_exit(fake: FakeDiscord, *, intents: str, token: str = DEFAULT_TOKEN) -> tuple[int, str]:
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, str(BOT)],
            env=bot_env(fake, "doomed", intents, token),
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return result.returncode, result.stdout.decode(errors="replace")


def report(fake: FakeDiscord, prefix: str, client: str | None = None) -> list[PostedMessage]:
    log = fake.channel("bot-log").id
    return [
        p
        for p in fake.posted
        if p.channel_id == log and p.content.startswith(prefix) and (client is None or p.client == client)
    ]


async def wait_report(fake: FakeDiscord, prefix: str, client: str | None = None, count: int = 1) -> list[PostedMessage]:
    def found() -> list[PostedMessage] | None:
        posts = report(fake, prefix, client)
        return posts if len(posts) >= count else None

    found.__name__ = f"{count} report(s) {prefix!r} from {client or 'any client'}"
    return await fake.wait_for(found)


async def test_login_ready_and_a_prefix_command(fake: FakeDiscord, tmp_path: Path) -> None:
    async with bot(fake, tmp_path, "bot"):
        (ready,) = await wait_report(fake, "ready", "bot")
        assert ready.content == "ready guilds=1 guild=Fake Guild channels=bot-log,general user=fake-bot"
        message_id = fake.send_message("!ping")
        reply = await fake.wait_for_post(lambda post: post.reply_to == message_id)
        assert (reply.content, reply.client, reply.route, reply.channel_id) == (
            "pong",
            "bot",
            "channel",
            fake.channel("general").id,
        )
        (seen,) = await wait_report(fake, f"seen id={message_id}")
        assert seen.content == f"seen id={message_id} content='!ping'"
    (session,) = fake.sessions
    assert session.client == "bot" and session.token == "token"
    assert [c.login for c in fake.connections] == ["identify"]
    assert fake.unknown_routes == []


async def test_without_message_content_the_bot_sees_a_blank_message(fake: FakeDiscord, tmp_path: Path) -> None:
    async with bot(fake, tmp_path, "blind", intents=""):
        await wait_report(fake, "ready", "blind")
        message_id = fake.send_message("!ping")
        (seen,) = await wait_report(fake, f"seen id={message_id}")
        assert seen.content == f"seen id={message_id} content=''"  # delivered, but blank: no command ran
        mentioned = fake.send_message("hello bot", mention_bot=True)
        (seen_mention,) = await wait_report(fake, f"seen id={mentioned}")
        assert "hello bot" in seen_mention.content  # a mention carries its content, as on Discord
    assert [p for p in fake.posted if p.content == "pong"] == []


async def test_interactions_reach_their_callbacks(fake: FakeDiscord, tmp_path: Path) -> None:
    async with bot(fake, tmp_path, "bot", sync=True):
        await wait_report(fake, "ready", "bot")
        assert sorted(c["name"] for c in fake.core.commands[None]) == ["echo", "feedback", "later"]

        deferred = fake.run_command("later")
        (callback,) = await fake.wait_for_callbacks(deferred)
        assert (callback.type, callback.outcome) == (5, "ok")
        await fake.wait_for(lambda: len([p for p in fake.posted if p.interaction_id == deferred.id]) == 2)
        answers = [(p.content, p.route) for p in fake.posted if p.interaction_id == deferred.id]
        assert answers == [("done later", "followup"), ("and a follow-up", "followup")]

        command = fake.run_command("echo", {"text": "hi", "times": 2})
        (callback,) = await fake.wait_for_callbacks(command)
        assert (callback.type, callback.outcome, callback.client, callback.data["content"]) == (
            4,
            "ok",
            "bot",
            "echo hi echo hi",
        )
        answer = await fake.wait_for_post(lambda post: post.interaction_id == command.id)
        assert answer.route == "interaction_callback"

        click = fake.click("persistent:hello", user="bob")
        (callback,) = await fake.wait_for_callbacks(click)
        assert (callback.outcome, callback.data["content"]) == ("ok", "hello clicked by bob")

        choice = fake.select("persistent:colour", ["green", "blue"])
        (callback,) = await fake.wait_for_callbacks(choice)
        assert (callback.outcome, callback.data["content"]) == ("ok", "chose green,blue")

        form = fake.run_command("feedback")
        (callback,) = await fake.wait_for_callbacks(form)
        assert (callback.type, callback.data["custom_id"]) == (9, "feedback-modal")  # a modal, shown to alice
        (row,) = callback.data["components"]
        field = row["components"][0] if row["type"] == 1 else row["component"]
        submit = fake.submit_modal("feedback-modal", {field["custom_id"]: "great fake"})
        (callback,) = await fake.wait_for_callbacks(submit)
        assert (callback.outcome, callback.data["content"]) == ("ok", "thanks for great fake")

        newcomer = fake.member_join("carol")
        (joined,) = await wait_report(fake, "joined")
        assert joined.content == "joined name=carol guild=Fake Guild"
        assert newcomer.id in fake.world.guild.members

        fake.react(answer.id, "🎉")
        (reaction,) = await wait_report(fake, "reaction")
        assert reaction.content == f"reaction emoji=🎉 message={answer.id}"
    assert all(c.outcome == "ok" for c in fake.callbacks)
    assert report(fake, "http_error") == []
    assert fake.unknown_routes == []


async def test_two_processes_on_one_token_both_get_everything(fake: FakeDiscord, tmp_path: Path) -> None:
    async with bot(fake, tmp_path, "first"), bot(fake, tmp_path, "second"):
        await wait_report(fake, "ready", "first")
        await wait_report(fake, "ready", "second")
        message_id = fake.send_message("!ping")
        await fake.wait_for(lambda: len([p for p in fake.posted if p.reply_to == message_id]) == 2)
        assert sorted(p.client for p in fake.posted if p.reply_to == message_id) == ["first", "second"]

        command = fake.run_command("echo", {"text": "once"})
        callbacks = await fake.wait_for_callbacks(command, 2)
        assert sorted(c.outcome for c in callbacks) == ["already_acknowledged", "ok"]
        assert {c.client for c in callbacks} == {"first", "second"}
        loser = next(c.client for c in callbacks if c.outcome == "already_acknowledged")
        (error,) = await wait_report(fake, "http_error", loser)
        assert error.content == f"http_error code=40060 status=400 interaction={command.id}"
    event = next(e for e in fake.events if e.id == command.id)
    assert len(event.sessions) == 2


async def test_the_members_intent_gates_member_joins(fake: FakeDiscord, tmp_path: Path) -> None:
    async with bot(fake, tmp_path, "nomembers", intents="message_content"):
        await wait_report(fake, "ready", "nomembers")
        fake.member_join("dave")
        message_id = fake.send_message("after dave")  # events arrive in order: once this is seen, dave was skipped
        await wait_report(fake, f"seen id={message_id}")
    assert report(fake, "joined") == []
    join = next(e for e in fake.events if e.name == "GUILD_MEMBER_ADD")
    assert join.sessions == ()


async def test_a_bad_token_is_a_login_failure(fake: FakeDiscord) -> None:
    code, output = await run_bot_to_exit(fake, intents="", token="not-the-token")
    assert code == 3, output
    assert "LoginFailure: Improper token has been passed." in output
    assert "not-the-token" not in output
    assert fake.sessions == []


async def test_a_privileged_intent_not_enabled_closes_4014(fake: FakeDiscord) -> None:
    fake.set_enabled_intents(["members"])
    code, output = await run_bot_to_exit(fake, intents="message_content")
    assert code == 4, output
    assert "PrivilegedIntentsRequired" in output
    assert [c.close_code for c in fake.connections] == [4014]


def answers_to(fake: FakeDiscord, message_id: int) -> list[PostedMessage]:
    return [p for p in fake.posted if p.reply_to == message_id]


async def test_op7_reconnect_resumes_and_replays_the_gap_once(fake: FakeDiscord, tmp_path: Path) -> None:
    async with bot(fake, tmp_path, "bot"):
        await wait_report(fake, "ready", "bot")
        assert fake.reconnect() == 1
        message_id = fake.send_message("!ping")  # sent while the bot reconnects: only a RESUME can bring it
        (resumed,) = await fake.wait_for_login(how="resume")
        assert resumed.replayed >= 1
        await fake.wait_for(lambda: answers_to(fake, message_id))
        await wait_report(fake, "resumed", "bot")
        after = fake.send_message("!ping")
        await fake.wait_for(lambda: answers_to(fake, after))
        assert len(answers_to(fake, message_id)) == 1
        assert len(report(fake, f"seen id={message_id}")) == 1
    (session,) = fake.sessions  # one session, never re-identified
    assert len(session.resumed_at) == 1
    assert [c.login for c in fake.connections] == ["identify", "resume"]


async def test_op9_makes_the_bot_identify_again(fake: FakeDiscord, tmp_path: Path) -> None:
    async with bot(fake, tmp_path, "bot"):
        await wait_report(fake, "ready", "bot")
        assert fake.invalidate_session(resumable=False) == 1
        await wait_report(fake, "ready", "bot", count=2)
        first, second = fake.sessions
        assert first.end_reason == "invalidated (op 9)" and second.ended_at is None
        message_id = fake.send_message("!ping")
        await fake.wait_for(lambda: answers_to(fake, message_id))
        assert [e.sessions for e in fake.events if e.id == message_id] == [(second.session_id,)]
    assert [c.login for c in fake.connections] == ["identify", "identify"]
    assert len(answers_to(fake, message_id)) == 1


async def test_a_close_4000_is_resumed(fake: FakeDiscord, tmp_path: Path) -> None:
    async with bot(fake, tmp_path, "bot"):
        await wait_report(fake, "ready", "bot")
        assert fake.close_gateway(4000) == 1
        message_id = fake.send_message("!ping")
        await fake.wait_for(lambda: answers_to(fake, message_id))
        await fake.wait_for_login(how="resume")
    assert fake.connections[0].close_code == 4000 and fake.connections[0].closed_by == "server"
    assert len(fake.sessions) == 1


async def test_after_an_outage_the_bot_resumes(fake: FakeDiscord, tmp_path: Path) -> None:
    async with bot(fake, tmp_path, "bot"):
        await wait_report(fake, "ready", "bot")
        assert fake.outage(0.5) == 1
        during = fake.send_message("!ping")
        await fake.wait_for(lambda: answers_to(fake, during))  # replayed by the RESUME after the outage
        refused_until = fake.gateway.outage_until
    resumed = [c for c in fake.connections if c.login == "resume"]
    assert resumed and resumed[0].opened_at >= refused_until
    assert fake.connections[0].closed_by == "dropped"
    assert len(answers_to(fake, during)) == 1 and len(fake.sessions) == 1
