"""A sharded hello and discord.py, offline, on a virtual clock (tests/integrations/_discord_fakes.py): the bot is
placed on exactly its shards, every IDENTIFY hook waits for a slot, an unsharded bot keeps its hook as today."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
import pytest
from discord.ext import commands

from urban_robot.integrations.discord import DiscordRefused
from urban_robot.protocol import SlotGranted

from ._discord_fakes import FakeSupervisor, OfflineBot, hello, make_attachment, now, run_virtual


class OfflineShardedBot(commands.AutoShardedBot):
    """A real ``AutoShardedBot`` whose login and connect skip the network (as OfflineBot's)."""

    def __init__(self) -> None:
        super().__init__(command_prefix="!", intents=discord.Intents.default())
        self.connected = asyncio.Event()

    async def login(self, token: str) -> None:
        await self._async_setup_hook()

    async def connect(self, *, reconnect: bool = True) -> None:
        self.connected.set()
        await asyncio.Event().wait()


def test_an_auto_sharded_bot_runs_exactly_the_shards_of_hello() -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineShardedBot()
        att, _ = make_attachment(bot, supervisor, vital_cogs=())
        runner = asyncio.create_task(att.run())
        (await supervisor.next("identify")).answer(hello(shards=[2, 3], shard_count=4))
        await bot.connected.wait()
        assert (bot.shard_ids, bot.shard_count) == ([2, 3], 4) and (att.shards, att.shard_count) == ((2, 3), 4)
        runner.cancel()

    run_virtual(scenario)


def test_a_plain_bot_runs_one_shard() -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        att, _ = make_attachment(bot, supervisor)
        runner = asyncio.create_task(att.run())
        (await supervisor.next("identify")).answer(hello(shards=[5], shard_count=8))
        await supervisor.skip_until("ready")
        assert (bot.shard_id, bot.shard_count, bot._connection.shard_count) == (5, 8, 8)
        runner.cancel()

    run_virtual(scenario)


def test_a_plain_bot_asked_to_run_several_shards_fails_in_one_line() -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        att, _ = make_attachment(bot, supervisor)
        runner = asyncio.create_task(att.run())
        (await supervisor.next("identify")).answer(hello(shards=[0, 1], shard_count=4))
        failed = await supervisor.skip_until("failed")
        assert failed.data == {"reason": "a OfflineBot runs one shard, and this worker was given 2",
                               "hint": "use commands.AutoShardedBot for shards_per_worker > 1"}  # fmt: skip
        failed.answer({})
        with pytest.raises(DiscordRefused, match="AutoShardedBot for shards_per_worker"):
            await runner
        assert bot.tokens == []  # never logged in

    run_virtual(scenario)


def test_every_identify_of_a_sharded_bot_waits_for_its_slot_and_a_users_hook_runs_first() -> None:
    calls: list[tuple[str, int | None, float]] = []

    class OwnHook(OfflineShardedBot):
        async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
            calls.append(("theirs", shard_id, now()))

    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OwnHook()
        att, steps = make_attachment(bot, supervisor, vital_cogs=())
        runner = asyncio.create_task(att.run())
        (await supervisor.next("identify")).answer(hello(shards=[2, 3], shard_count=4))
        await bot.connected.wait()
        hook = asyncio.create_task(bot._call_before_identify_hook(3, initial=False))  # what identify() awaits
        ask = await supervisor.skip_until("identify_slot")
        assert ask.data == {"shard_id": 3} and calls == [("theirs", 3, ask.at)]
        ask.answer({"queued": True})
        await asyncio.sleep(7)  # the supervisor keeps it waiting: the IDENTIFY waits too
        assert not hook.done()
        granted_at = now()
        supervisor.cmd("identify", shard_id=3)
        await hook
        assert now() - granted_at < att.protocol.identify_margin and steps.of(SlotGranted)
        runner.cancel()

    run_virtual(scenario)


def test_an_unsharded_bot_keeps_discord_pys_hook_and_asks_no_slot() -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        att, _ = make_attachment(bot, supervisor)
        runner = asyncio.create_task(att.run())
        (await supervisor.next("identify")).answer(hello())
        await supervisor.skip_until("ready")
        start = now()
        await bot._call_before_identify_hook(None, initial=False)  # discord.py's own: 5 s before a re-IDENTIFY
        assert now() - start == pytest.approx(5.0)
        events: list[Any] = []
        while not supervisor.inbox.empty():
            events.append(supervisor.inbox.get_nowait().event)
        assert "identify_slot" not in events
        runner.cancel()

    run_virtual(scenario)
