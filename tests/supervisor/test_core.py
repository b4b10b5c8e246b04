"""Table-level tests of the sans-IO supervisor core: events in, actions out."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests._helpers import NOTHING_PUSHED, cache_sync, image, plain, pushed
from urban_robot.protocol import CacheChange
from urban_robot.supervisor import (
    CacheSync as CacheSyncEvent,
    CheckFrozen,
    Close,
    ComaAck,
    Connected,
    DeployConfirmed,
    Disconnected,
    Frozen,
    HealthReport,
    Heartbeat,
    Identified,
    Kill,
    Notify,
    Persist,
    PersistCache,
    ProcessExited,
    Ready,
    Reply,
    RetireOlder,
    Role,
    RoleChanged,
    RollBack,
    RollbackFinished,
    Send,
    Settings,
    ShutdownAck,
    Spawn,
    Stopping,
    Supervisor,
    TimerFired,
    TopUp,
    TryAgain,
    WorkerFailed,
    version_key,
)

HEALTHY = {"OK": True, "percent": 100, "cogs": {"modules.utilities": True, "modules.fun": True}}
SETTINGS = Settings(token="secret-token", interval=10, grace=5, lease_margin=2, health_timeout=20, ack_timeout=8)


class Driver:
    """Feeds a Supervisor and keeps what it said, per worker."""

    def __init__(self, settings: Settings = SETTINGS, **kwargs: Any) -> None:
        tokens = (f"token-{n}" for n in range(1, 1000))
        self.core = Supervisor(settings, new_token=lambda: next(tokens), **kwargs)
        self.now = 0.0
        self.actions: list[Any] = []

    def feed(self, event: Any, *, at: float | None = None) -> list[Any]:
        if at is not None:
            self.now = at
        out = self.core.handle(event, self.now)
        self.actions.extend(out)
        return out

    def cmds(self, out: list[Any], sid: str) -> list[str]:
        return [a.data["t"] for a in out if isinstance(a, Send) and a.sid == sid and a.event == "cmd"]

    def join(self, sid: str, version: str = "1.0", generation: int | None = None, report: Any = HEALTHY) -> list[Any]:
        """Connect, identify, become ready and answer the health check."""
        self.feed(Connected(sid, identity=f"id-{sid}"))
        self.feed(Identified(sid, version=version, pid=100, generation=generation))
        out = self.feed(Ready(sid))
        assert self.cmds(out, sid) == ["health_check"]
        return self.feed(HealthReport(sid, report))

    def grant(self, out: list[Any], sid: str) -> dict[str, Any]:
        [grant] = [
            a.data["d"] for a in out if isinstance(a, Send) and a.sid == sid and a.data.get("t") == "process_commands"
        ]
        return dict(grant)

    def renew(self, sid: str, epoch: int | None) -> dict[str, Any]:
        [reply] = [a for a in self.feed(Heartbeat(sid, epoch)) if isinstance(a, Reply)]
        return dict(reply.data)


def test_first_healthy_worker_runs_after_its_check_and_renewal() -> None:
    d = Driver()
    d.feed(Connected("a", identity="child-1"))
    out = d.feed(Identified("a", version="1.0", pid=7))
    hello = next(a.data for a in out if isinstance(a, Send) and a.event == "hello")
    assert hello == {
        "protocol": 1,
        "token": "secret-token",
        "process_commands": False,
        "interval": 10,
        "lease": 15,
        "epoch": 0,
    }
    assert Reply(hello) in out
    assert d.cmds(d.feed(Ready("a")), "a") == ["health_check"]
    out = d.feed(HealthReport("a", HEALTHY))
    assert d.grant(out, "a") == {"epoch": 1, "lease": 15, "lease_token": "token-1", "reason": "no worker running"}
    assert Notify("info", "child-1 (version 1.0) is running, epoch 1: no worker running") in out
    persist = [a for a in out if isinstance(a, Persist)]
    assert persist and persist[0].state["epoch"] == 1
    assert out.index(persist[0]) < next(i for i, a in enumerate(out) if isinstance(a, Send) and a.event == "cmd")
    assert d.core.running_client == "a"
    assert d.renew("a", 1) == {"epoch": 1, "lease": 15}
    assert d.renew("a", 0) == {"epoch": 1, "lease": 0}  # a stale epoch is never renewed


def test_token_is_not_in_the_settings_repr() -> None:
    assert "secret-token" not in repr(SETTINGS)


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        ({"OK": False, "percent": 100, "cogs": {"modules.utilities": False}}, "vital_cog_failed"),
        ({"OK": True, "percent": 100, "cogs": {"modules.fun": True}}, "vital_cog_failed"),  # vital cog missing
        ({"OK": False, "percent": 99.5, "cogs": {"modules.utilities": True}}, "health_check_failure"),
        ({"OK": False, "cogs": {"modules.utilities": True}}, "health_check_failure"),
        ({"OK": "yes"}, "health_check_malformed"),
        ({"OK": False, "percent": 250, "cogs": {}}, "health_check_malformed"),
        ("OK", "health_check_malformed"),
    ],
)
def test_failed_health_check_shuts_the_candidate_down_and_asks_for_rollback(report: Any, reason: str) -> None:
    d = Driver()
    d.join("old", version="1.0")
    d.renew("old", 1)
    out = d.join("new", version="1.1", report=report)
    assert d.cmds(out, "new") == ["shutdown"]
    [rollback] = [a for a in out if isinstance(a, RollBack)]
    assert (rollback.reason, rollback.version, rollback.generation) == (reason, "1.1", None)
    assert d.cmds(out, "old") == []  # the running worker keeps running throughout
    assert d.core.running_client == "old"
    assert d.core.clients["new"].role is Role.SHUTTING_DOWN


def test_percentage_rule_uses_the_configured_threshold() -> None:
    d = Driver(Settings(healthy_percentage=80))
    out = d.join("a", report={"OK": False, "percent": 85, "cogs": {"modules.utilities": True, "x": False}})
    assert d.cmds(out, "a") == ["process_commands"]


def test_health_check_timeout_is_a_failure() -> None:
    d = Driver()
    d.feed(Connected("a", identity="child-1"))
    d.feed(Identified("a", version="1.0"))
    d.feed(Ready("a"))
    d.feed(Heartbeat("a"), at=10)  # alive, just not answering the check
    assert d.core.next_deadline() == 20
    out = d.feed(TimerFired(), at=20)
    assert d.cmds(out, "a") == ["shutdown"]
    assert any(isinstance(a, RollBack) and a.reason == "health_check_timeout" for a in out)


def test_newer_version_takes_over_with_the_final_cache() -> None:
    d = Driver()
    d.join("old", version="0.0.9")
    d.renew("old", 1)
    d.feed(cache_sync("old", {"reminders": [1]}))
    out = d.join("new", version="0.0.10")  # PEP 440: 0.0.10 is newer than 0.0.9
    assert d.cmds(out, "old") == ["coma"]
    coma = next(a.data["d"] for a in out if isinstance(a, Send) and a.sid == "old" and a.event == "cmd")
    assert coma == {"reason": "hand-over to 0.0.10 (id-new)", "cache_sync": True}
    assert d.cmds(out, "new") == []  # not before the old one stopped
    assert d.renew("old", 1)["lease"] == 0  # a stopping holder gets no renewal
    out = d.feed(cache_sync("old", {"reminders": [1, 2]}))
    assert pushed(out, "new") == {"reminders": [1, 2]}
    [kept] = [a for a in out if isinstance(a, PersistCache)]
    assert plain(kept.image) == {"reminders": [1, 2]} and kept.cache_age == 0.0 and kept.final
    out = d.feed(ComaAck("old", "newer version"))
    assert d.grant(out, "new")["epoch"] == 2
    assert not any(isinstance(a, Send) and a.event == "cache_sync" for a in out)  # it has the latest already
    assert d.core.clients["old"].role is Role.STANDBY


def test_cache_reaches_the_new_holder_before_process_commands() -> None:
    d = Driver(cache=image({"restored": True}))
    d.join("a")
    sends = [(a.event, a.data) for a in d.actions if isinstance(a, Send) and a.sid == "a" and a.event != "hello"]
    assert pushed(d.actions, "a") == {"restored": True}  # at its health check already: warm before its grant
    assert [e if e != "cmd" else d["t"] for e, d in sends] == ["cache_sync", "health_check", "process_commands"]


def test_not_newer_stays_in_coma_or_is_shut_down_if_outdated() -> None:
    d = Driver()
    d.join("a", version="2.0")
    d.renew("a", 1)
    out = d.join("b", version="2.0")
    assert d.cmds(out, "a") == [] and d.cmds(out, "b") == []
    assert d.core.clients["b"].role is Role.STANDBY
    d2 = Driver(Settings(shutdown_if_outdated=True))
    d2.join("a", version="2.0")
    d2.renew("a", 1)
    out = d2.join("b", version="1.9")
    assert d2.cmds(out, "b") == ["shutdown"]
    assert d2.core.clients["b"].role is Role.SHUTTING_DOWN
    assert d2.cmds(out, "a") == []
    out = d2.join("c", version="2.0")  # equal is not outdated: a hot standby
    assert d2.cmds(out, "c") == []


def test_generation_beats_version() -> None:
    d = Driver()
    d.join("a", version="9.0", generation=1)
    d.renew("a", 1)
    out = d.join("b", version="1.0", generation=2)
    assert d.cmds(out, "a") == ["coma"]


def test_running_worker_killed_standby_promoted_at_once() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.join("b")
    d.feed(cache_sync("a", {"n": 1}))
    out = d.feed(ProcessExited("id-a", -9), at=3)
    assert d.grant(out, "b")["epoch"] == 2
    assert Close("a", "process exited", "id-a") in out


def test_dropped_connection_alone_is_no_proof_wait_for_the_lease() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)  # at t=0: our lease runs to 0 + 15 + 2
    d.join("b")
    out = d.feed(Disconnected("a"), at=1)
    assert d.cmds(out, "b") == []
    d.feed(Heartbeat("b"), at=3)
    assert d.core.next_deadline() == 17
    assert d.cmds(d.feed(TimerFired(), at=16.9), "b") == []
    out = d.feed(TimerFired(), at=17)
    assert d.grant(out, "b")["epoch"] == 2


def test_silent_external_worker_is_dropped_and_its_lease_runs_out() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)  # at t=0: our view of the lease ends at 0 + 15 + 2
    d.join("b")
    d.feed(Heartbeat("b"), at=14)
    assert d.core.next_deadline() == 15  # a's silence: interval + grace
    out = d.feed(TimerFired(), at=15)
    assert Close("a", "heartbeat silence (15.0 s)", "id-a", hung=True) in out
    assert d.cmds(out, "b") == [] and d.core.lease is not None  # an external worker may still be processing
    out = d.feed(TimerFired(), at=17)
    assert d.cmds(out, "b") == ["process_commands"]


def join_child(d: Driver, sid: str) -> list[Any]:
    """A worker the process manager spawned (generation 1): its silence is the kernel's to fence."""
    d.feed(Connected(sid, identity=f"id-{sid}", generation=1))
    d.feed(Identified(sid, version="1.0", pid=100, generation=1))
    d.feed(Ready(sid))
    return d.feed(HealthReport(sid, HEALTHY))


# interval, frozen_limit, hang_limit, lease = interval + grace, margin: the defaults' shape, scaled for reading.
CHILD_SETTINGS = Settings(
    token="t", interval=1, grace=9, lease_margin=2, frozen_limit=2.5, hang_limit=8, spawn_workers=True
)


@pytest.mark.parametrize(
    ("kernel_says_stopped", "fenced_at", "reason"),
    [
        (True, 2.5, "frozen: its process is stopped, silent for 2.5 s"),  # SIGSTOP: fenced at the first probe
        (False, 8.0, "hung: silent for 8.0 s"),  # blocked or partitioned: only after hang_limit, stopped or not
    ],
)
def test_silent_child_is_killed_and_its_lease_released_only_by_its_exit(
    kernel_says_stopped: bool, fenced_at: float, reason: str
) -> None:
    d = Driver(CHILD_SETTINGS)
    join_child(d, "a")
    d.renew("a", 1)  # heard at 0; our lease view ends at 0 + 10 + 2
    join_child(d, "b")
    probes = 0.0
    while True:
        deadline = d.core.next_deadline()
        assert deadline is not None and deadline <= fenced_at
        d.feed(Heartbeat("b"), at=deadline - 0.5)  # the standby keeps talking
        out = d.feed(TimerFired(), at=deadline)
        if CheckFrozen("a", "id-a") in out:
            probes += 1
            if kernel_says_stopped:
                out = d.feed(Frozen("id-a"))
        if any(isinstance(a, (Close, Kill)) for a in out):
            break
    assert d.now == fenced_at and (probes == 1 if kernel_says_stopped else probes == 6)  # at 2.5, then each second
    assert Kill("id-a", reason) in out  # the process manager SIGKILLs it; its connection ends with it
    assert not any(isinstance(a, Close) for a in out)  # not closed from our side (docs/reliability.md)
    assert d.cmds(out, "b") == [] and d.core.lease is not None and d.core.lease.sid is None
    # No word yet (issue 12): the exit a moment later ends the lease, and the promotion says why.
    assert not any(isinstance(a, Notify) for a in out)
    out = d.feed(ProcessExited("id-a", -9), at=fenced_at + 0.01)  # waitpid: the kill is confirmed
    assert d.grant(out, "b") == {
        "epoch": 2,
        "lease": 10,
        "lease_token": "token-2",
        "reason": "failover: id-a exited (-9)",
    }
    assert Spawn("replace id-a: exited (-9)") in out


def test_a_child_blocked_for_five_seconds_is_probed_but_not_fenced() -> None:
    d = Driver(CHILD_SETTINGS)
    join_child(d, "a")
    d.renew("a", 1)
    out = d.feed(TimerFired(), at=2.5)
    assert out == [CheckFrozen("a", "id-a")]  # the kernel says running (a blocked loop): no answer comes
    for t in (3.5, 4.5, 5.5):
        assert d.feed(TimerFired(), at=t) == [CheckFrozen("a", "id-a")]
    d.now = 6.0  # the loop runs again (blocked 5 s, from 1 s after its last heartbeat)
    assert d.renew("a", 1)["lease"] == 10
    assert d.core.next_deadline() == 6 + 2.5 and d.core.running_client == "a"


def test_a_late_frozen_answer_does_not_fence_a_child_that_spoke_since() -> None:
    d = Driver(CHILD_SETTINGS)
    join_child(d, "a")
    d.renew("a", 1)
    assert d.feed(TimerFired(), at=2.5) == [CheckFrozen("a", "id-a")]
    d.renew("a", 1)  # SIGCONT: it spoke again before the kernel's answer was handled
    assert d.feed(Frozen("id-a")) == [] and d.core.running_client == "a"


def test_a_holder_the_watch_sees_stopped_is_fenced_at_once_and_released_only_by_its_exit() -> None:
    d = Driver(CHILD_SETTINGS)
    join_child(d, "a")
    d.renew("a", 1)  # heard at 0
    join_child(d, "b")
    out = d.feed(Frozen("id-a", seen=0.3), at=0.32)  # SIGSTOP at ~0.28, seen by the 50 ms watch
    # One kill, and no close: the connection ends with the process (as a crashed worker's does).
    assert [a for a in out if isinstance(a, Close | Kill)] == [
        Kill("id-a", "stopped: its process was stopped by a signal, silent for 0.3 s")
    ]
    assert d.cmds(out, "b") == [] and d.core.lease is not None and d.core.lease.sid is None  # not before its exit
    out = d.feed(ProcessExited("id-a", -9), at=0.33)
    assert d.grant(out, "b")["reason"] == "failover: id-a exited (-9)"


def test_a_holder_that_spoke_after_the_watch_saw_it_stopped_is_not_fenced() -> None:
    d = Driver(CHILD_SETTINGS)
    join_child(d, "a")
    d.renew("a", 1)
    d.now = 0.4
    d.renew("a", 1)  # SIGCONT: it spoke again before the watch's report was handled
    assert d.feed(Frozen("id-a", seen=0.3), at=0.41) == [] and d.core.running_client == "a"


def test_a_stopped_standby_is_not_promoted_until_it_speaks_again() -> None:
    d = Driver(CHILD_SETTINGS)
    join_child(d, "a")
    d.renew("a", 1)
    join_child(d, "b")
    assert d.feed(Frozen("id-b", seen=0.2), at=0.2) == []  # a stopped standby: not fenced at once ...
    out = d.feed(ProcessExited("id-a", -9), at=0.5)
    assert d.cmds(out, "b") == [] and d.core.lease is None  # ... but not handed a grant it cannot take
    out = d.feed(Heartbeat("b"), at=0.9)  # SIGCONT: it speaks, and is promoted at once
    assert d.grant(out, "b")["epoch"] == 2


def test_a_disconnected_holder_the_watch_sees_stopped_is_killed_instead_of_waiting_out_its_lease() -> None:
    d = Driver(CHILD_SETTINGS)
    join_child(d, "a")
    d.renew("a", 1)
    join_child(d, "b")
    d.feed(Disconnected("a"), at=0.5)  # the lease stands: it may still process
    out = d.feed(Frozen("id-a", seen=0.6), at=0.6)
    assert out == [Kill("id-a", "stopped holder without a connection")]
    assert d.core.lease is not None  # released by the exit that confirms the kill
    assert d.grant(d.feed(ProcessExited("id-a", -9), at=0.61), "b")["epoch"] == 2


def test_a_restored_lease_whose_holder_is_seen_stopped_ends_with_its_exit() -> None:
    state = {"epoch": 4, "holder": {"identity": "id-a", "epoch": 4, "token": "t"}}
    d = Driver(CHILD_SETTINGS, state=state)  # an earlier supervisor's holder, adopted but not reconnected
    join_child(d, "b")
    assert d.cmds(d.actions, "b") == ["health_check"]  # waits for the restored lease (12 s)
    out = d.feed(Frozen("id-a", seen=0.1), at=0.1)
    assert out == [Kill("id-a", "stopped holder without a connection")]
    assert d.grant(d.feed(ProcessExited("id-a", -9), at=0.12), "b")["epoch"] == 5


def test_a_lost_child_holder_not_back_within_hang_limit_is_killed_before_its_lease_ends() -> None:
    d = Driver(CHILD_SETTINGS)
    join_child(d, "a")
    d.renew("a", 1)  # heard at 0: our lease view ends at 12, the hang limit at 8
    join_child(d, "b")
    d.feed(Disconnected("a"), at=0.5)  # partitioned, or its reconnects fail: it may still process
    for t in range(1, 8):
        d.feed(Heartbeat("b"), at=t)  # the standby keeps talking
        assert d.core.next_deadline() == min(8, t + 2.5)
    out = d.feed(TimerFired(), at=8)
    assert out == [Kill("id-a", "hung: lost (disconnected) and silent for 8 s")]
    assert d.core.lease is not None and d.feed(TimerFired(), at=8.5) == []  # once; the exit releases it
    assert d.grant(d.feed(ProcessExited("id-a", -9), at=8.51), "b")["reason"] == "failover: id-a exited (-9)"


def test_a_lost_child_holder_that_comes_back_in_time_is_adopted_not_killed() -> None:
    d = Driver(CHILD_SETTINGS)
    join_child(d, "a")
    d.renew("a", 1)
    d.feed(Disconnected("a"), at=0.5)
    d.feed(Connected("a2", identity="id-a", generation=1), at=2)
    out = d.feed(Identified("a2", version="1.0", pid=100, generation=1, epoch=1, lease_token="token-1"))
    assert d.core.running_client == "a2" and not any(isinstance(a, Close) for a in out)
    assert d.core.next_deadline() == 2 + 2.5  # its own silence probe, no kill at 8
    d.feed(Heartbeat("a2", 1), at=7)
    assert not any(isinstance(a, Close) for a in d.feed(TimerFired(), at=8))


def test_a_lost_external_holder_is_never_killed_its_lease_runs_out() -> None:
    d = Driver(CHILD_SETTINGS)
    d.join("a")  # not our child
    d.renew("a", 1)
    d.feed(Disconnected("a"), at=0.5)
    assert d.core.next_deadline() == 12


def test_an_external_worker_is_never_probed_nor_fenced_before_its_silence_limit() -> None:
    d = Driver(CHILD_SETTINGS)
    d.join("a")  # no generation from the process manager: not our child
    d.renew("a", 1)
    assert d.core.next_deadline() == 10  # interval + grace, no probe at 2.5
    assert d.feed(Frozen("id-a"), at=9) == [] and d.core.running_client == "a"


def test_reconnecting_holder_keeps_its_lease() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.feed(Disconnected("a"), at=1)
    d.feed(Connected("impostor", identity="id-a"), at=2)  # same identity, epoch guessed, no token
    out = d.feed(Identified("impostor", version="1.0", epoch=1))
    assert next(a.data for a in out if isinstance(a, Send) and a.event == "hello")["process_commands"] is False
    d.feed(Connected("a2", identity="id-a"), at=2)
    out = d.feed(Identified("a2", version="1.0", epoch=1, lease_token="token-1"))
    hello = next(a.data for a in out if isinstance(a, Send) and a.event == "hello")
    assert hello["process_commands"] is True and hello["epoch"] == 1
    assert d.renew("a2", 1) == {"epoch": 1, "lease": 15}
    assert d.core.running_client == "a2"


def test_restart_restores_epoch_sanity_and_waits_out_the_old_lease() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    state = [a for a in d.actions if isinstance(a, Persist)][-1].state
    restarted = Driver(state=state, cache=image({"kept": 1}), now=100)
    restarted.now = 100
    out = restarted.join("b")
    assert restarted.cmds(out, "b") == []  # the old holder may still process until 100 + 17
    restarted.feed(Heartbeat("b"), at=110)
    out = restarted.feed(TimerFired(), at=117)
    grant = restarted.grant(out, "b")
    assert grant["epoch"] == 2
    assert pushed(restarted.actions, "b") == {"kept": 1}


def test_cache_from_a_standby_is_refused() -> None:
    d = Driver()
    d.join("a")
    d.join("b")
    out = d.feed(cache_sync("b", {"evil": True}))
    assert Reply({"accepted": False, "error": "only the running worker's cache is kept"}) in out
    assert d.core.cache is None


def test_cache_sync_fans_out_to_ready_standbys() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.join("b")
    d.join("c")
    out = d.feed(cache_sync("a", [1]), at=5)
    assert {a.sid for a in out if isinstance(a, Send) and a.event == "cache_sync"} == {"b", "c"}
    assert d.core.cache_age == 5


def test_try_again_is_admin_only_and_rollback_failure_makes_insane() -> None:
    d = Driver()
    d.join("a")
    out = d.feed(RollbackFinished(False, "git reset failed"))
    assert d.core.is_sane is False
    assert any(isinstance(a, Notify) and a.level == "critical" for a in out)
    out = d.feed(TryAgain("a"))
    assert Reply({"error": "try_again needs the admin credential"}) in out
    assert d.core.is_sane is False
    d.feed(Connected("admin", identity="admin", admin=True))
    d.feed(TryAgain("admin"))
    assert d.core.is_sane is True


def test_insane_stops_handover_to_newer_code_but_not_failover() -> None:
    d = Driver()
    d.join("a", version="1.0")
    d.renew("a", 1)
    d.feed(RollbackFinished(False, "broken"))
    out = d.join("b", version="2.0")
    assert d.cmds(out, "a") == []
    out = d.feed(ShutdownAck("a", "bye"))
    assert d.cmds(out, "b") == ["process_commands"]


def test_out_of_order_messages_get_an_error_answer_not_a_crash() -> None:
    d = Driver()
    d.feed(Connected("a", identity="x"))
    assert Reply({"error": "no health check was asked of this worker"}) in d.feed(HealthReport("a", HEALTHY))
    out = d.feed(Ready("a"))  # ready before identify
    assert isinstance(out[0], Reply) and "not allowed" in out[0].data["error"]
    assert "not an identified" in d.feed(Heartbeat("ghost", 1))[0].data["error"]


def test_version_order_is_pep440_not_string_order() -> None:
    assert version_key("0.0.10") > version_key("0.0.9")
    assert version_key("1.0rc1") < version_key("1.0")
    assert version_key("not a version") < version_key("0.1")


def test_holder_that_never_acknowledges_coma_keeps_the_lease_until_it_ends() -> None:
    d = Driver()
    d.join("old", version="1.0")
    d.renew("old", 1)  # lease to 0 + 15 + 2 on our clock
    out = d.join("new", version="2.0")
    assert d.cmds(out, "old") == ["coma"]
    for t in (1, 8, 16.9):  # ack_timeout passes (t=8), but only the lease proves anything
        assert d.cmds(d.feed(TimerFired(), at=t), "new") == []
        assert d.cmds(d.feed(Heartbeat("new", None), at=t), "new") == []
        assert d.renew("old", 1)["lease"] == 0  # alive and talking, but no renewal while a stop is pending
    out = d.feed(TimerFired(), at=17)
    assert Close("old", "lease expired", "id-old", hung=True) in out
    assert d.grant(out, "new")["epoch"] == 2


def test_crash_loop_stops_spawning_until_try_again() -> None:
    d = Driver(Settings(spawn_workers=True, crash_loop_losses=3, crash_loop_window=60))
    spawns = 0
    for i in range(3):
        d.join(f"w{i}")
        out = d.feed(ProcessExited(f"id-w{i}", 1), at=10.0 * i)
        spawns += sum(isinstance(a, Spawn) for a in out)
    assert d.core.is_sane is False
    assert spawns == 2  # the third loss is the crash loop: no replacement
    assert any(isinstance(a, Notify) and a.level == "critical" and "crash loop" in a.message for a in d.actions)
    d.feed(Connected("admin", identity="admin", admin=True))
    out = d.feed(TryAgain("admin"), at=40)
    assert d.core.is_sane is True and TopUp("try_again") in out  # one running plus the standbys, at once


def test_crash_loop_detection_can_be_turned_off() -> None:
    d = Driver(Settings(spawn_workers=True, crash_loop_losses=0))
    for i in range(20):
        d.join(f"w{i}")
        out = d.feed(ProcessExited(f"id-w{i}", 1), at=float(i))
        assert any(isinstance(a, Spawn) for a in out)  # replaced every time
    assert d.core.is_sane


def test_losses_outside_the_window_are_no_crash_loop() -> None:
    d = Driver(Settings(crash_loop_losses=3, crash_loop_window=60))
    for i in range(5):
        d.join(f"w{i}")
        d.feed(Disconnected(f"w{i}"), at=100.0 * i)
    assert d.core.is_sane is True


def test_crash_loop_counts_exits_even_when_the_disconnect_came_first() -> None:
    d = Driver(Settings(spawn_workers=True, crash_loop_losses=3, crash_loop_window=60))
    for i in range(3):
        d.join(f"w{i}")
        d.feed(Disconnected(f"w{i}"), at=float(i))
        d.feed(ProcessExited(f"id-w{i}", -9), at=float(i))
    assert d.core.is_sane is False


def test_exit_after_an_asked_shutdown_is_no_crash() -> None:
    d = Driver(Settings(crash_loop_losses=2, crash_loop_window=60))
    for i in range(3):
        d.join(f"w{i}", report={"OK": False, "percent": 0, "cogs": {"modules.utilities": True}})  # shut down
        d.feed(ShutdownAck(f"w{i}", "bye"))
        d.feed(ProcessExited(f"id-w{i}", 0))
    assert d.core.is_sane is True


def _holder_asked_to_shut_down_as_outdated(d: Driver) -> None:
    d.join("b", version="2.0")  # newer, with shutdown_if_outdated: the holder is told cmd shutdown
    d.feed(ShutdownAck("a", "outdated"))


def _told_coma_answers_shutdown(d: Driver) -> None:
    d.join("b", version="2.0")  # newer: the holder is told cmd coma, and says shutdown (SIGTERM meanwhile)
    d.feed(ShutdownAck("a", "SIGTERM"))


# How the holder "a" (renewed; a standby "b" may join) left, and then its process exited with status 0:
# counted toward a crash loop? replaced? (docs/protocol.md §12)
EXITS = [
    ("no word", lambda d: None, True, True),
    ("shutdown unasked (kill PID)", lambda d: d.feed(ShutdownAck("a", "SIGTERM")), False, True),
    ("told to shut down (outdated)", _holder_asked_to_shut_down_as_outdated, False, False),
    ("told coma, said shutdown", _told_coma_answers_shutdown, False, True),
    ("coma unasked, then exited", lambda d: d.feed(ComaAck("a", "by itself")), True, True),
    ("failed", lambda d: d.feed(WorkerFailed("a", "token refused", "reset it")), True, True),
    ("the supervisor stops", lambda d: d.feed(Stopping("SIGTERM")), False, False),
]


@pytest.mark.parametrize(("how", "leave", "counted", "replaced"), EXITS, ids=[e[0] for e in EXITS])
def test_which_exits_are_counted_and_which_are_replaced(how: str, leave: Any, counted: bool, replaced: bool) -> None:
    d = Driver(Settings(token="t", spawn_workers=True, shutdown_if_outdated="outdated" in how, crash_loop_losses=5))
    d.join("a")
    d.renew("a", 1)
    leave(d)
    out = d.feed(ProcessExited("id-a", 0), at=7)
    assert d.core.losses == ([7] if counted else [])
    assert [a.reason for a in out if isinstance(a, Spawn)] == (
        [f"replace id-a: {'exited (0)' if counted else 'it shut down by itself'}"] if replaced else []
    )


def test_a_worker_that_quits_by_itself_is_not_replaced_while_insane() -> None:
    d = Driver(Settings(spawn_workers=True))
    d.join("a")
    d.feed(RollbackFinished(False, "broken"))
    d.feed(ShutdownAck("a", "SIGTERM"))
    assert not [a for a in d.feed(ProcessExited("id-a", 0)) if isinstance(a, Spawn)]


def test_confirmed_deploy_becomes_last_known_good_and_is_persisted() -> None:
    d = Driver()
    out = d.feed(DeployConfirmed("abc123" * 6))
    assert d.core.last_known_good_hash == "abc123" * 6
    assert [a.state["last_known_good"] for a in out if isinstance(a, Persist)] == ["abc123" * 6]
    restored = Supervisor(SETTINGS, state=d.core.state())
    assert restored.last_known_good_hash == "abc123" * 6


def test_only_an_exit_asks_for_a_replacement() -> None:
    d = Driver(Settings(spawn_workers=True))
    d.join("a")
    assert not any(isinstance(a, Spawn) for a in d.feed(Disconnected("a")))  # it may come back
    out = d.feed(ProcessExited("id-a", 1))
    assert [a.reason for a in out if isinstance(a, Spawn)] == ["replace id-a: exited (1)"]
    out = d.feed(ProcessExited("child-never-connected", 1))  # died before it ever connected
    assert any(isinstance(a, Spawn) for a in out)


def test_a_failed_deploy_candidate_is_neither_replaced_nor_counted_as_a_loss() -> None:
    d = Driver(Settings(spawn_workers=True, crash_loop_losses=2))
    d.join("a")
    for n in range(5):  # five bad commits in a row, each crashing at start
        out = d.feed(ProcessExited(f"candidate-{n}", 1, candidate=True))
        assert not any(isinstance(a, Spawn) for a in out)  # the standbys are complete: a spare would pile up
    assert d.core.is_sane  # new code failing is the deployer's to roll back, not a crash loop of what runs
    assert any(isinstance(a, Spawn) for a in d.feed(ProcessExited("id-a", 1)))  # the running code's own exit is


def test_older_standbys_retire_after_a_deploy() -> None:
    d = Driver(Settings(spawn_workers=True))
    d.join("old-a", generation=1)
    d.renew("old-a", 1)
    d.join("old-b", generation=1)
    d.join("new", generation=2)
    d.feed(ComaAck("old-a", "newer version"))
    out = d.feed(RetireOlder(2))
    assert d.cmds(out, "old-a") == ["shutdown"] and d.cmds(out, "old-b") == ["shutdown"]
    assert d.cmds(out, "new") == []
    assert not any(isinstance(a, Spawn) for a in out)  # the process manager tops up to its count
    out = d.feed(ProcessExited("id-old-a", 0))
    assert not any(isinstance(a, Spawn) for a in out) and d.core.losses == []  # asked to go: no crash


SPAWNING = Settings(token="t", interval=10, grace=5, lease_margin=2, spawn_workers=True)


def stopped_core() -> tuple[Driver, list[Any]]:
    """A holder "a" (renewed, with a cache), an approved standby "b", a worker "c" still identifying; then Stopping."""
    d = Driver(SPAWNING)
    d.join("a")
    d.renew("a", 1)
    d.feed(cache_sync("a", {"kept": 1}))
    d.join("b")
    d.feed(Connected("c", identity="id-c"))
    out = d.feed(Stopping("SIGTERM"))
    return d, out


def test_stopping_asks_every_worker_to_shut_down_the_holder_with_its_final_cache() -> None:
    d, out = stopped_core()
    shutdowns = {a.sid: a.data["d"] for a in out if isinstance(a, Send) and a.data.get("t") == "shutdown"}
    assert shutdowns == {
        "a": {"reason": "SIGTERM", "cache_sync": True},
        "b": {"reason": "SIGTERM", "cache_sync": False},
    }
    assert [a for a in out if isinstance(a, Notify)] == [
        Notify("warning", "supervisor stopping: the bot goes offline (SIGTERM)")
    ]
    out = d.feed(Identified("c", version="1.0"))  # still connecting: told once it can act on a command
    assert [a.event for a in out if isinstance(a, Send)] == ["hello", "cmd"] and d.cmds(out, "c") == ["shutdown"]
    assert d.renew("a", 1)["lease"] == 0  # the holder is going: no more renewals
    assert d.feed(Stopping("API")) == []  # one stop, one notification
    out = d.feed(cache_sync("a", {"kept": 2}))
    [kept] = [a for a in out if isinstance(a, PersistCache)]
    assert plain(kept.image) == {"kept": 2} and kept.cache_age == d.now and kept.final  # its final cache is kept
    out = d.feed(ShutdownAck("a", "SIGTERM"))
    assert d.core.lease is None and Persist(d.core.state()) in out and d.core.state()["holder"] is None
    assert not any(isinstance(a, Send) and a.data.get("t") == "process_commands" for a in out)  # "b" stays put


@pytest.mark.parametrize(
    "after",
    [
        [ShutdownAck("a"), ProcessExited("id-a", 0), ProcessExited("id-b", 0)],
        [Disconnected("a"), ProcessExited("id-a", -15), ("at", 40.0), TimerFired(), ProcessExited("id-b", -9)],
        [TimerFired(), ("at", 100.0), TimerFired(), ProcessExited("id-b", 1)],  # the lease expires unacknowledged
        [ProcessExited("id-a", -9), TryAgain(None), ProcessExited("id-b", 1), ProcessExited("id-c", 1)],
        [ComaAck("a"), Connected("d", identity="id-d"), Identified("d", "9.0"), Ready("d"), TimerFired()],
    ],
)
def test_once_stopping_nobody_is_promoted_or_spawned_whatever_happens_next(after: list[Any]) -> None:
    d, out = stopped_core()
    seen = list(out)
    for event in after:
        if isinstance(event, tuple):
            d.now = event[1]
            continue
        seen += d.feed(event)
    assert not [a for a in seen if isinstance(a, Spawn)]
    assert not [a for a in seen if isinstance(a, Send) and a.data.get("t") in ("process_commands", "health_check")]
    assert not [a for a in seen if isinstance(a, Notify) and "is running" in a.message]
    assert d.core.running_client is None or (d.core.lease is not None and d.core.lease.stopping)
    assert d.core.is_sane  # exits on the way down are no crash loop


def test_a_holder_reconnecting_during_a_stop_is_not_adopted_but_shut_down() -> None:
    d = Driver()
    d.join("a")
    grant = d.grant(d.actions, "a")
    d.renew("a", 1)
    d.feed(Disconnected("a"))  # its lease stands: it may still process
    d.feed(Stopping("API"))
    d.feed(Connected("a2", identity="id-a"))
    out = d.feed(Identified("a2", "1.0", epoch=1, lease_token=grant["lease_token"]))
    [hello] = [a.data for a in out if isinstance(a, Send) and a.event == "hello"]
    assert hello["process_commands"] is False  # not adopted: it drops its grant and stops processing
    assert d.cmds(out, "a2") == ["shutdown"] and d.core.lease is not None and d.core.lease.sid is None


# -- the instant of each decision ------------------------------------------------------------------------
# The Driver's clock is the supervisor's: a heartbeat is handled when it *arrives*, which may be well after
# the worker sent it. The worker counts its lease (15) from the sending; we count lease + margin (17) from
# the answer. These tests pin each decision to its instant: not a moment before, and at it.


def holder_and_standby(renewed_at: float = 0.0) -> Driver:
    d = Driver()
    d.join("a")
    d.now = renewed_at
    d.renew("a", 1)
    d.join("b")
    d.feed(Disconnected("a"))  # unreachable, maybe still processing: only the lease's end frees it
    return d


def test_a_late_heartbeat_counts_from_its_answer_not_its_sending() -> None:
    d = Driver()
    d.join("a")
    d.join("b")
    d.feed(Heartbeat("b"), at=10)  # the standby heartbeats every interval (10 s): its silence comes later
    sent_at = 10.0  # the worker's view of its lease ends at 10 + 15 = 25
    [reply] = [x for x in d.feed(Heartbeat("a", 1), at=sent_at + 3) if isinstance(x, Reply)]  # arrives 3 s late
    assert reply.data == {"epoch": 1, "lease": 15}
    d.feed(Disconnected("a"), at=14)
    d.feed(Heartbeat("b"), at=20)
    assert d.core.next_deadline() == 13 + 15 + 2 == 30
    assert d.cmds(d.feed(TimerFired(), at=29.999), "b") == []
    out = d.feed(TimerFired(), at=30)
    assert d.grant(out, "b")["epoch"] == 2
    assert sent_at + 15 < 30  # the worker stopped by itself long before: P1 with room to spare


def test_a_lost_holder_is_shown_as_not_connected_and_waited_for() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.join("b")
    out = d.feed(Disconnected("a"), at=1)
    assert not any(isinstance(a, Notify) for a in out)  # no word yet (issue 12): its exit or its lease's end says it
    assert d.core.running_client is None  # the status page shows no connected holder ...
    assert d.core.lease is not None and d.core.lease.identity == "id-a"  # ... while its lease still stands
    assert d.core.waiting_for(1) == "waiting for the lease of id-a (epoch 1, lost (disconnected)) to end in 16 s"


def test_promotion_comes_exactly_when_the_lease_and_its_margin_end() -> None:
    d = holder_and_standby(renewed_at=4)
    assert d.core.lease is not None and d.core.lease.expires == 4 + 15 + 2
    for t in (5, 19, 20.999):
        out = d.feed(TimerFired(), at=t)
        assert d.cmds(out, "b") == [] and not any(isinstance(a, Persist) for a in out)
        assert d.cmds(d.feed(Heartbeat("b", None), at=t), "b") == []
    assert d.core.next_deadline() == 21  # the lease's end, not b's silence (heard at 20.999)
    out = d.feed(TimerFired(), at=21)
    reason = "failover: id-a was lost (disconnected) and its lease ended 17.0 s later"
    assert d.grant(out, "b") == {"epoch": 2, "lease": 15, "lease_token": "token-2", "reason": reason}


def test_a_renewal_just_in_time_moves_the_end_and_one_at_the_end_is_refused() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)  # to 17
    d.join("b")
    assert d.renew("a", 1) == {"epoch": 1, "lease": 15}
    d.feed(Heartbeat("b"), at=10)
    d.now = 16.5
    assert d.renew("a", 1) == {"epoch": 1, "lease": 15}  # to 33.5
    d.feed(Heartbeat("b"), at=20)
    d.feed(cache_sync("a", {"n": 1}), at=30)  # it talks, so its silence (15 s) does not fence it first
    d.feed(Heartbeat("b"), at=30)
    assert d.core.next_deadline() == 33.5
    d.now = 33.5
    out = d.feed(Heartbeat("a", 1))
    assert Reply({"epoch": 1, "lease": 0}) in out  # too late: on our clock the lease has just ended
    assert d.grant(out, "b")["epoch"] == 2
    assert Close("a", "lease expired", "id-a", hung=True) in out


def test_a_holder_that_never_renewed_is_released_at_once_when_it_goes() -> None:
    d = Driver()
    d.join("a")  # granted, but it never renewed: it never processed
    d.join("b")
    out = d.feed(Disconnected("a"), at=1)
    assert d.grant(out, "b")["epoch"] == 2


def test_a_renewal_gives_the_worker_the_lease_and_keeps_the_margin_for_us() -> None:
    d = Driver()
    d.join("a")
    d.now = 3
    assert d.renew("a", 1) == {"epoch": 1, "lease": 15}
    assert d.core.lease is not None and d.core.lease.expires == 3 + 15 + 2 and d.core.lease.confirmed


def test_a_grant_lasts_a_whole_lease_and_margin_before_its_first_renewal() -> None:
    d = Driver()
    d.now = 5
    d.join("a")
    d.join("b")
    assert d.core.lease is not None and d.core.lease.expires == 5 + 15 + 2
    for sid in ("a", "b"):  # the grant never reached a: it heartbeats as a standby would, without the epoch
        d.feed(Heartbeat(sid), at=15)
    assert d.core.next_deadline() == 5 + 15 + 2
    assert d.cmds(d.feed(TimerFired(), at=21.999), "b") == []
    out = d.feed(TimerFired(), at=22)
    assert Close("a", "lease expired", "id-a", hung=True) in out  # granted, never renewed: fenced off
    assert d.grant(out, "b")["epoch"] == 2


def test_health_check_deadline_to_the_instant() -> None:
    d = Driver()
    d.feed(Connected("a", identity="child-1"), at=3)
    d.feed(Identified("a", version="1.0"))
    d.feed(Ready("a"))
    d.feed(Heartbeat("a"), at=13)  # alive, checking itself: its silence would come at 28
    assert d.core.next_deadline() == 23
    assert d.cmds(d.feed(TimerFired(), at=22.999), "a") == []
    assert d.core.clients["a"].role is Role.CHECKING
    out = d.feed(TimerFired(), at=23)
    assert d.cmds(out, "a") == ["shutdown"]
    assert RollBack("health_check_timeout", "1.0", None) in out
    assert d.core.next_deadline() == 28  # its silence only: the check's deadline is gone


def test_an_unanswered_coma_is_reported_at_the_stop_timeout_then_the_lease_decides() -> None:
    d = Driver()
    d.join("old", version="1.0")
    d.renew("old", 1)
    d.join("new", version="2.0", generation=None)  # asks old for coma at t=0; ack_timeout 8
    assert d.core.next_deadline() == 8
    assert not any(isinstance(a, Notify) for a in d.feed(TimerFired(), at=7.999))
    out = d.feed(TimerFired(), at=8)
    assert [a.level for a in out if isinstance(a, Notify)] == ["warning"]
    for sid in ("old", "new"):  # both still talk: old's heartbeats are refused (stopping), not renewals
        assert d.renew(sid, 1 if sid == "old" else None)["lease"] == 0
    assert d.core.next_deadline() == 17  # the warning once; then only the lease's end
    assert not any(isinstance(a, Notify) for a in d.feed(TimerFired(), at=9))
    out = d.feed(TimerFired(), at=17)
    assert Close("old", "lease expired", "id-old", hung=True) in out and d.grant(out, "new")["epoch"] == 2


# -- after a supervisor restart ------------------------------------------------------------------------------
def restarted_with_holder(at: float = 100.0) -> Driver:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    state = [a for a in d.actions if isinstance(a, Persist)][-1].state
    assert state["holder"] == {"identity": "id-a", "epoch": 1, "token": "token-1"}
    restarted = Driver(state=state, now=at)
    restarted.now = at
    return restarted


def test_a_restored_holder_gets_a_whole_lease_from_the_restart() -> None:
    d = restarted_with_holder(at=100)
    assert d.core.next_deadline() == 100 + 15 + 2
    d.join("b")
    for t in (101, 115, 116.999):
        assert d.cmds(d.feed(TimerFired(), at=t), "b") == []
        assert d.cmds(d.feed(Heartbeat("b", None), at=t), "b") == []
    out = d.feed(TimerFired(), at=117)
    assert d.grant(out, "b")["epoch"] == 2


def test_a_restored_holder_counts_as_confirmed_its_reconnect_and_drop_prove_nothing() -> None:
    """It may have been processing all along: a drop after reconnecting is no proof it stopped."""
    d = restarted_with_holder(at=100)
    d.feed(Connected("a2", identity="id-a"), at=101)
    out = d.feed(Identified("a2", version="1.0", epoch=1, lease_token="token-1"))
    hello = next(x.data for x in out if isinstance(x, Send) and x.event == "hello")
    assert hello["process_commands"] is True and hello["epoch"] == 1
    d.join("b")
    out = d.feed(Disconnected("a2"), at=102)  # before any renewal
    assert d.cmds(out, "b") == []
    d.feed(Heartbeat("b"), at=110)
    assert d.cmds(d.feed(TimerFired(), at=116.999), "b") == []
    assert d.grant(d.feed(TimerFired(), at=117), "b")["epoch"] == 2


def test_a_restored_holder_renews_on_reconnecting_and_an_impostor_does_not() -> None:
    d = restarted_with_holder(at=100)
    d.feed(Connected("x", identity="id-a"), at=101)
    out = d.feed(Identified("x", version="1.0", epoch=1, lease_token="guess"))
    assert next(x.data for x in out if isinstance(x, Send) and x.event == "hello")["process_commands"] is False
    d.feed(Connected("a2", identity="id-a"), at=105)
    d.feed(Identified("a2", version="1.0", epoch=1, lease_token="token-1"))
    assert d.core.clients["a2"].role is Role.RUNNING and d.core.running_client == "a2"
    assert d.renew("a2", 1) == {"epoch": 1, "lease": 15}
    assert d.core.lease is not None and d.core.lease.expires == 105 + 17 and d.core.lease.sid == "a2"


def test_a_restored_lease_that_has_ended_is_not_adopted() -> None:
    d = restarted_with_holder(at=100)
    d.feed(Connected("a2", identity="id-a"), at=116)
    out = d.feed(Identified("a2", version="1.0", epoch=1, lease_token="token-1"), at=117)
    hello = next(x.data for x in out if isinstance(x, Send) and x.event == "hello")
    assert hello["process_commands"] is False and hello["epoch"] == 1
    assert d.core.lease is None  # released, and persisted so: the next promotion is epoch 2
    assert [a.state["holder"] for a in out if isinstance(a, Persist)] == [None]


# -- what is_sane changes is on disk -----------------------------------------------------------------------
def persisted(out: list[Any]) -> list[dict[str, Any]]:
    return [a.state for a in out if isinstance(a, Persist)]


def test_a_failed_rollback_persists_is_sane_false() -> None:
    d = Driver()
    out = d.feed(RollbackFinished(False, "git reset failed"))
    [state] = persisted(out)
    assert state["is_sane"] is False
    assert Supervisor(SETTINGS, state=state).is_sane is False  # a restart does not forget it
    assert persisted(d.feed(RollbackFinished(True, "fine"))) == []  # success changes nothing on disk
    assert d.core.is_sane is False


def test_a_crash_loop_persists_is_sane_false_once() -> None:
    d = Driver(Settings(crash_loop_losses=2, crash_loop_window=60))
    d.feed(ProcessExited("w1", 1), at=0)
    out = d.feed(ProcessExited("w2", 1), at=1)
    [state] = persisted(out)
    assert state["is_sane"] is False and Supervisor(SETTINGS, state=state).is_sane is False
    assert persisted(d.feed(ProcessExited("w3", 1), at=2)) == []  # already insane: no second write, no alarm
    assert [a for a in d.feed(ProcessExited("w4", 1), at=3) if isinstance(a, Notify)] == []


def test_try_again_persists_is_sane_true() -> None:
    d = Driver()
    d.feed(RollbackFinished(False, "broken"))
    d.feed(Connected("admin", identity="admin", admin=True))
    out = d.feed(TryAgain("admin"))
    [state] = persisted(out)
    assert state["is_sane"] is True and Supervisor(SETTINGS, state=state).is_sane is True
    assert Reply({"is_sane": True}) in out


def test_a_loss_exactly_a_window_ago_no_longer_counts() -> None:
    d = Driver(Settings(crash_loop_losses=3, crash_loop_window=60))
    for t in (0, 59, 60):  # at 60 the loss at 0 has left the window
        d.feed(ProcessExited(f"w{t}", 1), at=t)
    assert d.core.is_sane is True
    d.feed(ProcessExited("w-last", 1), at=60)
    assert d.core.is_sane is False  # 59, 60, 60


def test_the_persisted_state_is_complete() -> None:
    d = Driver()
    d.feed(DeployConfirmed("c" * 40))
    d.join("a")
    d.feed(ProcessExited("id-a", -9), at=1)
    d.join("b")
    out = d.join("c", version="2.0")
    d.feed(ComaAck("b", "newer"))
    [state] = persisted(d.actions)[-1:]
    assert state == {
        "version": 1,
        "epoch": 3,
        "is_sane": True,
        "last_known_good": "c" * 40,
        "holder": {"identity": "id-c", "epoch": 3, "token": "token-3"},
    }
    assert d.cmds(out, "b") == ["coma"]
    restored = Supervisor(SETTINGS, state=state, now=0)
    assert (restored.epoch, restored.last_known_good_hash, restored.is_sane) == (3, "c" * 40, True)


def test_a_minimal_state_restores_as_sane_with_no_holder() -> None:
    core = Supervisor(SETTINGS, state={"epoch": 4}, now=10)
    assert (core.epoch, core.is_sane, core.last_known_good_hash, core.lease) == (4, True, None, None)


def test_promotion_and_role_changes_are_announced_with_the_epoch() -> None:
    """Observers (the status page, dev mode, the log) see each role change, with whose it is."""
    d = Driver()
    out = d.join("a")
    changes = [a for a in out if isinstance(a, RoleChanged)]
    assert changes == [
        RoleChanged("a", "id-a", "checking", "standby", None, "health check passed"),
        RoleChanged("a", "id-a", "standby", "running", 1, "no worker running"),
    ]
    out = d.feed(ProcessExited("id-a", 1), at=1)
    assert [a for a in out if isinstance(a, RoleChanged)] == [
        RoleChanged("a", "id-a", "running", "gone", None, "process exited (1)")
    ]


def test_the_lease_token_is_not_in_a_repr() -> None:
    d = Driver()
    d.join("a")
    assert d.core.lease is not None and d.core.lease.token == "token-1"
    assert "token-1" not in repr(d.core.lease)


def test_a_holder_that_stops_without_its_final_cache_is_reported() -> None:
    d = Driver()
    d.join("old", version="1.0")
    d.renew("old", 1)
    d.feed(cache_sync("old", {"n": 1}))
    d.join("new", version="2.0")
    out = d.feed(ComaAck("old", "no final cache"))
    assert Notify("warning", "id-old stopped without a final cache; using the last one") in out
    d.feed(cache_sync("new", {"n": 2}))
    d.join("newer", version="3.0")
    d.feed(cache_sync("new", {"n": 3}))  # the final one, after the coma
    out = d.feed(ComaAck("new", "with its final cache"))
    assert not any(isinstance(a, Notify) and a.level == "warning" for a in out)


def test_a_version_string_has_a_length_limit() -> None:
    d = Driver()
    d.feed(Connected("a", identity="id-a"))
    assert not any("error" in a.data for a in d.feed(Identified("a", version="1" * 128)) if isinstance(a, Reply))
    d.feed(Connected("b", identity="id-b"))
    assert d.feed(Identified("b", version="1" * 129)) == [Reply({"error": "identify needs a version string"})]


def test_the_defaults_are_the_documented_ones() -> None:
    """docs/protocol.md §4 is normative: its timing parameters' defaults are the Settings' defaults."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    section = doc.split("## 4. Timing parameters", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):
            documented[cells[0].split("`")[1]] = cells[1]  # "`lease` (`L`)" -> "lease"

    def number(text: str) -> float:
        return float(re.findall(r"[\d.]+", text.rsplit("=", 1)[-1])[0])

    got = Settings()
    for name in ("interval", "grace", "lease_margin", "health_timeout", "ack_timeout", "healthy_percentage"):
        assert getattr(got, name) == number(documented[name]), name
    assert got.lease == got.silence_limit == number(documented["lease"])
    assert list(got.vital_cogs) == json.loads(documented["vital_cogs"].strip("`"))
    assert got.shutdown_if_outdated is (documented["shutdown_if_outdated"] == "true")
    assert got.max_message == number(documented["max_message"]) * 2**20
    losses, window = documented["crash_loop_losses"].split(",")
    assert (got.crash_loop_losses, got.crash_loop_window) == (number(losses), number(window))


def test_ready_again_in_each_role_as_the_protocol_says() -> None:
    """§5.3: a worker sends ready again after reconnecting to Discord; what that does depends on its role."""
    d = Driver()
    d.join("old", version="1.0")
    d.renew("old", 1)
    d.join("peer", version="1.0")  # an approved standby
    d.join("sick", version="0.9", report={"OK": False, "percent": 0, "cogs": {"modules.utilities": True}})
    out = d.feed(Ready("old"))
    assert Reply({}) in out and d.cmds(out, "old") == ["ok"]
    for sid, role in (("peer", Role.STANDBY), ("sick", Role.SHUTTING_DOWN)):
        out = d.feed(Ready(sid))
        assert out == [Reply({})] and d.core.clients[sid].role is role
    d.join("new", version="2.0")  # old is asked for coma: stopping
    assert d.core.clients["old"].role is Role.STOPPING
    out = d.feed(Ready("old"))
    assert out == [Reply({})]  # no ok: the pending coma stands
    assert d.core.clients["old"].role is Role.STOPPING and d.renew("old", 1)["lease"] == 0
    out = d.feed(ComaAck("old", "done"))
    assert d.core.clients["old"].role is Role.STANDBY and d.grant(out, "new")["epoch"] == 2


def test_ready_clients_are_the_logged_in_ones() -> None:
    """The seeds' view: every worker logged in to Discord that is not on its way out."""
    d = Driver()
    d.join("run", version="1.0")
    d.renew("run", 1)
    d.join("spare", version="1.0")
    d.join("sick", report={"OK": False, "percent": 0, "cogs": {"modules.utilities": True}})
    d.feed(Connected("new", identity="id-new"))
    assert set(d.core.ready_clients) == {"run", "spare"}
    d.feed(Identified("new", version="2.0"))
    d.feed(Ready("new"))  # checking
    assert set(d.core.ready_clients) == {"run", "spare", "new"}
    d.feed(HealthReport("new", HEALTHY))  # run is asked for coma: stopping
    assert d.core.clients["run"].role is Role.STOPPING
    assert set(d.core.ready_clients) == {"run", "spare", "new"}


def test_coma_from_a_worker_that_holds_nothing_changes_nothing() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.join("b")
    d.feed(Connected("c", identity="id-c"))
    d.feed(Identified("c", version="1.0"))
    d.feed(Ready("c"))  # checking
    for sid, role in (("b", Role.STANDBY), ("c", Role.CHECKING)):
        assert d.feed(ComaAck(sid, "idle")) == [Reply({})]
        assert d.core.clients[sid].role is role
    assert d.core.running_client == "a" and d.renew("a", 1)["lease"] == 15


def test_a_worker_may_say_shutdown_in_any_role_and_its_exit_is_no_crash() -> None:
    d = Driver(Settings(spawn_workers=True, crash_loop_losses=1))
    d.feed(Connected("a", identity="id-a"))  # not even identified
    out = d.feed(ShutdownAck("a", "leaving"))
    assert out[-1] == Reply({}) and d.core.clients["a"].role is Role.SHUTTING_DOWN
    out = d.feed(ProcessExited("id-a", 0))
    # Unasked (kill PID, the bot's own close()): not counted, but replaced — only asked exits are not (§12)
    assert d.core.is_sane and d.core.losses == []
    assert [x.reason for x in out if isinstance(x, Spawn)] == ["replace id-a: it shut down by itself"]
    assert "a" not in d.core.clients


def test_a_holder_reconnecting_before_its_old_connection_is_noticed_replaces_it() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.feed(Connected("a2", identity="id-a"), at=1)  # its old connection has not dropped yet, as far as we know
    out = d.feed(Identified("a2", version="1.0", epoch=1, lease_token="token-1"))
    assert RoleChanged("a", "id-a", "running", "gone", None, "replaced") in out
    assert Close("a", "replaced by a newer connection") in out
    assert "a" not in d.core.clients and d.core.running_client == "a2"
    assert not any(isinstance(x, Notify) for x in out)  # its own connection: no loss, no alarm
    assert d.renew("a2", 1) == {"epoch": 1, "lease": 15}
    out = d.feed(ComaAck("a2", "stopped by itself"), at=2)
    assert d.grant(out, "a2")["epoch"] == 2  # adopted means approved: it may be promoted again at once


# -- the Health Check Spec, to the letter (P4) -----------------------------------------------------------
@pytest.mark.parametrize(
    ("report", "verdict"),
    [
        ({"OK": True, "cogs": {"modules.utilities": True, "modules.fun": "yes"}}, "health_check_malformed"),
        ({"OK": True, "cogs": ["modules.utilities"]}, "health_check_malformed"),
        ({"OK": False, "percent": 101, "cogs": {"modules.utilities": True}}, "health_check_malformed"),
        ({"OK": False, "percent": -1, "cogs": {"modules.utilities": True}}, "health_check_malformed"),
        ({"OK": False, "percent": "99", "cogs": {"modules.utilities": True}}, "health_check_malformed"),
        ({"OK": False, "percent": 0, "cogs": {"modules.utilities": True}}, "health_check_failure"),
        ({"OK": False, "percent": 0.5, "cogs": {"modules.utilities": True}}, "health_check_failure"),
        ({"OK": False, "percent": 100}, "vital_cog_failed"),  # not OK, and no word on the vital cogs
        ({"OK": False, "percent": 79.9, "cogs": {"modules.utilities": True}}, "health_check_failure"),
        ({"OK": False, "percent": 80, "cogs": {"modules.utilities": True}}, None),  # the threshold passes
        ({"OK": False, "percent": 100, "cogs": {"modules.utilities": True}}, None),
        ({"OK": True}, None),  # OK and no cogs named: nothing contradicts it
    ],
)
def test_health_verdicts(report: Any, verdict: str | None) -> None:
    d = Driver(Settings(healthy_percentage=80))
    d.feed(Connected("a", identity="id-a"))
    d.feed(Identified("a", version="1.0"))
    d.feed(Ready("a"))
    out = d.feed(HealthReport("a", report))
    # A malformed report is judged at once too, and told what a report looks like.
    assert (out[0] == Reply({})) is (verdict != "health_check_malformed")
    if verdict is None:
        assert d.cmds(out, "a") == ["process_commands"]
    else:
        shutdown = [x.data["d"] for x in out if isinstance(x, Send) and x.sid == "a"]
        assert shutdown == [{"reason": verdict, "cache_sync": False}]
        said = f"id-a (version 1.0) failed its health check: {verdict}"
        assert any(isinstance(x, Notify) and x.level == "warning" and x.message.startswith(said) for x in out)


def test_a_failed_check_of_code_no_newer_than_the_holders_asks_for_no_rollback() -> None:
    sick = {"OK": False, "percent": 10, "cogs": {"modules.utilities": True}}
    d = Driver()
    d.join("a", version="1.0")
    d.renew("a", 1)
    out = d.join("b", version="1.0", report=sick)  # a replacement of the running code, not a deploy
    assert d.cmds(out, "b") == ["shutdown"] and not any(isinstance(x, RollBack) for x in out)
    out = d.join("c", version="1.1", report=sick)
    assert RollBack("health_check_failure", "1.1", None, "10% healthy, 100% needed") in out


# -- caches reach whoever is promoted (P3) -----------------------------------------------------------------
def test_a_worker_that_missed_the_fan_out_gets_the_cache_before_its_grant() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.feed(Connected("b", identity="id-b"))
    d.feed(Identified("b", version="1.0"))  # logging in to Discord: no fan-out to it yet
    d.feed(cache_sync("a", {"n": 1}), at=1)
    out = d.feed(Ready("b"))  # logged in: the whole cache (warm from now on), then its health check
    assert d.cmds(out, "b") == ["health_check"] and pushed(out, "b") == {"n": 1}
    d.feed(HealthReport("b", HEALTHY))
    out = d.feed(ProcessExited("id-a", -9), at=2)
    assert pushed(out, "b") is NOTHING_PUSHED and d.cmds(out, "b") == ["process_commands"]
    d.core.clients["b"].cache_seq = 0  # had it missed that push too: sent before the grant
    d.join("c")
    out = d.feed(ProcessExited("id-b", -9), at=3)
    [promoted] = [w for w in ("c",) if d.cmds(out, w) == ["process_commands"]]
    sends = [(x.event, x.data) for x in out if isinstance(x, Send) and x.sid == promoted]
    assert pushed(out, promoted) is NOTHING_PUSHED or sends[-1][1]["t"] == "process_commands"


def test_a_holder_promoted_again_is_not_sent_its_own_cache() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.feed(cache_sync("a", {"n": 1}))
    out = d.feed(ComaAck("a", "stopped by itself"), at=1)  # unasked; still the newest: promoted again
    assert d.grant(out, "a")["epoch"] == 2
    assert not any(isinstance(x, Send) and x.event == "cache_sync" for x in out)


# -- forgetting ------------------------------------------------------------------------------------------------
def test_a_silent_standby_is_never_promoted() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.join("b")
    d.renew("a", 1)
    d.now = 10
    d.renew("a", 1)
    out = d.feed(TimerFired(), at=15)  # b's silence: its connection is being closed; the disconnect may come later
    assert Close("b", "heartbeat silence (15.0 s)", "id-b", hung=True) in out
    assert "b" not in d.core.clients
    out = d.feed(ProcessExited("id-a", -9), at=16)
    assert d.cmds(out, "b") == [] and d.core.lease is None


def test_an_admin_that_left_can_no_longer_say_try_again() -> None:
    d = Driver()
    d.feed(RollbackFinished(False, "broken"))
    d.feed(Connected("admin", identity="admin", admin=True))
    d.feed(Disconnected("admin"))
    assert d.feed(TryAgain("admin")) == [Reply({"error": "try_again needs the admin credential"})]
    assert d.core.is_sane is False


def test_an_identity_asked_to_leave_counts_again_once_it_has_exited() -> None:
    d = Driver(Settings(spawn_workers=True, crash_loop_losses=10))
    d.join("a", report={"OK": False, "percent": 0, "cogs": {"modules.utilities": True}})  # asked to shut down
    assert not any(isinstance(x, Spawn) for x in d.feed(ProcessExited("id-a", 0)))
    out = d.feed(ProcessExited("id-a", 1), at=5)  # the same identity, started again, crashing this time
    assert any(isinstance(x, Spawn) for x in out) and d.core.losses == [5]


# -- operator actions and deploys ----------------------------------------------------------------------------
def test_try_again_forgets_the_old_losses_and_says_so() -> None:
    d = Driver(Settings(spawn_workers=True, crash_loop_losses=3, crash_loop_window=60))
    for t in (0, 1, 2):
        d.feed(ProcessExited(f"w{t}", 1), at=t)
    assert d.core.is_sane is False
    d.join("a")  # a worker is connected: try_again asks for no spawn of its own
    d.feed(Connected("admin", identity="admin", admin=True))
    out = d.feed(TryAgain("admin"), at=3)
    assert Notify("info", "try_again: deploying and spawning resumed") in out
    assert not any(isinstance(x, Spawn) for x in out)
    d.feed(ProcessExited("w3", 1), at=4)  # one more loss within the window is not a crash loop again
    assert d.core.is_sane is True


def test_try_again_without_a_process_manager_spawns_nothing() -> None:
    d = Driver(Settings(spawn_workers=False))
    d.feed(Connected("admin", identity="admin", admin=True))
    assert not any(isinstance(x, Spawn) for x in d.feed(TryAgain("admin")))


def test_deploy_outcomes_are_announced() -> None:
    d = Driver()
    out = d.feed(DeployConfirmed("0123456789abcdef" * 2))
    assert Notify("info", "deployed 0123456789ab: it is the last known good commit now") in out
    out = d.feed(RollbackFinished(True, "HEAD verified"))
    assert out == [Notify("info", f"rolled back to {'0123456789abcdef' * 2}: HEAD verified")]


def test_only_waiting_workers_of_older_generations_retire() -> None:
    d = Driver()
    d.join("old", generation=1)
    d.renew("old", 1)
    d.join("spare-old", generation=1)
    d.join("external", generation=None)  # not spawned by us: no generation to compare
    d.join("new", generation=2)
    d.join("spare-new", generation=2)
    d.feed(ComaAck("old", "newer generation"))
    assert d.core.running_client == "new"
    out = d.feed(RetireOlder(2))
    shut = {x.sid: x.data["d"] for x in out if isinstance(x, Send) and x.data.get("t") == "shutdown"}
    assert shut == {
        "old": {"reason": "outdated: generation 2 runs now", "cache_sync": False},
        "spare-old": {"reason": "outdated: generation 2 runs now", "cache_sync": False},
    }


def test_a_fenced_holder_is_forgotten() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.join("b")
    d.feed(cache_sync("a", {"n": 1}), at=10)  # alive but not renewing (a stuck heartbeat task)
    d.feed(Heartbeat("b"), at=10)
    out = d.feed(TimerFired(), at=17)
    assert Close("a", "lease expired", "id-a", hung=True) in out
    assert "a" not in d.core.clients and d.core.running_client == "b"


# -- reasons that say what happened (issue 12) ------------------------------------------------------


def notes(out: list[Any], level: str | None = None) -> list[str]:
    return [a.message for a in out if isinstance(a, Notify) and (level is None or a.level == level)]


def test_a_hand_over_names_the_version_and_the_release_it_comes_from() -> None:
    d = Driver()
    d.join("old", version="1.0", generation=1)
    d.renew("old", 1)
    d.feed(Connected("new", identity="id-new", generation=2, release="deploy 747c50f12ab3"))
    d.feed(Identified("new", version="1.0", pid=101, generation=2))
    d.feed(Ready("new"))
    out = d.feed(HealthReport("new", HEALTHY))
    [coma] = [a.data["d"] for a in out if isinstance(a, Send) and a.sid == "old" and a.data.get("t") == "coma"]
    assert coma["reason"] == "hand-over to 1.0 (deploy 747c50f12ab3)"  # not "newer version 1.0 takes over"
    out = d.feed(ComaAck("old", coma["reason"]))
    assert d.grant(out, "new")["reason"] == "hand-over to 1.0 (deploy 747c50f12ab3)"


def test_a_failover_after_an_exit_says_which_worker_exited_and_never_promises_to_wait() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.join("b")
    out = d.feed(Disconnected("a"), at=1)  # the connection drops first, as it usually does
    assert not any("failing over" in m or "lease ends" in m for m in notes(out))
    out = d.feed(ProcessExited("id-a", -9, uptime=3.0, tail=("Traceback (most recent call last):", "KeyError: 'x'")))
    assert d.grant(out, "b")["reason"] == "failover: id-a exited (-9)"
    [warning] = notes(out, "warning")  # the first young death of the window: a warning, with its last lines
    assert (
        warning
        == "worker id-a exited (-9) after 3.0 s; last lines:\n  | Traceback (most recent call last):\n  | KeyError: 'x'"
    )


def test_a_lost_holder_whose_lease_ends_is_a_warning_then_the_reason() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)  # at 0: the lease ends at 17
    d.join("b")
    d.feed(Disconnected("a"), at=1)
    d.feed(Heartbeat("b"), at=10)  # the standby lives on
    assert d.core.waiting_for(2) == "waiting for the lease of id-a (epoch 1, lost (disconnected)) to end in 15 s"
    d.feed(Heartbeat("b"), at=10)  # the standby stays alive (silent past 15 s, it would be dropped)
    out = d.feed(TimerFired(), at=18)
    [warning] = notes(out, "warning")
    assert warning == "failover: id-a was lost (disconnected) and its lease ended 17.0 s later"
    assert d.grant(out, "b")["reason"] == warning


def test_status_says_what_a_start_waits_for() -> None:
    state = {"epoch": 17, "is_sane": True, "holder": {"identity": "child-abc-1", "epoch": 17, "token": "t"}}
    d = Driver(state=state, now=0.0)
    d.feed(Connected("a", identity="id-a"))
    d.feed(Identified("a", version="1.0", pid=100))
    assert d.core.waiting_for(12) == "waiting for the previous holder's lease (child-abc-1 epoch 17) to end in 5 s"
    d.feed(Heartbeat("a"), at=10)  # logging in to Discord, alive
    out = d.feed(TimerFired(), at=17)
    d.feed(Ready("a"))
    assert d.core.waiting_for(17) == "waiting for a worker to pass its health check"
    out = d.feed(HealthReport("a", HEALTHY))
    assert d.grant(out, "a")["reason"] == "failover: the previous holder's lease (child-abc-1 epoch 17) ended"
    assert d.core.waiting_for(17) is None


def test_a_failed_health_check_names_the_failing_cogs() -> None:
    d = Driver()
    report = {"OK": False, "percent": 50, "cogs": {"modules.utilities": True, "modules.music": False, "x": False}}
    d.join("a", report=HEALTHY)
    out = d.join("b", version="1.1", report=report)
    [warning] = notes(out, "warning")
    assert warning == (
        "id-b (version 1.1) failed its health check: health_check_failure"
        " (failing: modules.music, x; 50% healthy, 100% needed)"
    )


def test_crash_loop_names_how_many_are_left_and_quotes_the_last_lines() -> None:
    d = Driver(Settings(spawn_workers=True, crash_loop_losses=2, crash_loop_window=60))
    d.join("a")
    d.feed(ProcessExited("id-x", 1, uptime=0.2, tail=("boom",)), at=1)
    out = d.feed(ProcessExited("id-y", 1, uptime=0.3, tail=("ModuleNotFoundError: No module named 'tinydep'",)), at=2)
    [critical] = notes(out, "critical")
    assert critical.startswith("crash loop: 2 workers lost within 60s (1 left);")
    assert critical.endswith(
        "Last: id-y exited (1) after 0.3 s; last lines:\n  | ModuleNotFoundError: No module named 'tinydep'"
    )
    assert d.core.waiting_for(2) is None  # id-a runs


def test_only_the_first_loss_of_a_window_is_notified_until_the_crash_loop() -> None:
    """Each crash names another worker, so the notifier could not fold them: one warning, then the crash loop."""
    d = Driver(Settings(spawn_workers=True, crash_loop_losses=4, crash_loop_window=60))
    said = [notes(d.feed(ProcessExited(f"id-{n}", 1, uptime=0.1, tail=("boom",)), at=n)) for n in range(4)]
    assert [len(s) for s in said] == [1, 0, 0, 1]
    assert said[0][0].startswith("worker id-0 exited (1) after 0.1 s") and said[3][0].startswith("crash loop: 4")
    d = Driver(Settings(spawn_workers=True))
    d.join("a")
    d.feed(WorkerFailed("a", "the token was refused", "reset it"))
    out = d.feed(ProcessExited("id-a", 1))
    assert not any(m.startswith("worker ") for m in notes(out))  # its failure was announced (critical) already


# -- the cache as bytes, in parts, and deltas (§11) -----------------------------------------------------------
def parts_of(sid: str, change: Any, sync: int, part_bytes: int = 4) -> list[Any]:
    return [CacheSyncEvent(sid, p) for p in change.parts(sync, part_bytes)]


def test_a_cache_in_parts_is_kept_as_the_bytes_that_came_and_forwarded_once_complete() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.join("b")
    change = CacheChange(True, {"x": (b"0123456789",), "y": (b"",)})
    *first, last = parts_of("a", change, sync=1)
    for part in first:
        out = d.feed(part)
        assert out == [Reply({"accepted": True, "part": part.part.part})]  # staged: nothing kept or pushed yet
    assert d.core.cache is None
    out = d.feed(last)
    assert Reply({"accepted": True}) in out
    assert d.core.cache is not None and dict(d.core.cache.entries) == {"x": (b"0123", b"4567", b"89"), "y": (b"",)}
    forwarded = [a for a in out if isinstance(a, Send) and a.sid == "b"]
    assert [a.data for a in forwarded] == [  # re-cut at the supervisor's own part size (1 MiB)
        {"sync": 1, "part": 0, "parts": 1, "full": True, "set": {"x": b"0123456789", "y": b""}}
    ]


def test_a_delta_is_applied_to_the_bytes_and_forwarded_as_a_delta_to_a_standby_that_has_the_base() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.join("b")
    d.feed(cache_sync("a", {"n": 1}))  # "" = the plain entry; b has it by the fan-out
    delta = CacheChange(False, {"k": (b"v",)}, frozenset({""}))
    out = d.feed(parts_of("a", delta, sync=2)[0])
    assert Reply({"accepted": True}) in out and dict(d.core.cache.entries) == {"k": (b"v",)}
    [push] = [a for a in out if isinstance(a, Send) and a.sid == "b"]
    assert push.data == {"sync": 2, "part": 0, "parts": 1, "full": False, "set": {"k": b"v"}, "delete": [""]}
    [kept] = [a for a in out if isinstance(a, PersistCache)]
    assert (kept.base, kept.seq, kept.change) == (1, 2, delta)


def test_a_standby_that_missed_a_sync_gets_the_whole_image_not_the_delta() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.feed(cache_sync("a", {"n": 1}))
    d.join("b")  # after the first sync: warmed with the whole image at its health check
    d.core.clients["b"].cache_seq = 0  # as if that push had not reached it
    out = d.feed(parts_of("a", CacheChange(False, {"k": (b'"v"',)}), sync=2)[0])
    [push] = [a for a in out if isinstance(a, Send) and a.sid == "b"]
    assert push.data["full"] is True and push.data["set"] == {"": b'{"n":1}', "k": b'"v"'}
    assert pushed(d.actions, "b") == {"": {"n": 1}, "k": "v"}


def test_a_delta_on_a_cache_the_worker_does_not_share_is_refused_with_resync() -> None:
    d = Driver(cache=image({"restored": 1}))
    d.join("a")  # pushed the restored cache before its grant: it shares it
    d.renew("a", 1)
    d.core.clients["a"].cache_seq = 0  # as if it had reconnected since
    out = d.feed(parts_of("a", CacheChange(False, {"k": (b"v",)}), sync=1)[0])
    assert len(out) == 1 and out[0].data["resync"] is True and "whole cache" in out[0].data["error"]
    assert plain(d.core.cache) == {"restored": 1}  # untouched


def test_a_sync_past_cache_max_is_refused_as_it_arrives_and_its_other_parts_alike() -> None:
    d = Driver(Settings(token="t", interval=10, grace=5, lease_margin=2, cache_max=80))  # 8 bytes + key + 64 fit
    d.join("a")
    d.renew("a", 1)
    parts = parts_of("a", CacheChange(True, {"x": (b"z" * 30,)}), sync=1, part_bytes=8)
    assert d.feed(parts[0]) == [Reply({"accepted": True, "part": 0})]
    refused = d.feed(parts[1])  # 16 bytes, the key and its overhead: 81 > 80
    assert refused == [Reply({"accepted": False, "error": "cache larger than the supervisor's cache_max (80 bytes)"})]
    assert [d.feed(p) for p in parts[2:]] == [refused] * 2  # the rest of the sync: the same answer, nothing staged
    assert d.core.cache is None and d.core.clients["a"].cache_in is None


def test_parts_out_of_order_are_refused_and_nothing_half_made_is_kept() -> None:
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    parts = parts_of("a", CacheChange(True, {"x": (b"0123456789",)}), sync=1)
    d.feed(parts[0])
    [answer] = d.feed(parts[2])
    assert answer.data["accepted"] is False and "out of order" in answer.data["error"]
    assert d.core.cache is None
    out = d.feed(cache_sync("a", {"ok": True}, sync=2))  # a new sync starts clean
    assert Reply({"accepted": True}) in out and plain(d.core.cache) == {"ok": True}


def test_a_former_holders_unfinished_sync_is_dropped_with_its_lease() -> None:
    """A holder stages part 0 of a sync it never finishes (up to cache_max), then acknowledges a coma: its staged
    bytes stayed with its connection for good. A chain of holders could each leave cache_max behind (§11.6
    promises at most twice cache_max: the kept cache and one sync arriving)."""
    d = Driver()
    d.join("old", version="0.0.9")
    d.renew("old", 1)
    first = CacheChange(True, {"big": (b"x" * 10,)}).parts(1, part_bytes=5)[0]  # part 0 of 2
    assert Reply({"accepted": True, "part": 0}) in d.feed(CacheSyncEvent("old", first))
    assert d.core.clients["old"].cache_in is not None and d.core.clients["old"].cache_in.staging
    d.join("new", version="0.0.10")
    d.feed(ComaAck("old", "newer version"))
    assert d.core.lease is not None and d.core.lease.sid == "new"
    assert d.core.clients["old"].cache_in is None  # nothing of it is held any more


def test_a_cache_sync_from_a_holder_before_its_first_renewal_is_refused() -> None:
    """Found by the stateful test: a promoted worker's sync sent before its grant (a stale one) replaced the newer
    cache the grant pushed to it, and the next holder would have started from the stale one (P3)."""
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.join("b")
    d.feed(cache_sync("a", {"write": 1}))
    d.feed(WorkerFailed("a", "login refused"))  # released: b promoted, its grant (and our cache) on the way
    assert d.core.running_client == "b" and d.core.lease is not None and not d.core.lease.confirmed
    out = d.feed(cache_sync("b", {"stale": True}))
    assert [a.data.get("accepted") for a in out if isinstance(a, Reply)] == [False]
    assert not any(isinstance(a, PersistCache) for a in out) and plain(d.core.cache) == {"write": 1}
    d.renew("b", 2)
    out = d.feed(cache_sync("b", {"write": 2}))  # processing now: kept
    assert [a.data.get("accepted") for a in out if isinstance(a, Reply)] == [True]
