"""The end-to-end checker's own tests: on hand-made records, and against a real bot that ignores its lease."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from urban_robot.testing.traffic import Item, Profile, classify

from ._harness import SELF_TEST_BOT, SELF_TEST_PROFILE, running_stack

PROFILE = Profile(ping="!ping", slash=("hello", {}), join=True, loop="tick")


def records(posted: list[dict[str, Any]] = (), callbacks: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {"posted": list(posted), "callbacks": list(callbacks)}


def reply(to: int, at: float, client: str = "pid1", content: str = "pong") -> dict[str, Any]:
    return {"reply_to": to, "at": at, "client": client, "content": content, "route": "channel"}


def callback(interaction: int, at: float, client: str = "pid1", outcome: str = "ok", kind: int = 4) -> dict[str, Any]:
    return {"interaction_id": interaction, "at": at, "client": client, "outcome": outcome, "type": kind, "data": {}}


def test_once_twice_and_a_40060_as_a_second_run() -> None:
    items = [Item("ping", 1, 0.0), Item("ping", 2, 0.1), Item("slash", 3, 0.2), Item("slash", 4, 0.3)]
    found = records(
        [reply(1, 0.01), reply(2, 0.11), reply(2, 0.12, "pid2")],
        [callback(3, 0.21), callback(4, 0.31), callback(4, 0.32, "pid2", "already_acknowledged")],
    )
    verdict = classify(items, found, PROFILE)
    assert (verdict.once["ping"], verdict.twice["ping"], verdict.once["slash"], verdict.twice["slash"]) == (1, 1, 1, 1)
    assert len(verdict.doubles) == 2 and "pid2 (40060)" in verdict.doubles[1]


def test_a_welcome_answers_the_member_it_mentions_or_names() -> None:
    items = [Item("join", 10, 0.0, name="m1"), Item("join", 11, 0.1, name="m11"), Item("join", 12, 0.2, name="m2")]
    welcome = {"reply_to": None, "client": "pid1", "route": "channel"}
    found = records(
        [{**welcome, "at": 0.05, "content": "welcome <@10>"}, {**welcome, "at": 0.15, "content": "hi m11!"}]
    )
    verdict = classify(items, found, PROFILE)
    assert (verdict.once["join"], verdict.unanswered["join"]) == (2, 1)


def test_unanswered_items_are_explained_only_by_a_gap_that_meets_a_fault() -> None:
    items = [Item("ping", n, n * 0.1) for n in range(1, 21)]
    lost = {5, 6, 7, 15}  # 5-7: a gap around the fault at 0.55; 15: lost amid answers, far from it
    found = records([reply(n, n * 0.1 + 0.01) for n in range(1, 21) if n not in lost])
    verdict = classify(items, found, PROFILE, faults=[(0.55, 0.7)], in_flight=0.0)
    assert [gap.explained for gap in verdict.gaps] == [True, False]
    assert verdict.gaps[0].seconds == pytest.approx(0.4)  # from item 4 (answered) to item 8 (answered)
    assert verdict.unexplained == ["ping 15 sent at 1.500"]
    assert classify(items, found, PROFILE).figures()["unexplained"] == 4  # no fault: nothing is explained


def test_loop_posts_that_change_process_are_counted() -> None:
    tick = {"reply_to": None, "route": "channel", "content": "tick"}
    posts = [{**tick, "at": t, "client": c} for t, c in ((0, "pid1"), (1, "pid2"), (1.1, "pid1"), (2, "pid1"))]
    verdict = classify([], records(posts), PROFILE)
    assert (verdict.loop_posts, verdict.loop_switches) == (4, 2)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_bot_that_ignores_its_lease_is_caught_answering_twice(tmp_path: Path) -> None:
    """Without the gate every logged-in worker acts: the checker must see it (it would pass a broken gate)."""
    async with running_stack(tmp_path, source=SELF_TEST_BOT, env={"E2E_UNSAFE_BOT": "1"}) as stack:
        await stack.steady()
        since = time.time()
        traffic = stack.traffic(SELF_TEST_PROFILE)
        await traffic.run(3.0)
        verdict = await stack.settle(traffic.items, SELF_TEST_PROFILE)
        print("\n" + verdict.line("unsafe bot (no gate), steady"))
        # listeners marked `everywhere` run in both workers (what attach gates itself depends on its version)
        for kind in ("ping", "join"):
            assert verdict.twice[kind] > 0, (kind, verdict.figures())
        assert verdict.loop_switches > stack.lease_changes(since, time.time())
