"""The fake Discord's state and its user-side events, sans-IO: what people do and what Discord then sends.

``FakeCore`` owns the world, the application's settings, the gateway core, the messages and interactions,
and the records. Each method takes the time and returns gateway actions for the shell to carry out.
"""

from __future__ import annotations

import secrets
from typing import Any

import attrs

from ._gateway import Action, Audience, Gateway, Settings
from ._records import InteractionCallback, PostedMessage, SentEvent, UnknownRoute
from ._world import JSON, Channel, Intents, User, World


@attrs.define(eq=False)
class Interaction:
    """An interaction the fake sent: its id and token, and how (and by whom) it was answered."""

    id: int
    token: str
    type: int  # 2 application command, 3 component, 5 modal submit
    channel: Channel
    user: User
    at: float
    message_id: int | None = None  # the message a component sits on
    answered_by: str | None = None  # the client whose callback was accepted
    response_type: int | None = None
    original_message_id: int | None = None  # the message the callback or an edit created


@attrs.frozen
class Webhook:
    """A channel webhook (``FakeDiscord.create_webhook``): ``POST /webhooks/{id}/{token}`` posts, no bot token."""

    id: int
    token: str
    channel: Channel
    name: str

    def user(self) -> User:
        return User(self.id, self.name, bot=True)  # the author Discord shows on a webhook's messages


@attrs.frozen
class Fault:
    """Answer the next ``count`` requests to ``route`` with ``status`` (429 carries ``retry_after``)."""

    route: str  # "POST /channels/{channel_id}/messages", or "*" for any
    count: int
    status: int
    retry_after: float = 0.0
    is_global: bool = False


OPTION_TYPES = ((bool, 5), (int, 4), (float, 10), (str, 3))  # bool before int: True is an int too


def option(name: str, value: Any) -> JSON:
    """A slash command option as Discord sends it, typed from the Python value."""
    kind = next((code for py, code in OPTION_TYPES if isinstance(value, py)), 3)
    return {"name": name, "type": kind, "value": value}


class FakeCore:
    def __init__(self, world: World, settings: Settings, gateway: Gateway) -> None:
        self.world = world
        self.settings = settings
        self.gateway = gateway
        self.messages: dict[int, JSON] = {}  # every message, the users' and the bot's, by id
        self.interactions: dict[int, Interaction] = {}
        self.webhooks: dict[int, Webhook] = {}
        self.commands: dict[int | None, list[JSON]] = {}  # guild id (None: global) → the synced commands
        self.faults: list[Fault] = []
        self.events: list[SentEvent] = []
        self.posted: list[PostedMessage] = []
        self.callbacks: list[InteractionCallback] = []
        self.unknown_routes: list[UnknownRoute] = []

    # ------------------------------------------------------------------ people do things
    def user_message(
        self,
        channel: Channel,
        author: User,
        content: str,
        now: float,
        *,
        mention_bot: bool = False,
        reply_to: int | None = None,
    ) -> tuple[int, list[Action]]:
        """A user posts ``content`` in ``channel``: MESSAGE_CREATE to every session that may see it."""
        message_id = self.world.ids.next(now)
        extra: JSON = {}
        if mention_bot:
            extra["mentions"] = [self.world.bot.payload()]
            if f"<@{self.world.bot.id}>" not in content:
                content = f"<@{self.world.bot.id}> {content}"
        if reply_to is not None:
            extra["message_reference"] = {"message_id": str(reply_to), "channel_id": str(channel.id), "type": 0}
            extra["type"] = 19
        message = self.world.message_payload(message_id, channel, author, content, now, extra=extra)
        return message_id, self._message_created(message, channel, now)

    def _message_created(self, message: JSON, channel: Channel, now: float) -> list[Action]:
        self.messages[int(message["id"])] = message
        intent = Intents.GUILD_MESSAGES if channel.guild_id is not None else Intents.DIRECT_MESSAGES
        audience = Audience(channel.guild_id, intent, content_of=message)
        return self._dispatch("MESSAGE_CREATE", message, int(message["id"]), audience, now)

    def slash_command(
        self, name: str, options: dict[str, Any], channel: Channel, user: User, now: float
    ) -> tuple[Interaction, list[Action]]:
        command_id = self._command_id(name, channel.guild_id, now)
        data: JSON = {"id": str(command_id), "name": name, "type": 1}
        if options:
            data["options"] = [option(key, value) for key, value in options.items()]
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
        return self._interaction(2, data, channel, user, now)

    def component(
        self,
        custom_id: str,
        channel: Channel,
        user: User,
        now: float,
        *,
        values: list[str] | None = None,
        message_id: int | None = None,
    ) -> tuple[Interaction, list[Action]]:
        """A button click (``values`` None) or a string select choice on a message of the bot's."""
        component_type = 2 if values is None else 3
        data: JSON = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = list(values)
        message = self.messages.get(message_id) if message_id is not None else None
        if message is None:
            message = self._message_with_component(custom_id, component_type, values or [], channel, now)
        return self._interaction(3, data, channel, user, now, message=message)

    def modal_submit(
        self, custom_id: str, values: dict[str, str], channel: Channel, user: User, now: float
    ) -> tuple[Interaction, list[Action]]:
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]} for key, value in values.items()
        ]
        return self._interaction(5, {"custom_id": custom_id, "components": rows}, channel, user, now)

    def member_join(self, user: User, guild_id: int, now: float) -> list[Action]:
        guild = self.world.guilds[guild_id]
        guild.members[user.id] = (user, now)
        data = {**guild.member_payload(user.id), "guild_id": str(guild_id)}
        return self._dispatch("GUILD_MEMBER_ADD", data, user.id, Audience(guild_id, Intents.GUILD_MEMBERS), now)

    def reaction(self, message_id: int, emoji: str, user: User, channel: Channel, now: float) -> list[Action]:
        data: JSON = {
            "user_id": str(user.id),
            "channel_id": str(channel.id),
            "message_id": str(message_id),
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
        }
        intent = Intents.GUILD_MESSAGE_REACTIONS
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
            guild = self.world.guilds[channel.guild_id]
            if user.id in guild.members:
                data["member"] = guild.member_payload(user.id)
        return self._dispatch("MESSAGE_REACTION_ADD", data, message_id, Audience(channel.guild_id, intent), now)

    def create_webhook(self, channel: Channel, name: str, now: float) -> Webhook:
        """A webhook in ``channel``, as its settings' Integrations → Webhooks makes one."""
        webhook = Webhook(self.world.ids.next(now), secrets.token_urlsafe(51), channel, name)
        self.webhooks[webhook.id] = webhook
        return webhook

    def webhook(self, webhook_id: str) -> Webhook | None:
        return self.webhooks.get(int(webhook_id)) if webhook_id.isdigit() else None

    # ------------------------------------------------------------------ the bot posts (REST calls these)
    def bot_message(
        self,
        channel: Channel,
        body: JSON,
        now: float,
        *,
        client: str,
        token: str,
        route: str,
        interaction_id: int | None = None,
        webhook: Webhook | None = None,
    ) -> tuple[JSON, list[Action]]:
        """Record a message the bot (or a ``webhook``) created and tell the gateway (the bot sees its own messages)."""
        message_id = self.world.ids.next(now)
        content = str(body.get("content") or "")
        extra: JSON = {key: body[key] for key in ("embeds", "components", "tts", "flags") if body.get(key) is not None}
        reference = body.get("message_reference") or {}
        reply_to = int(reference["message_id"]) if reference.get("message_id") else None
        if reply_to is not None:
            extra["message_reference"] = {"message_id": str(reply_to), "channel_id": str(channel.id), "type": 0}
            extra["type"] = 19
        if interaction_id is not None:
            extra["interaction_metadata"] = {
                "id": str(interaction_id),
                "type": self.interactions[interaction_id].type,
                "user": self.interactions[interaction_id].user.payload(),
                "authorizing_integration_owners": {},
            }
        if webhook is not None:
            extra["webhook_id"] = str(webhook.id)
        author = webhook.user() if webhook is not None else self.world.bot
        message = self.world.message_payload(message_id, channel, author, content, now, extra=extra)
        webhook_id = webhook.id if webhook is not None else None
        self.posted.append(
            PostedMessage(
                message_id, channel.id, content, now, client, token, route, reply_to, interaction_id, webhook_id, body
            )
        )
        ephemeral = int(body.get("flags") or 0) & 64
        if ephemeral:  # ephemeral answers are seen by their user only, not on the gateway
            self.messages[message_id] = message
            return message, []
        return message, self._message_created(message, channel, now)

    # ------------------------------------------------------------------ helpers
    def _dispatch(self, name: str, data: JSON, ident: int, audience: Audience, now: float) -> list[Action]:
        sessions, actions = self.gateway.dispatch(name, data, audience, now)
        self.events.append(SentEvent(name, ident, now, tuple(sessions)))
        return actions

    def _interaction(
        self, kind: int, data: JSON, channel: Channel, user: User, now: float, *, message: JSON | None = None
    ) -> tuple[Interaction, list[Action]]:
        interaction_id = self.world.ids.next(now)
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)  # opaque, unique, as Discord's are
        message_id = int(message["id"]) if message is not None else None
        record = Interaction(interaction_id, token, kind, channel, user, now, message_id)
        self.interactions[interaction_id] = record
        payload = self.world.interaction_payload(interaction_id, token, kind, data, channel, user, message=message)
        actions = self._dispatch("INTERACTION_CREATE", payload, interaction_id, Audience(channel.guild_id), now)
        return record, actions

    def _command_id(self, name: str, guild_id: int | None, now: float) -> int:
        for scope in (guild_id, None):
            for command in self.commands.get(scope, []):
                if command["name"] == name:
                    return int(command["id"])
        return self.world.ids.next(now)  # not synced: discord.py finds commands by name anyway

    def _message_with_component(
        self, custom_id: str, component_type: int, values: list[str], channel: Channel, now: float
    ) -> JSON:
        """A message of the bot's carrying the component (a persistent view's message from before a restart)."""
        if component_type == 2:
            component: JSON = {"type": 2, "style": 1, "label": custom_id, "custom_id": custom_id}
        else:
            options = [{"label": value, "value": value} for value in values] or [{"label": "-", "value": "-"}]
            component = {"type": 3, "custom_id": custom_id, "options": options, "min_values": 1, "max_values": 1}
        extra = {"components": [{"type": 1, "components": [component]}]}
        message = self.world.message_payload(self.world.ids.next(now), channel, self.world.bot, "", now, extra=extra)
        self.messages[int(message["id"])] = message
        return message
