"""A minimal trio worker for Urban Robot, on the production client ``urban_robot.client.Worker``.

Run it under the supervisor, which sets ``URBAN_ROBOT_URL``, ``URBAN_ROBOT_SECRET`` and
``URBAN_ROBOT_GENERATION``: ``serve(Options(helium_path=..., command=("python", "examples/trio_worker/main.py")))``.

It "logs in" to nothing; a real bot would log in to Discord with ``hello.token`` in ``on_hello`` and call
``worker.ready()`` when Discord says READY. It processes (here: counts ticks into its cache) only while it
holds the lease, and its cache moves to the next version at a hand-over.
"""

from __future__ import annotations

from typing import Any

import trio

from urban_robot.client import Worker

VERSION = "1.0.0"
cache: dict[str, Any] = {"ticks": 0}


def get_cache() -> dict[str, Any]:
    return dict(cache)


def set_cache(received: Any) -> None:
    cache.clear()
    cache.update(received or {})


async def main() -> None:
    worker = Worker(
        version=VERSION,
        health_checks={"modules.utilities": lambda: True},  # a real bot: is the cog loaded?
        get_cache=get_cache,
        set_cache=set_cache,
        on_hello=lambda hello: print("hello: epoch", hello.epoch, flush=True),  # never print hello.token
        on_start_processing=lambda: print("processing", flush=True),
        on_stop_processing=lambda reason: print("stopped:", reason, flush=True),
        auto_ready=True,  # nothing to log in to: ready at once
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(work, worker)
        await worker.run()  # until told to shut down
        nursery.cancel_scope.cancel()  # then the bot exits, as protocol v1 §7 says (its work loop would not end)


async def work(worker: Worker) -> None:
    while True:
        await worker.processing_started.wait()
        while worker.processing:
            cache["ticks"] += 1  # the bot's work, only while it holds the lease
            await worker.sync_cache(cache)  # kept by the supervisor (on disk) once this returns
            await trio.sleep(1)


if __name__ == "__main__":
    trio.run(main)
