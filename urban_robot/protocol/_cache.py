"""The cache as bytes (docs/protocol.md §11): entries, syncs in parts, deltas — sans-IO, both sides.

A cache is a mapping of string keys to *entries*, each the bytes of one encoded value. The SDKs encode
and decode (:func:`encode_value`, :func:`decode_value`); the supervisor never does: it checks sizes,
keeps the bytes (:class:`CacheImage`), persists and forwards them as they came. A bot's plain cache
(any JSON value) is the one entry ``""``; a :class:`CacheMap` is one entry per key and syncs only
the keys that changed.

A change travels as one *sync*: ``parts`` messages (:class:`~._messages.CacheSync`), each at most
:data:`PART_BYTES` of entry bytes, so the cache's size is bounded by its own limit, not by the
largest message. :class:`Assembly` puts the parts back together on the receiving side, either side.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import attrs

from ._errors import MalformedMessage
from ._messages import CacheSync, cache_key_ok

PART_BYTES = 1024 * 1024  # entry bytes per message: a part never holds a connection (or a heartbeat) up for long
PLAIN = ""  # the key of a plain (whole-value) cache

Chunks = tuple[bytes, ...]  # one entry's bytes, as it arrived: never joined by the supervisor


# -- values <-> bytes (the SDKs' side) --------------------------------------------------------------
def _bytes_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"a cache holds JSON values and bytes, not {type(value).__name__}")


_TAGS = ({"$bytes"}, {"$dict"})


def _tagged(value: Any) -> Any:
    """``value`` with bytes tagged ``{"$bytes": base64}`` and a dict that looks like a tag escaped as
    ``{"$dict": [[key, value], ...]}`` (a list inside, so no look-alike survives in it)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        if set(value) in _TAGS:
            return {"$dict": [[k, _tagged(v)] for k, v in value.items()]}
        return {k: _tagged(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tagged(v) for v in value]
    return value


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if isinstance(obj.get("$bytes"), str):
            return base64.b64decode(obj["$bytes"], validate=True)
        if isinstance(obj.get("$dict"), list):
            return {k: v for k, v in obj["$dict"]}
    return obj


def encode_value(value: Any) -> bytes:
    """One cache value as an entry: UTF-8 JSON, bytes as ``{"$bytes": base64}`` (docs/protocol.md §11)."""
    try:
        data = json.dumps(value, separators=(",", ":"), default=_bytes_default, allow_nan=False).encode()
        if b'"$' in data and (b'"$bytes"' in data or b'"$dict"' in data):  # bytes, or a look-alike: carefully
            data = json.dumps(_tagged(value), separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise MalformedMessage(f"the cache cannot be encoded: {exc}") from None
    return data


def decode_value(entry: bytes | Chunks) -> Any:
    """The value of one entry (from :func:`encode_value`, or any SDK that writes the same format)."""
    data = entry if isinstance(entry, bytes) else b"".join(entry)
    try:
        return json.loads(data, object_hook=_untag)
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedMessage(f"a cache entry is not valid: {exc}") from None


ENTRY_OVERHEAD = 64  # what an entry weighs besides its key and bytes: 10 million empty ones are not free


def _size(chunks: Chunks) -> int:
    return sum(len(c) for c in chunks)


def _weight(key: str, chunks: Chunks) -> int:
    return len(key) + ENTRY_OVERHEAD + _size(chunks)


# -- one change, and its parts ----------------------------------------------------------------------
@attrs.frozen
class CacheChange:
    """What one sync says: the whole cache (``full``), or entries to set and keys to delete."""

    full: bool
    set: Mapping[str, Chunks] = attrs.field(factory=dict, repr=lambda v: f"<{len(v)} entries>")
    delete: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        """Bytes of entries it carries."""
        return sum(_size(c) for c in self.set.values())

    def digest(self) -> bytes:
        """A fingerprint of a full change's entries: a plain cache sent again unchanged need not travel."""
        h = hashlib.sha256()  # hardware-accelerated where it matters: 100 MB in ~90 ms here
        for key in sorted(self.set):
            h.update(len(key).to_bytes(4, "big") + key.encode() + _size(self.set[key]).to_bytes(8, "big"))
            for chunk in self.set[key]:
                h.update(chunk)
        return h.digest()

    def parts(self, sync: int, part_bytes: int = PART_BYTES) -> list[CacheSync]:
        """The messages that carry this change as sync number ``sync``, each with at most ``part_bytes``."""
        bodies: list[dict[str, list[bytes]]] = [{}]
        room = part_bytes
        for key, chunks in self.set.items():
            if not _size(chunks):
                bodies[-1].setdefault(key, [])  # an empty entry still travels
                continue
            for chunk in chunks:
                start = 0
                while start < len(chunk):
                    if room == 0:
                        bodies.append({})
                        room = part_bytes
                    take = min(room, len(chunk) - start)
                    piece = chunk if take == len(chunk) else bytes(memoryview(chunk)[start : start + take])
                    bodies[-1].setdefault(key, []).append(piece)
                    start += take
                    room -= take
        deletes = tuple(sorted(self.delete))
        n = len(bodies)
        return [
            CacheSync(sync, i, n, self.full, {k: b"".join(v) for k, v in body.items()}, deletes if i == 0 else ())
            for i, body in enumerate(bodies)
        ]


class Assembly:
    """The receiving side of syncs: parts in, a :class:`CacheChange` out once the last part arrived.

    ``limit`` bounds the bytes one sync may stage (the supervisor's ``cache_max``): a sync past it is
    refused as it arrives, not after it was held in memory.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sync: int | None = None
        self._next = 0
        self._full = False
        self._set: dict[str, list[bytes]] = {}
        self._delete: frozenset[str] = frozenset()
        self._size = 0

    @property
    def staging(self) -> bool:
        """A sync begun and not finished."""
        return self._sync is not None

    def reset(self) -> None:
        self._sync, self._next, self._set, self._size = None, 0, {}, 0

    def add(self, part: CacheSync) -> CacheChange | None:
        """Stage ``part``; the whole change once it was the last. Raises :class:`MalformedMessage` (staging dropped)."""
        if part.part == 0:
            self.reset()
            self._sync, self._full, self._delete = part.sync, part.full, frozenset(part.delete)
        elif part.sync != self._sync or part.part != self._next:
            expected = f"sync {self._sync} part {self._next}" if self._sync is not None else "a part 0"
            self.reset()
            raise MalformedMessage(
                f"cache_sync part out of order: got sync {part.sync} part {part.part}, expected {expected}"
            )
        self._size += part.size + sum(len(k) + ENTRY_OVERHEAD for k in part.set if k not in self._set)
        if self._size > self.limit:
            self.reset()
            raise MalformedMessage(f"cache larger than the supervisor's cache_max ({self.limit} bytes)")
        for key, data in part.set.items():
            self._set.setdefault(key, []).append(data)
        self._next += 1
        if not part.last:
            return None
        change = CacheChange(self._full, {k: tuple(v) for k, v in self._set.items()}, self._delete - self._set.keys())
        self.reset()
        return change


# -- the supervisor's copy --------------------------------------------------------------------------
@attrs.frozen
class CacheImage:
    """The cache as the supervisor keeps it: entries of bytes, never decoded. Immutable: :meth:`apply`
    returns a new image, so a writer thread may read an old one while the next is made."""

    entries: Mapping[str, Chunks] = attrs.field(factory=dict, repr=lambda v: f"<{len(v)} entries>")
    size: int = 0  # what it weighs: every entry's bytes, key and ENTRY_OVERHEAD (what cache_max bounds)

    @classmethod
    def of(cls, entries: Mapping[str, Chunks]) -> CacheImage:
        return cls(dict(entries), sum(_weight(k, c) for k, c in entries.items()))

    def apply(self, change: CacheChange) -> CacheImage:
        if change.full:
            return CacheImage.of(change.set)
        entries = dict(self.entries)
        size = self.size
        for key in change.delete:
            if key in entries:
                size -= _weight(key, entries.pop(key))
        for key, chunks in change.set.items():
            if key in entries:
                size -= _weight(key, entries[key])
            entries[key] = chunks
            size += _weight(key, chunks)
        return CacheImage(entries, size)

    def as_change(self) -> CacheChange:
        """The whole image as a full change (what a worker that lacks it is sent)."""
        return CacheChange(True, self.entries)


# -- the SDKs' side: a mapping that knows what changed -----------------------------------------------
class CacheMap(MutableMapping[str, Any]):
    """A bot's cache as a mapping whose changed keys alone are synced (docs/workers.md "Cache").

    Setting or deleting a key marks it; a value changed in place (``cache["list"].append(x)``) is not
    seen: assign it again or call :meth:`touch`. Values are JSON values and bytes.
    """

    def __init__(self, data: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        self._data: dict[str, Any] = {}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self.update(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not cache_key_ok(key):
            raise TypeError("cache keys are valid Unicode strings of at most 512 characters (no lone surrogates)")
        if key == PLAIN:
            raise TypeError("the key '' holds a plain cache (a whole value): a CacheMap's keys are not empty")
        self._data[key] = value
        self._dirty.add(key)
        self._deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._dirty.discard(key)
        self._deleted.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"CacheMap({self._data!r})"

    def touch(self, key: str) -> None:
        """Mark ``key`` changed (its value was changed in place)."""
        if key in self._data:
            self._dirty.add(key)

    @property
    def changed(self) -> bool:
        return bool(self._dirty or self._deleted)

    def take(self, full: bool) -> CacheChange:
        """Encode what changed (``full``: everything) and forget it was changed."""
        keys = self._data.keys() if full else self._dirty
        change = CacheChange(
            full,
            {k: (encode_value(self._data[k]),) for k in keys},
            frozenset() if full else frozenset(self._deleted),
        )
        self._dirty.clear()
        self._deleted.clear()
        return change

    def mark_all(self) -> None:
        """Everything counts as changed (the supervisor lost track: the next sync is full)."""
        self._dirty = set(self._data)

    def apply(self, change: CacheChange) -> None:
        """A push from the supervisor: the entries decoded into values; nothing counts as changed after."""
        if change.full:
            self._data.clear()
        for key in change.delete:
            self._data.pop(key, None)
        for key, chunks in change.set.items():
            self._data[key] = decode_value(chunks)
        self._dirty.clear()
        self._deleted.clear()

    def spread_plain(self) -> bool:
        """A plain cache (a bot of an earlier version kept the whole value under ``""``) becomes keys when it
        is a dict: a deploy from a plain-cache bot to a CacheMap bot keeps the data under its own keys.
        True if it did: every key then counts as changed (the supervisor still holds the ``""`` form)."""
        value = self._data.get(PLAIN)
        if set(self._data) != {PLAIN} or not isinstance(value, dict) or not all(map(cache_key_ok, value)):
            return False
        self._data = {k: v for k, v in value.items() if k != PLAIN}
        self._dirty = set(self._data)
        self._deleted = set()
        return True


def plain_change(value: Any) -> CacheChange:
    """A plain cache (any JSON value) as a full change: the one entry ``""``."""
    return CacheChange(True, {PLAIN: (encode_value(value),)})


def plain_value(cache: Mapping[str, Any]) -> Any:
    """What a plain cache's ``set_cache`` receives: the value of entry ``""``, or the whole mapping when a
    worker of another kind (a :class:`CacheMap` bot) wrote other keys."""
    if set(cache) <= {PLAIN}:
        return cache.get(PLAIN)
    return dict(cache)
