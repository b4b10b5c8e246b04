"""Restart benchmark: ``systemctl restart`` as it is done to the supervisor (SIGTERM, then start again), and a
supervisor killed outright (SIGKILL, then start again: its workers are adopted).

A real ``python -m urban_robot`` supervises real worker processes (the rehearsal bot,
``urban_robot.testing.worker``, one running, one hot standby) with the default timings (lease 45 s + 5 s
margin). The bot's ``rehearsal.toml`` asks each worker to journal, with the wall-clock time, each change of
whether it processes: the time without a processor is measured from the workers' side, not inferred from
the supervisor's log.

- SIGTERM rounds: wait for a processor, SIGTERM, wait for the exit, start again on the same state directory.
  Measured: from that start to the log line that a worker runs (``is running, epoch N``), and from the
  SIGTERM to a worker processing again according to the journal (the bot's whole outage, stop included).
- SIGKILL rounds: SIGKILL the supervisor, start again; its workers keep running in their own sessions, the
  holder keeps processing on its lease and reconnects to the new supervisor, which adopts it. Measured: the
  longest time within the round during which no worker processed (expected: 0 s), and the time until the
  holder is adopted (``reconnected lease holder``).

The last line printed is one JSON object: {"restart_p50_s", "restart_p99_s", "restart_max_s",
"sigterm_outage_p50_s", "sigterm_outage_p99_s", "stop_max_s", "sigkill_outage_max_s", "sigkill_adopted_p50_s",
"sigkill_adopted_p99_s", "runs"}.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """One port for every start: adopted workers reconnect to the address they were given."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(state: Path, bot: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "urban_robot", "--port", str(port), "--state-dir", str(state)]
    command += ["--helium-path", str(bot), "--command", f"{sys.executable} -m urban_robot.testing.worker"]
    env = {**os.environ, "BOT_TOKEN": "bench-token"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(process: subprocess.Popen[bytes], marker: bytes, timeout: float) -> None:
    assert process.stdout is not None
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(process.stdout.fileno(), 65536) if ready else b""
        if not chunk:
            process.kill()
            raise SystemExit(f"no {marker.decode()!r} within {timeout:g}s:\n{seen.decode(errors='replace')[-2000:]}")
        seen += chunk


def intervals(journal: Path) -> list[tuple[float, float]]:
    """When some worker processed, from the journal: [start, end) per worker, open ends at +inf."""
    opened: dict[str, float] = {}
    spans: list[tuple[float, float]] = []
    for line in journal.read_text().splitlines():
        at, name, what = line.split()
        if what == "processing":
            opened.setdefault(name, float(at))
        elif name in opened:
            spans.append((opened.pop(name), float(at)))
    return spans + [(began, float("inf")) for began in opened.values()]


def longest_gap(journal: Path, since: float, until: float) -> float:
    """The longest time within [since, until] when no worker processed."""
    covered = sorted((max(a, since), min(b, until)) for a, b in intervals(journal) if b > since and a < until)
    gap, reached = 0.0, since
    for a, b in covered:
        gap = max(gap, a - reached)
        reached = max(reached, b)
    return max(gap, until - reached)


def processing_again(journal: Path, after: float, timeout: float) -> float:
    """The first time after ``after`` when a worker processes (the journal is polled: a benchmark, not a test)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        starts = [a for a, b in intervals(journal) if b > after and a >= after]
        if starts:
            return min(starts)
        time.sleep(0.02)
    raise SystemExit(f"no worker processing within {timeout:g}s of {after}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="rounds of each kind (SIGTERM, then SIGKILL)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a processor per start")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state, bot, journal = Path(tmp, "state"), Path(tmp, "bot"), Path(tmp, "journal")
        bot.mkdir()
        journal.touch()
        port = free_port()
        (bot / "rehearsal.toml").write_text(f"journal = {str(journal)!r}\n")
        process = start(state, bot, port)
        wait_for(process, b"is running, epoch 1", args.timeout)
        restarts, outages, stops, kills, adopted = [], [], [], [], []
        epoch = 1
        for run in range(1, args.runs + 1):
            stopping, stopping_wall = time.monotonic(), time.time()
            process.send_signal(signal.SIGTERM)
            assert process.stdout is not None
            process.stdout.read()
            process.wait()
            stops.append(time.monotonic() - stopping)
            started = time.monotonic()
            process = start(state, bot, port)
            epoch += 1
            wait_for(process, f"is running, epoch {epoch}".encode(), args.timeout)
            restarts.append(time.monotonic() - started)
            outages.append(processing_again(journal, stopping_wall, args.timeout) - stopping_wall)
            print(f"SIGTERM {run}: processing {restarts[-1]:.2f} s after the start, {outages[-1]:.2f} s after SIGTERM")
        for run in range(1, args.runs + 1):
            killed = time.time()
            process.kill()
            process.wait()
            process = start(state, bot, port)
            wait_for(process, b"reconnected lease holder", args.timeout)
            adopted.append(time.time() - killed)
            time.sleep(0.1)  # let the journal catch up (it is written every 20 ms)
            kills.append(longest_gap(journal, killed, time.time()))
            print(
                f"SIGKILL {run}: holder adopted {adopted[-1]:.2f} s after the kill; no processor for {kills[-1]:.2f} s"
            )
        process.send_signal(signal.SIGTERM)
        process.communicate()
    result = {
        "restart_p50_s": round(statistics.median(restarts), 3),
        "restart_p99_s": percentile(restarts, 0.99),
        "restart_max_s": round(max(restarts), 3),
        "sigterm_outage_p50_s": round(statistics.median(outages), 3),
        "sigterm_outage_p99_s": percentile(outages, 0.99),
        "stop_max_s": round(max(stops), 3),
        "sigkill_outage_max_s": round(max(kills), 3),
        "sigkill_adopted_p50_s": round(statistics.median(adopted), 3),
        "sigkill_adopted_p99_s": percentile(adopted, 0.99),
        "runs": len(restarts),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
