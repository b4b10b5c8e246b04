"""Several-hosts benchmark (issue 17, docs/protocol.md §19): three agents on loopback, a real 3-member etcd.

Each agent is a real ``python -m urban_robot`` with its own configuration file (a ``[cluster]`` section: name,
host, etcd, advertise, ttl; ``secrets.cluster``; ``standbys = 0``), state directory, port and bot directory; the
bot is the rehearsal worker (``python -m urban_robot.testing.worker``), whose log lines are
``<time.monotonic()> <identity> <step>``: CLOCK_MONOTONIC is one clock for the whole machine, so the workers'
own lines time everything, against this script's ``time.monotonic()`` at each signal. The etcd lease's TTL is the
default (10 s) unless ``--ttl`` says otherwise; every other setting is the default too, except that kills are
deliberate (``workers.crash_loop_losses = 0``, ``workers.restart_backoff = 0``).

Measured, ``--kills`` times each, every round starting with one group holder processing and a warm standby on
each of the two other hosts:

- **host loss**: SIGKILL the holder's agent, then at once every worker process of its host (pids from its
  ``/api/status``, then any process whose stdout is a log file of that host); → the first ``processing`` line of
  a worker on another host. Its etcd lease is not revoked: the others wait for etcd to expire it. Also reported
  minus the TTL: what the promotion costs beyond etcd's expiry. The killed agent is then started again.
- **worker crash across hosts**: SIGKILL only the holder's worker; with ``standbys = 0`` its host has nobody
  left for the group and yields the key; → the next ``processing`` (on another host).
- **planned stop**: SIGTERM the holder's agent (it shuts its workers down, then revokes its etcd lease);
  → the next ``processing`` on another host. The agent is then started again.
- **the peer, same run**: the single-host supervisor's crash failover: one ``python -m urban_robot`` without
  ``[cluster]``, ``standbys = 1``, SIGKILL the holder worker → the standby's ``processing``.

Each figure is reported as p50 and p99 (ms), with ratios against the single-host crash failover. On the side,
every worker's processing spans (``processing`` up to its ``fenced``, ``stopped``, ``cmd:coma`` or
``cmd:shutdown`` line, or its death: our SIGKILL, else the first time this script saw the process gone, else
the end of the run) are checked pairwise: two that overlap break P1; the run then exits 1.

The last line printed is one JSON object: {"ttl_s", "host_loss_p50_ms", "host_loss_p99_ms",
"host_loss_over_ttl_p50_ms", "worker_crash_p50_ms", "planned_stop_p50_ms", "single_host_failover_p50_ms",
"host_loss_vs_single_host_p50", ..., "overlaps", "spans_checked", "kills"}.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import attrs
import httpx

from urban_robot.cluster._etcd import prefix_end
from urban_robot.testing.etcd import EtcdCluster, free_port

WORKER = (sys.executable, "-m", "urban_robot.testing.worker")
HOSTS = ("alpha", "beta", "gamma")
CLUSTER = "bench"
GROUP = 0  # unsharded: the one group, "shard 0" in etcd
POLL = 0.02  # seconds between looks at the logs and the agents
STEP_TIMEOUT = 120.0  # seconds for any wait beyond the TTL: a hang fails the run instead of holding it
ENDS = {"fenced", "stopped", "cmd:coma", "cmd:shutdown"}  # a worker's lines after which it no longer processes


# -- the workers' logs ------------------------------------------------------------------------------------------
@attrs.define(eq=False)
class WorkerLog:
    """One worker process: its log file (kept open: the agent prunes old ones), its lines, its pid and death."""

    host: str
    path: Path
    file: Any
    found_at: float
    buffer: bytes = b""
    lines: list[tuple[float, str]] = attrs.field(factory=list)  # (monotonic time, step)
    pid: int | None = None
    dead_at: float | None = None  # our SIGKILL, or the first look that found it gone


class Logs:
    """Every worker log file under the hosts' log directories, read as they grow, with each file's process."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs
        self.workers: dict[Path, WorkerLog] = {}

    def close(self) -> None:
        for w in self.workers.values():
            w.file.close()

    def poll(self) -> None:
        now = time.monotonic()
        for host, directory in self.dirs.items():
            for path in sorted(directory.glob("helium-*.log")) if directory.is_dir() else ():
                if path not in self.workers:
                    with suppress(FileNotFoundError):
                        self.workers[path] = WorkerLog(host, path, open(path, "rb"), now)
        unknown = [w for w in self.workers.values() if w.pid is None and now - w.found_at < 5.0]
        if unknown:
            self._find_pids(unknown)
        for w in self.workers.values():
            w.buffer += w.file.read()
            *complete, w.buffer = w.buffer.split(b"\n")
            for raw in complete:
                parts = raw.decode(errors="replace").split()
                with suppress(ValueError, IndexError):
                    w.lines.append((float(parts[0]), parts[2]))
            if w.pid is not None and w.dead_at is None and not alive(w.pid):
                w.dead_at = now

    def _find_pids(self, unknown: list[WorkerLog]) -> None:
        """A worker's stdout is its log file: the process whose fd 1 is that file is the worker."""
        wanted = {str(w.path): w for w in unknown}
        for pid in pids():
            with suppress(OSError):
                w = wanted.get(os.readlink(f"/proc/{pid}/fd/1"))
                if w is not None:
                    w.pid = pid

    def host_pids(self, host: str) -> list[int]:
        """Every live process whose stdout is one of ``host``'s worker log files (found again, now)."""
        directory = str(self.dirs[host]) + "/"
        found = []
        for pid in pids():
            with suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/1").startswith(directory):
                    found.append(pid)
        return found

    def killed(self, pid: int, at: float) -> None:
        for w in self.workers.values():
            if w.pid == pid and w.dead_at is None:
                w.dead_at = at

    def first_processing(self, after: float, not_host: str | None = None) -> tuple[float, str] | None:
        """The earliest ``processing`` line after ``after`` of a worker not on ``not_host``: (time, host)."""
        found = [
            (at, w.host)
            for w in self.workers.values()
            if w.host != not_host
            for at, step in w.lines
            if step == "processing" and at > after
        ]
        return min(found) if found else None

    def processing_now(self, host: str) -> bool:
        """Whether a worker of ``host`` said ``processing`` and nothing since that ends it (nor died)."""
        return any(w.host == host and any(end is None for _, end in spans_of(w, None)) for w in self.workers.values())

    def spans(self, until: float) -> list[tuple[float, float, WorkerLog]]:
        return [(a, b if b is not None else until, w) for w in self.workers.values() for a, b in spans_of(w, until)]


def spans_of(w: WorkerLog, until: float | None) -> list[tuple[float, float | None]]:
    """``w``'s processing spans: from a ``processing`` line to the next line that ends it, or its death; an open
    one ends at ``until`` (None: left open). Two ``processing`` lines in a row are one span (the lease may have
    lapsed in between without a line: counting it as processing is the cautious side)."""
    out: list[tuple[float, float | None]] = []
    start: float | None = None
    for at, step in w.lines:
        if step == "processing" and start is None:
            start = at
        elif step in ENDS and start is not None:
            out.append((start, at))
            start = None
    if start is not None:
        out.append((start, w.dead_at if w.dead_at is not None else until))
    return out


def overlaps(logs: Logs, until: float) -> list[str]:
    """Every pair of processing spans of two different workers that intersect, said in one line each."""
    spans = sorted(logs.spans(until), key=lambda s: s[0])
    found = []
    for i, (a0, a1, wa) in enumerate(spans):
        for b0, b1, wb in spans[i + 1 :]:
            if b0 >= a1:
                break
            if wb is not wa:
                found.append(
                    f"{wa.host}:{wa.path.name} [{a0:.3f}, {a1:.3f}] and {wb.host}:{wb.path.name} [{b0:.3f}, {b1:.3f}]"
                )
    return found


def pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it processes nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


# -- etcd's side ------------------------------------------------------------------------------------------------
class KeyWatch:
    """When (this machine's monotonic clock, on arrival) etcd deleted a group's lease key: its expiry with the
    holder's etcd lease, or a release. A thread reads etcd's watch stream (the v3 JSON gateway) for the run."""

    def __init__(self, endpoints: list[str], prefix: bytes) -> None:
        self.endpoints, self.prefix = endpoints, prefix
        self.deletes: list[float] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._run, name="bench-cluster-watch", daemon=True).start()

    def _run(self) -> None:
        revision = 0
        with httpx.Client(trust_env=False, timeout=httpx.Timeout(5.0, read=None)) as http:
            for attempt in range(1000):  # a broken stream is opened again (on the next member) from where it was
                request = {"key": _b64(self.prefix), "range_end": _b64(prefix_end(self.prefix))}
                if revision:
                    request["start_revision"] = str(revision + 1)
                url = self.endpoints[attempt % len(self.endpoints)] + "/v3/watch"
                try:
                    with http.stream("POST", url, json={"create_request": request}) as answer:
                        for line in answer.iter_lines():
                            at = time.monotonic()
                            for event in json.loads(line).get("result", {}).get("events", []):
                                revision = max(revision, int(event["kv"].get("mod_revision", 0)))
                                if event.get("type") == "DELETE":
                                    with self.lock:
                                        self.deletes.append(at)
                except (httpx.HTTPError, ValueError):
                    time.sleep(0.1)

    def first_delete(self, after: float) -> float | None:
        with self.lock:
            return min((at for at in self.deletes if at > after), default=None)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- the supervisors --------------------------------------------------------------------------------------------
@attrs.define(eq=False)
class Supervisor:
    """One ``python -m urban_robot`` on its own config file, state directory, bot directory and port."""

    name: str
    root: Path
    port: int
    admin_token: str
    http: httpx.Client
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def config(self) -> Path:
        return self.root / "urban-robot.toml"

    @property
    def log_dir(self) -> Path:
        return self.root / "bot" / "log"  # the default: <helium_path>/log

    def write_config(self, standbys: int, cluster: dict[str, Any] | None, cluster_secret: str = "") -> None:
        (self.root / "bot").mkdir(parents=True, exist_ok=True)
        lines = [
            f"helium_path = {json.dumps(str(self.root / 'bot'))}",
            f"command = {json.dumps(list(WORKER))}",
            'host = "127.0.0.1"',
            f"port = {self.port}",
            f"state_dir = {json.dumps(str(self.root / 'state'))}",
            f"standbys = {standbys}",
            "",
            "[workers]",
            "crash_loop_losses = 0  # the kills are deliberate: no crash loop",
            "restart_backoff = 0  # every kill is a young death: no back-off before its replacement",
            "",
            "[secrets]",
            'bot_token = "bench-token"',
            f"admin_token = {json.dumps(self.admin_token)}",
        ]
        if cluster is not None:
            lines.append(f"cluster = {json.dumps(cluster_secret)}")
            lines += ["", "[cluster]", *(f"{key} = {json.dumps(value)}" for key, value in cluster.items())]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.starts += 1
        out = open(self.root / f"supervisor-{self.starts}.log", "wb")
        with out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "urban_robot", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def status(self) -> dict[str, Any] | None:
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            answer = self.http.get(
                f"http://127.0.0.1:{self.port}/api/status", headers={"Authorization": f"Bearer {self.admin_token}"}
            )
        except httpx.HTTPError:
            return None
        return answer.json() if answer.status_code == 200 else None

    def tail(self) -> str:
        path = self.root / f"supervisor-{self.starts}.log"
        with suppress(OSError):
            return path.read_text(errors="replace")[-1500:]
        return ""

    def stop(self) -> None:
        """SIGTERM and wait (the supervisor shuts its workers down); SIGKILL if it takes too long."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def holder(status: dict[str, Any]) -> tuple[str, int] | None:
    """(identity, pid) of the group's running worker, if this supervisor has one."""
    identity = status["groups"][GROUP]["running"]
    if identity is None:
        return None
    pids_ = [c["pid"] for c in status.get("children", []) if c["identity"] == identity]
    return (identity, pids_[0]) if pids_ else None


def wait(what: str, check: Callable[[], Any], timeout: float, logs: Logs, on_fail: Callable[[], str]) -> Any:
    """Poll ``logs`` and ``check`` every POLL seconds until ``check`` returns something true; else fail the run."""
    deadline = time.monotonic() + timeout
    while True:
        logs.poll()
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise SystemExit(f"bench-cluster: no {what} within {timeout:g} s; last supervisor output:\n{on_fail()}")
        time.sleep(POLL)


# -- the cluster ------------------------------------------------------------------------------------------------
@attrs.define
class Round:
    ms: float  # the signal -> the first ``processing`` line on another host
    host: str  # the holder's host, signalled
    successor: str  # the host whose worker processes next
    key_gone_ms: float  # the signal -> etcd deleted the group's lease key (expiry or release), seen on the watch
    agent_exit_ms: float | None = None  # planned stop: the signal -> the agent's exit


class Cluster:
    def __init__(self, agents: dict[str, Supervisor], logs: Logs, watch: KeyWatch) -> None:
        self.agents, self.logs, self.watch = agents, logs, watch

    def tails(self) -> str:
        return "\n".join(f"--- {name} ---\n{agent.tail()}" for name, agent in self.agents.items())

    def settled(self) -> tuple[str, str, int] | None:
        """(host, identity, pid) of the one holder once every agent answers, one host runs the group and says it
        processes (its worker's log), each other host has an approved standby; else None."""
        statuses = {name: agent.status() for name, agent in self.agents.items()}
        if any(s is None for s in statuses.values()):
            return None
        held = {name: holder(s) for name, s in statuses.items() if s is not None and holder(s) is not None}
        if len(held) != 1:
            return None
        [(host, found)] = held.items()
        assert found is not None
        ready = [s is not None and s["groups"][GROUP]["standbys"] >= 1 for n, s in statuses.items() if n != host]
        granting = any(g["granting"] for g in (statuses[host] or {})["cluster"]["groups"].values())
        if not (all(ready) and granting and self.logs.processing_now(host)):
            return None
        return host, *found

    def wait_settled(self) -> tuple[str, str, int]:
        settled: tuple[str, str, int] = wait(
            "settled cluster (one holder, a standby on each other host)",
            self.settled,
            STEP_TIMEOUT,
            self.logs,
            self.tails,
        )
        return settled

    def outcome(self, signalled: float, host: str, timeout: float) -> Round:
        """What followed a signal to ``host`` at ``signalled``: the next processing elsewhere, the key's deletion."""
        at, where = wait(
            f"processing on a host other than {host}",
            lambda: self.logs.first_processing(signalled, host),
            timeout,
            self.logs,
            self.tails,
        )
        # Nobody is granted before the key went: its deletion is on the watch by now, or a moment later.
        gone = wait(
            "deletion of the lease key on etcd's watch",
            lambda: self.watch.first_delete(signalled),
            5.0,
            self.logs,
            self.tails,
        )
        return Round((at - signalled) * 1000, host, where, (gone - signalled) * 1000)


def host_loss(cluster: Cluster, ttl: int) -> Round:
    host, _, _ = cluster.wait_settled()
    agent = cluster.agents[host]
    status: dict[str, Any] = wait(f"/api/status of {host}", agent.status, STEP_TIMEOUT, cluster.logs, agent.tail)
    assert agent.process is not None
    victims = [c["pid"] for c in status.get("children", [])]
    killed_at = time.monotonic()
    agent.process.kill()  # the agent first: a dead agent yields nothing when its workers die
    for pid in victims:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in cluster.logs.host_pids(host):  # any child of that host that /api/status did not name
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        victims.append(pid)
    for pid in victims:
        cluster.logs.killed(pid, killed_at)
    agent.process.wait()
    result = cluster.outcome(killed_at, host, ttl + STEP_TIMEOUT)
    agent.start()
    return result


def worker_crash(cluster: Cluster) -> Round:
    host, _, pid = cluster.wait_settled()
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    cluster.logs.killed(pid, killed_at)
    return cluster.outcome(killed_at, host, STEP_TIMEOUT)


def planned_stop(cluster: Cluster) -> Round:
    host, _, _ = cluster.wait_settled()
    agent = cluster.agents[host]
    process = agent.process
    assert process is not None
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    result = cluster.outcome(stopped_at, host, STEP_TIMEOUT)
    wait("exit of the stopped agent", lambda: process.poll() is not None, STEP_TIMEOUT, cluster.logs, agent.tail)
    result.agent_exit_ms = (time.monotonic() - stopped_at) * 1000
    agent.start()
    return result


def run_cluster(root: Path, kills: int, ttl: int, http: httpx.Client) -> dict[str, Any]:
    rounds: dict[str, list[Round]] = {"host_loss": [], "worker_crash": [], "planned_stop": []}
    with EtcdCluster.start(root / "etcd", size=3) as etcd, ExitStack() as stack:
        ports = {name: free_port() for name in HOSTS}
        secret = secrets.token_hex(24)
        agents = {name: Supervisor(name, root / name, ports[name], secrets.token_hex(16), http) for name in HOSTS}
        for name, agent in agents.items():
            advertise = f"http://127.0.0.1:{ports[name]}"
            section = {"name": CLUSTER, "host": name, "etcd": etcd.endpoints, "advertise": advertise, "ttl": ttl}
            agent.write_config(0, section, secret)
        logs = Logs({name: agent.log_dir for name, agent in agents.items()})
        stack.callback(logs.close)
        for agent in agents.values():
            stack.callback(agent.stop)
            agent.start()
        cluster = Cluster(agents, logs, KeyWatch(etcd.endpoints, f"/{CLUSTER}/groups/".encode()))
        started = time.monotonic()
        cluster.wait_settled()
        print(f"cluster settled {time.monotonic() - started:.2f} s after the agents' start", flush=True)
        for round_ in range(1, kills + 1):
            r = host_loss(cluster, ttl)
            rounds["host_loss"].append(r)
            print(
                f"host loss {round_}: {r.host} lost, its key expired after {r.key_gone_ms:.0f} ms,"
                f" {r.successor} processes {r.ms:.0f} ms after the kill ({r.ms - r.key_gone_ms:.0f} ms after the"
                f" expiry, {r.ms - ttl * 1000:+.0f} ms past the TTL)",
                flush=True,
            )
        for round_ in range(1, kills + 1):
            r = worker_crash(cluster)
            rounds["worker_crash"].append(r)
            print(
                f"worker crash {round_}: {r.host}'s holder killed, key released after {r.key_gone_ms:.1f} ms,"
                f" {r.successor} processes {r.ms:.1f} ms after the kill",
                flush=True,
            )
        for round_ in range(1, kills + 1):
            r = planned_stop(cluster)
            rounds["planned_stop"].append(r)
            print(
                f"planned stop {round_}: {r.host} SIGTERMed, key released after {r.key_gone_ms:.1f} ms,"
                f" {r.successor} processes {r.ms:.1f} ms after the signal (the agent exited after"
                f" {r.agent_exit_ms:.0f} ms)",
                flush=True,
            )
        cluster.wait_settled()
        for agent in agents.values():
            agent.stop()
        end = time.monotonic()
        logs.poll()
        return {"rounds": rounds, "overlaps": overlaps(logs, end), "spans": len(logs.spans(end))}


def run_single_host(root: Path, kills: int, http: httpx.Client) -> dict[str, Any]:
    supervisor = Supervisor("single", root / "single", free_port(), secrets.token_hex(16), http)
    supervisor.write_config(1, None)
    logs = Logs({"single": supervisor.log_dir})
    failovers: list[float] = []

    def ready() -> tuple[str, int] | None:
        status = supervisor.status()
        if status is None or status["groups"][GROUP]["standbys"] < 1 or not logs.processing_now("single"):
            return None
        return holder(status)

    try:
        supervisor.start()
        for round_ in range(1, kills + 1):
            _, pid = wait("holder with a standby (single host)", ready, STEP_TIMEOUT, logs, supervisor.tail)
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            logs.killed(pid, killed_at)
            found = wait(
                "processing after the kill (single host)",
                functools.partial(logs.first_processing, killed_at),
                STEP_TIMEOUT,
                logs,
                supervisor.tail,
            )
            failovers.append((found[0] - killed_at) * 1000)
            print(f"single-host crash failover {round_}: {failovers[-1]:.1f} ms", flush=True)
        wait("holder with a standby (single host)", ready, STEP_TIMEOUT, logs, supervisor.tail)
        supervisor.stop()
        end = time.monotonic()
        logs.poll()
        return {"failover": failovers, "overlaps": overlaps(logs, end), "spans": len(logs.spans(end))}
    finally:
        supervisor.stop()
        logs.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(single: dict[str, Any], cluster: dict[str, Any], ttl: int, kills: int) -> dict[str, Any]:
    peer = single["failover"]
    peer50, peer99 = statistics.median(peer), percentile(peer, 99)
    result: dict[str, Any] = {"ttl_s": ttl, "kills": kills}
    rounds: dict[str, list[Round]] = cluster["rounds"]
    for key, done in rounds.items():
        values = [r.ms for r in done]
        p50, p99 = statistics.median(values), percentile(values, 99)
        result[f"{key}_p50_ms"], result[f"{key}_p99_ms"] = round(p50, 1), round(p99, 1)
        result[f"{key}_vs_single_host_p50"] = round(p50 / peer50, 1)
        result[f"{key}_vs_single_host_p99"] = round(p99 / peer99, 1)
    result["single_host_failover_p50_ms"] = round(peer50, 1)
    result["single_host_failover_p99_ms"] = round(peer99, 1)
    lost = rounds["host_loss"]
    figures = {
        "host_loss_over_ttl": [r.ms - ttl * 1000 for r in lost],  # negative: etcd counts from the last keep-alive
        "host_loss_kill_to_expiry": [r.key_gone_ms for r in lost],
        "host_loss_expiry_to_processing": [r.ms - r.key_gone_ms for r in lost],  # the promotion's own cost
        "worker_crash_key_released": [r.key_gone_ms for r in rounds["worker_crash"]],
        "planned_stop_key_released": [r.key_gone_ms for r in rounds["planned_stop"]],
        "planned_stop_agent_exit": [r.agent_exit_ms or 0.0 for r in rounds["planned_stop"]],
    }
    for key, values in figures.items():
        result[f"{key}_p50_ms"] = round(statistics.median(values), 1)
        result[f"{key}_p99_ms"] = round(percentile(values, 99), 1)
    for key, done in rounds.items():
        result[f"{key}_ms"] = [round(r.ms, 1) for r in done]
        result[f"{key}_successors"] = [f"{r.host}>{r.successor}" for r in done]
    result["single_host_failover_ms"] = [round(v, 1) for v in peer]
    result["overlaps"] = len(cluster["overlaps"]) + len(single["overlaps"])
    result["spans_checked"] = cluster["spans"] + single["spans"]
    return result


@contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        yield Path(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="rounds of each kind of fault (default 10)")
    parser.add_argument("--ttl", type=int, default=10, help="the agents' etcd lease TTL, seconds (6-300; default 10)")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it (logs, configs, etcd data)")
    args = parser.parse_args()
    if args.kills < 1 or not 6 <= args.ttl <= 300:
        parser.error("--kills must be at least 1 and --ttl within 6-300 (cluster.ttl's range)")
    with workdir(args.keep) as root, httpx.Client(trust_env=False, timeout=2.0) as http:
        single = run_single_host(root, args.kills, http)
        cluster = run_cluster(root, args.kills, args.ttl, http)
    result = summary(single, cluster, args.ttl, args.kills)
    for line in cluster["overlaps"] + single["overlaps"]:
        print(f"OVERLAP (two workers processed at once): {line}", flush=True)
    print(
        f"host loss (TTL {args.ttl} s): p50 {result['host_loss_p50_ms']:.0f} ms, p99 {result['host_loss_p99_ms']:.0f}"
        f" ms; from etcd's expiry p50 {result['host_loss_expiry_to_processing_p50_ms']} ms;"
        f" worker crash: p50 {result['worker_crash_p50_ms']} ms (x{result['worker_crash_vs_single_host_p50']});"
        f" planned stop: p50 {result['planned_stop_p50_ms']} ms (x{result['planned_stop_vs_single_host_p50']});"
        f" single-host crash failover: p50 {result['single_host_failover_p50_ms']} ms;"
        f" {result['spans_checked']} processing spans, {result['overlaps']} overlaps"
    )
    print(json.dumps(result))
    return 1 if result["overlaps"] else 0


if __name__ == "__main__":
    sys.exit(main())
