"""Each group's last hour (``GroupHistory``, sans-IO) and the tracker feeding it from the core's actions."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import attrs
import pytest

from urban_robot.supervisor._bus import Bus
from urban_robot.supervisor._deploy import DeployResult
from urban_robot.supervisor._events import RoleChanged, RollbackFinished, Verdict
from urban_robot.supervisor._history import MARKS, MEMORY_BOUND, SPANS, WINDOW, GroupHistory
from urban_robot.supervisor._snapshot import Snapshot, WorkerView
from urban_robot.supervisor._status import StatusTracker

T0 = 1_767_225_600.0


def spans(view: dict[str, Any], group: int = 0) -> list[tuple[str, float, float | None]]:
    return [(s["worker"], s["from"], s["to"]) for s in view["groups"][group]["spans"]]


def gaps(view: dict[str, Any], group: int = 0) -> list[tuple[float, float | None]]:
    return [(g["from"], g["to"]) for g in view["groups"][group]["gaps"]]


def test_a_failover_is_a_gap_between_two_bars_and_a_hand_over_none() -> None:
    h = GroupHistory(T0)
    h.began(0, "s1", "child-1", T0 + 2, epoch=1, version="1.0", generation=1)
    h.ended(0, "s1", T0 + 10)  # lost: running -> gone
    h.began(0, "s2", "child-2", T0 + 10.4, epoch=2, version="1.0", generation=1)
    h.ended(0, "s2", T0 + 20)  # a hand-over: its coma ack ...
    h.began(0, "s3", "child-3", T0 + 20, epoch=3, version="1.1", generation=2)  # ... and the new one at once
    view = h.view(T0 + 30, 1)
    assert spans(view) == [("child-1", T0 + 2, T0 + 10), ("child-2", T0 + 10.4, T0 + 20), ("child-3", T0 + 20, None)]
    assert gaps(view) == [(T0, T0 + 2), (T0 + 10, T0 + 10.4)]  # the start, then the failover; no hand-over gap
    [third] = [s for s in view["groups"][0]["spans"] if s["worker"] == "child-3"]
    assert (third["epoch"], third["version"], third["generation"]) == (3, "1.1", 2)
    assert h.without_processor(0, T0 + 30) == pytest.approx(2 + 0.4)


def test_a_group_without_a_processor_now_has_an_open_gap_and_its_counter_grows() -> None:
    h = GroupHistory(T0)
    h.began(1, "s1", "child-1", T0 + 1)
    h.ended(1, "s1", T0 + 5)
    view = h.view(T0 + 9, 2)
    assert gaps(view, 1) == [(T0, T0 + 1), (T0 + 5, None)]
    assert gaps(view, 0) == [(T0, None)]  # never processed: one gap since the start
    assert h.without_processor(1, T0 + 9) == pytest.approx(1 + 4)
    assert h.without_processor(1, T0 + 19) == pytest.approx(1 + 14)
    assert h.without_processor(0, T0 + 19) == pytest.approx(19)
    h.ended(1, "s-unknown", T0 + 20)  # ending what never began changes nothing
    assert h.without_processor(1, T0 + 20) == pytest.approx(1 + 15)


def test_marks_stay_in_their_group_and_shared_ones_reach_every_group() -> None:
    h = GroupHistory(T0)
    h.mark(2, T0 + 5, "deploy", "generation 2 (child-9): promoted")
    h.mark(None, T0 + 6, "deploy", "deploy of abc: deployed")
    h.mark(None, T0 + 7, "rollback", "x" * 500, level="warning")
    view = h.view(T0 + 10, 3)
    assert [m["text"] for m in view["groups"][2]["marks"]] == ["generation 2 (child-9): promoted"]
    assert view["groups"][0]["marks"] == [] and view["groups"][1]["marks"] == []
    assert [(m["at"], m["kind"], m["level"]) for m in view["marks"]] == [
        (T0 + 6, "deploy", "info"),
        (T0 + 7, "rollback", "warning"),
    ]
    assert len(view["marks"][1]["text"]) == 160  # cut: a mark's text is one tooltip line


def test_only_the_last_hour_is_kept_and_a_bar_across_its_start_is_clipped() -> None:
    h = GroupHistory(T0)
    h.began(0, "s1", "child-1", T0)
    h.ended(0, "s1", T0 + 100)
    h.mark(0, T0 + 50, "deploy", "old")
    h.mark(None, T0 + 50, "deploy", "old, shared")
    h.began(0, "s2", "child-2", T0 + 120)
    now = T0 + WINDOW + 150
    view = h.view(now, 1)
    assert spans(view) == [("child-2", now - WINDOW, None)]  # child-1's bar ended before the hour: gone
    assert gaps(view) == []
    assert view["groups"][0]["known_from"] == now - WINDOW
    assert view["groups"][0]["marks"] == [] and view["marks"] == []
    assert len(h._groups[0].spans) == 1 and not h._groups[0].marks  # forgotten, not only hidden


def test_the_caps_keep_the_newest_and_what_was_pushed_out_is_unknown_not_a_gap() -> None:
    h = GroupHistory(T0)
    for i in range(SPANS + 10):  # one bar a second with a 0.5 s gap each: churn
        h.began(0, f"s{i}", f"child-{i}", T0 + i)
        h.ended(0, f"s{i}", T0 + i + 0.5)
    for i in range(MARKS * 2):
        h.mark(0, T0 + i, "deploy", f"mark {i}")
    view = h.view(T0 + SPANS + 10, 1)
    shown = spans(view)
    assert len(shown) == SPANS and shown[-1][0] == f"child-{SPANS + 9}" and shown[0][0] == "child-10"
    # what came before the oldest kept bar is unknown: the view starts at the end of the last one dropped
    assert view["groups"][0]["known_from"] == T0 + 9.5
    assert gaps(view)[0] == (T0 + 9.5, T0 + 10)
    assert [m["text"] for m in view["groups"][0]["marks"]] == [f"mark {i}" for i in range(MARKS, MARKS * 2)]
    # the counter forgets nothing
    assert h.without_processor(0, T0 + SPANS + 10) == pytest.approx(
        (SPANS + 10) * 0.5
    )  # every half second between bars


def test_64_groups_under_churn_stay_within_the_memory_bound() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        h = GroupHistory(T0)
        at = T0
        for round_ in range(SPANS * 3):  # every group hands over 360 times: the caps hold
            for group in range(64):
                at += 0.01
                sid = f"sid-{group}-{round_}"
                h.ended(group, f"sid-{group}-{round_ - 1}", at)
                h.began(group, sid, f"child-{group}-{round_}", at, epoch=round_, version="1.0.0", generation=round_)
                if round_ % 3 == 0:
                    h.mark(group, at, "deploy", f"generation {round_} (child-{group}-{round_}): promoted " + "x" * 80)
            h.mark(None, at, "deploy", "deploy of 0123456789ab: deployed")
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert all(len(g.spans) == SPANS and len(g.marks) == MARKS for g in h._groups.values())
    print(f"\n64 groups at the caps: {used / 1024 / 1024:.2f} MiB")
    assert used < MEMORY_BOUND


# -- the tracker: RoleChanged, Verdict, DeployResult and rollbacks into the history -----------------------------


@attrs.define
class FakeRobot:
    """What the tracker needs of a robot: a bus to say views changed on, and a snapshot to read versions from."""

    bus: Bus = attrs.Factory(Bus)
    workers: tuple[WorkerView, ...] = ()

    def snapshot(self) -> Snapshot:
        return Snapshot(0.0, 0, True, None, None, None, self.workers, (), None, "", None, None)


def worker(sid: str, identity: str, version: str, generation: int, group: int) -> WorkerView:
    return WorkerView(identity, sid, "running", 1, version, generation, 1, 0.0, None, None, True, group)


def test_the_tracker_draws_role_changes_verdicts_and_deploys_per_group() -> None:
    now = [T0]
    robot = FakeRobot(workers=(worker("s1", "child-1", "1.0", 1, 3), worker("s2", "child-2", "1.1", 2, 3)))
    tracker = StatusTracker(robot, wall_clock=lambda: now[0])  # type: ignore[arg-type]

    def at(t: float, action: object) -> None:
        now[0] = T0 + t
        tracker.observe(action)  # type: ignore[arg-type]

    at(1, RoleChanged("s1", "child-1", "standby", "running", 1, "no worker running", group=3))
    at(5, RoleChanged("s1", "child-1", "running", "stopping", None, "newer code", group=3))  # still processing
    at(6, RoleChanged("s1", "child-1", "stopping", "standby", None, "coma ack", group=3))
    at(6.2, RoleChanged("s2", "child-2", "standby", "running", 2, "newer code", group=3))
    at(6.3, Verdict("child-2", 2, "promoted", "newer code", group=3))
    at(8, Verdict("child-9", 3, "failed health check", "vital_cog_failed", group=1))
    at(9, RoleChanged("s2", "child-2", "running", "gone", None, "process exited (-9)", group=3))
    now[0] = T0 + 9.5
    tracker.deployed(DeployResult("0123456789abcdef", "deployed"))
    tracker.deployed(DeployResult("0123456789abcdef", "up to date"))  # a no-op poll: no mark
    tracker.note(RollbackFinished(False, "git reset failed"))
    now[0] = T0 + 12
    view = tracker.group_history.view(now[0], 4)
    group = view["groups"][3]
    assert [(s["worker"], s["version"], s["generation"], s["from"], s["to"]) for s in group["spans"]] == [
        ("child-1", "1.0", 1, T0 + 1, T0 + 6),
        ("child-2", "1.1", 2, T0 + 6.2, T0 + 9),
    ]
    assert gaps(view, 3) == [(T0, T0 + 1), (T0 + 6, T0 + 6.2), (T0 + 9, None)]
    assert [m["text"] for m in group["marks"]] == ["generation 2 (child-2): promoted"]
    assert [(m["level"], m["text"]) for m in view["groups"][1]["marks"]] == [
        ("warning", "generation 3 (child-9): failed health check: vital_cog_failed")
    ]
    assert [(m["kind"], m["level"], m["text"]) for m in view["marks"]] == [
        ("deploy", "info", "deploy of 0123456789ab: deployed"),
        ("rollback", "critical", "rollback FAILED: git reset failed"),
    ]
    assert tracker.group_history.without_processor(3, now[0]) == pytest.approx(1 + 0.2 + 3)


def test_a_hand_over_in_one_group_does_not_hide_a_failover_in_another() -> None:
    tracker = StatusTracker(FakeRobot(), wall_clock=lambda: T0)  # type: ignore[arg-type]
    tracker.observe(RoleChanged("a", "child-a", "running", "standby", None, "coma ack", group=3))  # clean, group 3
    tracker.observe(RoleChanged("b", "child-b", "standby", "running", 2, "no worker running", group=5))  # lost, 5
    tracker.observe(RoleChanged("c", "child-c", "standby", "running", 2, "newer code", group=3))
    assert (tracker.promotions, tracker.failovers) == (2, 1)
