"""A small discord.py bot run by Urban Robot: one of each kind of entry point, all gated by the lease.

``!ping`` (the ``modules.utilities`` extension), ``!remind``/``!reminder``, ``/panel`` (a persistent
button and a select), ``/feedback`` (a modal), a welcome on member join, and a background loop.

Start it under the supervisor (see README.md), not by hand: the supervisor gives it
``URBAN_ROBOT_URL``, ``URBAN_ROBOT_SECRET`` and ``URBAN_ROBOT_GENERATION``, and the Discord token
arrives in ``hello``. Only the worker holding the lease runs any of this; hot standbys stay silent.
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord.ext import commands, tasks

from urban_robot.integrations.discord import attach

VERSION = "1.0.0"  # PEP 440: a newer version takes over from an older one

# The cache handed from the running bot to its successor: reminders {user id: text} and a counter.
state: dict[str, Any] = {"reminders": {}, "presses": 0}


def get_cache() -> dict[str, Any]:
    return {"reminders": dict(state["reminders"]), "presses": state["presses"]}


def set_cache(cache: Any) -> None:
    state.update(cache or {})


class Panel(discord.ui.View):
    """Persistent (no timeout, fixed custom ids): its button works after any restart or hand-over."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Press me", custom_id="panel:press")
    async def press(self, interaction: discord.Interaction, _: discord.ui.Button[Panel]) -> None:
        state["presses"] += 1
        await interaction.response.send_message(f"Pressed {state['presses']} times.", ephemeral=True)

    @discord.ui.select(custom_id="panel:drink", options=[discord.SelectOption(label=d) for d in ("tea", "coffee")])
    async def drink(self, interaction: discord.Interaction, select: discord.ui.Select[Panel]) -> None:
        await interaction.response.send_message(f"One {select.values[0]}, coming up.", ephemeral=True)


class Feedback(discord.ui.Modal, title="Feedback"):
    text: discord.ui.TextInput[Feedback] = discord.ui.TextInput(label="What do you think?", custom_id="feedback:text")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"Thanks for: {self.text.value}", ephemeral=True)


class Helium(commands.Bot):
    async def setup_hook(self) -> None:  # runs on every worker, standbys too: the health check needs it
        await self.load_extension("modules.utilities")  # a vital cog: the health check names it
        self.add_view(Panel())  # persistent views are registered everywhere; only the holder answers
        heartbeat_log.start()  # started everywhere; its iterations run only on the holder

    async def on_member_join(self, member: discord.Member) -> None:
        if member.guild.system_channel is not None:
            await member.guild.system_channel.send(f"Welcome, {member.mention}!")


intents = discord.Intents.default()
intents.message_content = True
intents.members = True  # privileged: on_member_join needs it (enable it in the developer portal)
bot = Helium(command_prefix="!", intents=intents)
attachment = attach(bot, version=VERSION, get_cache=get_cache, set_cache=set_cache)


@bot.command()
async def remind(ctx: commands.Context[Helium], *, text: str) -> None:
    """Remember one reminder per user; the next version of the bot keeps it."""
    state["reminders"][str(ctx.author.id)] = text
    await attachment.sync_cache()
    await ctx.send("Noted.")


@bot.command()
async def reminder(ctx: commands.Context[Helium]) -> None:
    await ctx.send(state["reminders"].get(str(ctx.author.id), "Nothing to remind you of."))


@bot.tree.command()
async def panel(interaction: discord.Interaction) -> None:
    """A button and a select that keep working across hand-overs."""
    await interaction.response.send_message("Here you go:", view=Panel())


@bot.tree.command()
async def feedback(interaction: discord.Interaction) -> None:
    await interaction.response.send_modal(Feedback())


@bot.command()
@commands.is_owner()
async def sync(ctx: commands.Context[Helium]) -> None:
    """Register the slash commands with Discord (once, after changing them)."""
    await ctx.send(f"Synced {len(await bot.tree.sync())} commands.")


@tasks.loop(minutes=5)
async def heartbeat_log() -> None:
    logging.getLogger("helium").info("still here: %d reminders, %d presses", len(state["reminders"]), state["presses"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    attachment.run_forever()
