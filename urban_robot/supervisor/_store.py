"""The state directory: state, cache and the key worker secrets derive from, written atomically.

Every write goes to a temporary file in the same directory, is fsynced, then
renamed over the old one (and the directory fsynced), so a crash leaves either
the old file or the new one, never half of either. Files are private (0600).

Whoever owns the state directory owns the bot (the key mints worker secrets, the
admin token deploys): the directory is created 0700, and a start is refused when
it or anything directly in it is not the running user's or is writable by group
or others (``check_private``) — a directory another local user made first is
theirs. Temporary files have unpredictable names and are created exclusively,
and no file here is opened through a symlink (a planted ``lock`` link would
truncate the file it points to).

    <state-dir>/state.json   epoch, is_sane, last known good, lease holder
    <state-dir>/cache.json   the running worker's last accepted cache and its age
    <state-dir>/secret.key   32 random bytes; children's secrets are HMACs of it
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from .._errors import UrbanRobotError


class StateError(UrbanRobotError):
    """The state directory cannot be used; the message says which file and what to do."""


_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW  # a fresh file, never one planted or linked


def check_private(directory: Path) -> None:
    """Raise ``StateError`` (one line) unless ``directory`` and its entries are ours and not writable by others."""
    uid = os.getuid()
    try:
        mode, owner = _mode_owner(os.stat(directory))
        if owner != uid:
            raise StateError(f"state directory {directory} belongs to uid {owner}, not to this user ({uid}): refused")
        if mode & 0o022:
            raise StateError(f"state directory {directory} is writable by group or others: chmod 700 it")
        for entry in os.scandir(directory):
            info = entry.stat(follow_symlinks=False)
            mode, owner = _mode_owner(info)
            if owner != uid:
                raise StateError(f"{entry.path} belongs to uid {owner}, not to this user ({uid}): refused")
            if mode & 0o022 and not stat.S_ISLNK(info.st_mode):
                raise StateError(f"{entry.path} is writable by group or others: chmod go-w it")
    except OSError as exc:
        raise StateError(f"cannot check state directory {directory}: {exc.strerror}") from exc


def _mode_owner(info: os.stat_result) -> tuple[int, int]:
    return stat.S_IMODE(info.st_mode), info.st_uid


def read_private(path: Path) -> bytes:
    """A file's bytes, never through a symlink (``StateError`` if ``path`` is one); FileNotFoundError if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(f"{path} is a symbolic link: refused (move it away)") from None
        raise
    with os.fdopen(fd, "rb") as file:
        return file.read()


def atomic_write(path: Path, data: bytes) -> None:
    # Unpredictable and exclusive: a name planted in advance cannot catch the data.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, _NEW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _encode(value: Any) -> Any:
    """JSON can't hold bytes (binary attachments): tag them, and escape look-alikes."""
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        encoded = {k: _encode(v) for k, v in value.items()}
        return {"$dict": encoded} if set(value) in ({"$bytes"}, {"$dict"}) else encoded
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        if set(value) == {"$dict"}:
            return {k: _decode(v) for k, v in value["$dict"].items()}
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.state_path = self.directory / "state.json"
        self.cache_path = self.directory / "cache.json"
        self.key_path = self.directory / "secret.key"
        self._lock_fd: int | None = None

    def prepare(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.directory}: {exc.strerror}") from exc
        check_private(self.directory)
        if not os.access(self.directory, os.W_OK):
            raise StateError(f"state directory {self.directory} is not writable: fix its permissions or pick another")

    def lock(self) -> None:
        """Hold the state directory for this process: two supervisors on one state would fight over leases."""
        if self._lock_fd is not None:
            return
        path = self.directory / "lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateError(f"{path} is a symbolic link: refused (move it away)") from None
            raise StateError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateError(
                f"another supervisor (pid {holder}) is using state directory {self.directory}: "
                "stop it first, or give this one its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd  # held (and so locked) until this process exits or unlock()

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load_state(self) -> dict[str, Any] | None:
        try:
            raw = read_private(self.state_path)
        except FileNotFoundError:
            return None
        try:
            state = json.loads(raw)
            if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
                raise ValueError("no integer epoch")
        except ValueError as exc:
            raise StateError(
                f"{self.state_path} is damaged ({exc}); restore it from a backup or move it away to start afresh"
            ) from None
        return state

    def load_cache(self) -> tuple[Any, float | None]:
        """The persisted cache and its age (wall-clock seconds); a damaged file is kept aside, not lost."""
        try:
            raw = read_private(self.cache_path)
        except FileNotFoundError:
            return None, None
        try:
            stored = json.loads(raw)
            return _decode(stored["cache"]), float(stored["saved_at"])
        except (ValueError, KeyError, TypeError):
            aside = self.cache_path.with_name(f"cache.json.damaged-{int(time.time())}")
            os.replace(self.cache_path, aside)
            return None, None

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.state_path, json.dumps(state, indent=1, sort_keys=True).encode())

    def save_cache(self, cache: Any) -> None:
        body = {"saved_at": time.time(), "cache": _encode(cache)}
        atomic_write(self.cache_path, json.dumps(body, separators=(",", ":")).encode())

    def secret_key(self) -> bytes:
        try:
            key = read_private(self.key_path)
            if len(key) >= 32:
                return key
        except FileNotFoundError:
            pass
        key = secrets.token_bytes(32)
        atomic_write(self.key_path, key)
        return key
