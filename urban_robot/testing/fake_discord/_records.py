"""What the fake Discord saw and did, as values tests can assert on (and the control API serves as JSON).

Times (``at``) are wall-clock seconds (``time.time()``), so a process that reads the records over HTTP can
compare them with its own clock. ``client`` names the process: the tag it put in its URLs through
``point_discord_py_at(url, client=...)`` (default ``pid<process id>``), or ``""`` when it used bare URLs.
Tokens are never recorded; ``token`` fields hold the label the token was registered under.
"""

from __future__ import annotations

from typing import Any

import attrs

JSON = dict[str, Any]


def _jsonable(value: Any) -> Any:
    if attrs.has(type(value)):
        return {field.name: _jsonable(getattr(value, field.name)) for field in attrs.fields(type(value))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value


def to_json(record: Any) -> JSON:
    """A record as plain JSON-able data (snowflakes stay ints)."""
    data = _jsonable(record)
    data["kind"] = type(record).__name__
    return data  # type: ignore[no-any-return]


@attrs.frozen
class SentEvent:
    """A gateway dispatch the fake produced (a user's message, an interaction, a member join, ...)."""

    name: str  # MESSAGE_CREATE, INTERACTION_CREATE, GUILD_MEMBER_ADD, MESSAGE_REACTION_ADD, ...
    id: int  # the message's, the interaction's or the joining user's id
    at: float
    sessions: tuple[str, ...]  # the sessions it was queued for (each delivers it live or on RESUME)


@attrs.frozen
class PostedMessage:
    """A message the bot created over REST, or one posted through a channel webhook (``route`` "webhook")."""

    id: int
    channel_id: int
    content: str
    at: float
    client: str
    token: str  # the label of the token that authorised it ("" when none was sent: webhooks need none)
    route: str  # "channel", "interaction_callback", "followup" or "webhook"
    reply_to: int | None = None  # message_reference.message_id, when the bot replied to a message
    interaction_id: int | None = None  # the interaction this answers (callback or follow-up)
    webhook_id: int | None = None  # the channel webhook it came through (``FakeDiscord.create_webhook``)
    body: JSON = attrs.field(factory=dict, eq=False, repr=False)  # the JSON the bot sent


@attrs.frozen
class InteractionCallback:
    """One POST /interactions/{id}/{token}/callback, answered or refused."""

    interaction_id: int
    type: int  # 4 message, 5 deferred message, 6 deferred update, 7 update message, 9 modal, ...
    at: float
    client: str
    token: str
    outcome: str  # "ok", "already_acknowledged" (400, code 40060) or "unknown_interaction" (404, code 10062)
    data: JSON = attrs.field(factory=dict, eq=False, repr=False)


@attrs.define(eq=False)
class GatewayConnection:
    """One WebSocket to the gateway, from open to close."""

    id: int
    client: str
    opened_at: float
    session_id: str | None = None
    login: str | None = None  # "identify" or "resume", once the client logged in on it
    replayed: int = 0  # events replayed by a RESUME on this connection
    closed_at: float | None = None
    close_code: int | None = None  # the code of the close frame, whoever sent it; None if the line dropped
    closed_by: str | None = None  # "client", "server" (a close frame) or "dropped" (no close frame)


@attrs.define(eq=False)
class GatewaySession:
    """A gateway session (a session id), across the connections that identified and resumed it."""

    session_id: str
    client: str
    token: str
    shard: tuple[int, int] | None
    intents: int
    identified_at: float
    resumed_at: list[float] = attrs.Factory(list)
    ended_at: float | None = None  # invalidated, expired or closed for good
    end_reason: str | None = None


@attrs.frozen
class IdentifyRecord:
    """One IDENTIFY the gateway received (a RESUME is no IDENTIFY), whatever became of it."""

    client: str
    connection: int
    shard: tuple[int, int] | None  # [id, count] as sent; None: none sent (shard 0 of 1), or not two integers
    at: float
    outcome: str  # "ready", "rate limited" (answered op 9), or why it was closed ("invalid shard", ...)


@attrs.frozen
class UnknownRoute:
    """A REST request the fake does not implement (answered 404): a gap to fill, or a bot bug."""

    method: str
    path: str
    at: float
    client: str
