"""The agent's lease logic, step by step (docs/protocol.md §19); the random interleavings are in test_lease_model."""

from __future__ import annotations

import math

import pytest

from urban_robot.cluster._lease import (
    Acquire,
    Agent,
    Applied,
    Granting,
    GrantLease,
    Holder,
    KeepAlive,
    LocalProtocolError,
    Refused,
    Release,
    Rewrite,
    State,
    StopGranting,
    Timing,
    Unknown,
    holder_value,
    lease_key,
    parse_holder,
)

TIMING = Timing(ttl=10, drift=0.01, margin=1.0, keepalive_every=2.0, retry_after=1.0)
LEASE = 7


def holding(epoch: int = 5) -> tuple[Agent, Acquire]:
    """An agent with its etcd lease (granted from a request sent at 0.0) holding "shard 0" for "w1"."""
    agent = Agent("a", TIMING)
    assert agent.poll(0.0) == [GrantLease(10, 0.0)]
    assert agent.want("shard 0", "w1", 0.0) == []  # no etcd lease yet: asked for when it comes
    [acquire] = agent.lease_granted(GrantLease(10, 0.0), LEASE, 10, 0.1)
    assert acquire == Acquire("shard 0", "w1", LEASE, acquire.serial)
    assert agent.txn_answered(acquire, Applied(epoch), 0.2) == [Granting("shard 0", epoch, "w1", 8.9)]
    return agent, acquire


def test_the_view_counts_from_the_keepalive_send_less_drift_and_margin() -> None:
    agent, _ = holding()
    assert agent.cap("shard 0", 0.3) == pytest.approx(10 * 0.99 - 1.0)
    # Sent at 2.0, answered at 5.0: the view is counted from 2.0, whatever the delay.
    assert agent.keepalive_answered(KeepAlive(LEASE, 2.0), 10, 5.0) == [Granting("shard 0", 5, "w1", 10.9)]
    assert agent.view_until == pytest.approx(2.0 + 9.9 - 1.0)
    # An older keep-alive answered later never shortens it.
    assert agent.keepalive_answered(KeepAlive(LEASE, 1.0), 10, 5.5) == []
    assert agent.view_until == pytest.approx(10.9)


def test_no_grant_beyond_the_view_and_a_stop_when_it_ends() -> None:
    agent, _ = holding()
    assert agent.cap("shard 0", 8.8) == pytest.approx(8.9)
    assert agent.cap("shard 0", 8.9) is None
    assert agent.next_deadline() == pytest.approx(2.1)  # the next keep-alive
    out = agent.poll(9.0)
    assert out[0] == KeepAlive(LEASE, 9.0)
    assert isinstance(out[1], StopGranting) and out[1].epoch == 5
    assert agent.groups["shard 0"].state is State.HELD  # the key may well still be ours: no answer said otherwise
    # The partition heals before etcd expired our lease: its answer proves the lease (and our key) alive.
    assert agent.keepalive_answered(KeepAlive(LEASE, 9.0), 10, 9.2) == [Granting("shard 0", 5, "w1", 17.9)]


def test_an_expired_etcd_lease_takes_every_group_with_it() -> None:
    agent, acquire = holding()
    out = agent.keepalive_answered(KeepAlive(LEASE, 2.0), 0, 2.1)
    assert out == [StopGranting("shard 0", 5, "our etcd lease expired"), GrantLease(10, 2.1)]
    assert agent.lease_id is None and agent.view_until == -math.inf
    assert agent.groups["shard 0"].state is State.IDLE
    assert agent.txn_answered(acquire, Applied(5), 2.2) == []  # an old answer changes nothing
    assert agent.keepalive_answered(KeepAlive(LEASE, 1.0), 10, 2.3) == []  # nor one for the lost lease
    [again] = agent.lease_granted(GrantLease(10, 2.1), 8, 10, 2.4)
    assert again == Acquire("shard 0", "w1", 8, again.serial)  # still wanted: tried again on the new lease


def test_only_the_outstanding_txn_answer_counts_and_a_lost_answer_is_found_again() -> None:
    agent = Agent("a", TIMING)
    agent.lease_granted(GrantLease(10, 0.0), LEASE, 10, 0.1)
    [first] = agent.want("shard 0", "w1", 0.1)
    [retry] = agent.poll(1.1)  # unanswered for retry_after: asked again
    assert isinstance(retry, Acquire) and retry.serial > first.serial
    assert agent.txn_answered(first, Applied(5), 1.2) == []  # applied, but its answer is no longer awaited
    assert agent.groups["shard 0"].state is State.ACQUIRING
    # The retry finds the first attempt's key: ours (this agent, this etcd lease), so held at its revision.
    out = agent.txn_answered(retry, Refused(Holder("a", "w1", LEASE, 5)), 1.3)
    assert out == [Granting("shard 0", 5, "w1", 8.9)]


def test_a_key_naming_us_on_another_etcd_lease_is_not_ours() -> None:
    """After a restart the old key is attached to the old lease, which nobody keeps alive: wait for it to go."""
    agent = Agent("a", TIMING)
    agent.lease_granted(GrantLease(10, 0.0), LEASE, 10, 0.1)
    [acquire] = agent.want("shard 0", "w1", 0.1)
    assert agent.txn_answered(acquire, Refused(Holder("a", "w1", LEASE - 1, 3)), 0.2) == []
    assert agent.groups["shard 0"].state is State.IDLE and agent.cap("shard 0", 0.3) is None
    # Its delete (etcd expired the old lease) is the hint to try again.
    [again] = agent.observed("shard 0", None, 9, 0.4)
    assert isinstance(again, Acquire)


def test_an_unknown_outcome_is_asked_again() -> None:
    agent = Agent("a", TIMING)
    agent.lease_granted(GrantLease(10, 0.0), LEASE, 10, 0.1)
    [acquire] = agent.want("shard 0", "w1", 0.1)
    assert agent.txn_answered(acquire, Unknown("timed out"), 0.5) == []
    [retry] = agent.poll(0.5)
    assert isinstance(retry, Acquire) and retry.serial > acquire.serial


def test_reads_and_watch_events_are_hints() -> None:
    agent, _ = holding(epoch=5)
    # An old delete (the previous holder's, at revision 4) is not ours.
    assert agent.observed("shard 0", None, 4, 0.5) == []
    assert agent.cap("shard 0", 0.5) is not None
    # Our own key, seen in a read: nothing happens.
    assert agent.observed("shard 0", Holder("a", "w1", LEASE, 5), 6, 0.5) == []
    # Deleted at a later revision: no more grants, at once.
    out = agent.observed("shard 0", None, 7, 0.6)
    assert out == [StopGranting("shard 0", 5, "the lease key was deleted"), Acquire("shard 0", "w1", LEASE, 2)]
    # A read saying "free" never makes a holder: only a txn's answer does.
    assert agent.cap("shard 0", 0.7) is None


def test_a_hand_over_on_this_host_rewrites_the_key_at_a_new_epoch() -> None:
    agent, _ = holding(epoch=5)
    out = agent.switch("shard 0", "w2", 1.0)
    assert out[0] == Rewrite("shard 0", "w2", LEASE, 5, out[0].serial)  # type: ignore[union-attr]
    assert out[1] == StopGranting("shard 0", 5, "handing over to w2")
    assert agent.cap("shard 0", 1.0) is None
    rewrite = out[0]
    assert isinstance(rewrite, Rewrite)
    assert agent.txn_answered(rewrite, Applied(9), 1.1) == [Granting("shard 0", 9, "w2", 8.9)]


def test_release_deletes_at_our_revision_and_a_late_stray_write_is_cleaned_up() -> None:
    agent, _ = holding(epoch=5)
    [release, stop] = agent.release("shard 0", 1.0)
    assert release == Release("shard 0", 5, release.serial) and stop == StopGranting("shard 0", 5, "released")
    assert isinstance(release, Release)
    assert agent.txn_answered(release, Applied(6), 1.1) == []
    assert agent.groups["shard 0"].state is State.IDLE
    # A late-applied attempt of ours shows up (revision 8, our lease): nobody was granted under it; delete it.
    [stray] = agent.observed("shard 0", Holder("a", "w1", LEASE, 8), 8, 1.2)
    assert stray == Release("shard 0", 8, stray.serial)  # type: ignore[union-attr]


def test_a_hold_nobody_wants_any_more_is_given_back_at_once() -> None:
    agent = Agent("a", TIMING)
    agent.lease_granted(GrantLease(10, 0.0), LEASE, 10, 0.1)
    assert len(agent.want("shard 0", "w1", 0.1)) == 1
    agent.unwant("shard 0")
    [acquire] = agent.poll(1.1)  # the first attempt may have been applied: asked again, for the same identity
    assert acquire == Acquire("shard 0", "w1", LEASE, acquire.serial)  # type: ignore[union-attr]
    assert isinstance(acquire, Acquire)
    [release] = agent.txn_answered(acquire, Applied(5), 1.2)
    assert release == Release("shard 0", 5, release.serial)  # type: ignore[union-attr]


def test_a_move_the_table_lacks_is_our_bug() -> None:
    agent = Agent("a", TIMING)
    with pytest.raises(LocalProtocolError, match="no move 'switch' from idle"):
        agent.switch("shard 0", "w2", 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"ttl": 1}, {"ttl": True}, {"drift": 0.5}, {"margin": -1.0}, {"keepalive_every": 5.0}, {"retry_after": 0.0}],
)
def test_timing_out_of_range_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Timing(**kwargs)  # type: ignore[arg-type]


def test_the_default_timing() -> None:
    timing = Timing()
    assert (timing.ttl, timing.drift, timing.margin, timing.keepalive_every) == (10, 0.01, 1.0, 2.0)
    assert timing.view_length == pytest.approx(8.9)


def test_keys_and_values() -> None:
    assert lease_key("bot", "shards 0-3") == "/bot/groups/shards 0-3/lease"
    with pytest.raises(ValueError):
        lease_key("a/b", "shard 0")
    value = holder_value("host-1", "child-3f9a2c-2")
    assert value == b'{"agent":"host-1","identity":"child-3f9a2c-2"}'
    assert parse_holder(value, 7, 12) == Holder("host-1", "child-3f9a2c-2", 7, 12)
    assert parse_holder(b"garbage", 7, 12) == Holder("", "", 7, 12)  # someone else's: still a holder
    assert parse_holder(b'{"agent": 1, "identity": "x"}', 7, 12).agent == ""
