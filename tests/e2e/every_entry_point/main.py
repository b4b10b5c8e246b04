"""A discord.py bot with every kind of entry point, for the end-to-end tests' own checks.

Each entry point (``!ping``, ``!remind`` and ``!reminder`` in ``on_message``, the slash commands ``/hello``
and ``/feedback``, the persistent view's button and select, the feedback modal, ``on_member_join`` and a
``tasks.loop``) runs only while ``attachment.processing`` is true — by hand, as a bot author gates what
``attach`` does not. With ``E2E_UNSAFE_BOT=1`` none is gated (attach's HTTP gate is undone too): every
logged-in worker acts, and the checker must say so (``twice > 0``). Its answers follow
``tests/e2e/_harness.EXAMPLE_PROFILE``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import discord
from discord.ext import commands, tasks

from urban_robot.integrations import discord as integration

VERSION = "1.0.0"
UNSAFE = os.environ.get("E2E_UNSAFE_BOT") == "1"
# Unsafe, listeners are marked to run on every worker, as a bot author may mark one (when attach gates them).
F = TypeVar("F", bound=Callable[..., Any])


def everywhere(func: F) -> F:
    """Unsafe: run on every worker (attach's opt-out of its gate, where it has one); else unchanged."""
    mark: Callable[[F], F] | None = getattr(integration, "everywhere", None)
    return mark(func) if UNSAFE and mark is not None else func


reminders: dict[str, str] = {}


def get_cache() -> dict[str, str]:
    return dict(reminders)


def set_cache(cache: Any) -> None:
    reminders.clear()
    reminders.update(cache or {})


def allowed() -> bool:
    return UNSAFE or attachment.processing


class Panel(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Wave", custom_id="example:wave")
    async def wave(self, interaction: discord.Interaction, button: discord.ui.Button[Panel]) -> None:
        if allowed():
            await interaction.response.send_message(f"{interaction.user.name} waves")

    @discord.ui.select(
        custom_id="example:colour", options=[discord.SelectOption(label=c, value=c) for c in ("red", "blue")]
    )
    async def colour(self, interaction: discord.Interaction, select: discord.ui.Select[Panel]) -> None:
        if allowed():
            await interaction.response.send_message(f"you chose {select.values[0]}")


class Feedback(discord.ui.Modal, title="Feedback"):
    text: discord.ui.TextInput[Feedback] = discord.ui.TextInput(label="Feedback")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        if allowed():
            await interaction.response.send_message(f"thanks for {self.text.value}")


class Helium(commands.Bot):
    async def setup_hook(self) -> None:
        await self.load_extension("modules.utilities")
        self.add_view(Panel())
        heartbeat.start()


intents = discord.Intents.default()
intents.message_content = True
intents.members = True
bot = Helium(command_prefix="?", intents=intents)  # "!ping" is answered in on_message, gated by hand
attachment = integration.attach(bot, version=VERSION, get_cache=get_cache, set_cache=set_cache)
if UNSAFE:  # and past attach's catch-all at the HTTP boundary: every logged-in worker writes to Discord
    import types

    from discord.webhook.async_ import AsyncWebhookAdapter, async_context

    bot.http.request = types.MethodType(discord.http.HTTPClient.request, bot.http)  # type: ignore[method-assign]
    async_context.set(AsyncWebhookAdapter())  # type: ignore[no-untyped-call]


@bot.tree.command(description="Say hello")
async def hello(interaction: discord.Interaction) -> None:
    if allowed():
        await interaction.response.send_message("hello")


@bot.tree.command(description="Open the feedback form")
async def feedback(interaction: discord.Interaction) -> None:
    if allowed():
        await interaction.response.send_modal(Feedback())


@bot.listen()
@everywhere
async def on_message(message: discord.Message) -> None:
    if message.author.bot or not allowed():
        return
    if message.content == "!ping":
        await message.reply("pong")
    elif message.content.startswith("!remind "):
        reminders[str(message.author.id)] = message.content.removeprefix("!remind ")
        await attachment.sync_cache()
        await message.reply("Noted.")
    elif message.content == "!reminder":
        await message.reply(reminders.get(str(message.author.id), "Nothing to remind you of."))


@bot.listen()
@everywhere
async def on_member_join(member: discord.Member) -> None:
    channel = discord.utils.get(member.guild.text_channels, name="general")
    if channel is not None and allowed():
        await channel.send(f"welcome {member.mention}")


@tasks.loop(seconds=1)
@everywhere
async def heartbeat() -> None:
    channel = discord.utils.get(bot.get_all_channels(), name="bot-log")
    if isinstance(channel, discord.TextChannel) and allowed():
        await channel.send("tick")


@heartbeat.before_loop
async def before_heartbeat() -> None:
    await bot.wait_until_ready()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    attachment.run_forever()
