"""The state directory: state, cache and the key worker secrets derive from, written atomically.

Every write goes to a temporary file in the same directory, is fsynced, then
renamed over the old one (and the directory fsynced), so a crash leaves either
the old file or the new one, never half of either. Files are private (0600).

    <state-dir>/state.json   epoch, is_sane, last known good, lease holder
    <state-dir>/cache.json   the running worker's last accepted cache and its age
    <state-dir>/secret.key   32 random bytes; children's secrets are HMACs of it
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from .._errors import UrbanRobotError


class StateError(UrbanRobotError):
    """The state directory cannot be used; the message says which file and what to do."""


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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
        if not os.access(self.directory, os.W_OK):
            raise StateError(f"state directory {self.directory} is not writable: fix its permissions or pick another")

    def lock(self) -> None:
        """Hold the state directory for this process: two supervisors on one state would fight over leases."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
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
            raw = self.state_path.read_bytes()
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
            raw = self.cache_path.read_bytes()
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
            key = self.key_path.read_bytes()
            if len(key) >= 32:
                return key
        except FileNotFoundError:
            pass
        key = secrets.token_bytes(32)
        atomic_write(self.key_path, key)
        return key
