"""Shard plans, Discord's /gateway/bot answer and identify slots (docs/protocol.md §18), sans-IO."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from urban_robot.protocol import (
    IDENTIFY_MARGIN,
    IDENTIFY_WINDOW,
    MAX_SHARDS,
    SESSION_WINDOW,
    GatewayBot,
    IdentifyGrant,
    IdentifySlots,
    SessionsExhausted,
    SessionStartLimit,
    ShardError,
    ShardGroup,
    ShardPlan,
)
from urban_robot.protocol._errors import WorkerError

SPACING = IDENTIFY_WINDOW + IDENTIFY_MARGIN

# -- ShardPlan ----------------------------------------------------------------------------------------------


def test_shards_split_into_contiguous_groups_the_last_smaller() -> None:
    plan = ShardPlan(10, 4)
    assert [group.ids for group in plan.groups] == [range(0, 4), range(4, 8), range(8, 10)]
    assert [group.index for group in plan.groups] == [0, 1, 2]
    assert [group.name for group in plan.groups] == ["shards 0-3", "shards 4-7", "shards 8-9"]
    assert plan.sharded


def test_a_group_of_one_shard_is_named_in_the_singular() -> None:
    assert [group.name for group in ShardPlan(3, 1).groups] == ["shard 0", "shard 1", "shard 2"]
    assert [group.name for group in ShardPlan(5, 2).groups][-1] == "shard 4"


@pytest.mark.parametrize(("count", "per_worker"), [(1, 1), (1, 5), (4, 4), (4, 100), (MAX_SHARDS, MAX_SHARDS)])
def test_one_group_is_the_unsharded_case(count: int, per_worker: int) -> None:
    plan = ShardPlan(count, per_worker)
    assert not plan.sharded
    assert plan.groups == (ShardGroup(0, range(count)),)


def test_the_unsharded_plan_is_one_shard_in_one_group() -> None:
    plan = ShardPlan.unsharded()
    assert (plan.shard_count, plan.shards_per_worker, plan.sharded) == (1, 1, False)
    assert plan.groups[0].name == "shard 0" and plan.group_of(0) is plan.groups[0]


def test_plans_are_values() -> None:
    assert ShardPlan(8, 2) == ShardPlan(8, 2) and hash(ShardPlan(8, 2)) == hash(ShardPlan(8, 2))
    assert ShardPlan(8, 2) != ShardPlan(8, 4)
    with pytest.raises(AttributeError):
        ShardPlan(8, 2).shard_count = 9  # type: ignore[misc]


def test_group_of_finds_the_group_holding_a_shard() -> None:
    plan = ShardPlan(10, 4)
    assert [plan.group_of(shard).index for shard in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert 5 in plan.group_of(5) and 5 not in plan.group_of(3)


@pytest.mark.parametrize("shard", [-1, 10, 10**30, True, 1.0, "1", None])
def test_group_of_refuses_a_shard_outside_the_plan(shard: Any) -> None:
    with pytest.raises(ShardError) as caught:
        ShardPlan(10, 4).group_of(shard)
    assert str(caught.value) == (
        f"shard {shard!r} is not in this plan (shards 0-9): ask for a shard id below shard_count"
    )


COUNT_HINT = "set it to Discord's recommended count (GET /gateway/bot) or more"
PER_WORKER_HINT = "set it to how many shards one worker process runs"
BAD_SIZES = [0, -1, -(10**9), MAX_SHARDS + 1, 10**12, True, False, 2.0, math.nan, "4", None, [4]]


@pytest.mark.parametrize("value", BAD_SIZES)
def test_a_bad_shard_count_is_refused_in_one_line_saying_what_to_do(value: Any) -> None:
    with pytest.raises(ShardError) as caught:
        ShardPlan(value, 1)
    assert str(caught.value) == f"shard_count must be a whole number from 1 to 65536, not {value!r}: {COUNT_HINT}"


@pytest.mark.parametrize("value", BAD_SIZES)
def test_a_bad_shards_per_worker_is_refused_in_one_line_saying_what_to_do(value: Any) -> None:
    with pytest.raises(ShardError) as caught:
        ShardPlan(4, value)
    assert str(caught.value) == (
        f"shards_per_worker must be a whole number from 1 to 65536, not {value!r}: {PER_WORKER_HINT}"
    )


def test_a_long_or_multiline_bad_value_is_cut_and_kept_on_one_line() -> None:
    with pytest.raises(ShardError) as caught:
        ShardPlan("12\n" * 100, 1)
    message = str(caught.value)
    assert "\n" not in message and "'12\\n12\\n" in message and "...: set it" in message and len(message) < 200


def test_the_shard_error_is_a_value_error_outside_the_worker_errors() -> None:
    assert issubclass(ShardError, ValueError) and not issubclass(ShardError, WorkerError)


@given(st.integers(1, 3000), st.integers(1, 3000))
def test_groups_partition_the_shards_in_order(count: int, per_worker: int) -> None:
    plan = ShardPlan(count, per_worker)
    assert [shard for group in plan.groups for shard in group.ids] == list(range(count))
    assert len(plan.groups) == math.ceil(count / per_worker) and plan.sharded == (per_worker < count)
    assert all(len(group.ids) == per_worker for group in plan.groups[:-1])
    assert 1 <= len(plan.groups[-1].ids) <= per_worker
    assert [group.index for group in plan.groups] == list(range(len(plan.groups)))
    assert len({group.name for group in plan.groups}) == len(plan.groups)
    for shard in {0, count - 1, count // 2}:
        assert shard in plan.group_of(shard)


# -- GatewayBot ---------------------------------------------------------------------------------------------

DISCORD_EXAMPLE = {  # the example response in Discord's docs (#get-gateway-bot)
    "url": "wss://gateway.discord.gg/",
    "shards": 9,
    "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1},
}


def test_discords_example_answer_parses_from_a_value_text_or_bytes() -> None:
    expected = GatewayBot("wss://gateway.discord.gg/", 9, SessionStartLimit(1000, 999, 14400000, 1))
    text = json.dumps(DISCORD_EXAMPLE)
    assert GatewayBot.from_json(DISCORD_EXAMPLE) == GatewayBot.from_json(text) == GatewayBot.from_json(text.encode())
    assert GatewayBot.from_json(DISCORD_EXAMPLE) == expected


def test_unknown_keys_are_ignored() -> None:
    body = json.loads(json.dumps(DISCORD_EXAMPLE))
    body["new"] = 1
    body["session_start_limit"]["new"] = {"x": 1}
    assert GatewayBot.from_json(body) == GatewayBot.from_json(DISCORD_EXAMPLE)


def test_the_rate_limit_key_is_the_shard_id_modulo_max_concurrency() -> None:
    limit = SessionStartLimit(2000, 2000, 0, 16)
    assert [limit.key(shard) for shard in (0, 1, 15, 16, 17, 31, 32)] == [0, 1, 15, 0, 1, 15, 0]
    assert {SessionStartLimit(1000, 1000, 0, 1).key(shard) for shard in range(50)} == {0}


TAIL = "; retry later, and report it if it persists (Discord's API may have changed)"
HEAD = "Discord's GET /gateway/bot answer is malformed: "


def with_limit(**changes: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(DISCORD_EXAMPLE))
    body["session_start_limit"].update(changes)
    return body


def without_limit_key(key: str) -> dict[str, Any]:
    body = json.loads(json.dumps(DISCORD_EXAMPLE))
    del body["session_start_limit"][key]
    return body


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "the body is not JSON"),
        (b"\xff\xfe", "the body is not JSON"),
        ("{", "the body is not JSON"),
        ("[" * 100_000, "the body is not JSON"),
        ("[]", "the body must be an object, not list"),
        (None, "the body must be an object, not NoneType"),
        ({**DISCORD_EXAMPLE, "url": ""}, "url must be a non-empty string, not ''"),
        ({**DISCORD_EXAMPLE, "url": 5}, "url must be a non-empty string, not 5"),
        ({k: v for k, v in DISCORD_EXAMPLE.items() if k != "url"}, "url must be a non-empty string, not None"),
        ({**DISCORD_EXAMPLE, "shards": 0}, "shards must be a whole number from 1 to 65536, not 0"),
        ({**DISCORD_EXAMPLE, "shards": 9.0}, "shards must be a whole number from 1 to 65536, not 9.0"),
        ({**DISCORD_EXAMPLE, "shards": "9"}, "shards must be a whole number from 1 to 65536, not '9'"),
        ({**DISCORD_EXAMPLE, "shards": 70000}, "shards must be a whole number from 1 to 65536, not 70000"),
        ({**DISCORD_EXAMPLE, "session_start_limit": []}, "session_start_limit must be an object, not []"),
        (
            {k: v for k, v in DISCORD_EXAMPLE.items() if k != "session_start_limit"},
            "session_start_limit must be an object, not None",
        ),
        (without_limit_key("max_concurrency"), "session_start_limit lacks max_concurrency"),
        (without_limit_key("total"), "session_start_limit lacks total"),
        (
            with_limit(max_concurrency=0),
            "session_start_limit.max_concurrency must be a whole number from 1 to 65536, not 0",
        ),
        (
            with_limit(max_concurrency=True),
            "session_start_limit.max_concurrency must be a whole number from 1 to 65536, not True",
        ),
        (with_limit(total=0, remaining=0), "session_start_limit.total must be a whole number of at least 1, not 0"),
        (with_limit(remaining=-1), "session_start_limit.remaining must be a whole number of at least 0, not -1"),
        (with_limit(remaining=1001), "session_start_limit.remaining (1001) exceeds total (1000)"),
        (
            with_limit(reset_after=1.5),
            "session_start_limit.reset_after must be a whole number of at least 0, not 1.5",
        ),
        (
            with_limit(reset_after=None),
            "session_start_limit.reset_after must be a whole number of at least 0, not None",
        ),
    ],
)
def test_a_malformed_answer_is_refused_in_one_line_saying_what_to_do(body: Any, problem: str) -> None:
    with pytest.raises(ShardError) as caught:
        GatewayBot.from_json(body)
    assert str(caught.value) == HEAD + problem + TAIL


@pytest.mark.slow
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    )
)
def test_any_json_value_parses_or_is_refused_with_a_shard_error(body: Any) -> None:
    try:
        GatewayBot.from_json(body)
    except ShardError as exc:
        assert "\n" not in str(exc)


@given(st.binary())
def test_any_bytes_parse_or_are_refused_with_a_shard_error(body: bytes) -> None:
    try:
        GatewayBot.from_json(body)
    except ShardError as exc:
        assert "\n" not in str(exc)


# -- IdentifySlots: each rule -------------------------------------------------------------------------------


def slots(
    total: int = 1000, remaining: int = 1000, reset_after: int = 0, max_concurrency: int = 1, **kwargs: Any
) -> IdentifySlots:
    return IdentifySlots(SessionStartLimit(total, remaining, reset_after, max_concurrency), 0.0, **kwargs)


def granted(events: list[Any]) -> list[int]:
    return [event.shard_id for event in events if isinstance(event, IdentifyGrant)]


def test_a_request_is_granted_at_once_when_its_key_is_free() -> None:
    identify = slots()
    ticket = identify.request(3, 0.0, owner="w1")
    assert identify.next_deadline() == -math.inf  # poll now
    assert identify.poll(0.0) == [IdentifyGrant(ticket, 3, "w1", 0, 0.0, 0.0)]
    assert identify.next_deadline() is None and identify.waiting == 0 and identify.poll(100.0) == []


def test_one_key_grants_once_per_window_plus_margin() -> None:
    identify = slots()
    for shard in range(3):
        identify.request(shard, 0.0)
    assert granted(identify.poll(0.0)) == [0]
    assert identify.next_deadline() == SPACING
    assert granted(identify.poll(SPACING - 0.001)) == []
    assert granted(identify.poll(SPACING)) == [1]
    assert identify.next_deadline() == 2 * SPACING


def test_the_margin_can_be_chosen_and_is_checked() -> None:
    identify = slots(margin=0)
    identify.request(0, 0.0)
    identify.request(1, 0.0)
    identify.poll(0.0)
    assert identify.next_deadline() == IDENTIFY_WINDOW
    for bad in (-0.1, 5.1, math.nan, True, "1"):
        with pytest.raises(ShardError) as caught:
            slots(margin=bad)
        assert str(caught.value) == f"margin must be from 0 to 5.0 seconds, not {bad!r}"


def test_keys_are_shard_id_modulo_max_concurrency_and_independent() -> None:
    identify = slots(max_concurrency=4)
    for shard in range(8):
        identify.request(shard, 0.0)
    assert granted(identify.poll(0.0)) == [0, 1, 2, 3]  # one per key: 0-3 at once
    assert granted(identify.poll(SPACING)) == [4, 5, 6, 7]  # then 4-7, as Discord's docs order them
    assert [e.key for e in slots(max_concurrency=4).poll(0.0)] == []


def test_within_a_key_requests_are_granted_in_the_order_they_came() -> None:
    identify = slots(max_concurrency=2)
    for shard in (6, 2, 4, 0):
        identify.request(shard, 0.0)
    order = [granted(identify.poll(n * SPACING)) for n in range(4)]
    assert order == [[6], [2], [4], [0]]


def test_asking_again_while_waiting_keeps_the_ticket_and_the_place() -> None:
    identify = slots()
    first = identify.request(0, 0.0, owner="a")
    identify.request(1, 0.0, owner="a")
    assert identify.request(0, 1.0, owner="a") == first
    assert identify.request(0, 1.0, owner="b") != first  # another worker (a standby) asks for the same shard
    assert identify.waiting == 3
    assert granted(identify.poll(0.0)) == [0]


def test_a_shard_granted_may_ask_again_and_queues_at_the_end() -> None:
    identify = slots()
    first = identify.request(0, 0.0)
    identify.poll(0.0)
    identify.request(1, 0.0)
    assert identify.request(0, 1.0) != first
    assert granted(identify.poll(SPACING)) == [1] and granted(identify.poll(2 * SPACING)) == [0]


def test_a_cancelled_request_frees_its_place() -> None:
    identify = slots()
    tickets = [identify.request(shard, 0.0, owner=f"w{shard}") for shard in range(3)]
    identify.poll(0.0)
    assert identify.cancel(tickets[1])
    assert not identify.cancel(tickets[1]) and not identify.cancel(tickets[0]) and not identify.cancel(999)
    assert granted(identify.poll(SPACING)) == [2]
    assert identify.next_deadline() is None


def test_release_withdraws_every_waiting_request_of_a_worker() -> None:
    identify = slots()
    identify.request(0, 0.0, owner="dead")
    kept = identify.request(1, 0.0, owner="alive")
    dropped = [identify.request(shard, 0.0, owner="dead") for shard in (2, 3)]
    identify.poll(0.0)  # shard 0 granted: a grant is not taken back
    assert identify.release("dead") == tuple(dropped)
    assert identify.release("dead") == () and identify.waiting == 1
    assert [e.ticket for e in identify.poll(SPACING)] == [kept]


def test_a_grant_says_how_long_it_waited() -> None:
    identify = slots()
    identify.request(0, 0.0)
    identify.request(1, 2.0)
    identify.poll(2.0)
    (grant,) = identify.poll(10.0)
    assert isinstance(grant, IdentifyGrant) and (grant.asked_at, grant.at) == (2.0, 10.0)


def test_free_keys_are_granted_oldest_request_first_when_session_starts_are_short() -> None:
    identify = slots(total=10, remaining=2, reset_after=60_000, max_concurrency=4)
    for shard in (3, 1, 2, 0):
        identify.request(shard, 0.0)
    events = identify.poll(0.0)
    assert granted(events) == [3, 1]
    assert events[2:] == [SessionsExhausted(60.0, 2)]


def test_no_session_start_left_stops_every_grant_until_the_reset_and_says_so_once() -> None:
    identify = slots(total=5, remaining=1, reset_after=100_000, max_concurrency=16)
    for shard in range(4):
        identify.request(shard, 0.0)
    assert identify.poll(0.0) == [
        IdentifyGrant(1, 0, "", 0, 0.0, 0.0),
        SessionsExhausted(until=100.0, waiting=3),
    ]
    assert identify.exhausted_until == 100.0 and identify.next_deadline() == 100.0
    assert identify.poll(50.0) == []  # said once
    identify.request(9, 60.0)
    assert identify.poll(60.0) == []
    assert granted(identify.poll(100.0)) == [1, 2, 3, 9]
    assert identify.remaining == 1 and identify.exhausted_until is None


def test_after_a_reset_the_next_day_starts_at_the_first_grant() -> None:
    identify = slots(total=2, remaining=0, reset_after=1_000)
    identify.request(0, 0.0)
    assert identify.poll(0.0) == [SessionsExhausted(1.0, 1)]
    assert granted(identify.poll(500.0)) == [0]  # the day now counts from 500
    identify.request(1, 500.0)
    identify.request(2, 500.0)
    assert granted(identify.poll(500.0 + SPACING)) == [1]
    assert identify.poll(600.0) == [SessionsExhausted(500.0 + SESSION_WINDOW, 1)]
    assert identify.next_deadline() == 500.0 + SESSION_WINDOW
    assert identify.poll(500.0 + SESSION_WINDOW - 0.001) == []
    assert granted(identify.poll(500.0 + SESSION_WINDOW)) == [2]
    assert identify.remaining == 1


def test_not_exhausted_is_said_again_after_a_reset() -> None:
    identify = slots(total=1, remaining=0, reset_after=1_000, max_concurrency=2)
    identify.request(0, 0.0)
    identify.request(1, 0.0)  # another key: free, held back by the budget alone
    assert identify.poll(0.0) == [SessionsExhausted(1.0, 2)]
    assert identify.poll(1.0) == [IdentifyGrant(1, 0, "", 0, 1.0, 0.0), SessionsExhausted(1.0 + SESSION_WINDOW, 1)]


def test_not_before_holds_every_key_after_a_restart() -> None:
    identify = slots(max_concurrency=2, not_before=SPACING)
    identify.request(0, 0.0)
    identify.request(1, 0.0)
    assert identify.poll(0.0) == [] and identify.next_deadline() == SPACING
    assert granted(identify.poll(SPACING)) == [0, 1]


@pytest.mark.parametrize("shard", [-1, MAX_SHARDS, True, 1.5, "0", None])
def test_a_request_for_a_shard_that_cannot_be_is_refused(shard: Any) -> None:
    with pytest.raises(ShardError) as caught:
        slots().request(shard, 0.0)
    assert str(caught.value) == (
        f"shard id must be a whole number from 0 to 65535, not {shard!r}: ask for a shard of the plan"
    )


def test_the_deadline_is_never_in_the_past_after_a_poll_nor_without_anything_waiting() -> None:
    identify = slots(max_concurrency=3)
    assert identify.next_deadline() is None
    for shard in range(7):
        identify.request(shard, 0.0)
    now = 0.0
    while (deadline := identify.next_deadline()) is not None:
        now = max(now, deadline)
        assert identify.poll(now)  # waking at the deadline always decides something
        assert (identify.next_deadline() or math.inf) > now
    assert now == 2 * SPACING


# -- IdentifySlots against a model ---------------------------------------------------------------------------

TOTAL = 4
OWNERS = ["w1", "w2", "w3"]
STEPS = [0.0, 0.001, 1.0, IDENTIFY_WINDOW, SPACING - 0.001, SPACING, 17.0, 999.0, SESSION_WINDOW / 2, SESSION_WINDOW]


class IdentifyModel(RuleBasedStateMachine):
    """Random requests, cancels, releases and time steps; the shell polls after every event, as it will.

    The model is kept apart: per key, the waiting tickets in order; every grant given; the budget as
    docs/protocol.md §18.2 states it (windows of ``reset_after`` first, then a day from the first grant
    after each reset)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.identify: IdentifySlots | None = None

    @precondition(lambda self: self.identify is None)
    @rule(
        remaining=st.integers(0, TOTAL),
        reset_after=st.sampled_from([0, 1, 3_000, 60_000, 10_000_000]),
        max_concurrency=st.sampled_from([1, 2, 3, 16]),
    )
    def start(self, remaining: int, reset_after: int, max_concurrency: int) -> None:
        self.limit = SessionStartLimit(TOTAL, remaining, reset_after, max_concurrency)
        self.identify = IdentifySlots(self.limit, self.now)
        self.queues: dict[int, list[int]] = {}  # key → waiting tickets, oldest first
        self.requests: dict[int, tuple[int, str]] = {}  # ticket → (shard, owner)
        self.cancelled: set[int] = set()
        self.grants: list[IdentifyGrant] = []
        self.budget, self.window_end = remaining, self.now + reset_after / 1000
        self.said_exhausted = False

    def poll(self) -> None:
        assert self.identify is not None
        before = self.identify.waiting
        events = self.identify.poll(self.now)
        if self.window_end is not None and self.now >= self.window_end:
            self.budget, self.window_end, self.said_exhausted = TOTAL, None, False
        grants = [event for event in events if isinstance(event, IdentifyGrant)]
        for grant in grants:
            self.check_grant(grant)
        exhausted = [event for event in events if isinstance(event, SessionsExhausted)]
        assert len(exhausted) <= 1 and events[len(grants) :] == exhausted  # grants first, then the stop
        if exhausted:
            assert self.budget == 0 and not self.said_exhausted
            assert exhausted[0].waiting == before - len(grants) > 0 and exhausted[0].until > self.now
            self.said_exhausted = True
        deadline = self.identify.next_deadline()
        assert (deadline is None) == (self.identify.waiting == 0)
        assert deadline is None or deadline > self.now  # the shell never spins

    def check_grant(self, grant: IdentifyGrant) -> None:
        assert grant.at == self.now
        shard, owner = self.requests[grant.ticket]
        assert (grant.shard_id, grant.owner, grant.key) == (shard, owner, shard % self.limit.max_concurrency)
        assert grant.ticket not in self.cancelled
        assert self.queues[grant.key][0] == grant.ticket  # FIFO within a key: the head goes
        self.queues[grant.key].pop(0)
        for earlier in self.grants:
            if earlier.key == grant.key:
                assert grant.at - earlier.at >= IDENTIFY_WINDOW  # the rule Discord enforces
        assert self.budget > 0  # remaining is never exceeded
        self.budget -= 1
        if self.window_end is None:
            self.window_end = self.now + SESSION_WINDOW
        self.grants.append(grant)

    @precondition(lambda self: self.identify is not None)
    @rule(shard=st.integers(0, 40), owner=st.sampled_from(OWNERS))
    def request(self, shard: int, owner: str) -> None:
        assert self.identify is not None
        ticket = self.identify.request(shard, self.now, owner)
        key = shard % self.limit.max_concurrency
        if ticket in self.requests:  # asked again while waiting: the same place
            assert self.requests[ticket] == (shard, owner) and ticket in self.queues[key]
        else:
            assert all(ticket > known for known in self.requests)
            self.requests[ticket] = (shard, owner)
            self.queues.setdefault(key, []).append(ticket)
        self.poll()

    @precondition(lambda self: self.identify is not None)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        assert self.identify is not None
        ticket = data.draw(st.sampled_from(sorted(self.requests) or [1]))
        waiting = any(ticket in queue for queue in self.queues.values())
        assert self.identify.cancel(ticket) == waiting
        if waiting:
            self.cancelled.add(ticket)
            for queue in self.queues.values():
                if ticket in queue:
                    queue.remove(ticket)
        self.poll()

    @precondition(lambda self: self.identify is not None)
    @rule(owner=st.sampled_from(OWNERS))
    def release(self, owner: str) -> None:
        assert self.identify is not None
        expected = sorted(t for queue in self.queues.values() for t in queue if self.requests[t][1] == owner)
        assert sorted(self.identify.release(owner)) == expected
        self.cancelled.update(expected)
        for key, queue in self.queues.items():
            self.queues[key] = [t for t in queue if t not in self.cancelled]
        self.poll()

    @precondition(lambda self: self.identify is not None)
    @rule(step=st.sampled_from(STEPS))
    def wait(self, step: float) -> None:
        self.now += step
        self.poll()

    @precondition(lambda self: self.identify is not None)
    @rule()
    def wake_at_the_deadline(self) -> None:
        assert self.identify is not None
        deadline = self.identify.next_deadline()
        if deadline is not None:
            self.now = deadline
            self.poll()

    @invariant()
    def the_waiting_are_the_models(self) -> None:
        if self.identify is not None:
            assert self.identify.waiting == sum(map(len, self.queues.values()))

    def teardown(self) -> None:
        """Every request not cancelled is granted eventually: wake at each deadline until none is left."""
        if self.identify is None:
            return
        for _ in range(len(self.requests) + 2 * TOTAL + 5):  # each wake grants, or reaches a reset
            if self.identify.next_deadline() is None:
                break
            self.wake_at_the_deadline()
        assert self.identify.next_deadline() is None
        given = {grant.ticket for grant in self.grants}
        assert given | self.cancelled == set(self.requests) and not given & self.cancelled


TestIdentifySlotsAgainstTheModel = pytest.mark.slow(IdentifyModel.TestCase)
