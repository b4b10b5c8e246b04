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
async def fake(nursery: trio.Nursery) -> FakeDiscord:
    fake = FakeDiscord(heartbeat_interval=1.0, resume_window=30.0)
    await nursery.start(fake.serve)
    return fake


def bot_env(fake: FakeDiscord, client: str, intents: str, token: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("URBAN_ROBOT", "FAKE_BOT"))}
    env.update(
        URBAN_ROBOT_DISCORD_URL=fake.url,
        URBAN_ROBOT_DISCORD_CLIENT=client,
        FAKE_BOT_TOKEN=token,
        FAKE_BOT_INTENTS=intents,
        FAKE_BOT_LOG=str(fake.channel("bot-log").id),
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
