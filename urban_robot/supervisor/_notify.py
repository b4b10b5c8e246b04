"""Telling the operator on Discord: REST sends, a bounded queue that never blocks supervision, a logging bridge.

    supervisor core ── Notify ──▶ Notifier.notify()       sync, never blocks: collapses repeats, drops the
    logging ── DiscordLogHandler ──▶ ┘                     oldest when the bounded queue is full
                                     │
                                     ▼
                              Notifier.run() ── discord_send() ──▶ Discord REST v10 (channel or DM)

``discord_send`` is the only place that talks HTTP: it splits long messages,
waits out 429s and exhausted rate-limit buckets, retries 5xx and network
errors a bounded number of times, and turns everything else into one
``NotifyError`` line saying what failed and what to do. The bot token goes
into the ``Authorization`` header and nowhere else: not into messages, log
lines, exception texts or reprs.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
from collections import deque
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import trio

from .. import __version__
from .._errors import UrbanRobotError
from ._events import Notify

log = logging.getLogger("urban_robot.supervisor.notify")

DISCORD_API = "https://discord.com/api/v10"
USER_AGENT = f"DiscordBot (https://pypi.org/project/urban-robot/, {__version__})"  # the form Discord asks for
MESSAGE_LIMIT = 2000  # characters per Discord message
MAX_ATTEMPTS = 5  # per request, 429s included
BACKOFF = 1.0  # first wait after a 5xx or a network error; doubles each time
MAX_WAIT = 3600.0  # a longer retry_after is garbage (or a ban that outlasts any alert)
REDACTED = "[redacted]"
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
    client: httpx.AsyncClient
    token: str = attrs.field(repr=False)
    base_url: str
    state: DiscordState

    async def post(self, path: str, body: dict[str, Any], what: str, hints: Mapping[int, str]) -> httpx.Response:
        """POST with Discord's manners: wait for the route, retry 429/5xx/network a few times, explain refusals."""
        route = f"POST {path}"
        last, pause = "", 0.0
        for attempt in range(MAX_ATTEMPTS):
            await trio.sleep(pause)
            await self.state.wait_turn(route)
            pause = BACKOFF * 2**attempt  # after a 5xx or a network error; a 429 says how long itself
            try:
                response = await self.client.post(self.base_url + path, json=body, headers=self._headers())
            except httpx.TransportError as exc:
                last = redact(f"{type(exc).__name__}: {exc}", self.token)
                continue
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise NotifyError(redact(f"{what} failed: {type(exc).__name__}: {exc}", self.token)) from exc
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
        return {"Authorization": f"Bot {self.token}", "User-Agent": USER_AGENT}

    def _refusal(self, response: httpx.Response, what: str, hints: Mapping[int, str]) -> str:
        status = response.status_code
        if status == 401:
            return "Discord refused the bot token (401): check BOT_TOKEN"
        body = _json(response)
        detail = body.get("message") if isinstance(body, dict) else None
        detail = f": {' '.join(redact(str(detail), self.token).split())[:200]}" if detail else ""
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
    api = _Api(client, token, base_url.rstrip("/"), state or DiscordState())
    if dm:
        user = _snowflake(destination, "user")
        channel, where, hints = await _dm_channel(api, user), f"sending a DM to user {user}", _DM_HINTS
    else:
        channel = _snowflake(destination, "channel")
        where, hints = f"sending a message to channel {channel}", _CHANNEL_HINTS
    for part in split_message(redact(message, token)):
        if part.strip():  # Discord refuses blank content (and would trim it anyway)
            body = {"content": part, "allowed_mentions": {"parse": []}}  # log text must not ping @everyone
            await api.post(f"/channels/{channel}/messages", body, where, hints)


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
    """

    client: httpx.AsyncClient
    token: str = attrs.field(repr=False)
    destination: int | str
    dm: bool = False
    base_url: str = DISCORD_API
    level: str = "info"
    window: float = 300.0
    queue_size: int = 100
    dropped: int = attrs.field(default=0, init=False)
    failed: int = attrs.field(default=0, init=False)
    _queue: deque[Notify] = attrs.field(factory=deque, init=False, repr=False)
    _bursts: dict[tuple[str, str], _Burst] = attrs.field(factory=dict, init=False, repr=False)
    _wake: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _state: DiscordState = attrs.field(factory=DiscordState, init=False, repr=False)
    _trio_token: trio.lowlevel.TrioToken | None = attrs.field(default=None, init=False, repr=False)
    _sending: bool = attrs.field(default=False, init=False, repr=False)
    _progress: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        check_token(self.token)  # a bad token is a configuration error at start-up, not 100 failed sends later
        _snowflake(self.destination, "user" if self.dm else "channel")
        if self.level not in LEVELS:
            raise NotifyError(f"unknown notification level {self.level!r}: use one of {', '.join(LEVELS)}")
        if self.queue_size < 1 or not self.window >= 0:
            raise NotifyError("the notification queue needs room for one message and a window of 0 s or more")

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
        text = _lost(dropped, failed) + PREFIX.get(note.level, "") + note.message
        try:
            await discord_send(
                self.destination,
                text,
                self.token,
                self.dm,
                client=self.client,
                base_url=self.base_url,
                state=self._state,
            )
        except NotifyError as exc:
            self.failed += 1
            log.warning("a notification did not reach Discord: %s", exc)
        except Exception:
            # A bug here must cost one message, not the supervisor whose nursery this task shares.
            self.failed += 1
            log.exception("a notification did not reach Discord")
        else:
            self.dropped -= dropped  # only what this message reported: more may have been lost meanwhile
            self.failed -= failed


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
            text = redact(self.format(record), self.notifier.token)
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
