"""examples/trio_worker runs under the real supervisor: it processes only with the lease, its cache arrives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from tests._helpers import plain
from urban_robot.supervisor import Options, Settings, serve

EXAMPLE = Path(__file__).parents[1] / "examples" / "trio_worker" / "main.py"


@pytest.mark.slow
async def test_trio_worker_example_runs_under_the_supervisor(nursery: trio.Nursery, tmp_path: Path) -> None:
    (tmp_path / "bot").mkdir()
    options = Options(
        helium_path=tmp_path / "bot",
        settings=Settings(token="t", interval=1, grace=1, spawn_workers=True),
        command=(sys.executable, str(EXAMPLE)),
        state_dir=tmp_path / "state",
        port=0,
    )
    app = await nursery.start(serve, options)
    core = app.robot.core
    with trio.fail_after(30):
        while not (
            core.lease and core.lease.confirmed and (plain(core.cache) if core.cache else {}).get("ticks", 0) >= 2
        ):
            await trio.sleep(0.05)  # real processes: nothing in this process to wait on
    roles = sorted(w["role"] for w in app.robot.status()["workers"])
    assert roles == ["running", "standby"]
