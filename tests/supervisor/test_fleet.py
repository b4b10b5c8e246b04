"""The Fleet (sans-IO): events routed to their shard group's core, what the groups share said once, IDENTIFY
slots across every worker (docs/protocol.md §18)."""

from __future__ import annotations

from typing import Any

from urban_robot.protocol import SessionStartLimit, ShardPlan
from urban_robot.supervisor import (
    CandidateStarted,
    Connected,
    Disconnected,
    HealthReport,
    Heartbeat,
    Identified,
    IdentifyAsked,
    IdentifyLimit,
    Notify,
    Persist,
    ProcessExited,
    Ready,
    Reply,
    Send,
    Settings,
    Spawn,
    Stopping,
    TimerFired,
    TryAgain,
    Verdict,
)
from urban_robot.supervisor._fleet import Fleet

SETTINGS = Settings(token="tok", interval=1, grace=4, lease_margin=1, spawn_workers=True)
HEALTHY = {"OK": True, "percent": 100, "cogs": {"modules.utilities": True}}
TWO = SessionStartLimit(total=100, remaining=100, reset_after=86_400_000, max_concurrency=2)


def grants(actions: list[Any]) -> list[tuple[str, int]]:
    return [(a.sid, a.data["d"]["shard_id"]) for a in actions if isinstance(a, Send) and a.data.get("t") == "identify"]


def join(fleet: Fleet, sid: str, group: int, now: float = 0.0, *, generation: int = 1) -> list[Any]:
    out = fleet.handle(Connected(sid, f"child-{sid}", generation=generation, group=group), now)
    out += fleet.handle(Identified(sid, "1.0", generation=generation), now)
    out += fleet.handle(Ready(sid), now)
    out += fleet.handle(HealthReport(sid, HEALTHY), now)
    return out


def test_each_group_promotes_its_own_worker_with_its_own_epoch_and_one_state_write_per_event() -> None:
    fleet = Fleet(SETTINGS, ShardPlan(4, 2))
    out = join(fleet, "a", 0)
    hello = next(a for a in out if isinstance(a, Send) and a.event == "hello")
    assert hello.data["shards"] == [0, 1] and hello.data["shard_count"] == 4
    out = join(fleet, "b", 1)
    assert [a.data["shards"] for a in out if isinstance(a, Send) and a.event == "hello"] == [[2, 3]]
    assert [core.lease.identity for core in fleet.groups if core.lease] == ["child-a", "child-b"]
    assert [core.epoch for core in fleet.groups] == [1, 1]  # a sequence per group
    persists = [a for a in out if isinstance(a, Persist)]
    assert len(persists) == 1
    assert persists[0].state["groups"]["shards 2-3"]["holder"]["identity"] == "child-b"
    assert persists[0].state["groups"]["shards 0-1"]["epoch"] == 1
    # What is said names the group.
    assert any(isinstance(a, Notify) and a.message.startswith("shards 2-3: child-b") for a in out)


def test_an_exit_is_replaced_in_its_own_group_and_the_other_group_is_untouched() -> None:
    fleet = Fleet(SETTINGS, ShardPlan(4, 2))
    join(fleet, "a", 0)
    join(fleet, "b", 1)
    join(fleet, "c", 1, generation=1)  # group 1's standby
    out = fleet.handle(ProcessExited("child-b", -9, group=1), 1.0)
    assert [s.group for s in out if isinstance(s, Spawn)] == [1]
    assert fleet.groups[1].lease is not None and fleet.groups[1].lease.identity == "child-c"
    assert fleet.groups[1].epoch == 2 and fleet.groups[0].epoch == 1
    assert fleet.groups[0].lease is not None and fleet.groups[0].lease.identity == "child-a"


def test_a_candidate_is_judged_in_its_group() -> None:
    fleet = Fleet(SETTINGS, ShardPlan(4, 2))
    join(fleet, "a", 0)
    join(fleet, "b", 1)
    fleet.handle(CandidateStarted("child-n", 2, 60.0, group=1), 1.0)
    out = join(fleet, "n", 1, 2.0, generation=2)  # newer: the group's holder hands over to it
    out += fleet.handle(Heartbeat("b"), 2.0)
    out += fleet.handle(ProcessExited("child-b", 0, group=1), 2.0)
    verdicts = [a for a in out if isinstance(a, Verdict)]
    assert [(v.identity, v.outcome, v.group) for v in verdicts] == [("child-n", "promoted", 1)]
    assert fleet.groups[0].lease is not None and fleet.groups[0].lease.identity == "child-a"


def test_what_the_groups_share_is_said_once() -> None:
    fleet = Fleet(SETTINGS, ShardPlan(6, 2))
    fleet.handle(Connected("admin", "admin", admin=True), 0.0)
    refused = fleet.handle(TryAgain("stranger"), 0.0)
    assert refused == [Reply({"error": "try_again needs the admin credential"})]
    fleet.common.is_sane = False
    out = fleet.handle(TryAgain("admin"), 0.0)
    assert fleet.is_sane and sum(isinstance(a, Notify) for a in out) == 1
    out = fleet.handle(Stopping("test"), 1.0)
    assert sum(isinstance(a, Notify) for a in out) == 1


def test_identify_slots_are_granted_across_every_group_one_per_key_per_window() -> None:
    fleet = Fleet(SETTINGS, ShardPlan(4, 2), limit=TWO)
    for sid, group in (("a", 0), ("b", 1), ("c", 0)):
        fleet.handle(Connected(sid, f"child-{sid}", generation=1, group=group), 0.0)
        fleet.handle(Identified(sid, "1.0", generation=1), 0.0)
    out = fleet.handle(IdentifyAsked("a", 0), 0.0)
    assert out[0] == Reply({"queued": True}) and grants(out) == [("a", 0)]
    assert grants(fleet.handle(IdentifyAsked("b", 2), 0.1)) == []  # shard 2: key 0, as shard 0
    assert grants(fleet.handle(IdentifyAsked("c", 1), 0.2)) == [("c", 1)]  # key 1: free
    assert grants(fleet.handle(IdentifyAsked("a", 1), 0.3)) == []  # key 1 again: waits
    deadline, first = fleet.slots.next_deadline(), fleet.next_deadline()
    assert deadline == 5.5 and first is not None and first <= deadline  # the timer wakes for it (or sooner)
    assert grants(fleet.handle(TimerFired(), 5.5)) == [("b", 2)]
    # A worker that leaves withdraws what it waits for: the next in line goes.
    fleet.handle(Disconnected("a"), 5.6)
    assert grants(fleet.handle(TimerFired(), 5.7)) == []
    assert fleet.slots.waiting == 0


def test_identify_slot_refusals_say_why() -> None:
    fleet = Fleet(SETTINGS, ShardPlan(4, 2))
    fleet.handle(Connected("a", "child-a", generation=1, group=0), 0.0)
    assert "identify first" in fleet.handle(IdentifyAsked("a", 0), 0.0)[0].data["error"]
    fleet.handle(Identified("a", "1.0", generation=1), 0.0)
    error = fleet.handle(IdentifyAsked("a", 3), 0.0)[0].data["error"]
    assert error == "shard 3 is not this worker's: it runs shards 0-1 (hello's shards)"
    single = Fleet(SETTINGS)
    single.handle(Connected("a", "child-a"), 0.0)
    single.handle(Identified("a", "1.0"), 0.0)
    assert "not sharded" in single.handle(IdentifyAsked("a", 0), 0.0)[0].data["error"]


def test_discords_limit_learnt_later_keeps_the_waiting_in_order_and_holds_a_window() -> None:
    fleet = Fleet(SETTINGS, ShardPlan(4, 2))  # the default: max_concurrency 1
    for sid, group in (("a", 0), ("b", 1)):
        fleet.handle(Connected(sid, f"child-{sid}", generation=1, group=group), 0.0)
        fleet.handle(Identified(sid, "1.0", generation=1), 0.0)
    assert grants(fleet.handle(IdentifyAsked("a", 0), 0.0)) == [("a", 0)]
    assert grants(fleet.handle(IdentifyAsked("b", 3), 0.1)) == []
    fleet.handle(IdentifyLimit(TWO), 1.0)
    assert grants(fleet.handle(TimerFired(), 1.1)) == []  # grants under the old limit may be in flight
    assert grants(fleet.handle(TimerFired(), 6.5)) == [("b", 3)]


def test_unsharded_the_fleet_is_the_one_core_unchanged() -> None:
    fleet = Fleet(SETTINGS)
    out = join(fleet, "a", 0)
    hello = next(a for a in out if isinstance(a, Send) and a.event == "hello")
    assert "shards" not in hello.data and "shard_count" not in hello.data
    state = next(a for a in out if isinstance(a, Persist)).state
    assert set(state) == {"version", "epoch", "is_sane", "last_known_good", "holder"}
    assert not any(isinstance(a, Notify) and a.message.startswith("all shards") for a in out)
