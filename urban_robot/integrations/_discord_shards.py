"""A sharded bot under Urban Robot (docs/protocol.md §18.3): discord.py runs exactly the shards ``hello`` gave,
and every IDENTIFY (never a RESUME) waits for a slot from the supervisor.

discord.py calls ``Client.before_identify_hook(shard_id, initial=...)`` from ``DiscordWebSocket.identify``,
right before the IDENTIFY is written, after the Gateway's HELLO; ``resume()`` does not call it. That hook is
where the slot is awaited. discord.py's own hook sleeps 5 s before every IDENTIFY but a shard's first: with
slots the supervisor spaces IDENTIFYs, so it is not called. A bot's own override is called first, then the
slot is awaited (the IDENTIFY then goes at once: a grant is good for ``IDENTIFY_MARGIN`` seconds only).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

ONE_SHARD_HINT = "use commands.AutoShardedBot for shards_per_worker > 1"


def place_on_shards(bot: Any, shards: tuple[int, ...], count: int) -> str | None:
    """Before the bot logs in: make it run exactly ``shards`` of ``count``. A reason it cannot, or None."""
    import discord

    if isinstance(bot, discord.AutoShardedClient):
        bot.shard_ids, bot.shard_count = list(shards), count  # read by launch_shards
        return None
    if len(shards) > 1:
        return f"a {type(bot).__name__} runs one shard, and this worker was given {len(shards)}"
    bot.shard_id, bot.shard_count = shards[0], count
    bot._connection.shard_count = count  # what the IDENTIFY's "shard" is built from (read at construction)
    return None


def gate_identify(bot: Any, sharded: Callable[[], bool], slot: Callable[[int], Awaitable[None]]) -> None:
    """Make every IDENTIFY of a sharded bot wait for ``slot(shard_id)``; unsharded, the bot's hook as before."""
    import discord

    theirs = bot.before_identify_hook  # bound: the bot's override, or discord.py's
    overridden = getattr(type(bot), "before_identify_hook", None) is not discord.Client.before_identify_hook

    async def before_identify_hook(shard_id: int | None, *, initial: bool = False) -> None:
        if not sharded():
            return await theirs(shard_id, initial=initial)  # type: ignore[no-any-return]
        if overridden:
            await theirs(shard_id, initial=initial)
        await slot(shard_id if shard_id is not None else 0)
        return None

    bot.before_identify_hook = before_identify_hook
