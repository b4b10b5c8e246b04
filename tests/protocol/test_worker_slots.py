"""Identify slots on the worker's side (docs/protocol.md §18.3), on a fake clock."""

from __future__ import annotations

import random
from typing import Any

import pytest

from urban_robot.protocol import (
    Effect,
    Finish,
    Identify,
    IdentifySlot,
    Link,
    Login,
    Send,
    ShardError,
    SlotGranted,
    SlotRefused,
    WorkerProtocol,
)

HELLO = {"protocol": 1, "token": "tok", "process_commands": False, "interval": 10, "lease": 15, "epoch": 0}
SHARDED = {**HELLO, "shards": [2, 3], "shard_count": 4}


def serve(p: WorkerProtocol, hello: dict[str, Any], now: float = 0.0) -> list[Effect]:
    (identify,) = [e for e in p.connected(now) if isinstance(e, Send)]
    effects = p.answered(identify.request.id, hello, now)
    assert p.link is Link.SERVING
    return effects


def sharded(now: float = 0.0) -> WorkerProtocol:
    p = WorkerProtocol(Identify("1.0", 42, 3), rng=random.Random(1))
    assert Login("tok", (2, 3), 4) in serve(p, SHARDED, now)
    return p


def asks(effects: list[Effect]) -> list[tuple[int, int]]:
    """(request id, shard id) of each identify_slot sent."""
    return [
        (e.request.id, e.request.message.shard_id)
        for e in effects
        if isinstance(e, Send) and isinstance(e.request.message, IdentifySlot)
    ]


def grant(p: WorkerProtocol, shard_id: int, now: float) -> list[Effect]:
    return p.pushed("cmd", {"t": "identify", "d": {"shard_id": shard_id}}, now)


def test_hello_gives_the_shards_and_an_unsharded_hello_gives_none() -> None:
    p = sharded()
    assert (p.shards, p.shard_count) == ((2, 3), 4)
    plain = WorkerProtocol(Identify("1.0", 42, 3))
    assert Login("tok", None, None) in serve(plain, HELLO)
    assert (plain.shards, plain.shard_count) == (None, None)


def test_a_slot_is_asked_granted_then_used_once() -> None:
    p = sharded()
    ((request_id, shard),) = asks(p.ask_identify(2, now=1.0))
    assert shard == 2 and p.slot_asks == {2}
    assert p.ask_identify(2, now=1.1) == []  # waiting already: asked once
    assert p.answered(request_id, {"queued": True}, now=1.2) == []
    assert grant(p, 2, now=3.0) == [SlotGranted(2)]
    assert p.slot_asks == frozenset()
    assert p.use_identify_grant(2, now=3.4)
    assert not p.use_identify_grant(2, now=3.4)  # one grant, one IDENTIFY


def test_a_grant_not_used_within_the_margin_is_thrown_away_and_asked_again() -> None:
    p = sharded()
    p.ask_identify(3, now=0.0)
    grant(p, 3, now=1.0)
    assert not p.use_identify_grant(3, now=1.0 + p.identify_margin + 0.001)
    assert [shard for _, shard in asks(p.ask_identify(3, now=1.6))] == [3]


def test_a_fresh_grant_held_answers_an_ask_at_once() -> None:
    p = sharded()
    p.ask_identify(2, now=0.0)
    grant(p, 2, now=1.0)
    assert p.ask_identify(2, now=1.2) == [SlotGranted(2)]  # e.g. the waiter was woken, then asked again
    assert p.use_identify_grant(2, now=1.3)


def test_a_stale_grant_held_is_not_offered() -> None:
    p = sharded()
    p.ask_identify(2, now=0.0)
    grant(p, 2, now=1.0)
    effects = p.ask_identify(2, now=2.0)
    assert [shard for _, shard in asks(effects)] == [2] and SlotGranted(2) not in effects


def test_a_grant_not_asked_for_is_ignored() -> None:
    p = sharded()
    effects = grant(p, 3, now=1.0)
    assert not any(isinstance(e, SlotGranted) for e in effects)
    assert not p.use_identify_grant(3, now=1.0)
    p.ask_identify(2, now=2.0)
    p.withdraw_identify(2)  # its connection attempt was given up
    assert not any(isinstance(e, SlotGranted) for e in grant(p, 2, now=3.0))


def test_a_lost_connection_drops_the_asks_and_they_go_again_after_hello() -> None:
    p = sharded()
    p.ask_identify(2, now=0.0)
    p.ask_identify(3, now=0.0)
    p.disconnected(1.0)
    assert not any(isinstance(e, SlotGranted) for e in grant(p, 2, now=1.5))  # from nowhere: not on this line
    assert p.ask_identify(2, now=1.6) == []  # still wanted: goes with the next hello
    effects = serve(p, SHARDED, now=2.0)
    assert sorted(shard for _, shard in asks(effects)) == [2, 3]
    assert not any(isinstance(e, Login) for e in effects)  # logged in once
    assert grant(p, 3, now=3.0) == [SlotGranted(3)]


def test_asks_made_while_disconnected_wait_for_the_hello() -> None:
    p = sharded()
    p.disconnected(1.0)
    assert p.ask_identify(3, now=1.5) == [] and p.slot_asks == {3}
    assert [shard for _, shard in asks(serve(p, SHARDED, now=2.0))] == [3]


def test_a_refusal_ends_the_wait() -> None:
    p = sharded()
    ((request_id, _),) = asks(p.ask_identify(2, now=0.0))
    effects = p.answered(request_id, {"error": "shard 2 is not in this worker's group"}, now=0.1)
    assert SlotRefused(2, "shard 2 is not in this worker's group") in effects
    assert p.slot_asks == frozenset()


@pytest.mark.parametrize("hello, shard", [(HELLO, 0), (SHARDED, 1), (SHARDED, 4)])
def test_asking_for_a_shard_not_ours_is_our_mistake(hello: dict[str, Any], shard: int) -> None:
    p = WorkerProtocol(Identify("1.0", 42, 3))
    serve(p, hello)
    with pytest.raises(ShardError, match=f"shard {shard}"):
        p.ask_identify(shard, now=0.0)
    assert p.slot_asks == frozenset()


def test_a_hello_with_other_shards_after_a_reconnection_ends_the_worker() -> None:
    p = sharded()
    p.disconnected(1.0)
    effects = serve(p, {**SHARDED, "shards": [0, 1]}, now=2.0)
    sent = [e.request.message.event for e in effects if isinstance(e, Send)]
    assert sent == ["failed"]
    (answered,) = [e.request.id for e in effects if isinstance(e, Send)]
    finish = [e for e in p.answered(answered, {}, now=2.1) if isinstance(e, Finish)]
    assert finish and finish[0].error is not None and "shards changed" in finish[0].error
