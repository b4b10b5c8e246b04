"""Rolling deploys of a sharded bot (issue 16, DESIGN.md §8.1), with real git and real worker processes.

The bot is the rehearsal bot (``python -m urban_robot.testing.worker``), whose behaviour comes from
``rehearsal.toml`` in the commit it runs: ``failing_shards`` makes a commit fail its health check only in
the groups running those shards, so a rollout can pass in group 0 and fail in group 1.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests._helpers import QUICK, GitUpstream, git, worker_options
from urban_robot.supervisor import App, ChildPolicy, Notify, RoleChanged, build
from urban_robot.supervisor._deploy import DeployResult
from urban_robot.supervisor._events import CandidateStarted, RollbackFinished, Verdict

pytestmark = pytest.mark.slow

ADMIN = "admin-token"
HOLDING = ("running", "stopping")  # a worker may process from its promotion until it acknowledged its stop


class Repository(GitUpstream):
    def commit(self, rehearsal: str) -> str:
        (self.work / "rehearsal.toml").write_text(rehearsal)
        return self.push(rehearsal.splitlines()[0])


class Watch:
    """What the bus says, in order: candidates, verdicts, rollbacks; and each group's holders over time."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.steps: list[tuple[str, int, str]] = []  # ("started"|"verdict", group, generation or outcome)
        self.candidates: list[CandidateStarted] = []
        self.finished: list[RollbackFinished] = []
        self.notes: list[Notify] = []
        self.holding: dict[int, set[str]] = {}  # group -> identities that may be processing
        self.held: set[str] = set()  # every worker that ever held its group's lease
        self.overlaps: list[str] = []  # a second worker promoted in a group while another held it
        app.bus.subscribe(CandidateStarted, self.candidates.append)
        app.bus.subscribe(CandidateStarted, lambda e: self.steps.append(("started", e.group, str(e.generation))))
        app.bus.subscribe(Verdict, lambda v: self.steps.append(("verdict", v.group, v.outcome)))
        app.bus.subscribe(RollbackFinished, self.finished.append)
        app.bus.subscribe(Notify, self.notes.append)
        app.bus.subscribe(RoleChanged, self.role_changed)

    def role_changed(self, change: RoleChanged) -> None:
        holding = self.holding.setdefault(change.group, set())
        if change.new in HOLDING:
            if holding - {change.identity}:
                self.overlaps.append(f"group {change.group}: {change.identity} while {sorted(holding)}")
            holding.add(change.identity)
            self.held.add(change.identity)
        else:
            holding.discard(change.identity)

    async def until(self, predicate: Any) -> None:
        while not predicate():
            await self.app.changed().wait()

    def versions(self) -> list[str | None]:
        """The version each group's running worker runs."""
        snap = self.app.robot.snapshot()
        by_identity = {w.identity: w.version for w in snap.workers}
        return [by_identity.get(g.running) if g.running else None for g in snap.groups]

    def settled(self, version: str) -> bool:
        """Every group runs ``version`` with a standby of it, and nothing else is connected."""
        snap = self.app.robot.snapshot()
        return all(g.running is not None and g.standbys >= 1 for g in snap.groups) and all(
            w.version == version for w in snap.workers
        )


def processing_spans(app: App) -> dict[str, list[tuple[float, float, str]]]:
    """From the workers' own logs (each line stamped with the system-wide monotonic clock), per shard group
    (``"[0, 1] of 4"``): each worker's spans from receiving ``process_commands`` to receiving ``coma``/``shutdown``
    (open: still holding). A worker processes only within such a span."""
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for identity, path in app.children.logs.items():
        group, opened = "?", None
        for line in Path(path).read_text().splitlines():
            stamp, _, rest = line.partition(f" {identity} ")
            if not rest:
                continue
            if rest.startswith("hello shards "):
                group = rest.removeprefix("hello shards ")
            elif rest == "cmd:process_commands" and opened is None:
                opened = float(stamp)
            elif rest in ("cmd:coma", "cmd:shutdown") and opened is not None:
                spans.setdefault(group, []).append((opened, float(stamp), identity))
                opened = None
        if opened is not None:
            spans.setdefault(group, []).append((opened, float("inf"), identity))
    return spans


def overlaps(spans: dict[str, list[tuple[float, float, str]]]) -> list[str]:
    """Two workers' spans overlapping in one group (sorted by start, any overlap shows in a neighbouring pair)."""
    found = []
    for group, held in spans.items():
        held.sort()
        for (_, end, first), (begin, _, second) in itertools.pairwise(held):
            if begin < end:
                found.append(f"shards {group}: {second} from {begin} while {first} until {end}")
    return found


async def start(nursery: trio.Nursery, tmp_path: Path) -> tuple[Repository, App, Watch]:
    repo = Repository(tmp_path)
    repo.commit('version = "1.0"\n')
    git(tmp_path, "clone", "-q", str(repo.upstream), str(repo.checkout))
    options = worker_options(
        tmp_path,
        QUICK,
        helium_path=repo.checkout,
        shard_count=4,
        shards_per_worker=2,
        deploy_timeout=30,
        admin_token=ADMIN,
        policy=ChildPolicy(term_timeout=2, kill_timeout=2),
    )
    app = build(options)
    await nursery.start(app.run)
    watch = Watch(app)
    await watch.until(lambda: watch.settled("1.0"))
    return repo, app, watch


async def deploy(app: App) -> DeployResult:
    return await app.deployer.outcome_of(app.deployer.request("test"))


async def test_a_good_commit_rolls_through_the_groups_one_after_the_other(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="urban_robot.deploy")
    with trio.fail_after(120):
        repo, app, watch = await start(nursery, tmp_path)
        good = repo.commit('version = "2.0"\n')
        result = await deploy(app)
        assert result == DeployResult(good, "deployed", "", None, 2, 2)
        await watch.until(lambda: watch.settled("2.0"))
    # Group 1's candidate started only once group 0's was promoted; one generation for the commit in both.
    generation = watch.steps[0][2]
    assert watch.steps == [
        ("started", 0, generation),
        ("verdict", 0, "promoted"),
        ("started", 1, generation),
        ("verdict", 1, "promoted"),
    ]
    assert watch.overlaps == []  # each group's lease: never two workers holding one group
    spans = processing_spans(app)  # ... nor as the workers themselves saw it
    assert overlaps(spans) == [] and sorted(spans) == ["[0, 1] of 4", "[2, 3] of 4"]
    assert all(len(held) == 2 for held in spans.values())  # the old holder, then the new commit's
    assert app.robot.snapshot().last_known_good == good
    confirmed = [n.message for n in watch.notes if "last known good" in n.message]
    assert confirmed == [f"deployed {good[:12]}: it is the last known good commit now"]  # once, at the end
    messages = [r.getMessage() for r in caplog.records]
    assert f"deploy of {good[:12]}: shards 0-1 (group 1 of 2) starts" in messages
    assert f"deploy of {good[:12]}: shards 2-3 runs it (2 of 2 groups)" in messages
    assert any(m.startswith(f"deploy of {good[:12]}: shards 2-3: health check took") for m in messages)
    app.stop("test over")


async def test_a_commit_failing_in_group_1_stops_and_returns_group_0_to_the_last_known_good(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(180):
        repo, app, watch = await start(nursery, tmp_path)
        good = repo.commit('version = "2.0"\n')
        assert (await deploy(app)).outcome == "deployed"
        await watch.until(lambda: watch.settled("2.0"))
        watch.steps.clear()
        watch.candidates.clear()
        bad = repo.commit('version = "3.0"\nfailing_shards = [2, 3]\n')
        async with httpx.AsyncClient(timeout=120) as http:  # deploy --wait's request
            answer = await http.post(app.url + "/api/deploy?wait=1", headers={"Authorization": f"Bearer {ADMIN}"})
        result = app.deployer.results[-1][1]
        await watch.until(lambda: watch.settled("2.0"))
    assert answer.json() == {
        "deploy": "done",
        "commit": bad,
        "outcome": "failed",
        "detail": result.detail,
        "failed_group": 1,
        "groups_moved": 1,
        "groups": 2,
    }
    assert (result.commit, result.outcome, result.failed_group, result.groups_moved, result.groups) == (
        bad,
        "failed",
        1,
        1,
        2,
    )
    assert result.detail == (
        "shards 2-3 (group 2 of 2): health check: vital_cog_failed (failing: modules.utilities); "
        "1 group(s) had run it and returned to what they ran before"
    )
    # Group 0 ran the new commit, group 1's candidate failed, then group 0 went back through the gate.
    started = [(group, int(generation)) for step, group, generation in watch.steps if step == "started"]
    assert [group for group, _ in started] == [0, 1, 0]
    assert started[0][1] == started[1][1] < started[2][1]  # the way back is newer: group 0's core hands over
    assert [(group, word) for step, group, word in watch.steps if step == "verdict"] == [
        (0, "promoted"),
        (1, "failed health check"),
        (0, "promoted"),
    ]
    [finished] = watch.finished
    assert finished.ok and "shards 0-1 returned" in finished.detail and finished.detail.endswith(f"back on {good[:12]}")
    assert watch.overlaps == [] and overlaps(processing_spans(app)) == []
    snap = app.robot.snapshot()
    assert snap.is_sane and snap.last_known_good == good and bad in app.deployer.bad_commits
    assert watch.versions() == ["2.0", "2.0"]
    # Group 1 never ran the new code: its one worker of it was the candidate, which never held the lease.
    [new_in_group_1] = [c.identity for c in watch.candidates if c.group == 1]
    assert new_in_group_1 not in watch.held
    assert "cmd:process_commands" not in Path(app.children.logs[new_in_group_1]).read_text()
    assert app.children.code(1).release == app.children.code(0).release == f"deploy {good[:12]}"
    app.stop("test over")


async def test_a_rollout_whose_rollback_fails_too_sets_is_sane_false(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(180):
        repo, app, watch = await start(nursery, tmp_path)
        good = repo.commit('version = "2.0"\n')
        assert (await deploy(app)).outcome == "deployed"
        await watch.until(lambda: watch.settled("2.0"))
        # The last known good release no longer starts (its files damaged on disk): the way back fails too.
        (tmp_path / "state" / "releases" / good / "rehearsal.toml").write_text('crash = "damaged"\n')
        repo.commit('version = "3.0"\nfailing_shards = [2, 3]\n')
        result = await deploy(app)
    assert (result.outcome, result.failed_group, result.groups_moved) == ("failed", 1, 1)
    assert result.detail.endswith(
        "1 group(s) had run it and could not all return to what they ran before (is_sane false)"
    )
    [finished] = watch.finished
    assert not finished.ok and "returning shards 0-1 to deploy" in finished.detail
    assert not app.robot.snapshot().is_sane
    assert any(n.level == "critical" and "rollback failed" in n.message for n in watch.notes)
    assert watch.overlaps == []
    app.stop("test over")


async def test_a_stop_during_the_way_back_is_no_failed_rollback(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The supervisor stops while group 0's return candidate starts: every group starts from the last known good
    release at the next start, so is_sane stays true (a restart must not need try_again)."""
    with trio.fail_after(180):
        repo, app, watch = await start(nursery, tmp_path)
        good = repo.commit('version = "2.0"\n')
        assert (await deploy(app)).outcome == "deployed"
        await watch.until(lambda: watch.settled("2.0"))
        watch.candidates.clear()
        # The way back never gets ready (its release hangs at start): it is under way when the stop comes.
        (tmp_path / "state" / "releases" / good / "rehearsal.toml").write_text("hang = true\n")
        repo.commit('version = "3.0"\nfailing_shards = [2, 3]\n')
        app.deployer.request("test")
        await watch.until(lambda: [c.group for c in watch.candidates] == [0, 1, 0])
        app.stop("test over")
        await watch.until(lambda: bool(watch.finished))
    [finished] = watch.finished
    assert finished.ok and "shards 0-1 starts from deploy" in finished.detail
    assert finished.detail.endswith(f"at the next start (the supervisor stops); back on {good[:12]}")
    assert app.robot.snapshot().is_sane
