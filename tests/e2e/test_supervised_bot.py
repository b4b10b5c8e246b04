"""examples/discord_bot, unchanged, under the real supervisor against the fake Discord, through faults.

Each test sends a steady stream of every kind of input the bot answers (``_harness.EXAMPLE_PROFILE``: ``!ping``,
a slash command, a persistent button and select, a modal, member joins), injects one fault, and asserts:
nothing answered twice; anything unanswered lies in a gap that meets the fault (see
``urban_robot.testing.traffic`` for the definitions); the gap is bounded. The figures are printed
(``pytest -s``) so they can be quoted.

``URBAN_ROBOT_E2E_BOT=self-test`` runs ``every_entry_point/`` (a bot that gates each entry point by hand)
instead of the example: the harness's own check while the example lacks some kinds of entry point.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import trio

from urban_robot.testing.traffic import Verdict

from ._harness import EXAMPLE, EXAMPLE_PROFILE, SELF_TEST_BOT, SELF_TEST_PROFILE, Stack, missing, running_stack

pytest.importorskip("discord")

SELF_TEST = os.environ.get("URBAN_ROBOT_E2E_BOT") == "self-test"
BOT, PROFILE = (SELF_TEST_BOT, SELF_TEST_PROFILE) if SELF_TEST else (EXAMPLE, EXAMPLE_PROFILE)
LACKING = missing(BOT, PROFILE)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.xfail(
        bool(LACKING), strict=True, reason=f"examples/discord_bot does not answer yet: {', '.join(LACKING)}"
    ),
]


def report(label: str, verdict: Verdict, stack: Stack) -> None:
    no_lease = stack.no_lease(stack.traffic_start, time.time())
    print(f"\n{verdict.line(label)}; longest time without a confirmed holder (status polls): {no_lease:.2f} s")


def assert_promises(verdict: Verdict, *, longest_gap: float) -> None:
    assert verdict.doubles == [], verdict.doubles[:5]
    assert verdict.unexplained == [], verdict.unexplained[:10]
    assert verdict.longest_gap <= longest_gap, verdict.gaps
    assert all(verdict.once.values()), verdict.once  # every kind was answered (before or after the fault)


async def test_steady_state(tmp_path: Path) -> None:
    async with running_stack(tmp_path, source=BOT) as stack:
        await stack.steady()
        traffic = stack.traffic(PROFILE)
        await traffic.run(2 * 3.0)
        verdict = await stack.settle(traffic.items, PROFILE)
        report("steady", verdict, stack)
        assert_promises(verdict, longest_gap=0.0)
        assert verdict.unanswered == {kind: 0 for kind in PROFILE.kinds}
        if PROFILE.loop:
            assert verdict.loop_posts > 0 and verdict.loop_switches == 0


async def test_sigkill_of_the_holder(tmp_path: Path) -> None:
    async with running_stack(tmp_path, source=BOT) as stack:
        await stack.steady()

        async def kill() -> None:
            identity, pid = stack.holder()
            os.kill(pid, signal.SIGKILL)
            await stack.new_holder(identity)

        verdict = await stack.through(PROFILE, "SIGKILL holder", kill)
        report("SIGKILL holder", verdict, stack)
        assert_promises(verdict, longest_gap=3.0)


async def test_sigstop_of_the_holder(tmp_path: Path) -> None:
    async with running_stack(tmp_path, source=BOT) as stack:
        await stack.steady()

        killed: list[bool] = []

        async def hang() -> None:
            identity, pid = stack.holder()
            os.kill(pid, signal.SIGSTOP)
            try:
                await stack.new_holder(identity)  # the kernel said it is stopped: SIGKILLed, released on its exit
            finally:
                try:
                    os.kill(pid, signal.SIGCONT)  # were it alive, it would wake with events queued: not to act
                    killed.append(False)
                except ProcessLookupError:
                    killed.append(True)

        verdict = await stack.through(PROFILE, "SIGSTOP holder", hang)
        report("SIGSTOP holder", verdict, stack)
        assert killed == [True]  # a frozen child is fenced by the kernel (SIGKILL), not by waiting out its lease
        assert_promises(verdict, longest_gap=5.0)


async def test_deploy_hands_over_with_the_cache(tmp_path: Path) -> None:
    async with running_stack(tmp_path, source=BOT) as stack:
        await stack.steady()
        asked = stack.fake.send_message("!remind water the plants", author="bob")
        await stack.fake.wait_for_post(lambda post: post.reply_to == asked or "Noted" in post.content)

        async def deploy() -> None:
            identity, _ = stack.holder()
            await stack.repo.bump("1.0.1")
            response = await stack.http.post(f"{stack.url}/api/deploy")
            assert response.status_code == 202, response.text
            await stack.until(
                lambda s: s if s.holder not in (None, identity) and s.versions.get(s.holder) == "1.0.1" else None,
                60,
                "version 1.0.1 holding the lease",
            )

        verdict = await stack.through(PROFILE, "deploy", deploy)
        report("deploy with hand-over", verdict, stack)
        assert_promises(verdict, longest_gap=3.0)
        _, pid = stack.holder()
        stack.fake.send_message("!reminder", author="bob")
        post = await stack.fake.wait_for_post(lambda post: "water the plants" in post.content, timeout=10)
        assert post.client == f"pid{pid}"  # the new version answers, from the cache handed over


async def test_supervisor_sigterm_and_start_again(tmp_path: Path) -> None:
    async with running_stack(tmp_path, source=BOT) as stack:
        await stack.steady()

        async def restart() -> None:
            await stack.signal(signal.SIGTERM)
            await stack.start()
            await stack.steady()

        verdict = await stack.through(PROFILE, "supervisor SIGTERM + start", restart)
        report("supervisor SIGTERM + start", verdict, stack)
        assert_promises(verdict, longest_gap=30.0)


async def test_supervisor_sigkill_and_start_again_adopts_the_workers(tmp_path: Path) -> None:
    async with running_stack(tmp_path, source=BOT) as stack:
        before = await stack.steady()

        async def restart() -> None:
            await stack.signal(signal.SIGKILL)
            await stack.start()
            after = await stack.steady()
            assert set(after.pids.values()) == set(before.pids.values()), "the workers were not adopted"

        verdict = await stack.through(PROFILE, "supervisor SIGKILL + start", restart)
        report("supervisor SIGKILL + start (adopted)", verdict, stack)
        assert_promises(verdict, longest_gap=5.0)


async def test_gateway_outage_of_the_holder_hands_over(tmp_path: Path) -> None:
    async with running_stack(tmp_path, source=BOT) as stack:
        await stack.steady()

        async def outage() -> None:
            identity, pid = stack.holder()
            assert stack.fake.outage(8.0, client=f"pid{pid}") >= 1
            with trio.move_on_after(8.0):  # the outage ends by itself after that: a hand-over comes before
                await stack.new_holder(identity)

        verdict = await stack.through(PROFILE, "Gateway outage of the holder", outage)
        report("Gateway outage of the holder (8 s)", verdict, stack)
        assert_promises(verdict, longest_gap=5.0)


async def crash_loop_then_quiet(stack: Stack) -> float:
    """is_sane goes false after the crash loop, and then no worker is started again; returns when it went."""
    insane = await stack.until(lambda s: s if not s.is_sane else None, 60, "is_sane false after the crash loop")
    tries = len(stack.workers_seen)
    await trio.sleep(3.0)  # a window in which nothing may happen: no worker is started again
    last = stack.last()
    assert len(stack.workers_seen) == tries and last is not None and not last.pids
    return insane.at - stack.timeline[0].at


async def test_a_refused_intent_is_a_crash_loop_that_is_notified(tmp_path: Path) -> None:
    async with running_stack(tmp_path, source=BOT, intents=("presences",)) as stack:  # no message content
        after = await crash_loop_then_quiet(stack)
        channel = stack.fake.channel("bot-log").id
        notes = [p.content for p in stack.fake.posted if p.client == "supervisor" and p.channel_id == channel]
        print(f"\nrefused intent: is_sane false {after:.1f} s after start, {len(stack.workers_seen)} workers; {notes}")
        assert any("intent" in note.lower() for note in notes), notes


async def test_a_refused_token_is_a_crash_loop_that_says_so(tmp_path: Path) -> None:
    """The notifier has the same refused token and no webhook: Discord cannot be told. The log and the status
    say it, and the log says once (not once per lost notification) how to be told next time."""
    async with running_stack(tmp_path, source=BOT, token="a-token-discord-refuses") as stack:
        after = await crash_loop_then_quiet(stack)
        critical = [line for line in stack.tail(200).splitlines() if " CRITICAL " in line]
        print(f"\nrefused token: is_sane false {after:.1f} s after start, {len(stack.workers_seen)} workers")
        assert any("refused the token" in line and "Reset Token" in line for line in critical), critical
        undeliverable = [line for line in critical if "notifications cannot be delivered" in line]
        assert len(undeliverable) == 1 and "URBAN_ROBOT_NOTIFY_WEBHOOK" in undeliverable[0], critical
        status = await stack.status()
        assert status is not None and any("refused the token" in e["text"] for e in status["timeline"])


def _alerts(contents: list[str]) -> list[str]:
    """Each posted notification's first line, without the lines the notifier puts before it (why the webhook, what
    was lost, each in parentheses) and the worker's last lines quoted after it."""
    return [next(line for line in content.split("\n") if not line.startswith("(")) for content in contents]


async def test_a_refused_token_is_notified_through_the_webhook_once_per_kind(tmp_path: Path) -> None:
    """With a webhook configured, the operator hears of the refused token on Discord: the webhook needs no token."""
    stacked = running_stack(tmp_path, source=BOT, token="a-token-discord-refuses", notify_webhook=True)
    async with stacked as stack:
        await crash_loop_then_quiet(stack)
        ours = [p for p in stack.fake.posted if p.client == "supervisor"]
        alerts = _alerts([p.content for p in ours])
        print(f"\nrefused token, through the webhook: {len(stack.workers_seen)} workers; {alerts}")
        assert {p.route for p in ours} == {"webhook"}  # the bot's route was refused: nothing else got through
        assert {p.channel_id for p in ours} == {stack.fake.channel("bot-log").id}
        refused = [a for a in alerts if "cannot work" in a and "refused the token" in a]
        assert len(refused) == 1 and "Reset Token" in refused[0], alerts  # the notifier folded the repeats
        assert len([a for a in alerts if a.startswith("🚨 crash loop")]) == 1, alerts
        assert len(alerts) == len(set(alerts)), alerts  # no kind twice
        assert ours[0].content.startswith("(sent through the webhook: Discord refused the bot token (401)")
        fallbacks = [line for line in stack.tail(400).splitlines() if "notifications go through the webhook" in line]
        assert len(fallbacks) == 1, fallbacks
        assert not [line for line in stack.tail(400).splitlines() if "notifications cannot be delivered" in line]
