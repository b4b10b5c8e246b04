"""A deploy's candidate and the core's one verdict on it (``CandidateStarted`` in, ``Verdict`` out).

The deployer infers nothing: each path by which a candidate's fate is sealed gives exactly one
``Verdict``, and a candidate's failed health check is that verdict, never a ``RollBack`` too.
"""

from __future__ import annotations

from typing import Any

from tests.supervisor.test_core import HEALTHY, SETTINGS, Driver
from urban_robot.supervisor import (
    CandidateStarted,
    ComaAck,
    Connected,
    HealthReport,
    Heartbeat,
    Identified,
    Kill,
    ProcessExited,
    Ready,
    RollBack,
    Stopping,
    TimerFired,
    Verdict,
)

SICK = {"OK": False, "percent": 40, "cogs": {"modules.utilities": True, "modules.music": False}}
VITAL_DOWN = {"OK": False, "percent": 100, "cogs": {"modules.utilities": False}}


def verdicts(out: list[Any]) -> list[Verdict]:
    return [a for a in out if isinstance(a, Verdict)]


def running(d: Driver) -> None:
    """A holder of generation 1 (``a``) with a confirmed lease, as before any deploy."""
    d.join("a", generation=1)
    d.renew("a", 1)


def arrive(d: Driver, sid: str, *, child: bool = True, at: float | None = None) -> None:
    """The candidate's child connects and identifies (generation 2), not yet ready."""
    d.feed(Connected(sid, identity=f"id-{sid}", generation=2 if child else None), at=at)
    d.feed(Identified(sid, version="2.0", pid=200, generation=2))


def test_a_candidate_handed_over_to_is_promoted_with_the_times_of_its_steps() -> None:
    d = Driver()
    running(d)
    assert verdicts(d.feed(CandidateStarted("id-b", 2, 60), at=1)) == []
    arrive(d, "b", at=2)
    assert verdicts(d.feed(Ready("b"), at=3)) == []
    out = d.feed(HealthReport("b", HEALTHY), at=4)
    assert d.cmds(out, "a") == ["coma"] and verdicts(out) == []  # passed: the hand-over begins, no verdict yet
    out = d.feed(ComaAck("a"), at=5)
    [verdict] = verdicts(out)
    assert verdict == Verdict(
        "id-b",
        2,
        "promoted",
        "hand-over to 2.0 (generation 2)",
        (("spawned", 1), ("checking", 3), ("passed", 4), ("running", 5)),
    )
    assert verdict.promoted and d.core.trial is None
    assert d.cmds(out, "b") == ["process_commands"]
    # Given once: whatever becomes of it later is no verdict any more.
    assert verdicts(d.feed(ProcessExited("id-b", 1), at=6)) == []


def test_a_candidate_that_fails_its_health_check_gets_a_verdict_and_no_rollback() -> None:
    d = Driver()
    running(d)
    d.feed(CandidateStarted("id-b", 2, 60), at=1)
    arrive(d, "b")
    d.feed(Ready("b"), at=2)
    out = d.feed(HealthReport("b", SICK), at=3)
    assert verdicts(out) == [
        Verdict(
            "id-b",
            2,
            "failed health check",
            "health check: health_check_failure (failing: modules.music; 40% healthy, 100% needed)",
            (("spawned", 1), ("checking", 2)),
        )
    ]
    assert not any(isinstance(a, RollBack) for a in out)  # one path: the deployer rolls back on the verdict
    assert d.cmds(out, "b") == ["shutdown"]
    assert d.core.trial is None and d.core.running_client == "a"


def test_a_candidate_failing_a_vital_cog_says_which() -> None:
    d = Driver()
    d.feed(CandidateStarted("id-b", 2, 60))
    arrive(d, "b")
    d.feed(Ready("b"))
    [verdict] = verdicts(d.feed(HealthReport("b", VITAL_DOWN)))
    assert verdict.detail == "health check: vital_cog_failed (failing: modules.utilities)"


def test_a_candidate_that_never_answers_its_health_check_fails_it() -> None:
    d = Driver()
    d.feed(CandidateStarted("id-b", 2, 600))
    arrive(d, "b", child=False)  # external: no silence fence before the check's time-out
    d.feed(Ready("b"), at=1)
    d.feed(Heartbeat("b"), at=11)  # heard of: no silence limit on the way
    out = d.feed(TimerFired(), at=1 + SETTINGS.health_timeout)
    [verdict] = verdicts(out)
    assert (verdict.outcome, verdict.detail) == ("failed health check", "health check: health_check_timeout")
    assert not any(isinstance(a, RollBack) for a in out)


def test_a_candidate_whose_process_exits_before_promotion_gets_a_verdict() -> None:
    d = Driver()
    running(d)
    d.feed(CandidateStarted("id-b", 2, 60), at=1)
    out = d.feed(ProcessExited("id-b", 1, candidate=True), at=2)  # crashed at import: it never connected
    assert verdicts(out) == [Verdict("id-b", 2, "exited", "exited with 1 before it was promoted", (("spawned", 1),))]
    assert d.core.trial is None and d.core.running_client == "a"


def test_a_candidate_that_exits_while_checking_gets_one_verdict() -> None:
    d = Driver()
    d.feed(CandidateStarted("id-b", 2, 60))
    arrive(d, "b")
    d.feed(Ready("b"), at=1)
    out = d.feed(ProcessExited("id-b", -9, candidate=True), at=2)
    assert [(v.outcome, v.detail) for v in verdicts(out)] == [("exited", "exited with -9 before it was promoted")]


def test_a_candidate_fenced_as_hung_gets_a_verdict_once() -> None:
    d = Driver()
    d.feed(CandidateStarted("id-b", 2, 600))
    arrive(d, "b")  # a child: fenced when silent for hang_limit
    hang = SETTINGS.hang_after
    out = d.feed(TimerFired(), at=hang)
    assert Kill("id-b", f"hung: silent for {hang:.1f} s") in out
    [verdict] = verdicts(out)
    assert verdict.outcome == "fenced"
    assert verdict.detail == f"fenced before it was promoted: hung: silent for {hang:.1f} s"
    assert verdicts(d.feed(ProcessExited("id-b", -9, candidate=True), at=hang + 1)) == []  # the kill's exit


def test_no_verdict_in_time_is_a_core_deadline_and_the_candidate_is_never_promoted_after() -> None:
    d = Driver()
    d.feed(CandidateStarted("id-b", 2, 30), at=5)
    assert d.core.next_deadline() == 35
    assert verdicts(d.feed(TimerFired(), at=34.9)) == []
    arrive(d, "b", child=False, at=34.9)
    out = d.feed(TimerFired(), at=35)
    assert verdicts(out) == [Verdict("id-b", 2, "timed out", "no verdict in time", (("spawned", 5),))]
    assert d.cmds(out, "b") == ["shutdown"]  # given up on: never promoted later, even if it passed
    assert d.core.trial is None
    out = d.feed(Ready("b"), at=36)
    assert d.cmds(out, "b") == [] and d.core.running_client is None


def test_the_supervisor_stopping_is_a_verdict() -> None:
    d = Driver()
    running(d)
    d.feed(CandidateStarted("id-b", 2, 60), at=1)
    arrive(d, "b")
    out = d.feed(Stopping("SIGTERM"), at=2)
    assert verdicts(out) == [Verdict("id-b", 2, "stopping", "supervisor stopping (SIGTERM)", (("spawned", 1),))]
    # A candidate started while stopping is answered at once: nobody is promoted any more.
    out = d.feed(CandidateStarted("id-c", 3, 60), at=3)
    assert [(v.identity, v.outcome) for v in verdicts(out)] == [("id-c", "stopping")]
    assert d.core.trial is None and d.core.next_deadline() != 63


def test_a_newer_candidate_replaces_the_pending_one_which_gets_its_verdict_then() -> None:
    d = Driver()
    running(d)
    d.feed(CandidateStarted("id-b", 2, 60), at=1)
    out = d.feed(CandidateStarted("id-c", 3, 60), at=2)
    assert verdicts(out) == [Verdict("id-b", 2, "replaced", "replaced by a newer candidate, id-c", (("spawned", 1),))]
    assert d.core.trial is not None and d.core.trial.identity == "id-c"
    assert verdicts(d.feed(ProcessExited("id-b", 0, candidate=True), at=3)) == []  # judged already
    out = d.feed(ProcessExited("id-c", 1, candidate=True), at=4)
    assert [(v.identity, v.outcome) for v in verdicts(out)] == [("id-c", "exited")]


def test_a_newer_worker_that_is_no_candidate_failing_its_check_still_asks_for_a_rollback() -> None:
    """A respawned worker of a newer generation (no deploy watching it) failing its check: RollBack, as before."""
    d = Driver()
    running(d)
    d.feed(CandidateStarted("id-x", 3, 60), at=1)  # another candidate pending changes nothing for it
    arrive(d, "c")
    d.feed(Ready("c"), at=2)
    out = d.feed(HealthReport("c", SICK), at=3)
    assert RollBack("health_check_failure", "2.0", 2, "failing: modules.music; 40% healthy, 100% needed") in out
    assert verdicts(out) == [] and d.core.trial is not None and d.core.trial.identity == "id-x"


def test_role_changes_and_cmds_name_the_worker() -> None:
    d = Driver()
    out = d.join("a")
    assert {a.identity for a in out if type(a).__name__ in ("RoleChanged", "Send")} == {"id-a"}


def test_a_verdict_is_final_a_candidate_judged_against_is_never_promoted() -> None:
    """Timed out before it even identified: told to shut down once it can act on it, and never promoted."""
    d = Driver()
    d.feed(CandidateStarted("id-b", 2, 30))
    d.feed(Connected("b", identity="id-b", generation=2), at=29)
    [verdict] = verdicts(d.feed(TimerFired(), at=30))
    assert verdict.outcome == "timed out"
    out = d.feed(Identified("b", version="2.0", pid=200, generation=2), at=31)
    assert d.cmds(out, "b") == ["shutdown"]
    assert [a.data["d"]["reason"] for a in out if getattr(a, "event", None) == "cmd"] == [
        "candidate rejected: no verdict in time"
    ]
    d.feed(Ready("b"), at=32)
    assert d.core.running_client is None and "id-b" in d.core.rejected
    d.feed(ProcessExited("id-b", 0, candidate=True), at=33)
    assert d.core.rejected == {}  # gone: nothing more to refuse it


def test_a_replaced_candidate_standing_by_is_told_to_shut_down() -> None:
    d = Driver()
    d.feed(CandidateStarted("id-b", 2, 60))
    arrive(d, "b", child=False)
    d.feed(Ready("b"), at=1)
    out = d.feed(CandidateStarted("id-c", 3, 60), at=2)
    assert [v.outcome for v in verdicts(out)] == ["replaced"] and d.cmds(out, "b") == ["shutdown"]
    out = d.feed(HealthReport("b", HEALTHY), at=3)  # its answer to the check asked before: too late
    assert d.core.running_client is None and verdicts(out) == []
