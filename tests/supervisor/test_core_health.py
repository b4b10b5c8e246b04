"""The core's view of a worker's health beyond its check: its Discord Gateway, ``failed``, and seeds-era mistakes.

Table tests at exact instants (the core is sans-IO: ``now`` is an argument).
"""

from __future__ import annotations

from typing import Any

from tests._helpers import cache_sync
from tests.supervisor.test_core import HEALTHY, Driver
from urban_robot.supervisor import (
    ComaAck,
    Connected,
    HealthReport,
    Heartbeat,
    Identified,
    Notify,
    ProcessExited,
    Ready,
    Reply,
    Role,
    RollbackFinished,
    Send,
    Settings,
    ShutdownAck,
    Spawn,
    TimerFired,
    WorkerFailed,
)
from urban_robot.supervisor._core import HEALTH_REPORT_FIX

SETTINGS = Settings(
    token="t", interval=10, grace=5, lease_margin=2, health_timeout=20, ack_timeout=8, gateway_down_limit=3
)


def holder_and_standby(settings: Settings = SETTINGS) -> Driver:
    """``a`` holds epoch 1 (renewed at 0: our lease runs to 17), ``b`` is an approved standby of the same age."""
    d = Driver(settings)
    d.join("a")
    d.renew("a", 1)
    d.join("b")
    return d


def gateway(d: Driver, sid: str, up: bool | None, at: float) -> list[Any]:
    epoch = d.core.lease.epoch if d.core.lease is not None and d.core.lease.sid == sid else None
    return d.feed(Heartbeat(sid, epoch, gateway=up), at=at)


def reply(out: list[Any]) -> Any:
    return next(a.data for a in out if isinstance(a, Reply))


def notes(out: list[Any], level: str) -> list[str]:
    return [a.message for a in out if isinstance(a, Notify) and a.level == level]


# -- the Gateway -------------------------------------------------------------------------------------------------
def test_holder_hands_over_exactly_at_down_since_plus_limit_not_before() -> None:
    d = holder_and_standby()
    assert d.cmds(gateway(d, "a", False, at=10), "a") == []
    assert d.core.next_deadline() == 13  # on time, not at the next event
    assert d.cmds(d.feed(TimerFired(), at=12.999), "a") == []
    assert d.cmds(gateway(d, "a", False, at=12.5), "a") == []  # still down: the clock runs from the first report
    out = d.feed(TimerFired(), at=13)
    assert d.cmds(out, "a") == ["coma"]
    coma = next(a.data["d"] for a in out if isinstance(a, Send) and a.sid == "a" and a.event == "cmd")
    assert coma == {"reason": "gateway down for 3.0 s: hand-over to id-b", "cache_sync": True}
    assert d.cmds(out, "b") == []  # the normal hand-over: not before the holder stopped
    assert reply(gateway(d, "a", False, at=13.5))["lease"] == 0
    d.feed(cache_sync("a", {"n": 1}), at=13.6)
    out = d.feed(ComaAck("a", "asked"), at=13.7)
    assert d.grant(out, "b")["epoch"] == 2
    assert d.core.clients["a"].role is Role.STANDBY
    assert d.core.next_deadline() != 13.7 + 3  # b's Gateway is up: nothing is due


def test_a_holder_whose_gateway_comes_back_before_the_limit_keeps_the_lease() -> None:
    d = holder_and_standby()
    gateway(d, "a", False, at=10)
    gateway(d, "a", True, at=12.9)
    assert d.core._gateway_deadline() is None  # no hand-over is timed any more
    for t in (13, 14, 20):
        d.feed(Heartbeat("b"), at=t)  # the standby keeps talking
        assert d.cmds(d.feed(TimerFired(), at=t), "a") == []
    gateway(d, "a", False, at=21)  # down again: counted afresh
    assert d.core.next_deadline() == 24
    assert d.cmds(d.feed(TimerFired(), at=24), "a") == ["coma"]


def test_a_heartbeat_without_gateway_changes_nothing() -> None:
    d = holder_and_standby()
    gateway(d, "a", False, at=10)
    gateway(d, "a", None, at=11)  # a worker that does not say is not up again
    assert d.core.clients["a"].gateway is False and d.core.clients["a"].gateway_down_since == 10
    assert d.cmds(d.feed(TimerFired(), at=13), "a") == ["coma"]


def test_never_handed_over_to_a_standby_whose_gateway_is_down() -> None:
    d = holder_and_standby()
    gateway(d, "b", False, at=1)
    gateway(d, "a", False, at=2)
    assert d.core._gateway_deadline() is None  # nobody better: no hand-over is timed
    for t in (5, 10, 16):
        d.feed(Heartbeat("b", gateway=False), at=t)  # the standby keeps talking, its Gateway still down
        assert d.cmds(d.feed(TimerFired(), at=t), "a") == []
    gateway(d, "a", False, at=16)  # renewed
    out = gateway(d, "b", True, at=20)  # a standby with a Gateway, long past a's limit: at once
    assert d.cmds(out, "a") == ["coma"]
    coma = next(a.data["d"] for a in out if isinstance(a, Send) and a.sid == "a" and a.event == "cmd")
    assert coma["reason"] == "gateway down for 18.0 s: hand-over to id-b"


def test_a_standby_whose_gateway_is_down_is_never_promoted() -> None:
    d = holder_and_standby()
    gateway(d, "b", False, at=1)
    out = d.feed(ProcessExited("id-a", -9), at=2)  # failover, but b is not connected to Discord
    assert d.cmds(out, "b") == [] and d.core.lease is None
    d.feed(Heartbeat("b", gateway=False), at=16)  # still down, still talking
    assert d.cmds(d.feed(TimerFired(), at=30), "b") == []
    out = gateway(d, "b", True, at=31)
    assert d.grant(out, "b")["epoch"] == 2


def test_a_newer_standby_without_a_gateway_gets_no_handover_until_it_has_one() -> None:
    d = Driver(SETTINGS)
    d.join("old", version="1.0")
    d.renew("old", 1)
    d.feed(Connected("new", identity="id-new"))
    d.feed(Identified("new", version="2.0"))
    gateway(d, "new", False, at=1)
    d.feed(Ready("new"), at=1)
    out = d.feed(HealthReport("new", HEALTHY), at=1)
    assert d.cmds(out, "old") == []  # approved and newer, but deaf to Discord
    out = gateway(d, "new", True, at=2)
    assert d.cmds(out, "old") == ["coma"]


def test_gateway_handover_is_a_coma_even_with_shutdown_if_outdated_and_happens_while_insane() -> None:
    settings = Settings(
        token="t", interval=10, grace=5, lease_margin=2, shutdown_if_outdated=True, gateway_down_limit=3
    )
    d = holder_and_standby(settings)
    d.feed(RollbackFinished(False, "broken"))
    assert d.core.is_sane is False
    gateway(d, "a", False, at=1)
    out = d.feed(TimerFired(), at=4)
    assert d.cmds(out, "a") == ["coma"]  # it is not outdated, and a bot that hears nothing is worse than insane


def test_the_newest_standby_with_a_gateway_takes_over() -> None:
    d = Driver(SETTINGS)
    d.join("a", version="1.0")
    d.renew("a", 1)
    d.join("b", version="1.0")
    d.feed(Connected("c", identity="id-c"))
    d.feed(Identified("c", version="2.0"))
    gateway(d, "c", False, at=0)
    d.feed(Ready("c"))
    d.feed(HealthReport("c", HEALTHY))
    gateway(d, "a", False, at=1)
    out = d.feed(TimerFired(), at=4)
    assert "hand-over to id-b" in next(a.data["d"]["reason"] for a in out if isinstance(a, Send) and a.sid == "a")
    d.feed(ComaAck("a", "asked"), at=4)
    assert d.core.running_client == "b"


# -- failed ---------------------------------------------------------------------------------------------------
REFUSED = ("the token was refused", "reset it in the developer portal and update BOT_TOKEN")


def test_a_failed_holder_is_released_like_a_shutdown_ack_and_its_exit_is_a_crash() -> None:
    d = holder_and_standby(Settings(spawn_workers=True, crash_loop_losses=5))
    out = d.feed(WorkerFailed("a", *REFUSED), at=5)
    assert reply(out) == {}
    assert d.core.clients["a"].role is Role.FAILED
    assert d.grant(out, "b")["epoch"] == 2  # it stopped processing before it said so
    assert notes(out, "critical") == [
        "a worker (version 1.0) cannot work: the token was refused — "
        "reset it in the developer portal and update BOT_TOKEN"
    ]
    assert d.core.failures["id-a"].text == " — ".join(REFUSED)
    out = d.feed(ProcessExited("id-a", 1), at=6)
    assert d.core.losses == [6]  # counted toward the crash loop ...
    assert [a.reason for a in out if isinstance(a, Spawn)] == ["replace id-a: exited (1)"]  # ... and replaced


def test_a_failing_worker_is_never_promoted() -> None:
    d = Driver(SETTINGS)
    d.feed(Connected("a", identity="id-a"))
    d.feed(Identified("a", version="1.0"))
    d.feed(WorkerFailed("a", "privileged intent refused", "enable the Message Content intent"))
    assert d.core.clients["a"].role is Role.FAILED
    d.feed(Connected("z", identity="id-z"))
    out = d.feed(WorkerFailed("z", "privileged intent refused", "enable it"))  # before it identified
    assert notes(out, "critical") == ["a worker cannot work: privileged intent refused — enable it"]
    assert reply(d.feed(Ready("a"))) == {}  # late news changes nothing
    assert d.core.lease is None and d.core._gateway_deadline() is None


def test_failing_alike_says_the_same_line_so_the_notifier_folds_repeats() -> None:
    d = Driver(Settings(spawn_workers=True, crash_loop_losses=3, crash_loop_window=60))
    lines = []
    for i in range(3):
        d.feed(Connected(f"w{i}", identity=f"child-x-{i}", generation=4), at=float(i))
        d.feed(Identified(f"w{i}", version="1.4.0", generation=4))
        lines += notes(d.feed(WorkerFailed(f"w{i}", *REFUSED)), "critical")
        d.feed(ProcessExited(f"child-x-{i}", 1))
    assert len(set(lines)) == 1
    assert d.core.is_sane is False  # three refused logins in a minute are a crash loop
    assert list(d.core.failures) == ["generation 4"] and d.core.failures["generation 4"].identity == "child-x-2"


def test_failed_after_being_asked_to_shut_down_is_still_a_crash() -> None:
    d = Driver(Settings(crash_loop_losses=5))
    d.join("a", report={"OK": False, "percent": 0, "cogs": {"modules.utilities": True}})  # told to shut down
    assert "id-a" in d.core.leaving
    d.feed(WorkerFailed("a", *REFUSED))
    d.feed(ProcessExited("id-a", 1), at=3)
    assert d.core.losses == [3]


def test_a_failure_is_kept_until_a_worker_of_its_kind_passes_its_check() -> None:
    d = Driver(SETTINGS)
    d.feed(Connected("a", identity="child-1", generation=3))
    d.feed(Identified("a", version="1.0", generation=3))
    d.feed(WorkerFailed("a", *REFUSED), at=7)
    d.feed(Connected("x", identity="worker:ext"))
    d.feed(Identified("x", version="1.0"))
    d.feed(WorkerFailed("x", "intent refused", "enable it"))
    assert set(d.core.failures) == {"generation 3", "worker:ext"}
    assert d.core.failures["generation 3"].at == 7
    d.feed(Connected("b", identity="child-2", generation=2))  # an older kind working says nothing of generation 3
    d.feed(Identified("b", version="1.0", generation=2))
    d.feed(Ready("b"))
    d.feed(HealthReport("b", HEALTHY))
    assert set(d.core.failures) == {"generation 3", "worker:ext"}
    d.feed(Connected("c", identity="child-3", generation=3))
    d.feed(Identified("c", version="1.0", generation=3))
    d.feed(Ready("c"))
    d.feed(HealthReport("c", HEALTHY))
    assert set(d.core.failures) == {"worker:ext"}
    d.feed(WorkerFailed("a", *REFUSED))  # generation 3 fails again; a deploy of 4 that works makes it history
    d.feed(Connected("e", identity="child-4", generation=4))
    d.feed(Identified("e", version="1.0", generation=4))
    d.feed(Ready("e"))
    d.feed(HealthReport("e", HEALTHY))
    assert set(d.core.failures) == {"worker:ext"}


# -- the seeds' protocol, kindly refused ---------------------------------------------------------------------------
def test_a_holder_heartbeat_without_epoch_is_refused_and_told_why_once() -> None:
    d = Driver(SETTINGS)
    d.join("a")
    d.join("b")
    out = d.feed(Heartbeat("a", None))  # one may have crossed the grant on the wire: a v1 worker is not scolded
    assert reply(out) == {"epoch": 1, "lease": 0} and notes(out, "warning") == []
    out = d.feed(Heartbeat("a", None))  # a second one is the seeds' heartbeat
    assert reply(out) == {
        "epoch": 1,
        "lease": 0,
        "error": 'heartbeat needs {"epoch": 1}: the epoch of the grant from cmd process_commands (protocol v1 §5.2)',
    }
    assert d.core.lease is not None and not d.core.lease.confirmed  # still no renewal (P1)
    assert [m for m in notes(out, "warning") if "without its epoch" in m] == [
        'id-a holds the lease but heartbeats without its epoch: heartbeat needs {"epoch": 1}: '
        "the epoch of the grant from cmd process_commands (protocol v1 §5.2)"
    ]
    out = d.feed(Heartbeat("a", None))
    assert "error" in reply(out) and notes(out, "warning") == []  # said every time, warned once
    assert reply(d.feed(Heartbeat("b", None))) == {"epoch": 1, "lease": 0}  # a standby's null epoch is right


def test_a_report_that_is_no_object_fails_at_once_and_is_told_the_fix() -> None:
    d = Driver(SETTINGS)
    d.join("old", version="1.0")
    d.renew("old", 1)
    d.feed(Connected("a", identity="id-a"))
    d.feed(Identified("a", version="2.0"))
    d.feed(Ready("a"), at=1)
    out = d.feed(HealthReport("a", "OK"), at=1)
    assert reply(out) == {"error": HEALTH_REPORT_FIX}
    assert d.cmds(out, "a") == ["shutdown"]  # the verdict now, not after health_timeout
    assert d.core.clients["a"].role is Role.SHUTTING_DOWN
    assert [m for m in notes(out, "warning") if "health_check_malformed" in m] == [
        f"id-a (version 2.0) failed its health check: health_check_malformed — {HEALTH_REPORT_FIX}"
    ]


def test_a_spawned_childs_generation_is_the_supervisors_record_not_its_claim() -> None:
    d = Driver(SETTINGS)
    d.join("a", generation=3)  # a real deploy, generation 3
    d.renew("a", 1)
    d.feed(Connected("c", identity="child-c", generation=2))
    out = d.feed(Identified("c", version="9.0", generation=9))  # claims to outrank the deploy
    assert d.core.clients["c"].generation == 2
    hello = next(a.data for a in out if isinstance(a, Send) and a.event == "hello")
    assert "spawned as generation 2: 2 counts" in hello["warning"]
    d.feed(Ready("c"))
    out = d.feed(HealthReport("c", HEALTHY))
    assert d.cmds(out, "a") == []  # no hand-over to a child that only said it was newer


def test_identify_without_generation_from_a_child_uses_ours_and_warns_once() -> None:
    d = Driver(SETTINGS)
    d.feed(Connected("c", identity="child-c", generation=5))
    out = d.feed(Identified("c", version="1.0"))
    assert d.core.clients["c"].generation == 5
    hello = next(a.data for a in out if isinstance(a, Send) and a.event == "hello")
    assert hello["warning"] == (
        'identify needs "generation": send URBAN_ROBOT_GENERATION from your environment (protocol v1 §5.1); '
        "generation 5, the one this child was spawned with, counts"
    )
    assert Reply(hello) in out
    assert len(notes(out, "warning")) == 1
    d.feed(Connected("x", identity="worker:ext"))  # an external worker: its claim (or none) is all there is
    out = d.feed(Identified("x", version="1.0"))
    assert d.core.clients["x"].generation is None and notes(out, "warning") == []
    assert "warning" not in next(a.data for a in out if isinstance(a, Send) and a.event == "hello")


def test_a_child_that_says_its_generation_gets_no_warning() -> None:
    d = Driver(SETTINGS)
    d.feed(Connected("c", identity="child-c", generation=5))
    out = d.feed(Identified("c", version="1.0", generation=5))
    assert notes(out, "warning") == []
    assert "warning" not in next(a.data for a in out if isinstance(a, Send) and a.event == "hello")


def test_shutdown_ack_after_failed_keeps_it_a_crash() -> None:
    d = Driver(Settings(crash_loop_losses=5))
    d.join("a")
    d.feed(WorkerFailed("a", *REFUSED))
    d.feed(ShutdownAck("a", "bye"))
    assert d.core.clients["a"].role is Role.FAILED and "id-a" not in d.core.leaving
