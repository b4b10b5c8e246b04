"""``attach()`` for asyncio bots, with a stand-in for discord.py's ``commands.Bot``, against a real supervisor.

The supervisor runs in the trio test over real sockets (port 0, real clock); each bot side runs in a
worker thread with its own asyncio loop (``trio.to_thread.run_sync(asyncio.run, ...)``).
Discord is never reached: the stand-in's ``start(token)`` records the token and dispatches
``on_ready``. discord.py is not needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trio

from urban_robot.integrations.discord import AttachError, Attachment, attach
from urban_robot.supervisor import Credentials, Settings, StateStore, UrbanRobot

TOKEN = "discord-token-xyz-0123456789"
SETTINGS = Settings(token=TOKEN, interval=0.5, grace=0.5, lease_margin=0.5, health_timeout=5, stop_timeout=5)
LIMIT = 20.0  # seconds for any one scenario


class StandInTree:
    """discord.py's ``app_commands.CommandTree``: runs a command only if ``interaction_check`` passes."""

    def __init__(self) -> None:
        self.ran: list[Any] = []

    async def interaction_check(self, interaction: Any) -> bool:
        return True

    async def dispatch(self, interaction: Any) -> bool:
        if not await self.interaction_check(interaction):
            return False
        self.ran.append(interaction)
        return True


class StandInBot:
    """The surface of discord.py's ``commands.Bot`` that ``attach()`` uses. ``start`` never reaches Discord."""

    def __init__(self, extensions: tuple[str, ...] = ("modules.utilities",), *, auto_ready: bool = True) -> None:
        self.extensions: dict[str, object] = {name: object() for name in extensions}
        self.listeners: dict[str, list[Callable[..., Coroutine[Any, Any, Any]]]] = {}
        self.checks: list[Callable[[Any], Any]] = []
        self.tree = StandInTree()
        self.tokens: list[str] = []
        self.handled: list[Any] = []
        self.close_calls = 0
        self.finished_at: dict[Any, float] = {}
        self.slow = asyncio.Event()  # "!slow" runs until this is set
        self.slow_started = asyncio.Event()
        self.auto_ready = auto_ready
        self.started = asyncio.Event()
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    def add_listener(self, func: Callable[..., Coroutine[Any, Any, Any]], name: str | None = None) -> None:
        assert asyncio.iscoroutinefunction(func)  # discord.py insists
        self.listeners.setdefault(name or func.__name__, []).append(func)

    def add_check(self, func: Callable[[Any], Any], *, call_once: bool = False) -> None:
        self.checks.append(func)

    def dispatch(self, event: str, *args: Any) -> None:
        for listener in self.listeners.get("on_" + event, []):
            task = asyncio.create_task(listener(*args))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def process_commands(self, message: Any) -> None:
        for check in self.checks:
            if not check(message):
                return
        self.handled.append(message)
        if message == "!slow":
            self.slow_started.set()
            await self.slow.wait()
        self.finished_at[message] = asyncio.get_running_loop().time()

    async def on_message(self, message: Any) -> None:
        await self.process_commands(message)  # what commands.Bot.on_message does

    async def start(self, token: str) -> None:
        self.tokens.append(token)
        self.started.set()
        if self.auto_ready:
            asyncio.get_running_loop().call_later(0.01, self.dispatch, "ready")
        await self._closed.wait()

    async def close(self) -> None:
        self.close_calls += 1
        self._closed.set()


class Harness:
    def __init__(self, nursery: trio.Nursery, state_dir: Path) -> None:
        self.nursery = nursery
        self.store = StateStore(state_dir)
        self.store.prepare()
        self.credentials = Credentials(self.store.secret_key(), admin_token="admin-secret")
        self.scope = trio.CancelScope()
        self.robot: UrbanRobot | None = None
        self.url = ""
        self.port = 0

    async def start(self, port: int = 0) -> None:
        robot = UrbanRobot(SETTINGS, self.store, self.credentials)

        async def run(task_status: trio.TaskStatus[int | None]) -> None:
            with self.scope:
                await robot.run("127.0.0.1", port, task_status=task_status)

        self.scope = trio.CancelScope()
        bound = await self.nursery.start(run)
        assert bound is not None
        self.robot, self.url, self.port = robot, f"http://127.0.0.1:{bound}", bound

    def stop(self) -> None:
        self.scope.cancel()

    def attach(self, bot: StandInBot, identity: str, **kwargs: Any) -> Attachment:
        secret = self.credentials.child_secret(identity)
        return attach(bot, url=self.url, secret=secret, **kwargs)

    def status(self) -> dict[str, Any]:
        """The supervisor's status, asked from the asyncio thread."""
        assert self.robot is not None
        status: dict[str, Any] = trio.from_thread.run_sync(self.robot.status)
        return status


@pytest.fixture
async def harness(nursery: trio.Nursery, tmp_path: Path) -> Harness:
    h = Harness(nursery, tmp_path / "state")
    await h.start()
    return h


async def in_asyncio(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run an asyncio scenario in a worker thread, with a time limit on both sides."""

    async def bounded() -> Any:
        async with asyncio.timeout(LIMIT):
            return await scenario()

    with trio.fail_after(LIMIT + 5):
        return await trio.to_thread.run_sync(asyncio.run, bounded(), abandon_on_cancel=True)


def steps(attachment: Attachment) -> list[str]:
    return [name for _, name, _ in attachment.steps]


async def test_token_ready_and_commands_only_under_the_lease(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = harness.credentials.child_secret("child-1")

    async def scenario() -> Attachment:
        bot = StandInBot(auto_ready=False)
        att = harness.attach(bot, "child-1", version="1.0")
        runner = asyncio.create_task(att.run())
        await bot.started.wait()
        assert bot.tokens == [TOKEN]  # the token from hello reached start()
        await att.wait_for("hello")
        # logged in, Discord not READY yet: no ready, no health check, no commands
        await bot.on_message("!ping early")
        assert bot.handled == []
        assert not await bot.tree.dispatch("early interaction")
        assert [check(None) for check in bot.checks] == [False]
        assert [w["role"] for w in harness.status()["workers"]] == ["identified"]
        assert "ready_sent" not in steps(att) and "cmd:health_check" not in steps(att)

        bot.dispatch("ready")  # Discord's READY
        await att.wait_for("processing")
        names = steps(att)
        assert names.index("discord_ready") < names.index("cmd:health_check") < names.index("processing")
        assert names.index("cmd:process_commands") < names.index("processing")
        assert att.processing and harness.status()["epoch"] == 1

        await bot.on_message("!ping")
        assert bot.handled == ["!ping"]
        assert await bot.tree.dispatch("interaction")
        assert [check(None) for check in bot.checks] == [True]

        await att.shutdown("test over")
        await asyncio.wait_for(runner, 5)
        assert bot.close_calls == 1
        assert not att.processing
        await bot.on_message("!ping after")
        assert bot.handled == ["!ping"]
        return att

    att = await in_asyncio(scenario)
    assert TOKEN not in repr(att) and secret not in repr(att)
    assert "processing commands" in caplog.text  # the log was captured...
    for record in caplog.records:  # ...and holds neither the token nor the secret
        assert TOKEN not in record.getMessage() and secret not in record.getMessage()
    assert TOKEN not in caplog.text and secret not in caplog.text
    assert all(TOKEN not in repr(data) for _, _, data in att.steps)


async def test_missing_vital_cog_gets_the_bot_closed(harness: Harness) -> None:
    async def scenario() -> tuple[StandInBot, Attachment]:
        bot = StandInBot(extensions=("modules.fun",))
        att = harness.attach(bot, "child-1", version="1.0")
        await asyncio.wait_for(att.run(), 10)  # returns by itself: the supervisor shut the bot down
        return bot, att

    bot, att = await in_asyncio(scenario)
    reports = [data for _, name, data in att.steps if name == "health_report"]
    assert reports == [{"OK": False, "percent": 50.0, "cogs": {"modules.fun": True, "modules.utilities": False}}]
    shutdowns = [data for _, name, data in att.steps if name == "cmd:shutdown"]
    assert shutdowns == [{"reason": "vital_cog_failed", "cache_sync": False}]
    assert bot.close_calls == 1
    assert "processing" not in steps(att)
    assert bot.tokens == [TOKEN]


def test_health_report_shape() -> None:
    bot = StandInBot(extensions=("modules.utilities", "modules.fun", "modules.music"))
    att = attach(bot, version="1.0", url="http://127.0.0.1:1", secret="s", vital_cogs=("modules.utilities", "x"))
    assert att.health_report() == {
        "OK": False,
        "percent": 75.0,
        "cogs": {"modules.utilities": True, "modules.fun": True, "modules.music": True, "x": False},
    }
    bot.extensions["x"] = object()
    assert att.health_report()["OK"] is True and att.health_report()["percent"] == 100.0


def test_attach_needs_a_url_and_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("URBAN_ROBOT_URL", "URBAN_ROBOT_SECRET", "URBAN_ROBOT_GENERATION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AttachError, match="URBAN_ROBOT_URL"):
        attach(StandInBot(), version="1.0")
    monkeypatch.setenv("URBAN_ROBOT_URL", "http://127.0.0.1:1")
    with pytest.raises(AttachError, match="URBAN_ROBOT_SECRET"):
        attach(StandInBot(), version="1.0")
    monkeypatch.setenv("URBAN_ROBOT_SECRET", "child-1.abc")
    monkeypatch.setenv("URBAN_ROBOT_GENERATION", "7")
    att = attach(StandInBot(), version="1.0")
    assert att.url == "http://127.0.0.1:1" and att.generation == 7
    assert "child-1.abc" not in repr(att)


async def test_newer_bot_takes_over_with_the_cache(harness: Harness) -> None:
    async def scenario() -> None:
        old_bot, new_bot = StandInBot(), StandInBot()
        old_cache: dict[str, Any] = {"reminders": {}}
        new_side: list[tuple[str, Any]] = []

        def new_set_cache(cache: Any) -> None:
            new_side.append(("set_cache", cache))

        old = harness.attach(old_bot, "child-1", version="1.0", get_cache=lambda: old_cache)
        new = harness.attach(new_bot, "child-2", version="1.1", set_cache=new_set_cache)
        old_runner = asyncio.create_task(old.run())
        await old.wait_for("processing")
        old_cache["reminders"]["alice"] = "tea at 5"
        assert await old.sync_cache()
        old_cache["reminders"]["bob"] = b"walk at 6"  # only the final cache carries this one

        new_runner = asyncio.create_task(new.run())
        started_at, _ = await new.wait_for("processing")
        _, coma = await old.wait_for("cmd:coma")
        assert coma["cache_sync"] is True
        stopped_at, _ = await old.wait_for("stopped")
        assert stopped_at <= started_at
        final = {"reminders": {"alice": "tea at 5", "bob": b"walk at 6"}}
        assert new_side and new_side[-1] == ("set_cache", final)
        received_at, _ = await new.wait_for("cache_received")
        assert received_at <= started_at  # the cache came before the new bot processed anything
        assert harness.status()["epoch"] == 2

        # the old bot is fenced: a standby that no longer acts on commands
        assert not old.processing
        await old_bot.on_message("!remind late")
        assert not await old_bot.tree.dispatch("late interaction")
        assert old_bot.handled == [] and old_bot.close_calls == 0
        await new_bot.on_message("!remind")
        assert new_bot.handled == ["!remind"]

        await new.shutdown("test over")
        await old.shutdown("test over")
        await asyncio.wait_for(asyncio.gather(old_runner, new_runner), 5)

    await in_asyncio(scenario)


async def test_bot_stops_by_itself_when_its_lease_runs_out(harness: Harness) -> None:
    async def scenario() -> None:
        bot = StandInBot()
        att = harness.attach(bot, "child-1", version="1.0")
        runner = asyncio.create_task(att.run())
        await att.wait_for("processing")
        trio.from_thread.run_sync(harness.stop)  # the supervisor goes away: nobody renews the lease
        gone_at = asyncio.get_running_loop().time()
        ran_out_at, _ = await att.wait_for("lease_ran_out")
        assert ran_out_at - gone_at <= SETTINGS.lease + 0.1  # counted from a heartbeat sent before
        assert not att.processing
        await bot.on_message("!ping")
        assert bot.handled == []
        await att.shutdown("test over")
        await asyncio.wait_for(runner, 5)
        assert bot.close_calls == 1

    await in_asyncio(scenario)


async def test_commands_in_flight_finish_before_the_coma_is_acknowledged(harness: Harness) -> None:
    async def scenario() -> None:
        old_bot, new_bot = StandInBot(), StandInBot()
        old = harness.attach(old_bot, "child-1", version="1.0", get_cache=lambda: {"n": 1})
        new = harness.attach(new_bot, "child-2", version="1.1")
        runners = [asyncio.create_task(old.run())]
        await old.wait_for("processing")
        in_flight = asyncio.create_task(old_bot.on_message("!slow"))
        await old_bot.slow_started.wait()
        runners.append(asyncio.create_task(new.run()))
        await old.wait_for("cmd:coma")
        await old_bot.on_message("!ping")  # no new command once the coma came
        assert old_bot.handled == ["!slow"] and not new.processing
        old_bot.slow.set()  # the command in flight finishes; only then is the coma acknowledged
        started_at, _ = await new.wait_for("processing")
        stopped_at, _ = await old.wait_for("stopped")
        assert old_bot.finished_at["!slow"] <= stopped_at <= started_at
        await in_flight
        await new.shutdown("test over")
        await old.shutdown("test over")
        await asyncio.wait_for(asyncio.gather(*runners), 5)

    await in_asyncio(scenario)


async def test_holder_is_adopted_again_after_a_supervisor_restart(harness: Harness) -> None:
    async def scenario() -> None:
        bot = StandInBot()
        att = harness.attach(bot, "child-1", version="1.0")
        runner = asyncio.create_task(att.run())
        await att.wait_for("processing")
        assert att.epoch == 1
        trio.from_thread.run_sync(harness.stop)
        await att.wait_for("disconnected")
        trio.from_thread.run(harness.start, harness.port)  # back on the same port, same state directory
        await att.wait_until(lambda: steps(att).count("hello") == 2)
        hellos = [data for _, name, data in att.steps if name == "hello"]
        assert hellos[1]["process_commands"] is True and hellos[1]["epoch"] == 1  # our claim was adopted
        assert "token" not in hellos[1]
        assert "fenced" not in steps(att)
        hello_at = [at for at, name, _ in att.steps if name == "hello"][1]
        # renewed on the new connection: a lease view counted from a heartbeat sent after the hello
        await att.wait_until(lambda: att.lease_ends - SETTINGS.lease >= hello_at)
        assert att.processing
        status = harness.status()
        assert status["epoch"] == 1 and status["running"] is not None
        assert bot.tokens == [TOKEN]  # logged in once: a reconnection to the supervisor is not a new login
        await att.shutdown("test over")
        await asyncio.wait_for(runner, 5)

    await in_asyncio(scenario)
