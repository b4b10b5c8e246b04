"""The control API over HTTP (``/_fake/...``), for a fake that runs as its own process.

Every route takes and returns JSON; each maps to one method of ``FakeDiscord``:

    GET  /_fake/world                          ids and names: application, bot, users, guilds, channels
    GET  /_fake/records?after=V&wait=S          every record, once ``version`` > V (long poll, at most S s)
    POST /_fake/messages      {content, channel?, author?, mention_bot?, reply_to?}  → {id}
    POST /_fake/dms           {content, author?}                                   → {id}
    POST /_fake/commands      {name, options?, channel?, user?}                   → {id, token}
    POST /_fake/clicks        {custom_id, message_id?, channel?, user?}           → {id, token}
    POST /_fake/selects       {custom_id, values, message_id?, channel?, user?}   → {id, token}
    POST /_fake/modals        {custom_id, values: {input id: text}, channel?, user?} → {id, token}
    POST /_fake/members       {username}                                           → {id}
    POST /_fake/reactions     {message_id, emoji?, channel?, user?}
    POST /_fake/gateway/reconnect    {session?, client?}                         → {count}
    POST /_fake/gateway/invalidate   {resumable?, session?, client?}             → {count}
    POST /_fake/gateway/close        {code, reason?, session?, client?}          → {count}
    POST /_fake/gateway/drop         {session?, client?}                         → {count}
    POST /_fake/gateway/outage       {seconds, session?, client?}                → {count}
    POST /_fake/webhooks      {channel?, name?, client?}                          → {url}
    POST /_fake/settings      {token?, add_token?: {token, label}, enabled_intents?: [names],
                               max_concurrency?, shards?, required_shards?,
                               session_start_limit?: {total?, remaining?, reset_after?}}
    POST /_fake/faults        {route?, count?, status?, retry_after?, global?}

It binds where the fake binds (127.0.0.1 by default) and has no credential of its own: it is a test
fixture, never to be exposed. A bad request is answered 400 with ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import trio

from ...web import Request, Response
from ._records import to_json

if TYPE_CHECKING:
    from ._fake import FakeDiscord

MAX_WAIT = 60.0


def _reply(status: int, body: Any) -> Response:
    return Response(status, json.dumps(body).encode(), content_type="application/json")


class Control:
    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake

    async def handle(self, request: Request) -> Response:
        name = request.path.removeprefix("/_fake/").replace("/", "_")
        handler = getattr(self, f"{request.method.lower()}_{name}", None)
        if handler is None:
            return _reply(404, {"error": f"no control route {request.method} {request.path}"})
        try:
            body = json.loads(request.body) if request.body else {}
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            if request.method == "GET":
                body = dict(part.partition("=")[::2] for part in request.query.split("&") if part)
            result = handler(**body)
            if hasattr(result, "__await__"):
                result = await result
        except (KeyError, TypeError, ValueError) as exc:
            return _reply(400, {"error": f"{type(exc).__name__}: {exc}"})
        return _reply(200, result if result is not None else {})

    # ------------------------------------------------------------------ observation
    def get_world(self) -> Any:
        return self.fake.world.summary()

    async def get_records(self, after: str = "-1", wait: str = "0") -> Any:
        fake = self.fake
        with trio.move_on_after(min(float(wait), MAX_WAIT)):
            while fake.version <= int(after):
                await fake.changed()
        return {
            "version": fake.version,
            "posted": [to_json(r) for r in fake.posted],
            "callbacks": [to_json(r) for r in fake.callbacks],
            "events": [to_json(r) for r in fake.events],
            "sessions": [to_json(r) for r in fake.sessions],
            "connections": [to_json(r) for r in fake.connections],
            "unknown_routes": [to_json(r) for r in fake.unknown_routes],
            "identifies": [to_json(r) for r in fake.identifies],
        }

    # ------------------------------------------------------------------ people
    def post_messages(self, content: str, **kw: Any) -> Any:
        return {"id": str(self.fake.send_message(content, **_ids(kw)))}

    def post_dms(self, content: str, author: str = "alice") -> Any:
        return {"id": str(self.fake.send_dm(content, author=author))}

    def post_commands(self, name: str, options: dict[str, Any] | None = None, **kw: Any) -> Any:
        return _interaction(self.fake.run_command(name, options, **kw))

    def post_clicks(self, custom_id: str, **kw: Any) -> Any:
        return _interaction(self.fake.click(custom_id, **_ids(kw)))

    def post_selects(self, custom_id: str, values: list[str], **kw: Any) -> Any:
        return _interaction(self.fake.select(custom_id, values, **_ids(kw)))

    def post_modals(self, custom_id: str, values: dict[str, str], **kw: Any) -> Any:
        return _interaction(self.fake.submit_modal(custom_id, values, **kw))

    def post_members(self, username: str) -> Any:
        return {"id": str(self.fake.member_join(username).id)}

    def post_reactions(self, message_id: str, emoji: str = "👍", **kw: Any) -> Any:
        self.fake.react(int(message_id), emoji, **kw)

    # ------------------------------------------------------------------ the gateway
    def post_gateway_reconnect(self, **kw: Any) -> Any:
        return {"count": self.fake.reconnect(**kw)}

    def post_gateway_invalidate(self, resumable: bool = False, **kw: Any) -> Any:
        return {"count": self.fake.invalidate_session(resumable=resumable, **kw)}

    def post_gateway_close(self, code: int, reason: str = "", **kw: Any) -> Any:
        return {"count": self.fake.close_gateway(int(code), reason, **kw)}

    def post_gateway_drop(self, **kw: Any) -> Any:
        return {"count": self.fake.drop_connections(**kw)}

    def post_gateway_outage(self, seconds: float, **kw: Any) -> Any:
        return {"count": self.fake.outage(float(seconds), **kw)}

    # ------------------------------------------------------------------ webhooks
    def post_webhooks(self, channel: str = "bot-log", name: str = "Urban Robot", client: str | None = None) -> Any:
        return {"url": self.fake.create_webhook(channel, name=name, client=client)}

    # ------------------------------------------------------------------ settings
    def post_settings(
        self,
        token: str | None = None,
        add_token: dict[str, str] | None = None,
        enabled_intents: list[str] | None = None,
        **sharding: Any,
    ) -> Any:
        if token is not None:
            self.fake.set_token(token)
        if add_token is not None:
            self.fake.add_token(add_token["token"], add_token["label"])
        if enabled_intents is not None:
            self.fake.set_enabled_intents(enabled_intents)
        if sharding:
            self.fake.set_sharding(**sharding)  # unknown keys: a TypeError, answered 400

    def post_faults(
        self, route: str = "*", count: int = 1, status: int = 503, retry_after: float = 0.1, **kw: Any
    ) -> Any:
        if int(status) == 429:
            is_global = bool(kw.get("global"))
            self.fake.rate_limit_next(route, int(count), retry_after=float(retry_after), is_global=is_global)
        else:
            self.fake.fail_next(route, int(count), status=int(status))


def _ids(kw: dict[str, Any]) -> dict[str, Any]:
    """Snowflakes arrive as strings in JSON; the Python API wants ints."""
    numeric = ("message_id", "reply_to")
    return {key: int(value) if key in numeric and value is not None else value for key, value in kw.items()}


def _interaction(interaction: Any) -> Any:
    return {"id": str(interaction.id), "token": interaction.token}
