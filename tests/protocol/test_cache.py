"""The cache as bytes (docs/protocol.md §11): parts, assembly, images and deltas, and a CacheMap."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from urban_robot.protocol import (
    ENTRY_OVERHEAD,
    Assembly,
    CacheChange,
    CacheImage,
    CacheMap,
    CacheSync,
    MalformedMessage,
    decode_value,
    encode_value,
    parse_cache_sync,
)

keys = st.text(max_size=8)
entries = st.dictionaries(keys, st.lists(st.binary(max_size=40), max_size=3).map(tuple), max_size=6)


def joined(mapping: Any) -> dict[str, bytes]:
    return {k: b"".join(v) for k, v in mapping.items()}


@settings(max_examples=200)
@given(entries=entries, deletes=st.frozensets(keys, max_size=3), full=st.booleans(), part_bytes=st.integers(1, 64))
def test_any_change_survives_its_parts_over_the_wire(
    entries: dict[str, tuple[bytes, ...]], deletes: frozenset[str], full: bool, part_bytes: int
) -> None:
    change = CacheChange(full, entries, frozenset() if full else deletes - entries.keys())
    parts = change.parts(3, part_bytes)
    assert all(p.size <= part_bytes for p in parts) and [p.part for p in parts] == list(range(len(parts)))
    assembly = Assembly(limit=10**9)
    results = [assembly.add(parse_cache_sync(p.payload())) for p in parts]  # as the wire carries them
    assert results[:-1] == [None] * (len(parts) - 1)
    got = results[-1]
    assert got is not None and got.full == full and joined(got.set) == joined(entries)
    assert got.delete == change.delete and not assembly.staging


@settings(max_examples=200)
@given(base=entries, later=st.lists(st.tuples(entries, st.frozensets(keys, max_size=3)), max_size=4))
def test_an_image_is_the_dictionary_its_changes_describe(
    base: dict[str, tuple[bytes, ...]], later: list[tuple[dict[str, tuple[bytes, ...]], frozenset[str]]]
) -> None:
    image = CacheImage().apply(CacheChange(True, base))
    expected = joined(base)
    for sets, deletes in later:
        image = image.apply(CacheChange(False, sets, deletes - sets.keys()))
        for key in deletes - sets.keys():
            expected.pop(key, None)
        expected.update(joined(sets))
    weight = sum(len(k) + ENTRY_OVERHEAD + len(v) for k, v in expected.items())
    assert joined(image.entries) == expected and image.size == weight


def test_a_part_out_of_order_or_past_the_limit_is_refused_and_nothing_stays_staged() -> None:
    parts = CacheChange(True, {"k": (b"0123456789",)}).parts(1, part_bytes=4)
    assembly = Assembly(limit=100)
    assembly.add(parts[0])
    with pytest.raises(MalformedMessage, match="out of order"):
        assembly.add(parts[2])
    assert not assembly.staging
    small = Assembly(limit=4 + 1 + ENTRY_OVERHEAD + 2)  # room for the first part (and the key), not the second
    small.add(parts[0])
    with pytest.raises(MalformedMessage, match="cache_max"):
        small.add(parts[1])
    assert not small.staging


@pytest.mark.parametrize(
    "payload",
    [
        {"sync": 0, "part": 0, "parts": 1, "full": True, "set": {}},
        {"sync": 1, "part": 1, "parts": 1, "full": True, "set": {}},
        {"sync": 1, "part": 0, "parts": 1, "full": True, "set": {"k": "not bytes"}},
        {"sync": 1, "part": 0, "parts": 1, "full": True, "set": {"k" * 513: b""}},
        {"sync": 1, "part": 0, "parts": 1, "full": True, "set": {}, "delete": ["k"]},
        {"sync": True, "part": 0, "parts": 1, "full": True, "set": {}},
        {"cache": {"the": "old form"}},
        ["not", "an", "object"],
    ],
)
def test_malformed_parts_are_refused_with_a_reason(payload: Any) -> None:
    with pytest.raises(MalformedMessage):
        parse_cache_sync(payload)


def test_a_cache_map_knows_what_changed_and_a_push_changes_nothing_of_its_own() -> None:
    cache = CacheMap({"a": 1, "b": [1]})
    assert cache.take(full=False) == CacheChange(False, {"a": (b"1",), "b": (b"[1]",)})
    assert not cache.changed
    cache["b"].append(2)  # in place: not seen ...
    assert not cache.changed
    cache.touch("b")  # ... until touched
    cache["c"] = {"x": b"\x00"}
    del cache["a"]
    change = cache.take(full=False)
    assert set(change.set) == {"b", "c"} and change.delete == {"a"}
    other = CacheMap({"stale": 1})
    other.apply(CacheChange(True, change.set))
    assert dict(other) == {"b": [1, 2], "c": {"x": b"\x00"}} and not other.changed
    with pytest.raises(TypeError):
        cache[1] = "x"  # type: ignore[index]


def test_an_entry_that_is_not_json_is_a_clear_error_not_a_crash() -> None:
    with pytest.raises(MalformedMessage, match="not valid"):
        decode_value(b"\xff{")
    with pytest.raises(MalformedMessage, match="cannot be encoded"):
        encode_value({"a set": {1, 2}})
    assert CacheSync(1, 0, 1, True).last


def test_empty_entries_weigh_something_so_ten_million_of_them_pass_cache_max() -> None:
    keys = {f"k{n}": (b"",) for n in range(1000)}
    assembly = Assembly(limit=1000 * ENTRY_OVERHEAD)  # their keys alone take it past the limit
    with pytest.raises(MalformedMessage, match="cache_max"):
        assembly.add(CacheChange(True, keys).parts(1)[0])


def test_a_plain_caches_dict_becomes_keys_of_a_cache_map_and_the_key_empty_is_reserved() -> None:
    cache = CacheMap()
    cache.apply(CacheChange(True, {"": (encode_value({"alice": 1, "bob": b"\x00"}),)}))
    assert cache.spread_plain() and dict(cache) == {"alice": 1, "bob": b"\x00"}
    assert set(cache.take(full=True).set) == {"alice", "bob"}  # sent whole: the supervisor held the '' form
    kept = CacheMap()
    kept.apply(CacheChange(True, {"": (b"[1, 2]",)}))  # not a dict: stays what it was
    assert not kept.spread_plain() and dict(kept) == {"": [1, 2]}
    with pytest.raises(TypeError, match="plain cache"):
        cache[""] = 1
