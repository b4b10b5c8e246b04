"""What the fake Discord knows: its application, users, guilds and channels, and the JSON Discord sends for them.

Everything here is plain data and pure functions that build the payloads discord.py's parsers read (the shapes
follow Discord's API reference, v10). Ids are real snowflakes (discord.py derives ``created_at`` from them).
"""

from __future__ import annotations

import datetime
import itertools
from typing import Any, ClassVar

import attrs

JSON = dict[str, Any]

DISCORD_EPOCH_MS = 1_420_070_400_000


class Intents:
    """Gateway intent bits (the ones the fake acts on; any defined bit is accepted)."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1  # privileged
    GUILD_PRESENCES = 1 << 8  # privileged
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15  # privileged
    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
    DEFINED = (1 << 26) - 1  # a bit outside this closes the session with 4013 (invalid intents)

    NAMES: ClassVar[dict[str, int]] = {
        "members": GUILD_MEMBERS,
        "presences": GUILD_PRESENCES,
        "message_content": MESSAGE_CONTENT,
    }

    @classmethod
    def privileged(cls, *names: str) -> int:
        """The bits for privileged intents named as discord.py names them (``"members"``, ``"message_content"``)."""
        unknown = [name for name in names if name not in cls.NAMES]
        if unknown:
            raise ValueError(f"not a privileged intent: {', '.join(unknown)} (known: {', '.join(cls.NAMES)})")
        bits = 0
        for name in names:
            bits |= cls.NAMES[name]
        return bits


class Snowflakes:
    """Fresh snowflake ids: milliseconds since Discord's epoch, then a counter."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._last = 0

    def next(self, now: float) -> int:
        ms = int(now * 1000) - DISCORD_EPOCH_MS
        value = (ms << 22) | (next(self._counter) & 0x3FFFFF)
        self._last = max(self._last + 1, value)  # strictly increasing even if the clock steps back
        return self._last


def iso(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat()


@attrs.frozen
class User:
    id: int
    username: str
    bot: bool = False

    def payload(self) -> JSON:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": None if self.bot else self.username.title(),
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }


@attrs.frozen
class Channel:
    id: int
    name: str
    guild_id: int | None  # None: a DM channel
    position: int = 0
    recipient: User | None = None  # DM channels

    def payload(self) -> JSON:
        if self.guild_id is None:
            recipients = [self.recipient.payload()] if self.recipient is not None else []
            return {"id": str(self.id), "type": 1, "last_message_id": None, "recipients": recipients, "flags": 0}
        return {
            "id": str(self.id),
            "type": 0,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }


ALL_PERMISSIONS = str((1 << 50) - 1)
EVERYONE_PERMISSIONS = str(0x0000_0006_3FFF_7E41 & ~0x8)  # the usual @everyone set, without ADMINISTRATOR


@attrs.define(eq=False)
class Guild:
    id: int
    name: str
    owner_id: int
    channels: list[Channel]
    members: dict[int, tuple[User, float]]  # user id → (user, joined at)

    def role_payloads(self) -> list[JSON]:
        everyone = {
            "id": str(self.id),
            "name": "@everyone",
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": 0,
            "permissions": EVERYONE_PERMISSIONS,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        return [everyone]

    def member_payload(self, user_id: int, *, with_user: bool = True) -> JSON:
        user, joined = self.members[user_id]
        member: JSON = {
            "roles": [],
            "nick": None,
            "avatar": None,
            "joined_at": iso(joined),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
        }
        if with_user:
            member["user"] = user.payload()
        return member

    def create_payload(self, now: float, *, members: list[int]) -> JSON:
        """GUILD_CREATE's data: the guild with its channels, roles and the given members."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": self.role_payloads(),
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            # Discord gives a new guild a system channel (joins are announced there): its first text channel
            "system_channel_id": next((str(c.id) for c in self.channels if c.guild_id is not None), None),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": iso(now),
            "large": len(self.members) >= 250,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": [self.member_payload(user_id) for user_id in members if user_id in self.members],
            "channels": [channel.payload() for channel in self.channels],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@attrs.define(eq=False)
class World:
    """The fake's Discord: one application (a bot user), some people, guilds, channels and DM channels.

    ``World.default(now)`` builds one guild, "Fake Guild", with the text channels ``#general`` and
    ``#bot-log`` and the members alice, bob and the bot.
    """

    ids: Snowflakes
    application_id: int
    bot: User
    users: dict[int, User]
    guilds: dict[int, Guild]
    dm_channels: dict[int, Channel] = attrs.Factory(dict)  # by recipient id

    @classmethod
    def default(cls, now: float) -> World:
        ids = Snowflakes()
        bot = User(ids.next(now), "fake-bot", bot=True)
        alice, bob = User(ids.next(now), "alice"), User(ids.next(now), "bob")
        guild_id = ids.next(now)
        channels = [
            Channel(ids.next(now), "general", guild_id, position=0),
            Channel(ids.next(now), "bot-log", guild_id, position=1),
        ]
        members = {user.id: (user, now) for user in (alice, bob, bot)}
        guild = Guild(guild_id, "Fake Guild", alice.id, channels, members)
        return cls(ids, bot.id, bot, {u.id: u for u in (bot, alice, bob)}, {guild_id: guild})

    # ------------------------------------------------------------------ look-ups
    @property
    def guild(self) -> Guild:
        """The first guild (the default world has one)."""
        return next(iter(self.guilds.values()))

    def channel(self, channel_id: int) -> Channel | None:
        for guild in self.guilds.values():
            for channel in guild.channels:
                if channel.id == channel_id:
                    return channel
        for channel in self.dm_channels.values():
            if channel.id == channel_id:
                return channel
        return None

    def channel_named(self, name: str) -> Channel:
        for guild in self.guilds.values():
            for channel in guild.channels:
                if channel.name == name:
                    return channel
        raise KeyError(f"no channel named {name!r}")

    def user_named(self, name: str) -> User:
        for user in self.users.values():
            if user.username == name:
                return user
        raise KeyError(f"no user named {name!r}")

    def dm_channel(self, user: User, now: float) -> Channel:
        channel = self.dm_channels.get(user.id)
        if channel is None:
            channel = self.dm_channels[user.id] = Channel(self.ids.next(now), "", None, recipient=user)
        return channel

    def add_user(self, username: str, now: float) -> User:
        user = User(self.ids.next(now), username)
        self.users[user.id] = user
        return user

    def summary(self) -> JSON:
        """Ids and names, for tests and the control API."""
        return {
            "application_id": str(self.application_id),
            "bot": self.bot.payload(),
            "users": {u.username: str(u.id) for u in self.users.values()},
            "guilds": [
                {
                    "id": str(g.id),
                    "name": g.name,
                    "channels": {c.name: str(c.id) for c in g.channels},
                    "members": [str(user_id) for user_id in g.members],
                }
                for g in self.guilds.values()
            ],
        }

    # ------------------------------------------------------------------ payloads
    def application_payload(self) -> JSON:
        return {
            "id": str(self.application_id),
            "name": self.bot.username,
            "icon": None,
            "description": "A bot talking to the fake Discord.",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self.guild.members[self.guild.owner_id][0].payload() if self.guilds else self.bot.payload(),
            "team": None,
            "flags": 0,
            "bot": self.bot.payload(),
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "tags": [],
        }

    def message_payload(
        self,
        message_id: int,
        channel: Channel,
        author: User,
        content: str,
        now: float,
        *,
        extra: JSON | None = None,
    ) -> JSON:
        data: JSON = {
            "id": str(message_id),
            "type": 0,
            "channel_id": str(channel.id),
            "author": author.payload(),
            "content": content,
            "timestamp": iso(now),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "flags": 0,
            "components": [],
        }
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
            guild = self.guilds[channel.guild_id]
            if author.id in guild.members:
                data["member"] = guild.member_payload(author.id, with_user=False)
        if extra:
            data.update(extra)
        return data

    def interaction_payload(
        self,
        interaction_id: int,
        token: str,
        kind: int,
        data: JSON,
        channel: Channel,
        user: User,
        *,
        message: JSON | None = None,
    ) -> JSON:
        payload: JSON = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "channel_id": str(channel.id),
            "channel": channel.payload(),
            "token": token,
            "version": 1,
            "locale": "en-US",
            "app_permissions": ALL_PERMISSIONS,
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(channel.guild_id or user.id)},
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if channel.guild_id is not None:
            guild = self.guilds[channel.guild_id]
            member: JSON = {"user": user.payload(), "roles": [], "joined_at": iso(0)}
            if user.id in guild.members:
                member = guild.member_payload(user.id)
            member["permissions"] = EVERYONE_PERMISSIONS
            payload.update(guild_id=str(guild.id), guild_locale="en-US", member=member, context=0)
            payload["guild"] = {"id": str(guild.id), "locale": "en-US", "features": []}
        else:
            payload.update(user=user.payload(), context=1)
        if message is not None:
            payload["message"] = message
        return payload
