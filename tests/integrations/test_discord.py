"""``attach()`` with real discord.py bots (offline: no Discord) against a real supervisor over real sockets.

The supervisor runs in the trio test (port 0, real clock); each bot side runs in a worker thread with its
own asyncio loop (``trio.to_thread.run_sync(asyncio.run, ...)``). The bots are real ``commands.Bot``s whose
``login``/``connect`` skip the network (tests/integrations/_discord_fakes.py); messages go through
discord.py's real MESSAGE_CREATE parser, so the gates are the production ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trio
from discord.ext import commands

from tests._helpers import child_secret
from urban_robot.integrations.discord import Attachment, CacheMap, Disconnected, attach
from urban_robot.protocol import ApplyCache, CollectCache, Log, Login, Send, StartProcessing, StopProcessing
from urban_robot.supervisor import Credentials, Settings, StateStore, UrbanRobot

from ._discord_fakes import OfflineBot, Steps, message

TOKEN = "discord-token-xyz-0123456789"
SETTINGS = Settings(token=TOKEN, interval=0.5, grace=0.5, lease_margin=0.5, health_timeout=5, ack_timeout=5)
LIMIT = 20.0  # seconds for any one scenario
pytestmark = pytest.mark.slow  # real sockets, real clock: a second or two each


class CommandBot(OfflineBot):
    """``!ping`` and ``!slow`` (runs until ``slow`` is set); what ran is in ``handled``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.handled: list[str] = []
        self.finished_at: dict[str, float] = {}
        self.slow = asyncio.Event()
        self.slow_started = asyncio.Event()

        @self.command()
        async def ping(ctx: commands.Context[CommandBot]) -> None:
            self.handled.append(ctx.message.content)

        @self.command()
        async def slow(ctx: commands.Context[CommandBot]) -> None:
            self.handled.append(ctx.message.content)
            self.slow_started.set()
            await self.slow.wait()
            self.finished_at[ctx.message.content] = asyncio.get_running_loop().time()

    async def say(self, content: str) -> None:
        """A MESSAGE_CREATE through discord.py's parser; returns once what it started has ended."""
        before = asyncio.all_tasks()
        self._connection.parsers["MESSAGE_CREATE"](message(content))
        await asyncio.gather(*(asyncio.all_tasks() - before))


class Harness:
    def __init__(self, nursery: trio.Nursery, state_dir: Path) -> None:
        self.nursery = nursery
        self.store = StateStore(state_dir)
        self.store.prepare()
        self.credentials = Credentials(self.store.secret_key(), admin_token="admin-secret")
        self.scope = trio.CancelScope()
        self.robot: UrbanRobot | None = None
        self.url = ""
        self.port = 0

    async def start(self, port: int = 0) -> None:
        robot = UrbanRobot(SETTINGS, self.store, self.credentials)

        async def run(task_status: trio.TaskStatus[int | None]) -> None:
            with self.scope:
                await robot.run("127.0.0.1", port, task_status=task_status)

        self.scope = trio.CancelScope()
        bound = await self.nursery.start(run)
        assert bound is not None
        self.robot, self.url, self.port = robot, f"http://127.0.0.1:{bound}", bound

    def stop(self) -> None:
        self.scope.cancel()

    def attach(self, bot: OfflineBot, identity: str, **kwargs: Any) -> tuple[Attachment, Steps]:
        steps = Steps()
        secret = child_secret(self.credentials, identity)
        return attach(bot, url=self.url, secret=secret, observer=steps, **kwargs), steps

    def status(self) -> dict[str, Any]:
        """The supervisor's status, asked from the asyncio thread."""
        assert self.robot is not None
        status: dict[str, Any] = trio.from_thread.run_sync(self.robot.status)
        return status


@pytest.fixture
async def harness(nursery: trio.Nursery, tmp_path: Path) -> Harness:
    h = Harness(nursery, tmp_path / "state")
    await h.start()
    return h


async def in_asyncio(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run an asyncio scenario in a worker thread, with a time limit on both sides."""

    async def bounded() -> Any:
        async with asyncio.timeout(LIMIT):
            return await scenario()

    with trio.fail_after(LIMIT + 5):
        return await trio.to_thread.run_sync(asyncio.run, bounded(), abandon_on_cancel=True)


def sent(event: str) -> Callable[[Any], bool]:
    return lambda step: isinstance(step, Send) and step.request.message.event == event


async def test_token_ready_and_commands_only_under_the_lease(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = child_secret(harness.credentials, "child-1")

    async def scenario() -> tuple[Attachment, Steps]:
        bot = CommandBot()
        bot.auto_ready = False
        att, steps = harness.attach(bot, "child-1", version="1.0")
        runner = asyncio.create_task(att.run())
        await steps.wait_for(Login)
        await steps.wait_until(lambda: bool(bot.tokens))
        assert bot.tokens == [TOKEN]  # the token from hello logged the bot in
        # logged in, Discord not READY yet: no ready, no health check, no commands
        await bot.say("!ping early")
        assert bot.handled == []
        assert [w["role"] for w in harness.status()["workers"]] == ["identified"]

        bot.dispatch("ready")  # Discord's READY
        processing_at, _ = await steps.wait_for(StartProcessing)
        ready_at, _ = await steps.wait_for(sent("ready"))
        report_at, report = await steps.wait_for(sent("health_check"))
        assert ready_at <= report_at <= processing_at
        assert report.request.message.OK is True
        assert att.processing and harness.status()["epoch"] == 1

        await bot.say("!ping")
        assert bot.handled == ["!ping"]

        await att.shutdown("test over")
        await asyncio.wait_for(runner, 5)
        assert bot.close_calls == 1 and bot.is_closed()
        assert not att.processing
        await bot.say("!ping after")
        assert bot.handled == ["!ping"]
        return att, steps

    att, steps = await in_asyncio(scenario)
    assert TOKEN not in repr(att) and secret not in repr(att)
    assert "processing under epoch 1" in caplog.text  # the log was captured...
    for record in caplog.records:  # ...and holds neither the token nor the secret
        assert TOKEN not in record.getMessage() and secret not in record.getMessage()
    assert all(TOKEN not in repr(step) for _, step in steps.seen)


async def test_missing_vital_cog_gets_the_bot_closed(harness: Harness) -> None:
    async def scenario() -> tuple[OfflineBot, Steps]:
        bot = OfflineBot(extensions=("modules.fun",))
        att, steps = harness.attach(bot, "child-1", version="1.0")
        await asyncio.wait_for(att.run(), 10)  # returns by itself: the supervisor shut the bot down
        return bot, steps

    bot, steps = await in_asyncio(scenario)
    reports = [step.request.message.payload() for _, step in steps.seen if sent("health_check")(step)]
    assert reports == [{"OK": False, "percent": 50.0, "cogs": {"modules.fun": True, "modules.utilities": False}}]
    assert [step.request.message.reason for _, step in steps.seen if sent("shutdown")(step)] == ["vital_cog_failed"]
    assert bot.close_calls == 1
    assert not steps.of(StartProcessing)
    assert bot.tokens == [TOKEN]


async def test_newer_bot_takes_over_with_the_cache(harness: Harness) -> None:
    async def scenario() -> None:
        old_bot, new_bot = CommandBot(), CommandBot()
        old_cache: dict[str, Any] = {"reminders": {}}
        new_side: list[Any] = []

        old, old_steps = harness.attach(old_bot, "child-1", version="1.0", get_cache=lambda: old_cache)
        new, new_steps = harness.attach(new_bot, "child-2", version="1.1", set_cache=new_side.append)
        old_runner = asyncio.create_task(old.run())
        await old_steps.wait_for(StartProcessing)
        old_cache["reminders"]["alice"] = "tea at 5"
        assert await old.sync_cache()
        old_cache["reminders"]["bob"] = b"walk at 6"  # only the final cache carries this one

        new_runner = asyncio.create_task(new.run())
        started_at, _ = await new_steps.wait_for(StartProcessing)
        await old_steps.wait_for(CollectCache)  # the coma asked for the final cache
        stopped_at, _ = await old_steps.wait_for(StopProcessing)
        assert stopped_at <= started_at
        final = {"reminders": {"alice": "tea at 5", "bob": b"walk at 6"}}
        assert new_side and new_side[-1] == final
        received_at, _ = await new_steps.wait_for(ApplyCache)
        assert received_at <= started_at  # the cache came before the new bot processed anything
        assert harness.status()["epoch"] == 2

        # the old bot is fenced: a standby that no longer acts on commands
        assert not old.processing
        await old_bot.say("!ping late")
        assert old_bot.handled == [] and old_bot.close_calls == 0
        await new_bot.say("!ping")
        assert new_bot.handled == ["!ping"]

        await new.shutdown("test over")
        await old.shutdown("test over")
        await asyncio.wait_for(asyncio.gather(old_runner, new_runner), 5)

    await in_asyncio(scenario)


async def test_bot_stops_by_itself_when_its_lease_runs_out(harness: Harness) -> None:
    async def scenario() -> None:
        bot = CommandBot()
        att, steps = harness.attach(bot, "child-1", version="1.0")
        runner = asyncio.create_task(att.run())
        await steps.wait_for(StartProcessing)
        trio.from_thread.run_sync(harness.stop)  # the supervisor goes away: nobody renews the lease
        gone_at = asyncio.get_running_loop().time()
        ran_out_at, stop = await steps.wait_for(StopProcessing)
        assert stop.reason == "lease ran out"
        assert ran_out_at - gone_at <= SETTINGS.lease + 0.1  # counted from a heartbeat sent before
        assert not att.processing
        await bot.say("!ping")
        assert bot.handled == []
        await att.shutdown("test over")
        await asyncio.wait_for(runner, 5)
        assert bot.close_calls == 1

    await in_asyncio(scenario)


async def test_commands_in_flight_finish_before_the_coma_is_acknowledged(harness: Harness) -> None:
    async def scenario() -> None:
        old_bot, new_bot = CommandBot(), CommandBot()
        old, old_steps = harness.attach(old_bot, "child-1", version="1.0", get_cache=lambda: {"n": 1})
        new, new_steps = harness.attach(new_bot, "child-2", version="1.1")
        runners = [asyncio.create_task(old.run())]
        await old_steps.wait_for(StartProcessing)
        in_flight = asyncio.create_task(old_bot.say("!slow"))
        await old_bot.slow_started.wait()
        runners.append(asyncio.create_task(new.run()))
        await old_steps.wait_for(lambda step: isinstance(step, Log) and "asked for coma" in step.message)
        await old_bot.say("!ping")  # no new command once the coma came
        assert old_bot.handled == ["!slow"] and not new.processing
        old_bot.slow.set()  # the command in flight finishes; only then is the coma acknowledged
        started_at, _ = await new_steps.wait_for(StartProcessing)
        stopped_at, _ = await old_steps.wait_for(StopProcessing)
        coma_at, _ = await old_steps.wait_for(sent("coma"))
        assert old_bot.finished_at["!slow"] <= stopped_at <= coma_at <= started_at
        await in_flight
        await new.shutdown("test over")
        await old.shutdown("test over")
        await asyncio.wait_for(asyncio.gather(*runners), 5)

    await in_asyncio(scenario)


async def test_holder_is_adopted_again_after_a_supervisor_restart(harness: Harness) -> None:
    async def scenario() -> None:
        bot = CommandBot()
        att, steps = harness.attach(bot, "child-1", version="1.0")
        runner = asyncio.create_task(att.run())
        await steps.wait_for(StartProcessing)
        assert att.epoch == 1
        trio.from_thread.run_sync(harness.stop)
        await steps.wait_for(Disconnected)
        trio.from_thread.run(harness.start, harness.port)  # back on the same port, same state directory
        await steps.wait_until(lambda: att.protocol.sessions_served == 2)
        hello = att.protocol.hello
        assert hello is not None and hello.process_commands is True and hello.epoch == 1  # our claim was adopted
        hello_at = asyncio.get_running_loop().time()
        # renewed on the new connection: a lease view counted from a heartbeat sent after the hello
        await steps.wait_until(lambda: att.lease_ends - SETTINGS.lease >= hello_at)
        assert att.processing
        assert not [s for _, s in steps.of(StopProcessing)]  # never fenced
        status = harness.status()
        assert status["epoch"] == 1 and status["running"] is not None
        assert bot.tokens == [TOKEN]  # logged in once: a reconnection to the supervisor is not a new login
        await att.shutdown("test over")
        await asyncio.wait_for(runner, 5)

    await in_asyncio(scenario)


async def test_a_deploy_from_a_plain_cache_bot_to_a_cachemap_bot_keeps_the_keys(harness: Harness) -> None:
    async def scenario() -> None:
        old_bot, new_bot = CommandBot(), CommandBot()
        old_cache: dict[str, Any] = {"alice": "tea at 5", "bob": b"walk at 6"}
        reminders = CacheMap()
        old, old_steps = harness.attach(old_bot, "child-1", version="1.0", get_cache=lambda: old_cache)
        new, new_steps = harness.attach(new_bot, "child-2", version="1.1", cache=reminders)
        old_runner = asyncio.create_task(old.run())
        await old_steps.wait_for(StartProcessing)
        assert await old.sync_cache() is True
        new_runner = asyncio.create_task(new.run())
        await new_steps.wait_for(StartProcessing)
        try:
            assert dict(reminders) == {"alice": "tea at 5", "bob": b"walk at 6"}  # got: {"": {...}}
        finally:
            await new.shutdown("test over")
            await old.shutdown("test over")
            await asyncio.wait_for(asyncio.gather(old_runner, new_runner), 5)

    await in_asyncio(scenario)
