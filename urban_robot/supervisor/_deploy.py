"""The deployer: one deploy at a time, each health-gated, each failure rolled back by itself.

A deploy: fetch; pick the target — the branch's head for the API, a poll or
``try_again``; for the webhook, exactly the commit it announced (and verified),
provided it is on the branch and not older than the last known good commit;
if the target is new (not the last known good, not a commit that already
failed), build a release directory for exactly that commit (so no running
worker's files change under it); run the optional install step there; spawn
a candidate at generation + 1 and tell the core (``CandidateStarted``, with ``verdict_timeout``). The core
health-checks it and, if it passes, hands over to it with the cache; whatever happens, the core gives one
``Verdict`` on it (``on_action`` receives it), and the deployer infers nothing by itself. Then:

- promoted → ``DeployConfirmed``: the commit is the last known good (persisted),
  the repository's checkout follows it, and replacements spawn from its release;
- anything else (failed check, crash, no verdict in time, install failure) →
  the candidate is stopped, the commit remembered as bad, and the repository's
  checkout reset to the last known good commit and verified. If even that
  fails: ``RollbackFinished(ok=False)`` — the core sets ``is_sane = false``
  and says so loudly; nothing more is deployed until ``try_again``.

A sharded bot's deploy **rolls** group by group (docs/deploying.md, "Rolling deploys of a sharded bot"): the
candidate above is spawned for one shard group at a time (``CandidateStarted.group``), and only once the core
promoted it there (that group's holder handed over to it) does that group move to the new release (its
``Children`` code; ``RetireOlder`` in that group; its standbys topped up) and the next group's candidate start.
``DeployConfirmed`` comes once, when every group runs it. A verdict against it in any group stops the rollout:
the commit is marked bad as above, and each group already moved goes back to the code it ran before through the
same gate (a candidate of that release at a newer generation, so the group's core hands over to it); a group
that cannot go back is a failed rollback (``RollbackFinished(ok=False)``). One group is exactly the deploy above.

Requests that arrive during a deploy coalesce into one more deploy after it; ``request`` returns a ticket
and ``outcome_of(ticket)`` waits for the deploy that served it (``deploy --wait``). When they coalesce, the
newest wins: a request for the head beats announced commits (the head is their descendant); among announced
commits, one whose descendant was announced too is dropped, and of two side by side the later request wins.
A commit older than the last known good one is never deployed from a webhook (a replayed or late delivery).

The install step is no verdict on the commit: a failure (a pip hiccup, the network) is tried once more,
then the deploy ends as ``install failed`` without marking the commit bad, so the next request tries
again. When the requirements did not change (the same hash of the requirements files and the install
command as the last known good release), its environment (``.venv``) is copied instead (hard links,
paths inside rewritten) and the install step is skipped. Each phase is logged with its duration.

A ``RollBack`` from the core (``on_action``) is another thing: a newer worker that is no candidate (a
replacement of a newer generation) failed its check; the deployer returns the checkout to the last known good.

After a (re)start, ``resume`` has workers start from the last known good release, its tree and its
environment, never from the checkout (which may lag it: its ``.venv`` is the first start's).

Dev mode (``urban_robot.dev``) puts a snapshot of a working tree through the same gate with
``try_tree``: no git, no ``last_known_good``, no rollback. A rejected tree's candidate is
stopped; the worker it was meant to replace was never displaced (the core promotes only a
candidate that passed), so it simply keeps running.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from .._errors import UrbanRobotError
from ._children import Children, Code
from ._events import Action, CandidateStarted, DeployConfirmed, RetireOlder, RollBack, RollbackFinished, Verdict
from ._service import UrbanRobot
from ._store import atomic_write

if TYPE_CHECKING:
    from ._cluster_deploy import ClusterDeploys

log = logging.getLogger("urban_robot.deploy")

ENVIRONMENT = ".venv"  # the release's environment, as docs/deploying.md's install step makes it
INSTALLED = ".urban-robot-installed"  # in a release: the requirements hash its install step succeeded for
# What an environment is built from: same content (and same install command) -> the same environment.
REQUIREMENTS = (
    "requirements*.txt",
    "requirements/*.txt",
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "poetry.lock",
    "uv.lock",
    "Pipfile.lock",
)
RESULTS_KEPT = 50
ANNOUNCED_KEPT = 20  # announced commits waiting for a deploy; more (a flood of pushes) drop the oldest


def requirements_hash(release: Path, install: Sequence[str]) -> str:
    """A hash of the requirements files in ``release`` (by name and content) and of the install command."""
    digest = hashlib.sha256(json.dumps(list(install)).encode())
    for path in sorted({p for pattern in REQUIREMENTS for p in release.glob(pattern) if p.is_file()}):
        digest.update(b"\0" + str(path.relative_to(release)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def copy_environment(source: Path, target: Path) -> None:
    """Copy a virtualenv from one release to another: files hard-linked (copied across file systems), and the
    old release's path rewritten where a venv records it (scripts' shebangs, activate, ``.pth`` files), in new
    files, never through the links."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link)
    old, new = str(source.parent).encode(), str(target.parent).encode()
    candidates = [p for p in (target / "bin").iterdir() if p.is_file() and not p.is_symlink()]
    candidates += [p for p in target.glob("lib/python*/site-packages/*.pth") if p.is_file()]
    candidates += [target / "pyvenv.cfg"] if (target / "pyvenv.cfg").is_file() else []
    for path in candidates:
        data = path.read_bytes()
        if old in data and b"\0" not in data[:1024]:  # text, naming the old release
            fresh = path.with_name(path.name + ".urban-robot-tmp")
            fresh.write_bytes(data.replace(old, new))
            shutil.copymode(path, fresh)
            fresh.replace(path)  # a new inode: the old release's file is untouched


class _Phases:
    """Each phase of one deploy, logged with its duration as it ends, and summed up at the end."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.done: list[tuple[str, float]] = []
        self.started = trio.current_time()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = trio.current_time()
        try:
            yield
        finally:
            self.note(name, trio.current_time() - began)

    def note(self, name: str, seconds: float) -> None:
        self.done.append((name, seconds))
        log.info("%s: %s took %.2f s", self.what, name, seconds)

    def summary(self) -> str:
        parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.done)
        return f"{trio.current_time() - self.started:.2f} s ({parts})"


@attrs.frozen
class DeployResult:
    """One deploy's outcome for ``deploy --wait``: the commit (or "-"), the outcome word, and why.

    A sharded bot's rollout also says how far it got: ``failed_group`` is the shard group whose candidate
    failed (None: none did), ``groups_moved`` how many groups ran the new commit before that (all of them, once
    deployed), of ``groups``. Unsharded, they keep their defaults."""

    commit: str
    outcome: str
    detail: str = ""
    failed_group: int | None = None
    groups_moved: int = 0
    groups: int = 1


class GitLike(Protocol):
    async def fetch(self, remote: str = "origin") -> None: ...

    async def remote_head(self, branch: str) -> str: ...

    async def on_branch(self, commit: str, branch: str) -> bool: ...

    async def is_ancestor(self, ancestor: str, descendant: str) -> bool: ...

    async def release(self, sha: str, releases_dir: Path) -> Path: ...

    async def reset_to(self, sha: str) -> None: ...

    async def prune_releases(self, keep: set[str]) -> None: ...


@attrs.define
class _Awaited:
    """A candidate's verdict, once the core has given it."""

    done: trio.Event = attrs.Factory(trio.Event)
    verdict: Verdict | None = None


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
        install_retry_delay: float = 5.0,
        environment: str = ENVIRONMENT,
        cluster: ClusterDeploys | None = None,
    ) -> None:
        self.robot = robot
        self.children = children
        self.git = git
        self.branch = branch
        self.releases_dir = releases_dir
        self.install = list(install) if install else None
        self.verdict_timeout = verdict_timeout
        self.install_timeout = install_timeout
        self.install_retry_delay = install_retry_delay  # one more try after this long: an install hiccup is no verdict
        self.environment = environment
        # Commits that failed: skipped until a newer one or try_again. Kept in ``bad_commits_file`` so that a
        # restarted supervisor does not try (and roll back) the same broken head again at its first poll.
        self.bad_commits_file = bad_commits_file
        self.bad_commits: set[str] = self._load_bad_commits()
        self.history: list[tuple[str, str]] = []  # (commit or "-", outcome), newest last
        self._awaited: dict[str, _Awaited] = {}  # candidate identity -> its verdict to come
        self._head_wanted: str | None = None  # the reason of a pending request for the branch head
        self._announced: dict[str, str] = {}  # pending requests for announced commits: commit -> reason, oldest first
        self._tickets = 0  # deploy requests handed out
        self.results: list[tuple[int, DeployResult]] = []  # (the last ticket it served, result), newest last
        self._result_added = trio.Event()
        self.busy = False  # a deploy runs
        self._last = DeployResult("-", "none")
        self._detail = ""  # why the current deploy ended as it did, for deploy --wait
        self._install_error = ""
        self._rollout = _Rollout()  # how far the current deploy's rollout got
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        self._one_at_a_time = trio.Lock()  # deploys and dev-mode trees share the one candidate slot
        # Several hosts (docs/protocol.md §19.7): the elected deployer rolls out across hosts, each host deploys
        # its own part (``deploy_here``) in its turn. None: one host.
        self.cluster = cluster
        self._here = trio.Lock()  # this host's part of a cluster rollout (the deployer's own request waits on it)
        self._codes_before: list[Code] = []  # what each group ran before this host's last turn in a rollout

    # -- triggers ---------------------------------------------------------------------------------
    def request(self, reason: str, commit: str | None = None) -> int:
        """Ask for a deploy of the branch head (API, poll) or, with ``commit``, of exactly that commit (the
        webhook's); never blocks; coalesces while one runs. A ticket for ``outcome_of``.

        Several hosts: on a host that is not the cluster's deployer, the request is passed on to it (through
        etcd, §19.7), and this host's ticket ends as ``not the deployer``, naming it."""
        if self.cluster is not None and not self.cluster.elected:
            self.cluster.forward(reason, commit)
        self._tickets += 1
        if commit is None:
            self._head_wanted = reason
        else:
            self._announced.pop(commit, None)  # asked again: now the latest request
            self._announced[commit] = reason
            while len(self._announced) > ANNOUNCED_KEPT:
                del self._announced[next(iter(self._announced))]
        self._idle = trio.Event()
        self._wake.set()
        return self._tickets

    async def outcome_of(self, ticket: int) -> DeployResult:
        """The result of the deploy that served request ``ticket`` (waits for it to end)."""
        while True:
            for served, result in self.results:
                if served >= ticket:
                    return result
            await self._result_added.wait()

    def request_push(self, commit: str) -> tuple[int, str]:
        """The webhook's ``on_deploy``: request a deploy of the announced ``commit`` if one would run; the answer."""
        status, text = self.expect(commit)
        if status == 202:
            self.request("webhook", commit)
        return status, text

    def expect(self, commit: str) -> tuple[int, str]:
        """What a deploy request for ``commit`` will really do, for the webhook's answer: 200 and why not, or 202."""
        snap = self.robot.snapshot()
        short = commit[:12]
        if self.cluster is not None and not self.cluster.elected:
            leader = self.cluster.leader or "the next one elected"
            return 202, f"passed {short} on to the cluster's deployer, {leader}"
        if not snap.is_sane:
            return 200, f"not deploying {short}: is_sane is false (crash loop or failed rollback); try-again first"
        if commit == snap.last_known_good:
            return 200, f"already running {short}"
        if commit in self.bad_commits:
            return 200, f"known bad: {short} failed before; push a fix, or try-again to retry it"
        if self.busy:
            return 202, f"deploying {short} after the deploy under way"
        return 202, f"deploying {short}"

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def on_action(self, action: Action) -> None:
        """The core's actions that are the deployer's: a candidate's ``Verdict``, a ``RollBack`` (a newer worker
        that is no candidate failed its health check). Any other action is not for the deployer."""
        if isinstance(action, Verdict):
            awaited = self._awaited.get(action.identity)
            if awaited is not None and awaited.verdict is None:
                awaited.verdict = action
                awaited.done.set()
        elif isinstance(action, RollBack) and self._nursery is not None:
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
                while self._head_wanted is not None or self._announced:
                    head_reason, self._head_wanted = self._head_wanted, None
                    announced, self._announced = self._announced, {}
                    serves = self._tickets  # every request so far is served by this deploy
                    self.busy = True
                    try:
                        if head_reason is not None:  # the head is the newest of all: it serves them all
                            await self.deploy(head_reason)
                        else:
                            await self.deploy(next(reversed(announced.values())), announced=list(announced))
                    finally:
                        self.busy = False
                    self.results = [*self.results[-RESULTS_KEPT + 1 :], (serves, self._last)]
                    self._result_added.set()
                    self._result_added = trio.Event()
                self._idle.set()

    async def _poll(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            if self.cluster is None or self.cluster.elected:  # several hosts: the deployer polls for them all
                self.request("periodic fetch")

    # -- one deploy ---------------------------------------------------------------------------------
    async def deploy(self, reason: str, *, announced: Sequence[str] = ()) -> str:
        """Deploy the branch's head now, or the newest of the ``announced`` commits (oldest request first) on
        the branch; the outcome in a word (also kept in ``history``)."""
        self._detail = ""
        self._rollout = _Rollout()
        try:
            async with self._one_at_a_time:
                commit, outcome = await self._deploy(reason, announced)
        except UrbanRobotError as exc:  # fetch or release failed: nothing was started
            log.error("deploy (%s) failed before starting anything: %s", reason, exc)
            commit, outcome, self._detail = "-", "error", str(exc)
        rollout = self._rollout
        if self.children.groups > 1:
            self._last = DeployResult(
                commit, outcome, self._detail, rollout.failed_group, rollout.moved, self.children.groups
            )
        else:
            self._last = DeployResult(commit, outcome, self._detail)
        self.history.append((commit, outcome))
        self.robot.bus.publish(self._last)  # who hears it: the assembly's business
        return outcome

    async def _deploy(self, reason: str, announced: Sequence[str]) -> tuple[str, str]:
        if self.cluster is not None and not self.cluster.elected:
            leader = self.cluster.leader or "the next one elected"
            self._detail = (
                f"this host is not the cluster's deployer: the request went on to {leader} "
                "(`urban-robot status` there, or `deploy --wait` on it, says how it went)"
            )
            log.info("deploy (%s) not here: %s is the cluster's deployer", reason, leader)
            return "-", "not the deployer"
        if not self.robot.snapshot().is_sane:
            log.warning("deploy (%s) skipped: is_sane is false; an operator must say try_again", reason)
            self._detail = "is_sane is false: try-again first"
            return "-", "insane"
        phases = _Phases(f"deploy ({reason})")
        with phases.phase("fetch"):
            await self.git.fetch()
            target = await self.git.remote_head(self.branch) if not announced else await self._newest(reason, announced)
        if target is None:
            self._detail = f"no announced commit is on {self.branch!r}"
            return announced[-1], "not on branch"
        if target == self.robot.snapshot().last_known_good:  # looked at after the fetch: now
            return target, "up to date"
        if announced and await self._older_than_deployed(reason, target):
            return target, "outdated"
        if target in self.bad_commits:
            log.info("deploy (%s) skipped: %s already failed; waiting for a newer commit", reason, target[:12])
            self._detail = "it failed before; push a fix, or try-again to retry it"
            return target, "known bad"
        if self.cluster is not None:  # every host deploys its own part, in turn (``deploy_here``)
            outcome, self._detail = await self.cluster.roll_out(target, self.verdict_timeout * 4)
            return target, outcome
        phases.what = f"deploy of {target[:12]}"
        with phases.phase("release worktree"):
            release = await self.git.release(target, self.releases_dir)
        if self.install and not await self._prepare_environment(release, phases):
            # No verdict on the commit: not marked bad, nothing started, the running worker untouched.
            self._detail = f"install step failed twice: {self._install_error}; the next deploy request tries again"
            log.error("deploy of %s: %s", target[:12], self._detail)
            return target, "install failed"
        outcome = await self._try_candidate(target, release, phases)
        if outcome == "promoted":
            await self._succeeded(target, release)
            log.info("deployed %s in %s", target[:12], phases.summary())
            return target, "deployed"
        self._detail = self._failure_detail(outcome)
        log.warning("deploy of %s failed after %s", target[:12], phases.summary())
        return target, "failed"

    async def _newest(self, reason: str, announced: Sequence[str]) -> str | None:
        """The newest announced commit on the branch: a webhook may not deploy another branch's commit."""
        newest: str | None = None
        for commit in announced:
            if not await self.git.on_branch(commit, self.branch):
                log.warning(
                    "deploy (%s) refused: %s is not on origin/%s (another branch's commit, or force-pushed away)",
                    reason,
                    commit[:12],
                    self.branch,
                )
            elif newest is None or not await self.git.is_ancestor(commit, newest):
                newest = commit  # a descendant of the one before, or side by side with it: the later request wins
            else:
                log.info("deploy (%s): %s skipped, %s was announced too and is newer", reason, commit[:12], newest[:12])
        return newest

    async def _older_than_deployed(self, reason: str, target: str) -> bool:
        """Whether ``target`` is in the last known good commit's history: never deploy an older commit again."""
        good = self.robot.snapshot().last_known_good
        if good is None or not await self.git.is_ancestor(target, good):
            return False
        log.info("deploy (%s) ignored: %s is older than the deployed %s", reason, target[:12], good[:12])
        self._detail = f"older than the deployed {good[:12]}"
        return True

    # -- several hosts: this host's part ---------------------------------------------------------------
    async def deploy_here(self, target: str) -> tuple[bool, str]:
        """This host's turn in a cluster rollout of ``target``: its release, its groups through the gate (a group
        held here hands over, one held elsewhere stands by); on a failure its own groups already went back."""
        async with self._here:
            phases = _Phases(f"rollout of {target[:12]} here")
            try:
                with phases.phase("fetch"):
                    await self.git.fetch()
                with phases.phase("release worktree"):
                    release = await self.git.release(target, self.releases_dir)
            except UrbanRobotError as exc:
                return False, f"cannot make the release here: {exc}"
            if self.install and not await self._prepare_environment(release, phases):
                return False, f"install step failed twice here: {self._install_error}"
            self._codes_before = [self.children.code(group) for group in range(self.children.groups)]
            outcome = await self._try_candidate(target, release, phases, confirm=False)
            if outcome == "promoted":
                log.info("rolled %s out here in %s", target[:12], phases.summary())
                return True, ""
            return False, self._failure_detail(outcome)

    async def confirmed_here(self, target: str) -> None:
        """Every host runs ``target`` (the cluster's record says so): it is this host's last known good, and the
        checkout follows it."""
        await self.robot.submit(DeployConfirmed(target))
        await self._succeeded(target, self.releases_dir / target)

    async def return_here(self, moved: str, good: str | None) -> None:
        """The cluster gave up on ``moved`` (another host failed it) after this host moved to it: every group back on
        ``good``, the last known good, through the gate."""
        async with self._here:
            if good is None:  # the cluster's first rollout: back to what each group ran before this host's turn
                await self.roll_back(f"{moved[:12]} failed on another host", self._codes_before)
                return
            try:
                release = await self.git.release(good, self.releases_dir)
            except UrbanRobotError as exc:
                await self.robot.submit(RollbackFinished(False, f"cannot return to {good[:12]} here: {exc}"))
                return
            label = f"deploy {good[:12]}"
            await self.robot.submit(DeployConfirmed(good))
            code = Code(self.children.generation, release, label)
            await self.roll_back(f"{moved[:12]} failed on another host", [code] * self.children.groups)

    # -- the release's environment -------------------------------------------------------------------
    def _installed(self, release: Path) -> str | None:
        try:
            return (release / INSTALLED).read_text().strip() or None
        except OSError:
            return None

    async def _prepare_environment(self, release: Path, phases: _Phases) -> bool:
        """Install the release's environment, or reuse the last known good release's if its requirements match."""
        assert self.install is not None
        wanted = requirements_hash(release, self.install)
        if self._installed(release) == wanted:
            log.info("%s: environment already installed in %s", phases.what, release)
            return True
        good = self.robot.snapshot().last_known_good
        previous = self.releases_dir / good if good is not None else None
        if previous is not None and previous != release and self._installed(previous) == wanted:
            source = previous / self.environment
            if source.is_dir() and not (release / self.environment).exists():
                with phases.phase(f"environment copied from {good[:12] if good else '?'} (requirements unchanged)"):
                    try:
                        await trio.to_thread.run_sync(copy_environment, source, release / self.environment)
                    except OSError as exc:
                        log.warning("cannot copy %s (%s): installing instead", source, exc)
                        await trio.to_thread.run_sync(shutil.rmtree, release / self.environment, True)
                    else:
                        (release / INSTALLED).write_text(wanted + "\n")
                        return True
        for attempt in (1, 2):
            with phases.phase("install" if attempt == 1 else "install (second try)"):
                ok = await self._install(release)
            if ok:
                (release / INSTALLED).write_text(wanted + "\n")
                return True
            if attempt == 1:
                log.warning(
                    "install step failed (%s); trying once more in %g s", self._install_error, self.install_retry_delay
                )
                await trio.sleep(self.install_retry_delay)
        return False

    async def _install(self, release: Path) -> bool:
        assert self.install is not None
        with trio.move_on_after(self.install_timeout):
            result = await trio.run_process(
                self.install, cwd=release, check=False, capture_stdout=True, capture_stderr=True
            )
            if result.returncode == 0:
                return True
            tail = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()[-1:] or [""]
            self._install_error = f"exit status {result.returncode}: {tail[0]}"
            log.error("install step %s failed (%s): %s", self.install, result.returncode, tail[0])
            return False
        self._install_error = f"took longer than {self.install_timeout:g} s"
        log.error("install step %s took longer than %ss", self.install, self.install_timeout)
        return False

    async def resume(self) -> None:
        """At start: children run the last known good release (its tree and its environment), not the checkout."""
        good = self.robot.snapshot().last_known_good
        if good is None:
            return  # nothing deployed yet: the checkout as it is
        try:
            release = await self.git.release(good, self.releases_dir)
        except UrbanRobotError as exc:
            log.error("cannot make the last known good release %s (%s): workers start from the checkout", good, exc)
            return
        # Its environment is there unless someone deleted it (a release made before install markers existed has
        # its .venv and no marker: it was promoted, so it worked).
        installed = self._installed(release) is not None or (release / self.environment).exists()
        if self.install and not installed:
            phases = _Phases(f"restart on {good[:12]}")  # its environment is gone (deleted by hand?): build it
            if not await self._prepare_environment(release, phases):
                log.error("cannot install the last known good release %s: workers start from the checkout", good)
                return
        self.children.cwd = release
        self.children.release = f"deploy {good[:12]}"
        log.info("workers start from the last known good release %s (%s)", good[:12], release)

    # -- the candidate ---------------------------------------------------------------------------------
    async def _try_candidate(self, target: str, release: Path, phases: _Phases, *, confirm: bool = True) -> str:
        """Roll ``release`` out group by group (one group unsharded): each group's candidate through the gate,
        promoted there (its holder handed over to it) before the next group's starts. "promoted" once every group
        runs it (then it is the last known good); else why the first group that failed did, after that group's
        candidate was stopped, the commit marked bad and the groups already moved returned to what they ran."""
        label = f"deploy {target[:12]}"
        groups = self.children.groups
        before = [self.children.code(group) for group in range(groups)]
        generation = self.children.generation + 1  # one commit, one generation, in every group
        for group in range(groups):
            if groups > 1:
                log.info("deploy of %s: %s (group %d of %d) starts", target[:12], self._name(group), group + 1, groups)
            verdict = await self._run_candidate(label, release, release=label, group=group, generation=generation)
            self._note_times(verdict, phases, self._prefix(group))
            outcome = _outcome(verdict)
            if not verdict.promoted:
                self._rollout.failed_group = group if groups > 1 else None
                await self._failed(target, verdict.identity, self._prefix(group) + outcome, before[:group])
                return outcome
            code = Code(generation, release, label)
            # The last known good once every group runs it (several hosts: once every host does, ``confirmed_here``).
            confirmed = target if group == groups - 1 and confirm else None
            await self._move(group, code, "standby of the new release", confirmed=confirmed)
            self._rollout.moved = group + 1
            if groups > 1:
                log.info(
                    "deploy of %s: %s runs it (%d of %d groups)", target[:12], self._name(group), group + 1, groups
                )
        return "promoted"

    def _failure_detail(self, outcome: str) -> str:
        """Why a deploy failed, for ``deploy --wait`` and the timeline; sharded, where and how far it got."""
        group, groups = self._rollout.failed_group, self.children.groups
        if group is None:
            return outcome
        where = f"{self._name(group)} (group {group + 1} of {groups}): {outcome}"
        if not group:
            return f"{where}; no group had run it"
        if self.robot.snapshot().is_sane:
            return f"{where}; {group} group(s) had run it and returned to what they ran before"
        return f"{where}; {group} group(s) had run it and could not all return to what they ran before (is_sane false)"

    def _name(self, group: int) -> str:
        return self.children.plan.groups[group].name

    def _prefix(self, group: int) -> str:
        """How a sharded bot's phase and message name a group ("shards 2-3: "); unsharded, nothing."""
        return f"{self._name(group)}: " if self.children.groups > 1 else ""

    @staticmethod
    def _note_times(verdict: Verdict, phases: _Phases, prefix: str) -> None:
        times = dict(verdict.times)
        for name, start, end in (
            ("candidate start (spawn to ready)", "spawned", "checking"),
            ("health check", "checking", "passed"),
            ("hand-over", "passed", "running"),
        ):
            if start in times and end in times:
                phases.note(prefix + name, times[end] - times[start])

    async def _run_candidate(
        self, reason: str, cwd: Path, *, release: str | None = None, group: int = 0, generation: int | None = None
    ) -> Verdict:
        """Spawn the code in ``cwd`` for shard group ``group`` at ``generation`` (default: generation + 1) and wait
        for the core's verdict on it (the core gives one on every candidate, if only "no verdict in time" after
        ``verdict_timeout``)."""
        generation = generation if generation is not None else self.children.generation + 1
        identity = self.children.spawn(
            reason, generation=generation, cwd=cwd, backoff=False, release=release, group=group
        )
        # Told before the child can connect (the spawn only schedules its start); waited for from before the
        # telling, since the verdict may come with it (the supervisor stopping).
        awaited = self._awaited[identity] = _Awaited()
        try:
            await self.robot.submit(CandidateStarted(identity, generation, self.verdict_timeout, group))
            await awaited.done.wait()
        finally:
            del self._awaited[identity]
        assert awaited.verdict is not None
        return awaited.verdict

    async def _succeeded(self, target: str, release: Path) -> None:
        """Every group runs ``target`` (each moved as its candidate was promoted): the repository follows."""
        try:
            await self.git.reset_to(target)  # the repository's checkout follows what runs
            await self.git.prune_releases({target})
        except UrbanRobotError as exc:
            log.warning("deployed %s, but tidying the repository failed: %s", target[:12], exc)

    async def _move(self, group: int, code: Code, reason: str, *, confirmed: str | None = None) -> None:
        """Group ``group``'s candidate runs: ``code`` is the group's, its older standbys make way, new ones of
        ``code`` are spawned; ``confirmed``: the commit is the last known good now (said before the retiring,
        as an unsharded deploy always did)."""
        self.children.set_code(group, code)
        if confirmed is not None:
            await self.robot.submit(DeployConfirmed(confirmed))
        await self.robot.submit(RetireOlder(code.generation, group if self.children.groups > 1 else None))
        self.children.top_up(reason, group=group)

    async def _adopt(self, cwd: Path, reason: str) -> None:
        """Dev mode's tree runs: its generation is every group's, and replacements start from ``cwd``."""
        self.children.generation += 1
        self.children.cwd = cwd  # replacements run the new code
        await self.robot.submit(RetireOlder(self.children.generation))  # standbys of old code make way
        self.children.top_up(reason)

    async def _failed(self, target: str, identity: str | None, why: str, moved: Sequence[Code] = ()) -> None:
        """``target``'s candidate failed (``why``): it is stopped, the commit marked bad, and the groups already
        moved (``moved``: what groups 0, 1, … ran before) return to that code; then the checkout is rolled back."""
        tail = self.children.tail(identity) if identity is not None else []
        quoted = "".join(f"\n  | {line}" for line in tail)
        log.warning(
            "deploy of %s failed: %s; rolling back%s",
            target[:12],
            why,
            f"; last lines of {identity}:{quoted}" if tail else "",
        )
        self.bad_commits.add(target)
        await trio.to_thread.run_sync(self._save_bad_commits)
        await self._stop_candidate(identity, "deploy failed")
        await self.roll_back(f"{target[:12]} failed: {why}", moved)

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
            if not self.robot.snapshot().is_sane:
                return TreeOutcome("is_sane is false: say try_again first", None, self.children.generation + 1)
            verdict = await self._run_candidate(label, tree)
            outcome = _outcome(verdict)
            if verdict.promoted:
                await self._adopt(tree, f"standby of {label}")
            else:
                log.info("%s rejected: %s", label, outcome)
                await self._stop_candidate(verdict.identity, f"{label} rejected")
            return TreeOutcome(outcome, verdict.identity, verdict.generation)

    async def roll_back(self, why: str, moved: Sequence[Code] = ()) -> None:
        """Return to the last known good code: the groups a rollout already ``moved`` (groups 0, 1, …: the code
        each ran before), each through the gate as a new candidate of that code, then the checkout. A group that
        cannot be returned, or a checkout that cannot be reset: ``RollbackFinished(ok=False)``."""
        generation = self.children.generation + 1  # newer than what the moved groups run: their cores hand over
        returns = [await self._return_group(group, code, generation) for group, code in enumerate(moved)]
        if failures := [text for ok, text in returns if not ok]:
            await self.robot.submit(RollbackFinished(False, f"{why}; {'; '.join(failures)}"))
            return
        if returns:
            why = f"{why}; {', '.join(text for _, text in returns)}"
        good = self.robot.snapshot().last_known_good
        if good is None:
            await self.robot.submit(RollbackFinished(True, f"{why}; no earlier deploy to return to"))
            return
        try:
            await self.git.reset_to(good)
        except UrbanRobotError as exc:
            await self.robot.submit(RollbackFinished(False, f"{why}; returning to {good[:12]} failed: {exc}"))
            return
        await self.robot.submit(RollbackFinished(True, f"{why}; back on {good[:12]}"))

    async def _return_group(self, group: int, code: Code, generation: int) -> tuple[bool, str]:
        """Put group ``group`` back on ``code`` (what it ran before the rollout) through the gate, at a newer
        ``generation`` (so the group's core hands over to it); whether it did, and what became of it."""
        what = code.release or "the checkout"
        log.warning("rolling back %s to %s (generation %d)", self._name(group), what, generation)
        verdict = await self._run_candidate(
            f"rollback to {what}", code.cwd, release=code.release, group=group, generation=generation
        )
        if verdict.outcome == "stopping":
            # Its workers stop with the supervisor, and every group starts from the last known good release at
            # the next start (``resume``): no failed rollback, which would leave is_sane false after a restart.
            return True, f"{self._name(group)} starts from {what} at the next start (the supervisor stops)"
        if not verdict.promoted:
            await self._stop_candidate(verdict.identity, "rollback failed")
            return False, f"returning {self._name(group)} to {what} failed: {_outcome(verdict)}"
        await self._move(group, attrs.evolve(code, generation=generation), "standby of the last known good release")
        log.info("%s runs %s again (generation %d)", self._name(group), what, generation)
        return True, f"{self._name(group)} returned"


@attrs.define
class _Rollout:
    """How far a deploy's rollout got: groups moved to the new commit, and the group that failed (sharded)."""

    moved: int = 0
    failed_group: int | None = None


def _outcome(verdict: Verdict) -> str:
    """What a deploy (or a dev-mode tree) says of its candidate: "promoted", or why not, in the core's words."""
    return "promoted" if verdict.promoted else verdict.detail or verdict.outcome
