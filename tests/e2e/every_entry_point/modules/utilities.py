"""The ``modules.utilities`` extension: Urban Robot's default vital cog."""

from __future__ import annotations

from discord.ext import commands


class Utilities(commands.Cog):
    @commands.command()
    async def ping(self, ctx: commands.Context[commands.Bot]) -> None:
        await ctx.send(f"Pong! {round(ctx.bot.latency * 1000)} ms")


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Utilities())
