"""WorkerProtocol on a fake clock: every self-fencing decision, with sending and answering at different instants."""

from __future__ import annotations

import random
from typing import Any

import pytest

from urban_robot.protocol import (
    PART_BYTES,
    ApplyCache,
    Backoff,
    CacheChange,
    CacheMap,
    CacheSync,
    CollectCache,
    Coma,
    DropConnection,
    Effect,
    Failed,
    Finish,
    HealthReport,
    Heartbeat,
    Identify,
    Link,
    Log,
    Login,
    Ready,
    Reconnect,
    RunHealthCheck,
    Send,
    Shutdown,
    StartProcessing,
    StopProcessing,
    Timeouts,
    WorkerProtocol,
    encode_value,
)

HELLO = {"protocol": 1, "token": "tok", "process_commands": False, "interval": 10, "lease": 15, "epoch": 0}


def sends(effects: list[Effect]) -> list[Send]:
    return [e for e in effects if isinstance(e, Send)]


def only_send(effects: list[Effect]) -> Send:
    (send,) = sends(effects)
    return send


def kinds(effects: list[Effect]) -> list[str]:
    names = []
    for e in effects:
        if isinstance(e, Send):
            names.append("send:" + e.request.message.event)
        elif not type(e).__name__ == "Log":
            names.append(type(e).__name__)
    return names


def served(now: float = 0.0, **kwargs: Any) -> WorkerProtocol:
    p = WorkerProtocol(Identify("1.0", 42, 3), rng=random.Random(1), **kwargs)
    identify = only_send(p.connected(now))
    assert identify.request.message == Identify("1.0", 42, 3)
    effects = p.answered(identify.request.id, HELLO, now)
    assert p.link is Link.SERVING and Login("tok") in effects
    return p


def granted(p: WorkerProtocol, now: float, epoch: int = 1) -> Send:
    """A process_commands push; returns the heartbeat it sends at once."""
    effects = p.pushed("cmd", {"t": "process_commands", "d": {"epoch": epoch, "lease": 15, "lease_token": "t"}}, now)
    beat = only_send(effects)
    assert beat.request.message == Heartbeat(epoch, None) and beat.request.sent_at == now
    return beat


def test_lease_counts_from_the_sending_not_the_answer() -> None:
    p = served()
    beat = granted(p, now=100.0)
    assert not p.processing(100.0)  # a grant is not permission
    effects = p.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=104.0)  # a slow answer
    assert StartProcessing(1) in effects
    assert p.processing(114.999) and not p.processing(115.0)  # 100 + 15, not 104 + 15
    assert p.next_deadline() == 110.0  # the next heartbeat comes first
    p.timer(110.0)
    assert p.lease.until == 115.0


def test_the_lease_ends_at_the_exact_instant_and_work_in_flight_is_cancelled() -> None:
    p = served()
    beat = granted(p, now=0.0)
    p.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=1.0)
    second = only_send(p.timer(10.0))  # the next heartbeat: never answered
    assert second.request.deadline == 10.0 + Timeouts().ack
    p.disconnected(12.0)  # and the connection goes: nothing renews
    assert p.next_deadline() == 15.0
    assert p.timer(14.999) == []
    effects = p.timer(15.0)
    assert StopProcessing("lease ran out", drain=False) in effects and not p.processing(15.0)


def test_a_renewal_after_the_lease_it_grants_has_ended_is_useless() -> None:
    p = served()
    beat = granted(p, now=0.0)
    effects = p.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=15.0)
    assert not any(isinstance(e, StartProcessing) for e in effects) and not p.processing(15.0)


@pytest.mark.parametrize(
    "answer",
    [
        {"epoch": 1, "lease": float("inf")},
        {"epoch": 1, "lease": True},
        {"epoch": 1, "lease": "15"},
        {"epoch": 1.0, "lease": 15},
        {"lease": 15},
        {"error": "no"},
        None,
    ],
)
def test_a_malformed_renewal_is_no_renewal(answer: Any) -> None:
    p = served()
    beat = granted(p, now=0.0)
    effects = p.answered(beat.request.id, answer, now=0.5)
    assert not any(isinstance(e, StartProcessing) for e in effects) and not p.processing(0.5)


@pytest.mark.parametrize("answer", [{"epoch": 1, "lease": 0}, {"epoch": 2, "lease": 15}])
def test_refused_or_another_epoch_fences_at_once(answer: dict[str, Any]) -> None:
    p = served()
    beat = granted(p, now=0.0)
    p.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=0.1)
    again = only_send(p.beat(5.0))
    effects = p.answered(again.request.id, answer, now=5.1)
    assert StopProcessing("fenced off", drain=False) in effects
    assert not p.processing(5.1) and p.lease.grant is None


def test_an_answer_to_a_heartbeat_of_an_older_grant_is_ignored() -> None:
    p = served()
    old = granted(p, now=0.0, epoch=1)
    granted(p, now=1.0, epoch=2)
    effects = p.answered(old.request.id, {"epoch": 1, "lease": 15}, now=1.5)
    assert not any(isinstance(e, StartProcessing) for e in effects) and not p.processing(1.5)


def test_coma_stops_before_the_final_cache_and_the_ack() -> None:
    p = served()
    beat = granted(p, now=0.0)
    p.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=0.1)
    effects = p.pushed("cmd", {"t": "coma", "d": {"reason": "newer", "cache_sync": True}}, now=2.0)
    assert not p.processing(2.0)  # from this instant: nothing new starts
    assert kinds(effects) == ["StopProcessing", "CollectCache"]
    assert effects[-2] == StopProcessing("coma", drain=True, lease_ends=15.0)  # the view's end, before the drop
    cache = only_send(p.cache_collected({"r": 1}, now=2.5))
    assert cache.request.message == CacheSync(1, 0, 1, True, {"": b'{"r":1}'})  # the plain cache: entry ""
    coma = only_send(p.answered(cache.request.id, {"accepted": True}, now=3.0))
    assert coma.request.message == Coma("newer")
    assert p.answered(coma.request.id, {}, now=3.1) == [] and p.link is Link.SERVING


@pytest.mark.parametrize(
    "stop",
    [
        lambda p, now: p.pushed("cmd", {"t": "coma", "d": {"reason": "r", "cache_sync": True}}, now),
        lambda p, now: p.pushed("cmd", {"t": "shutdown", "d": {"reason": "r", "cache_sync": False}}, now),
        lambda p, now: p.coma("gateway down", now),
        lambda p, now: p.shutdown("SIGTERM", now),
        lambda p, now: p.fail("token refused", "reset it", now),
    ],
)
def test_a_drain_carries_the_end_of_the_lease_view_it_must_not_outlive(stop: Any) -> None:
    """§8.1 rule 3: the grant is dropped at once, but the drain may last only as long as the lease it had."""
    p = served()
    beat = granted(p, now=5.0)
    p.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=6.0)  # the view ends at 5 + 15 = 20
    [effect] = [e for e in stop(p, 12.0) if isinstance(e, StopProcessing)]
    assert effect.drain and effect.lease_ends == 20.0 and p.lease.until == float("-inf")
    assert effect.drain_until(now=12.0, timeout=30.0) == 20.0  # the lease ends first
    assert effect.drain_until(now=12.0, timeout=5.0) == 17.0  # the drain time-out ends first
    assert effect.drain_until(now=21.0, timeout=5.0) == 20.0  # carried out late: in the past, cancel at once


def test_a_stop_without_drain_cancels_at_once() -> None:
    stop = StopProcessing("lease ran out", drain=False, lease_ends=100.0)
    assert stop.drain_until(now=50.0, timeout=30.0) == 50.0


def test_coma_without_cache_sync_acks_after_the_stop() -> None:
    p = served()
    beat = granted(p, now=0.0)
    p.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=0.1)
    effects = p.pushed("cmd", {"t": "coma", "d": {"reason": "r", "cache_sync": False}}, now=1.0)
    assert kinds(effects) == ["StopProcessing", "send:coma"]


def test_shutdown_command_finishes_after_its_ack() -> None:
    p = served()
    effects = p.pushed("cmd", {"t": "shutdown", "d": {"reason": "outdated", "cache_sync": False}}, now=1.0)
    ack = only_send(effects)
    assert ack.request.message == Shutdown("outdated") and not p.finished
    assert p.answered(ack.request.id, {}, now=1.1) == [Finish("outdated")] and p.finished


def test_a_holder_shutting_down_by_itself_hands_its_cache_over_first() -> None:
    p = served()
    beat = granted(p, now=0.0)
    p.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=0.1)
    effects = p.shutdown("bye", now=1.0)
    assert kinds(effects) == ["StopProcessing", "CollectCache"] and not p.processing(1.0)
    assert effects[0] == StopProcessing("bye", True, 15.0)  # work in flight ends (by its lease end) before the cache
    cache = only_send(p.cache_collected([1], now=1.1))
    shutdown = only_send(p.answered(cache.request.id, {"accepted": True}, now=1.2))
    assert shutdown.request.message == Shutdown("bye")
    assert p.answered(shutdown.request.id, {}, now=1.3) == [Finish("bye")]


def test_failed_says_why_then_ends_as_a_failure() -> None:
    p = served()
    failed = only_send(p.fail("Discord refused the token", "reset it in the developer portal", now=1.0))
    assert failed.request.message == Failed("Discord refused the token", "reset it in the developer portal")
    finish = p.answered(failed.request.id, {}, now=1.1)
    assert finish == [
        Finish("Discord refused the token", "Discord refused the token: reset it in the developer portal")
    ]


def test_failing_while_disconnected_finishes_at_once() -> None:
    p = WorkerProtocol(Identify("1.0"))
    effects = p.fail("bad token", "", now=0.0)
    assert effects == [Finish("bad token", "bad token")] and p.finished


def test_no_answer_in_time_drops_the_connection_then_backs_off() -> None:
    p = served(backoff=Backoff(initial=1.0, cap=8.0, jitter=0.0))
    beat = only_send(p.beat(0.0))
    assert p.next_deadline() == beat.request.deadline == Timeouts().ack
    effects = p.timer(Timeouts().ack)
    assert kinds(effects) == ["DropConnection"]
    assert Reconnect(1.0) in p.disconnected(10.0)  # a session that got a hello: back-off starts over
    assert Reconnect(2.0) in p.disconnected(11.0)  # then grows
    assert Reconnect(4.0) in p.disconnected(12.0)


def test_a_holder_retries_its_supervisor_every_fifth_of_a_second_at_most_others_back_off_further() -> None:
    """A supervisor restart: every moment the holder does not see it is a moment of its lease gone unadopted."""
    backoff = Backoff(initial=0.1, cap=1.0, jitter=0.0, holder_cap=0.2)
    holder, standby = served(backoff=backoff), served(backoff=backoff)
    beat = granted(holder, now=0.0)
    holder.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=0.1)
    holder_delays = [e.delay for t in range(6) for e in holder.disconnected(1.0 + t) if isinstance(e, Reconnect)]
    standby_delays = [e.delay for t in range(6) for e in standby.disconnected(1.0 + t) if isinstance(e, Reconnect)]
    assert holder_delays == [0.1, 0.2, 0.2, 0.2, 0.2, 0.2]
    assert standby_delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_reconnecting_holder_claims_its_grant_and_renews_at_once_when_adopted() -> None:
    p = served()
    beat = granted(p, now=0.0, epoch=7)
    p.answered(beat.request.id, {"epoch": 7, "lease": 15}, now=0.1)
    p.disconnected(3.0)
    assert p.processing(3.0)  # still processing until its own view ends (§8.1 rule 3)
    identify = only_send(p.connected(4.0))
    assert identify.request.message == Identify("1.0", 42, 3, 7, "t")
    effects = p.answered(identify.request.id, {**HELLO, "process_commands": True, "epoch": 7}, now=4.1)
    beat = only_send(effects)
    assert beat.request.message == Heartbeat(7, None) and Login("tok") not in effects


def test_a_claim_not_adopted_stops_processing_at_once() -> None:
    p = served()
    beat = granted(p, now=0.0, epoch=7)
    p.answered(beat.request.id, {"epoch": 7, "lease": 15}, now=0.1)
    p.disconnected(3.0)
    identify = only_send(p.connected(4.0))
    effects = p.answered(identify.request.id, HELLO, now=4.1)
    assert StopProcessing("grant not adopted", drain=False) in effects
    assert not p.processing(4.1) and p.lease.grant is None


def test_the_hello_push_twin_counts_when_it_comes_first() -> None:
    p = WorkerProtocol(Identify("1.0"))
    identify = only_send(p.connected(0.0))
    effects = p.pushed("hello", HELLO, now=0.1)
    assert Login("tok") in effects and p.link is Link.SERVING
    assert p.answered(identify.request.id, HELLO, now=0.2) == []  # its twin: ignored


def test_ready_is_sent_again_after_each_reconnection() -> None:
    p = served()
    assert sends(p.discord_is_ready(1.0))[0].request.message == Ready()
    p.disconnected(2.0)
    identify = only_send(p.connected(3.0))
    effects = p.answered(identify.request.id, HELLO, now=3.1)
    assert [s.request.message for s in sends(effects)] == [Ready()]


def test_a_gateway_change_is_reported_at_once_in_a_heartbeat() -> None:
    p = served()
    p.discord_is_ready(0.0)
    beat = only_send(p.gateway_changed(False, now=5.0))
    assert beat.request.message == Heartbeat(None, False)
    assert p.gateway_changed(False, now=5.5) == []
    assert only_send(p.gateway_changed(True, now=6.0)).request.message == Heartbeat(None, True)


def test_pushes_become_effects() -> None:
    p = served()
    assert kinds(p.pushed("cmd", {"t": "health_check", "d": {}}, 0.0)) == ["RunHealthCheck"]
    assert p.pushed("cache_sync", {"sync": 1, "part": 0, "parts": 1, "full": True, "set": {"": b'{"a":1}'}}, 0.0) == [
        ApplyCache({"a": 1})
    ]
    [refused] = p.pushed("cache_sync", {"cache": {"a": 1}}, 0.0)  # the old form: said, not applied
    assert isinstance(refused, Log) and "no longer accepted" in refused.message
    report = only_send(p.health_collected(HealthReport(OK=True), 0.1))
    assert report.request.deadline == 0.1 + Timeouts().health
    assert kinds(p.pushed("cmd", {"t": "ok", "d": {}}, 0.0)) == []
    assert kinds(p.pushed("cmd", {"t": "dance"}, 0.0)) == []  # unknown: logged, ignored
    assert kinds(p.pushed("cmd", {"t": "process_commands", "d": {"epoch": "1"}}, 0.0)) == []  # malformed
    assert isinstance(RunHealthCheck(), RunHealthCheck) and CollectCache() == CollectCache()


def test_refused_secret_finishes_with_an_error() -> None:
    p = WorkerProtocol(Identify("1.0"))
    effects = p.refused(0.0, "authentication failed")
    assert p.finished and isinstance(effects[-1], Finish) and "URBAN_ROBOT_SECRET" in (effects[-1].error or "")
    assert kinds(p.connected(1.0)) == ["DropConnection"]
    assert isinstance(p.connected(1.0)[0], DropConnection)


def test_a_coma_by_itself_stops_processing_before_it_says_so() -> None:
    """The unasked coma (§5.6): no new work from this instant, work in flight drained, then ``coma`` is sent."""
    p = served()
    beat = granted(p, now=0.0)
    p.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=0.1)
    effects = p.coma("gateway lost", now=1.0)
    # drained until the worker's own lease view ends (0.0 sent + 15), never longer (§8.1 rule 3)
    assert [e for e in effects if not type(e).__name__ == "Log"][:1] == [StopProcessing("coma", True, 15.0)]
    assert kinds(effects) == ["StopProcessing", "send:coma"]
    assert only_send(effects).request.message == Coma("gateway lost")
    assert not p.processing(1.0) and p.lease.grant is None
    assert only_send(p.beat(2.0)).request.message == Heartbeat(None, None)  # it claims no epoch any more


def test_a_coma_while_disconnected_stops_processing_and_sends_nothing() -> None:
    p = served()
    beat = granted(p, now=0.0)
    p.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=0.1)
    p.disconnected(0.5)
    assert p.processing(1.0)  # a lease view outlives the connection ...
    assert p.coma("going away", now=1.0) == [StopProcessing("coma", True, 15.0)]  # ... until it is given up
    assert not p.processing(1.0)


# -- the cache in parts, and a CacheMap's deltas (§11) ----------------------------------------------------------
def mapped(cache: CacheMap) -> WorkerProtocol:
    p = served()
    p.cache, p.mapped = cache, True
    return p


def sends_of(effects: list[Any]) -> list[CacheSync]:
    return [e.request.message for e in effects if isinstance(e, Send) and isinstance(e.request.message, CacheSync)]


def test_a_plain_cache_larger_than_a_part_goes_in_parts_and_the_last_answer_is_the_syncs() -> None:
    p = served()
    value = "x" * (PART_BYTES + 10)
    parts = sends_of(p.sync_cache(value, 1.0))
    assert [(m.part, m.parts, m.full) for m in parts] == [(0, 2, True), (1, 2, True)]
    assert b"".join(m.set[""] for m in parts) == encode_value(value)


def test_a_cache_map_sends_everything_first_then_only_what_changed() -> None:
    cache = CacheMap({"a": 1, "b": [2]})
    p = mapped(cache)
    [first] = sends_of(p.sync_cache(None, 1.0))
    assert first.full and set(first.set) == {"a", "b"}
    [send] = [e for e in p.sync_cache(None, 1.0) if isinstance(e, Send)]  # nothing changed: an empty delta
    p.answered(send.request.id - 1, {"accepted": True}, 1.1)  # the first sync is kept: in step from here
    cache["a"] = 10
    del cache["b"]
    [delta] = sends_of(p.sync_cache(None, 2.0))
    assert not delta.full and delta.set == {"a": b"10"} and delta.delete == ("b",)


def test_a_refused_delta_with_resync_is_sent_again_whole_and_the_final_waits_for_it() -> None:
    cache = CacheMap({"a": 1})
    p = mapped(cache)
    beat = granted(p, now=0.0)
    p.answered(beat.request.id, {"epoch": 1, "lease": 15}, now=0.1)
    [full] = [e for e in p.sync_cache(None, 0.2) if isinstance(e, Send)]
    p.answered(full.request.id, {"accepted": True}, 0.3)
    cache["a"] = 2
    effects = p.pushed("cmd", {"t": "coma", "d": {"reason": "newer", "cache_sync": True}}, now=1.0)
    assert kinds(effects) == ["StopProcessing", "send:cache_sync"]  # no CollectCache: the map is here
    [final] = [e for e in effects if isinstance(e, Send)]
    assert not final.request.message.full and final.request.message.set == {"a": b"2"}
    again = p.answered(final.request.id, {"accepted": False, "error": "not shared", "resync": True}, 1.1)
    [whole] = [e for e in again if isinstance(e, Send)]
    assert whole.request.message.full and whole.request.message.set == {"a": b"2"}
    coma = only_send(p.answered(whole.request.id, {"accepted": True}, 1.2))
    assert coma.request.message == Coma("newer")


def test_pushes_in_parts_update_a_cache_map_in_place() -> None:
    cache = CacheMap()
    p = mapped(cache)
    change = CacheChange(True, {"k": (encode_value({"deep": [1, b"\x00"]}),), "j": (b"3",)})
    effects: list[Any] = []
    for part in change.parts(7, part_bytes=5):
        effects += p.pushed("cache_sync", part.payload(), 0.0)
    assert effects == [ApplyCache(cache)] and dict(cache) == {"k": {"deep": [1, b"\x00"]}, "j": 3}
    delta = CacheChange(False, {"j": (b"4",)}, frozenset({"k"}))
    [part] = delta.parts(8)
    assert p.pushed("cache_sync", part.payload(), 0.0) == [ApplyCache(cache)] and dict(cache) == {"j": 4}
    assert not cache.changed  # what the supervisor pushed is not ours to send back
