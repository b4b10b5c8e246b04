"""Seams for testing the discord.py attachment without Discord or a network.

- :class:`AutojumpLoop`: an asyncio loop on a virtual clock that jumps to the next timer whenever
  nothing is ready (trio's ``autojump_clock``, for asyncio): timing is exact and costs no real time.
- :class:`FakeSupervisor`: python-socketio's client surface in memory; the test answers each message
  the worker sends when it likes (a slow answer is a virtual sleep before ``answer``) and pushes
  ``cmd``/``cache_sync`` itself.
- :class:`OfflineBot`: a real ``commands.Bot`` whose ``login``/``connect`` skip the network (scripted
  failures allowed); everything the gates touch is discord.py's own.
- payload builders for the real ``INTERACTION_CREATE`` / ``MESSAGE_CREATE`` parsers.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import attrs
import discord
import socketio
from discord.ext import commands

from urban_robot.integrations.discord import Attachment
from urban_robot.protocol import Backoff, Endpoint

ENDPOINT = Endpoint("http://127.0.0.1:1", "child-1.secret")
TOKEN = "discord-token-xyz-0123456789"
APP_ID = 4242


# -- a virtual clock -------------------------------------------------------------------------------------
class _JumpingSelector:
    """Real I/O first; when the loop would block until a timer, jump the clock to it instead."""

    def __init__(self, loop: AutojumpLoop) -> None:
        self._inner = selectors.DefaultSelector()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        events = self._inner.select(0)
        if events or (timeout is not None and timeout <= 0):
            return events
        if timeout is None:  # no timer, no I/O ready: every task waits on another (trio would say the same)
            raise RuntimeError("deadlock: every task is waiting and no timer is set")
        self._loop.now += timeout
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class AutojumpLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(_JumpingSelector(self))  # type: ignore[arg-type]

    def time(self) -> float:
        return self.now


def run_virtual(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``scenario()`` on an :class:`AutojumpLoop`."""
    with asyncio.Runner(loop_factory=AutojumpLoop) as runner:
        return runner.run(scenario())


def now() -> float:
    return asyncio.get_running_loop().time()


# -- the supervisor, in memory ------------------------------------------------------------------------------
@attrs.define(eq=False)
class Emitted:
    event: str
    data: Any
    at: float  # when the worker wrote it (virtual)
    callback: Callable[..., Any] | None

    def answer(self, value: Any = None) -> None:
        assert self.callback is not None
        self.callback(value)


class FakeClient:
    def __init__(self, supervisor: FakeSupervisor) -> None:
        self.supervisor = supervisor
        self.handlers: dict[str, Callable[..., Any]] = {}
        self.connected = False

    def on(self, event: str, handler: Callable[..., Any]) -> None:
        self.handlers[event] = handler

    async def connect(self, url: str, *, auth: Any, transports: list[str], wait_timeout: float) -> None:
        self.supervisor.connects.append(now())
        if self.supervisor.refuse is not None:
            self.handlers["connect_error"](self.supervisor.refuse)
            raise socketio.exceptions.ConnectionError("refused")
        self.connected = True
        self.supervisor.client = self

    async def emit(self, event: str, data: Any = None, *, callback: Callable[..., Any] | None = None) -> None:
        if not self.connected:
            raise socketio.exceptions.BadNamespaceError("/ is not a connected namespace.")
        self.supervisor.inbox.put_nowait(Emitted(event, data, now(), callback))

    async def disconnect(self) -> None:
        if self.connected:
            self.connected = False
            self.handlers["disconnect"]("client disconnect")


class FakeSupervisor:
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Emitted] = asyncio.Queue()
        self.client: FakeClient | None = None
        self.connects: list[float] = []
        self.refuse: Any = None

    @contextlib.asynccontextmanager
    async def open_client(self) -> AsyncIterator[FakeClient]:
        client = FakeClient(self)
        try:
            yield client
        finally:
            await client.disconnect()

    async def next(self, event: str) -> Emitted:
        """The next message the worker sends, which must be ``event``."""
        emitted = await self.inbox.get()
        assert emitted.event == event, (emitted.event, emitted.data)
        return emitted

    async def skip_until(self, event: str) -> Emitted:
        """The next ``event``; what comes before is answered with ``{}`` (for a heartbeat: no renewal)."""
        while (emitted := await self.inbox.get()).event != event:
            emitted.answer({})
        return emitted

    def push(self, event: str, data: Any) -> None:
        assert self.client is not None and self.client.connected
        self.client.handlers[event](data)

    def cmd(self, name: str, **data: Any) -> None:
        self.push("cmd", {"t": name, "d": data})

    def drop(self) -> None:
        assert self.client is not None
        self.client.connected = False
        self.client.handlers["disconnect"]("transport close")


def hello(**overrides: Any) -> dict[str, Any]:
    base = {"protocol": 1, "token": TOKEN, "process_commands": False, "interval": 10, "lease": 15, "epoch": 0}
    return base | overrides


# -- discord.py, offline -------------------------------------------------------------------------------------
class OfflineBot(commands.Bot):
    """A real ``commands.Bot``; ``login`` runs the setup hook without REST, ``connect`` is a Gateway that says READY."""

    def __init__(self, *, extensions: tuple[str, ...] = ("modules.utilities",), **options: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(command_prefix="!", intents=intents, **options)
        self.fake_extensions = extensions
        self.tokens: list[str] = []
        self.logins: list[float] = []
        self.login_errors: list[BaseException] = []
        self.connect_error: BaseException | None = None
        self.auto_ready = True
        self.close_calls = 0
        self._gone = asyncio.Event()

    @property
    def extensions(self) -> Any:  # what the health report reads
        return {name: object() for name in self.fake_extensions}

    async def login(self, token: str) -> None:
        self.tokens.append(token)
        self.logins.append(asyncio.get_running_loop().time())
        if self.login_errors:
            raise self.login_errors.pop(0)
        await self.prepare()
        await self.setup_hook()

    async def prepare(self) -> None:
        """What ``login`` does before REST: bind discord.py to the running loop."""
        await self._async_setup_hook()
        self._connection.application_id = APP_ID
        self._connection.user = discord.ClientUser(state=self._connection, data=BOT_USER)  # type: ignore[arg-type]

    async def connect(self, *, reconnect: bool = True) -> None:
        if self.connect_error is not None:
            raise self.connect_error
        if self.auto_ready:
            self.dispatch("connect")
            self.dispatch("ready")
        await self._gone.wait()

    async def close(self) -> None:
        self.close_calls += 1
        await super().close()
        self._gone.set()


class FakeResponse:
    """What ``discord.HTTPException`` reads of an aiohttp response."""

    def __init__(self, status: int, reason: str = "Service Unavailable") -> None:
        self.status, self.reason = status, reason


def server_error(status: int = 503) -> discord.DiscordServerError:
    return discord.DiscordServerError(FakeResponse(status), "upstream down")  # type: ignore[arg-type]


class Steps:
    """An observer: every step the attachment carried out, with the loop time it was done at."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, step: Any) -> None:
        self.seen.append((now(), step))
        self._changed.set()

    def of(self, kind: type) -> list[tuple[float, Any]]:
        return [(at, step) for at, step in self.seen if isinstance(step, kind)]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    async def wait_for(self, match: type | Callable[[Any], bool], after: int = 0) -> tuple[float, Any]:
        """The first step (from index ``after``) that is of type ``match`` or satisfies it, waiting for it."""

        def test(step: Any) -> bool:
            return isinstance(step, match) if isinstance(match, type) else match(step)

        while True:
            for at, step in self.seen[after:]:
                if test(step):
                    return at, step
            self._changed.clear()
            await self._changed.wait()


def make_attachment(bot: commands.Bot, supervisor: FakeSupervisor, **kwargs: Any) -> tuple[Attachment, Steps]:
    """An attachment on the in-memory supervisor, observed."""
    steps = Steps()
    kwargs.setdefault("backoff", Backoff(initial=1.0, cap=8.0, jitter=0.0))
    att = Attachment(bot, ENDPOINT, version="1.0", observer=steps, client=supervisor.open_client, **kwargs)
    return att, steps


async def serve_until_processing(supervisor: FakeSupervisor, epoch: int = 1, lease: float = 15) -> Emitted:
    """identify → hello → ready → process_commands → the heartbeat it sends, returned unanswered.

    Heartbeats before the grant (the Gateway came up) are answered as the supervisor does: no renewal.
    """
    (await supervisor.next("identify")).answer(hello())
    while (emitted := await supervisor.inbox.get()).event != "ready":
        emitted.answer({})
    emitted.answer({})
    supervisor.cmd("process_commands", epoch=epoch, lease=lease, lease_token="lt", reason="test")
    while (emitted := await supervisor.inbox.get()).data.get("epoch") != epoch:
        emitted.answer({})
    return emitted


# -- payloads for the real parsers ---------------------------------------------------------------------------
BOT_USER = {"id": str(APP_ID), "username": "helium", "discriminator": "0", "avatar": None, "bot": True}
USER = {"id": "1001", "username": "alice", "discriminator": "0", "global_name": "Alice", "avatar": None}
_counter = iter(range(10**6))


def interaction(kind: int, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    n = next(_counter)
    return {
        "id": str(900000 + n),
        "application_id": str(APP_ID),
        "type": kind,
        "data": data,
        "token": f"interaction-token-{n}",
        "version": 1,
        "user": USER,
        "channel_id": "555",
        "channel": {"id": "555", "type": 1},
        "attachment_size_limit": 8 * 1024 * 1024,
        "authorizing_integration_owners": {},
        "context": 1,
        **extra,
    }


def slash(name: str) -> dict[str, Any]:
    return interaction(2, {"id": "777", "name": name, "type": 1})


def button(custom_id: str) -> dict[str, Any]:
    return interaction(3, {"custom_id": custom_id, "component_type": 2})


def select(custom_id: str, values: list[str]) -> dict[str, Any]:
    return interaction(3, {"custom_id": custom_id, "component_type": 3, "values": values})


def modal_submit(custom_id: str, fields: dict[str, str]) -> dict[str, Any]:
    rows = [{"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in fields.items()]
    return interaction(5, {"custom_id": custom_id, "components": rows})


def message(content: str) -> dict[str, Any]:
    n = next(_counter)
    return {
        "id": str(800000 + n),
        "channel_id": "555",
        "author": USER,
        "content": content,
        "timestamp": "2024-01-01T00:00:00+00:00",
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "type": 0,
    }
