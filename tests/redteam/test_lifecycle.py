"""Faults around one bot under the real supervisor: signals, refused logins, outages, pauses, slow drains."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from ._harness import Fake, Supervisor, client_of, supervised, wait_until

pytest.importorskip("discord")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

BOT = """
class Probe(commands.Bot):
    async def setup_hook(self):
        await self.load_extension("modules.utilities")


bot = Probe(command_prefix="!", intents=intents, guild_ready_timeout=0.1)
attachment = attach(bot, version=VERSION, drain_timeout=float(os.environ.get("PROBE_DRAIN", "5")))


@bot.command()
async def slow(ctx, seconds: float):
    await asyncio.sleep(seconds)
    await ctx.send(f"slow done after {seconds}")


attachment.run_forever()
"""

FAST = {"URBAN_ROBOT_WORKERS_INTERVAL": "2", "URBAN_ROBOT_WORKERS_GRACE": "1"}  # lease 3 s, margin 5 s


def _pongs(fake: Fake) -> list[dict]:
    return fake.posts(prefix="Pong!")


def test_a_worker_killed_with_sigterm_is_replaced(tmp_path: Path) -> None:
    with supervised(tmp_path, BOT) as (_fake, supervisor):
        holder, _ = supervisor.two_up()
        os.kill(holder["pid"], signal.SIGTERM)
        wait_until(lambda: supervisor.holder()["pid"] != holder["pid"], 30, "failover")
        time.sleep(8)
        workers = supervisor.status()["workers"]
        assert len(workers) == 2, workers


def test_bad_token_fails_loudly_with_a_hint_and_counts(tmp_path: Path) -> None:
    """What held up: a refused token is `failed`, counted, shown in status, logged CRITICAL with the fix."""
    with supervised(tmp_path, BOT, token="not-the-token") as (_fake, supervisor):
        failures = wait_until(lambda: supervisor.status().get("failures"), 40, "failures in status")
        assert "BOT_TOKEN" in failures[0]["hint"]
        wait_until(lambda: "CRITICAL" in supervisor.output(), 20, "a CRITICAL log line")
        line = next(x for x in supervisor.output().splitlines() if "CRITICAL" in x)
        assert "token" in line and "BOT_TOKEN" in line, line


@pytest.mark.xfail(
    strict=True,
    reason="the critical 'token refused' notification goes to LOGGING_CHANNEL through "
    "Discord with the same refused BOT_TOKEN: it can never arrive (401), so the operator watching "
    "Discord hears nothing; issue 11 promised 'the bad token ends in a notification, not silence'",
)
def test_bad_token_notification_reaches_the_operator(tmp_path: Path) -> None:
    with supervised(tmp_path, BOT, token="not-the-token") as (fake, supervisor):
        wait_until(lambda: supervisor.status().get("failures"), 40, "failures in status")
        time.sleep(5)
        assert fake.posts(channel=fake.bot_log), supervisor.output()[-3000:]


def test_refused_intent_names_the_intent(tmp_path: Path) -> None:
    """What held up: close 4014 is `failed`, notified with 'enable the Message Content intent and the Server
    Members intent'."""
    with supervised(tmp_path, BOT, intents="") as (fake, _supervisor):
        wait_until(lambda: fake.posts(channel=fake.bot_log), 40, "a notification")
        text = " ".join(p["content"] for p in fake.posts(channel=fake.bot_log))
        assert "Message Content intent" in text and "Server Members intent" in text, text


def test_transient_503_at_login_is_retried(tmp_path: Path) -> None:
    """What held up: three 503s on GET /users/@me are retried inside the worker; both workers come up."""
    fake = Fake(tmp_path)
    fake.do("faults", route="GET /users/@me", count=3, status=503)
    supervisor = Supervisor(tmp_path, fake, BOT)
    try:
        supervisor.two_up(60)
        assert not supervisor.status().get("failures")
    finally:
        supervisor.close()
        fake.close()


def test_gateway_outage_of_the_holder_moves_the_lease_within_the_limit(tmp_path: Path) -> None:
    """What held up: an 8 s outage of the holder's Gateway; the standby answers within
    gateway_down_limit (3 s) + 1 s, and the old holder answers nothing after that."""
    with supervised(tmp_path, BOT) as (fake, supervisor):
        holder, standby = supervisor.two_up()
        start = time.time()
        fake.do("gateway/outage", seconds=8, client=client_of(holder))
        while time.time() - start < 6:
            fake.do("messages", content="!ping", author="bob")
            time.sleep(0.2)
        time.sleep(1)
        pongs = [p for p in _pongs(fake) if p["at"] > start]
        by_standby = [p["at"] for p in pongs if p["client"] == client_of(standby)]
        assert by_standby and by_standby[0] - start < 4.0, (by_standby[:1], start)
        assert not [p for p in pongs if p["client"] == client_of(holder) and p["at"] > by_standby[0]]


def test_a_drain_never_outlives_the_lease(tmp_path: Path) -> None:
    env = {**FAST, "PROBE_DRAIN": "15"}  # attach(drain_timeout=15): the docs offer the knob, nothing bounds it
    with supervised(tmp_path, BOT, env=env) as (fake, supervisor):
        holder, standby = supervisor.two_up()
        fake.do("messages", content="!slow 12", author="bob")
        asked = time.time()
        time.sleep(0.5)
        fake.do("gateway/outage", seconds=30, client=client_of(holder))  # -> coma after 3 s -> drain

        def by_standby() -> list[dict]:
            return [p for p in _pongs(fake) if p["client"] == client_of(standby)]

        # Until the slow command would have finished (12 s) and the standby answers; the work may be cancelled
        # (it is, at the lease end), so "slow done" is not waited for.
        while time.time() < asked + 14 or not by_standby():
            fake.do("messages", content="!ping", author="bob")
            time.sleep(0.3)
            assert time.time() < asked + 60, "the standby never answered"
        slow = fake.posts(prefix="slow done")
        # correct: the old holder's work ends before the new holder's first answer (here: cancelled, never posted)
        assert not slow or slow[0]["at"] < by_standby()[0]["at"], (slow, by_standby()[:1])


def test_a_paused_holder_does_not_act_after_the_standby_took_over(tmp_path: Path) -> None:
    """What held up (here): a SIGSTOPped holder with a command in flight, resumed after the failover, did not post."""
    with supervised(tmp_path, BOT, env=FAST) as (fake, supervisor):
        holder, standby = supervisor.two_up()
        fake.do("messages", content="!slow 1", author="bob")
        time.sleep(0.3)
        os.kill(holder["pid"], signal.SIGSTOP)
        try:
            wait_until(lambda: supervisor.holder(30)["pid"] == standby["pid"], 30, "the standby promoted")
            fake.do("messages", content="!ping", author="bob")
            first = wait_until(lambda: [p for p in _pongs(fake) if p["client"] == client_of(standby)], 10, "a pong")[0]
        finally:
            with contextlib.suppress(ProcessLookupError):  # main's hang failover may have killed the frozen holder
                os.kill(holder["pid"], signal.SIGCONT)
        time.sleep(3)
        late = [p for p in fake.posts(prefix="slow done") if p["at"] > first["at"]]
        assert not late, late


def test_no_leaked_sessions_across_supervisor_restarts(tmp_path: Path) -> None:
    """What held up: the supervisor SIGKILLed for 6 s (workers retry and fail), then restarted; the workers
    reconnect, the holder is adopted, and no 'Unclosed client session'/'Unclosed connector' in their output."""
    import subprocess
    import sys

    with supervised(tmp_path, BOT, env=FAST) as (fake, supervisor):
        holder, standby = supervisor.two_up()
        os.killpg(supervisor.process.pid, signal.SIGKILL)
        supervisor.process.wait()
        time.sleep(6)
        supervisor.process = subprocess.Popen(
            [sys.executable, "-m", "urban_robot"],
            cwd=tmp_path,
            env=supervisor.env,
            stdout=supervisor.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        again = supervisor.holder(40)
        # Adopted, or (when its reconnect back-off outlasted the restored lease) the standby: no new process either way
        assert again["pid"] in {holder["pid"], standby["pid"]}
        fake.do("messages", content="!ping", author="bob")
        wait_until(lambda: len(_pongs(fake)) >= 1, 10, "a pong")
        logs = supervisor.worker_logs()
        assert "connection to the supervisor lost" in logs
        assert "Unclosed" not in logs, [x for x in logs.splitlines() if "Unclosed" in x][:3]
