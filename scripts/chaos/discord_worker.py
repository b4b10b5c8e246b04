"""The chaos soak's bot with ``--discord-py``: a real discord.py bot, attached with ``attach()``, on the fake Discord.

Like ``worker.py`` it reads ``bot.json`` (version and kind: ``good``, ``bad_health`` — its vital cog
``modules.utilities`` is not loaded —, ``crash`` or ``hang``) and journals to the soak's shared journal:
``boot``, ``cmd`` (each ``!ping`` it answers), ``write`` (a cache write the supervisor accepted) and
``dump`` (its cache keys, on SIGUSR1). It reaches the supervisor through the soak's proxy (so partitions,
delays and drops hit it as they hit ``worker.py``). What the soak judges P1 by, though, is what the fake Discord saw:
who answered which message, slash command, button, select and member join (``urban_robot.testing.traffic``).

It answers ``!ping`` with a reply (and writes a cache key, at most every ``WRITE_EVERY`` seconds), ``/hello``,
the persistent view's ``chaos:wave`` button and ``chaos:colour`` select, welcomes new members in #general
and posts ``tick`` in #bot-log every second from a ``tasks.loop``. Each runs only while the worker holds
its lease (the integration's gates, and ``attachment.processing`` checked by hand as well);
``CHAOS_UNSAFE_BOT=1`` drops the hand-made checks and marks the listeners ``everywhere``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import discord
import trio
from chaos.worker import Journal, proxy_port, start_ticks
from discord.ext import commands, tasks

from urban_robot.integrations import discord as integration

WRITE_EVERY = 0.2
UNSAFE = os.environ.get("CHAOS_UNSAFE_BOT") == "1"
CONFIG = json.loads(Path("bot.json").read_text())
IDENTITY = os.environ.get("URBAN_ROBOT_SECRET", "").rpartition(".")[0]
journal = Journal(os.environ["CHAOS_JOURNAL"], id=IDENTITY, pid=os.getpid(), ver=CONFIG["version"])
if IDENTITY and os.environ.get("CHAOS_PROXY_CONTROL"):  # reach the supervisor through the soak's proxy
    port = trio.run(proxy_port, int(os.environ["CHAOS_PROXY_CONTROL"]), IDENTITY)
    os.environ["URBAN_ROBOT_URL"] = f"http://127.0.0.1:{port}"
cache: dict[str, int] = {}
F = TypeVar("F", bound=Callable[..., Any])


def everywhere(func: F) -> F:
    """Unsafe: run on every worker (attach's opt-out of its gate, where it has one); else unchanged."""
    mark: Callable[[F], F] | None = getattr(integration, "everywhere", None)
    return mark(func) if UNSAFE and mark is not None else func


def get_cache() -> dict[str, int]:
    return dict(cache)


def set_cache(value: Any) -> None:
    cache.clear()
    cache.update(value if isinstance(value, dict) else {})


class Panel(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Wave", custom_id="chaos:wave")
    async def wave(self, interaction: discord.Interaction, button: discord.ui.Button[Panel]) -> None:
        if allowed():
            await interaction.response.send_message("wave")

    @discord.ui.select(custom_id="chaos:colour", options=[discord.SelectOption(label="red", value="red")])
    async def colour(self, interaction: discord.Interaction, select: discord.ui.Select[Panel]) -> None:
        if allowed():
            await interaction.response.send_message("red")


class ChaosBot(commands.Bot):
    async def setup_hook(self) -> None:
        if CONFIG.get("kind") != "bad_health":
            await self.load_extension("modules.utilities")
        self.add_view(Panel())
        self.loop.add_signal_handler(signal.SIGUSR1, dump)
        tick.start()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause before a repeated IDENTIFY: that spares Discord, not the fake."""


intents = discord.Intents.default()
intents.message_content = True
intents.members = True
bot = ChaosBot(command_prefix="?", intents=intents)
attachment = integration.attach(bot, version=CONFIG["version"], get_cache=get_cache, set_cache=set_cache)
state = {"written": 0, "last_write": 0.0, "dumped": False}


def allowed() -> bool:
    return UNSAFE or attachment.processing


def epoch() -> int | None:
    return getattr(attachment, "epoch", None)


def dump() -> None:
    state["dumped"] = True
    path = Path(os.environ["CHAOS_DIR"]) / f"dump-{os.getpid()}.json"
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps({"identity": IDENTITY, "keys": sorted(cache)}))
    os.replace(temp, path)
    journal.write("dump", keys=len(cache))


async def write_one() -> None:
    state["written"] += 1
    state["last_write"] = time.monotonic()
    key = f"{IDENTITY}:{state['written']}"
    cache[key] = int(state["written"])
    if await attachment.sync_cache() and not state["dumped"]:
        journal.write("write", key=key, epoch=epoch())


@bot.tree.command(description="Say hello")
async def hello(interaction: discord.Interaction) -> None:
    if allowed():
        await interaction.response.send_message("hello")


@bot.listen()
@everywhere
async def on_message(message: discord.Message) -> None:
    if message.author.bot or message.content != "!ping" or not allowed():
        return
    journal.write("cmd", epoch=epoch())
    await message.reply("pong")
    if time.monotonic() - float(state["last_write"]) > WRITE_EVERY and not state["dumped"]:
        await write_one()


@bot.listen()
@everywhere
async def on_member_join(member: discord.Member) -> None:
    channel = discord.utils.get(member.guild.text_channels, name="general")
    if channel is not None and allowed():
        await channel.send(f"welcome {member.mention}")


@tasks.loop(seconds=1)
async def tick() -> None:
    channel = discord.utils.get(bot.get_all_channels(), name="bot-log")
    if isinstance(channel, discord.TextChannel) and allowed():
        await channel.send("tick")


@tick.before_loop
async def before_tick() -> None:
    await bot.wait_until_ready()


def main() -> None:
    journal.write("boot", kind=CONFIG.get("kind", "good"), ticks=start_ticks(os.getpid()))
    if CONFIG.get("kind") == "crash":
        raise SystemExit("crashing at start, as bot.json says")
    if CONFIG.get("kind") == "hang":
        time.sleep(3600)
    logging.basicConfig(level=logging.INFO)
    try:
        attachment.run_forever()
    except KeyboardInterrupt:
        sys.exit(0)
