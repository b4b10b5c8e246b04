"""``python -m urban_robot.testing.worker``: the rehearsal bot, a simulated bot as a real process.

Reads ``URBAN_ROBOT_URL``, ``URBAN_ROBOT_SECRET`` and ``URBAN_ROBOT_GENERATION`` like any Helium child,
reconnects when the supervisor goes away (a restarted supervisor adopts it), and logs each step on stdout
(the worker's log file). It never logs in to Discord.

What it does comes from ``rehearsal.toml`` in its working directory — the checkout, or a deploy's release
directory — so a commit of the bot's repository that changes that file rehearses a bad deploy::

    version = "1.1"                      # what it identifies as (default: --version, else 1.0)
    requires = ["tinydep"]               # modules it imports at start: missing ones crash it, as a real bot
    crash = "broken on purpose"          # exit 1 at start with this message (a broken import, say)
    hang = true                          # start but never connect (stuck before ready)
    failing_cogs = ["modules.music"]     # report these cogs false in the health check (vital ones fail it)
    failing_shards = [2, 3]              # ... only in a worker running any of these shards (a sharded bot's
                                         # rollout passing in some groups, failing in others); failing_cogs
                                         # defaults to the vital modules.utilities then
    cache_bytes = 0                      # write a cache this large once it processes (hand-over benchmarks)
    journal = "/tmp/journal"             # append "<unix time> <identity> processing|idle" on each change
                                         # (a sharded bot's workers add their shards: "... processing 0-1")

``--cache-bytes N`` is ``cache_bytes`` from the command line. Without the file it is a healthy bot.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import trio

from ._sim import HEALTHY, SimulatedWorker
from .bot import write_cache_once_processing

REHEARSAL_FILE = "rehearsal.toml"
JOURNAL_EVERY = 0.02  # seconds between looks at whether it processes (a lease lapses without an event)


def rehearsal(directory: Path = Path(".")) -> dict[str, Any]:
    """The behaviour ``rehearsal.toml`` in ``directory`` asks for ({} without one)."""
    path = directory / REHEARSAL_FILE
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}


def health_of(config: dict[str, Any]) -> Any:
    """The health report ``config`` asks for: a report, or (``failing_shards``) a function of the worker's shards."""
    failing = [str(cog) for cog in config.get("failing_cogs", [])]
    if "failing_shards" not in config:
        return health(failing)
    bad_shards = {int(shard) for shard in config["failing_shards"]}

    def report(shards: list[int] | None) -> dict[str, Any]:
        return health(failing or ["modules.utilities"]) if bad_shards & set(shards or ()) else HEALTHY

    return report


def health(failing: list[str]) -> dict[str, Any]:
    if not failing:
        return HEALTHY
    cogs: dict[str, bool] = {"modules.utilities": True, **dict.fromkeys(failing, False)}
    return {"OK": False, "percent": 100 * sum(cogs.values()) / len(cogs), "cogs": cogs}


async def journal(worker: SimulatedWorker, path: str, name: str) -> None:
    """Append each change of whether ``worker`` processes, with the wall-clock time (the restart benchmark)."""
    was = None
    while True:
        now = worker.processing
        if now != was:
            shards = f" {worker.shards[0]}-{worker.shards[-1]}" if worker.shards else ""
            with open(path, "a") as file:
                file.write(f"{time.time():.6f} {name} {'processing' if now else 'idle'}{shards}\n")
            was = now
        await trio.sleep(JOURNAL_EVERY)


async def main(config: dict[str, Any]) -> None:
    name = os.environ["URBAN_ROBOT_SECRET"].rpartition(".")[0]
    worker = SimulatedWorker(
        os.environ["URBAN_ROBOT_URL"],
        os.environ["URBAN_ROBOT_SECRET"],
        version=str(config.get("version", "1.0")),
        generation=int(os.environ.get("URBAN_ROBOT_GENERATION", "0")) or None,
        health=health_of(config),
        name=name,
        echo=True,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: worker.run(reconnect=True))
        if config.get("cache_bytes"):  # aside: a standby that never processes must still end when told
            write = functools.partial(
                write_cache_once_processing,
                plain=bool(config.get("cache_plain")),
                small=bool(config.get("cache_small")),
            )
            nursery.start_soon(write, worker, int(config["cache_bytes"]), int(config.get("cache_changed") or 0))
        if config.get("journal"):
            nursery.start_soon(journal, worker, str(config["journal"]), name)
        await worker.done.wait()
        nursery.cancel_scope.cancel()


def start(config: dict[str, Any]) -> None:
    """Do what the rehearsal asks at start: import, crash or hang; then run."""
    print(f"rehearsal bot in {Path.cwd()}: {config or 'healthy'}", flush=True)
    for module in config.get("requires", []):
        importlib.import_module(module)  # ModuleNotFoundError, as a real bot whose dependency is missing
    if config.get("crash"):
        raise SystemExit(f"crashing at start, as {REHEARSAL_FILE} says: {config['crash']}")
    if config.get("hang"):
        print("hanging before it connects, as rehearsal.toml says", flush=True)
        time.sleep(3600)
    trio.run(main, config)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version")
    parser.add_argument("--cache-bytes", type=int, default=0)
    parser.add_argument("--cache-plain", action="store_true", help="one value sent whole at every sync")
    parser.add_argument("--cache-small", action="store_true", help="a plain cache of small objects")
    args = parser.parse_args()
    settings = rehearsal()
    if args.version:
        settings.setdefault("version", args.version)
    if args.cache_bytes:
        settings["cache_bytes"] = args.cache_bytes
        settings["cache_plain"] = args.cache_plain
        settings["cache_small"] = args.cache_small
    try:
        start(settings)
    except KeyboardInterrupt:
        sys.exit(0)
