"""The git wrapper against real repositories: an upstream, a developer's clone, and the managed clone."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio

from urban_robot.supervisor._git import Git, GitError, is_sha


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def configure(repo: Path) -> None:
    git(repo, "config", "user.name", "Test Developer")
    git(repo, "config", "user.email", "dev@example.invalid")


def commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    """Write (or, for None, delete) ``files``, commit them, and return the commit id."""
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--message", message)
    return git(repo, "rev-parse", "HEAD")


def files_of(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): path.read_text()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(directory).parts
    }


GOOD_FILES = {"main.py": "print('good')\n", "cogs/vital.py": "VITAL = True\n", "README": "Helium\n"}
BAD_FILES = {"main.py": "raise SystemExit(1)\n", "cogs/vital.py": None, "cogs/new.py": "NEW = 1\n"}
BAD_TREE = {"main.py": "raise SystemExit(1)\n", "cogs/new.py": "NEW = 1\n", "README": "Helium\n"}  # BAD_FILES on GOOD


@attrs.frozen
class Repos:
    upstream: Path  # bare, like GitHub
    dev: Path  # where the developer commits and pushes
    managed: Path  # the clone Urban Robot manages
    releases: Path
    good: str

    def push(self, files: dict[str, str | None], message: str) -> str:
        sha = commit(self.dev, files, message)
        git(self.dev, "push", "--quiet", "origin", "main")
        return sha


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the user's nor the system's git configuration may change what these tests see."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def repos(tmp_path: Path) -> Iterator[Repos]:
    upstream, dev, managed = tmp_path / "upstream.git", tmp_path / "dev", tmp_path / "managed"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(upstream))
    git(tmp_path, "init", "--quiet", "--initial-branch=main", str(dev))
    configure(dev)
    git(dev, "remote", "add", "origin", str(upstream))
    good = commit(dev, dict(GOOD_FILES), "Good version\n\nWith a body.")
    git(dev, "push", "--quiet", "origin", "main")
    git(tmp_path, "clone", "--quiet", str(upstream), str(managed))
    configure(managed)
    yield Repos(upstream, dev, managed, tmp_path / "releases", good)


# ---------------------------------------------------------------------------- reading
async def test_head_and_rev_parse(repos: Repos) -> None:
    repo = Git(repos.managed)
    assert await repo.head() == repos.good
    assert await repo.rev_parse("main") == repos.good
    assert await repo.rev_parse(repos.good[:8]) == repos.good
    assert await repo.remote_head("main") == repos.good
    assert is_sha(repos.good)


async def test_commit_message_is_the_whole_message(repos: Repos) -> None:
    sha = repos.push({"x": "1"}, "[DEPLOY] Ünïcode subject\n\nbody line 1\nbody line 2\n")
    repo = Git(repos.managed)
    await repo.fetch()
    assert await repo.commit_message(sha) == "[DEPLOY] Ünïcode subject\n\nbody line 1\nbody line 2"
    assert await repo.commit_message(repos.good) == "Good version\n\nWith a body."


async def test_fetch_sees_the_new_head_without_moving_the_checkout(repos: Repos) -> None:
    bad = repos.push(dict(BAD_FILES), "Bad version")
    repo = Git(repos.managed)
    assert await repo.remote_head("main") == repos.good
    await repo.fetch()
    assert await repo.remote_head("main") == bad
    assert await repo.head() == repos.good
    assert files_of(repos.managed) == GOOD_FILES
    assert await repo.is_ancestor(repos.good, bad)
    assert not await repo.is_ancestor(bad, repos.good)
    assert await repo.is_ancestor(bad, bad)


async def test_on_branch_is_only_for_commits_in_the_fetched_branchs_history(repos: Repos) -> None:
    on_main = repos.push({"x": "1"}, "on main")
    git(repos.dev, "switch", "--quiet", "-c", "feature")
    elsewhere = commit(repos.dev, {"x": "2"}, "on a feature branch")
    git(repos.dev, "push", "--quiet", "origin", "feature")
    repo = Git(repos.managed)
    await repo.fetch()
    assert await repo.on_branch(repos.good, "main") and await repo.on_branch(on_main, "main")
    assert await repo.rev_parse(elsewhere) == elsewhere  # fetched, yet not on main
    assert not await repo.on_branch(elsewhere, "main")
    assert await repo.on_branch(elsewhere, "feature")
    assert not await repo.on_branch("0123456789abcdef0123456789abcdef01234567", "main")  # no such commit


# ---------------------------------------------------------------------------- releases
async def test_releases_hold_their_commits_files_whatever_happens_after(repos: Repos) -> None:
    bad = repos.push(dict(BAD_FILES), "Bad version")
    repo = Git(repos.managed)
    await repo.fetch()
    good_release = await repo.release(repos.good, repos.releases)
    assert good_release == repos.releases.resolve() / repos.good
    assert files_of(good_release) == GOOD_FILES

    bad_release = await repo.release("origin/main", repos.releases)  # any ref: named by the full id
    assert bad_release.name == bad
    assert files_of(bad_release) == BAD_TREE

    await repo.reset_to(bad)
    assert files_of(good_release) == GOOD_FILES
    await repo.reset_to(repos.good)
    assert files_of(bad_release)["main.py"] == "raise SystemExit(1)\n"
    assert git(good_release, "rev-parse", "HEAD") == repos.good


async def test_an_existing_release_is_reused_and_repaired(repos: Repos) -> None:
    repo = Git(repos.managed)
    release = await repo.release(repos.good, repos.releases)
    (release / "__pycache__").mkdir()
    (release / "__pycache__" / "main.pyc").write_text("compiled")  # a worker's own files survive
    (release / "main.py").write_text("tampered")
    (release / "README").unlink()
    assert await repo.release(repos.good, repos.releases) == release
    assert (release / "__pycache__" / "main.pyc").read_text() == "compiled"
    assert {k: v for k, v in files_of(release).items() if "__pycache__" not in k} == GOOD_FILES


@pytest.mark.parametrize("damage", ["pointer gone", "directory gone", "registration gone", "not a checkout"])
async def test_a_broken_release_is_made_again(repos: Repos, damage: str) -> None:
    repo = Git(repos.managed)
    release = await repo.release(repos.good, repos.releases)
    if damage == "pointer gone":
        (release / ".git").unlink()
    elif damage == "directory gone":
        subprocess.run(["rm", "-rf", str(release)], check=True)
    elif damage == "registration gone":
        subprocess.run(["rm", "-rf", str(repos.managed / ".git" / "worktrees")], check=True)
    else:
        subprocess.run(["rm", "-rf", str(release)], check=True)
        release.mkdir()
        (release / "junk").write_text("half a copy")
    assert await repo.release(repos.good, repos.releases) == release
    assert files_of(release) == GOOD_FILES
    assert git(release, "rev-parse", "HEAD") == repos.good


def worktrees(repo: Path) -> set[str]:
    listing = git(repo, "worktree", "list", "--porcelain")
    return {line.removeprefix("worktree ") for line in listing.splitlines() if line.startswith("worktree ")}


async def test_prune_keeps_only_what_it_is_told(repos: Repos, tmp_path: Path) -> None:
    bad = repos.push(dict(BAD_FILES), "Bad version")
    repo = Git(repos.managed)
    await repo.fetch()
    good_release = await repo.release(repos.good, repos.releases)
    bad_release = await repo.release(bad, repos.releases)
    elsewhere = await repo.release(bad, tmp_path / "old-releases")  # a former releases_dir
    feature = tmp_path / "feature"
    git(repos.managed, "worktree", "add", "--quiet", "-b", "feature", str(feature))  # someone's own worktree
    (repos.releases / "notes.txt").write_text("not a release: left alone")

    await repo.prune_releases(keep={repos.good})
    assert not bad_release.exists() and not elsewhere.exists()
    assert files_of(good_release) == GOOD_FILES
    assert feature.exists() and (repos.releases / "notes.txt").exists()
    assert worktrees(repos.managed) == {str(repos.managed.resolve()), str(good_release), str(feature.resolve())}


async def test_prune_refuses_abbreviated_ids(repos: Repos) -> None:
    with pytest.raises(ValueError, match="full commit ids"):
        await Git(repos.managed).prune_releases(keep={repos.good[:12]})


async def test_prune_sweeps_forgotten_directories_when_told_where(repos: Repos) -> None:
    repo = Git(repos.managed)
    release = await repo.release(repos.good, repos.releases)
    subprocess.run(["rm", "-rf", str(repos.managed / ".git" / "worktrees")], check=True)  # git forgot it
    await repo.prune_releases(keep=())
    assert release.exists()
    await repo.prune_releases(keep=(), releases_dir=repos.releases)
    assert not release.exists()


async def test_remove_release_only_removes_commit_named_directories(repos: Repos, tmp_path: Path) -> None:
    repo = Git(repos.managed)
    precious = tmp_path / "precious"
    precious.mkdir()
    with pytest.raises(GitError, match="refusing to remove"):
        await repo.remove_release(precious)
    assert precious.exists()
    await repo.remove_release(repos.releases / ("0" * 40))  # already gone: nothing to do
    repos.releases.mkdir()
    link = repos.releases / ("1" * 40)
    link.symlink_to(precious, target_is_directory=True)
    await repo.prune_releases(keep=(), releases_dir=repos.releases)
    assert precious.exists()
    assert not link.is_symlink()


# ---------------------------------------------------------------------------- reset
async def test_reset_to_a_known_good_commit(repos: Repos) -> None:
    bad = repos.push(dict(BAD_FILES), "Bad version")
    repo = Git(repos.managed)
    await repo.fetch()
    await repo.reset_to("origin/main")
    assert await repo.head() == bad
    assert files_of(repos.managed) == BAD_TREE
    (repos.managed / "main.py").write_text("local edit")
    await repo.reset_to(repos.good[:10])
    assert await repo.head() == repos.good
    assert files_of(repos.managed) == GOOD_FILES


async def test_reset_is_verified(repos: Repos) -> None:
    # A reference-transaction hook moves the branch elsewhere after reset: the check must notice.
    other = commit(repos.managed, {"other": "1"}, "Elsewhere")
    git(repos.managed, "reset", "--quiet", "--hard", repos.good)
    hook = repos.managed / ".git" / "hooks" / "reference-transaction"
    hook.write_text(
        f'#!/bin/sh\nif [ "$1" = committed ] && [ -z "$TWISTED" ]; then TWISTED=1 git update-ref HEAD {other}; fi\n'
    )
    hook.chmod(0o755)
    repos.push({"y": "2"}, "New")
    repo = Git(repos.managed)
    await repo.fetch()
    with pytest.raises(GitError, match=f"left HEAD at {other}"):
        await repo.reset_to("origin/main")


# ---------------------------------------------------------------------------- errors
def one_line(error: pytest.ExceptionInfo[GitError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


async def test_unknown_commit(repos: Repos) -> None:
    repo = Git(repos.managed)
    for call in (repo.rev_parse, repo.commit_message, repo.reset_to):
        with pytest.raises(GitError) as error:
            await call("f" * 40)
        assert "fatal:" in one_line(error)
    with pytest.raises(GitError) as error:
        await repo.is_ancestor("f" * 40, repos.good)
    assert "git merge-base --is-ancestor" in one_line(error)
    with pytest.raises(GitError) as error:
        await repo.release("no-such-branch", repos.releases)
    assert one_line(error).startswith("git rev-parse --verify no-such-branch^{commit} failed in ")
    assert one_line(error).endswith(": fatal: Needed a single revision")


async def test_options_are_not_revisions(repos: Repos) -> None:
    repo = Git(repos.managed)
    for ref in ("--git-dir", "-h", "", "a\0b"):
        with pytest.raises(GitError, match="not a revision"):
            await repo.rev_parse(ref)


async def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(GitError) as error:
        await Git(tmp_path).head()
    assert "not a git repository" in one_line(error)
    with pytest.raises(GitError) as error:
        await Git(tmp_path / "missing").head()
    assert "cannot change to" in one_line(error)


async def test_a_directory_inside_a_repository_is_not_that_repository(repos: Repos) -> None:
    inner = repos.managed / "cogs"
    with pytest.raises(GitError, match="not a git repository"):
        await Git(inner).reset_to(repos.good)
    assert files_of(repos.managed) == GOOD_FILES


async def test_inherited_git_dir_is_ignored(repos: Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    other = repos.push({"z": "3"}, "Only in dev")
    monkeypatch.setenv("GIT_DIR", str(repos.dev / ".git"))
    assert other != repos.good
    assert await Git(repos.managed).head() == repos.good


@pytest.mark.parametrize("url", ["/nonexistent/upstream.git", "http://127.0.0.1:9/upstream.git"])
async def test_unreachable_remote(repos: Repos, url: str) -> None:
    git(repos.managed, "remote", "set-url", "origin", url)
    with pytest.raises(GitError) as error:
        await Git(repos.managed).fetch()
    message = one_line(error)
    assert message.startswith("git fetch --prune --quiet origin failed in ")
    assert "fatal:" in message


@pytest.mark.slow
async def test_a_hung_remote_times_out(repos: Repos) -> None:
    async def hang(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, hang, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        git(repos.managed, "remote", "set-url", "origin", f"git://127.0.0.1:{port}/upstream.git")
        with pytest.raises(GitError) as error:
            await Git(repos.managed, fetch_timeout=0.3).fetch()
        assert one_line(error).startswith("git fetch --prune --quiet origin timed out after 0.3 s in ")
        nursery.cancel_scope.cancel()
