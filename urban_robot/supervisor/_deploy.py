"""The deployer: one deploy at a time, each health-gated, each failure rolled back by itself.

A deploy: fetch; if the branch's head is new (not the last known good, not a
commit that already failed), build a release directory for exactly that
commit (so no running worker's files change under it); run the optional
install step there; spawn a candidate at generation + 1. The core
health-checks it and, if it passes, hands over to it with the cache. Then:

- promoted → ``DeployConfirmed``: the commit is the last known good (persisted),
  the repository's checkout follows it, and replacements spawn from its release;
- anything else (failed check, crash, no verdict in time, install failure) →
  the candidate is stopped, the commit remembered as bad, and the repository's
  checkout reset to the last known good commit and verified. If even that
  fails: ``RollbackFinished(ok=False)`` — the core sets ``is_sane = false``
  and says so loudly; nothing more is deployed until ``try_again``.

Requests that arrive during a deploy coalesce into one more deploy after it.

Dev mode (``urban_robot.dev``) puts a snapshot of a working tree through the same gate with
``try_tree``: no git, no ``last_known_good``, no rollback. A rejected tree's candidate is
stopped; the worker it was meant to replace was never displaced (the core promotes only a
candidate that passed), so it simply keeps running.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from .._errors import UrbanRobotError
from ._children import Children
from ._events import Action, DeployConfirmed, RetireOlder, RoleChanged, RollBack, RollbackFinished
from ._service import UrbanRobot
from ._store import atomic_write

log = logging.getLogger("urban_robot.deploy")


class GitLike(Protocol):
    async def fetch(self, remote: str = "origin") -> None: ...

    async def remote_head(self, branch: str) -> str: ...

    async def release(self, sha: str, releases_dir: Path) -> Path: ...

    async def reset_to(self, sha: str) -> None: ...

    async def prune_releases(self, keep: set[str]) -> None: ...


class _Verdict:
    """What became of one candidate: promoted, or failed with a reason."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.identity: str | None = None
        self.outcome: str | None = None
        self.done = trio.Event()

    def settle(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.done.set()


@attrs.frozen
class TreeOutcome:
    """What ``try_tree`` made of a tree: ``outcome`` is ``"promoted"`` or why not."""

    outcome: str
    identity: str | None  # the candidate's, if one was started
    generation: int  # the candidate's generation (current once promoted)

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"


class Deployer:
    def __init__(
        self,
        robot: UrbanRobot,
        children: Children,
        git: GitLike,
        *,
        branch: str = "main",
        releases_dir: Path,
        install: Sequence[str] | None = None,
        verdict_timeout: float = 180.0,
        install_timeout: float = 600.0,
        bad_commits_file: Path | None = None,
    ) -> None:
        self.robot = robot
        self.children = children
        self.git = git
        self.branch = branch
        self.releases_dir = releases_dir
        self.install = list(install) if install else None
        self.verdict_timeout = verdict_timeout
        self.install_timeout = install_timeout
        # Commits that failed: skipped until a newer one or try_again. Kept in ``bad_commits_file`` so that a
        # restarted supervisor does not try (and roll back) the same broken head again at its first poll.
        self.bad_commits_file = bad_commits_file
        self.bad_commits: set[str] = self._load_bad_commits()
        self.history: list[tuple[str, str]] = []  # (commit or "-", outcome), newest last
        self.outcome_observers: list[Callable[[str, str], None]] = []  # (commit, outcome) as each deploy ends
        self._verdict: _Verdict | None = None
        self._pending: str | None = None
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        self._one_at_a_time = trio.Lock()  # deploys and dev-mode trees share the one candidate slot
        robot.observers.append(self._observe)
        robot.roll_back = self.on_rollback
        children.exit_observers.append(self._child_exited)

    # -- triggers ---------------------------------------------------------------------------------
    def request(self, reason: str) -> None:
        """Ask for a deploy (webhook, API, poll); never blocks; coalesces while one runs."""
        self._pending = reason
        self._idle = trio.Event()
        self._wake.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def on_rollback(self, action: RollBack) -> None:
        """The core's rollback request (the service's ``roll_back`` hook)."""
        if self._verdict is not None:
            return  # a deploy in flight: its verdict handles it
        if self._nursery is not None:
            self._nursery.start_soon(self.roll_back, f"{action.version} failed its health check: {action.reason}")

    async def run(
        self, *, poll_interval: float | None = None, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if poll_interval:
                nursery.start_soon(self._poll, poll_interval)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._pending is not None:
                    reason, self._pending = self._pending, None
                    await self.deploy(reason)
                self._idle.set()

    async def _poll(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            self.request("periodic fetch")

    # -- one deploy ---------------------------------------------------------------------------------
    async def deploy(self, reason: str) -> str:
        """Deploy the branch's head now; the outcome in a word (also kept in ``history``)."""
        try:
            async with self._one_at_a_time:
                commit, outcome = await self._deploy(reason)
        except UrbanRobotError as exc:  # fetch or release failed: nothing was started
            log.error("deploy (%s) failed before starting anything: %s", reason, exc)
            commit, outcome = "-", "error"
        self.history.append((commit, outcome))
        for observe in self.outcome_observers:
            observe(commit, outcome)
        return outcome

    async def _deploy(self, reason: str) -> tuple[str, str]:
        core = self.robot.core
        if not core.is_sane:
            log.warning("deploy (%s) skipped: is_sane is false; an operator must say try_again", reason)
            return "-", "insane"
        await self.git.fetch()
        target = await self.git.remote_head(self.branch)
        if target == core.last_known_good_hash:
            return target, "up to date"
        if target in self.bad_commits:
            log.info("deploy (%s) skipped: %s already failed; waiting for a newer commit", reason, target[:12])
            return target, "known bad"
        release = await self.git.release(target, self.releases_dir)
        if self.install and not await self._install(release):
            await self._failed(target, None, "install step failed")
            return target, "failed"
        outcome = await self._try_candidate(target, release)
        if outcome == "promoted":
            await self._succeeded(target, release)
            return target, "deployed"
        return target, "failed"

    async def _install(self, release: Path) -> bool:
        assert self.install is not None
        with trio.move_on_after(self.install_timeout):
            result = await trio.run_process(
                self.install, cwd=release, check=False, capture_stdout=True, capture_stderr=True
            )
            if result.returncode == 0:
                return True
            tail = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()[-1:] or [""]
            log.error("install step %s failed (%s): %s", self.install, result.returncode, tail[0])
            return False
        log.error("install step %s took longer than %ss", self.install, self.install_timeout)
        return False

    async def _try_candidate(self, target: str, release: Path) -> str:
        verdict = await self._run_candidate(f"deploy {target[:12]}", release)
        if verdict.outcome != "promoted":
            await self._failed(target, verdict.identity, verdict.outcome or "failed")
        return verdict.outcome or "failed"

    async def _run_candidate(self, reason: str, cwd: Path) -> _Verdict:
        """Spawn the code in ``cwd`` at generation + 1 and wait for the core's verdict on it."""
        verdict = _Verdict(self.children.generation + 1)
        self._verdict = verdict
        try:
            verdict.identity = self.children.spawn(reason, generation=verdict.generation, cwd=cwd, backoff=False)
            with trio.move_on_after(self.verdict_timeout):
                await verdict.done.wait()
            verdict.settle("no verdict in time")
        finally:
            self._verdict = None
        return verdict

    async def _succeeded(self, target: str, release: Path) -> None:
        await self._adopt(release, "standby of the new release", confirmed=target)
        try:
            await self.git.reset_to(target)  # the repository's checkout follows what runs
            await self.git.prune_releases({target})
        except UrbanRobotError as exc:
            log.warning("deployed %s, but tidying the repository failed: %s", target[:12], exc)

    async def _adopt(self, cwd: Path, reason: str, *, confirmed: str | None = None) -> None:
        """The candidate runs: its generation is the current one, and replacements start from ``cwd``."""
        self.children.generation += 1
        self.children.cwd = cwd  # replacements run the new code
        if confirmed is not None:
            await self.robot.submit(DeployConfirmed(confirmed))
        await self.robot.submit(RetireOlder(self.children.generation))  # standbys of old code make way
        self.children.top_up(reason)

    async def _failed(self, target: str, identity: str | None, why: str) -> None:
        log.warning("deploy of %s failed: %s; rolling back", target[:12], why)
        self.bad_commits.add(target)
        await trio.to_thread.run_sync(self._save_bad_commits)
        await self._stop_candidate(identity, "deploy failed")
        await self.roll_back(f"{target[:12]} failed: {why}")

    def forget_bad_commits(self) -> None:
        """``try_again``: every commit may be tried again (a tiny file: written at once)."""
        self.bad_commits.clear()
        self._save_bad_commits()

    def _load_bad_commits(self) -> set[str]:
        if self.bad_commits_file is None:
            return set()
        try:
            data = json.loads(self.bad_commits_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s (%s): failed commits will be tried again", self.bad_commits_file, exc)
            return set()
        commits = data.get("bad_commits") if isinstance(data, dict) else None
        return {c for c in commits if isinstance(c, str)} if isinstance(commits, list) else set()

    def _save_bad_commits(self) -> None:
        if self.bad_commits_file is None:
            return
        try:
            atomic_write(self.bad_commits_file, json.dumps({"bad_commits": sorted(self.bad_commits)}).encode())
        except OSError as exc:
            log.warning("cannot write %s: %s; a restart will forget the failed commits", self.bad_commits_file, exc)

    async def _stop_candidate(self, identity: str | None, reason: str) -> None:
        if identity is not None and identity in self.children.children:
            await self.children.stop(identity, ask=lambda: self.robot.ask_shutdown(identity, reason))

    # -- dev mode -------------------------------------------------------------------------------------
    async def try_tree(self, tree: Path, label: str) -> TreeOutcome:
        """Put the code in ``tree`` (a snapshot nobody edits) through the health gate; adopt it if promoted.

        Promoted: replacements and standbys start from ``tree`` from now on. Anything else: the
        candidate is stopped and nothing else changes — no commit is marked bad, nothing rolls back.
        """
        async with self._one_at_a_time:
            if not self.robot.core.is_sane:
                return TreeOutcome("is_sane is false: say try_again first", None, self.children.generation + 1)
            verdict = await self._run_candidate(label, tree)
            outcome = verdict.outcome or "failed"
            if outcome == "promoted":
                await self._adopt(tree, f"standby of {label}")
            else:
                log.info("%s rejected: %s", label, outcome)
                await self._stop_candidate(verdict.identity, f"{label} rejected")
            return TreeOutcome(outcome, verdict.identity, verdict.generation)

    async def roll_back(self, why: str) -> None:
        good = self.robot.core.last_known_good_hash
        if good is None:
            await self.robot.submit(RollbackFinished(True, f"{why}; no earlier deploy to return to"))
            return
        try:
            await self.git.reset_to(good)
        except UrbanRobotError as exc:
            await self.robot.submit(RollbackFinished(False, f"{why}; returning to {good[:12]} failed: {exc}"))
            return
        await self.robot.submit(RollbackFinished(True, f"{why}; back on {good[:12]}"))

    # -- watching the core and the children ----------------------------------------------------------
    def _observe(self, action: Action) -> None:
        verdict = self._verdict
        if verdict is None:
            return
        if isinstance(action, RoleChanged) and action.new == "running":
            worker = self.robot.core.clients.get(action.wid)
            if worker is not None and worker.identity == verdict.identity:
                verdict.settle("promoted")
        elif isinstance(action, RollBack) and action.generation == verdict.generation:
            verdict.settle(f"health check: {action.reason}")

    def _child_exited(self, identity: str, returncode: Any) -> None:
        verdict = self._verdict
        if verdict is not None and identity == verdict.identity:
            verdict.settle(f"exited with {returncode} before it was promoted")
