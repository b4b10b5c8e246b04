"""A lagging standby promoted with a backlog of events the old holder already handled; a plain discord.Client."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from ._harness import supervised, wait_until

pytest.importorskip("discord")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ECHO = """
class Probe(commands.Bot):
    async def setup_hook(self):
        await self.load_extension("modules.utilities")


bot = Probe(command_prefix="!", intents=intents, guild_ready_timeout=0.1)
attachment = attach(bot, version=VERSION)


@bot.command()
async def echo(ctx, n: int):
    await ctx.send(f"echo {n}")


attachment.run_forever()
"""


def test_a_lagging_standby_promoted_does_not_replay_what_the_holder_answered(tmp_path: Path) -> None:
    """The lease gates on when a worker *reads* an event, not on the event: a standby whose Gateway lags
    (here SIGSTOP; on Discord a slow shard or network) is promoted with a backlog the old holder answered."""
    with supervised(tmp_path, ECHO) as (fake, supervisor):
        holder, standby = supervisor.two_up()
        os.kill(standby["pid"], signal.SIGSTOP)
        try:
            for n in range(200):
                fake.do("messages", content=f"!echo {n}", author="bob")
            wait_until(lambda: len(fake.posts(prefix="echo ")) >= 200, 30, "the holder's answers")
            os.kill(holder["pid"], signal.SIGKILL)
            time.sleep(0.5)
        finally:
            os.kill(standby["pid"], signal.SIGCONT)
        wait_until(lambda: supervisor.holder(30)["pid"] == standby["pid"], 30, "the standby promoted")
        time.sleep(3)
        counts = Counter(p["content"] for p in fake.posts(prefix="echo "))
        twice = sorted(c for c, k in counts.items() if k > 1)
        assert not twice, f"{len(twice)} answered twice, e.g. {twice[:5]}"


CLIENT = """
class Plain(discord.Client):
    def __init__(self):
        super().__init__(intents=intents)
        self.tree = app_commands.CommandTree(self)


bot = Plain()


@bot.tree.command()
async def hello(interaction: discord.Interaction):
    await interaction.response.send_message("hello from a Client")


attachment = attach(bot, version=VERSION)   # as docs/workers.md shows it: no vital_cogs argument
attachment.run_forever()
"""


def test_a_plain_client_with_a_command_tree_works_as_documented(tmp_path: Path) -> None:
    with supervised(tmp_path, CLIENT) as (fake, supervisor):
        supervisor.holder(40)
        fake.do("commands", name="hello")
        wait_until(lambda: fake.posts(prefix="hello from a Client"), 10, "the answer")
