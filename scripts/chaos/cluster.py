"""Cross-host chaos soak: three agents on etcd, one bot, and a fault injector (issue 17).

It starts a real etcd of three members (``urban_robot.testing.etcd``) and three agents, ``alpha``, ``beta`` and
``gamma``: each a ``python -m urban_robot`` process on 127.0.0.1 with its own port, state directory, log file,
clone of the bot's repository (``helium_path``) and ``[cluster]`` section. Every agent reaches etcd and its peers
through a TCP proxy the soak controls (``urban_robot.testing.proxy.Net``): its etcd endpoints are listeners of its
own, and each agent's ``advertise`` URL is a listener whose connections are put down to the agent process that
opened them, so any one agent can be cut from etcd, or from its peers, both ways. With ``standbys = 0`` each host
runs one worker per shard group: a group's holder on one host, its standbys on the other two.

The workers are the single-host soak's rehearsal bot (``worker.py``): each journals the commands it processes
and the cache writes its agent acknowledged, on one monotonic clock, to one shared file, as ``<host>/<identity>``.

For ``--seconds``, on a schedule fixed by ``--seed``, one fault at a time (each kind once per round, in a shuffled
order, then a pause), durations drawn around the etcd lease's TTL (``--ttl``, default 10 as the agents'):

- ``host_loss``: SIGKILL an agent and every child it runs (each in its own session: found in its
  ``children.json`` and by the ``boot`` lines its workers journaled), start the agent again later;
- ``freeze_agent``: SIGSTOP an agent, SIGCONT later (its workers keep running and must fence themselves);
- ``partition_etcd``: cut an agent from every etcd member, heal later;
- ``partition_peers``: cut an agent from the other agents, both ways, heal later;
- ``isolate_agent``: both at once (the host's network is down), heal later;
- ``kill_etcd_leader``: SIGKILL etcd's leader, restart it later;
- ``kill_worker``: SIGKILL a worker (a group's holder, or a standby).

With ``--deploys`` commits are pushed meanwhile, as in the single-host soak (a good one, then a bad one: failing
its health check, crashing at start, hanging before ``ready``; 6-10 s apart), each announced by a signed webhook
to every agent that is up (the elected deployer takes it with 202 and rolls it out across the hosts); P4: no
command is processed by a bad commit's version.

Before each fault the soak waits (up to twice the TTL plus 10 s) until every group processes again, so that each
stretch without a processor, and each host loss's failover, has one cause.

An agent fault aims at the host holding the most groups (``holder``) or at another one (a host loss: at the
holder's host in two rounds of three). Then every fault is undone, the system settles, each group's final holder
dumps its cache, the agents are stopped and every process killed, and ``checker.py`` judges the journal per
group: P1 (never two workers of one group processing at once, across hosts: one file, one clock), epochs only
increasing per group, P3 (no acknowledged cache write lost, and each group's final cache on disk on two hosts
at least: its holder's and a replica), P4 with ``--deploys``, and P2 (time without a processor). Each host loss
is measured: for each group its host held, the seconds from the kill until the group's next processor journaled
a command.

The last line printed is one JSON object:
{"duration_s", "faults": {kind: count}, "overlaps", "epoch_violations", "writes_checked", "writes_lost",
 "no_processor_share", "no_processor_total_s", "no_processor_longest_s", "no_processor_p99_s",
 "no_processor_by_cause", "bad_commits_processed", "commits", "host_losses", "host_loss_failover_p50_s",
 "host_loss_failover_p99_s", "host_loss_failover_max_s", "host_loss_failovers": [{"host", "group", "seconds"}],
 "agent_starts", "agent_exits", "groups": {name: {"overlaps", "writes_lost", "writes_checked",
 "no_processor_share", ...}}, ...}
``no_processor_share`` is a fraction of ``duration_s`` (overall: of ``duration_s`` times the groups).
Exit status 1 on any violation (each is printed), 2 if the soak itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

SCRIPTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SCRIPTS))

from bench.deploy.run import SECRET, git, push_webhook  # noqa: E402
from chaos import checker  # noqa: E402
from chaos.fake_discord import FakeDiscord  # noqa: E402
from chaos.run import (  # noqa: E402
    ChaosRepos,
    Journaled,
    alive,
    by_cause,
    commit_schedule,
    free_port,
    read_json,
    signal_pid,
)

from urban_robot.protocol import PLAIN, ShardPlan, decode_value  # noqa: E402
from urban_robot.supervisor._store import peek_cache  # noqa: E402
from urban_robot.testing.etcd import EtcdCluster, Member  # noqa: E402
from urban_robot.testing.proxy import Net  # noqa: E402

HOSTS = ("alpha", "beta", "gamma")
FAULTS = (
    "host_loss",
    "freeze_agent",
    "partition_etcd",
    "partition_peers",
    "isolate_agent",
    "kill_etcd_leader",
    "kill_worker",
)
UNSHARDED = "shard 0"  # an unsharded bot's one group, as the agents name it (docs/protocol.md §19.1)
CLUSTER = "soak"
STARTUP_TIMEOUT = 90.0
AGENT_START_TIMEOUT = 60.0
RECENT = 1.5  # seconds: a group's last command at most this old names its holder of the moment


# -- the schedule: every random choice about *what* happens *when* comes from --seed ----------------------------
LASTING = ("host_loss", "freeze_agent", "partition_etcd", "partition_peers", "isolate_agent", "kill_etcd_leader")


def fault_schedule(
    seconds: float, rng: random.Random, kinds: Sequence[str] = FAULTS, ttl: float = 10.0
) -> list[tuple[float, str, dict[str, Any]]]:
    """Rounds of every fault kind in a shuffled order, one at a time: (nominal start, kind, parameters). A fault
    that lasts (``LASTING``: its ``duration``, before it is undone) is short in one round and long in the next
    (0.2-0.8 or 1.2-2 TTLs, which first is drawn): undone before the etcd lease would run out, and after. A
    fault starts when the one before it is over and its ``pause`` (0.3-0.8 TTLs) done, at the earliest."""
    out: list[tuple[float, str, dict[str, Any]]] = []
    long = {kind: rng.random() < 0.5 for kind in kinds}
    at = rng.uniform(0.2, 0.4) * ttl
    for round_ in itertools.count():
        for kind in rng.sample(list(kinds), len(kinds)):
            duration = 0.0
            if kind in LASTING:
                duration = (rng.uniform(1.2, 2.0) if long[kind] else rng.uniform(0.2, 0.8)) * ttl
                long[kind] = not long[kind]
            # Aim at the host (or worker) holding the most, else at another: a host loss in two rounds of three (its
            # failover is the figure), any other kind three times in four.
            holder = round_ % 3 != 2 if kind == "host_loss" else rng.random() < 0.75
            params = {
                "holder": holder,
                "duration": duration,
                "pause": rng.uniform(0.3, 0.8) * ttl,
            }
            if at + duration >= seconds - 2:
                return out
            out.append((at, kind, params))
            at += duration + params["pause"]
    raise AssertionError("unreachable")


# -- the agents' configuration -----------------------------------------------------------------------------------
def agent_config(
    *,
    host: str,
    helium_path: Path,
    port: int,
    state_dir: Path,
    etcd: Sequence[str],
    advertise: str,
    ttl: int,
    cluster_secret: str,
    admin_token: str,
    notify_url: str,
    plan: ShardPlan | None = None,
) -> str:
    """One agent's urban-robot.toml (docs/configuration.md, ``[cluster]``): the single-host soak's short worker
    timings, one worker per group on every host (``standbys = 0``: the other hosts' are the standbys)."""
    sharding = ""
    if plan is not None:
        sharding = f"shard_count = {plan.shard_count}\nshards_per_worker = {plan.shards_per_worker}\n"
    endpoints = ", ".join(json.dumps(url) for url in etcd)
    return f"""\
helium_path = {json.dumps(str(helium_path))}
command = [{json.dumps(sys.executable)}, "main.py"]
port = {port}
state_dir = {json.dumps(str(state_dir))}
standbys = 0
branch = "main"
log_level = "INFO"
deploy_timeout = 10
{sharding}
[cluster]
name = "{CLUSTER}"
host = "{host}"
etcd = [{endpoints}]
advertise = "{advertise}"
ttl = {ttl}

[workers]
interval = 1
grace = 2
lease_margin = 0.5
frozen_limit = 1.5
hang_limit = 3
health_timeout = 5
crash_loop_losses = 0  # off: the soak kills workers on purpose
restart_backoff = 0.2
restart_backoff_max = 2
stop_timeout = 2

[notify]
channel = 123456789
level = "WARNING"
api_url = "{notify_url}"

[secrets]
bot_token = "chaos-bot-token"
webhook_secret = "{SECRET.decode()}"
admin_token = "{admin_token}"
cluster = "{cluster_secret}"
"""


# -- what the journal says about host losses ---------------------------------------------------------------------
@attrs.define
class HostLoss:
    host: str
    marked: float  # monotonic: the soak journaled it, just before the kill
    killed: float  # monotonic: the agent and every child found were SIGKILLed
    pids: set[int] = attrs.Factory(set)


def host_of(identity: str) -> str:
    return identity.partition("/")[0]


def host_loss_failovers(events: list[dict[str, Any]], losses: list[HostLoss]) -> list[dict[str, Any]]:
    """Per host loss and per group the lost host was processing at the moment (its last command before the loss,
    by a worker of that host, at most ``RECENT`` s before): the seconds from the kill's mark until that group's
    next command by a process that was not killed (``seconds`` None: none came)."""
    out: list[dict[str, Any]] = []
    for loss in losses:
        last: dict[str, dict[str, Any]] = {}
        for e in events:
            if e["t"] > loss.marked:
                break
            if e["e"] == "cmd":
                last[e.get("grp") or UNSHARDED] = e
        held = sorted(g for g, e in last.items() if host_of(e["id"]) == loss.host and loss.marked - e["t"] <= RECENT)
        for group in held:
            after = next(
                (
                    e
                    for e in events
                    if e["e"] == "cmd"
                    and e["t"] > loss.killed
                    and (e.get("grp") or UNSHARDED) == group
                    and e["pid"] not in loss.pids
                ),
                None,
            )
            seconds = round(after["t"] - loss.marked, 3) if after is not None else None
            out.append({"host": loss.host, "group": group, "seconds": seconds, "to": after["id"] if after else None})
    return out


def after_dumps(
    events: list[dict[str, Any]], finals: Mapping[str, tuple[str, set[str]] | None]
) -> list[dict[str, Any]]:
    """The journal without the writes a group acknowledged after its final holder dumped its cache: stopping the
    agents one by one at the end hands the group to another host's worker, which may write before it is stopped
    too; P3 asks the dump for what was acknowledged before it (P1 still sees every command)."""
    cutoff: dict[str, float] = {}
    for e in events:
        final = finals.get(e.get("grp") or UNSHARDED)
        if e["e"] == "dump" and final is not None and e["id"] == final[0]:
            cutoff[e.get("grp") or UNSHARDED] = e["t"]
    return [
        e for e in events if not (e["e"] == "write" and e["t"] > cutoff.get(e.get("grp") or UNSHARDED, float("inf")))
    ]


# -- processes ---------------------------------------------------------------------------------------------------
def log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:])


class AgentProcess:
    """One host's agent: start, SIGKILL (with its children: ``Soak.lose_host``), SIGSTOP/SIGCONT, stop."""

    def __init__(self, name: str, root: Path, port: int, env: dict[str, str]) -> None:
        self.name = name
        self.root = root
        self.port = port
        self.env = env
        self.state_dir = root / "state"
        self.config = root / "urban-robot.toml"
        self.log = root / "agent.log"
        self.process: trio.Process | None = None
        self.starts = 0
        self.down = False  # killed by the soak (not yet started again)
        self.frozen = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exited(self) -> int | None:
        """The exit status of an agent that ended (by itself, unless ``down``), else None."""
        return self.process.poll() if self.process is not None else None

    async def start(self) -> None:
        argv = [sys.executable, "-m", "urban_robot", "--config", str(self.config)]
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.starts += 1
        self.down = False
        with trio.fail_after(AGENT_START_TIMEOUT):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"agent {self.name} exited with {self.process.returncode} at start: {log_tail(self.log)}"
                        f" (log {self.log})"
                    )
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return

    async def kill(self) -> None:
        if self.process is None:
            return
        self.down = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
        self.frozen = False

    def freeze(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.thaw()
        self.down = True  # on purpose: not an exit of its own
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(20):
            await self.process.wait()
            return
        await self.kill()

    def children(self) -> dict[str, tuple[int, int | None, int]]:
        """``<host>/<identity>`` -> (pid, start ticks, group index) of its registry's children alive now."""
        registry = read_json(self.state_dir / "children.json") or {}
        out = {}
        for identity, info in registry.items() if isinstance(registry, dict) else ():
            if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
                continue
            if alive(info["pid"], info.get("start_ticks")):
                out[f"{self.name}/{identity}"] = (info["pid"], info.get("start_ticks"), int(info.get("group") or 0))
        return out


class Soak(Journaled):
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.rng = random.Random(args.seed)  # the schedule
        self.pick = random.Random(args.seed + 1)  # choices among whatever runs at that moment
        self.repos = ChaosRepos(tmp)
        self.journal = tmp / "journal.jsonl"
        self.dumps = tmp / "dumps"
        self.net = Net()
        self.discord = FakeDiscord()
        self.etcd: EtcdCluster | None = None
        self.agents: dict[str, AgentProcess] = {}
        self.plan = ShardPlan(args.shards, args.shards_per_worker) if args.shards else None
        self.groups = [g.name for g in self.plan.groups] if self.plan is not None else [UNSHARDED]
        self.next_group = random.Random(args.seed + 2).randrange(len(self.groups))
        self.losses: list[HostLoss] = []
        self.agent_exits: list[str] = []  # agents that ended by themselves
        self.etcd_down: list[Member] = []
        self.notes: list[str] = []
        self.boots: dict[int, tuple[str, int | None]] = {}  # pid -> (journal id, start ticks), from "boot" lines
        self.last_cmd: dict[str, dict[str, Any]] = {}  # group -> its last "cmd" line
        self._offset = 0
        self.commits: Counter[str] = Counter()
        self.bad_versions: set[str] = set()
        self.webhooks_missed = 0

    # -- set-up --------------------------------------------------------------------------------------------
    async def set_up(self, nursery: trio.Nursery) -> None:
        self.dumps.mkdir()
        self.etcd = etcd_cluster = await trio.to_thread.run_sync(lambda: EtcdCluster.start(self.tmp / "etcd", size=3))
        await nursery.start(self.net.run)
        self.discord.start()
        await self.repos.create()
        await self.repos.commit("first", version="1.0", kind="good")
        ports = {host: free_port() for host in HOSTS}
        advertise = {host: await self.net.listen(host, ports[host]) for host in HOSTS}
        cluster_secret = secrets.token_urlsafe(24)
        for host in HOSTS:
            root = self.tmp / host
            root.mkdir()
            helium = root / "bot"
            await git(self.tmp, "clone", "-q", str(self.repos.upstream), str(helium))
            etcd = []
            for member in etcd_cluster.members:
                upstream = int(member.client_url.rsplit(":", 1)[1])
                etcd.append(f"http://127.0.0.1:{await self.net.listen(member.name, upstream, source=host)}")
            env = dict(os.environ)
            for name in list(env):
                if name.startswith("URBAN_ROBOT_") or name in ("BOT_TOKEN", "HELIUM_PATH", "LOGGING_CHANNEL"):
                    del env[name]  # the soak's toml decides
            env.update(
                {
                    "CHAOS_JOURNAL": str(self.journal),
                    "CHAOS_DIR": str(self.dumps),
                    "CHAOS_HOST": host,
                    "CHAOS_UNSAFE_BOT": "1" if self.args.unsafe_bot else "0",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")])),
                }
            )
            env.pop("CHAOS_PROXY_CONTROL", None)
            agent = AgentProcess(host, root, ports[host], env)
            agent.config.write_text(
                agent_config(
                    host=host,
                    helium_path=helium,
                    port=ports[host],
                    state_dir=agent.state_dir,
                    etcd=etcd,
                    advertise=f"http://127.0.0.1:{advertise[host]}",
                    ttl=self.args.ttl,
                    cluster_secret=cluster_secret,
                    admin_token=secrets.token_urlsafe(24),
                    notify_url=self.discord.url,
                    plan=self.plan,
                )
            )
            self.agents[host] = agent
        for agent in self.agents.values():
            await self.start_agent(agent)

    async def start_agent(self, agent: AgentProcess) -> None:
        await agent.start()
        assert agent.pid is not None
        self.net.register(agent.name, agent.pid)

    # -- the journal, as it grows ---------------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        """The journal; an unsharded bot's worker lines get the one group's name, so every check is per group."""
        events = super().events()
        if self.plan is None:
            for e in events:
                if e["id"] != "soak":
                    e.setdefault("grp", UNSHARDED)
        return events

    def follow(self) -> None:
        """Read the journal's new lines: the workers that booted, each group's last command."""
        if not self.journal.exists():
            return
        with self.journal.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e["e"] == "boot":
                self.boots[e["pid"]] = (e["id"], e.get("ticks"))
            elif e["e"] == "cmd":
                self.last_cmd[e.get("grp") or UNSHARDED] = e

    async def watch(self) -> None:
        """Follow the journal; an agent that ends by itself is a violation, and it is started again."""
        while True:
            self.follow()
            for agent in self.agents.values():
                code = agent.exited()
                if code is not None and not agent.down:
                    self.agent_exits.append(f"agent {agent.name} exited by itself ({code}): {log_tail(agent.log, 3)}")
                    agent.down = True
                    with trio.CancelScope(shield=True):
                        await self.start_agent(agent)
            await trio.sleep(0.1)

    def holders(self) -> dict[str, str]:
        """group -> the host whose worker processed it in the last ``RECENT`` seconds."""
        now = time.monotonic()
        return {g: host_of(e["id"]) for g, e in self.last_cmd.items() if now - e["t"] <= RECENT}

    def mark(self, kind: str, group: str | None = None, **extra: Any) -> float:
        """Journal a fault the moment it takes effect (the checker puts each stretch without a processor down to
        the last one before it); ``group``: the one it aims at (it then counts for that group only)."""
        at = time.monotonic()
        line: dict[str, Any] = {"e": "chaos", "t": at, "id": "soak", "kind": kind, **extra}
        if group is not None:
            line["group"] = group
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
        return at

    # -- targets -------------------------------------------------------------------------------------------------
    def pick_agent(self, want_holder: bool) -> tuple[AgentProcess, bool] | None:
        """An agent that is up (and not frozen): the one holding the most groups, or another; and whether it holds."""
        up = [a for a in self.agents.values() if not a.down and not a.frozen and a.exited() is None]
        if not up:
            return None
        held = Counter(self.holders().values())
        ranked = sorted(up, key=lambda a: (-held[a.name], a.name))
        if want_holder and held[ranked[0].name]:
            return ranked[0], True
        others = [a for a in up if not held[a.name]] or ranked[1:] or ranked
        chosen = self.pick.choice(others)
        return chosen, held[chosen.name] > 0

    # -- faults ------------------------------------------------------------------------------------------------
    async def inject(self, kind: str, params: dict[str, Any]) -> None:
        if not await getattr(self, f"_{kind}")(params):
            self.notes.append(f"{kind}: no target")

    def pids_of_host(self, agent: AgentProcess) -> dict[int, int | None]:
        """pid -> start ticks of every child of ``agent`` alive now: its registry's and its workers' boot lines."""
        self.follow()
        found = {pid: ticks for pid, ticks, _ in agent.children().values()}
        for pid, (identity, ticks) in self.boots.items():
            if host_of(identity) == agent.name and alive(pid, ticks):
                found[pid] = ticks
        return found

    def kill_children(self, agent: AgentProcess) -> set[int]:
        killed = set()
        for pid, ticks in self.pids_of_host(agent).items():
            if alive(pid, ticks):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)  # each child leads its own session
                signal_pid(pid, ticks, signal.SIGKILL)
                killed.add(pid)
        return killed

    async def _host_loss(self, params: dict[str, Any]) -> bool:
        chosen = self.pick_agent(params["holder"])
        if chosen is None:
            return False
        agent, holds = chosen
        marked = self.mark(f"host_loss:{'holder' if holds else 'standby'}", host=agent.name)
        await agent.kill()
        pids = self.kill_children(agent)
        loss = HostLoss(agent.name, marked, time.monotonic(), pids)
        self.losses.append(loss)
        try:
            await trio.sleep(params["duration"])
        finally:
            with trio.CancelScope(shield=True):
                loss.pids |= self.kill_children(agent)  # one it spawned just before it died, booted since
                await self.start_agent(agent)
        return True

    async def _freeze_agent(self, params: dict[str, Any]) -> bool:
        chosen = self.pick_agent(params["holder"])
        if chosen is None:
            return False
        agent, holds = chosen
        self.mark(f"freeze_agent:{'holder' if holds else 'standby'}", host=agent.name)
        agent.freeze()
        try:
            await trio.sleep(params["duration"])
        finally:
            agent.thaw()
        return True

    async def _partition_etcd(self, params: dict[str, Any]) -> bool:
        return await self.cut_off("partition_etcd", params, etcd=True, peers=False)

    async def _partition_peers(self, params: dict[str, Any]) -> bool:
        return await self.cut_off("partition_peers", params, etcd=False, peers=True)

    async def _isolate_agent(self, params: dict[str, Any]) -> bool:
        return await self.cut_off("isolate_agent", params, etcd=True, peers=True)

    async def cut_off(self, kind: str, params: dict[str, Any], *, etcd: bool, peers: bool) -> bool:
        """Cut an agent from every etcd member and/or from the other agents (both ways), heal it later."""
        chosen = self.pick_agent(params["holder"])
        if chosen is None or self.etcd is None:
            return False
        agent, holds = chosen
        others = [m.name for m in self.etcd.members] if etcd else []
        others += [h for h in HOSTS if h != agent.name] if peers else []
        self.mark(f"{kind}:{'holder' if holds else 'standby'}", host=agent.name)
        self.net.isolate(agent.name, others)  # etcd members open no connection to an agent: one way is enough
        try:
            await trio.sleep(params["duration"])
        finally:
            self.net.rejoin(agent.name, others)
        return True

    async def _kill_etcd_leader(self, params: dict[str, Any]) -> bool:
        etcd = self.etcd
        if etcd is None:
            return False
        try:
            leader = await trio.to_thread.run_sync(lambda: etcd.leader(timeout=10))
        except TimeoutError:
            return False
        self.mark("kill_etcd_leader", member=leader.name)
        await trio.to_thread.run_sync(etcd.kill, leader)
        self.etcd_down.append(leader)
        try:
            await trio.sleep(params["duration"])
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(etcd.restart, leader)
                self.etcd_down.remove(leader)
        return True

    async def _kill_worker(self, params: dict[str, Any]) -> bool:
        group = self.groups[self.next_group]
        index = self.next_group
        self.next_group = (self.next_group + 1) % len(self.groups)
        self.follow()
        last = self.last_cmd.get(group)
        holder = last if last is not None and time.monotonic() - last["t"] <= RECENT else None
        if params["holder"] and holder is not None:
            pid, ticks = holder["pid"], self.boots.get(holder["pid"], ("", None))[1]
            self.mark("kill_worker:holder", group)
            return signal_pid(pid, ticks, signal.SIGKILL)
        standbys = [
            (pid, ticks)
            for agent in self.agents.values()
            if not agent.down
            for identity, (pid, ticks, grp) in agent.children().items()
            if grp == index and (holder is None or identity != holder["id"])
        ]
        if not standbys:
            return False
        pid, ticks = self.pick.choice(sorted(standbys, key=lambda s: s[0]))
        self.mark("kill_worker:standby", group)
        return signal_pid(pid, ticks, signal.SIGKILL)

    # -- commits (--deploys) -------------------------------------------------------------------------------------
    async def push(self, http: httpx.AsyncClient, n: int, kind: str) -> None:
        """Commit a good or bad bot and announce it by a signed webhook to the agents that are up, one after the
        other, until one takes it (202: the elected deployer acts on it, wherever it arrived), as GitHub redelivers."""
        version = f"{n + 1}.0"
        if kind != "good":
            self.bad_versions.add(version)
        commit = await self.repos.commit(f"{kind} {n}", version=version, kind=kind)
        self.commits[kind] += 1
        with trio.move_on_after(15):
            while True:
                for agent in self.agents.values():
                    if agent.down or agent.frozen:
                        continue
                    with contextlib.suppress(httpx.HTTPError):
                        url = f"http://127.0.0.1:{agent.port}"
                        if await push_webhook(http, url, commit, f"chaos-{n}-{agent.name}") == 202:
                            self.mark(f"commit_{kind}", to=agent.name)
                            return
                await trio.sleep(0.5)
        self.webhooks_missed += 1

    async def deploys(self) -> None:
        start = trio.current_time()
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            for n, (at, kind) in enumerate(commit_schedule(self.args.seconds, self.rng), 1):
                await trio.sleep_until(start + at)
                await self.push(http, n, kind)

    # -- the run ---------------------------------------------------------------------------------------------------
    async def chaos(self) -> None:
        seconds = self.args.seconds
        schedule = fault_schedule(seconds, self.rng, self.args.faults, self.args.ttl)
        start = trio.current_time()
        with trio.move_on_at(start + seconds):  # a fault still running ends now; its finally block undoes it
            async with trio.open_nursery() as nursery:
                if self.args.deploys:
                    nursery.start_soon(self.deploys)
                for at, kind, params in schedule:
                    await trio.sleep_until(start + at)
                    await self.settled(2 * self.args.ttl + 10)
                    await self.inject(kind, params)
                    await trio.sleep(params["pause"])
                await trio.sleep_until(start + seconds)

    async def settled(self, timeout: float) -> None:
        """Until every group has a processor again (or ``timeout``): a fault hits a system that recovered from the
        last one, so that each stretch without a processor, and each host loss's failover, has one cause."""
        with trio.move_on_after(timeout):
            while set(self.holders()) != set(self.groups):
                await trio.sleep(0.1)
                self.follow()
            return
        self.notes.append(f"t={time.monotonic():.1f}: not every group had a processor {timeout:g} s after a fault")

    async def undo_everything(self) -> None:
        self.net.heal_all()
        for agent in self.agents.values():
            agent.thaw()
            if agent.down:
                await self.start_agent(agent)
        for member in list(self.etcd_down):
            assert self.etcd is not None
            await trio.to_thread.run_sync(self.etcd.restart, member)
            self.etcd_down.remove(member)

    async def run(self) -> dict[str, Any]:
        async with trio.open_nursery() as nursery:
            await self.set_up(nursery)
            nursery.start_soon(self.watch)
            waiting = set(self.groups)
            with trio.move_on_after(STARTUP_TIMEOUT):
                while waiting:  # every group has a processor
                    self.follow()
                    waiting -= set(self.last_cmd)
                    await trio.sleep(0.1)
            if waiting:
                logs = ", ".join(str(a.log) for a in self.agents.values())
                raise RuntimeError(f"no worker of {sorted(waiting)} processed within {STARTUP_TIMEOUT:g} s: see {logs}")
            print(f"soak: every group processes; chaos for {self.args.seconds:g} s (seed {self.args.seed})", flush=True)
            since = time.monotonic()
            await self.chaos()
            until = time.monotonic()
            await self.undo_everything()
            finals: dict[str, tuple[str, set[str]] | None] = {}
            for group in self.groups:
                try:
                    finals[group] = await self.final_dump(None if self.plan is None else group)
                except (RuntimeError, trio.TooSlowError):
                    finals[group] = None
            replicas = {g: await self.hosts_with(final[1]) for g, final in finals.items() if final is not None}
            for agent in self.agents.values():
                await agent.stop()
            nursery.cancel_scope.cancel()
        return self.report(since, until, finals, replicas)

    async def hosts_with(self, keys: set[str]) -> list[str]:
        """The hosts with a cache file on disk (any ``*.bin`` in the state directory: the agent's own, or a replica
        of a peer's) that holds every key of a group's final dump (keys name their worker, so only that group's
        files can), within 5 s."""
        found: list[str] = []
        with trio.move_on_after(5):
            while True:
                found = [agent.name for agent in self.agents.values() if self.holds(agent, keys)]
                if len(found) >= 2:
                    break
                await trio.sleep(0.2)
        return found

    @staticmethod
    def holds(agent: AgentProcess, keys: set[str]) -> bool:
        for path in sorted(agent.state_dir.rglob("*.bin")):
            image = peek_cache(path)
            entry = image.entries.get(PLAIN) if image is not None else None
            try:
                cache = decode_value(entry) if entry is not None else None
            except ValueError:
                continue
            if isinstance(cache, dict) and keys <= set(cache):
                return True
        return False

    # -- the verdict -------------------------------------------------------------------------------------------
    def report(
        self,
        since: float,
        until: float,
        finals: dict[str, tuple[str, set[str]] | None],
        replicas: dict[str, list[str]],
    ) -> dict[str, Any]:
        events = after_dumps(self.events(), finals)
        dumps = {g: final[1] for g, final in finals.items() if final is not None}
        overall, verdicts, split_problems = checker.check_groups(
            events, dumps, self.bad_versions, since, until, self.groups
        )
        duration = max(until - since, 1e-9)
        marks = [e for e in events if e["e"] == "chaos"]
        failovers = host_loss_failovers(events, self.losses)
        measured = [f["seconds"] for f in failovers if f["seconds"] is not None]
        groups: dict[str, Any] = {}
        for name, v in verdicts.items():
            final = finals[name]
            groups[name] = {
                "overlaps": len(v.overlaps),
                "epoch_violations": len(v.epoch_problems),
                "writes_checked": v.writes_checked,
                "writes_lost": len(v.writes_lost) if final is not None else v.writes_checked,
                "bad_commits_processed": len(v.bad_commands),
                "no_processor_share": round(sum(v.idle) / duration, 4),
                "no_processor_total_s": round(sum(v.idle), 3),
                "no_processor_longest_s": round(max(v.idle, default=0.0), 3),
                "no_processor_stretches": len(v.idle),
                "commands": v.commands,
                "processing_segments": v.segments,
                "faults_aimed": sum(1 for e in events if e["e"] == "chaos" and e.get("group") == name),
                "final_holder": final[0] if final is not None else None,
                "hosts_with_final_cache": replicas.get(name, []),
            }
        violations = list(overall.violations)
        violations += [f"groups: {p}" for p in split_problems[:5]]
        violations += [f"P2: {g}: no worker processed after the faults were undone" for g, f in finals.items() if not f]
        violations += [
            f"P2: {f['host']} lost, {f['group']} never processed again" for f in failovers if f["seconds"] is None
        ]
        violations += [
            f"P3: {g}: the final holder's keys are on disk on {', '.join(hosts) or 'no host'} only, not on two hosts"
            for g, hosts in replicas.items()
            if len(hosts) < 2
        ]
        violations += self.agent_exits
        idle = overall.idle
        return {
            "duration_s": round(until - since, 1),
            "ttl_s": self.args.ttl,
            # Every fault done, by its journal mark (one still on when the soak's time ran out counts too).
            "faults": dict(
                sorted(Counter(e["kind"].split(":")[0] for e in marks if "commit" not in e["kind"]).items())
            ),
            "overlaps": len(overall.overlaps),
            "epoch_violations": len(overall.epoch_problems),
            "writes_checked": overall.writes_checked,
            "writes_lost": len(overall.writes_lost),
            "no_processor_share": round(sum(idle) / (duration * len(self.groups)), 4),
            "no_processor_total_s": round(sum(idle), 3),
            "no_processor_longest_s": round(max(idle, default=0.0), 3),
            "no_processor_p99_s": round(checker.percentile(idle, 99), 3),
            "no_processor_stretches": len(idle),
            "no_processor_by_cause": by_cause(overall.idle_causes),
            "bad_commits_processed": len(overall.bad_commands),
            "commits": dict(sorted(self.commits.items())),
            "webhooks_missed": self.webhooks_missed,
            "host_losses": len(self.losses),
            "host_loss_failover_p50_s": round(checker.percentile(measured, 50), 3) if measured else None,
            "host_loss_failover_p99_s": round(checker.percentile(measured, 99), 3) if measured else None,
            "host_loss_failover_max_s": max(measured) if measured else None,
            "host_loss_failovers": failovers,
            "commands": overall.commands,
            "processing_segments": overall.segments,
            "worker_processes": len({e["id"] for e in events if e["e"] == "boot"}),
            "agent_starts": {name: a.starts for name, a in self.agents.items()},
            "agent_exits": len(self.agent_exits),
            # Connections the proxy carried, by link (source->destination; "?" an opener it could not name): an
            # agent cut from its peers is cut on every link here that names it.
            "proxy_connections": dict(sorted(self.net.stats.items())),
            "notifications": dict(self.discord.counts),
            "notes": self.notes[:10],
            "seed": self.args.seed,
            "shard_count": self.args.shards or None,
            "groups": groups,
            "violations": violations,
        }

    # -- cleaning up -------------------------------------------------------------------------------------------
    def kill_everything(self) -> None:
        """SIGKILL every agent, every worker any of them ran (each its own session), every etcd member."""
        for agent in self.agents.values():
            agent.thaw()
            if agent.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(agent.process.pid, signal.SIGKILL)
        self.follow()
        for agent in self.agents.values():
            for pid, ticks, _ in agent.children().values():
                signal_pid(pid, ticks, signal.SIGCONT)
                signal_pid(pid, ticks, signal.SIGKILL)
        for pid, (_, ticks) in self.boots.items():
            if alive(pid, ticks):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        if self.etcd is not None:
            self.etcd.close()
        with contextlib.suppress(Exception):
            self.discord.close()


def summary(result: dict[str, Any]) -> str:
    faults = ", ".join(f"{kind} {n}" for kind, n in result["faults"].items()) or "none"
    lines = [
        f"cluster chaos soak: {result['duration_s']} s, 3 agents, etcd TTL {result['ttl_s']} s, seed {result['seed']};"
        f" faults: {faults}",
        f"  P1 overlapping processing intervals: {result['overlaps']} ({result['commands']} commands in"
        f" {result['processing_segments']} segments); epoch violations: {result['epoch_violations']}",
        f"  P2 no processor: {result['no_processor_share']:.2%} of the soak, longest {result['no_processor_longest_s']}"
        f" s, p99 {result['no_processor_p99_s']} s over {result['no_processor_stretches']} stretches",
        "  P2 by cause: "
        + (
            ", ".join(
                f"{kind} {c['total_s']} s/{c['n']:g} (longest {c['longest_s']})"
                for kind, c in result["no_processor_by_cause"].items()
            )
            or "-"
        ),
        f"  host losses: {result['host_losses']}; failover p50 {result['host_loss_failover_p50_s']} s,"
        f" p99 {result['host_loss_failover_p99_s']} s, max {result['host_loss_failover_max_s']} s"
        f" over {len(result['host_loss_failovers'])} groups held",
        f"  P3 acknowledged cache writes checked: {result['writes_checked']}, lost: {result['writes_lost']}",
        f"  P4 bad commits that processed: {result['bad_commits_processed']}; commits {result['commits']},"
        f" webhooks no agent took: {result['webhooks_missed']}",
        f"  agent starts {result['agent_starts']}, exits by themselves {result['agent_exits']},"
        f" worker processes {result['worker_processes']}",
    ]
    for name, g in result["groups"].items():
        lines.append(
            f"  {name}: overlaps {g['overlaps']}, epoch violations {g['epoch_violations']}, writes lost"
            f" {g['writes_lost']} of {g['writes_checked']}, no processor {g['no_processor_share']:.2%} (longest"
            f" {g['no_processor_longest_s']} s), final holder {g['final_holder']}, final cache on"
            f" {', '.join(g['hosts_with_final_cache']) or 'no host'}"
        )
    lines += [f"note: {n}" for n in result["notes"]]
    lines += [f"VIOLATION {v}" for v in result["violations"]]
    return "\n".join(lines)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups: what actually went wrong."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def faults_list(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown fault kinds {unknown}: choose among {', '.join(FAULTS)}")
    return kinds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300, help="how long faults are injected (default 300)")
    parser.add_argument("--seed", type=int, default=7, help="fixes the schedule of faults")
    parser.add_argument("--ttl", type=int, default=10, help="the agents' etcd lease TTL, seconds (default 10)")
    parser.add_argument(
        "--faults",
        type=faults_list,
        default=list(FAULTS),
        help=f"comma-separated kinds (default all: {','.join(FAULTS)})",
    )
    parser.add_argument("--shards", type=int, default=0, help="a sharded bot of this many shards (default: unsharded)")
    parser.add_argument("--shards-per-worker", type=int, default=2, help="shards in a group (with --shards)")
    parser.add_argument(
        "--deploys",
        action="store_true",
        help="also push a good commit, then a bad one (failing health, crashing, hanging), 6-10 s apart, each announced"
        " by a signed webhook to every agent (the elected deployer rolls it out across hosts); P4: no bad commit runs",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (journal, logs)")
    parser.add_argument(
        "--unsafe-bot", action="store_true", help="self-test: workers process without asking the SDK (must fail)"
    )
    args = parser.parse_args(argv)
    if args.shards and (args.shards < 2 or not 1 <= args.shards_per_worker < args.shards):
        parser.error("--shards needs at least 2 shards and --shards-per-worker from 1 to fewer than --shards")
    tmp = Path(tempfile.mkdtemp(prefix="urban-robot-chaos-cluster-"))
    soak = Soak(args, tmp)
    result: dict[str, Any] | None = None
    try:
        result = trio.run(soak.run)
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the soak could not run: say why, keep the evidence
        why = "; ".join(f"{type(e).__name__}: {e}" for e in leaves(exc))
        print(f"soak: could not finish: {why} (files in {tmp})", file=sys.stderr)
        args.keep = True
        return 2
    finally:
        soak.kill_everything()
        if result is not None and result["violations"] and not args.unsafe_bot:
            args.keep = True
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
