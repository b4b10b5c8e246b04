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
    <state-dir>/cache.bin    the running worker's last accepted cache: its entries' bytes as they came,
                             a snapshot then appended deltas, each sync ending in a commit record
    <state-dir>/cache.shards-0-3.bin   a sharded bot's: one per shard group, alike (``cache_store``)
    <state-dir>/secret.key   32 random bytes; children's secrets are HMACs of it
"""

from __future__ import annotations

import base64
import errno
import fcntl
import itertools
import json
import logging
import os
import secrets
import stat
import struct
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .._errors import UrbanRobotError
from ..protocol import CacheChange, CacheImage, Chunks, encode_value

log = logging.getLogger("urban_robot.supervisor")

CACHE_MAGIC = b"URCACHE1"
# One record: op, key length, value length; then the key (UTF-8) and the value. Ops: F a snapshot begins
# (every entry before it is gone), S set, D delete, C commit (value: saved_at, a big-endian double).
_RECORD = struct.Struct(">cIQ")
_COMMIT = struct.Struct(">d")


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


def atomic_write(path: Path, data: bytes | Iterable[bytes], *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` at once (temp file, rename). ``durable``: fsync'd, so a power loss keeps it;
    without, it survives the writer's crash (the page cache outlives a process) but not a power loss — enough
    for what dies with the machine anyway (the children registry: after a power loss no child is left)."""
    # Unpredictable and exclusive: a name planted in advance cannot catch the data.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, _NEW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in [data] if isinstance(data, bytes) else data:
                f.write(piece)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _decode(value: Any) -> Any:
    """A cache.json of before the cache was bytes: bytes were tagged ``$bytes``, look-alikes ``$dict``."""
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        if set(value) == {"$dict"}:
            return {k: _decode(v) for k, v in value["$dict"].items()}
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


# The largest epoch state.json may hold: every JSON reader (a JavaScript worker's too) reads it exactly.
MAX_EPOCH = 2**53 - 1


def _check_epoch(value: Any, where: str) -> None:
    if type(value) is not int or not 0 <= value <= MAX_EPOCH:
        raise ValueError(f"{where} is {str(value)[:40]!r}, not a whole number from 0 to {MAX_EPOCH}")


def _check_holder(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not isinstance(value.get("identity"), str):
        raise ValueError(f"{where} is neither null nor an object with a string identity")
    _check_epoch(value.get("epoch"), f"{where}.epoch")
    if value.get("token") is not None and not isinstance(value["token"], str):
        raise ValueError(f"{where}.token is neither null nor a string")


def check_state(state: dict[str, Any]) -> None:
    """What the cores read of ``state.json`` (the epochs, the holders, a sharded bot's ``groups``), or
    ``ValueError`` saying what is wrong: a damaged file is refused in one line, never half-read."""
    _check_epoch(state.get("epoch"), "epoch")
    _check_holder(state.get("holder"), "holder")
    groups = state.get("groups")
    if groups is None:
        return
    if not isinstance(groups, dict):
        raise ValueError("groups is not an object")
    for name, group in groups.items():
        where = f"groups[{str(name)[:40]!r}]"
        if not isinstance(group, dict):
            raise ValueError(f"{where} is not an object")
        _check_epoch(group.get("epoch"), f"{where}.epoch")
        _check_holder(group.get("holder"), f"{where}.holder")


class StateStore:
    def __init__(self, directory: Path, *, cache_name: str = "cache.bin") -> None:
        self.directory = Path(directory)
        self.state_path = self.directory / "state.json"
        self.cache_path = self.directory / cache_name
        # Before the cache was bytes: read once, then removed (the unsharded cache only).
        self.old_cache_path = self.directory / ("cache.json" if cache_name == "cache.bin" else f".{cache_name}.none")
        self._cache_on_disk: int | None = None  # the cache number cache.bin holds (None: unknown, write it whole)
        self._journal = 0  # bytes appended to cache.bin since its snapshot
        self.key_path = self.directory / "secret.key"
        self._lock_fd: int | None = None

    def cache_store(self, group: str) -> StateStore:
        """The store of shard group ``group``'s cache ("shards 0-3" -> ``cache.shards-0-3.bin``): its own file and
        journal; its state, key and lock are this store's (only its ``load_cache``/``save_cache`` are used)."""
        return StateStore(self.directory, cache_name=f"cache.{group.replace(' ', '-')}.bin")

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
            check_state(state)
        except ValueError as exc:
            raise StateError(
                f"{self.state_path} is damaged ({exc}); restore it from a backup or move it away to start afresh"
            ) from None
        return state

    def load_cache(self) -> tuple[CacheImage | None, float | None]:
        """The persisted cache (number 1 from now on) and when it was saved (wall clock); never decoded.

        A sync whose commit record is missing (a write cut short) is left out and cut off the file; a
        damaged file is kept aside, not lost.
        """
        try:
            fd = os.open(self.cache_path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            return self._load_old_cache()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateError(f"{self.cache_path} is a symbolic link: refused (move it away)") from None
            raise
        with os.fdopen(fd, "r+b") as file:
            try:
                entries, saved_at, end = _read_cache(file)
            except ValueError as exc:
                file.close()
                aside = self.cache_path.with_name(f"{self.cache_path.name}.damaged-{int(time.time())}")
                os.replace(self.cache_path, aside)
                log.critical(
                    "%s is damaged (%s): set aside as %s; starting without a cache", self.cache_path, exc, aside
                )
                return None, None
            if file.seek(0, os.SEEK_END) > end:
                file.truncate(end)
        self._cache_on_disk, self._journal = 1, 0
        if saved_at is None:
            return None, None
        return CacheImage.of(entries), saved_at

    def _load_old_cache(self) -> tuple[CacheImage | None, float | None]:
        try:
            raw = read_private(self.old_cache_path)
        except FileNotFoundError:
            return None, None
        try:
            stored = json.loads(raw)
            entry = encode_value(_decode(stored["cache"]))
            saved_at = float(stored["saved_at"])
        except (ValueError, KeyError, TypeError):
            aside = self.old_cache_path.with_name(f"cache.json.damaged-{int(time.time())}")
            os.replace(self.old_cache_path, aside)
            log.critical("%s is damaged: set aside as %s; starting without a cache", self.old_cache_path, aside)
            return None, None
        image = CacheImage.of({"": (entry,)})
        self._snapshot(image, saved_at)
        self.old_cache_path.unlink()
        return image, saved_at

    def set_cache_aside(self, why: str) -> Path | None:
        """Move this store's cache file out of the way (it is not this run's to load); where it went, if it was."""
        aside = self.cache_path.with_name(f"{self.cache_path.name}.{why}-{int(time.time())}")
        try:
            os.replace(self.cache_path, aside)
        except FileNotFoundError:
            return None
        self._cache_on_disk = None
        return aside

    def save_cache(self, image: CacheImage, seq: int, changes: Sequence[tuple[int, CacheChange]] = ()) -> None:
        """Keep cache number ``seq``: append ``changes`` ((base, change) each, in order) when they continue
        what the file holds and the deltas stay smaller than the image; else write the image whole."""
        added = sum(_journal_bytes(c) for _, c in changes)  # what it adds on disk: records, keys, commit too
        chain = bool(changes) and all(not c.full for _, c in changes)
        chain = chain and changes[0][0] == self._cache_on_disk
        chain = chain and all(later[0] == earlier[0] + 1 for earlier, later in itertools.pairwise(changes))
        if chain and self._journal + added < max(image.size, 1 << 20):
            self._append(changes)
            self._journal += added
        else:
            self._snapshot(image, time.time())
            self._journal = 0
        self._cache_on_disk = seq

    def _snapshot(self, image: CacheImage, saved_at: float) -> None:
        def pieces() -> Iterable[bytes]:
            yield CACHE_MAGIC
            yield _RECORD.pack(b"F", 0, 0)
            for key, chunks in image.entries.items():
                yield from _set_record(key, chunks)
            yield from _commit(saved_at)

        atomic_write(self.cache_path, pieces())

    def _append(self, changes: Sequence[tuple[int, CacheChange]]) -> None:
        fd = os.open(self.cache_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        with os.fdopen(fd, "ab") as file:
            for _, change in changes:
                for key in sorted(change.delete):
                    name = key.encode()
                    file.write(_RECORD.pack(b"D", len(name), 0) + name)
                for key, chunks in change.set.items():
                    for piece in _set_record(key, chunks):
                        file.write(piece)
                for piece in _commit(time.time()):
                    file.write(piece)
            file.flush()
            os.fsync(file.fileno())

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.state_path, json.dumps(state, indent=1, sort_keys=True).encode())

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


def peek_cache(path: Path) -> CacheImage | None:
    """The committed cache in ``path``, read only (never cut, moved or written): for tools and tests that
    look at a running supervisor's state directory. None if absent or not a cache file."""
    try:
        with open(path, "rb") as file:
            entries, saved_at, _ = _read_cache(file)
    except (OSError, ValueError):
        return None
    return CacheImage.of(entries) if saved_at is not None else None


def _set_record(key: str, chunks: Chunks) -> Iterable[bytes]:
    name = key.encode()
    yield _RECORD.pack(b"S", len(name), sum(len(c) for c in chunks)) + name
    yield from chunks


def _journal_bytes(change: CacheChange) -> int:
    """The bytes ``change`` adds to cache.bin: an empty delta or one of deletes alone is not free (its commit,
    its records): counted so, a run of them ends in a snapshot instead of a file that only grows."""
    keys = sum(len(k.encode()) for k in itertools.chain(change.delete, change.set))
    records = len(change.delete) + len(change.set) + 1
    return change.size + keys + records * _RECORD.size + _COMMIT.size


def _commit(saved_at: float) -> Iterable[bytes]:
    yield _RECORD.pack(b"C", 0, _COMMIT.size) + _COMMIT.pack(saved_at)


def _read_cache(file: BinaryIO) -> tuple[dict[str, Chunks], float | None, int]:
    """Replay cache.bin: the committed entries, the last commit's saved_at, and where the last commit ends.

    Each value is read into its own bytes (never the whole file at once: memory stays near the cache's
    size). Raises ValueError for a file that is not a cache file.
    """
    if file.read(len(CACHE_MAGIC)) != CACHE_MAGIC:
        raise ValueError("not a cache file")
    size = os.fstat(file.fileno()).st_size
    committed: dict[str, Chunks] = {}
    pending: list[tuple[bytes, str, bytes]] = []  # the records since the last commit, applied when it comes
    saved_at: float | None = None
    end = file.tell()
    while True:
        head = file.read(_RECORD.size)
        if len(head) < _RECORD.size:
            return committed, saved_at, end  # the end, or a record cut short: left out
        op, key_length, value_length = _RECORD.unpack(head)
        if file.tell() + key_length + value_length > size:  # cut short (or garbage): never read() 2**63 bytes
            return committed, saved_at, end
        key_bytes = file.read(key_length)
        value = file.read(value_length)
        if len(key_bytes) < key_length or len(value) < value_length:
            return committed, saved_at, end
        try:
            key = key_bytes.decode()
        except UnicodeDecodeError:
            raise ValueError("a key is not UTF-8") from None
        if op in (b"F", b"S", b"D"):
            pending.append((op, key, value))
        elif op == b"C" and value_length == _COMMIT.size:
            (saved_at,) = _COMMIT.unpack(value)
            for op, key, value in pending:  # each record applied once: replay is linear in the file, not
                if op == b"F":  # in commits × entries (a copy of every entry at each commit)
                    committed = {}
                elif op == b"S":
                    committed[key] = (value,)
                else:
                    committed.pop(key, None)
            pending, end = [], file.tell()
        else:
            raise ValueError(f"unknown record {op!r}")
