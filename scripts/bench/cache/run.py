"""Cache benchmark: what a large cache costs the supervisor, which never decodes it (docs/protocol.md §11).

A real supervisor in this process (``UrbanRobot`` with the process manager, as in the failover bench)
and real simulated worker processes (``urban_robot.testing.worker``): one holder and two standbys.

- **Heartbeat answers under a cache of small objects** (``--small-mb``, 64 by default): the holder
  sends a plain cache of that many MB of small JSON objects (the cache that, decoded, once stalled
  the supervisor 19 s). While it is received, kept, written to disk and forwarded to both standbys, a
  probe task in the supervisor's event loop wakes every 2 ms and records how late it woke, and every
  heartbeat the core answers is timed from its arrival at the supervisor's handler to the answer. The
  worst of either bounds how long any worker's heartbeat answer was held up by the cache.
- **Peak RSS during a large hand-over** (``--large-mb``, 100): the holder sends a cache that large
  (1 MB entries), it is kept, persisted and forwarded to two standbys, then the holder is SIGKILLed
  and a (warm) standby takes over. The supervisor process's peak RSS (``ru_maxrss``) is compared with
  the cache's size and with the RSS before the cache.
- **Start-up with a persisted cache** (``--small-mb`` of entries in ``cache.bin``): a fresh Python
  process loads the state directory (``UrbanRobot.restore``) and reports the time and the RSS it
  added; the file is read, never decoded.

The last line printed is one JSON object:
{"heartbeat_answer_max_ms", "loop_lag_max_ms", "small_mb", "peak_rss_mb", "peak_rss_over_cache",
 "large_mb", "startup_s", "startup_rss_mb", "startup_rss_over_cache", ...}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout, for the failover bench's setup

from scripts.bench.failover.run import WORKER, Recorder, setup, standby_ready
from urban_robot.supervisor import PersistCache, Role, Settings

PROBE_EVERY = 0.002
# The holder encodes the whole cache on its own event loop (seconds for 64 MB of small objects): a lease
# long enough that encoding it is not taken for a hang.
PATIENT = Settings(
    token="bench-token", interval=2, grace=30, lease_margin=1, spawn_workers=True, crash_loop_losses=1_000_000
)


def rss_mb() -> float:
    """This process's RSS now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Lag:
    """How late the event loop runs a task that asked to wake every ``PROBE_EVERY`` seconds."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.on = False

    async def run(self) -> None:
        while True:
            before = trio.current_time()
            await trio.sleep(PROBE_EVERY)
            late = trio.current_time() - before - PROBE_EVERY
            if self.on:
                self.worst = max(self.worst, late)


async def all_ready(robot: Any, recorder: Recorder, count: int) -> None:
    """A holder and ``count - 1`` approved standbys: every process spawned (a spawn stalls the loop itself)."""
    await standby_ready(robot, recorder)
    while sum(w.role is Role.STANDBY and w.approved for w in robot.core.clients.values()) < count - 1:
        await recorder.changed.wait()


def time_heartbeats(robot: Any, worst: list[float]) -> None:
    """Wrap the namespace's heartbeat handler: arrival → answer, for every worker."""
    namespace = robot.server.namespace_handlers["/"]
    handler = namespace.on_heartbeat

    async def timed(sid: str, *args: Any) -> Any:
        start = trio.current_time()
        answer = await handler(sid, *args)
        worst.append(trio.current_time() - start)
        return answer

    namespace.on_heartbeat = timed


async def small_cache(mb: float, state_dir: Path) -> dict[str, Any]:
    size = int(mb * 1_000_000)
    command = [*WORKER, "--cache-bytes", str(size), "--cache-small"]
    lag, answers = Lag(), list[float]()
    async with trio.open_nursery() as nursery:
        robot, _, recorder = await setup(nursery, state_dir, command, 3, PATIENT)
        time_heartbeats(robot, answers)
        nursery.start_soon(lag.run)
        await all_ready(robot, recorder, 3)
        lag.on, answers[:] = True, []
        started = trio.current_time()
        await recorder.wait_for(lambda a: isinstance(a, PersistCache), 0)
        await robot.caches_written()
        await trio.sleep(2 * PATIENT.interval)  # the forwarding to both standbys drains meanwhile
        lag.on = False
        took = trio.current_time() - started
        kept = robot.core.cache.size if robot.core.cache is not None else 0
        nursery.cancel_scope.cancel()
    return {
        "heartbeat_answer_max_ms": round(max(answers) * 1000, 2),
        "heartbeat_answers": len(answers),
        "loop_lag_max_ms": round(lag.worst * 1000, 2),
        "small_cache_bytes": kept,
        "small_window_s": round(took, 2),
    }


async def large_handover(mb: float, state_dir: Path) -> dict[str, Any]:
    size = int(mb * 1_000_000)
    command = [*WORKER, "--cache-bytes", str(size)]
    async with trio.open_nursery() as nursery:
        robot, children, recorder = await setup(nursery, state_dir, command, 3, PATIENT)
        await all_ready(robot, recorder, 3)
        before = rss_mb()
        await recorder.wait_for(lambda a: isinstance(a, PersistCache), 0)
        await robot.caches_written()
        await trio.sleep(2 * PATIENT.interval)  # forwarded to both standbys
        lease = robot.core.lease
        assert lease is not None
        mark = len(recorder.actions)
        os.kill(children.processes[lease.identity].pid, signal.SIGKILL)
        await recorder.wait_for(
            lambda a: getattr(a, "event", None) == "cmd" and a.data["t"] == "process_commands", mark
        )
        after = rss_mb()
        kept = robot.core.cache.size if robot.core.cache is not None else 0
        nursery.cancel_scope.cancel()
    peak = peak_rss_mb()
    return {
        "peak_rss_mb": round(peak, 1),
        "rss_before_cache_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "peak_rss_over_cache": round(peak * 1_048_576 / kept, 2),
        "peak_growth_over_cache": round((peak - before) * 1_048_576 / kept, 2),
        "large_cache_bytes": kept,
    }


STARTUP = """
import resource, sys, time, trio
from pathlib import Path
from urban_robot.supervisor import Credentials, Settings, StateStore, UrbanRobot
def rss():
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
async def main():
    store = StateStore(Path(sys.argv[1]))
    robot = UrbanRobot(Settings(token="t"), store, Credentials(b"k" * 32))
    before = rss()
    started = time.perf_counter()
    robot.restore()
    took = time.perf_counter() - started
    print(took, (rss() - before) / 1024, robot.core.cache.size)
trio.run(main)
"""


def startup(mb: float, state_dir: Path) -> dict[str, Any]:
    """A state directory with ``mb`` MB of cache entries (small objects, as a bot encoded them), loaded afresh."""
    from urban_robot.protocol import CacheImage, encode_value
    from urban_robot.supervisor import StateStore
    from urban_robot.testing.bot import small_objects

    size = int(mb * 1_000_000)
    store = StateStore(state_dir)
    store.prepare()
    entries = {f"part{n}": (encode_value(small_objects(1_000_000)),) for n in range(size // 1_000_000)}
    store.save_cache(CacheImage.of(entries), 1)
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", STARTUP, str(state_dir)], capture_output=True, text=True, check=True
        )
        took, grew, kept = out.stdout.split()
        runs.append((float(took), float(grew), int(kept)))
    took, grew, kept = sorted(runs)[1]
    return {
        "startup_s": round(took, 3),
        "startup_rss_mb": round(grew, 1),
        "startup_rss_over_cache": round(grew * 1_048_576 / kept, 2),
        "startup_cache_bytes": kept,
        "cache_file_bytes": store.cache_path.stat().st_size,
    }


async def main(small_mb: float, large_mb: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        result: dict[str, Any] = {"small_mb": small_mb, "large_mb": large_mb}
        result.update(await small_cache(small_mb, Path(tmp) / "small"))
        result.update(await large_handover(large_mb, Path(tmp) / "large"))
        result.update(startup(small_mb, Path(tmp) / "startup"))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-mb", type=float, default=64)
    parser.add_argument("--large-mb", type=float, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    started = time.monotonic()
    result = trio.run(main, args.small_mb, args.large_mb)
    print(
        f"{args.small_mb:g} MB of small objects: worst heartbeat answer {result['heartbeat_answer_max_ms']} ms "
        f"({result['heartbeat_answers']} answers), worst event-loop lag {result['loop_lag_max_ms']} ms"
    )
    print(
        f"{args.large_mb:g} MB kept, persisted, forwarded to two standbys, failover: peak RSS "
        f"{result['peak_rss_mb']} MB = {result['peak_rss_over_cache']}x the cache "
        f"(before the cache {result['rss_before_cache_mb']} MB)"
    )
    print(
        f"start-up with {args.small_mb:g} MB persisted: {result['startup_s']} s, +{result['startup_rss_mb']} MB "
        f"RSS = {result['startup_rss_over_cache']}x the cache (median of 3)"
    )
    print(json.dumps(result))
