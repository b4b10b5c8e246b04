"""The several-hosts benchmark (scripts/bench/cluster): its overlap check on made-up logs, and one small real run
(one round of each fault, TTL 6 s). ``just bench-cluster`` runs ten rounds at the default TTL (10 s)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from urban_robot.testing.etcd import etcd_or_skip

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

from bench.cluster.run import Logs, WorkerLog, overlaps, spans_of  # noqa: E402


def worker(host: str, lines: str, dead_at: float | None = None) -> WorkerLog:
    """A worker whose log holds ``lines`` ("<time> <step>" each), as ``Logs.poll`` parses them."""
    parsed = [(float(at), step) for at, step in (line.split() for line in lines.strip().splitlines())]
    return WorkerLog(host, Path(f"/logs/{host}-{len(lines)}.log"), io.BytesIO(), 0.0, lines=parsed, dead_at=dead_at)


def logs_of(*workers: WorkerLog) -> Logs:
    logs = Logs({})
    logs.workers = {w.path: w for w in workers}
    return logs


def test_a_span_ends_at_its_workers_stop_line_or_death_and_an_open_one_at_the_end() -> None:
    stopped = worker("a", "1.0 hello\n2.0 processing\n3.0 cmd:coma\n3.1 stopped\n4.0 processing\n5.0 fenced")
    assert spans_of(stopped, 10.0) == [(2.0, 3.0), (4.0, 5.0)]
    killed = worker("b", "1.0 processing\n2.0 processing", dead_at=6.0)  # a lapse without a line: one span
    assert spans_of(killed, 10.0) == [(1.0, 6.0)]
    assert spans_of(worker("c", "1.0 processing\n1.5 disconnected"), 10.0) == [(1.0, 10.0)]  # still processing


def test_overlapping_spans_of_two_workers_are_found_and_successive_ones_are_not() -> None:
    before = worker("alpha", "1.0 processing\n2.0 stopped")
    after = worker("beta", "2.5 processing\n4.0 cmd:shutdown")
    assert overlaps(logs_of(before, after), 10.0) == []
    early = worker("gamma", "3.9 processing")  # while beta still processed
    [found] = overlaps(logs_of(before, after, early), 10.0)
    assert "beta" in found and "gamma" in found
    lost = worker("alpha", "1.0 processing\n1.5 disconnected")  # never stopped, never seen dead: to the end
    assert len(overlaps(logs_of(lost, after), 10.0)) == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_round_of_each_fault_on_three_agents() -> None:
    etcd_or_skip()
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench" / "cluster" / "run.py"), "--kills", "1", "--ttl", "6"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["overlaps"] == 0 and figures["spans_checked"] >= 4, figures
    # The lost host's key goes with its etcd lease: 4-6 s after the kill (its last keep-alive up to 2 s before).
    assert 3000 < figures["host_loss_kill_to_expiry_p50_ms"] < 9000, figures
    assert figures["host_loss_kill_to_expiry_p50_ms"] < figures["host_loss_p50_ms"], figures
    # A crashed holder's host yields the key, a stopped agent releases it: no TTL to wait.
    assert 0 < figures["worker_crash_p50_ms"] < 3000 and 0 < figures["planned_stop_p50_ms"] < 3000, figures
    assert 0 < figures["single_host_failover_p50_ms"] < 3000, figures
