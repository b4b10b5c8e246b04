"""An operator's day (issue 12), with a real supervisor (``serve``), real worker processes and real git.

try_again restores what was there at once; a restart runs what was deployed (its tree and its environment);
a deploy reuses the environment when the requirements did not change; crash messages quote the worker;
the webhook answers what will really happen; status says what a start waits for.
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from tests._helpers import QUICK, GitUpstream, git, worker_options
from urban_robot.cli import run_subcommand, worker_logs
from urban_robot.supervisor import App, ChildPolicy, Handled, Notify, Options, Role, serve
from urban_robot.supervisor._webhook import sign

pytestmark = pytest.mark.slow

ADMIN = "admin-token"
WEBHOOK_SECRET = b"webhook-secret"
# Back-off long enough that a test passing within it proves try_again did not wait it out.
SLOW_BACKOFF = ChildPolicy(backoff_base=60, backoff_cap=60, jitter=0, term_timeout=2, kill_timeout=2)


class Watch:
    """Wakes a test after each event the core handled (every heartbeat is one): no sleeping to wait."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.changed = trio.Event()
        self.notes: list[Notify] = []
        app.bus.subscribe(Handled, lambda handled: self.changed.set())
        app.bus.subscribe(Notify, self.notes.append)

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self.changed = trio.Event()
            await self.changed.wait()

    def roles(self) -> list[str]:
        return sorted(w.role.value for w in self.app.robot.core.clients.values())

    def restored(self) -> bool:
        """One confirmed holder and an approved standby: what was there."""
        core = self.app.robot.core
        standby = [w for w in core.clients.values() if w.role is Role.STANDBY and w.approved]
        return core.lease is not None and core.lease.confirmed and core.lease.sid is not None and len(standby) == 1

    def holder_pid(self) -> int:
        lease = self.app.robot.core.lease
        assert lease is not None
        return self.app.children.children[lease.identity].pid


async def start(nursery: trio.Nursery, options: Options) -> tuple[App, Watch]:
    app: App = await nursery.start(serve, options)
    return app, Watch(app)


async def post(app: App, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as http:
        return await http.post(app.url + path, headers={"Authorization": f"Bearer {ADMIN}"})


# -- try_again ---------------------------------------------------------------------------------------


async def test_try_again_after_a_partial_crash_loop_brings_the_standby_back_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    settings = attrs.evolve(QUICK, crash_loop_losses=1)  # the first loss is a crash loop: the test stays short
    options = worker_options(tmp_path, settings, admin_token=ADMIN, policy=SLOW_BACKOFF)
    with trio.fail_after(40):  # well under the 60 s back-off the lost standby drove up
        app, watch = await start(nursery, options)
        await watch.until(watch.restored)
        [standby] = [c for c in app.children.children.values() if c.pid != watch.holder_pid()]
        os.kill(standby.pid, signal.SIGKILL)
        await watch.until(lambda: not app.robot.core.is_sane)
        # is_sane falls when the core decides; its notification is carried out after the state write: wait for it
        await watch.until(lambda: any(n.level == "critical" for n in watch.notes))
        assert len(app.children.children) == 1  # no replacement in a crash loop
        [critical] = [n.message for n in watch.notes if n.level == "critical"]
        assert critical.startswith("crash loop: 1 workers lost within 300s (1 left)")
        assert (await post(app, "/api/try-again")).status_code == 202
        await watch.until(lambda: watch.restored() and len(app.children.children) == 2)
        assert app.children.quick_deaths == 0
        app.stop("test over")


async def test_try_again_after_a_total_crash_loop_brings_one_running_and_the_standbys_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    settings = attrs.evolve(QUICK, crash_loop_losses=1)
    options = worker_options(tmp_path, settings, admin_token=ADMIN, policy=SLOW_BACKOFF, standbys=2)
    with trio.fail_after(40):
        app, watch = await start(nursery, options)
        await watch.until(lambda: watch.restored() is False and len(watch.roles()) == 3 and "running" in watch.roles())
        for child in list(app.children.children.values()):
            os.kill(child.pid, signal.SIGKILL)
        await watch.until(lambda: not app.robot.core.clients and not app.children.children)
        core = app.robot.core
        assert not core.is_sane
        async with httpx.AsyncClient() as http:
            status = (await http.get(app.url + "/api/status", headers={"Authorization": f"Bearer {ADMIN}"})).json()
        assert status["waiting_for"] == "crash loop: 0 workers; try_again needed"
        assert core.health_line(trio.current_time()) == "crash loop: 0 workers; try_again needed"  # STATUS=
        assert (await post(app, "/api/try-again")).status_code == 202
        await watch.until(lambda: watch.roles() == ["running", "standby", "standby"])
        assert len(app.children.children) == 3
        app.stop("test over")


# -- restarts run what was deployed -------------------------------------------------------------------


def tiny_wheel(directory: Path) -> Path:
    """A package no index has, as a wheel (a zip): installed with pip, no network, no build backend."""
    wheel = directory / "tinydep-1.0-py3-none-any.whl"
    files = {
        "tinydep/__init__.py": "VALUE = 42\n",
        "tinydep-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinydep\nVersion: 1.0\n",
        "tinydep-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    files["tinydep-1.0.dist-info/RECORD"] = "".join(f"{name},,\n" for name in [*files, "tinydep-1.0.dist-info/RECORD"])
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


# The bot's own install step, as docs/deploying.md's: a venv in the release, its requirements installed into it
# (pip of the test's Python, pointed at the new venv: no network, and the venv needs no pip of its own). The venv
# sees the test's site-packages through a .pth, so it can import urban_robot, as a real bot's requirements would.
INSTALL_PY = """\
import pathlib, site, subprocess, sys, venv
with open(sys.argv[1], "a") as runs:
    runs.write("install\\n")
venv.create(".venv", with_pip=False)
[packages] = pathlib.Path(".venv/lib").glob("python*/site-packages")
(packages / "outer.pth").write_text(f"import site; site.addsitedir({site.getsitepackages()[0]!r})\\n")
pip = [sys.executable, "-m", "pip", "--python", ".venv/bin/python", "install", "--no-index", "-q"]
subprocess.run([*pip, "-r", "requirements.txt"], check=True)
"""
MAIN_PY = "import runpy\n\nrunpy.run_module('urban_robot.testing.worker', run_name='__main__')\n"


class Repository(GitUpstream):
    def commit(self, message: str, files: dict[str, str]) -> str:
        for name, text in files.items():
            (self.work / name).write_text(text)
        return self.push(message)


async def test_a_restart_runs_the_deployed_release_with_the_dependency_its_install_step_added(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    repo = Repository(tmp_path)
    wheel, runs = tiny_wheel(tmp_path), tmp_path / "install-runs"
    base = {"main.py": MAIN_PY, "install.py": INSTALL_PY, "requirements.txt": "", "rehearsal.toml": 'version = "1.0"\n'}
    repo.commit("a bot without dependencies", base)
    git(tmp_path, "clone", "-q", str(repo.upstream), str(repo.checkout))
    subprocess.run([sys.executable, str(repo.checkout / "install.py"), str(runs)], cwd=repo.checkout, check=True)
    needs = {
        "requirements.txt": f"tinydep @ {wheel.as_uri()}\n",
        "rehearsal.toml": 'version = "2.0"\nrequires = ["tinydep"]\n',
    }
    first = repo.commit("use tinydep", needs)
    options = Options(
        helium_path=repo.checkout,
        settings=QUICK,
        command=(".venv/bin/python", "main.py"),
        state_dir=tmp_path / "state",
        port=0,
        install=(sys.executable, "install.py", str(runs)),
        admin_token=ADMIN,
        policy=ChildPolicy(term_timeout=2, kill_timeout=2),
    )
    with trio.fail_after(90):
        async with trio.open_nursery() as first_run:
            app, watch = await start(first_run, options)
            await watch.until(watch.restored)
            answer = (await post(app, "/api/deploy?wait=1")).json()
            assert (answer["outcome"], answer["commit"]) == ("deployed", first)
            # Code alone changes: the environment is copied from the last release, not installed again.
            second = repo.commit("code only", {"rehearsal.toml": 'version = "2.1"\nrequires = ["tinydep"]\n'})
            out = io.StringIO()  # `deploy --wait`, as an operator types it
            wait = functools.partial(run_subcommand, "deploy", url=app.url, token=ADMIN, out=out, wait=True)
            assert await trio.to_thread.run_sync(wait) == 0
            assert out.getvalue() == f"deployed {second[:12]}\n"
            assert runs.read_text().count("install") == 2  # the checkout's first venv, then `first`: not `second`
            app.stop("restart")
        # The restart (systemctl restart): workers run the last known good release, not the checkout's old venv.
        assert not list((repo.checkout / ".venv").glob("lib/python*/site-packages/tinydep"))
        app, watch = await start(nursery, options)
        await watch.until(watch.restored)
        release = tmp_path / "state" / "releases" / second
        assert app.children.cwd == release and not (tmp_path / "state" / "releases" / first).exists()
        assert {w.version for w in app.robot.core.clients.values()} == {"2.1"}
        assert all(w.release == f"deploy {second[:12]}" for w in app.robot.core.clients.values())
        assert app.robot.core.losses == []  # nothing crashed
        app.stop("test over")


# -- what the operator reads ---------------------------------------------------------------------------


async def test_a_crash_is_a_warning_that_quotes_the_worker_and_logs_finds_it_after_it_exited(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    settings = attrs.evolve(QUICK, crash_loop_losses=2)
    options = worker_options(tmp_path, settings, admin_token=ADMIN, standbys=0)
    with trio.fail_after(40):
        app, watch = await start(nursery, options)
        await watch.until(lambda: app.robot.core.lease is not None and app.robot.core.lease.confirmed)
        lease = app.robot.core.lease
        assert lease is not None
        crashed = lease.identity
        (tmp_path / "bot" / "rehearsal.toml").write_text("crash = \"ImportError: cannot import name 'x'\"\n")
        os.kill(watch.holder_pid(), signal.SIGKILL)
        await watch.until(lambda: not app.robot.core.is_sane)  # its replacement crashes at start: a crash loop
        await watch.until(lambda: any(n.level == "critical" for n in watch.notes))  # carried out after the write
        app.stop("test over")
    [first] = [n for n in watch.notes if n.message.startswith("worker ")]
    assert first.level == "warning" and first.message.startswith(f"worker {crashed} exited (-9) after ")
    assert f"{crashed} cmd:process_commands" in first.message.split("last lines:")[1]  # what it was doing
    [loop] = [n for n in watch.notes if n.level == "critical"]
    assert "(0 left)" in loop.message and loop.message.endswith(
        "  | crashing at start, as rehearsal.toml says: ImportError: cannot import name 'x'"
    )
    out = io.StringIO()
    assert worker_logs(tmp_path / "state", crashed, out, log_dir=tmp_path / "bot" / "log") == 0
    assert f"{crashed} cmd:process_commands" in out.getvalue()  # found although it exited


async def test_the_webhook_answers_what_will_really_happen(nursery: trio.Nursery, tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    repo.commit("bot", {"main.py": MAIN_PY})
    git(tmp_path, "clone", "-q", str(repo.upstream), str(repo.checkout))
    options = Options(
        helium_path=repo.checkout,
        settings=QUICK,
        command=(sys.executable, "main.py"),
        state_dir=tmp_path / "state",
        port=0,
        admin_token=ADMIN,
        webhook_secret=WEBHOOK_SECRET,
        deploy_timeout=20,
        policy=ChildPolicy(term_timeout=2, kill_timeout=2),
    )

    async def push(commit: str, delivery: str) -> tuple[int, str]:
        body = json.dumps({"ref": "refs/heads/main", "after": commit, "head_commit": {"message": "x"}}).encode()
        headers = {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sign(WEBHOOK_SECRET, body),
            "Content-Type": "application/json",
        }
        async with httpx.AsyncClient() as http:
            answer = await http.post(app.url + "/webhook/github", content=body, headers=headers)
        return answer.status_code, answer.text

    with trio.fail_after(60):
        app, watch = await start(nursery, options)
        await watch.until(watch.restored)
        good = git(repo.work, "rev-parse", "HEAD")
        assert await push(good, "1") == (202, f"deploying {good[:12]}")  # no last known good yet: it deploys
        await app.deployer.wait_idle()
        assert await push(good, "2") == (200, f"already running {good[:12]}")
        bad = repo.commit("broken", {"rehearsal.toml": 'failing_cogs = ["modules.utilities"]\n'})
        assert await push(bad, "3") == (202, f"deploying {bad[:12]}")
        await app.deployer.wait_idle()
        assert app.deployer.history[-1] == (bad, "failed")
        assert await push(bad, "4") == (
            200,
            f"known bad: {bad[:12]} failed before; push a fix, or try-again to retry it",
        )
        app.stop("test over")
    [failed] = [n.message for n in watch.notes if "failed its health check" in n.message]
    assert failed.endswith("vital_cog_failed (failing: modules.utilities)")
