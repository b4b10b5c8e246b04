"""The trio shell: one port serving the fake's REST API, its gateway (WebSocket) and the control API.

HTTP and WebSocket parsing are the project's own front (``urban_robot.web``: h11 and wsproto). Each
gateway connection is a nursery: a reader feeding the sans-IO gateway core, and a writer draining a
bounded outbox (a bot that stops reading past ``OUTBOX`` messages is dropped, as Discord drops slow
consumers; its session keeps the events for a RESUME).

URLs (``url`` is ``http://127.0.0.1:PORT``; a process may put ``/c/<client>`` in front of any of them to
name itself in the records — ``point_discord_py_at`` does):

    /api/v10/...                  REST (any /api/vN, or /api/ alone: Discord's webhook URLs have no version)
    /gateway                      the gateway (WebSocket; ?v=10&encoding=json[&compress=zlib-stream])
    /gateway/resume/<session id>  the resume_gateway_url READY hands out (a per-session outage refuses it)
    /_fake/...                    the control API (``_control.py``)
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
import trio

from ...web import ConnectionGate, Limits, PeerWatch, Request, Response, Upgrade, WebSocket, WebSocketClosed
from ._core import FakeCore, Fault, Interaction
from ._gateway import Action, Close, Drop, Gateway, Send, Settings, _Session
from ._records import (
    GatewayConnection,
    GatewaySession,
    IdentifyRecord,
    InteractionCallback,
    PostedMessage,
    SentEvent,
    UnknownRoute,
)
from ._rest import Rest, RestRequest, RestResult
from ._world import JSON, Channel, Intents, User, World

log = logging.getLogger("urban_robot.testing.fake_discord")

OUTBOX = 1000  # messages queued for one gateway connection before it counts as a slow consumer
MAX_MESSAGE = 1_000_000
CLIENT_TAG = re.compile(r"^/c/([A-Za-z0-9_.-]{1,64})(/.*)$")
REST_PATH = re.compile(r"^/api(?:/v\d+)?(/.*)$")  # unversioned too, as webhook URLs are
GATEWAY_PATH = re.compile(r"^/gateway(?:/resume/([0-9a-f]+))?/?$|^/?$")
DEFAULT_TOKEN = "fake-discord-token"

T = TypeVar("T")


@attrs.frozen
class _CloseItem:
    code: int
    reason: str


@attrs.define(eq=False)
class _Line:
    """The shell's side of one gateway connection."""

    id: int
    ws: WebSocket
    outbox: trio.MemorySendChannel[JSON | _CloseItem]
    scope: trio.CancelScope
    compress: Any = None  # a zlib compressobj for compress=zlib-stream
    dropped: bool = False
    closing: bool = False


def _resolve(names: Iterable[str] | int) -> int:
    return names if isinstance(names, int) else Intents.privileged(*names)


class FakeDiscord:
    """A local Discord that real discord.py talks to: REST, gateway, and a control API for tests.

    ``token`` is the bot token it accepts (more with ``add_token``); ``enabled_intents`` the privileged
    intents switched on for the application ("members", "presences", "message_content"); heartbeat
    interval and resume window are in seconds. Serve it with ``await nursery.start(fake.serve)``.
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        enabled_intents: Iterable[str] | int = ("members", "presences", "message_content"),
        heartbeat_interval: float = 41.25,
        resume_window: float = 60.0,
        world: World | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self.world = world or World.default(clock())
        self.settings = Settings(
            tokens={token: "token"},
            enabled_intents=_resolve(enabled_intents),
            heartbeat_interval=heartbeat_interval,
            resume_window=resume_window,
        )
        self.gateway = Gateway(self.world, self.settings, self._resume_url)
        self.core = FakeCore(self.world, self.settings, self.gateway)
        self.rest = Rest(self.core, self.gateway_url)
        self.url = ""
        self.version = 0  # counts changes; the control API's long poll waits for it to move
        self._changed = trio.Event()
        self._lines: dict[int, _Line] = {}
        self._ids = itertools.count(1)
        self._gate = ConnectionGate(self, Limits(max_body=8_000_000, keepalive_timeout=120.0))
        from ._control import Control  # the control API calls back into this object

        self._control = Control(self)

    # ------------------------------------------------------------------ serving
    async def serve(
        self, host: str = "127.0.0.1", port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled; ``started`` reports the port once connections are accepted."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        self.url = f"http://{host}:{bound}"
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._gate.handle, listeners)
            log.info("fake Discord listening on %s", self.url)
            task_status.started(bound)

    def gateway_url(self, client: str = "") -> str:
        return self.url.replace("http", "ws", 1) + (f"/c/{client}" if client else "") + "/gateway"

    def _resume_url(self, client: str, session_id: str) -> str:
        return f"{self.gateway_url(client)}/resume/{session_id}"

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        match = CLIENT_TAG.match(path)
        return (match.group(1), match.group(2)) if match else ("", path)

    def body_limit(self, request: Request) -> int:
        return self._gate.limits.max_body  # a test double: every route takes what Limits allows

    def too_large(self, request: Request) -> Response:
        return Response.text(413, "Payload too large")

    async def handle_request(self, request: Request, peer: PeerWatch) -> Response:
        if request.path.startswith("/_fake/"):
            return await self._control.handle(request)
        client, path = self._split(request.path)
        match = REST_PATH.match(path)
        if match is None:
            return _json_response(RestResult(404, {"message": "404: Not Found", "code": 0}))
        rest_request = RestRequest(request.method, match.group(1), request.query, request.headers, request.body, client)
        result = self.rest.handle(rest_request, self._clock())
        self._apply(result.actions)
        self._notify()
        return _json_response(result)

    async def handle_websocket(self, request: Request, upgrade: Upgrade) -> Response | None:
        client, path = self._split(request.path)
        match = GATEWAY_PATH.match(path)
        if match is None:
            return Response.text(404, "Not found")
        query = dict(part.partition("=")[::2] for part in request.query.split("&") if part)
        if query.get("encoding", "json") != "json":
            return Response.text(400, "The fake Discord speaks encoding=json only.")
        if self.gateway.refuses(match.group(1), self._clock()):
            return Response.text(503, "Service Unavailable (an outage, on demand)")
        ws = await upgrade.accept(max_message=MAX_MESSAGE)
        compress = zlib.compressobj() if query.get("compress") == "zlib-stream" else None
        # zstd-stream (discord.py with `zstandard` installed) is answered with plain text frames, which
        # discord.py reads as well; so is a request for no compression.
        await self._serve_line(ws, client, compress, query.get("v", "10"))
        return None

    async def _serve_line(self, ws: WebSocket, client: str, compress: Any, version: str) -> None:
        conn_id = next(self._ids)
        send, receive = trio.open_memory_channel[JSON | _CloseItem](OUTBOX)
        with trio.CancelScope() as scope:
            line = _Line(conn_id, ws, send, scope, compress)
            self._lines[conn_id] = line
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, line, receive)
                    if version != "10":
                        self._apply([Close(conn_id, 4012, "Invalid API version.")])
                    self._apply(self.gateway.open(conn_id, client, self._clock()))
                    self._notify()
                    await self._read(line)
                    nursery.cancel_scope.cancel()
            finally:
                self._lines.pop(conn_id, None)
                code, by = self._ending(line)
                self.gateway.lost(conn_id, self._clock(), code=code, by=by)
                self._notify()

    @staticmethod
    def _ending(line: _Line) -> tuple[int | None, str]:
        if line.dropped:
            return None, "dropped"
        closed = line.ws.closed
        if line.closing:
            return (closed.code if closed else None), "server"
        return (closed.code if closed else 1006), "client"

    async def _read(self, line: _Line) -> None:
        interval = self.settings.heartbeat_interval
        timeout = interval * 1.5 + 1.0
        deadline = trio.current_time() + timeout
        while True:
            with trio.move_on_at(deadline) as waited:
                try:
                    message = await line.ws.receive()
                except WebSocketClosed:
                    return
            if waited.cancelled_caught:
                self._apply(self.gateway.timed_out(line.id, self._clock()))
                deadline = math.inf
                continue
            beats = self.gateway.heartbeats(line.id)
            self._apply(self.gateway.receive(line.id, message, self._clock()))
            if self.gateway.heartbeats(line.id) != beats:
                deadline = trio.current_time() + timeout
            self._notify()

    async def _write(self, line: _Line, outbox: trio.MemoryReceiveChannel[JSON | _CloseItem]) -> None:
        async for item in outbox:
            if isinstance(item, _CloseItem):
                line.closing = True
                await line.ws.close(item.code, item.reason)
                line.scope.cancel()
                return
            text = json.dumps(item, separators=(",", ":"))
            try:
                if line.compress is None:
                    await line.ws.send(text)
                else:
                    data = line.compress.compress(text.encode()) + line.compress.flush(zlib.Z_SYNC_FLUSH)
                    await line.ws.send(data)
            except WebSocketClosed:
                return

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            line = self._lines.get(action.conn)
            if line is None:
                continue
            if isinstance(action, Drop):
                line.dropped = True
                line.scope.cancel()
                continue
            item = action.payload if isinstance(action, Send) else _CloseItem(action.code, action.reason)
            try:
                line.outbox.send_nowait(item)
            except trio.WouldBlock:
                log.warning("fake Discord: gateway connection %d reads too slowly; dropped", line.id)
                line.dropped = True
                line.scope.cancel()

    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------------ waiting
    async def wait_for(self, predicate: Callable[[], T | None], *, timeout: float = 30.0) -> T:
        """Wait until ``predicate()`` returns something truthy, and return it (checked after every change).

        Raises ``TimeoutError`` with the predicate's name after ``timeout`` seconds: a test that waits
        for something that never comes fails with a reason instead of hanging.
        """
        with trio.move_on_after(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                await self._changed.wait()
        raise TimeoutError(f"fake Discord: waited {timeout} s for {getattr(predicate, '__name__', predicate)}")

    async def changed(self) -> None:
        """Return at the next change of state or records."""
        await self._changed.wait()

    async def wait_for_post(
        self, predicate: Callable[[PostedMessage], bool] = lambda post: True, *, timeout: float = 30.0
    ) -> PostedMessage:
        """The first message the bot posted that satisfies ``predicate`` (waiting for it if need be)."""

        def find() -> PostedMessage | None:
            return next((post for post in self.posted if predicate(post)), None)

        return await self.wait_for(find, timeout=timeout)

    async def wait_for_callbacks(
        self, interaction: Interaction, count: int = 1, *, timeout: float = 30.0
    ) -> list[InteractionCallback]:
        """The first ``count`` callbacks (accepted or refused) for ``interaction``."""

        def find() -> list[InteractionCallback] | None:
            found = [c for c in self.callbacks if c.interaction_id == interaction.id]
            return found[:count] if len(found) >= count else None

        return await self.wait_for(find, timeout=timeout)

    async def wait_for_login(
        self, count: int = 1, *, client: str | None = None, how: str = "identify", timeout: float = 30.0
    ) -> list[GatewayConnection]:
        """The first ``count`` connections that logged in (``how``: "identify" or "resume")."""

        def find() -> list[GatewayConnection] | None:
            found = [
                c
                for c in self.connections
                if c.login == how and (client is None or c.client == client) and c.closed_at is None
            ]
            return found[:count] if len(found) >= count else None

        return await self.wait_for(find, timeout=timeout)

    # ------------------------------------------------------------------ records
    @property
    def posted(self) -> list[PostedMessage]:
        return self.core.posted

    @property
    def callbacks(self) -> list[InteractionCallback]:
        return self.core.callbacks

    @property
    def events(self) -> list[SentEvent]:
        return self.core.events

    @property
    def sessions(self) -> list[GatewaySession]:
        return self.gateway.session_records

    @property
    def connections(self) -> list[GatewayConnection]:
        return self.gateway.connection_records

    @property
    def identifies(self) -> list[IdentifyRecord]:
        """Every IDENTIFY received, in order (shard, time, what became of it)."""
        return self.gateway.identify_records

    @property
    def unknown_routes(self) -> list[UnknownRoute]:
        return self.core.unknown_routes

    # ------------------------------------------------------------------ people do things
    def channel(self, channel: str | int | Channel = "general") -> Channel:
        if isinstance(channel, Channel):
            return channel
        if isinstance(channel, int) or (isinstance(channel, str) and channel.isdigit()):
            found = self.world.channel(int(channel))
            if found is None:
                raise KeyError(f"no channel with id {channel}")
            return found
        return self.world.channel_named(channel)

    def user(self, user: str | int | User = "alice") -> User:
        if isinstance(user, User):
            return user
        if isinstance(user, int) or (isinstance(user, str) and user.isdigit()):
            return self.world.users[int(user)]
        return self.world.user_named(user)

    def _done(self, actions: list[Action]) -> None:
        self._apply(actions)
        self._notify()

    def send_message(
        self,
        content: str,
        *,
        channel: str | int | Channel = "general",
        author: str | int | User = "alice",
        mention_bot: bool = False,
        reply_to: int | None = None,
    ) -> int:
        """A user posts a message (MESSAGE_CREATE to every session that may see it); returns its id."""
        message_id, actions = self.core.user_message(
            self.channel(channel), self.user(author), content, self._clock(), mention_bot=mention_bot, reply_to=reply_to
        )
        self._done(actions)
        return message_id

    def send_dm(self, content: str, *, author: str | int | User = "alice") -> int:
        """A user writes to the bot in a DM."""
        user = self.user(author)
        return self.send_message(content, channel=self.world.dm_channel(user, self._clock()), author=user)

    def run_command(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        channel: str | int | Channel = "general",
        user: str | int | User = "alice",
    ) -> Interaction:
        """A user runs the slash command ``/name`` (options typed from their Python values)."""
        interaction, actions = self.core.slash_command(
            name, options or {}, self.channel(channel), self.user(user), self._clock()
        )
        self._done(actions)
        return interaction

    def click(
        self,
        custom_id: str,
        *,
        message_id: int | None = None,
        channel: str | int | Channel = "general",
        user: str | int | User = "alice",
    ) -> Interaction:
        """A user clicks the button ``custom_id`` (on ``message_id``, or on a message of the bot's made up for it)."""
        interaction, actions = self.core.component(
            custom_id, self.channel(channel), self.user(user), self._clock(), message_id=message_id
        )
        self._done(actions)
        return interaction

    def select(
        self,
        custom_id: str,
        values: list[str],
        *,
        message_id: int | None = None,
        channel: str | int | Channel = "general",
        user: str | int | User = "alice",
    ) -> Interaction:
        """A user picks ``values`` in the string select ``custom_id``."""
        interaction, actions = self.core.component(
            custom_id, self.channel(channel), self.user(user), self._clock(), values=values, message_id=message_id
        )
        self._done(actions)
        return interaction

    def submit_modal(
        self,
        custom_id: str,
        values: dict[str, str],
        *,
        channel: str | int | Channel = "general",
        user: str | int | User = "alice",
    ) -> Interaction:
        """A user submits the modal ``custom_id`` with ``{text input custom_id: value}``."""
        interaction, actions = self.core.modal_submit(
            custom_id, values, self.channel(channel), self.user(user), self._clock()
        )
        self._done(actions)
        return interaction

    def member_join(self, username: str, *, guild_id: int | None = None) -> User:
        """A new user joins the guild (GUILD_MEMBER_ADD, for sessions with the members intent)."""
        now = self._clock()
        user = self.world.add_user(username, now)
        self._done(self.core.member_join(user, guild_id or self.world.guild.id, now))
        return user

    def react(
        self,
        message_id: int,
        emoji: str = "👍",
        *,
        channel: str | int | Channel = "general",
        user: str | int | User = "alice",
    ) -> None:
        """A user reacts to a message (MESSAGE_REACTION_ADD)."""
        self._done(self.core.reaction(message_id, emoji, self.user(user), self.channel(channel), self._clock()))

    # ------------------------------------------------------------------ the gateway misbehaves on demand
    def _sessions(self, session: str | None, client: str | None) -> list[_Session]:
        return self.gateway.select(session, client)

    def reconnect(self, *, session: str | None = None, client: str | None = None) -> int:
        """Send op 7 RECONNECT (to every session, one session id, or one client's); returns how many."""
        actions = self.gateway.reconnect(self._sessions(session, client))
        self._done(actions)
        return len(actions)

    def invalidate_session(
        self, *, resumable: bool = False, session: str | None = None, client: str | None = None
    ) -> int:
        """Send op 9 INVALID_SESSION; unless ``resumable`` the session is gone and the bot must IDENTIFY."""
        actions = self.gateway.invalidate(self._sessions(session, client), resumable=resumable, now=self._clock())
        self._done(actions)
        return len(actions)

    def close_gateway(
        self, code: int = 4000, reason: str = "", *, session: str | None = None, client: str | None = None
    ) -> int:
        """Close gateway connections with ``code`` (4000: discord.py resumes; 4004, 4014...: it gives up)."""
        actions = self.gateway.close(self._sessions(session, client), code, self._clock(), reason)
        self._done(actions)
        return len(actions)

    def drop_connections(self, *, session: str | None = None, client: str | None = None) -> int:
        """The line goes dead, no close frame; sessions stay resumable."""
        chosen = None if session is None and client is None else self._sessions(session, client)
        actions = self.gateway.drop(chosen)
        self._done(actions)
        return len(actions)

    def outage(self, seconds: float, *, session: str | None = None, client: str | None = None) -> int:
        """Drop connections and answer new gateway handshakes 503 for ``seconds`` (all, or per session).

        A per-session outage refuses only that session's resume URL; discord.py resumes there.
        """
        chosen = None if session is None and client is None else self._sessions(session, client)
        actions = self.gateway.outage(self._clock() + seconds, chosen)
        self._done(actions)
        return len(actions)

    # ------------------------------------------------------------------ webhooks
    def create_webhook(
        self, channel: str | int | Channel = "bot-log", *, name: str = "Urban Robot", client: str | None = None
    ) -> str:
        """A webhook in ``channel``; returns its URL (``<url>/api/webhooks/<id>/<token>``, ``/c/<client>`` first if
        given, so the records name who posts). Posting to it needs no bot token; ``posted`` records each message
        with ``route="webhook"`` and ``webhook_id``."""
        webhook = self.core.create_webhook(self.channel(channel), name, self._clock())
        self._notify()
        tag = f"/c/{client}" if client else ""
        return f"{self.url}{tag}/api/webhooks/{webhook.id}/{webhook.token}"

    # ------------------------------------------------------------------ settings
    def set_token(self, token: str) -> None:
        """Accept only ``token`` from now on (as if it had been regenerated in the developer portal)."""
        self.settings.tokens.clear()
        self.settings.tokens[token] = "token"

    def add_token(self, token: str, label: str) -> None:
        """Accept ``token`` as well; records name it ``label``."""
        self.settings.tokens[token] = label

    def set_enabled_intents(self, intents: Iterable[str] | int) -> None:
        """The privileged intents switched on for the application, by discord.py's names."""
        self.settings.enabled_intents = _resolve(intents)

    def set_sharding(
        self,
        *,
        max_concurrency: int | None = None,
        shards: int | None = None,
        required_shards: int | None = None,
        session_start_limit: dict[str, int] | None = None,
    ) -> None:
        """What GET /gateway/bot says and the gateway enforces. ``max_concurrency`` given: IDENTIFYs are rate
        limited per key (``shard_id % max_concurrency``, one per 5 s, op 9 beyond: Discord's rule). ``shards``:
        the recommended count; ``required_shards``: fewer closes an IDENTIFY with 4011; ``session_start_limit``:
        any of ``total``, ``remaining`` and ``reset_after`` (milliseconds)."""
        settings = self.settings
        if max_concurrency is not None:
            if max_concurrency < 1:
                raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
            settings.max_concurrency, settings.enforce_max_concurrency = max_concurrency, True
        if shards is not None:
            settings.shards = shards
        if required_shards is not None:
            settings.required_shards = required_shards
        limit = session_start_limit or {}
        settings.session_total = limit.get("total", settings.session_total)
        settings.session_remaining = limit.get("remaining", settings.session_remaining)
        settings.session_reset_after = limit.get("reset_after", settings.session_reset_after)

    def fail_next(self, route: str = "*", count: int = 1, *, status: int = 503) -> None:
        """Answer the next ``count`` requests to ``route`` with ``status``.

        ``route`` is "METHOD template" as the fake's route table spells it, e.g.
        "POST /channels/{channel_id}/messages", or "*" for any route.
        """
        self.core.faults.append(Fault(route, count, status))

    def rate_limit_next(
        self, route: str = "*", count: int = 1, *, retry_after: float = 0.1, is_global: bool = False
    ) -> None:
        """Answer the next ``count`` requests to ``route`` with 429 and ``retry_after`` (seconds)."""
        self.core.faults.append(Fault(route, count, 429, retry_after, is_global))


def _json_response(result: RestResult) -> Response:
    body = b"" if result.body is None else json.dumps(result.body).encode()
    return Response(result.status, body, content_type="application/json", headers=result.headers)
