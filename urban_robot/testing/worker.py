"""``python -m urban_robot.testing.worker``: a simulated bot as a real process.

Reads ``URBAN_ROBOT_URL``, ``URBAN_ROBOT_SECRET`` and ``URBAN_ROBOT_GENERATION``
like any Helium child. ``--cache-bytes N`` makes it write an N-byte cache once
it processes (for hand-over benchmarks).
"""

from __future__ import annotations

import argparse
import os
import sys

import trio

from ._sim import SimulatedWorker
from .bot import write_cache_once_processing


async def main(version: str, cache_bytes: int) -> None:
    worker = SimulatedWorker(
        os.environ["URBAN_ROBOT_URL"],
        os.environ["URBAN_ROBOT_SECRET"],
        version=version,
        generation=int(os.environ.get("URBAN_ROBOT_GENERATION", "0")) or None,
        name=os.environ["URBAN_ROBOT_SECRET"].rpartition(".")[0],
        echo=True,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: worker.run(reconnect=True, task_status=task_status))
        if cache_bytes:  # aside: a standby that never processes must still end when told
            nursery.start_soon(write_cache_once_processing, worker, cache_bytes)
        await worker.done.wait()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--cache-bytes", type=int, default=0)
    args = parser.parse_args()
    try:
        trio.run(main, args.version, args.cache_bytes)
    except KeyboardInterrupt:
        sys.exit(0)
