"""Git for deploys: fetch, resolve, one release directory per commit, reset with verification.

Every command is ``git -C <dir> ...`` run by ``trio.run_process`` under a time limit, in its own
process group (a time-out stops git's helpers too, and ssh finds no terminal to prompt on), with
``GIT_TERMINAL_PROMPT=0`` (a credential prompt would hang a deploy forever) and
``GIT_CEILING_DIRECTORIES`` set to the directory's parent: a wrong path is "not a git repository"
instead of silently meaning an enclosing repository, which ``reset --hard`` would then rewrite.
A failure is one ``GitError`` line: the command, where it ran, and git's own verdict.

A release is ``git worktree add --detach <releases_dir>/<sha> <sha>``: its files are exactly that
commit's, and neither moving the repository's checkout nor making other releases touches them, so
a running worker's code never changes under it. Releases are named by full commit id, and only
directories so named are ever deleted.

One ``Git`` must not run commands concurrently on one repository (git's index lock, and releases
being made and pruned at once): deploys are serialised (DESIGN §4).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Collection, Container
from pathlib import Path

import attrs
import trio

from .._errors import UrbanRobotError

log = logging.getLogger("urban_robot.git")

KILL_AFTER = 2.0  # seconds between SIGTERM and SIGKILL for a git command that is cancelled
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 and SHA-256 repositories
# Inherited, these would point every command at another repository than the one ``-C`` names.
_REPOSITORY_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)


class GitError(UrbanRobotError):
    """A git command failed or timed out; the message is one line naming the command and git's verdict."""


def is_sha(text: str) -> bool:
    """Whether ``text`` is a full, lower-case commit id."""
    return _SHA.fullmatch(text) is not None


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(path).resolve()


@attrs.define(eq=False)
class Git:
    repo: Path = attrs.field(converter=_absolute)
    timeout: float = 60.0  # for each local command
    fetch_timeout: float = 300.0  # for commands that talk to a remote

    # ------------------------------------------------------------------ reading
    async def rev_parse(self, ref: str) -> str:
        """The full commit id ``ref`` names."""
        return await self._git("rev-parse", "--verify", _revision(ref) + "^{commit}")

    async def head(self) -> str:
        return await self.rev_parse("HEAD")

    async def remote_head(self, branch: str, remote: str = "origin") -> str:
        """Where ``remote``'s ``branch`` was at the last ``fetch``."""
        return await self.rev_parse(f"refs/remotes/{_revision(remote)}/{branch}")

    async def commit_message(self, sha: str) -> str:
        return await self._git("log", "-1", "--format=%B", _revision(sha) + "^{commit}", "--")

    async def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether ``ancestor`` is ``descendant`` or in its history (a fast-forward)."""
        done = await self._run("merge-base", "--is-ancestor", _revision(ancestor), _revision(descendant), ok=(0, 1))
        return done.returncode == 0

    async def on_branch(self, commit: str, branch: str, remote: str = "origin") -> bool:
        """Whether ``commit`` exists and is ``remote``'s ``branch`` (as last fetched) or in its history."""
        found = await self._run("cat-file", "-e", _revision(commit) + "^{commit}", ok=range(256))
        return found.returncode == 0 and await self.is_ancestor(commit, f"refs/remotes/{_revision(remote)}/{branch}")

    # ------------------------------------------------------------------ changing
    async def fetch(self, remote: str = "origin") -> None:
        await self._git("fetch", "--prune", "--quiet", _revision(remote), timeout=self.fetch_timeout)

    async def reset_to(self, sha: str) -> None:
        """Hard-reset the repository's checkout to ``sha``, then check that HEAD really is there."""
        target = await self.rev_parse(sha)
        await self._git("reset", "--hard", "--quiet", target, "--")
        head = await self.head()
        if head != target:
            raise GitError(f"git reset --hard {target} left HEAD at {head} in {self.repo}")
        log.info("checkout of %s reset to %s", self.repo, target)

    # ------------------------------------------------------------------ releases
    async def release(self, ref: str, releases_dir: Path) -> Path:
        """``releases_dir/<sha>``: a checkout of exactly the commit ``ref`` names, made or reused."""
        sha = await self.rev_parse(ref)
        path = _absolute(releases_dir) / sha
        if _present(path):
            if await self._intact(path, sha):
                return path
            log.warning("release %s is broken; making it again", path)
            await self.remove_release(path)
        await self._git("worktree", "prune")  # a registration whose directory vanished would block `add`
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # in the state directory: private
        await self._git("worktree", "add", "--detach", "--quiet", str(path), sha)
        log.info("release %s made", path)
        return path

    async def remove_release(self, path: Path) -> None:
        """Delete one release directory and its worktree registration; nothing to do if it is gone."""
        path = _absolute(path.parent) / path.name  # not resolved: a link is removed, never what it points to
        if not is_sha(path.name):
            raise GitError(f"refusing to remove {path}: a release directory is named by its commit id")
        if _present(path):
            # Not `git worktree remove`: it refuses a broken release. Once the directory is gone,
            # `prune` drops its registration just the same.
            await trio.to_thread.run_sync(_delete, path)
            log.info("release %s removed", path)
        await self._git("worktree", "prune")

    async def prune_releases(self, keep: Collection[str], releases_dir: Path | None = None) -> None:
        """Remove every release whose commit id is not in ``keep``.

        Releases are the worktrees git knows that are named by a commit id, wherever they are; with
        ``releases_dir``, also the directories there so named that git has forgotten (broken ones).
        """
        if wrong := [sha for sha in keep if not is_sha(sha)]:
            # An abbreviated id would match nothing and get its release deleted.
            raise ValueError(f"keep must hold full commit ids, got {wrong[0]!r}")
        candidates = await self._worktrees()
        if releases_dir is not None and (directory := _absolute(releases_dir)).is_dir():
            candidates |= set(directory.iterdir())
        for path in sorted(candidates):
            if is_sha(path.name) and path.name not in keep and path != self.repo:
                await self.remove_release(path)
        await self._git("worktree", "prune")

    async def _worktrees(self) -> set[Path]:
        listing = await self._git("worktree", "list", "--porcelain", "-z")
        return {Path(field.removeprefix("worktree ")) for field in listing.split("\0") if field.startswith("worktree ")}

    async def _intact(self, path: Path, sha: str) -> bool:
        """Whether ``path`` is a checkout of ``sha`` (tracked files someone edited are put back)."""
        try:
            head = await self._git("rev-parse", "HEAD", cwd=path)
        except GitError:
            return False  # not a checkout at all, or its registration was pruned
        if head != sha:
            return False
        # Also catches an interrupted `worktree add`: its missing files show as deleted.
        if await self._git("status", "--porcelain", "--untracked-files=no", cwd=path):
            log.warning("release %s had changed files; restoring %s", path, sha)
            await self._git("reset", "--hard", "--quiet", cwd=path)
        return True

    # ------------------------------------------------------------------ running git
    async def _git(self, *args: str, cwd: Path | None = None, timeout: float | None = None) -> str:
        done = await self._run(*args, cwd=cwd, timeout=timeout)
        return done.stdout.decode("utf-8", "replace").rstrip("\n")

    async def _run(
        self, *args: str, cwd: Path | None = None, timeout: float | None = None, ok: Container[int] = (0,)
    ) -> subprocess.CompletedProcess[bytes]:
        where = cwd or self.repo
        limit = self.timeout if timeout is None else timeout
        command = f"git {' '.join(args)}"
        try:
            with trio.fail_after(limit):
                done = await trio.run_process(
                    ["git", "-C", str(where), *args],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    env=_environment(where),
                    start_new_session=True,
                    deliver_cancel=_stop_group,
                )
        except trio.TooSlowError as exc:
            raise GitError(f"{command} timed out after {limit:g} s in {where}") from exc
        except OSError as exc:
            raise GitError(f"{command} could not start: {exc.strerror or exc}") from exc
        if done.returncode not in ok:
            raise GitError(f"{command} failed in {where}: {_verdict(done.stderr, done.returncode)}")
        return done


def _revision(ref: str) -> str:
    """``ref``, unless git would read it as an option (``--git-dir``) or it cannot be an argument."""
    if not ref or ref.startswith("-") or "\0" in ref:
        raise GitError(f"not a revision: {ref!r}")
    return ref


def _environment(where: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _REPOSITORY_ENV}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_CEILING_DIRECTORIES"] = str(where.parent)
    return env


def _verdict(stderr: bytes, returncode: int) -> str:
    """git's own reason: its first ``fatal:``/``error:`` line (advice follows it), else its last line."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    verdicts = [line for line in lines if line.startswith(("fatal:", "error:"))]
    if verdicts:
        return verdicts[0]
    return lines[-1] if lines else f"exit status {returncode}"


async def _stop_group(process: trio.Process) -> None:
    """Stop a cancelled git and its helpers (ssh, remote-https): TERM its group, KILL it if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
        with trio.move_on_after(KILL_AFTER):
            await process.wait()
            return
        os.killpg(process.pid, signal.SIGKILL)


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
