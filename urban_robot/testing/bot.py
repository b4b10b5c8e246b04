"""A configurable stand-in bot for deploy tests and benchmarks: one commit, one behaviour.

A test repository's ``main.py`` is just ``from urban_robot.testing.bot import main; main()``; what the
bot does comes from ``bot.json`` in the same commit, so each commit is a different bot:

    {"version": "1.1", "health": {...}, "crash": false, "hang": false, "cache_bytes": 0}

``crash`` exits at start (a broken import), ``hang`` never connects (stuck before ready),
``cache_bytes`` writes a cache that large once it processes (hand-over benchmarks: 1 MB keys of which
``cache_changed`` bytes change before the hand-over, or with ``cache_plain`` one value sent whole). It logs each step on
stdout (its log file) and reconnects when the supervisor goes away, as a real bot would.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import trio

from ._sim import HEALTHY, SimulatedWorker

MAIN_PY = "from urban_robot.testing.bot import main\n\nmain()\n"


def small_objects(size: int) -> dict[str, Any]:
    """About ``size`` bytes of JSON in small objects (the cache that froze the supervisor when it decoded)."""
    return {f"r{n}": [n, "tea at 5", {"u": n % 977}] for n in range(size // 40 + 1)}


async def write_cache_once_processing(
    worker: SimulatedWorker, size: int, changed: int = 0, *, plain: bool = False, small: bool = False
) -> None:
    """Write a ``size``-byte cache as soon as ``worker`` processes (hand-over benchmarks).

    A CacheMap bot: 1 MB keys, synced once; then ``changed`` bytes of keys are rewritten and left for the
    final cache (a delta: the hand-over after that much change). ``plain``: one ``size``-character string
    sent whole at every sync, its final cache too (a bot whose ``get_cache`` returns the whole value)."""
    await worker.wait_for("processing")
    if plain or small:
        worker.plain = True
        await worker.write("blob", small_objects(size) if small else os.urandom(size // 2 + 1).hex()[:size])
        worker._note("cache_written", size)
        return
    step = 1_000_000
    for n, start in enumerate(range(0, size, step)):
        worker.cache[f"k{n}"] = os.urandom(step // 2).hex()[: min(step, size - start)]
    await worker.sync_cache()
    left = changed
    for n in range(0, size // step + 1):
        if left <= 0:
            break
        piece = min(step, left)
        worker.cache[f"k{n}"] = os.urandom(piece // 2 + 1).hex()[:piece]
        left -= piece
    worker._note("cache_changed", changed)


async def _run(config: dict[str, Any]) -> None:
    worker = SimulatedWorker(
        os.environ["URBAN_ROBOT_URL"],
        os.environ["URBAN_ROBOT_SECRET"],
        version=config.get("version", "1.0"),
        health=config.get("health", HEALTHY),
        generation=int(os.environ.get("URBAN_ROBOT_GENERATION", "0")) or None,
        name=os.environ["URBAN_ROBOT_SECRET"].rpartition(".")[0],
        echo=True,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: worker.run(reconnect=True))
        if config.get("cache_bytes"):  # aside: a standby that never processes must still end when told
            write = functools.partial(write_cache_once_processing, plain=bool(config.get("cache_plain")))
            nursery.start_soon(write, worker, int(config["cache_bytes"]), int(config.get("cache_changed") or 0))
        await worker.done.wait()
        nursery.cancel_scope.cancel()


def main(config_file: Path = Path("bot.json")) -> None:
    config = json.loads(config_file.read_text())
    print(f"stand-in bot {config.get('version', '1.0')} in {Path.cwd()}", flush=True)
    if config.get("crash"):
        raise SystemExit("crashing at start, as bot.json says")
    if config.get("hang"):
        time.sleep(3600)
    trio.run(_run, config)
