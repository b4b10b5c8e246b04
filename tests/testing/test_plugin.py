"""The pytest plugin's fixtures, used the way a bot author would (see docs/testing.md)."""

from __future__ import annotations

from typing import Any

import trio

from urban_robot.supervisor import Notifier, Notify
from urban_robot.testing._plugin import FakeDiscord, SupervisorHarness


async def test_first_runs_newer_takes_over_crash_fails_over(
    urban_robot_supervisor: SupervisorHarness, autojump_clock: Any
) -> None:
    old = await urban_robot_supervisor.worker("1.0")
    await old.wait_for("processing")
    assert await old.write("reminders", ["tea at 5"])
    new = await urban_robot_supervisor.worker("1.1")
    await new.wait_for("processing")
    assert new.cache == {"reminders": ["tea at 5"]} and not old.processing
    standby = await urban_robot_supervisor.worker("1.1")
    await standby.wait_for("cmd:health_check")
    await trio.sleep(1)
    await urban_robot_supervisor.crash(new)
    await standby.wait_for("processing")
    assert urban_robot_supervisor.running == standby.name


async def test_misbehaving_workers(urban_robot_supervisor: SupervisorHarness, autojump_clock: Any) -> None:
    good = await urban_robot_supervisor.worker("1.0")
    await good.wait_for("processing")
    await good.send_raw('42["health_check","not a report"]')  # a bad message: answered with an error
    slow = await urban_robot_supervisor.worker("2.0")
    slow.slow = 60  # answers its health check after the supervisor's 20 s time-out
    _, shutdown = await slow.wait_for("cmd:shutdown")
    assert shutdown["reason"] == "health_check_timeout"
    assert good.processing
    good.hang()
    started = trio.current_time()
    spare = await urban_robot_supervisor.worker("1.0")
    at, _ = await spare.wait_for("processing")
    assert at - started >= 10  # only once the hung holder's lease had run out
    assert any("failed its health check" in n.message for n in urban_robot_supervisor.notes)


async def test_fake_discord_records_messages_and_rate_limits(fake_discord: FakeDiscord, autojump_clock: Any) -> None:
    fake_discord.rate_limit_next = 1
    notifier = Notifier(fake_discord.client, "fake.discord.token", "1234567890")
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.run)
        notifier.notify(Notify("warning", "child-1 crashed"))
        while not fake_discord.messages:
            await trio.sleep(0.1)  # virtual time: the notifier's retry after the 429
        nursery.cancel_scope.cancel()
    assert fake_discord.messages[0][0] == "1234567890"
    assert "child-1 crashed" in fake_discord.messages[0][1]
