"""The fake's REST API, sans-IO: a request in, a status, a JSON body and gateway actions out.

Only the routes discord.py calls in a bot's ordinary life are implemented (login, gateway discovery,
messages, DMs, interaction callbacks and follow-ups, command sync), and executing a channel webhook (what
the supervisor's notifier does when the bot's token is refused); anything else is answered 404 with
Discord's JSON error shape and recorded in ``unknown_routes``, so a gap shows instead of hiding.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import attrs

from ._core import FakeCore, Fault
from ._gateway import Action
from ._records import InteractionCallback, UnknownRoute
from ._world import JSON

log = logging.getLogger("urban_robot.testing.fake_discord")


@attrs.frozen
class RestRequest:
    method: str
    path: str  # after the /api/v10 prefix
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    client: str


@attrs.frozen
class RestResult:
    status: int
    body: JSON | list[Any] | None
    headers: tuple[tuple[str, str], ...] = ()
    actions: list[Action] = attrs.field(factory=list)


class RestError(Exception):
    def __init__(self, status: int, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


UNAUTHORIZED = RestError(401, "401: Unauthorized", 0)
Handler = Callable[["Rest", RestRequest, dict[str, str], float], RestResult]
ROUTES: list[tuple[str, str, re.Pattern[str], Handler, bool]] = []  # method, template, pattern, handler, needs auth


def route(method: str, template: str, *, auth: bool = True) -> Callable[[Handler], Handler]:
    pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")

    def register(handler: Handler) -> Handler:
        ROUTES.append((method, template, pattern, handler, auth))
        return handler

    return register


def _json_body(request: RestRequest) -> JSON:
    content_type = request.headers.get("content-type", "")
    if not request.body:
        return {}
    if content_type.startswith("multipart/form-data"):
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + request.body)
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "payload_json":
                return json.loads(part.get_content())  # type: ignore[no-any-return]
        return {}
    try:
        body = json.loads(request.body)
    except ValueError as exc:
        raise RestError(400, "400: Bad Request", 50109) from exc  # "The request body contains invalid JSON."
    return body if isinstance(body, dict) else {"items": body}


class Rest:
    def __init__(self, core: FakeCore, gateway_url: Callable[[str], str]) -> None:
        self.core = core
        self.gateway_url = gateway_url  # client → the gateway URL GET /gateway/bot answers

    def handle(self, request: RestRequest, now: float) -> RestResult:
        for method, template, pattern, handler, auth in ROUTES:
            match = pattern.match(request.path)
            if match is None or method != request.method:
                continue
            fault = self._fault(f"{method} {template}")
            if fault is not None:
                return fault
            try:
                if auth:
                    self._token(request)
                return handler(self, request, match.groupdict(), now)
            except RestError as exc:
                return RestResult(exc.status, {"message": exc.message, "code": exc.code})
        log.warning("fake Discord: no route for %s %s (answered 404)", request.method, request.path)
        self.core.unknown_routes.append(UnknownRoute(request.method, request.path, now, request.client))
        return RestResult(404, {"message": "404: Not Found", "code": 0})

    def _token(self, request: RestRequest) -> str:
        """The label of the request's bot token; a missing or unknown token is 401, as Discord answers."""
        header = request.headers.get("authorization", "")
        if not header.startswith("Bot "):
            raise UNAUTHORIZED
        label = self.core.settings.tokens.get(header.removeprefix("Bot "))
        if label is None:
            raise UNAUTHORIZED
        return label

    def _fault(self, key: str) -> RestResult | None:
        for index, fault in enumerate(self.core.faults):
            if fault.route not in ("*", key):
                continue
            if fault.count <= 1:
                del self.core.faults[index]
            else:
                self.core.faults[index] = attrs.evolve(fault, count=fault.count - 1)
            if fault.status == 429:
                body = {"message": "You are being rate limited.", "retry_after": fault.retry_after}
                body["global"] = fault.is_global
                headers: tuple[tuple[str, str], ...] = (("Retry-After", str(fault.retry_after)), ("Via", "1.1 google"))
                if fault.is_global:
                    headers += (("X-RateLimit-Global", "true"),)
                return RestResult(429, body, headers)
            return RestResult(fault.status, {"message": f"{fault.status}: Service Unavailable", "code": 0})
        return None

    def _channel(self, channel_id: str) -> Any:
        channel = self.core.world.channel(int(channel_id)) if channel_id.isdigit() else None
        if channel is None:
            raise RestError(404, "Unknown Channel", 10003)
        return channel

    def _interaction(self, interaction_id: str, token: str) -> Any:
        interaction = self.core.interactions.get(int(interaction_id)) if interaction_id.isdigit() else None
        if interaction is None or interaction.token != token:
            raise RestError(404, "Unknown interaction", 10062)
        return interaction

    def _interaction_by_token(self, application_id: str, token: str) -> Any:
        if application_id != str(self.core.world.application_id):
            raise RestError(404, "Unknown Webhook", 10015)
        for interaction in self.core.interactions.values():
            if interaction.token == token:
                return interaction
        raise RestError(404, "Unknown Webhook", 10015)


# ---------------------------------------------------------------------- the routes
@route("GET", "/users/@me")
def _me(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    return RestResult(200, {**rest.core.world.bot.payload(), "verified": True, "mfa_enabled": False})


@route("GET", "/users/{user_id}")
def _user(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    user = rest.core.world.users.get(int(args["user_id"])) if args["user_id"].isdigit() else None
    if user is None:
        raise RestError(404, "Unknown User", 10013)
    return RestResult(200, user.payload())


@route("GET", "/gateway", auth=False)
def _gateway(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    return RestResult(200, {"url": rest.gateway_url(request.client)})


@route("GET", "/gateway/bot")
def _gateway_bot(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    settings = rest.core.settings
    remaining = settings.session_remaining
    if remaining is None:
        remaining = max(0, settings.session_total - len(rest.core.gateway.session_records))
    limit = {
        "total": settings.session_total,
        "remaining": remaining,
        "reset_after": settings.session_reset_after,
        "max_concurrency": settings.max_concurrency,
    }
    url = rest.gateway_url(request.client)
    shards = settings.shards if settings.shards is not None else settings.required_shards
    return RestResult(200, {"url": url, "shards": shards, "session_start_limit": limit})


@route("GET", "/oauth2/applications/@me")
@route("GET", "/applications/@me")
def _application(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    return RestResult(200, rest.core.world.application_payload())


@route("GET", "/channels/{channel_id}")
def _get_channel(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    return RestResult(200, rest._channel(args["channel_id"]).payload())


def _message_body(request: RestRequest) -> JSON:
    body = _json_body(request)
    if not (body.get("content") or body.get("embeds") or body.get("components") or body.get("attachments")):
        raise RestError(400, "Cannot send an empty message", 50006)
    if len(str(body.get("content") or "")) > 2000:
        raise RestError(400, "Invalid Form Body", 50035)
    return body


@route("POST", "/channels/{channel_id}/messages")
def _post_message(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    channel = rest._channel(args["channel_id"])
    body = _message_body(request)
    token = rest._token(request)
    message, actions = rest.core.bot_message(channel, body, now, client=request.client, token=token, route="channel")
    return RestResult(200, message, actions=actions)


@route("PATCH", "/channels/{channel_id}/messages/{message_id}")
def _edit_message(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    rest._channel(args["channel_id"])
    message = rest.core.messages.get(int(args["message_id"])) if args["message_id"].isdigit() else None
    if message is None:
        raise RestError(404, "Unknown Message", 10008)
    body = _json_body(request)
    message.update({key: value for key, value in body.items() if key in ("content", "embeds", "components")})
    return RestResult(200, message)


@route("POST", "/channels/{channel_id}/typing")
def _typing(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    rest._channel(args["channel_id"])
    return RestResult(204, None)


@route("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me")
def _react(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    rest._channel(args["channel_id"])
    return RestResult(204, None)


@route("POST", "/users/@me/channels")
def _dm_channel(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    body = _json_body(request)
    recipient = str(body.get("recipient_id", ""))
    user = rest.core.world.users.get(int(recipient)) if recipient.isdigit() else None
    if user is None:
        raise RestError(400, "Invalid Recipient(s)", 50033)
    return RestResult(200, rest.core.world.dm_channel(user, now).payload())


CALLBACK_MESSAGE_TYPES = (4, 7)  # CHANNEL_MESSAGE_WITH_SOURCE, UPDATE_MESSAGE


@route("POST", "/interactions/{interaction_id}/{token}/callback", auth=False)
def _callback(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    core = rest.core
    label = _label_or_blank(rest, request)
    try:
        interaction = rest._interaction(args["interaction_id"], args["token"])
    except RestError:
        ident = int(args["interaction_id"]) if args["interaction_id"].isdigit() else 0
        core.callbacks.append(InteractionCallback(ident, 0, now, request.client, label, "unknown_interaction"))
        raise
    body = _json_body(request)
    kind = int(body.get("type") or 0)
    data = body.get("data") or {}
    if interaction.answered_by is not None:
        record = InteractionCallback(interaction.id, kind, now, request.client, label, "already_acknowledged", data)
        core.callbacks.append(record)
        raise RestError(400, "Interaction has already been acknowledged.", 40060)
    interaction.answered_by, interaction.response_type = request.client, kind
    core.callbacks.append(InteractionCallback(interaction.id, kind, now, request.client, label, "ok", data))
    answer: JSON = {
        "id": str(interaction.id),
        "type": interaction.type,
        "response_message_loading": kind == 5,
        "response_message_ephemeral": bool(int(data.get("flags") or 0) & 64),
    }
    result: JSON = {"interaction": answer, "resource": {"type": kind}}
    actions: list[Action] = []
    if kind in CALLBACK_MESSAGE_TYPES:
        message, actions = core.bot_message(
            interaction.channel,
            data,
            now,
            client=request.client,
            token=label,
            route="interaction_callback",
            interaction_id=interaction.id,
        )
        interaction.original_message_id = int(message["id"])
        answer["response_message_id"] = message["id"]
        result["resource"]["message"] = message
    return RestResult(200, result, actions=actions)


def _label_or_blank(rest: Rest, request: RestRequest) -> str:
    """Interaction webhooks need no bot token; when one is sent anyway, record whose it was."""
    try:
        return rest._token(request)
    except RestError:
        return ""


@route("POST", "/webhooks/{webhook_id}/{token}", auth=False)
def _execute_webhook(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    """A channel webhook's message, or an interaction's follow-up: Discord serves both here (an application id
    and an interaction token stand where a webhook's id and token do), so the id is looked up in both."""
    webhook = rest.core.webhook(args["webhook_id"])
    if webhook is None:
        return _followup(rest, request, args["webhook_id"], args["token"], now)
    if webhook.token != args["token"]:
        raise RestError(401, "Invalid Webhook Token", 50027)
    body = _message_body(request)
    message, actions = rest.core.bot_message(
        webhook.channel,
        body,
        now,
        client=request.client,
        token=_label_or_blank(rest, request),
        route="webhook",
        webhook=webhook,
    )
    query = dict(part.partition("=")[::2] for part in request.query.split("&") if part)
    if query.get("wait", "").lower() in ("true", "1"):
        return RestResult(200, message, actions=actions)
    return RestResult(204, None, actions=actions)  # Discord's answer without ?wait=true: no message, no errors


def _followup(rest: Rest, request: RestRequest, application_id: str, token: str, now: float) -> RestResult:
    interaction = rest._interaction_by_token(application_id, token)
    if interaction.answered_by is None:
        raise RestError(404, "Unknown Webhook", 10015)  # Discord wants the interaction acknowledged first
    body = _json_body(request)
    message, actions = rest.core.bot_message(
        interaction.channel,
        body,
        now,
        client=request.client,
        token=_label_or_blank(rest, request),
        route="followup",
        interaction_id=interaction.id,
    )
    return RestResult(200, message, actions=actions)


@route("PATCH", "/webhooks/{application_id}/{token}/messages/@original", auth=False)
def _edit_original(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    interaction = rest._interaction_by_token(args["application_id"], args["token"])
    body = _json_body(request)
    original = rest.core.messages.get(interaction.original_message_id or 0)
    if original is not None:
        original.update({key: value for key, value in body.items() if key in ("content", "embeds", "components")})
        return RestResult(200, original)
    if interaction.response_type != 5:  # only a deferred answer has an original to fill in
        raise RestError(404, "Unknown Message", 10008)
    message, actions = rest.core.bot_message(
        interaction.channel,
        body,
        now,
        client=request.client,
        token=_label_or_blank(rest, request),
        route="followup",
        interaction_id=interaction.id,
    )
    interaction.original_message_id = int(message["id"])
    return RestResult(200, message, actions=actions)


@route("GET", "/webhooks/{application_id}/{token}/messages/@original", auth=False)
def _get_original(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    interaction = rest._interaction_by_token(args["application_id"], args["token"])
    original = rest.core.messages.get(interaction.original_message_id or 0)
    if original is None:
        raise RestError(404, "Unknown Message", 10008)
    return RestResult(200, original)


def _sync_commands(rest: Rest, request: RestRequest, guild_id: int | None, now: float) -> RestResult:
    if request.path.split("/")[2] != str(rest.core.world.application_id):
        raise RestError(403, "Missing Access", 50001)
    items = json.loads(request.body or b"[]")
    if not isinstance(items, list):
        raise RestError(400, "Invalid Form Body", 50035)
    commands = []
    for item in items:
        command = {
            "type": 1,
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "dm_permission": True,
            "nsfw": False,
            **item,
            "id": str(rest.core.world.ids.next(now)),
            "application_id": str(rest.core.world.application_id),
            "version": str(rest.core.world.ids.next(now)),
        }
        if guild_id is not None:
            command["guild_id"] = str(guild_id)
        commands.append(command)
    rest.core.commands[guild_id] = commands
    return RestResult(200, commands)


@route("PUT", "/applications/{application_id}/commands")
def _put_global_commands(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    return _sync_commands(rest, request, None, now)


@route("PUT", "/applications/{application_id}/guilds/{guild_id}/commands")
def _put_guild_commands(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    guild_id = int(args["guild_id"]) if args["guild_id"].isdigit() else 0
    if guild_id not in rest.core.world.guilds:
        raise RestError(403, "Missing Access", 50001)
    return _sync_commands(rest, request, guild_id, now)


@route("GET", "/applications/{application_id}/commands")
def _get_global_commands(rest: Rest, request: RestRequest, args: dict[str, str], now: float) -> RestResult:
    return RestResult(200, rest.core.commands.get(None, []))


__all__ = ["Fault", "Rest", "RestRequest", "RestResult"]
