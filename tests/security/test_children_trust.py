"""Issue 13, findings 5 (the registry), 6, 7 and 8: what a child process gets, whom it runs as, and what the
supervisor trusts of the children registry. Real processes throughout: the kernel is the witness."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from urban_robot.cli import explain_error, worker_logs
from urban_robot.config import KEYS, NAME
from urban_robot.supervisor import Credentials, ProcessExited
from urban_robot.supervisor._assembly import App, serve
from urban_robot.supervisor._children import ChildPolicy, Children, RunAs, RunAsError, start_ticks
from urban_robot.supervisor._store import StateStore

from .._helpers import worker_options

KEY = b"k" * 32


@attrs.define
class Robot:
    """What ``Children`` needs of a supervisor: credentials, and somewhere to report exits."""

    credentials: Credentials = attrs.Factory(lambda: Credentials(KEY))
    exits: list[ProcessExited] = attrs.Factory(list)
    changed: trio.Event = attrs.Factory(trio.Event)

    async def submit(self, event: Any) -> None:
        if isinstance(event, ProcessExited):
            self.exits.append(event)
            self.changed.set()
            self.changed = trio.Event()

    async def exited(self, count: int) -> list[ProcessExited]:
        while len(self.exits) < count:
            await self.changed.wait()
        return self.exits


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def heard(fifo: Path) -> str:
    """What a child wrote into ``fifo`` (blocks, in a thread, until it has opened, written and closed it)."""
    return await trio.to_thread.run_sync(fifo.read_text, abandon_on_cancel=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any user can reach (pytest's own base is 0700 to everyone but root)."""
    base = Path(tempfile.mkdtemp(prefix="urban-robot-test-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def fifo(path: Path) -> Path:
    os.mkfifo(path, 0o666)
    path.chmod(0o666)  # whatever the umask: a child running as another user writes to it
    return path


# ---- 1. children get no secret but their own ----------------------------------------------------------------------


@pytest.mark.slow
async def test_a_child_gets_no_secret_but_its_own(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every secret the supervisor can be configured with through its environment (and BOT_TOKEN: the token reaches
    a worker only in ``hello``), and every other URBAN_ROBOT_* variable, stay with the supervisor."""
    planted = {key.env.replace(NAME, "eu"): f"planted-{key.name}-{secrets.token_hex(4)}" for key in KEYS if key.secret}
    planted |= {"URBAN_ROBOT_CONFIG": "/etc/urban-robot.toml", "URBAN_ROBOT_PORT": "8080", "BOT_TOKEN": "bot.token.x"}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("URBAN_ROBOT_DISCORD_URL", "http://127.0.0.1:5555")  # a test's fake Discord: passed on
    monkeypatch.setenv("URBAN_ROBOT_DISCORD_CLIENT", "bot")
    monkeypatch.setenv("HELIUM_OWN_SETTING", "kept")
    robot = Robot()
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    children = Children(robot, python(code), cwd=tmp_path, url="http://127.0.0.1:1", log_dir=tmp_path / "log")
    with trio.fail_after(20):
        await nursery.start(children.run, 1)
        [exited] = await robot.exited(1)
    [log_file] = (tmp_path / "log").glob("helium-*.log")
    env = json.loads(log_file.read_text())
    assert {name for name in env if name.startswith("URBAN_ROBOT_")} == {
        "URBAN_ROBOT_URL",
        "URBAN_ROBOT_SECRET",
        "URBAN_ROBOT_GENERATION",
        "URBAN_ROBOT_DISCORD_URL",
        "URBAN_ROBOT_DISCORD_CLIENT",
    }
    assert "BOT_TOKEN" not in env and env["HELIUM_OWN_SETTING"] == "kept"
    dumped = "\n".join(env.values())
    assert not [name for name, value in planted.items() if value in dumped]
    assert env["URBAN_ROBOT_SECRET"].startswith(exited.identity + ".")


# ---- 3. a child secret is valid only for a child the supervisor has (or adopted) ---------------------------------


class Supervisor:
    """One supervisor's children manager over a shared registry, started and "crashed" (its children left running)."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path, code: str) -> None:
        self.robot = Robot()  # a new process: the key from the state directory, nothing else carried over
        self.children = Children(
            self.robot, python(code), cwd=tmp_path, url="u", registry=tmp_path / "children.json", log_dir=None
        )
        self.scope = trio.CancelScope()
        self.nursery = nursery

    async def start(self) -> None:
        async def run(task_status: trio.TaskStatus[None]) -> None:
            with self.scope:
                await self.children.run(0, task_status=task_status)

        await self.nursery.start(run)

    def crash(self) -> None:
        self.children.keep_running = True  # its children live on, as after a supervisor crash
        self.scope.cancel()

    def admits(self, secret: str) -> bool:
        return self.robot.credentials.verify({"secret": secret}) is not None


@pytest.mark.slow
async def test_the_secret_of_a_child_that_exited_is_refused_also_after_supervisor_restarts(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = (
        "import os, time; open(os.environ['TEST_FIFO'], 'w').write(os.environ['URBAN_ROBOT_SECRET']); time.sleep(120)"
    )
    first = Supervisor(nursery, tmp_path, code)
    secret: dict[str, str] = {}
    pids: dict[str, int] = {}
    with trio.fail_after(30):
        await first.start()
        for name in ("a", "b"):  # one after the other: each says its secret through its own fifo
            monkeypatch.setenv("TEST_FIFO", str(fifo(tmp_path / name)))
            identity = first.children.spawn(name, backoff=False)
            secret[name] = await heard(tmp_path / name)
            pids[name] = first.children.children[identity].pid
        assert first.admits(secret["a"]) and first.admits(secret["b"])
        first.crash()
        os.kill(pids["b"], signal.SIGKILL)  # b exits while no supervisor runs
        os.waitpid(pids["b"], 0)

        second = Supervisor(nursery, tmp_path, code)
        # Admitted before the port opens (App.run calls this first): a survivor that reconnects before its
        # adoption must not be refused, it would take the refusal for a wrong secret and exit.
        assert second.children.admit_survivors() == 1 and second.admits(secret["a"])
        assert not second.admits(secret["b"])
        await second.start()
        assert second.admits(secret["a"])  # adopted: its entry carries its spawn's nonce
        assert not second.admits(secret["b"])  # was valid for ever: HMAC(key, identity) alone
        os.kill(pids["a"], signal.SIGKILL)
        await second.robot.exited(1)
        os.waitpid(pids["a"], 0)
        assert not second.admits(secret["a"])  # exited under this supervisor

        third = Supervisor(nursery, tmp_path, code)  # two restarts later
        await third.start()
    assert not third.admits(secret["a"]) and not third.admits(secret["b"])
    assert third.children.children == {}


# ---- 4. registry entries are trusted only after the kernel confirms the process ---------------------------------


PLANTS = {
    "no secret in its environment": "not started with this spawn's secret",
    "not in a session of its own": "not in the session the supervisor created",
    "started at another time": "that process is gone",
    "another user": "does not run as uid",
}


@pytest.mark.slow
@pytest.mark.parametrize("plant", PLANTS)
async def test_a_planted_registry_entry_is_dropped_and_its_process_never_signalled(
    nursery: trio.Nursery, open_dir: Path, caplog: pytest.LogCaptureFixture, plant: str
) -> None:
    """An entry naming a process the supervisor did not start is not adopted (no worker spawned in its place was
    the old symptom) and the process is not killed when the supervisor stops (the old code SIGTERMed it)."""
    if plant == "another user" and os.geteuid() != 0:
        pytest.skip("needs root to start a process as another user")
    credentials = Credentials(KEY)
    identity, nonce = "child-planted-1", "0" * 32
    env = {**os.environ, "URBAN_ROBOT_SECRET": credentials.secret_for(identity, nonce)}
    if plant == "no secret in its environment":
        del env["URBAN_ROBOT_SECRET"]
    tmp_path = open_dir
    ready = fifo(tmp_path / "ready")
    foreign = await trio.lowlevel.open_process(
        ["/bin/sh", "-c", f"echo up > {ready}; exec sleep 120"],
        env=env,
        start_new_session=plant != "not in a session of its own",
        user=65534 if plant == "another user" else None,
        group=65534 if plant == "another user" else None,
        extra_groups=[] if plant == "another user" else None,
    )
    try:
        with trio.fail_after(20):
            await heard(ready)  # exec'd: its environment is what it was started with
            ticks = start_ticks(foreign.pid)
            assert ticks is not None
            entry = {"pid": foreign.pid, "start_ticks": ticks + (7 if plant == "started at another time" else 0)}
            (tmp_path / "children.json").write_text(json.dumps({identity: entry | {"nonce": nonce, "generation": 1}}))
            robot = Robot(credentials)
            children = Children(robot, ["true"], cwd=tmp_path, url="u", registry=tmp_path / "children.json")
            scope = trio.CancelScope()
            done = trio.Event()

            async def supervisor(task_status: trio.TaskStatus[None]) -> None:
                with scope:
                    await children.run(0, task_status=task_status)
                done.set()

            with caplog.at_level(logging.INFO, logger="urban_robot.children"):
                await nursery.start(supervisor)
                assert children.children == {}  # not adopted
                assert robot.credentials.verify({"secret": env.get("URBAN_ROBOT_SECRET", "x")}) is None
                await children.stop_all()
                scope.cancel()
                await done.wait()
        [line] = [r.getMessage() for r in caplog.records if "not adopting" in r.getMessage()]
        assert f"pid {foreign.pid}" in line and PLANTS[plant] in line and "not signalled" in line
        assert foreign.poll() is None  # alive: never signalled
        assert json.loads((tmp_path / "children.json").read_text()) == {}  # dropped from the registry
    finally:
        foreign.kill()
        await foreign.wait()


def test_logs_never_print_a_file_outside_the_log_directory(tmp_path: Path) -> None:
    """A planted children.json once made ``urban-robot logs`` print /etc/shadow."""
    (tmp_path / "state").mkdir(mode=0o700)
    log_dir, outside = tmp_path / "bot" / "log", tmp_path / "outside"
    log_dir.mkdir(parents=True)
    outside.mkdir()
    (outside / "helium-secret.log").write_text("TOPSECRET\n")
    (log_dir / "helium-good.log").write_text("worker line\n")
    (log_dir / "helium-link.log").symlink_to(outside / "helium-secret.log")
    registry = {
        "child-x-1": {"pid": 1, "log": str(log_dir / "helium-good.log")},
        "child-x-2": {"pid": 2, "log": str(outside / "helium-secret.log")},
        "child-x-3": {"pid": 3, "log": str(log_dir / ".." / ".." / "outside" / "helium-secret.log")},
        "child-x-4": {"pid": 4, "log": str(log_dir / "helium-link.log")},
        "child-x-5": {"pid": 5, "log": "/etc/shadow"},
    }
    (tmp_path / "state" / "children.json").write_text(json.dumps(registry))
    for identity in ("child-x-2", "child-x-3", "child-x-4", "child-x-5"):
        out, err = io.StringIO(), io.StringIO()
        assert worker_logs(tmp_path / "state", identity, out, err=err, log_dir=log_dir) == 1
        assert out.getvalue() == "" and "TOPSECRET" not in err.getvalue()
    out = io.StringIO()
    assert worker_logs(tmp_path / "state", None, out, err=io.StringIO(), log_dir=log_dir) == 0
    assert out.getvalue() == "worker line\n"


# ---- 5. worker logs are 0600 in a 0700 directory ------------------------------------------------------------------


@pytest.mark.slow
async def test_worker_logs_are_private_whatever_the_umask(nursery: trio.Nursery, tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o755)  # an older supervisor's
    log_dir.chmod(0o755)
    robot = Robot()
    children = Children(robot, python("print('hello')"), cwd=tmp_path, url="u", log_dir=log_dir)
    old = os.umask(0)
    try:
        with trio.fail_after(20):
            await nursery.start(children.run, 1)
            await robot.exited(1)
    finally:
        os.umask(old)
    [log_file] = log_dir.glob("helium-*.log")
    assert log_file.read_text() == "hello\n"
    assert (log_file.stat().st_mode & 0o777, log_dir.stat().st_mode & 0o777) == (0o600, 0o700)


# ---- 2. workers.user: children as another user, who cannot read the state directory --------------------------------


def test_workers_user_is_refused_in_one_line_unless_root_or_if_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RunAsError) as refused:
        RunAs.resolve("nobody")
    assert "needs the supervisor to run as root" in str(refused.value) and "\n" not in str(refused.value)
    assert explain_error(ExceptionGroup("serve", [refused.value]), "127.0.0.1:8080") == str(refused.value)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(RunAsError, match="no such user 'no-such-user-here'"):
        RunAs.resolve("no-such-user-here")
    with pytest.raises(RunAsError, match="no such group"):
        RunAs.resolve("nobody", "no-such-group-here")


@pytest.fixture
def throwaway_user() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd (CI runs as root)")
    name = f"urtest{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.mark.slow
async def test_workers_user_runs_children_as_that_user_who_cannot_read_the_state_directory(
    nursery: trio.Nursery, throwaway_user: str, open_dir: Path
) -> None:
    import pwd

    user = pwd.getpwnam(throwaway_user)
    base = open_dir
    said = fifo(base / "said")
    state = base / "state"
    script = (
        f"{{ id -u; id -g; id -G; cat {state}/secret.key >/dev/null 2>&1 && echo READ-KEY || echo no-key;"
        f" cat {state}/admin.token >/dev/null 2>&1 && echo READ-TOKEN || echo no-token;"
        f" ls {state} >/dev/null 2>&1 && echo LISTED || echo no-list; pwd; }} > {said}; exec sleep 120"
    )
    options = worker_options(
        base,
        command=["/bin/sh", "-c", script],
        standbys=0,
        workers_user=throwaway_user,
        policy=ChildPolicy(term_timeout=0.5, kill_timeout=5),
    )
    StateStore(state).prepare()
    (state / "admin.token").write_text("an-admin-token-of-16+")
    (state / "admin.token").chmod(0o600)
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[App]) -> None:
        await serve(options, task_status=task_status)
        done.set()

    with trio.fail_after(30):
        app = await nursery.start(run)
        lines = (await heard(said)).split()
        [child] = app.children.children.values()
        assert child.uid == user.pw_uid
        app.stop("test over")
        await done.wait()  # serve() returns once its children are gone
    assert app.children.children == {}
    uid, gid, groups, key, token, listing, cwd = lines
    assert (int(uid), int(gid), groups) == (user.pw_uid, user.pw_gid, str(user.pw_gid))  # root's groups dropped
    assert (key, token, listing) == ("no-key", "no-token", "no-list")
    assert cwd == str(base / "bot")
    assert (state / "secret.key").stat().st_mode & 0o777 == 0o600
