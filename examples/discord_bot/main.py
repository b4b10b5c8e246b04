"""A minimal discord.py bot run by Urban Robot: ``!ping``, ``!remind``, and the ``modules.utilities`` extension.

Start it under the supervisor (see README.md), not by hand: the supervisor gives it
``URBAN_ROBOT_URL``, ``URBAN_ROBOT_SECRET`` and ``URBAN_ROBOT_GENERATION``, and the Discord token
arrives in ``hello``. The bot acts on commands only while it holds the supervisor's lease.
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord.ext import commands

from urban_robot.integrations.discord import attach

VERSION = "1.0.0"  # PEP 440: a newer version takes over from an older one

# The cache handed from the running bot to its successor: a tiny reminders dict {user id: text}.
reminders: dict[str, str] = {}


def get_cache() -> dict[str, str]:
    return dict(reminders)


def set_cache(cache: Any) -> None:
    reminders.clear()
    reminders.update(cache or {})


class Helium(commands.Bot):
    async def setup_hook(self) -> None:
        await self.load_extension("modules.utilities")  # a vital cog: the health check names it


intents = discord.Intents.default()
intents.message_content = True
bot = Helium(command_prefix="!", intents=intents)
attachment = attach(bot, version=VERSION, get_cache=get_cache, set_cache=set_cache)


@bot.command()
async def remind(ctx: commands.Context[Helium], *, text: str) -> None:
    """Remember one reminder per user; the next version of the bot keeps it."""
    reminders[str(ctx.author.id)] = text
    await attachment.sync_cache()
    await ctx.send("Noted.")


@bot.command()
async def reminder(ctx: commands.Context[Helium]) -> None:
    await ctx.send(reminders.get(str(ctx.author.id), "Nothing to remind you of."))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    attachment.run_forever()
