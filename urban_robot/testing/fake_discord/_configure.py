"""Point an unmodified discord.py at the fake: its REST base and its default gateway are class attributes.

discord.py reads ``discord.http.Route.BASE`` for every REST call (interaction webhooks included) and
``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` for the first connection and after an op 9; a RESUME
goes to READY's ``resume_gateway_url``, which the fake points at itself. (``AutoShardedClient`` asks
GET /gateway/bot, which the fake also answers with its own URL.)
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

ENV = "URBAN_ROBOT_DISCORD_URL"
CLIENT_ENV = "URBAN_ROBOT_DISCORD_CLIENT"
_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class FakeDiscordURLError(ValueError):
    """The URL given for the fake Discord cannot be used."""


def point_discord_py_at(url: str, *, client: str | None = None) -> str:
    """Make discord.py (in this process) talk to the fake Discord at ``url`` (``http://127.0.0.1:PORT``).

    ``client`` names this process in the fake's records (default ``pid<process id>``); it becomes a
    ``/c/<client>`` prefix of the REST base and gateway URL. Returns the client name. Call it before the
    bot logs in.
    """
    import discord.gateway
    import discord.http
    import yarl

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FakeDiscordURLError(f"{ENV} must look like http://127.0.0.1:PORT, not {url!r}")
    client = client or f"pid{os.getpid()}"
    if not _TAG.match(client):
        raise FakeDiscordURLError(f"client name {client!r} must be 1-64 letters, digits, '_', '.' or '-'")
    base = f"{parts.scheme}://{parts.netloc}/c/{client}"
    ws_scheme = "wss" if parts.scheme == "https" else "ws"
    discord.http.Route.BASE = f"{base}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(f"{ws_scheme}://{parts.netloc}/c/{client}/gateway")
    return client


def configure_from_environment(environ: dict[str, str] | None = None) -> bool:
    """If ``URBAN_ROBOT_DISCORD_URL`` is set, point discord.py at it and return True; else do nothing.

    ``URBAN_ROBOT_DISCORD_CLIENT`` names this process in the fake's records (default ``pid<pid>``).
    """
    env = os.environ if environ is None else environ
    url = env.get(ENV, "").strip()
    if not url:
        return False
    point_discord_py_at(url, client=env.get(CLIENT_ENV) or None)
    return True
