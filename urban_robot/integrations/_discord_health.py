"""Why discord.py could not log in or stay connected: worth retrying, or the end of this worker (with what to do).

Transient — Discord or the network hiccuped — is retried with the protocol's back-off: a 5xx
(``DiscordServerError``), ``aiohttp.ClientError``, ``OSError``, a time-out, ``GatewayNotFound``.
Permanent ends the worker as a failure (``failed {reason, hint}``, then exit non-zero): the token
refused (``LoginFailure``, Gateway close 4004), privileged intents not enabled
(``PrivilegedIntentsRequired``, close 4014), invalid intents (4013), sharding or API version refused
(4010–4012), any other 4xx, and whatever else the bot's own login code (``setup_hook``) raised.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import attrs
import discord

TOKEN_HINT = "reset it in the Discord developer portal (Bot → Reset Token) and update BOT_TOKEN"
_CLOSE_CODES = {
    4004: ("token refused by the Gateway (close 4004)", TOKEN_HINT),
    4010: ("invalid shard (close 4010)", "check shard_id and shard_count"),
    4011: ("sharding required (close 4011)", "the bot is in too many guilds for one shard: use AutoShardedBot"),
    4012: ("invalid API version (close 4012)", "upgrade discord.py"),
    4013: ("invalid intents (close 4013)", "the intents value is not valid: build it with discord.Intents"),
}


@attrs.frozen
class Verdict:
    transient: bool
    reason: str
    hint: str = ""


def privileged_hint(intents: Any) -> str:
    """What to enable in the developer portal for the privileged intents the bot asks for."""
    names = {"message_content": "Message Content", "members": "Server Members", "presences": "Presence"}
    wanted = [label for flag, label in names.items() if getattr(intents, flag, False)] or list(names.values())
    listed = " and ".join(f"the {name} intent" for name in wanted)
    return (
        f"enable {listed} for this application in the Discord developer portal (Bot → Privileged Gateway Intents)"
        ", or stop requesting it"
    )


def judge(exc: BaseException, intents: Any) -> Verdict:
    """Transient (retry after a back-off) or permanent (fail with a hint), for what login/connect raised."""
    kind = type(exc).__name__
    if isinstance(exc, discord.LoginFailure):
        return Verdict(False, "Discord refused the token", TOKEN_HINT)
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return Verdict(False, "privileged intents refused (close 4014)", privileged_hint(intents))
    if isinstance(exc, discord.ConnectionClosed):
        if exc.code in _CLOSE_CODES:
            return Verdict(False, *_CLOSE_CODES[exc.code])
        return Verdict(True, f"Gateway closed with {exc.code}")
    if isinstance(exc, discord.DiscordServerError):
        return Verdict(True, f"Discord answered {exc.status}")
    if isinstance(exc, discord.HTTPException):
        return Verdict(False, f"Discord answered {exc.status} at login: {exc.text[:200]}", "see the worker's log")
    if isinstance(exc, aiohttp.ClientError | OSError | asyncio.TimeoutError | discord.GatewayNotFound):
        return Verdict(True, f"cannot reach Discord ({kind}: {exc})"[:200])
    return Verdict(False, f"the bot's login raised {kind}: {exc}"[:200], "fix the bot's setup_hook or extensions")
