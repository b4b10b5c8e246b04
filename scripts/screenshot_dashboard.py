"""Make docs/dashboard.png: the dashboard of a supervisor that has lived a little, in headless Chromium.

A real supervisor (``serve``) over a real git repository of the stand-in bot (urban_robot.testing.bot):
a good deploy (1.1), a bad one that fails its health check and is rolled back (1.2), then the running
worker is killed and its standby takes over. Then the page is captured.

    .venv/bin/python scripts/screenshot_dashboard.py [--out docs/dashboard.png] [--dark]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' DevTools driver

from tests._browser import open_browser  # noqa: E402
from urban_robot.supervisor import Settings  # noqa: E402
from urban_robot.supervisor._assembly import App, Options, serve  # noqa: E402
from urban_robot.testing.bot import MAIN_PY  # noqa: E402

ADMIN = "screenshot-admin-token"
SETTINGS = Settings(token="demo", interval=2, grace=2, lease_margin=0.5, health_timeout=10, spawn_workers=True)
HEALTHY = {"OK": True, "percent": 100, "cogs": {"modules.utilities": True}}
SICK = {"OK": False, "percent": 40, "cogs": {"modules.utilities": False}}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def commit(work: Path, version: str, health: dict[str, Any]) -> None:
    (work / "main.py").write_text(MAIN_PY)
    (work / "bot.json").write_text(json.dumps({"version": version, "health": health}))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"bot {version}")
    git(work, "push", "-q", "origin", "HEAD:main")


async def settled(app: App) -> None:
    """Until a renewed lease holder and an approved standby are there (real processes: look every 50 ms)."""
    core = app.robot.core
    with trio.fail_after(60):
        while not (
            core.lease
            and core.lease.confirmed
            and core.lease.sid
            and any(w.approved and w.role.value == "standby" for w in core.clients.values())
        ):
            await trio.sleep(0.05)


async def deploy(app: App, http: httpx.AsyncClient) -> None:
    response = await http.post(f"{app.url}/api/deploy", headers={"Authorization": f"Bearer {ADMIN}"})
    response.raise_for_status()
    with trio.fail_after(60):
        await app.deployer.wait_idle()
    await settled(app)


async def main(out: Path, dark: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="urban-robot-screenshot-") as tmp_name:
        tmp = Path(tmp_name)
        upstream, work, helium = tmp / "upstream.git", tmp / "work", tmp / "helium"
        git(tmp, "init", "-q", "--bare", "-b", "main", str(upstream))
        git(tmp, "clone", "-q", str(upstream), str(work))
        for key, value in (("user.name", "dev"), ("user.email", "dev@example.invalid")):
            git(work, "config", key, value)
        commit(work, "1.0", HEALTHY)
        git(tmp, "clone", "-q", str(upstream), str(helium))
        options = Options(
            helium_path=helium,
            settings=SETTINGS,
            command=(sys.executable, "main.py"),
            state_dir=tmp / "state",
            port=0,
            admin_token=ADMIN,
        )
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
            app: App = await nursery.start(serve, options)
            await settled(app)
            commit(work, "1.1", HEALTHY)
            await deploy(app, http)
            commit(work, "1.2", SICK)
            await deploy(app, http)
            lease = app.robot.core.lease
            assert lease is not None
            os.kill(app.children.children[lease.identity].pid, signal.SIGKILL)
            await trio.sleep(0.5)  # the replacement spawns
            await settled(app)
            async with open_browser(width=1200, height=900, dark=dark) as page:
                await page.navigate(f"{app.url}/?token={ADMIN}")
                await page.wait_for("document.querySelectorAll('#workers tr[data-role=standby]').length")
                await page.screenshot(out)
            app.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    parser.add_argument("--dark", action="store_true", help="prefers-color-scheme: dark")
    args = parser.parse_args()
    trio.run(main, args.out, args.dark)
