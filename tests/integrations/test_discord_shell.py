"""The asyncio shell carries out WorkerProtocol's decisions, on a virtual clock, against an in-memory supervisor.

Sending and answering happen at different instants here (a slow answer is a virtual sleep), so a lease
counted from the answer, or a coma acknowledged before the work in flight ended, fails these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
from typing import Any

import aiohttp
import discord
import pytest
from discord.ext import commands

from urban_robot.integrations.discord import Attachment, BotClosed, Disconnected, DiscordRefused, attach
from urban_robot.protocol import (
    AuthenticationFailed,
    Backoff,
    Endpoint,
    Send,
    StartProcessing,
    StopProcessing,
    Timeouts,
    decode_value,
)

from ._discord_fakes import (
    TOKEN,
    FakeSupervisor,
    OfflineBot,
    Steps,
    hello,
    make_attachment,
    now,
    run_virtual,
    serve_until_processing,
    server_error,
)

RENEWAL = {"epoch": 1, "lease": 15}


def sent(event: str) -> Any:
    return lambda step: isinstance(step, Send) and step.request.message.event == event


async def leave(supervisor: FakeSupervisor, att: Attachment, runner: asyncio.Task[None]) -> None:
    """Shut the worker down, answering the final cache and the shutdown."""
    stopping = asyncio.create_task(att.shutdown("test over"))
    while True:
        emitted = await supervisor.inbox.get()
        if emitted.event in ("cache_sync", "shutdown"):
            emitted.answer({"accepted": True} if emitted.event == "cache_sync" else {})
        if emitted.event == "shutdown":
            break
    await stopping
    await runner


def test_processing_stops_at_the_lease_end_counted_from_the_heartbeat_sending_even_when_the_answer_was_slow() -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        joins: list[tuple[str, float]] = []

        @bot.listen("on_member_join")
        async def greet(seconds: float) -> None:
            try:
                await asyncio.sleep(seconds)
                joins.append(("greeted", now()))
            except asyncio.CancelledError:
                joins.append(("cancelled", now()))
                raise

        att, steps = make_attachment(bot, supervisor)
        runner = asyncio.create_task(att.run())
        beat = await serve_until_processing(supervisor)
        await asyncio.sleep(4)  # the answer is slow: the lease still counts from the sending
        beat.answer(RENEWAL)
        started_at, _ = await steps.wait_for(StartProcessing)
        assert started_at == beat.at + 4 and att.processing
        assert att.lease_ends == beat.at + 15

        await asyncio.sleep(beat.at + 14 - now())
        bot.dispatch("member_join", 0.5)  # finishes in time
        bot.dispatch("member_join", 5.0)  # still running when the lease ends: cancelled
        await asyncio.sleep(beat.at + 14.999 - now())
        assert att.processing  # the next heartbeat (at +10) got no answer; the lease holds until +15
        stopped_at, stop = await steps.wait_for(StopProcessing)
        assert stopped_at == beat.at + 15 and stop == StopProcessing("lease ran out", drain=False)
        assert not att.processing
        assert joins == [("greeted", beat.at + 14.5), ("cancelled", beat.at + 15)]
        bot.dispatch("member_join", 0.0)
        await asyncio.sleep(1)
        assert len(joins) == 2  # nothing runs after the lease ended
        await leave(supervisor, att, runner)

    run_virtual(scenario)


def test_coma_stops_processing_and_drains_work_in_flight_before_the_final_cache_and_the_ack() -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        cache: dict[str, Any] = {"welcomed": []}

        @bot.listen("on_member_join")
        async def welcome(name: str) -> None:
            await asyncio.sleep(12)  # e.g. a slow REST call
            cache["welcomed"].append(name)

        att, steps = make_attachment(bot, supervisor, get_cache=lambda: cache, drain_timeout=30)
        runner = asyncio.create_task(att.run())
        grant = await serve_until_processing(supervisor)
        grant.answer(RENEWAL)
        await steps.wait_for(StartProcessing)
        began = now()
        bot.dispatch("member_join", "alice")
        await asyncio.sleep(1)
        supervisor.cmd("coma", reason="newer version", cache_sync=True)
        assert not att.processing  # from this instant
        bot.dispatch("member_join", "bob")  # not admitted
        beat = await supervisor.next("heartbeat")  # the drain does not hold up the heartbeats
        assert beat.at == grant.at + 10 and beat.data == {"epoch": None, "gateway": True}
        beat.answer({})
        final = await supervisor.next("cache_sync")
        assert final.at == began + 12  # written when alice's welcome had finished, not before
        assert decode_value(final.data["set"][""]) == {"welcomed": ["alice"]} and final.data["full"] is True
        final.answer({"accepted": True})
        ack = await supervisor.next("coma")
        assert ack.at == began + 12 and ack.data == {"reason": "newer version"}
        ack.answer({})
        (_, stop) = await steps.wait_for(StopProcessing)
        assert stop.drain is True
        await asyncio.sleep(15)
        assert cache["welcomed"] == ["alice"]
        await leave(supervisor, att, runner)

    run_virtual(scenario)


def test_a_drain_never_outlives_the_lease_view_whatever_the_drain_timeout() -> None:
    """Red team finding 1: a coma 3 s before the lease view ends, work that needs 12 s, drain_timeout 30 s:
    the work is cancelled when the view ends (§8.1 rule 3), and only then are the final cache and the ack sent."""

    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        ran: list[tuple[str, float]] = []

        @bot.listen("on_member_join")
        async def welcome(name: str) -> None:
            try:
                await asyncio.sleep(12)
                ran.append(("welcomed", now()))
            except asyncio.CancelledError:
                ran.append(("cancelled", now()))
                raise

        att, steps = make_attachment(bot, supervisor, get_cache=lambda: {}, drain_timeout=30)
        runner = asyncio.create_task(att.run())
        grant = await serve_until_processing(supervisor)
        grant.answer(RENEWAL)
        await steps.wait_for(StartProcessing)
        ends = grant.at + 15
        assert att.lease_ends == ends
        await asyncio.sleep(ends - 3 - now())  # the next heartbeat (at +10) goes unanswered: no renewal
        bot.dispatch("member_join", "alice")
        supervisor.cmd("coma", reason="gateway down", cache_sync=True)
        assert att.acting and not att.processing  # draining: its work may still write to Discord
        (_, stop) = await steps.wait_for(StopProcessing)
        assert stop == StopProcessing("coma", drain=True, lease_ends=ends)
        async with asyncio.timeout(60):  # virtual seconds
            final = await supervisor.skip_until("cache_sync")
        assert final.at == ends and ran == [("cancelled", ends)]  # not at now + 30, not at alice's + 12
        assert not att.acting  # drained: no write to Discord from here on (the HTTP gate refuses it)
        final.answer({"accepted": True})
        (await supervisor.next("coma")).answer({})
        await leave(supervisor, att, runner)


def test_a_run_cancelled_from_outside_stops_processing_cancels_the_work_and_closes_the_bot() -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        ended: list[tuple[str, float]] = []

        @bot.listen("on_member_join")
        async def greet(seconds: float) -> None:
            try:
                await asyncio.sleep(seconds)
                ended.append(("greeted", now()))
            except asyncio.CancelledError:
                ended.append(("cancelled", now()))
                raise

        att, steps = make_attachment(bot, supervisor)
        runner = asyncio.create_task(att.run())
        beat = await serve_until_processing(supervisor)
        beat.answer(RENEWAL)
        await steps.wait_for(StartProcessing)
        bot.dispatch("member_join", 5.0)
        await asyncio.sleep(1)
        cancelled_at = now()
        runner.cancel()  # e.g. the program's own task group ends, well within the lease
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert att.lease_ends > now() and not att.processing  # the attachment is gone: no more work
        assert ended == [("cancelled", cancelled_at)]  # cancelled at once, not drained
        assert bot.is_closed()
        async with asyncio.timeout(1):
            await att.shutdown("too late")  # after the run: nothing to wait for

    run_virtual(scenario)


def test_a_listener_that_shuts_the_bot_down_is_not_drained_and_returns_once_the_shutdown_is_answered() -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        returned: list[float] = []

        @bot.listen("on_member_join")
        async def farewell(name: str) -> None:
            await att.shutdown(f"asked by {name}")
            returned.append(now())

        att, steps = make_attachment(bot, supervisor, drain_timeout=30)
        runner = asyncio.create_task(att.run())
        beat = await serve_until_processing(supervisor)
        beat.answer(RENEWAL)
        await steps.wait_for(StartProcessing)
        asked = now()
        bot.dispatch("member_join", "alice")
        while (emitted := await supervisor.inbox.get()).event != "shutdown":
            emitted.answer({"accepted": True} if emitted.event == "cache_sync" else {})
        assert emitted.at == asked  # its own drain did not wait for it (30 s, then a cancel)
        await asyncio.sleep(3)
        assert returned == []  # shutdown() waits for the answer...
        emitted.answer({})
        await runner
        assert returned == [asked + 3]  # ...and was not cancelled as work in flight

    run_virtual(scenario)


def test_transient_login_errors_are_retried_with_the_protocol_backoff() -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        bot.login_errors = [server_error(503), aiohttp.ClientConnectionError("reset"), OSError("unreachable")]
        att, _ = make_attachment(bot, supervisor, backoff=Backoff(initial=1.0, factor=2.0, cap=30, jitter=0))
        runner = asyncio.create_task(att.run())
        (await supervisor.next("identify")).answer(hello())
        await supervisor.skip_until("ready")  # logged in at last
        first = bot.logins[0]
        assert [t - first for t in bot.logins] == [0, 1, 3, 7]  # waits of 1, 2, 4 s
        assert bot.tokens == [TOKEN] * 4
        await leave(supervisor, att, runner)

    run_virtual(scenario)


@pytest.mark.slow
def test_real_discord_py_login_is_retried_with_a_fresh_session_each_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """discord.py's own login against an unreachable Discord: retried, never 'Session is closed', nothing leaked."""
    with socket.socket() as nobody:
        nobody.bind(("127.0.0.1", 0))
        port = nobody.getsockname()[1]
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")

    async def scenario() -> list[str]:
        complaints: list[str] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: complaints.append(context["message"]))
        supervisor = FakeSupervisor()
        bot = commands.Bot(command_prefix="!", intents=discord.Intents.default())
        att, _ = make_attachment(bot, supervisor, backoff=Backoff(initial=0.01, cap=0.02))
        runner = asyncio.create_task(att.run())
        (await supervisor.next("identify")).answer(hello(interval=0.05))
        while caplog.text.count("logging in to Discord failed") < 3 and "Discord refused" not in caplog.text:
            emitted = await supervisor.inbox.get()  # heartbeats every 50 ms: no renewal
            emitted.answer({})
        stopping = asyncio.create_task(att.shutdown("enough"))
        if "Discord refused" not in caplog.text:
            (await supervisor.skip_until("shutdown")).answer({})
        await stopping
        with contextlib.suppress(DiscordRefused):
            await runner
        gc.collect()
        await asyncio.sleep(0)
        return complaints

    assert asyncio.run(scenario()) == []
    failures = [r.getMessage() for r in caplog.records if "logging in to Discord failed" in r.getMessage()]
    assert len(failures) >= 3 and all("cannot reach Discord (ClientConnectorError" in f for f in failures)


@pytest.mark.parametrize(
    ("error", "where", "reason", "hint"),
    [
        (discord.LoginFailure("Improper token"), "login", "Discord refused the token", "reset it"),
        (discord.PrivilegedIntentsRequired(None), "connect", "privileged intents", "the Message Content intent"),
        (discord.ConnectionClosed(None, shard_id=None, code=4004), "connect", "4004", "update BOT_TOKEN"),  # type: ignore[arg-type]
        (discord.ConnectionClosed(None, shard_id=None, code=4013), "connect", "invalid intents", "discord.Intents"),  # type: ignore[arg-type]
    ],
)
def test_a_permanent_discord_refusal_ends_the_worker_as_a_failure_with_what_to_do(
    error: Exception, where: str, reason: str, hint: str
) -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        if where == "login":
            bot.login_errors = [error]
        else:
            bot.connect_error = error
        att, steps = make_attachment(bot, supervisor)
        runner = asyncio.create_task(att.run())
        (await supervisor.next("identify")).answer(hello())
        failed = await supervisor.next("failed")
        assert reason in failed.data["reason"] and hint in failed.data["hint"]
        failed.answer({})
        with pytest.raises(DiscordRefused, match=reason):
            await runner
        assert len(bot.tokens) == 1  # not retried
        assert bot.is_closed() and steps.of(BotClosed)

    run_virtual(scenario)


def test_the_heartbeat_says_at_once_when_the_gateway_goes_down_and_comes_back() -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        att, _ = make_attachment(bot, supervisor)
        runner = asyncio.create_task(att.run())
        (await serve_until_processing(supervisor)).answer(RENEWAL)
        await asyncio.sleep(2)
        bot.dispatch("disconnect")  # discord.py lost the Gateway; these listeners run everywhere
        down = await supervisor.next("heartbeat")
        assert down.data == {"epoch": 1, "gateway": False} and down.at == now()
        down.answer(RENEWAL)
        bot.dispatch("resumed")
        up = await supervisor.next("heartbeat")
        assert up.data == {"epoch": 1, "gateway": True}
        up.answer(RENEWAL)
        await leave(supervisor, att, runner)

    run_virtual(scenario)


def test_sigterm_shuts_down_cleanly_and_a_second_one_does_not_break_the_cleanup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        att, steps = make_attachment(bot, supervisor, get_cache=lambda: {"n": 1})
        runner = asyncio.create_task(att._run_with_signals())
        (await serve_until_processing(supervisor)).answer(RENEWAL)
        await steps.wait_for(StartProcessing)
        os.kill(os.getpid(), signal.SIGTERM)
        final = await supervisor.skip_until("cache_sync")  # we held the lease: the cache goes first
        assert not att.processing
        os.kill(os.getpid(), signal.SIGTERM)  # impatient: a second signal while stopping
        final.answer({"accepted": True})
        goodbye = await supervisor.next("shutdown")
        assert goodbye.data == {"reason": "SIGTERM"}
        goodbye.answer({})
        await runner
        assert bot.close_calls == 1 and bot.is_closed()
        assert isinstance(steps.seen[-1][1], BotClosed)

    run_virtual(scenario)
    assert "SIGTERM while stopping (SIGTERM): still stopping cleanly" in caplog.text


def test_a_refused_secret_ends_run_with_authentication_failed() -> None:
    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), OfflineBot()
        supervisor.refuse = {"message": "authentication failed"}
        att, _ = make_attachment(bot, supervisor)
        with pytest.raises(AuthenticationFailed):
            await att.run()
        assert len(supervisor.connects) == 1 and bot.tokens == []

    run_virtual(scenario)


def test_run_forever_exits_non_zero_when_discord_refuses_the_bot() -> None:
    class Answering(FakeSupervisor):
        """Answers everything at once: identify with hello, the rest with {}."""

        def __init__(self) -> None:
            super().__init__()
            self.events: list[str] = []

        @property
        def inbox(self) -> Any:
            return self

        @inbox.setter
        def inbox(self, _: Any) -> None:
            pass

        def put_nowait(self, emitted: Any) -> None:
            self.events.append(emitted.event)
            answer = hello() if emitted.event == "identify" else {}
            asyncio.get_running_loop().call_soon(emitted.answer, answer)

    supervisor, bot = Answering(), OfflineBot()
    bot.login_errors = [discord.LoginFailure("Improper token")]
    att = Attachment(bot, Endpoint("http://127.0.0.1:1", "s"), version="1.0", client=supervisor.open_client)
    with pytest.raises(SystemExit) as exit_:
        att.run_forever()
    assert exit_.value.code == 1
    assert supervisor.events == ["identify", "failed"]


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["nobody listening", "TCP, never a word", "Engine.IO, never a CONNECT answer"])
def test_failed_connections_to_the_supervisor_close_everything_they_opened(peer: str) -> None:
    """Real python-socketio on aiohttp, refused or timed out three times: no 'Unclosed client session'."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        if peer == "TCP, never a word":
            server.listen(8)  # the kernel accepts; nobody answers
            asyncio.run(attempts(port))
            return
    if peer == "nobody listening":
        asyncio.run(attempts(port))
    else:
        asyncio.run(attempts_against_a_mute_engineio())


async def attempts_against_a_mute_engineio() -> None:
    """An Engine.IO server that opens the session and then ignores the Socket.IO CONNECT (a hung supervisor)."""
    from aiohttp import web

    async def socket_io(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str('0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}')
        async for _ in ws:  # the CONNECT packet: no answer
            pass
        return ws

    app = web.Application()
    app.router.add_get("/socket.io/", socket_io)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        await attempts(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def attempts(port: int) -> None:
    complaints: list[str] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: complaints.append(context["message"]))
    steps = Steps()
    att = Attachment(
        OfflineBot(),
        Endpoint(f"http://127.0.0.1:{port}", "s"),
        version="1.0",
        observer=steps,
        backoff=Backoff(initial=0.01, cap=0.02),
        timeouts=Timeouts(connect=0.1, handshake=0.1),
    )
    runner = asyncio.create_task(att.run())
    await steps.wait_until(lambda: len(steps.of(Disconnected)) >= 3)
    await att.shutdown("enough")
    await runner
    gc.collect()
    await asyncio.sleep(0)
    assert complaints == []
    leaked = aiohttp.ClientSession()  # and the detector works: an unclosed session is reported
    del leaked
    gc.collect()
    await asyncio.sleep(0)
    assert any("Unclosed client session" in c for c in complaints)


def test_attach_reads_the_environment_and_keeps_a_configuration_error_for_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from urban_robot.integrations.discord import AttachError
    from urban_robot.protocol import ConfigError

    for name in ("URBAN_ROBOT_URL", "URBAN_ROBOT_SECRET", "URBAN_ROBOT_GENERATION", "URBAN_ROBOT_DISCORD_URL"):
        monkeypatch.delenv(name, raising=False)
    att = attach(OfflineBot(), version="1.0")  # started by hand: no traceback at the attach line
    assert isinstance(att.problem, AttachError) and "URBAN_ROBOT_URL" in str(att.problem)
    assert AttachError is ConfigError
    with pytest.raises(ConfigError, match="URBAN_ROBOT_URL"):
        asyncio.run(att.run())
    monkeypatch.setenv("URBAN_ROBOT_URL", "http://127.0.0.1:1")
    assert "URBAN_ROBOT_SECRET" in str(attach(OfflineBot(), version="1.0").problem)
    monkeypatch.setenv("URBAN_ROBOT_SECRET", "child-1.abc")
    monkeypatch.setenv("URBAN_ROBOT_GENERATION", "7")
    att = attach(OfflineBot(), version="1.0")
    assert att.problem is None
    assert att.endpoint.url == "http://127.0.0.1:1" and att.endpoint.generation == 7
    assert "child-1.abc" not in repr(att)


BY_HAND = """
import discord
from discord.ext import commands
from urban_robot.integrations.discord import attach

bot = commands.Bot(command_prefix="!", intents=discord.Intents.default())
attach(bot, version="1.0").run_forever()
"""


def test_a_bot_run_by_hand_says_in_one_line_how_to_start_it(tmp_path: Any) -> None:
    """Red team finding 11: ``python main.py`` without the supervisor: one line, exit status 2, no traceback."""
    import subprocess
    import sys

    (tmp_path / "main.py").write_text(BY_HAND)
    env = {k: v for k, v in os.environ.items() if not k.startswith("URBAN_ROBOT")}
    done = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert "URBAN_ROBOT_URL" in done.stderr and "python -m urban_robot" in done.stderr
    assert "README step 4" in done.stderr and "Traceback" not in done.stderr


def test_default_vital_cogs_are_the_seeds_for_a_bot_and_none_for_a_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URBAN_ROBOT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("URBAN_ROBOT_SECRET", "child-1.abc")
    monkeypatch.delenv("URBAN_ROBOT_DISCORD_URL", raising=False)
    assert attach(OfflineBot(), version="1.0").vital_cogs == ("modules.utilities",)
    client = attach(discord.Client(intents=discord.Intents.default()), version="1.0")
    assert client.vital_cogs == () and client.problem is None
    assert client.health_report() == {"OK": True, "percent": 100.0, "cogs": {}}
    again = attach(client.bot, version="1.0")  # attached twice: said, not raised
    assert again.problem is not None and "once" in str(again.problem)


def test_health_report_shape() -> None:
    bot = OfflineBot(extensions=("modules.utilities", "modules.fun", "modules.music"))
    att = Attachment(bot, Endpoint("http://127.0.0.1:1", "s"), version="1.0", vital_cogs=("modules.utilities", "x"))
    assert att.health_report() == {
        "OK": False,
        "percent": 75.0,
        "cogs": {"modules.utilities": True, "modules.fun": True, "modules.music": True, "x": False},
    }
