"""The lease gates on real discord.py objects, fed through its real parsers and dispatch, without a network.

A standby's parsers still run (the message is in discord.py's cache), but nothing of the bot's runs:
no task is even scheduled. While processing, each kind of entry point runs exactly once.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands, tasks

from urban_robot.integrations._discord_gates import IncompatibleDiscordPy, InFlight, current_lease, install, run_gated
from urban_robot.integrations.discord import everywhere

from ._discord_fakes import OfflineBot, button, message, modal_submit, now, run_virtual, select, slash


class Switch:
    """A lease that the test turns on and off (``draining``: not processing, but within the lease's drain)."""

    def __init__(self) -> None:
        self._processing = False
        self.draining = False
        self.in_flight = InFlight()
        self._edge = asyncio.Event()

    @property
    def processing(self) -> bool:
        return self._processing

    @processing.setter
    def processing(self, on: bool) -> None:
        self._processing = on
        self._edge.set()
        self._edge = asyncio.Event()

    @property
    def acting(self) -> bool:
        return self._processing or self.draining

    async def until_processing(self) -> None:
        while not self._processing:
            await self._edge.wait()


class Panel(discord.ui.View):
    """A persistent view: a button and a select that survive restarts (custom ids, no timeout)."""

    def __init__(self, ran: list[Any]) -> None:
        super().__init__(timeout=None)
        self.ran = ran

    @discord.ui.button(label="Press", custom_id="panel:press")
    async def press(self, interaction: discord.Interaction, _: discord.ui.Button[Panel]) -> None:
        self.ran.append("button")

    @discord.ui.select(custom_id="panel:pick", options=[discord.SelectOption(label=x) for x in ("tea", "coffee")])
    async def pick(self, interaction: discord.Interaction, choice: discord.ui.Select[Panel]) -> None:
        self.ran.append(("select", choice.values))


class Feedback(discord.ui.Modal, title="Feedback"):
    text: discord.ui.TextInput[Feedback] = discord.ui.TextInput(label="Text", custom_id="feedback:text")

    def __init__(self, ran: list[Any]) -> None:
        super().__init__(custom_id="feedback", timeout=None)
        self.ran = ran

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.ran.append(("modal", self.text.value))


class Greeter(commands.Cog):
    def __init__(self, ran: list[Any]) -> None:
        self.ran = ran

    @commands.Cog.listener()
    async def on_member_join(self, member: Any) -> None:
        self.ran.append("cog listener")


class Bot(OfflineBot):
    def __init__(self, ran: list[Any]) -> None:
        super().__init__()
        self.ran = ran

    async def on_member_join(self, member: Any) -> None:
        self.ran.append("on_ method")


async def gated_bot() -> tuple[Bot, Switch, list[Any]]:
    """A bot with one entry point of every kind, each appending to ``ran``."""
    ran: list[Any] = []
    bot, switch = Bot(ran), Switch()
    await bot.prepare()
    install(bot, switch)

    @bot.listen("on_member_join")
    async def listen(member: Any) -> None:
        ran.append("bot.listen")

    @bot.command()
    async def ping(ctx: commands.Context[Bot]) -> None:
        ran.append("!ping")

    @bot.tree.command()
    async def hello(interaction: discord.Interaction) -> None:
        ran.append("/hello")

    @bot.listen()
    async def on_interaction(interaction: discord.Interaction) -> None:
        ran.append("on_interaction")

    await bot.add_cog(Greeter(ran))
    bot.add_view(Panel(ran))
    bot._connection.store_view(Feedback(ran))  # what interaction.response.send_modal does
    return bot, switch, ran


def feed_everything(bot: commands.Bot) -> None:
    """One of each: a message with a prefix command, a slash command, a button, a select, a modal, a member join."""
    parsers = bot._connection.parsers
    parsers["MESSAGE_CREATE"](message("!ping"))
    parsers["INTERACTION_CREATE"](slash("hello"))
    parsers["INTERACTION_CREATE"](button("panel:press"))
    parsers["INTERACTION_CREATE"](select("panel:pick", ["tea"]))
    parsers["INTERACTION_CREATE"](modal_submit("feedback", {"feedback:text": "lovely"}))
    bot.dispatch("member_join", "a member")  # what GUILD_MEMBER_ADD's parser does once the member is cached


EVERYTHING = [
    "!ping",
    "/hello",
    "bot.listen",
    "button",
    "cog listener",
    "on_ method",
    ("modal", "lovely"),
    ("select", ["tea"]),
]


def test_a_standby_runs_no_user_code_but_keeps_discord_py_state_warm() -> None:
    async def scenario() -> None:
        bot, _, ran = await gated_bot()
        before = asyncio.all_tasks()
        feed_everything(bot)
        assert asyncio.all_tasks() == before  # nothing was even scheduled
        assert ran == []
        assert [m.content for m in bot.cached_messages] == ["!ping"]  # the parser ran: the cache is warm

    run_virtual(scenario)


def test_while_processing_every_kind_of_entry_point_runs_once() -> None:
    async def scenario() -> None:
        bot, switch, ran = await gated_bot()
        switch.processing = True
        feed_everything(bot)
        assert len(switch.in_flight) >= 9  # every piece of work was adopted as in flight
        await switch.in_flight.settle(until=asyncio.get_running_loop().time() + 5, timeout=1)
        assert len(switch.in_flight) == 0
        assert sorted((x for x in ran if x != "on_interaction"), key=str) == sorted(EVERYTHING, key=str)
        assert ran.count("on_interaction") == 4  # the slash command, the button, the select, the modal

    run_virtual(scenario)


def test_a_listener_marked_everywhere_runs_on_a_standby_too() -> None:
    async def scenario() -> None:
        bot, _, ran = await gated_bot()

        @bot.listen("on_member_join")
        @everywhere
        async def count_joins(member: Any) -> None:
            ran.append("counted")

        class Metrics(commands.Cog):
            @everywhere
            @commands.Cog.listener()
            async def on_member_join(self, member: Any) -> None:
                ran.append("metrics")

        await bot.add_cog(Metrics())
        bot.dispatch("member_join", "a member")
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))
        assert sorted(ran) == ["counted", "metrics"]

    run_virtual(scenario)


def test_process_commands_is_gated_even_from_an_everywhere_on_message() -> None:
    async def scenario() -> None:
        ran: list[Any] = []

        class Chatty(OfflineBot):
            @everywhere
            async def on_message(self, msg: discord.Message) -> None:
                ran.append(("seen", msg.content))
                await self.process_commands(msg)

        bot, switch = Chatty(), Switch()
        await bot.prepare()
        install(bot, switch)

        @bot.command()
        async def ping(ctx: commands.Context[Chatty]) -> None:
            ran.append("!ping")

        bot._connection.parsers["MESSAGE_CREATE"](message("!ping"))
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))
        assert ran == [("seen", "!ping")]

    run_virtual(scenario)


def test_loop_iterations_are_gated_and_a_cancelled_iteration_does_not_end_the_loop() -> None:
    async def scenario() -> None:
        switch = Switch()
        current_lease.set(switch)
        bodies: list[float] = []
        proceed = asyncio.Event()

        @tasks.loop(seconds=1, count=3)
        async def tick() -> None:
            bodies.append(asyncio.get_running_loop().time())
            await proceed.wait()

        switch.processing = True
        task = tick.start()
        while not bodies:
            await asyncio.sleep(0.5)
        await switch.in_flight.settle(timeout=1)  # the lease ends: the iteration is cancelled...
        switch.processing = False
        await task  # ...and the loop went on (its other iterations skipped), ending normally
        assert len(bodies) == 1 and not tick.failed()

        @everywhere
        @tasks.loop(seconds=1, count=2)
        async def housekeeping() -> None:
            bodies.append(-1)

        await housekeeping.start()
        assert bodies[1:] == [-1, -1]

    run_virtual(scenario)


def test_a_loop_starts_when_the_worker_processes_and_before_and_after_loop_are_gated() -> None:
    """Red team findings 3 and 4: a loop started in setup_hook, before any lease, loses nothing; a standby
    runs neither its before_loop nor its iterations; after_loop runs only where the lease is held."""

    async def scenario() -> None:
        switch = Switch()
        current_lease.set(switch)
        ran: list[tuple[str, float]] = []
        clock = asyncio.get_running_loop().time

        @tasks.loop(count=1)
        async def once() -> None:
            ran.append(("once", clock()))

        @once.before_loop
        async def before_once() -> None:
            ran.append(("before", clock()))

        @once.after_loop
        async def after_once() -> None:
            ran.append(("after", clock()))

        task = once.start()  # in setup_hook: nobody processes yet
        await asyncio.sleep(60)
        assert ran == [] and not task.done()  # waiting, not skipped
        switch.processing = True
        started = clock()
        await task
        assert ran == [("before", started), ("once", started), ("after", started)]

        ran.clear()

        @tasks.loop(seconds=10, count=4)
        async def tick() -> None:
            ran.append(("tick", clock()))

        @tick.after_loop
        async def after_tick() -> None:
            ran.append(("after", clock()))

        begun = clock()
        ticking = tick.start()
        await asyncio.sleep(15)
        switch.processing = False  # a hand-over: later iterations (and after_loop) are skipped here
        await ticking
        assert [name for name, _ in ran] == ["tick", "tick"] and not tick.failed()
        assert [at - begun for _, at in ran] == pytest.approx([0, 10], abs=0.01)  # discord.py sleeps on the wall clock

    run_virtual(scenario)


def test_on_ready_is_kept_until_the_worker_first_processes_then_runs_once_with_its_latest_arguments() -> None:
    """Red team finding 2: READY comes before any lease; its listeners run when this worker first processes."""

    async def scenario() -> None:
        ran: list[Any] = []

        class Ready(OfflineBot):
            async def on_ready(self) -> None:
                ran.append("on_ready method")

        bot, switch = Ready(), Switch()
        await bot.prepare()
        gates = install(bot, switch)

        @bot.listen("on_ready")
        async def announce() -> None:
            ran.append("listener")

        @bot.listen("on_member_join")
        async def greet(member: Any) -> None:
            ran.append(("join", member))

        bot.dispatch("ready")
        bot.dispatch("ready")  # a reconnection: the listeners are kept once each
        bot.dispatch("member_join", "early")  # any other event is dropped as before
        await asyncio.sleep(1)
        assert ran == []
        switch.processing = True
        gates.started()
        await switch.in_flight.settle(until=asyncio.get_running_loop().time() + 1, timeout=1)
        assert sorted(ran) == ["listener", "on_ready method"]
        switch.processing = False
        bot.dispatch("ready")  # once it has processed, on_ready is gated like any listener
        switch.processing = True
        gates.started()  # a later start does not replay it
        await asyncio.sleep(1)
        assert len(ran) == 2

    run_virtual(scenario)


def test_a_plain_client_with_a_command_tree_is_gated_and_its_lifecycle_seen() -> None:
    """Red team finding 8: a ``discord.Client`` has no add_listener; the attachment hooks its dispatch."""

    async def scenario() -> None:
        ran: list[Any] = []
        client = discord.Client(intents=discord.Intents.default())
        tree = app_commands.CommandTree(client)

        @tree.command()
        async def hello(interaction: discord.Interaction) -> None:
            ran.append("/hello")

        async def on_ready() -> None:
            ran.append("user's on_ready")

        client.on_ready = on_ready  # type: ignore[method-assign]
        await client._async_setup_hook()
        client._connection.application_id = 4242
        seen: list[str] = []
        switch = Switch()
        gates = install(client, switch, {"ready": lambda: seen.append("ready"), "connect": lambda: seen.append("up")})
        client._connection.dispatch("connect")  # what the Gateway's parsers call
        client._connection.parsers["INTERACTION_CREATE"](slash("hello"))
        client.dispatch("ready")
        await asyncio.sleep(1)
        assert seen == ["up", "ready"] and ran == []
        switch.processing = True
        gates.started()
        client._connection.parsers["INTERACTION_CREATE"](slash("hello"))
        await switch.in_flight.settle(until=asyncio.get_running_loop().time() + 1, timeout=1)
        assert sorted(ran) == ["/hello", "user's on_ready"]

    run_virtual(scenario)


def test_in_flight_work_is_drained_within_the_timeout_or_cancelled() -> None:
    async def scenario() -> None:
        ran: list[Any] = []

        class Slow(OfflineBot):
            async def on_member_join(self, seconds: float) -> None:
                try:
                    await asyncio.sleep(seconds)
                    ran.append(("done", seconds))
                except asyncio.CancelledError:
                    ran.append(("cancelled", seconds))
                    raise

        bot, switch = Slow(), Switch()
        await bot.prepare()
        install(bot, switch)
        switch.processing = True
        bot.dispatch("member_join", 3.0)
        bot.dispatch("member_join", 10.0)
        start = asyncio.get_running_loop().time()
        await switch.in_flight.settle(until=start + 5, timeout=1)
        assert asyncio.get_running_loop().time() - start == pytest.approx(5)
        assert ran == [("done", 3.0), ("cancelled", 10.0)]

    run_virtual(scenario)


def test_a_cancel_does_not_wait_and_work_released_from_the_drain_is_left_alone() -> None:
    async def scenario() -> None:
        in_flight = InFlight()
        ended: dict[str, str] = {}

        async def work(name: str) -> None:
            try:
                await asyncio.sleep(3)
                ended[name] = "done"
            except asyncio.CancelledError:
                ended[name] = "cancelled"
                raise

        kept, cut = asyncio.create_task(work("kept")), asyncio.create_task(work("cut"))
        await asyncio.sleep(0)  # both started
        in_flight.adopt(kept)
        in_flight.adopt(cut)
        in_flight.release(kept)  # what a command that shuts the bot down does with itself
        assert len(in_flight) == 1
        start = now()
        await in_flight.settle(timeout=5)  # the lease ended: no time given to finish (until: the past)
        assert now() == start and ended == {"cut": "cancelled"}
        await kept
        assert ended["kept"] == "done"

    run_virtual(scenario)


def test_gated_work_gives_its_result_and_the_callers_own_cancellation_goes_on() -> None:
    async def scenario() -> None:
        switch = Switch()
        switch.processing = True

        async def answer() -> int:
            return 42

        assert await run_gated(switch, answer) == 42

        async def forever() -> None:
            await asyncio.Event().wait()

        caller = asyncio.create_task(run_gated(switch, forever))
        await asyncio.sleep(0)
        assert len(switch.in_flight) == 1
        caller.cancel()  # e.g. loop.cancel(): the caller is cancelled, not only the work
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert caller.cancelled()

    run_virtual(scenario)


def test_a_loop_outside_any_attachment_runs_and_a_restarted_loop_is_wrapped_once() -> None:
    async def scenario() -> None:
        bodies: list[str] = []

        @tasks.loop(seconds=1, count=1)
        async def tick() -> None:
            bodies.append("ran")

        original = tick.coro
        await tick.start()  # no current_lease here: not an attachment's loop, so not gated
        await tick.start()  # restarted: wrapped at most once
        assert bodies == ["ran", "ran"]
        assert tick.coro.__wrapped__ is original  # type: ignore[attr-defined]

    contextvars.Context().run(run_virtual, scenario)


def test_an_auto_sharded_bot_is_gated_the_same_way() -> None:
    async def scenario() -> None:
        ran: list[Any] = []
        intents = discord.Intents.default()
        bot = commands.AutoShardedBot(command_prefix="!", intents=intents, shard_count=2)
        switch = Switch()
        await bot._async_setup_hook()
        install(bot, switch)

        @bot.tree.command()
        async def hello(interaction: discord.Interaction) -> None:
            ran.append("/hello")

        bot._connection.application_id = 4242
        bot._connection.parsers["INTERACTION_CREATE"](slash("hello"))
        bot.dispatch("member_join", "m")
        assert ran == []
        switch.processing = True
        bot._connection.parsers["INTERACTION_CREATE"](slash("hello"))
        await switch.in_flight.settle(until=asyncio.get_running_loop().time() + 5, timeout=1)
        assert ran == ["/hello"]

    run_virtual(scenario)


def test_the_discord_py_internals_the_gates_rely_on() -> None:
    """A discord.py upgrade that moves one of these fails here, loudly, before a bot runs ungated."""
    params = list(inspect.signature(discord.Client._schedule_event).parameters)
    assert params[:3] == ["self", "coro", "event_name"]
    assert "_schedule_event" in inspect.getsource(discord.Client.dispatch)
    assert "_schedule_event" in inspect.getsource(commands.Bot.dispatch)  # extra_events (listen, cogs)
    source = inspect.getsource(discord.state.ConnectionState.parse_interaction_create)
    for call in ("_command_tree._from_interaction", "dispatch_view", "dispatch_modal"):
        assert call in source
    assert "parsers[attr[6:].upper()]" in inspect.getsource(discord.state.ConnectionState.__init__)
    assert "self.coro(" in inspect.getsource(tasks.Loop._loop)
    loop_source = inspect.getsource(tasks.Loop._loop)
    assert "_call_loop_function('before_loop')" in loop_source and "_call_loop_function('after_loop')" in loop_source
    assert "getattr(self, '_' + name)" in inspect.getsource(tasks.Loop._call_loop_function)
    assert "ConnectionState(dispatch=self.dispatch" in inspect.getsource(discord.Client._get_state)
    assert "ws._dispatch = client.dispatch" in inspect.getsource(discord.gateway.DiscordWebSocket.from_client)
    assert list(inspect.signature(discord.http.HTTPClient.request).parameters)[:2] == ["self", "route"]
    assert "async_context.get()" in inspect.getsource(discord.InteractionResponse.send_message)
    assert isinstance(app_commands.CommandTree._from_interaction, object)

    class NotDiscordPy:
        _connection = None

    with pytest.raises(IncompatibleDiscordPy):
        install(NotDiscordPy(), Switch())
