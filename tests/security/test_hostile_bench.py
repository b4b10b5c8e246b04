"""The hostile-peer benchmark, small: 60 unauthenticated connections of every kind against a real supervisor.

``just bench-hostile`` runs 500 (docs/security.md has the figures). Before issue 13's fixes this small run
grew the supervisor by tens of megabytes (JSON bombs parsed, bodies and fragments held) and delayed
heartbeat answers by seconds; the bounds here leave room for a loaded CI machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "bench" / "hostile" / "run.py"


@pytest.mark.slow
def test_sixty_hostile_connections_cost_kilobytes_and_do_not_stall_heartbeats() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--connections", "60", "--seconds", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    figures = json.loads(result.stdout.splitlines()[-1])
    assert figures["heartbeats"] > 20
    assert figures["worker_reconnects"] == 0
    assert figures["rss_growth_mb"] < 15, figures
    assert figures["heartbeat_p50_ms"] < 50, figures
    assert figures["heartbeat_max_ms"] < 1000, figures  # before: 2.2 s
    assert figures["supervisor_cpu_s"] < 1.5, figures
    assert figures["stranger_lines_per_s"] <= 1, figures
