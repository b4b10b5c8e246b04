"""On the wire, with the real supervisor: Gateway health, ``failed``, and seeds-era workers told what v1 wants."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests._helpers import child_secret, raw_client
from tests.supervisor.test_service import Harness
from urban_robot.supervisor import Notify, ProcessExited
from urban_robot.supervisor._core import HEALTH_REPORT_FIX
from urban_robot.supervisor._service import AUTH_HINT
from urban_robot.testing import SimulatedWorker

REFUSED = {"reason": "the token was refused", "hint": "reset it in the developer portal and update BOT_TOKEN"}


@pytest.fixture
async def harness(nursery: trio.Nursery, tmp_path: Path) -> Harness:
    h = Harness(nursery, tmp_path / "state")
    await h.start()
    return h


async def pair(harness: Harness) -> tuple[SimulatedWorker, SimulatedWorker]:
    """A holder ``a`` (processing) and an approved standby ``b``."""
    a = await harness.worker()
    await a.wait_for("processing")
    b = await harness.worker()
    await b.wait_for("cmd:health_check")
    await trio.testing.wait_all_tasks_blocked()
    return a, b


# -- the Gateway -------------------------------------------------------------------------------------------------
async def test_a_holder_whose_gateway_stays_down_hands_over_on_time(harness: Harness, autojump_clock: Any) -> None:
    a, b = await pair(harness)
    assert await a.write("k", 1)
    down_at = trio.current_time()
    assert await a._emit("heartbeat", {"epoch": a.granted, "gateway": False}) == {"epoch": 1, "lease": 15}
    coma_at, coma = await a.wait_for("cmd:coma")
    limit = harness.settings.gateway_down_limit
    assert coma_at - down_at == pytest.approx(limit)  # at the limit, from the supervisor's timer, not a later event
    assert coma == {"reason": f"gateway down for {limit:.1f} s: hand-over to child-2", "cache_sync": True}
    started, _ = await b.wait_for("processing")
    assert started - coma_at < 0.01  # one round trip and the cache
    assert b.cache == {"k": 1}
    assert harness.robot is not None
    status = {w["identity"]: w for w in harness.robot.status()["workers"]}
    assert status["child-1"]["gateway"] is False and status["child-1"]["gateway_down_for"] >= limit
    assert status["child-2"]["gateway"] is None  # never said: counted as up


async def test_a_holder_whose_gateway_comes_back_in_time_keeps_the_lease(harness: Harness, autojump_clock: Any) -> None:
    a, b = await pair(harness)
    await a._emit("heartbeat", {"epoch": a.granted, "gateway": False})
    await trio.sleep(harness.settings.gateway_down_limit - 0.5)
    await a._emit("heartbeat", {"epoch": a.granted, "gateway": True})
    await trio.sleep(60)
    assert a.processing and not b.processing
    assert not [name for _, name, _ in a.log if name == "cmd:coma"]


# -- failed ------------------------------------------------------------------------------------------------------
async def test_a_failed_holder_is_replaced_at_once_and_its_failure_shown(harness: Harness, autojump_clock: Any) -> None:
    a, b = await pair(harness)
    assert harness.robot is not None
    notes: list[Notify] = []
    harness.robot.bus.subscribe(Notify, notes.append)
    failed_at = trio.current_time()
    a.granted, a.processing_until = None, -1.0  # it stopped processing before it said so (§5.9)
    assert await a._emit("failed", REFUSED) == {}
    started, _ = await b.wait_for("processing")
    assert started - failed_at < 0.01
    [failure] = harness.robot.status()["failures"]
    assert failure["identity"] == "child-1" and failure["reason"] == REFUSED["reason"]
    assert failure["hint"] == REFUSED["hint"]
    assert [n.level for n in notes if "cannot work" in n.message] == ["critical"]
    await harness.robot.submit(ProcessExited("child-1", 1))
    assert harness.robot.core.losses  # its exit is a crash


# -- the seeds' protocol, kindly refused -----------------------------------------------------------------------------
async def test_connect_without_a_secret_is_told_how_a_wrong_secret_is_not(
    harness: Harness, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "urban_robot.supervisor")
    for auth in (None, {}, {"token": "x"}, {"secret": ""}):
        async with raw_client(harness.url) as client:
            await client.send("40" + ("" if auth is None else json.dumps(auth)))
            refusal = await client.receive()
        assert isinstance(refusal, str) and refusal.startswith("44")
        assert json.loads(refusal[2:]) == {"message": "authentication failed", "data": {"hint": AUTH_HINT}}
    async with raw_client(harness.url) as client:
        await client.send('40{"secret":"child-9.forged"}')
        assert await client.receive() == '44{"message":"authentication failed"}'  # an attacker learns nothing
    refusals = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    # strangers: no WARNING flood, and one line per kind per 10 s (docs/security.md): one "no secret", one "bad"
    assert len(refusals) == 2 and all(r.levelno == logging.INFO for r in refusals)


async def test_a_holder_heartbeat_without_epoch_is_refused_with_the_fix(
    harness: Harness, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = await pair(harness)
    fix = 'heartbeat needs {"epoch": 1}: the epoch of the grant from cmd process_commands (protocol v1 §5.2)'
    assert await a._emit("heartbeat", {}) == {"epoch": 1, "lease": 0}  # the first may have crossed the grant
    for _ in range(3):
        assert await a._emit("heartbeat", {}) == {"epoch": 1, "lease": 0, "error": fix}
        assert await a._emit("heartbeat", {"epoch": None}) == {"epoch": 1, "lease": 0, "error": fix}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "without its epoch" in r.getMessage()]
    assert len(warnings) == 1  # once per connection


async def test_a_bare_ok_report_fails_at_once_and_is_told_the_fix(harness: Harness, autojump_clock: Any) -> None:
    a = await harness.worker()
    await a.wait_for("processing")
    bad = await harness.worker("2.0", health="OK")
    asked_at, _ = await bad.wait_for("cmd:health_check")
    shutdown_at, shutdown = await bad.wait_for("cmd:shutdown")
    assert shutdown["reason"] == "health_check_malformed"
    assert shutdown_at - asked_at < 0.01  # the verdict, not a 20 s time-out


async def test_a_bare_ok_report_answer_names_the_fix(harness: Harness, autojump_clock: Any) -> None:
    assert harness.robot is not None
    answers: list[Any] = []
    answered = trio.Event()

    class Answering(SimulatedWorker):
        async def _emit(self, event: str, data: Any) -> Any:
            answer = await super()._emit(event, data)
            if event == "health_check":
                answers.append(answer)
                answered.set()
            return answer

    worker = Answering(harness.url, child_secret(harness.credentials, "child-7"), health="OK", name="child-7")
    await harness.nursery.start(worker.run)
    await worker.wait_for("cmd:shutdown")  # the verdict's push may come before the report's ack (§2.1)
    await answered.wait()
    assert answers == [{"error": HEALTH_REPORT_FIX}]


async def test_a_child_without_generation_gets_the_one_it_was_spawned_with(
    harness: Harness, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert harness.robot is not None
    harness.credentials.bind("child-1", generation=4)  # what the process manager spawned it as
    a = await harness.worker()  # sends no generation, as a seeds-era bot
    _, hello = await a.wait_for("hello")
    assert "send URBAN_ROBOT_GENERATION" in hello["warning"]
    await a.wait_for("processing")
    [worker] = harness.robot.status()["workers"]
    assert worker["generation"] == 4
    assert [r.levelno for r in caplog.records if "URBAN_ROBOT_GENERATION" in r.getMessage()] == [logging.WARNING]


async def test_a_child_claiming_a_newer_generation_does_not_outrank_a_deploy(
    harness: Harness, autojump_clock: Any
) -> None:
    assert harness.robot is not None
    harness.credentials.bind("child-1", generation=3)  # what the process manager spawned them as
    harness.credentials.bind("child-2", generation=2)
    deployed = SimulatedWorker(harness.url, child_secret(harness.credentials, "child-1"), generation=3, name="child-1")
    await harness.nursery.start(deployed.run)
    await deployed.wait_for("processing")
    harness.count = 1
    liar = SimulatedWorker(harness.url, child_secret(harness.credentials, "child-2"), generation=99, name="child-2")
    await harness.nursery.start(liar.run)
    await liar.wait_for("cmd:health_check")
    await trio.sleep(30)
    assert deployed.processing and not liar.processing
    assert {w["identity"]: w["generation"] for w in harness.robot.status()["workers"]} == {"child-1": 3, "child-2": 2}
