"""The state directory (supervisor/_store.py): atomic private writes, exact round trips, damage, the lock."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests._helpers import image, plain
from urban_robot.protocol import CacheChange, CacheImage, decode_value, encode_value
from urban_robot.supervisor import Settings, StateError, StateStore, Supervisor
from urban_robot.supervisor._store import atomic_write

EVERY_BYTE = bytes(range(256))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    s = StateStore(tmp_path / "state")
    s.prepare()
    return s


class DiskLog:
    """Records fsync and rename calls in order, and what each fsync made durable."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, ...]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            target = os.readlink(f"/proc/self/fd/{fd}")
            size = os.fstat(fd).st_size if os.path.isfile(target) else -1
            self.calls.append(("fsync", Path(target).name, str(size)))
            real_fsync(fd)

        def replace(src: Any, dst: Any) -> None:
            self.calls.append(("replace", Path(src).name, Path(dst).name))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)


# -- atomic writes -----------------------------------------------------------------------------------
def test_a_write_is_synced_then_renamed_then_the_directory_synced(store: StateStore, monkeypatch: Any) -> None:
    disk = DiskLog(monkeypatch)
    store.save_state({"epoch": 3})
    data = store.state_path.read_bytes()
    tmp = disk.calls[0][1]
    assert tmp.startswith(".state.json.") and tmp.endswith(".tmp")
    assert disk.calls == [
        ("fsync", tmp, str(len(data))),  # the whole content is on disk before the rename makes it visible
        ("replace", tmp, "state.json"),
        ("fsync", "state", "-1"),  # and the rename itself is durable
    ]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(store: StateStore, monkeypatch: Any) -> None:
    store.save_state({"epoch": 1, "is_sane": True})
    before = store.state_path.read_bytes()

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        store.save_state({"epoch": 2, "is_sane": False})
    monkeypatch.undo()
    assert store.state_path.read_bytes() == before
    assert store.load_state() == {"epoch": 1, "is_sane": True}
    assert leftovers(store.directory) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(store: StateStore, monkeypatch: Any) -> None:
    store.save_cache(image({"kept": EVERY_BYTE}), 1)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        store.save_cache(image({"lost": 1}), 2)
    monkeypatch.undo()
    assert plain(store.load_cache()[0]) == {"kept": EVERY_BYTE}
    assert leftovers(store.directory) == []


def test_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"a much longer first content")
    atomic_write(target, b"short")
    assert target.read_bytes() == b"short"  # truncated, not overwritten in place
    assert leftovers(tmp_path) == []


def test_files_are_private(store: StateStore) -> None:
    store.save_state({"epoch": 1})
    store.save_cache(image({"a": 1}), 1)
    store.secret_key()
    store.lock()
    try:
        for path in (store.state_path, store.cache_path, store.key_path, store.directory / "lock"):
            assert mode(path) == 0o600, path
        assert mode(store.directory) == 0o700
    finally:
        store.unlock()


def test_a_write_into_a_missing_directory_fails_and_creates_nothing(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "never-prepared")
    with pytest.raises(OSError):  # the shell turns this into "promotions wait until it can"
        store.save_state({"epoch": 1})
    assert not store.directory.exists()


# -- round trips ------------------------------------------------------------------------------------
def test_state_round_trips_and_restores_a_supervisor(store: StateStore) -> None:
    state = {
        "version": 1,
        "epoch": 7,
        "is_sane": False,
        "last_known_good": "ab" * 20,
        "holder": {"identity": "child-3", "epoch": 7, "token": "t0k3n"},
    }
    store.save_state(state)
    assert store.load_state() == state
    core = Supervisor(Settings(), state=store.load_state(), now=50)
    assert (core.epoch, core.is_sane, core.last_known_good_hash) == (7, False, "ab" * 20)
    lease = core.lease
    assert lease is not None and (lease.identity, lease.epoch, lease.token) == ("child-3", 7, "t0k3n")


def test_nothing_saved_yet_loads_as_nothing(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "missing")  # not even the directory
    assert store.load_state() is None
    assert store.load_cache() == (None, None)


@pytest.mark.parametrize(
    "cache",
    [
        {"blob": EVERY_BYTE, "nested": [b"", b"\x00", {"deep": [EVERY_BYTE[::-1]]}]},
        {"$bytes": "not bytes, a look-alike"},  # a bot's own dict that looks like our tag stays a dict
        {"$dict": {"$bytes": b"x"}},
        [{"$bytes": EVERY_BYTE}, {"$dict": 1}, {"$bytes": "a", "other": 2}],
        "just a string",
        None,
        [1, 2.5, True, None, "é", {"k": []}],
    ],
)
def test_a_cache_value_comes_back_exactly_through_its_entry(cache: Any) -> None:
    loaded = decode_value(encode_value(cache))
    assert loaded == cache
    assert type(loaded) is type(cache)


def test_bytes_stay_bytes_and_tuples_become_lists() -> None:
    loaded = decode_value(encode_value({"a": bytearray(b"\xff\x00"), "t": (1, b"\x01")}))
    assert loaded == {"a": b"\xff\x00", "t": [1, b"\x01"]}
    assert type(loaded["a"]) is bytes and type(loaded["t"][1]) is bytes


def test_the_store_keeps_the_entries_bytes_exactly_never_decoding_them(store: StateStore) -> None:
    entries = {"": (EVERY_BYTE, b"not json at all"), "é/key": (b"",), "x" * 512: (EVERY_BYTE[::-1],)}
    store.save_cache(CacheImage.of(entries), 1)
    loaded, _ = store.load_cache()
    assert loaded is not None and {k: b"".join(v) for k, v in loaded.entries.items()} == {
        k: b"".join(v) for k, v in entries.items()
    }
    assert loaded.size == CacheImage.of(entries).size


def test_the_cache_remembers_when_it_was_saved(store: StateStore) -> None:
    before = time.time()
    store.save_cache(image({"n": 1}), 1)
    _, saved_at = store.load_cache()
    assert saved_at is not None and before <= saved_at <= time.time()


def test_deltas_are_appended_then_the_file_is_written_whole_once_they_outgrow_the_image(store: StateStore) -> None:
    kept = CacheImage.of({"big": (b"b" * (2 << 20),), "n": (b"0",)})
    store.save_cache(kept, 1)
    size = store.cache_path.stat().st_size
    for n in range(1, 4):
        change = CacheChange(False, {"n": (str(n).encode(),)}, frozenset({"gone"} if n == 2 else ()))
        kept = kept.apply(change)
        store.save_cache(kept, n + 1, [(n, change)])
    grown = store.cache_path.stat().st_size
    assert size < grown < size + 200  # three small records appended, not three copies of 2 MiB
    assert dict(store.load_cache()[0].entries) == dict(kept.entries)  # type: ignore[union-attr]
    store.save_cache(kept, 99, [(50, CacheChange(False, {"n": (b"x",)}))])  # not what the file holds: whole
    assert store.cache_path.stat().st_size == size


def test_a_sync_cut_short_on_disk_is_left_out_and_cut_off(store: StateStore) -> None:
    kept = image({"a": 1})
    store.save_cache(kept, 1)
    committed = store.cache_path.read_bytes()
    change = CacheChange(False, {"b": (b"2" * 1000,)})
    store.save_cache(kept.apply(change), 2, [(1, change)])
    store.cache_path.write_bytes(store.cache_path.read_bytes()[:-20])  # the commit record never made it
    loaded, _ = store.load_cache()
    assert plain(loaded) == {"a": 1}
    assert store.cache_path.read_bytes() == committed  # the torn tail is gone: the next append follows a commit
    store.save_cache(loaded.apply(change), 2, [(1, change)])  # type: ignore[union-attr]
    assert store.load_cache()[0].entries["b"] == (b"2" * 1000,)  # type: ignore[union-attr]


def test_a_cache_json_of_an_earlier_version_is_taken_over_once(store: StateStore) -> None:
    store.prepare()
    old = {"saved_at": 1700000000.0, "cache": {"r": [1, {"$bytes": "AAE="}], "esc": {"$dict": {"$bytes": "x"}}}}
    store.old_cache_path.write_text(json.dumps(old))
    loaded, saved_at = store.load_cache()
    assert plain(loaded) == {"r": [1, b"\x00\x01"], "esc": {"$bytes": "x"}} and saved_at == 1700000000.0
    assert not store.old_cache_path.exists() and store.cache_path.exists()
    assert plain(store.load_cache()[0]) == plain(loaded)


# -- damage -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"epoch": 3, "is_sane": tr',  # truncated
        b"\x00\x00\x00\x00",  # a crash of a filesystem without data journaling
        b"[1, 2]",
        b'{"epoch": "3"}',
        b'{"is_sane": true}',
        b"null",
    ],
)
def test_a_damaged_state_is_a_clear_error_and_is_left_for_the_operator(store: StateStore, content: bytes) -> None:
    store.state_path.write_bytes(content)
    with pytest.raises(StateError) as error:
        store.load_state()
    message = str(error.value)
    assert str(store.state_path) in message and "damaged" in message and "move it away" in message
    assert store.state_path.read_bytes() == content  # never thrown away: it holds the epoch


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"saved_at": 1700000000.0, "cache": {"a": 1}}',  # not a cache.bin at all
        b"URCACHE1" + b"X\x00\x00\x00\x00" + bytes(8),  # an unknown record
        b"URCACHE1" + b"S\x00\x00\x00\x01" + bytes(8) + b"\xff",  # a key that is not UTF-8
    ],
)
def test_a_damaged_cache_is_set_aside_not_lost(
    store: StateStore, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store.prepare()
    store.cache_path.write_bytes(content)
    assert store.load_cache() == (None, None)
    # said loudly: the bot starts without its cache (it was silent: the operator never knew it was gone)
    [said] = [r for r in caplog.records if "cache.bin" in r.getMessage() and "set aside" in r.getMessage()]
    assert said.levelname == "CRITICAL"
    assert not store.cache_path.exists()
    [aside] = [p for p in store.directory.iterdir() if p.name.startswith("cache.bin.damaged-")]
    assert aside.read_bytes() == content
    assert abs(int(aside.name.rsplit("-", 1)[1]) - time.time()) < 5
    assert store.load_cache() == (None, None)  # and the next start begins without a cache
    store.save_cache(image({"fresh": 1}), 1)
    assert plain(store.load_cache()[0]) == {"fresh": 1}


@pytest.mark.parametrize(
    "content",
    [
        b'{"saved_at": 1700000000.0, "cache": {"a": [1, 2',  # truncated
        b'{"cache": {"a": 1}}',  # no saved_at
        b'{"saved_at": "yesterday", "cache": 1}',
        b'{"saved_at": 1700000000.0, "cache": {"$bytes": "not base64!"}}',
        b"[]",
    ],
)
def test_a_damaged_cache_json_of_an_earlier_version_is_set_aside(store: StateStore, content: bytes) -> None:
    store.prepare()
    store.old_cache_path.write_bytes(content)
    assert store.load_cache() == (None, None)
    [aside] = [p for p in store.directory.iterdir() if p.name.startswith("cache.json.damaged-")]
    assert aside.read_bytes() == content


# -- the directory, the key, the lock ---------------------------------------------------------------
def test_prepare_creates_missing_parents_and_accepts_an_existing_directory(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "a" / "b" / "state")
    store.prepare()
    assert store.directory.is_dir()
    store.save_state({"epoch": 1})
    store.prepare()  # again: nothing lost
    assert store.load_state() == {"epoch": 1}


def test_a_state_directory_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    store = StateStore(tmp_path / "file" / "state")
    with pytest.raises(StateError, match=r"cannot create state directory .*file/state"):
        store.prepare()


def test_a_state_directory_that_is_not_writable_is_a_clear_error(store: StateStore, monkeypatch: Any) -> None:
    # Permissions mean nothing to root (CI runs as root): ask os.access, as the store does.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == store.directory else real_access(p, m))
    with pytest.raises(StateError, match="is not writable"):
        store.prepare()


def test_the_secret_key_is_made_once_and_kept(store: StateStore) -> None:
    key = store.secret_key()
    assert len(key) == 32
    assert store.secret_key() == key
    assert StateStore(store.directory).secret_key() == key  # the next supervisor's children keep their secrets
    assert store.key_path.read_bytes() == key


def test_a_short_secret_key_is_replaced(store: StateStore) -> None:
    store.key_path.write_bytes(b"\x01" * 31)
    key = store.secret_key()
    assert len(key) == 32 and key != b"\x01" * 31
    assert store.key_path.read_bytes() == key


def test_a_longer_secret_key_is_used_as_it_is(store: StateStore) -> None:
    store.key_path.write_bytes(EVERY_BYTE[:40])
    assert store.secret_key() == EVERY_BYTE[:40]


def test_one_supervisor_per_state_directory(store: StateStore) -> None:
    store.lock()
    store.lock()  # again from the holder: a no-op
    assert (store.directory / "lock").read_text() == f"{os.getpid()}\n"
    rival = StateStore(store.directory)
    with pytest.raises(StateError, match=rf"another supervisor \(pid {os.getpid()}\) is using state directory"):
        rival.lock()
    store.unlock()
    rival.lock()
    try:
        assert (store.directory / "lock").read_text() == f"{os.getpid()}\n"
    finally:
        rival.unlock()
    store.unlock()  # unlocking twice is harmless


def test_the_lock_holds_against_another_process(store: StateStore) -> None:
    code = (
        "import sys; from urban_robot.supervisor import StateStore\n"
        "s = StateStore(sys.argv[1]); s.lock(); print('locked', flush=True); sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(store.directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        with pytest.raises(StateError, match=rf"\(pid {child.pid}\)"):
            store.lock()
    finally:
        child.communicate("")
    store.lock()  # the holder is gone: its lock went with it
    store.unlock()


def test_the_lock_file_names_only_the_current_holder(store: StateStore) -> None:
    (store.directory / "lock").write_text("4194303\nleft by a crashed supervisor with a longer pid\n")
    store.lock()
    try:
        assert (store.directory / "lock").read_text() == f"{os.getpid()}\n"
    finally:
        store.unlock()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_file_descriptor_is_leaked(store: StateStore) -> None:
    """A supervisor writes state and cache for months: one leaked descriptor per write would end it."""
    store.save_state({"epoch": 0})
    before = open_fds()
    for n in range(20):
        store.save_state({"epoch": n})
        store.save_cache(image({"n": n}), n)
        store.load_state()
        store.load_cache()
    assert open_fds() == before
    store.lock()
    rival = StateStore(store.directory)
    for _ in range(20):
        with pytest.raises(StateError):
            rival.lock()  # a refused lock closes what it opened
    store.unlock()
    assert open_fds() == before


def test_state_json_is_the_same_bytes_for_the_same_state(store: StateStore) -> None:
    store.save_state({"is_sane": True, "epoch": 2})
    first = store.state_path.read_bytes()
    store.save_state({"epoch": 2, "is_sane": True})
    assert store.state_path.read_bytes() == first  # keys sorted: comparable across restarts and by diff
    assert json.loads(first) == {"epoch": 2, "is_sane": True} and b"\n" in first  # for people to read


def test_deltas_of_deletes_or_nothing_count_toward_the_snapshot_too(store: StateStore) -> None:
    """An empty delta (a plain cache sent unchanged) or one of deletes alone carries no entry bytes, but each
    adds records and a commit to cache.bin: they counted as nothing, so the file grew without end."""
    kept = image({"a": 1})
    store.save_cache(kept, 1)
    seq = 1
    for _ in range(40):  # 40 × 100 deltas, each deleting one absent 512-character key: ~2 MB of records
        changes = []
        for _ in range(100):
            changes.append((seq, CacheChange(False, {}, frozenset({"k" * 512}))))
            seq += 1
        store.save_cache(kept, seq, changes)
    assert store.cache_path.stat().st_size < 2 * (1 << 20)  # written whole once the journal passed 1 MiB
    assert plain(store.load_cache()[0]) == {"a": 1}


def test_replaying_many_commits_is_linear_not_a_copy_of_the_cache_per_commit(store: StateStore) -> None:
    """A bot with 200,000 keys that syncs one changed key at a time: 5,000 deltas fit the journal easily (it
    may hold up to the image's size). Replay copied every entry at each commit: minutes at start-up."""
    kept = CacheImage.of({f"user:{i}": (b'{"xp":1}',) for i in range(200_000)})
    store.save_cache(kept, 1)
    changes = [(n, CacheChange(False, {f"user:{n}": (b'{"xp":2}',)})) for n in range(1, 5001)]
    store.save_cache(kept, 5001, changes)  # appended in one go
    assert store._journal > 0  # appended: 5,000 commit records follow the snapshot
    started = time.perf_counter()
    loaded, _ = StateStore(store.directory).load_cache()
    took = time.perf_counter() - started
    assert loaded is not None and loaded.entries["user:5000"] == (b'{"xp":2}',)
    assert loaded.entries["user:5001"] == (b'{"xp":1}',)
    assert took < 5, f"replay took {took:.1f} s"  # linear: well under a second; a copy per commit: ~16 s here


def test_a_record_announcing_more_than_the_file_holds_is_a_torn_tail_not_a_memory_error(store: StateStore) -> None:
    """A damaged length field (2**62 bytes) was passed to read(), which allocates it first: MemoryError at start."""
    import struct

    store.save_cache(image({"a": 1}), 1)
    committed = store.cache_path.read_bytes()
    store.cache_path.write_bytes(committed + b"S" + struct.pack(">IQ", 1, 1 << 62) + b"k" + b"x" * 100)
    loaded, _ = store.load_cache()
    assert plain(loaded) == {"a": 1}
    assert store.cache_path.read_bytes() == committed
