"""The shard groups benchmark (scripts/bench/shards), small: 2 groups, each holder killed once, a rolling deploy.

``just bench-shards`` runs 16 groups (docs/benchmarks.md has the figures); the bounds here leave room for a loaded
CI machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

from bench.shards.run import longest_gaps  # noqa: E402


def test_a_groups_gap_is_the_time_none_of_its_workers_processed() -> None:
    lines = [
        (0.0, "a", True, "0-0"),
        (1.0, "a", False, "0-0"),
        (1.3, "b", True, "0-0"),  # 0.3 s without a processor in group 0-0
        (0.0, "c", True, "1-1"),
        (1.1, "d", True, "1-1"),  # 1-1: its successor processed before its holder's idle line (a late look)
        (1.2, "c", False, "1-1"),
    ]
    gaps = longest_gaps(lines, 0.5, 2.0)
    assert gaps == pytest.approx({"0-0": 0.3, "1-1": 0.0})
    assert longest_gaps([(0.0, "a", True, "0-0"), (1.0, "a", False, "0-0")], 0.5, 2.0) == pytest.approx({"0-0": 1.0})


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_groups_start_fail_over_and_roll_a_deploy() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench" / "shards" / "run.py"), "--groups", "2", "--kills", "1"],
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.splitlines()[-1])
    assert {"groups", "startup_s", "failover_p99_ms", "rolling_deploy_s", "max_group_gap_ms"} <= set(figures)
    assert figures["groups"] == 2 and figures["failover_runs"] == 2
    assert figures["deploy_outcome"] == "deployed", figures
    assert 0 < figures["startup_s"] < 30 and 0 < figures["rolling_deploy_s"] < 60, figures
    assert 0 < figures["failover_p50_ms"] <= figures["failover_p99_ms"] < 2000, figures
    # Loose: one run of four under a load of 5+ failed here (figures not kept); see the report of issue 16.
    assert figures["groups_handed_over"] >= 1 and 0 < figures["max_group_gap_ms"] < 5000, figures
