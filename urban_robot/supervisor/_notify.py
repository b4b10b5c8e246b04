"""Telling the operator on Discord: REST sends, a bounded queue that never blocks supervision, a logging bridge.

    supervisor core ── Notify ──▶ Notifier.notify()       sync, never blocks: collapses repeats, drops the
    logging ── DiscordLogHandler ──▶ ┘                     oldest when the bounded queue is full
                                     │
                                     ▼
                              Notifier.run() ─┬─ discord_send() ──▶ Discord REST v10 (channel or DM), bot token
                                              └─ webhook_send() ──▶ a channel webhook, no token: alone, or when
                                                                    Discord refuses the bot's route (401/403/404)

``discord_send`` and ``webhook_send`` are the only places that talk HTTP (both
through ``_Api.post``): they split long messages, wait out 429s and exhausted
rate-limit buckets, retry 5xx and network errors a bounded number of times,
and turn everything else into one ``NotifyError`` line saying what failed and
what to do. The bot token goes into the ``Authorization`` header and nowhere
else; the webhook's URL (its token is in it) goes into the request line and
nowhere else: neither is in messages, log lines, exception texts or reprs.

The webhook is what still reaches the operator when the bot token is refused,
which is exactly when the bot's route cannot: a worker that cannot log in is
the alert that matters most.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import re
import urllib.parse
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import httpx
import trio

from .. import __version__
from .._errors import UrbanRobotError
from ..protocol import GatewayBot
from ._events import Notify

log = logging.getLogger("urban_robot.supervisor.notify")

DISCORD_API = "https://discord.com/api/v10"
USER_AGENT = f"DiscordBot (https://pypi.org/project/urban-robot/, {__version__})"  # the form Discord asks for
MESSAGE_LIMIT = 2000  # characters per Discord message
MAX_ATTEMPTS = 5  # per request, 429s included
BACKOFF = 1.0  # first wait after a 5xx or a network error; doubles each time
MAX_WAIT = 3600.0  # a longer retry_after is garbage (or a ban that outlasts any alert)
REDACTED = "[redacted]"
WEBHOOK_ENV = "URBAN_ROBOT_NOTIFY_WEBHOOK"  # the configuration's variable, named in hints
BOT_ROUTE_RETRY = 600.0  # seconds a refused bot route is left alone while the webhook stands in
REFUSED = (401, 403, 404)  # the bot's route is refused: token (401), channel or user (403, 404)
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
PREFIX = {"warning": "⚠️ ", "error": "❌ ", "critical": "🚨 "}  # the level shows in a phone's preview

ALREADY_NOTIFIED = {"_already_notified": True}  # "_": a marker, not a field the log shows
"""``extra=`` for log calls whose message was handed to the Notifier directly: the bridge skips them."""

# Set in the Notifier's task: whatever is logged while sending (httpx, our own warnings) is not fed back.
_SENDING: contextvars.ContextVar[bool] = contextvars.ContextVar("urban_robot_discord_sending", default=False)
_OWN_LOGGERS = (log.name, "httpx", "httpcore")


class NotifyError(UrbanRobotError):
    """Discord did not take a message. The text is one line: what failed and what to do; never the token."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# -- text ---------------------------------------------------------------------------------------------------
def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Parts of at most ``limit`` characters that concatenate to ``text``, cut after a newline if one fits."""
    parts = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit) + 1 or text.rfind(" ", 0, limit) + 1 or limit
        parts.append(text[:cut])
        text = text[cut:]
    if text:
        parts.append(text)
    return parts


def redact(text: str, token: str) -> str:
    return text.replace(token, REDACTED) if token else text


def check_token(token: str) -> None:
    """Refuse a token that could not be a header value (h11 would quote it back in its error)."""
    if not token:
        raise NotifyError("no Discord bot token: set BOT_TOKEN")
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise NotifyError("the Discord bot token has spaces or odd characters, which no token has: check BOT_TOKEN")


def _snowflake(value: int | str, what: str) -> str:
    """A Discord id as a path segment; anything else would let configuration rewrite the URL."""
    text = str(value).strip()
    if not text.isdigit() or not text.isascii():
        raise NotifyError(f"{what} {text[:40]!r} is not a Discord id (a number): check the configuration")
    return text


def _seconds(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return min(max(seconds, 0.0), MAX_WAIT) if math.isfinite(seconds) else None


def _span(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


WEBHOOK_PATH = re.compile(r"/webhooks/([0-9]{1,20})/([A-Za-z0-9_-]{1,200})/?\Z")
WEBHOOK_FORM = "https://discord.com/api/webhooks/<id>/<token> (a channel's Integrations → Webhooks → Copy Webhook URL)"


@attrs.frozen(repr=False)
class DiscordWebhook:
    """A channel webhook's URL (Discord's "Execute Webhook"). Its token is a secret: the repr shows the id only.

    ``parse`` takes ``https://discord.com/api/webhooks/<id>/<token>`` or any http(s) URL whose path ends in
    ``/webhooks/<id>/<token>`` (a proxy, a local fake Discord).
    """

    url: str  # as given, without a trailing slash
    id: str
    token: str

    @classmethod
    def parse(cls, text: str) -> DiscordWebhook:
        """The webhook, or ``NotifyError`` saying what is wrong without a word of the URL (it holds the token)."""
        text = text.strip()
        parts = _split_url(text)
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad_webhook("not an http:// or https:// URL")
        if "@" in parts.netloc or parts.query or parts.fragment:
            raise _bad_webhook("a user@, ?query or #fragment in it")
        match = WEBHOOK_PATH.search(parts.path)
        if match is None:
            raise _bad_webhook("its path does not end in /webhooks/<id>/<token>")
        return cls(text.rstrip("/"), match.group(1), match.group(2))

    def __repr__(self) -> str:
        return f"DiscordWebhook(id={self.id!r}, token={REDACTED!r})"


def _split_url(text: str) -> urllib.parse.SplitResult | None:
    if not text or not (text.isascii() and text.isprintable()) or any(c.isspace() for c in text):
        return None
    try:
        return urllib.parse.urlsplit(text)
    except ValueError:
        return None


def _bad_webhook(problem: str) -> NotifyError:
    return NotifyError(f"{problem}: expected {WEBHOOK_FORM} (value hidden)")


# -- HTTP ---------------------------------------------------------------------------------------------------
@attrs.define(eq=False)
class DiscordState:
    """What a sender remembers between requests: when each route (or all) may be asked again; DM channels."""

    not_before: dict[str, float] = attrs.Factory(dict)  # route -> trio time
    global_not_before: float = -math.inf
    dm_channels: dict[str, str] = attrs.Factory(dict)  # user id -> DM channel id

    async def wait_turn(self, route: str) -> None:
        await trio.sleep_until(max(self.not_before.get(route, -math.inf), self.global_not_before))

    def learn(self, route: str, response: httpx.Response) -> None:
        """An empty bucket: nothing more on this route until it refills."""
        if response.headers.get("X-RateLimit-Remaining") == "0":
            after = _seconds(response.headers.get("X-RateLimit-Reset-After"))
            if after is not None:
                self._hold(route, after)

    def rate_limited(self, route: str, response: httpx.Response) -> None:
        body = _json(response)
        body = body if isinstance(body, dict) else {}
        retry_after = next(
            (s for s in map(_seconds, (body.get("retry_after"), response.headers.get("Retry-After"))) if s is not None),
            BACKOFF,  # a 429 without a number (a proxy's?) still means "not now"
        )
        is_global = body.get("global") is True or response.headers.get("X-RateLimit-Global", "").lower() == "true"
        if is_global:
            self.global_not_before = max(self.global_not_before, trio.current_time() + retry_after)
        else:
            self._hold(route, retry_after)

    def _hold(self, route: str, seconds: float) -> None:
        until = trio.current_time() + seconds
        self.not_before[route] = max(self.not_before.get(route, -math.inf), until)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


@attrs.frozen
class _Api:
    """One destination's HTTP: the bot's REST API (``authorization`` set) or a webhook's URL (no credential)."""

    client: httpx.AsyncClient
    secret: str = attrs.field(repr=False)  # redacted from every text: the bot token, or the webhook's token
    base_url: str = attrs.field(repr=False)  # a webhook's holds its token
    state: DiscordState
    unauthorized: str  # the whole line for a 401: what was refused and what to do
    authorization: str | None = attrs.field(default=None, repr=False)

    async def post(
        self,
        path: str,
        body: dict[str, Any],
        what: str,
        hints: Mapping[int, str],
        *,
        route: str | None = None,
        params: Mapping[str, str] | None = None,
        method: str = "POST",
    ) -> httpx.Response:
        """POST (or ``method``) with Discord's manners: wait for the route, retry 429/5xx/network a few times,
        explain refusals."""
        route = route or f"{method} {path}"
        last, pause = "", 0.0
        for attempt in range(MAX_ATTEMPTS):
            await trio.sleep(pause)
            await self.state.wait_turn(route)
            pause = BACKOFF * 2**attempt  # after a 5xx or a network error; a 429 says how long itself
            try:
                response = await self.client.request(
                    method,
                    self.base_url + path,
                    json=body if method == "POST" else None,
                    headers=self._headers(),
                    params=params,
                )
            except httpx.TransportError as exc:
                last = redact(f"{type(exc).__name__}: {exc}", self.secret)
                continue
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise NotifyError(redact(f"{what} failed: {type(exc).__name__}: {exc}", self.secret)) from exc
            self.state.learn(route, response)
            if response.status_code == 429:
                self.state.rate_limited(route, response)
                last, pause = "rate limited (429)", 0.0
            elif response.status_code >= 500:
                last = f"HTTP {response.status_code}"
            elif response.is_error:
                raise NotifyError(self._refusal(response, what, hints), response.status_code)
            else:
                return response
        raise NotifyError(
            f"{what} failed {MAX_ATTEMPTS} times (last: {last}): check the network and https://discordstatus.com"
        )

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT}
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        return headers

    def _refusal(self, response: httpx.Response, what: str, hints: Mapping[int, str]) -> str:
        status = response.status_code
        if status == 401:
            return self.unauthorized
        body = _json(response)
        detail = body.get("message") if isinstance(body, dict) else None
        detail = f": {' '.join(redact(str(detail), self.secret).split())[:200]}" if detail else ""
        hint = hints.get(status, "check the destination id and the bot's permissions")
        return f"Discord refused {what} ({status}{detail}): {hint}"


_CHANNEL_HINTS = {
    403: "give the bot View Channel and Send Messages there",
    404: "check the channel id (LOGGING_CHANNEL)",
}
_DM_HINTS = {
    400: "check the user id",
    403: "the user must share a server with the bot and accept DMs from it",
    404: "check the user id",
}


async def discord_send(
    destination: int | str,
    message: str,
    token: str,
    dm: bool = False,
    *,
    client: httpx.AsyncClient,
    base_url: str = DISCORD_API,
    state: DiscordState | None = None,
) -> None:
    """Post ``message`` to channel ``destination``, or to user ``destination``'s DMs if ``dm``.

    Raises ``NotifyError`` when Discord does not take it. ``state`` carries rate
    limits (and DM channels) from one call to the next; without it they last
    for this call only.
    """
    check_token(token)
    api = _Api(
        client,
        token,
        base_url.rstrip("/"),
        state or DiscordState(),
        "Discord refused the bot token (401): check BOT_TOKEN",
        authorization=f"Bot {token}",
    )
    if dm:
        user = _snowflake(destination, "user")
        channel, where, hints = await _dm_channel(api, user), f"sending a DM to user {user}", _DM_HINTS
    else:
        channel = _snowflake(destination, "channel")
        where, hints = f"sending a message to channel {channel}", _CHANNEL_HINTS
    for part in split_message(redact(message, token)):
        if part.strip():  # Discord refuses blank content (and would trim it anyway)
            await api.post(f"/channels/{channel}/messages", _content(part), where, hints)


async def gateway_bot(token: str, *, client: httpx.AsyncClient, base_url: str = DISCORD_API) -> GatewayBot:
    """Discord's ``GET /gateway/bot``: its recommended shard count and the session start limit (max_concurrency).

    Raises ``NotifyError`` (one line, the token redacted) when Discord does not answer it, ``ShardError`` when
    the answer is malformed."""
    check_token(token)
    api = _Api(
        client,
        token,
        base_url.rstrip("/"),
        DiscordState(),
        "Discord refused the bot token (401) asking GET /gateway/bot: check BOT_TOKEN",
        authorization=f"Bot {token}",
    )
    response = await api.post("/gateway/bot", {}, "asking GET /gateway/bot", {}, method="GET")
    return GatewayBot.from_json(response.content)


def _content(part: str) -> dict[str, Any]:
    return {"content": part, "allowed_mentions": {"parse": []}}  # log text must not ping @everyone


_WEBHOOK_FIX = f"create a webhook in the channel's settings (Integrations → Webhooks) and set {WEBHOOK_ENV} to its URL"
_WEBHOOK_HINTS = {403: _WEBHOOK_FIX, 404: f"it was deleted or its URL is wrong: {_WEBHOOK_FIX}"}


async def webhook_send(
    webhook: DiscordWebhook, message: str, *, client: httpx.AsyncClient, state: DiscordState | None = None
) -> None:
    """Post ``message`` through ``webhook`` (no bot token needed); ``NotifyError`` when Discord does not take it.

    ``?wait=true`` makes Discord answer with the message, so a refusal is an error here, not a silent 204.
    """
    api = _Api(
        client,
        webhook.token,
        webhook.url,
        state or DiscordState(),
        f"Discord refused the webhook (401: its token is wrong): {_WEBHOOK_FIX}",
    )
    what, route = f"posting through webhook {webhook.id}", f"POST /webhooks/{webhook.id}"
    with _hidden_from_httpx_logs(webhook.token):
        for part in split_message(redact(message, webhook.token)):
            if part.strip():
                await api.post("", _content(part), what, _WEBHOOK_HINTS, route=route, params={"wait": "true"})


class _Redacting(logging.Filter):
    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = redact(message, self.secret), None
        return True


@contextlib.contextmanager
def _hidden_from_httpx_logs(secret: str) -> Iterator[None]:
    """httpx logs each request's URL at INFO, and a webhook's URL holds its token: not while this one is in use."""
    logger = logging.getLogger("httpx")
    hide = _Redacting(secret)
    logger.addFilter(hide)
    try:
        yield
    finally:
        logger.removeFilter(hide)


async def _dm_channel(api: _Api, user: str) -> str:
    """The DM channel with ``user``: opened once, then remembered (Discord returns the same one anyway)."""
    if user not in api.state.dm_channels:
        what = f"opening a DM with user {user}"
        answer = _json(await api.post("/users/@me/channels", {"recipient_id": user}, what, _DM_HINTS))
        channel = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(channel, str) or not channel.isdigit():
            raise NotifyError(f"{what}: Discord's answer has no channel id; try again later")
        api.state.dm_channels[user] = channel
    return api.state.dm_channels[user]


# -- the service --------------------------------------------------------------------------------------------
@attrs.define(eq=False)
class _Burst:
    """One alert's collapse window: it went out at once; ``repeats`` more came before ``ends``."""

    note: Notify
    ends: float
    repeats: int = 0


@attrs.define(eq=False)
class Notifier:
    """Forwards ``Notify`` values to Discord from its own task: ``nursery.start(notifier.run)``.

    ``notify`` is what the supervisor calls: synchronous, quick (no I/O), never
    blocking on Discord. Below ``level`` is ignored; identical alerts within
    ``window`` seconds go out once at once and once more as a count when the
    window ends; past ``queue_size`` waiting messages the oldest are dropped,
    and the next message that gets through says how many were lost.

    Destinations: the bot's route (``token`` and ``destination``, a channel or
    with ``dm`` a user), a ``webhook``, or both. With both, the bot's route is
    used and the webhook stands in when Discord refuses it (401, 403, 404) —
    for ``BOT_ROUTE_RETRY`` seconds, then the bot's route is tried again; one
    log line and the first message through the webhook say why. With no
    webhook, a refused token is one critical log line, not one per message.
    """

    client: httpx.AsyncClient
    token: str | None = attrs.field(default=None, repr=False)
    destination: int | str | None = None
    dm: bool = False
    base_url: str = DISCORD_API
    level: str = "info"
    window: float = 300.0
    queue_size: int = 100
    webhook: DiscordWebhook | None = attrs.field(default=None, repr=False)
    dropped: int = attrs.field(default=0, init=False)
    failed: int = attrs.field(default=0, init=False)
    _queue: deque[Notify] = attrs.field(factory=deque, init=False, repr=False)
    _bursts: dict[tuple[str, str], _Burst] = attrs.field(factory=dict, init=False, repr=False)
    _wake: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _state: DiscordState = attrs.field(factory=DiscordState, init=False, repr=False)
    _trio_token: trio.lowlevel.TrioToken | None = attrs.field(default=None, init=False, repr=False)
    _sending: bool = attrs.field(default=False, init=False, repr=False)
    _progress: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _bot_refused_until: float = attrs.field(default=-math.inf, init=False, repr=False)  # the webhook stands in
    _said_unreachable: bool = attrs.field(default=False, init=False, repr=False)
    _why_webhook: str = attrs.field(default="", init=False, repr=False)  # said by the next message it carries

    def __attrs_post_init__(self) -> None:
        if self.destination is None and self.webhook is None:
            raise NotifyError(f"no destination for notifications: set LOGGING_CHANNEL or {WEBHOOK_ENV}")
        if self.destination is not None:
            check_token(self.token or "")  # a bad token is a configuration error at start-up, not 100 failed sends
            _snowflake(self.destination, "user" if self.dm else "channel")
        if self.level not in LEVELS:
            raise NotifyError(f"unknown notification level {self.level!r}: use one of {', '.join(LEVELS)}")
        if self.queue_size < 1 or not self.window >= 0:
            raise NotifyError("the notification queue needs room for one message and a window of 0 s or more")

    def redact(self, text: str) -> str:
        """``text`` without the bot token or the webhook's token."""
        return redact(redact(text, self.token or ""), self.webhook.token if self.webhook else "")

    @classmethod
    def from_env(cls, client: httpx.AsyncClient, env: Mapping[str, str] = os.environ) -> Notifier | None:
        """The original's ``BOT_TOKEN`` and ``LOGGING_CHANNEL``; ``None`` if either is unset (no Discord)."""
        token, channel = env.get("BOT_TOKEN", "").strip(), env.get("LOGGING_CHANNEL", "").strip()
        return cls(client, token, channel) if token and channel else None

    # -- the supervisor's side: never blocks ---------------------------------------------------------------
    def notify(self, note: Notify) -> None:
        """Queue ``note`` for Discord (from any thread); returns at once, whatever Discord is doing."""
        if not trio.lowlevel.in_trio_run():
            self._from_thread(note)
            return
        if LEVELS.get(note.level, logging.INFO) < LEVELS[self.level]:
            return
        now = trio.current_time()
        self._close_windows(now)
        burst = self._bursts.get((note.level, note.message))
        if burst is not None:
            burst.repeats += 1
            if burst.repeats == 1:
                self._wake.set()  # the sender may sleep with no deadline: it must learn when this window ends
            return
        self._bursts[note.level, note.message] = _Burst(note, now + self.window)
        self._enqueue(note)

    def _from_thread(self, note: Notify) -> None:
        try:
            if self._trio_token is None:
                raise trio.RunFinishedError
            self._trio_token.run_sync_soon(self.notify, note)
        except trio.RunFinishedError:
            self.dropped += 1  # no trio loop to hand it to: not running yet, or any more

    def _enqueue(self, note: Notify) -> None:
        if len(self._queue) >= self.queue_size:
            self._queue.popleft()  # the newest says most about now
            self.dropped += 1
        self._queue.append(note)
        self._wake.set()

    def _close_windows(self, now: float) -> None:
        for key, burst in list(self._bursts.items()):
            if burst.ends <= now:
                del self._bursts[key]
                if burst.repeats:
                    times = f"{burst.repeats + 1} times in {_span(self.window)}"
                    self._enqueue(Notify(burst.note.level, f"{burst.note.message} — {times}"))

    def _next_window_end(self) -> float:
        return min((b.ends for b in self._bursts.values() if b.repeats), default=math.inf)

    # -- the sending side ----------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send until cancelled. A dead or refusing Discord costs messages (counted), never this task."""
        self._trio_token = trio.lowlevel.current_trio_token()
        _SENDING.set(True)  # this task's context only: its own log records stay off Discord
        task_status.started()
        while True:
            self._close_windows(trio.current_time())
            while self._queue:
                self._sending = True
                try:
                    await self._deliver(self._queue.popleft())
                finally:
                    self._sending = False
                    self._progress.set()
                    self._progress = trio.Event()
                self._close_windows(trio.current_time())
            self._wake = trio.Event()  # no checkpoint since the queue was seen empty: nothing slips by
            with trio.move_on_at(self._next_window_end()):
                await self._wake.wait()

    async def flush(self) -> None:
        """Return once every queued notification has been sent or given up on (bound it: Discord may be slow)."""
        while self._queue or self._sending:
            await self._progress.wait()

    async def _deliver(self, note: Notify) -> None:
        dropped, failed = self.dropped, self.failed
        text = self.redact(_lost(dropped, failed) + PREFIX.get(note.level, "") + note.message)
        try:
            await self._send(text)
        except NotifyError as exc:
            self.failed += 1
            if exc.status == 401 and self.webhook is None and self.destination is not None:
                self._unreachable(exc)
            else:
                log.warning("a notification did not reach Discord: %s", exc)
        except Exception:
            # A bug here must cost one message, not the supervisor whose nursery this task shares.
            self.failed += 1
            log.exception("a notification did not reach Discord")
        else:
            self.dropped -= dropped  # only what this message reported: more may have been lost meanwhile
            self.failed -= failed

    async def _send(self, text: str) -> None:
        """The bot's route unless it was refused lately and a webhook stands in; the webhook alone if so configured."""
        if self.destination is not None and (self.webhook is None or trio.current_time() >= self._bot_refused_until):
            try:
                await discord_send(
                    self.destination,
                    text,
                    self.token or "",
                    self.dm,
                    client=self.client,
                    base_url=self.base_url,
                    state=self._state,
                )
            except NotifyError as exc:
                if self.webhook is None or exc.status not in REFUSED:
                    raise
                self._bot_refused_until = trio.current_time() + BOT_ROUTE_RETRY
                log.warning("notifications go through the webhook for %s: %s", _span(BOT_ROUTE_RETRY), exc)
                self._why_webhook = f"(sent through the webhook: {exc})\n"
            else:
                self._said_unreachable = False  # a later refusal is news again
                return
        assert self.webhook is not None  # a Notifier has a destination, a webhook, or both
        await webhook_send(self.webhook, self._why_webhook + text, client=self.client, state=self._state)
        self._why_webhook = ""

    def _unreachable(self, exc: NotifyError) -> None:
        """The token is refused and nothing else can reach the operator: say so once, loudly, with the way out."""
        if self._said_unreachable:
            log.debug("a notification did not reach Discord: %s", exc)
            return
        self._said_unreachable = True
        log.critical(
            "notifications cannot be delivered: %s; set %s to a channel webhook's URL so they reach you even then",
            exc,
            WEBHOOK_ENV,
        )


def _lost(dropped: int, failed: int) -> str:
    said = [f"{dropped} dropped (queue full)" if dropped else "", f"{failed} failed to send" if failed else ""]
    said = [s for s in said if s]
    return f"({' and '.join(said)}: earlier notifications lost)\n" if said else ""


# -- logging ------------------------------------------------------------------------------------------------
class DiscordLogHandler(logging.Handler):
    """Forwards log records at or above its level to a ``Notifier``: ``logging.getLogger().addHandler(h)``.

    Never blocks (``Notifier.notify`` only queues) and never feeds on itself:
    records of the Notifier's logger, of httpx, and of anything logged while
    a notification is being sent are skipped, as are records logged with
    ``extra=ALREADY_NOTIFIED``. The token is redacted on the way out.
    """

    def __init__(self, notifier: Notifier, level: int | str = logging.WARNING) -> None:
        super().__init__(level)
        self.notifier = notifier
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    @classmethod
    def from_env(cls, notifier: Notifier, env: Mapping[str, str] = os.environ) -> DiscordLogHandler:
        """The original's ``DISCORD_LOG_LEVEL`` (a name or a number; WARNING if unset)."""
        return cls(notifier, parse_log_level(env.get("DISCORD_LOG_LEVEL", "WARNING")))

    def emit(self, record: logging.LogRecord) -> None:
        if _SENDING.get() or getattr(record, "_already_notified", False) or _is_own(record.name):
            return
        try:
            text = self.notifier.redact(self.format(record))
            self.notifier.notify(Notify(_level_name(record.levelno), text))
        except Exception:
            self.handleError(record)


def parse_log_level(value: str) -> int:
    text = value.strip()
    if text.isdigit():
        return int(text)
    if text.lower() in LEVELS:
        return LEVELS[text.lower()]
    raise NotifyError(
        f"DISCORD_LOG_LEVEL={text[:20]!r} is not a log level: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )


def _is_own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in _OWN_LOGGERS)


def _level_name(levelno: int) -> str:
    return next((name for name in ("critical", "error", "warning") if levelno >= LEVELS[name]), "info")
