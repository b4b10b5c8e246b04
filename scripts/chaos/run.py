"""Chaos soak: a real supervisor, real workers, a real git repository, and a fault injector.

The supervisor is its own process (``python -m urban_robot`` with the soak's urban-robot.toml), so
it can be SIGKILLed and restarted; its children live in their own sessions and the restarted
supervisor adopts them. Its workers (``--workers``: one running, the
rest hot standbys) run the bot of the commit they were spawned from (``worker.py``): each journals
the commands it processes and the cache writes the supervisor acknowledged, on one monotonic clock,
to one shared file. They reach the supervisor through a TCP proxy (``proxy.py``); notifications go
to a fake Discord (``fake_discord.py``).

For ``--seconds``, on a schedule fixed by ``--seed``:

- good and bad commits are pushed to the bot's upstream repository and announced by a signed
  GitHub webhook: bad ones fail their health check (vital cog false), crash at start, or hang
  before ``ready``; every commit has a version of its own;
- faults, each kind once per round in a shuffled order: SIGKILL a worker; SIGSTOP one, SIGCONT it
  later (a hang); partition one from the supervisor at the proxy, heal it later (the process keeps
  running and must fence itself); delay the proxy's traffic; drop a worker's connections; SIGKILL
  the supervisor and start it again; answer every notification with 429 for a while.

Then the faults are undone, the system settles, the final holder dumps its cache, the supervisor
is stopped, every process it ever ran is killed, and ``checker.py`` judges the journal (P1 no
overlapping processing, P2 time without a processor, P3 no acknowledged write lost, P4 no bad
commit processed, epochs only increasing, also across supervisor restarts in state.json).

The last line printed is one JSON object:
{"duration_s", "faults": {kind: count}, "overlaps", "no_processor_total_s", "no_processor_share",
 "no_processor_longest_s", "no_processor_p99_s", "no_processor_by_cause", "writes_checked", "writes_lost",
 "bad_commits_processed", ...}
``no_processor_share`` is a fraction (0.02 = 2% of ``duration_s``); ``no_processor_by_cause`` puts each stretch
down to the fault (``kind:holder``, ``kind:standby``) or commit the soak journaled last before it began.

``--shards N --shards-per-worker K`` runs a sharded bot: ceil(N/K) shard groups of ``--workers`` workers each
(one running, the rest its standbys). Each fault that aims at a worker picks the next group in turn (a seeded
rotation), then its holder or a standby; every check runs per group (``checker.check_groups``): the overall keys
are the sums (``no_processor_*``: every group's stretches; the share is of ``duration_s`` times the groups), and
``groups`` adds {name: {"overlaps", "writes_lost", "writes_checked", "no_processor_share", ...}}.
Exit status 1 on any violation (each is printed), 2 if the soak itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

SCRIPTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SCRIPTS))

from bench.deploy.run import SECRET, Repos, git, push_webhook  # noqa: E402
from chaos import answers, checker  # noqa: E402
from chaos.fake_discord import FakeDiscord  # noqa: E402
from chaos.proxy import Proxy  # noqa: E402
from chaos.worker import start_ticks  # noqa: E402

from urban_robot.protocol import PLAIN, ShardPlan, decode_value  # noqa: E402
from urban_robot.supervisor._store import peek_cache  # noqa: E402
from urban_robot.testing.fake_discord import DEFAULT_TOKEN  # noqa: E402
from urban_robot.testing.traffic import OverHTTP, Profile, Traffic  # noqa: E402

FAULTS = ("kill_worker", "hang_worker", "partition", "delay", "drop", "kill_supervisor", "notify_429")
BAD_KINDS = ("bad_health", "crash", "hang")
MAIN_PY = "from chaos.worker import main\n\nmain()\n"
DISCORD_MAIN_PY = "from chaos.discord_worker import main\n\nmain()\n"
EXAMPLE_MODULES = SCRIPTS.parent / "examples" / "discord_bot" / "modules"
# What discord_worker.py answers (urban_robot.testing.traffic), and how fast the soak sends it.
DISCORD_PROFILE = Profile(
    ping="!ping", slash=("hello", {}), button="chaos:wave", select=("chaos:colour", ("red",)), join=True, loop="tick"
)
DISCORD_RATE = 20.0
STARTUP_TIMEOUT = 60.0
SETTLE_TIMEOUT = 60.0


class ChaosRepos(Repos):
    """The deploy benchmark's repositories, holding the chaos bot instead of the stand-in bot."""

    discord_py = False  # the discord.py bot (discord_worker.py), with the example's modules.utilities cog

    async def commit(self, message: str, **bot: Any) -> str:
        (self.work / "main.py").write_text(DISCORD_MAIN_PY if self.discord_py else MAIN_PY)
        if self.discord_py:
            shutil.copytree(
                EXAMPLE_MODULES, self.work / "modules", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        (self.work / "bot.json").write_text(json.dumps(bot))
        await git(self.work, "add", "-A")
        await git(self.work, "commit", "-q", "-m", message)
        await git(self.work, "push", "-q", "origin", "HEAD:main")
        return await git(self.work, "rev-parse", "HEAD")


# -- the schedule: every random choice about *what* happens *when* comes from --seed ----------------------------
def fault_schedule(seconds: float, rng: random.Random) -> list[tuple[float, str, dict[str, Any]]]:
    """Rounds of every fault kind in a shuffled order, 2.5-5.5 s apart, with their parameters."""
    out: list[tuple[float, str, dict[str, Any]]] = []
    at = rng.uniform(2, 4)
    while True:
        for kind in rng.sample(FAULTS, len(FAULTS)):
            if at >= seconds - 3:
                return out
            params = {
                "holder": rng.random() < 0.6,  # aim at the lease holder, else at another worker
                "duration": {
                    "hang_worker": rng.uniform(0.3, 4.0),
                    "partition": rng.uniform(1.0, 5.0),
                    "delay": rng.uniform(2.0, 6.0),
                    "kill_supervisor": rng.uniform(0.2, 2.0),
                    "notify_429": rng.uniform(3.0, 10.0),
                }.get(kind, 0.0),
                "latency": rng.uniform(0.02, 0.3),
                "everyone": rng.random() < 0.5,  # a delay for every worker, else for one
            }
            out.append((at, kind, params))
            at += rng.uniform(2.5, 5.5)


def commit_schedule(seconds: float, rng: random.Random) -> list[tuple[float, str]]:
    """A good commit, then a bad one, and so on (each bad kind once per round), 6-10 s apart."""
    out: list[tuple[float, str]] = []
    at = rng.uniform(3, 5)
    while True:
        for bad in rng.sample(BAD_KINDS, len(BAD_KINDS)):
            for kind in ("good", bad):
                if at >= seconds - 5:
                    return out
                out.append((at, kind))
                at += rng.uniform(6, 10)


# -- processes -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int, ticks: int | None) -> bool:
    return ticks is not None and start_ticks(pid) == ticks


def signal_pid(pid: int, ticks: int | None, sig: int) -> bool:
    """Signal ``pid`` only if it is still the process we mean (not a reused pid)."""
    if not alive(pid, ticks):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False


class Supervisor:
    """The supervisor process: start, SIGKILL, restart, stop."""

    def __init__(self, tmp: Path, config: Path, env: dict[str, str], port: int) -> None:
        self.argv = [sys.executable, "-m", "urban_robot", "--config", str(config)]
        self.env = env
        self.port = port
        self.log = tmp / "supervisor.log"
        self.process: trio.Process | None = None
        self.starts = 0
        self.lock = trio.Lock()

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.starts += 1
        with trio.fail_after(30):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the supervisor exited with {self.process.returncode}: see {self.log}")
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(20):
            await self.process.wait()
            return
        await self.kill()


class FakeDiscordProcess:
    """``python -m urban_robot.testing.fake_discord``: the Discord the discord.py workers log in to."""

    def __init__(self, tmp: Path) -> None:
        self.log = tmp / "fake-discord.log"
        self.process: trio.Process | None = None
        self.url = ""

    async def start(self) -> None:
        command = [sys.executable, "-m", "urban_robot.testing.fake_discord", "--port", "0", "--print-port"]
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [*command, "--heartbeat-interval", "5"], stdout=subprocess.PIPE, stderr=log, start_new_session=True
            )
        assert self.process.stdout is not None
        line = b""
        with trio.fail_after(20):
            while not line.endswith(b"\n"):
                chunk = await self.process.stdout.receive_some(64)
                if not chunk:
                    raise RuntimeError(f"the fake Discord exited before printing its port: see {self.log}")
                line += chunk
        self.url = f"http://127.0.0.1:{int(line)}"

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


# -- what the injector reads about the system ----------------------------------------------------------------
def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Journaled:
    """What a soak reads from the workers' shared journal (``journal``), and the final holder's cache dump (written
    to ``dumps`` by worker.py on SIGUSR1). Shared by this soak and the cluster soak (``cluster.py``)."""

    journal: Path
    dumps: Path

    # -- reading ---------------------------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        return checker.read_journal(self.journal) if self.journal.exists() else []

    def journal_end(self) -> int:
        return self.journal.stat().st_size if self.journal.exists() else 0

    async def wait_journal(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, offset: int | None = None
    ) -> dict[str, Any]:
        """The first journal line from ``offset`` (default: now) on that matches (read as the file grows)."""
        offset = self.journal_end() if offset is None else offset
        with trio.fail_after(timeout):
            while True:
                await trio.sleep(0.05)
                if not self.journal.exists():
                    continue
                with self.journal.open("rb") as f:
                    f.seek(offset)
                    data = f.read()
                complete = data[: data.rfind(b"\n") + 1]
                offset += len(complete)
                for line in complete.splitlines():
                    event = json.loads(line)
                    if predicate(event):
                        return event

    async def final_dump(self, group: str | None = None) -> tuple[str, set[str]]:
        """Let the system settle, then have the final holder (of shard group ``group``) dump its cache;
        (identity, keys)."""
        settled = time.monotonic()

        def mine(e: dict[str, Any]) -> bool:
            return group is None or e.get("grp") == group

        await self.wait_journal(lambda e: e["e"] == "write" and e["t"] > settled and mine(e), SETTLE_TIMEOUT)
        for _ in range(5):
            last = await self.wait_journal(lambda e: e["e"] == "cmd" and mine(e), 10)
            asked, offset = time.monotonic(), self.journal_end()
            if not signal_pid(last["pid"], start_ticks(last["pid"]), signal.SIGUSR1):
                continue
            dump = await self.wait_journal(lambda e, pid=last["pid"]: e["e"] == "dump" and e["pid"] == pid, 10, offset)
            others = [
                e
                for e in self.events()
                if e["e"] == "cmd" and mine(e) and e["id"] != last["id"] and asked <= e["t"] <= dump["t"]
            ]
            if not others:  # nobody else took over while it dumped: it is the final holder
                data = json.loads((self.dumps / f"dump-{last['pid']}.json").read_text())
                return last["id"], set(data["keys"])
        raise RuntimeError(f"no stable holder{f' of {group}' if group else ''} to dump the final cache from")


class Soak(Journaled):
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.rng = random.Random(args.seed)  # the schedule
        self.pick = random.Random(args.seed + 1)  # choices among whatever runs at that moment
        self.repos = ChaosRepos(tmp)
        self.state_dir = tmp / "state"
        self.journal = tmp / "journal.jsonl"
        self.dumps = tmp / "dumps"
        self.sup_port = free_port()
        self.proxy = Proxy(self.sup_port)
        self.discord = FakeDiscord()
        self.discord_py = args.discord_py
        self.repos.discord_py = args.discord_py
        self.fake = FakeDiscordProcess(tmp) if args.discord_py else None
        self.traffic: Traffic | None = None
        self.wall_epochs: list[tuple[float, int]] = []  # (time.time(), epoch): answers carry wall-clock times
        self.faults: Counter[str] = Counter()
        self.commits: Counter[str] = Counter()
        self.bad_versions: set[str] = set()
        self.webhooks_missed = 0
        self.epochs: list[tuple[float, int]] = []  # (monotonic, epoch) from state.json
        self.state_epoch_problems: list[str] = []
        self.stopped: dict[int, int | None] = {}  # SIGSTOPped pids, to SIGCONT whatever happens
        self.supervisor: Supervisor | None = None
        self.notes: list[str] = []
        # A sharded bot: its groups' names, in order ([] unsharded), and the next group a fault aims at.
        self.plan = ShardPlan(args.shards, args.shards_per_worker) if args.shards else None
        self.groups = [g.name for g in self.plan.groups] if self.plan is not None else []
        self.next_group = random.Random(args.seed + 2).randrange(len(self.groups)) if self.groups else 0
        self.group_epochs: dict[str, int] = {}  # each group's last epoch seen in state.json

    # -- set-up --------------------------------------------------------------------------------------------
    async def set_up(self) -> None:
        self.dumps.mkdir()
        slow_login = ""
        if self.fake is not None:  # a discord.py worker logs in to the fake before its health check
            slow_login = "health_timeout = 15\n"
        sharding = ""
        if self.plan is not None:
            sharding = f"shard_count = {self.plan.shard_count}\nshards_per_worker = {self.plan.shards_per_worker}"
        await self.repos.create()
        await self.repos.commit("first", version="1.0", kind="good")
        await git(self.tmp, "clone", "-q", str(self.repos.upstream), str(self.repos.managed))
        config = self.tmp / "urban-robot.toml"
        config.write_text(
            f"""
helium_path = "{self.repos.managed}"
command = ["{sys.executable}", "main.py"]
port = {self.sup_port}
state_dir = "{self.state_dir}"
standbys = {self.args.workers - 1}
branch = "main"
log_level = "INFO"
{sharding}
deploy_timeout = {30 if self.fake else 10}  # a commit that hangs before ready must not hold up the soak for 180 s

[workers]
interval = 1
grace = 2
lease_margin = 0.5
frozen_limit = 1.5  # the defaults' shape (interval + 1.5, interval + 7) squeezed under this lease (3 s + 0.5)
# A partitioned child is killed (released on its exit) before its lease would run out; 3 s, not 2: with 2 s a
# child stalled by the soak's own load on two cores was killed again and again until the soak could not settle.
hang_limit = 3
{slow_login or "health_timeout = 5"}
crash_loop_losses = 0  # off: the soak kills workers on purpose
restart_backoff = 0.2
restart_backoff_max = 2
stop_timeout = 2

[notify]
channel = 123456789
level = "WARNING"
api_url = "{self.discord.url}"

[secrets]
bot_token = "{DEFAULT_TOKEN if self.fake else "chaos-bot-token"}"
webhook_secret = "{SECRET.decode()}"
admin_token = "{secrets.token_urlsafe(24)}"
"""
        )
        env = dict(os.environ)
        env.update(
            {
                "CHAOS_JOURNAL": str(self.journal),
                "CHAOS_DIR": str(self.dumps),
                "CHAOS_PROXY_CONTROL": str(self.proxy.control_port),
                "CHAOS_UNSAFE_BOT": "1" if self.args.unsafe_bot else "0",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")])),
            }
        )
        for name in ("BOT_TOKEN", "HELIUM_PATH", "LOGGING_CHANNEL", "URBAN_ROBOT_CONFIG"):
            env.pop(name, None)  # the soak's toml decides
        if self.fake is not None:
            env["URBAN_ROBOT_DISCORD_URL"] = self.fake.url  # attach() points discord.py at the fake
        self.supervisor = Supervisor(self.tmp, config, env, self.sup_port)
        await self.supervisor.start()

    # -- targets -------------------------------------------------------------------------------------------
    def workers(self, group: int | None = None) -> dict[str, tuple[int, int | None]]:
        """Identity -> (pid, start ticks) of the supervisor's children that are alive now (of shard group
        ``group`` only, if given)."""
        registry = read_json(self.state_dir / "children.json") or {}
        return {
            identity: (int(info["pid"]), info.get("start_ticks"))
            for identity, info in registry.items()
            if alive(int(info["pid"]), info.get("start_ticks")) and group in (None, info.get("group", 0))
        }

    def holder(self, group: int | None = None) -> str | None:
        """The lease holder in state.json (a sharded bot's: of shard group ``group``)."""
        state = read_json(self.state_dir / "state.json") or {}
        if group is not None and self.groups:
            groups = state.get("groups")
            state = (groups.get(self.groups[group]) if isinstance(groups, dict) else None) or {}
        holder = state.get("holder") or {}
        return holder.get("identity") if isinstance(holder, dict) else None

    def aim(self) -> int | None:
        """The shard group the next fault aims at (in turn), or None unsharded."""
        if not self.groups:
            return None
        group, self.next_group = self.next_group, (self.next_group + 1) % len(self.groups)
        return group

    async def target(
        self, want_holder: bool, routed: bool = False, group: int | None = None
    ) -> tuple[str, int, int | None] | None:
        """A worker to hurt: the holder or another one (routed: one that has a proxy route; sharded: of ``group``)."""
        with trio.move_on_after(3):
            while True:
                workers = self.workers(group)
                if routed:
                    workers = {i: w for i, w in workers.items() if i in self.proxy.routes}
                holder = self.holder(group)
                if want_holder and holder in workers:
                    assert holder is not None
                    return (holder, *workers[holder])
                others = sorted(i for i in workers if i != holder)
                if others:
                    identity = self.pick.choice(others)
                    return (identity, *workers[identity])
                await trio.sleep(0.1)
        return None

    # -- faults --------------------------------------------------------------------------------------------
    def mark(
        self, kind: str, target: tuple[str, int, int | None] | str | None = None, group: int | None = None
    ) -> None:
        """Journal a fault (or commit) the moment it takes effect: the checker puts each stretch without a
        processor down to the last one before it. ``target``: the worker hurt (said as holder or standby);
        ``group``: the shard group it is in (sharded; the mark then counts for that group only)."""
        if isinstance(target, tuple):
            target = "holder" if target[0] == self.holder(group) else "standby"
        line = {"e": "chaos", "t": time.monotonic(), "id": "soak", "kind": f"{kind}:{target}" if target else kind}
        if group is not None and self.groups:
            line["group"] = self.groups[group]
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())  # one write on O_APPEND, as the workers do
        finally:
            os.close(fd)

    async def inject(self, kind: str, params: dict[str, Any]) -> None:
        action = getattr(self, f"_{kind}")
        if await action(params):
            self.faults[kind] += 1
        else:
            self.notes.append(f"{kind}: no target found")

    async def _kill_worker(self, params: dict[str, Any]) -> bool:
        group = self.aim()
        target = await self.target(params["holder"], group=group)
        if target is None:
            return False
        self.mark("kill_worker", target, group)
        return signal_pid(target[1], target[2], signal.SIGKILL)

    async def _hang_worker(self, params: dict[str, Any]) -> bool:
        group = self.aim()
        target = await self.target(params["holder"], group=group)
        if target is None:
            return False
        self.mark("hang_worker", target, group)
        if not signal_pid(target[1], target[2], signal.SIGSTOP):
            return False
        self.stopped[target[1]] = target[2]
        try:
            await trio.sleep(params["duration"])
        finally:
            signal_pid(target[1], target[2], signal.SIGCONT)
            self.stopped.pop(target[1], None)
        return True

    async def _partition(self, params: dict[str, Any]) -> bool:
        group = self.aim()
        target = await self.target(params["holder"], routed=True, group=group)
        if target is None:
            return False
        self.mark("partition", target, group)
        if not self.proxy.partition(target[0]):
            return False
        try:
            await trio.sleep(params["duration"])
        finally:
            self.proxy.heal(target[0])
        return True

    async def _delay(self, params: dict[str, Any]) -> bool:
        identity, group = None, None
        if not params["everyone"]:
            group = self.aim()
            target = await self.target(params["holder"], routed=True, group=group)
            if target is None:
                return False
            identity = target[0]
        self.mark("delay", target if identity else "everyone", group)
        self.proxy.set_delay(identity, params["latency"])
        try:
            await trio.sleep(params["duration"])
        finally:
            self.proxy.set_delay(identity, 0.0)
        return True

    async def _drop(self, params: dict[str, Any]) -> bool:
        group = self.aim()
        with trio.move_on_after(3):
            while True:  # a worker between two connections has nothing to drop: try again shortly
                target = await self.target(params["holder"], routed=True, group=group)
                holder = target is not None and target[0] == self.holder(group)
                if target is not None and self.proxy.drop(target[0]) > 0:
                    self.mark("drop", "holder" if holder else "standby", group)
                    return True
                await trio.sleep(0.1)
        return False

    async def _kill_supervisor(self, params: dict[str, Any]) -> bool:
        assert self.supervisor is not None
        async with self.supervisor.lock:
            self.mark("kill_supervisor")
            await self.supervisor.kill()
            try:
                await trio.sleep(params["duration"])
            finally:
                with trio.CancelScope(shield=True):
                    await self.supervisor.start()
        return True

    async def _notify_429(self, params: dict[str, Any]) -> bool:
        self.mark("notify_429")
        self.discord.flood(params["duration"])
        return True

    # -- commits ---------------------------------------------------------------------------------------------
    async def push(self, http: httpx.AsyncClient, n: int, kind: str) -> None:
        version = f"{n + 1}.0"
        if kind != "good":
            self.bad_versions.add(version)
        commit = await self.repos.commit(f"{kind} {n}", version=version, kind=kind)
        self.commits[kind] += 1
        with trio.move_on_after(15):
            while True:
                try:
                    status = await push_webhook(http, f"http://127.0.0.1:{self.sup_port}", commit, f"chaos-{n}")
                    if status == 202:
                        self.mark(f"commit_{kind}")
                        return
                except httpx.HTTPError:
                    pass  # the supervisor is down right now: GitHub would redeliver, so do we
                await trio.sleep(0.5)
        self.webhooks_missed += 1

    # -- watchers --------------------------------------------------------------------------------------------
    async def watch_state(self) -> None:
        """state.json's epoch, sampled: it never goes down, across supervisor restarts too."""
        while True:
            state = read_json(self.state_dir / "state.json")
            if isinstance(state, dict) and isinstance(state.get("epoch"), int):
                epoch = state["epoch"]
                if self.epochs and epoch < self.epochs[-1][1]:
                    self.state_epoch_problems.append(f"state.json epoch went from {self.epochs[-1][1]} to {epoch}")
                if not self.epochs or epoch != self.epochs[-1][1]:
                    self.epochs.append((time.monotonic(), epoch))
                    self.wall_epochs.append((time.time(), epoch))
                groups = state.get("groups")
                for name, group in (
                    groups.items() if isinstance(groups, dict) else ()
                ):  # sharded: each group's epoch never goes down either
                    epoch = group.get("epoch") if isinstance(group, dict) else None
                    if not isinstance(epoch, int):
                        continue
                    before = self.group_epochs.get(name)
                    if before is not None and epoch < before:
                        self.state_epoch_problems.append(f"state.json: {name}'s epoch went from {before} to {epoch}")
                    self.group_epochs[name] = epoch
            await trio.sleep(0.2)

    # -- the run ---------------------------------------------------------------------------------------------
    async def chaos(self, http: httpx.AsyncClient) -> None:
        seconds = self.args.seconds
        faults = fault_schedule(seconds, self.rng)
        commits = commit_schedule(seconds, self.rng)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for at, kind, params in faults:

                async def fault(at: float = at, kind: str = kind, params: dict[str, Any] = params) -> None:
                    await trio.sleep_until(start + at)
                    await self.inject(kind, params)

                nursery.start_soon(fault)
            for n, (at, kind) in enumerate(commits, 1):

                async def commit(at: float = at, kind: str = kind, n: int = n) -> None:
                    await trio.sleep_until(start + at)
                    await self.push(http, n, kind)

                nursery.start_soon(commit)
            await trio.sleep_until(start + seconds)
            nursery.cancel_scope.cancel()  # faults still running end now; their finally blocks undo them

    def undo_everything(self) -> None:
        self.proxy.heal_all()
        self.discord.rate_limited_until = 0.0
        for pid, ticks in list(self.stopped.items()):
            signal_pid(pid, ticks, signal.SIGCONT)
        self.stopped.clear()

    async def run(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=15) as http, trio.open_nursery() as nursery:
            await nursery.start(self.proxy.run)
            self.discord.start()
            if self.fake is not None:
                await self.fake.start()
                self.traffic = Traffic(OverHTTP(http, self.fake.url), DISCORD_PROFILE, rate=DISCORD_RATE)
                nursery.start_soon(self.traffic.run)  # pings make the holder journal "cmd": the start is seen
            await self.set_up()
            nursery.start_soon(self.watch_state)
            first = await self.wait_journal(lambda e: e["e"] == "cmd", STARTUP_TIMEOUT)
            print(
                f"soak: {first['id']} processes; chaos for {self.args.seconds:g} s (seed {self.args.seed})", flush=True
            )
            since = time.monotonic()
            self.started_wall = time.time()
            await self.chaos(http)
            until = time.monotonic()
            self.undo_everything()
            assert self.supervisor is not None
            if self.groups:  # every group's final holder dumps its cache, group by group
                finals = {}
                for group in self.groups:
                    finals[group] = await self.final_dump(group)
                persisted = {g: await self.supervisor_cache(keys, g) for g, (_, keys) in finals.items()}
                await self.supervisor.stop()
                nursery.cancel_scope.cancel()
                return self.report_groups(since, until, finals, persisted)
            holder, dump = await self.final_dump()
            supervisor_cache = await self.supervisor_cache(dump)
            answered = await self.judge_answers(http)
            await self.supervisor.stop()
            nursery.cancel_scope.cancel()
        return self.report(since, until, holder, dump, supervisor_cache, answered)

    async def judge_answers(self, http: httpx.AsyncClient) -> answers.AnswerVerdict | None:
        """With --discord-py: stop the traffic, give the last items time to be answered, and judge the answers."""
        if self.traffic is None or self.fake is None:
            return None
        self.traffic.stop()
        await trio.sleep(2.0)  # the answers to the last items (a second answer, if any, too) arrive
        records = (await http.get(f"{self.fake.url}/_fake/records")).json()
        items = [item for item in self.traffic.items if item.sent_at >= self.started_wall]
        return answers.judge(items, records, DISCORD_PROFILE, self.wall_epochs)

    async def supervisor_cache(self, dump: set[str], group: str | None = None) -> set[str] | None:
        """The supervisor's persisted cache.bin (shard group ``group``'s: cache.shards-0-1.bin), once it holds the
        final holder's cache (or after 5 s)."""
        keys: set[str] | None = None
        name = f"cache.{group.replace(' ', '-')}.bin" if group else "cache.bin"
        with trio.move_on_after(5):
            while True:
                image = peek_cache(self.state_dir / name)
                cache = decode_value(image.entries[PLAIN]) if image is not None and PLAIN in image.entries else None
                keys = set(cache) if isinstance(cache, dict) else None
                if keys is not None and dump <= keys:
                    break
                await trio.sleep(0.1)
        return keys

    def report(
        self,
        since: float,
        until: float,
        holder: str,
        dump: set[str],
        persisted: set[str] | None,
        answered: answers.AnswerVerdict | None = None,
    ) -> dict[str, Any]:
        events = self.events()
        verdict = checker.check(events, dump, self.bad_versions, since, until)
        written = {e["key"] for e in events if e["e"] == "write"}
        idle = verdict.idle
        violations = verdict.violations + [f"state.json: {p}" for p in self.state_epoch_problems]
        if answered is not None:
            # P1 and P2 by the answers the fake Discord saw; the journal's commands carry no epochs to cut by
            idle = [gap.seconds for gap in answered.traffic.gaps]
            violations = [v for v in violations if not v.startswith(("P1", "epochs"))] + answered.violations
            verdict = attrs.evolve(verdict, overlaps=answered.unexplained_switches, epoch_problems=[])
        result = {
            "duration_s": round(until - since, 1),
            "faults": dict(sorted(self.faults.items())),
            "overlaps": len(verdict.overlaps),
            "no_processor_total_s": round(sum(idle), 3),
            "no_processor_share": round(sum(idle) / max(until - since, 1e-9), 4),
            "no_processor_longest_s": round(max(idle, default=0.0), 3),
            "no_processor_p99_s": round(checker.percentile(idle, 99), 3),
            "no_processor_stretches": len(idle),
            # Seconds without a processor by what the soak did last before each stretch (fault:target, commit_kind).
            "no_processor_by_cause": by_cause(verdict.idle_causes) if answered is None else None,
            "writes_checked": verdict.writes_checked,
            "writes_lost": len(verdict.writes_lost),
            "bad_commits_processed": len(verdict.bad_commands),
            "epoch_violations": len(verdict.epoch_problems) + len(self.state_epoch_problems),
            "commits": dict(sorted(self.commits.items())),
            "webhooks_missed": self.webhooks_missed,
            "commands": verdict.commands,
            "processing_segments": verdict.segments,
            "epochs_granted": self.epochs[-1][1] if self.epochs else None,
            "supervisor_starts": self.supervisor.starts if self.supervisor else 0,
            "worker_processes": len({e["id"] for e in events if e["e"] == "boot"}),
            "notifications": dict(self.discord.counts),
            "final_holder": holder,
            "writes_missing_from_supervisor_cache": len(written - persisted) if persisted is not None else None,
            "seed": self.args.seed,
            "violations": violations,
        }
        if answered is not None:
            figures = answered.traffic.figures()
            figures.pop("unexplained")  # the soak names no fault windows: its gaps are P2's measure
            result["discord_py"] = {
                **figures,
                "twice_by_kind": dict(answered.traffic.twice),
                "unanswered_by_kind": dict(answered.traffic.unanswered),
                "answer_switches": answered.switches,
                "switches_without_handover": len(answered.unexplained_switches),
            }
            result["overlaps"] = len(answered.unexplained_switches) + sum(answered.traffic.twice.values())
        return result

    def report_groups(
        self,
        since: float,
        until: float,
        finals: dict[str, tuple[str, set[str]]],
        persisted: dict[str, set[str] | None],
    ) -> dict[str, Any]:
        """A sharded soak's result: the unsharded keys over every group (sums; the share of ``duration_s`` times
        the groups), and ``groups`` with each group's own figures."""
        events = self.events()
        dumps = {g: keys for g, (_, keys) in finals.items()}
        overall, verdicts, split_problems = checker.check_groups(
            events, dumps, self.bad_versions, since, until, self.groups
        )
        duration = max(until - since, 1e-9)
        groups: dict[str, Any] = {}
        for name, v in verdicts.items():
            written = {e["key"] for e in events if e["e"] == "write" and e.get("grp") == name}
            kept = persisted.get(name)
            groups[name] = {
                "overlaps": len(v.overlaps),
                "epoch_violations": len(v.epoch_problems),
                "writes_checked": v.writes_checked,
                "writes_lost": len(v.writes_lost),
                "bad_commits_processed": len(v.bad_commands),
                "no_processor_share": round(sum(v.idle) / duration, 4),
                "no_processor_total_s": round(sum(v.idle), 3),
                "no_processor_longest_s": round(max(v.idle, default=0.0), 3),
                "no_processor_p99_s": round(checker.percentile(v.idle, 99), 3),
                "no_processor_stretches": len(v.idle),
                "commands": v.commands,
                "processing_segments": v.segments,
                "epoch": self.group_epochs.get(name),
                "faults_aimed": sum(1 for e in events if e["e"] == "chaos" and e.get("group") == name),
                "final_holder": finals[name][0],
                "writes_missing_from_supervisor_cache": len(written - kept) if kept is not None else None,
            }
        violations = overall.violations + [f"state.json: {p}" for p in self.state_epoch_problems]
        violations += [f"groups: {p}" for p in split_problems[:5]]
        idle = overall.idle
        return {
            "duration_s": round(until - since, 1),
            "faults": dict(sorted(self.faults.items())),
            "overlaps": len(overall.overlaps),
            "no_processor_total_s": round(sum(idle), 3),
            "no_processor_share": round(sum(idle) / (duration * len(self.groups)), 4),
            "no_processor_longest_s": round(max(idle, default=0.0), 3),
            "no_processor_p99_s": round(checker.percentile(idle, 99), 3),
            "no_processor_stretches": len(idle),
            "no_processor_by_cause": by_cause(overall.idle_causes),
            "writes_checked": overall.writes_checked,
            "writes_lost": len(overall.writes_lost),
            "bad_commits_processed": len(overall.bad_commands),
            "epoch_violations": len(overall.epoch_problems) + len(self.state_epoch_problems),
            "commits": dict(sorted(self.commits.items())),
            "webhooks_missed": self.webhooks_missed,
            "commands": overall.commands,
            "processing_segments": overall.segments,
            "epochs_granted": self.epochs[-1][1] if self.epochs else None,
            "supervisor_starts": self.supervisor.starts if self.supervisor else 0,
            "worker_processes": len({e["id"] for e in events if e["e"] == "boot"}),
            "notifications": dict(self.discord.counts),
            "final_holder": ", ".join(f"{g}: {who}" for g, (who, _) in finals.items()),
            "writes_missing_from_supervisor_cache": sum(
                g["writes_missing_from_supervisor_cache"] or 0 for g in groups.values()
            ),
            "seed": self.args.seed,
            "shard_count": self.args.shards,
            "shards_per_worker": self.args.shards_per_worker,
            "groups": groups,
            "violations": violations,
        }

    # -- cleaning up ---------------------------------------------------------------------------------------
    def kill_everything(self) -> None:
        """SIGKILL the supervisor, every worker process it ever ran (each is its own process group), the fake."""
        if self.fake is not None:
            self.fake.kill()
        if self.supervisor is not None and self.supervisor.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.supervisor.process.pid, signal.SIGKILL)
        for event in self.events():
            if event["e"] == "boot" and alive(event["pid"], event.get("ticks")):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(event["pid"], signal.SIGKILL)
        for pid, ticks in self.workers().values():
            signal_pid(pid, ticks, signal.SIGKILL)


def by_cause(causes: list[tuple[str, float, float]]) -> dict[str, dict[str, float]]:
    """Per cause: how many stretches, their total and longest seconds, and the median delay from it to them."""
    out: dict[str, dict[str, float]] = {}
    for kind in sorted({kind for kind, _, _ in causes}):
        mine = [(ago, length) for k, ago, length in causes if k == kind]
        lengths = [length for _, length in mine]
        out[kind] = {
            "n": len(mine),
            "total_s": round(sum(lengths), 3),
            "longest_s": round(max(lengths), 3),
            "median_after_s": round(sorted(ago for ago, _ in mine)[len(mine) // 2], 3),
        }
    return dict(sorted(out.items(), key=lambda item: -item[1]["total_s"]))


def summary(result: dict[str, Any]) -> str:
    faults = ", ".join(f"{kind} {n}" for kind, n in result["faults"].items())
    commits = ", ".join(f"{kind} {n}" for kind, n in result["commits"].items())
    lines = [
        f"chaos soak: {result['duration_s']} s, seed {result['seed']}; faults: {faults}; commits: {commits}",
        f"  P1 overlapping processing intervals: {result['overlaps']}"
        f" ({result['commands']} commands in {result['processing_segments']} segments);"
        f" epoch violations: {result['epoch_violations']} (last epoch {result['epochs_granted']})",
        f"  P2 no processor: {result['no_processor_total_s']} s in all, longest {result['no_processor_longest_s']} s,"
        f" p99 {result['no_processor_p99_s']} s over {result['no_processor_stretches']} stretches"
        f" ({result['no_processor_share']:.2%} of the soak)",
        "  P2 by cause: "
        + (
            ", ".join(
                f"{kind} {c['total_s']} s/{c['n']:g} (longest {c['longest_s']})"
                for kind, c in (result["no_processor_by_cause"] or {}).items()
            )
            or "-"
        ),
        f"  P3 acknowledged cache writes checked: {result['writes_checked']}, lost: {result['writes_lost']}"
        f" (final holder {result['final_holder']}; missing from the supervisor's cache.bin:"
        f" {result['writes_missing_from_supervisor_cache']})",
        f"  P4 bad commits that processed: {result['bad_commits_processed']}",
        f"  supervisor starts {result['supervisor_starts']}, worker processes {result['worker_processes']},"
        f" notifications {result['notifications']}",
    ]
    for name, g in (result.get("groups") or {}).items():
        lines.append(
            f"  {name}: overlaps {g['overlaps']}, epoch violations {g['epoch_violations']}, writes lost"
            f" {g['writes_lost']} of {g['writes_checked']}, bad commits {g['bad_commits_processed']}, no processor"
            f" {g['no_processor_share']:.2%} (longest {g['no_processor_longest_s']} s),"
            f" {g['faults_aimed']} faults aimed at it"
        )
    if "discord_py" in result:
        d = result["discord_py"]
        lines.append(
            f"  discord.py: sent {d['sent']} {d['sent_by_kind']}; once {d['once']}, twice {d['twice']},"
            f" unanswered {d['unanswered']}; answering process changed {d['answer_switches']} times,"
            f" {d['switches_without_handover']} without a lease hand-over; longest gap {d['longest_gap_s']} s"
        )
    lines += [f"VIOLATION {v}" for v in result["violations"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600, help="how long faults are injected (default 600)")
    parser.add_argument("--seed", type=int, default=7, help="fixes the schedule of faults and commits")
    parser.add_argument(
        "--workers", type=int, default=3, help="worker processes (per shard group): one running, the rest standbys"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (journal, logs)")
    parser.add_argument(
        "--unsafe-bot",
        action="store_true",
        help="self-test: workers process without asking the SDK (the soak must then fail)",
    )
    parser.add_argument(
        "--discord-py",
        action="store_true",
        help="workers are real discord.py bots (discord_worker.py) on the fake Discord, run as its own process;"
        " P1 and P2 are judged by who answered the traffic sent to it",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=0,
        help="a sharded bot of this many shards (shard_count); with --shards-per-worker, shard groups of its own"
        " --workers each, every check per group",
    )
    parser.add_argument("--shards-per-worker", type=int, default=2, help="shards in a group (with --shards; default 2)")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers must be at least 2 (a holder and a standby)")
    if args.shards and (args.shards < 2 or not 1 <= args.shards_per_worker < args.shards):
        parser.error("--shards needs at least 2 shards and --shards-per-worker from 1 to fewer than --shards")
    if args.shards and args.discord_py:
        parser.error("--shards and --discord-py: not together (the discord.py soak judges one answering bot)")
    tmp = Path(tempfile.mkdtemp(prefix="urban-robot-chaos-"))
    soak = Soak(args, tmp)
    result: dict[str, Any] | None = None
    try:
        result = trio.run(soak.run)
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the soak could not run: say why, keep the evidence
        print(f"soak: could not finish: {type(exc).__name__}: {exc} (files in {tmp})", file=sys.stderr)
        args.keep = True
        return 2
    finally:
        soak.kill_everything()
        soak.discord.close()
        if result is not None and result["violations"] and not args.unsafe_bot:
            args.keep = True  # the evidence (the self-test's violations are expected: not kept)
        if args.keep:
            print(f"soak: journal and logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(summary(result))
    violations = result.pop("violations")
    print(json.dumps(result))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
