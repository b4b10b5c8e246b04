"""Restart benchmark: ``systemctl restart`` as it is done to the supervisor — SIGTERM, then start again.

A real ``python -m urban_robot`` supervises real worker processes (``urban_robot.testing.worker``, one
running, one hot standby) with the default timings (lease 45 s + 5 s margin). Each round waits for a
processor, sends SIGTERM, waits for the exit, and starts again on the same state directory; what is
measured is the time from that start to the log line that a worker runs (``is running, epoch N``): the
bot without a processor across a restart, less the stop itself.

The last line printed is one JSON object: {"restart_p50_s", "restart_p99_s", "restart_max_s", "stop_max_s", "runs"}.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start(state: Path, bot: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "urban_robot", "--port", "0", "--state-dir", str(state)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a processor per start")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state, bot = Path(tmp, "state"), Path(tmp, "bot")
        bot.mkdir()
        process = start(state, bot)
        wait_for(process, b"is running, epoch 1", args.timeout)
        restarts, stops = [], []
        for epoch in range(2, args.runs + 2):
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.stdout is not None
            process.stdout.read()
            process.wait()
            stops.append(time.monotonic() - stopping)
            started = time.monotonic()
            process = start(state, bot)
            wait_for(process, f"is running, epoch {epoch}".encode(), args.timeout)
            restarts.append(time.monotonic() - started)
            print(f"restart {epoch - 1}: processing {restarts[-1]:.2f} s after the start", flush=True)
        process.send_signal(signal.SIGTERM)
        process.communicate()
    ordered = sorted(restarts)
    result = {
        "restart_p50_s": round(statistics.median(ordered), 3),
        "restart_p99_s": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 3),
        "restart_max_s": round(ordered[-1], 3),
        "stop_max_s": round(max(stops), 3),
        "runs": len(restarts),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
