"""The deployer learns what became of its candidate from the core's ``Verdict``, and of nothing else.

No processes, no git: a real core behind a minimal shell (events in, each action on its bus, the deployer
subscribed as ``build`` subscribes it), a stand-in for the children. The end-to-end deploys are in test_deploy.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import trio

from urban_robot.supervisor import (
    Bus,
    CandidateStarted,
    Notify,
    ProcessExited,
    RollBack,
    RollbackFinished,
    Settings,
    Snapshot,
    Stopping,
    Supervisor,
    TimerFired,
    Verdict,
)
from urban_robot.supervisor._deploy import Deployer


class Shell:
    """The service as the deployer sees it: ``submit`` feeds the core, each action is published on ``bus``."""

    def __init__(self) -> None:
        self.core = Supervisor(Settings())
        self.bus = Bus()
        self.events: list[Any] = []
        self.actions: list[Any] = []
        self.now = 0.0

    def snapshot(self) -> Snapshot:
        return self.core.snapshot(self.now)

    async def submit(self, event: Any) -> None:
        self.events.append(event)
        for action in self.core.handle(event, self.now):
            self.actions.append(action)
            self.bus.publish(action)
        await trio.lowlevel.checkpoint()


class FakeChildren:
    def __init__(self) -> None:
        self.generation = 1
        self.children: dict[str, Any] = {}
        self.spawned: list[tuple[str, int | None]] = []
        self.cwd: Path | None = None

    def spawn(self, reason: str, *, generation: int | None = None, **kwargs: Any) -> str:
        self.spawned.append((reason, generation))
        return f"child-{len(self.spawned)}"

    def top_up(self, reason: str) -> None:
        pass


def deployer(tmp_path: Path, shell: Shell, children: FakeChildren, **kwargs: Any) -> Deployer:
    made = Deployer(cast(Any, shell), cast(Any, children), cast(Any, None), releases_dir=tmp_path, **kwargs)
    shell.bus.subscribe(Verdict | RollBack, made.on_action)  # as build() subscribes it
    return made


async def started(shell: Shell) -> CandidateStarted:
    while not any(isinstance(e, CandidateStarted) for e in shell.events):
        await trio.sleep(0)
    return next(e for e in shell.events if isinstance(e, CandidateStarted))


async def test_the_candidate_is_announced_with_the_deployers_timeout_and_its_exit_is_the_verdict(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    shell, children = Shell(), FakeChildren()
    d = deployer(tmp_path, shell, children, verdict_timeout=42)
    assert ("Verdict", "Deployer.on_action") in shell.bus.subscriptions()  # the one way in
    results: list[Any] = []

    async def tree() -> None:
        results.append(await d.try_tree(tmp_path, "snapshot 1"))

    nursery.start_soon(tree)
    event = await started(shell)
    assert event == CandidateStarted("child-1", 2, 42) and children.spawned == [("snapshot 1", 2)]
    assert shell.core.next_deadline() == 42
    await shell.submit(ProcessExited("child-1", 1, candidate=True))
    while not results:
        await trio.sleep(0)
    [outcome] = results
    assert (outcome.outcome, outcome.identity, outcome.generation) == (
        "exited with 1 before it was promoted",
        "child-1",
        2,
    )
    assert children.generation == 1  # not adopted


async def test_no_verdict_in_time_comes_from_the_core_deadline(nursery: trio.Nursery, tmp_path: Path) -> None:
    shell, children = Shell(), FakeChildren()
    d = deployer(tmp_path, shell, children, verdict_timeout=30)
    results: list[Any] = []

    async def tree() -> None:
        results.append(await d.try_tree(tmp_path, "snapshot 1"))

    nursery.start_soon(tree)
    await started(shell)
    shell.now = 30  # the core's clock: the deployer keeps no timer of its own
    await shell.submit(TimerFired())
    while not results:
        await trio.sleep(0)
    assert results[0].outcome == "no verdict in time"


async def test_a_verdict_given_with_the_announcement_is_not_missed(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The supervisor stopping already: the verdict comes while the announcement is handled."""
    shell, children = Shell(), FakeChildren()
    d = deployer(tmp_path, shell, children)
    await shell.submit(Stopping("SIGTERM"))
    with trio.fail_after(5):
        outcome = await d.try_tree(tmp_path, "snapshot 1")
    assert outcome.outcome == "supervisor stopping (SIGTERM)"


async def test_a_verdict_on_another_identity_is_ignored(tmp_path: Path) -> None:
    shell, children = Shell(), FakeChildren()
    d = deployer(tmp_path, shell, children)
    d.on_action(Verdict("child-9", 5, "promoted"))  # nobody waits for it: nothing happens
    d.on_action(Notify("info", "not for the deployer"))


async def test_a_rollback_request_rolls_back_even_during_a_deploy(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A newer worker that is no candidate failed its check: rolled back, with no suppression while a deploy runs."""
    shell, children = Shell(), FakeChildren()
    d = deployer(tmp_path, shell, children)
    await nursery.start(d.run)
    nursery.start_soon(d.try_tree, tmp_path, "snapshot 1")  # a candidate in flight
    await started(shell)
    d.on_action(RollBack("vital_cog_failed", "2.0", 2, "failing: modules.utilities"))
    with trio.fail_after(5):
        while not any(isinstance(e, RollbackFinished) for e in shell.events):
            await trio.sleep(0)
    [finished] = [e for e in shell.events if isinstance(e, RollbackFinished)]
    assert finished == RollbackFinished(
        True, "2.0 failed its health check: vital_cog_failed; no earlier deploy to return to"
    )
    await shell.submit(Stopping("end of test"))  # the candidate's verdict: try_tree ends
