"""The chaos soak's bot: a real worker (``urban_robot.client.Worker``) that journals what it processes.

The soak's git repository holds ``main.py`` (``from chaos.worker import main; main()``) and
``bot.json`` (``{"version": "3.7", "kind": "good" | "bad_health" | "crash" | "hang"}``), so each
commit is a bot of its own. A good bot:

- connects through the soak's TCP proxy: it asks the proxy's control port for a listener of its own
  (keyed by its identity), so the fault injector can cut, delay or drop exactly this worker's
  connections while the process keeps running;
- processes one synthetic command every few milliseconds, each **only if** ``worker.processing`` is
  true at that instant (the SDK's gate: a renewed lease that has not run out on its own clock), and
  journals it;
- while processing, writes a cache key of its own (``<identity>:<n>``) every so often through
  ``worker.sync_cache`` and journals the key only after the supervisor answered ``accepted: true``;
- of the cluster soak (``cluster.py``, ``CHAOS_HOST`` set by its agent's environment): connects to its own
  agent (``URBAN_ROBOT_URL``, no proxy) and journals itself as ``<host>/<identity>``;
- on SIGUSR1 stops writing and dumps its cache to ``dump-<pid>.json`` (the soak's P3 check);
- of a sharded bot (``hello`` gave it shards), adds its shard group's name to every ``cmd``, ``write``,
  ``start``, ``stop`` and ``dump`` line (``"grp": "shards 0-1"``, the supervisor's name for the group): the
  soak checks every promise per group.

With ``CHAOS_UNSAFE_BOT=1`` (``run.py --unsafe-bot``) the bot processes without asking the SDK: the
soak's own test that its checks catch a worker that ignores the lease.

The journal is one file shared by every worker: one JSON line per event, appended with ``O_APPEND``
in one ``write`` (lines under 4 KiB are not interleaved), timestamps from ``time.monotonic()``
(CLOCK_MONOTONIC: one clock for every process on the machine).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from urban_robot.client import Timeouts, Worker

COMMAND_EVERY = 0.005  # seconds between synthetic commands
WRITE_EVERY = 0.2  # seconds between cache writes while processing


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks (tells a reused pid from the one journaled)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class Journal:
    def __init__(self, path: str, **who: Any) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.who = who

    def write(self, event: str, **data: Any) -> None:
        line = json.dumps({"e": event, "t": time.monotonic(), **self.who, **data}, separators=(",", ":")) + "\n"
        os.write(self.fd, line.encode())  # one write on an O_APPEND fd: atomic for a short line


async def proxy_port(control: int, identity: str) -> int:
    """Ask the soak's proxy for this worker's own listener."""
    stream = await trio.open_tcp_stream("127.0.0.1", control)
    async with stream:
        await stream.send_all(identity.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = await stream.receive_some(64)
            if not chunk:
                raise SystemExit("the chaos proxy closed the control connection")
            answer += chunk
    return int(answer)


class ChaosBot:
    def __init__(self, config: dict[str, Any], journal: Journal, identity: str, dump_dir: Path) -> None:
        self.config = config
        self.journal = journal
        self.identity = identity
        self.dump_dir = dump_dir
        self.cache: dict[str, int] = {}
        self.written = 0
        self.commands = 0
        self.dumped = False
        self.write_lock = trio.Lock()
        self.worker: Worker | None = None

    def epoch(self) -> int | None:
        grant = self.worker.lease.grant if self.worker is not None else None
        return grant.epoch if grant is not None else None

    def group(self) -> dict[str, str]:
        """``{"grp": name}`` of a sharded worker (its shards, from ``hello``); ``{}`` unsharded."""
        shards = self.worker.shards if self.worker is not None else None
        if not shards:
            return {}
        first, last = shards[0], shards[-1]
        return {"grp": f"shard {first}" if first == last else f"shards {first}-{last}"}

    def on_start(self) -> None:
        self.journal.write("start", epoch=self.epoch(), **self.group())

    def on_stop(self, reason: str) -> None:
        self.journal.write("stop", epoch=self.epoch(), reason=reason, **self.group())

    def get_cache(self) -> dict[str, int]:
        return dict(self.cache)

    def set_cache(self, cache: Any) -> None:
        self.cache = dict(cache) if isinstance(cache, dict) else {}

    async def commands_loop(self, worker: Worker) -> None:
        unsafe = os.environ.get("CHAOS_UNSAFE_BOT") == "1"  # the soak's self-test: a bot that ignores its lease
        while True:
            if worker.processing or unsafe:  # the gate, checked immediately before each command
                self.commands += 1
                self.journal.write("cmd", epoch=self.epoch(), n=self.commands, **self.group())
            await trio.sleep(COMMAND_EVERY)

    async def writes_loop(self, worker: Worker) -> None:
        while not self.dumped:
            await worker.processing_started.wait()
            async with self.write_lock:
                if worker.processing and not self.dumped:
                    await self.write_one(worker)
            await trio.sleep(WRITE_EVERY)

    async def write_one(self, worker: Worker) -> None:
        self.written += 1
        key = f"{self.identity}:{self.written}"
        self.cache[key] = self.written
        answer = await worker.sync_cache(dict(self.cache))
        if isinstance(answer, dict) and answer.get("accepted") is True:
            self.journal.write("write", key=key, epoch=self.epoch(), **self.group())

    async def dump_on_signal(self) -> None:
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            async for _ in signals:
                self.dumped = True
                async with self.write_lock:  # a write in flight is journaled (or not) before the dump
                    path = self.dump_dir / f"dump-{os.getpid()}.json"
                    temp = path.with_suffix(".tmp")
                    temp.write_text(json.dumps({"identity": self.identity, "keys": sorted(self.cache), **self.group()}))
                    os.replace(temp, path)
                    self.journal.write("dump", keys=len(self.cache), **self.group())

    async def run(self) -> None:
        if os.environ.get("CHAOS_PROXY_CONTROL"):
            url = f"http://127.0.0.1:{await proxy_port(int(os.environ['CHAOS_PROXY_CONTROL']), self.identity)}"
        else:  # the cluster soak: straight to its host's agent
            url = os.environ["URBAN_ROBOT_URL"]
        worker = Worker(
            url,
            version=self.config["version"],
            health_checks={"modules.utilities": lambda: self.config.get("kind") != "bad_health"},
            get_cache=self.get_cache,
            set_cache=self.set_cache,
            on_start_processing=self.on_start,
            on_stop_processing=self.on_stop,
            # The soak's leases are 2 s: a hung connection must be noticed and redone well within one.
            timeouts=Timeouts(connect=2, handshake=2, ack=2, health=2, close=0.5),
        )
        self.worker = worker
        async with trio.open_nursery() as nursery:

            async def serve(task_status: trio.TaskStatus[None]) -> None:
                await worker.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # shut down by the supervisor: the bot ends with it

            nursery.start_soon(self.dump_on_signal)
            await nursery.start(serve)
            nursery.start_soon(self.commands_loop, worker)
            nursery.start_soon(self.writes_loop, worker)
            await worker.ready()


def main(config_file: Path = Path("bot.json")) -> None:
    config = json.loads(config_file.read_text())
    secret = os.environ["URBAN_ROBOT_SECRET"]
    identity = secret.rpartition(".")[0]
    host = os.environ.get("CHAOS_HOST")
    if host:  # the cluster soak: identities are only unique on their host; the journal names both
        identity = f"{host}/{identity}"
    journal = Journal(
        os.environ["CHAOS_JOURNAL"],
        id=identity,
        pid=os.getpid(),
        ver=config["version"],
    )
    journal.write("boot", kind=config.get("kind", "good"), ticks=start_ticks(os.getpid()))
    if config.get("kind") == "crash":
        raise SystemExit("crashing at start, as bot.json says")  # as a broken import would
    if config.get("kind") == "hang":
        time.sleep(3600)  # stuck before ready: never connects
    bot = ChaosBot(config, journal, identity, Path(os.environ["CHAOS_DIR"]))
    try:
        trio.run(bot.run)
    except KeyboardInterrupt:
        sys.exit(0)
