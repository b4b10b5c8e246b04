"""A real discord.py ``commands.Bot`` for the fake Discord's tests; it reports what it sees in #bot-log.

Environment: ``URBAN_ROBOT_DISCORD_URL`` and ``URBAN_ROBOT_DISCORD_CLIENT`` (where the fake is, and this
process's name in its records), ``FAKE_BOT_TOKEN``, ``FAKE_BOT_INTENTS`` (comma-separated discord.py
intent names added to the defaults), ``FAKE_BOT_LOG`` (the id of the channel it reports in) and
``FAKE_BOT_SYNC`` (1: sync the command tree at start).

Each report is one message ``<event> key=value ...`` in the log channel, so a test waits for it among
the fake's records. Exit codes: 3 LoginFailure, 4 PrivilegedIntentsRequired, 5 ConnectionClosed.
"""

from __future__ import annotations

import asyncio
import os
import sys

import discord
from discord import app_commands
from discord.ext import commands

from urban_robot.testing.fake_discord import configure_from_environment

LOG = int(os.environ.get("FAKE_BOT_LOG", "0"))


class Bot(commands.Bot):
    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No pause before a repeated IDENTIFY: discord.py waits 5 s there to spare Discord, not the fake."""

    async def setup_hook(self) -> None:
        self.add_view(Persistent())
        if os.environ.get("FAKE_BOT_SYNC") == "1":
            synced = await self.tree.sync()
            print("synced", [command.name for command in synced], flush=True)


def make_intents() -> discord.Intents:
    intents = discord.Intents.default()
    for name in filter(None, os.environ.get("FAKE_BOT_INTENTS", "").split(",")):
        setattr(intents, name, True)
    return intents


bot = Bot(command_prefix="!", intents=make_intents(), guild_ready_timeout=0.1)


async def report(text: str) -> None:
    channel = bot.get_channel(LOG)
    assert isinstance(channel, discord.TextChannel), "FAKE_BOT_LOG names no text channel the bot knows"
    await channel.send(text)


async def answer(interaction: discord.Interaction, text: str) -> None:
    """Respond to an interaction; a refused response (40060 when another process answered) is reported."""
    try:
        await interaction.response.send_message(text)
    except discord.HTTPException as exc:
        await report(f"http_error code={exc.code} status={exc.status} interaction={interaction.id}")


class Persistent(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Hello", custom_id="persistent:hello")
    async def hello(self, interaction: discord.Interaction, button: discord.ui.Button[Persistent]) -> None:
        await answer(interaction, f"hello clicked by {interaction.user.name}")

    @discord.ui.select(
        custom_id="persistent:colour",
        options=[discord.SelectOption(label=c, value=c) for c in ("red", "green", "blue")],
    )
    async def colour(self, interaction: discord.Interaction, select: discord.ui.Select[Persistent]) -> None:
        await answer(interaction, f"chose {','.join(select.values)}")


class Feedback(discord.ui.Modal, title="Feedback"):
    text: discord.ui.TextInput[Feedback] = discord.ui.TextInput(label="Your feedback", custom_id="feedback-text")

    def __init__(self) -> None:
        super().__init__(custom_id="feedback-modal")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await answer(interaction, f"thanks for {self.text.value}")


@bot.tree.command(description="Echo a text")
@app_commands.describe(text="what to echo")
async def echo(interaction: discord.Interaction, text: str, times: int = 1) -> None:
    await answer(interaction, " ".join([f"echo {text}"] * times))


@bot.tree.command(description="Answer after thinking")
async def later(interaction: discord.Interaction) -> None:
    await interaction.response.defer(thinking=True)
    await interaction.followup.send("done later")
    await interaction.followup.send("and a follow-up")


@bot.tree.command(description="Open the feedback form")
async def feedback(interaction: discord.Interaction) -> None:
    await interaction.response.send_modal(Feedback())


@bot.command()
async def ping(ctx: commands.Context[Bot]) -> None:
    await ctx.reply("pong")


@bot.event
async def on_ready() -> None:
    guild = bot.guilds[0]
    names = sorted(channel.name for channel in guild.text_channels)
    await report(f"ready guilds={len(bot.guilds)} guild={guild.name} channels={','.join(names)} user={bot.user}")


@bot.event
async def on_resumed() -> None:
    await report("resumed")


@bot.listen()
async def on_message(message: discord.Message) -> None:
    if not message.author.bot:
        await report(f"seen id={message.id} content={message.content!r}")


@bot.event
async def on_member_join(member: discord.Member) -> None:
    await report(f"joined name={member.name} guild={member.guild.name}")


@bot.event
async def on_raw_reaction_add(payload: discord.RawReactionActionEvent) -> None:
    await report(f"reaction emoji={payload.emoji} message={payload.message_id}")


async def main() -> int:
    configure_from_environment()
    try:
        async with bot:
            await bot.start(os.environ["FAKE_BOT_TOKEN"])
    except discord.LoginFailure as exc:
        print(f"LoginFailure: {exc}", flush=True)
        return 3
    except discord.PrivilegedIntentsRequired as exc:
        print(f"PrivilegedIntentsRequired: {exc}", flush=True)
        return 4
    except discord.ConnectionClosed as exc:
        print(f"ConnectionClosed: {exc.code}", flush=True)
        return 5
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
