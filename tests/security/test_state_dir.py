"""The state directory is the running user's alone, or the supervisor does not start (issue 13, finding 5).

Whoever owns it owns the bot: ``secret.key`` mints worker secrets (which receive the Discord token) and
``admin.token`` deploys and stops. Another local user who made the directory first, or can write in it,
must not get either.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from urban_robot.__main__ import demo_options
from urban_robot.cli import ensure_admin_token
from urban_robot.supervisor._store import StateError, StateStore, atomic_write

STRANGER = 4242  # a uid that is not ours (chown needs root)
as_root = pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")


def test_a_new_state_directory_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        StateStore(tmp_path / "state").prepare()
        demo_options("127.0.0.1", 0, tmp_path / "demo-state")
    finally:
        os.umask(old)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "demo-state").stat().st_mode & 0o777 == 0o700  # the demo's was 0755


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o730, 0o702])
def test_a_state_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    with pytest.raises(StateError, match="writable by group or others"):
        StateStore(state).prepare()
    with pytest.raises(StateError, match="writable by group or others"):
        ensure_admin_token(state, None)
    assert not (state / "admin.token").exists()


def test_a_file_in_it_others_can_write_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.prepare()
    store.save_state({"epoch": 3})
    store.state_path.chmod(0o666)
    with pytest.raises(StateError, match=r"state\.json is writable by group or others"):
        store.prepare()


@as_root
def test_a_state_directory_another_user_made_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, STRANGER, STRANGER)
    with pytest.raises(StateError, match=f"belongs to uid {STRANGER}"):
        StateStore(state).prepare()


@as_root
@pytest.mark.parametrize("name", ["secret.key", "admin.token", "children.json", "lock"])
def test_a_planted_file_is_refused_and_never_used(tmp_path: Path, name: str) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    planted = state / name
    planted.write_bytes(b"k" * 32 if name != "children.json" else b"{}")
    os.chown(planted, STRANGER, STRANGER)
    with pytest.raises(StateError, match=f"{name} belongs to uid {STRANGER}"):
        StateStore(state).prepare()
    with pytest.raises(StateError, match=f"{name} belongs to uid {STRANGER}"):
        ensure_admin_token(state, None)


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("do not truncate me\n")
    store = StateStore(tmp_path / "state")
    store.prepare()
    (store.directory / "lock").symlink_to(target)
    with pytest.raises(StateError, match="lock is a symbolic link: refused"):
        store.lock()
    assert target.read_text() == "do not truncate me\n"


def test_secret_files_are_never_read_through_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "attackers-key"
    elsewhere.write_bytes(b"a" * 32)
    store = StateStore(tmp_path / "state")
    store.prepare()
    store.key_path.symlink_to(elsewhere)
    with pytest.raises(StateError, match=r"secret\.key is a symbolic link"):
        store.secret_key()


def test_a_write_never_lands_in_a_file_planted_under_a_predictable_temporary_name(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    readable = tmp_path / "readable-by-the-attacker"
    readable.write_bytes(b"")
    for guess in (f".secret.key.{os.getpid()}.tmp", ".secret.key.tmp"):  # the names writes used
        (state / guess).symlink_to(readable)
    atomic_write(state / "secret.key", b"k" * 32)
    assert readable.read_bytes() == b""  # before: the fresh key was written through the planted link
    assert not (state / "secret.key").is_symlink()
    assert (state / "secret.key").stat().st_mode & 0o777 == 0o600


def test_the_supervisor_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    result = subprocess.run(
        [sys.executable, "-m", "urban_robot", "--state-dir", str(state), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert "writable by group or others" in result.stderr
    assert not (state / "admin.token").exists() and not (state / "secret.key").exists()
