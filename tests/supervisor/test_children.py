"""The process manager: real child processes for what a process does, a fake launcher for timing."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from urban_robot.protocol import ShardPlan
from urban_robot.supervisor import CheckFrozen, Close, Credentials, Frozen, ProcessExited
from urban_robot.supervisor._children import ChildPolicy, Children, Code, log_identity, prune_logs


@attrs.define
class FakeRobot:
    credentials: Credentials = attrs.Factory(lambda: Credentials(b"k" * 32))
    events: list[Any] = attrs.Factory(list)
    changed: trio.Event = attrs.Factory(trio.Event)

    async def submit(self, event: Any) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    async def exits(self, count: int) -> list[ProcessExited]:
        while len([e for e in self.events if isinstance(e, ProcessExited)]) < count:
            await self.changed.wait()
        return [e for e in self.events if isinstance(e, ProcessExited)]


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.mark.slow
async def test_child_gets_its_environment_and_log_and_its_exit_is_reported(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    robot = FakeRobot()
    monkeypatch.setenv("URBAN_ROBOT_ADMIN_TOKEN", "admin-token-of-the-supervisor")
    monkeypatch.setenv("URBAN_ROBOT_WEBHOOK_SECRET", "webhook-secret-of-the-supervisor")
    monkeypatch.setenv("URBAN_ROBOT_WORKER_SECRET_eu", "an-external-worker-secret")
    monkeypatch.setenv("HELIUM_OWN_SETTING", "kept")
    code = (
        "import os; e = os.environ; "
        "print(e['URBAN_ROBOT_URL'], e['URBAN_ROBOT_GENERATION'], os.getsid(0) == os.getpid()); "
        "print(e['URBAN_ROBOT_SECRET'].split('.')[0]); "
        "print(e.get('URBAN_ROBOT_ADMIN_TOKEN', '-'), e.get('URBAN_ROBOT_WEBHOOK_SECRET', '-')); "
        "print(e.get('URBAN_ROBOT_WORKER_SECRET_eu', '-')); "
        "print(e['HELIUM_OWN_SETTING']); "
        "print('\\x1b[2Jleaked', e['URBAN_ROBOT_SECRET']); "
        "raise SystemExit(3)"
    )
    children = Children(
        robot,
        python(code),
        cwd=tmp_path,
        url="http://127.0.0.1:1",
        log_dir=tmp_path / "log",
        registry=tmp_path / "children.json",
        generation=7,
    )
    with trio.fail_after(20):
        await nursery.start(children.run, 1)
        [exited] = await robot.exits(1)
    assert exited.returncode == 3
    [log_file] = list((tmp_path / "log").glob("helium-*.log"))
    assert log_file.name == f"helium-{log_file.name[7:26]}-{exited.identity}.log"  # YYYY-MM-DD-HH-MM-SS-<identity>
    assert log_identity(log_file) == exited.identity
    url, generation, own_session, identity, admin, webhook, worker, own = log_file.read_text().split()[:8]
    # Its exit carries its last lines: its secret redacted, the terminal escape shown, not obeyed.
    assert exited.tail[-2:] == ("kept", "\\x1b[2Jleaked [redacted]") and exited.uptime is not None
    assert (url, generation, own_session) == ("http://127.0.0.1:1", "7", "True")
    assert (admin, webhook, worker, own) == ("-", "-", "-", "kept")  # the supervisor's secrets stay with it
    assert identity == exited.identity
    assert robot.credentials.nonce(identity) is None  # it exited: its secret is refused (tests/security)
    assert children.children == {}


@pytest.mark.slow
async def test_sigterm_then_sigkill_for_a_child_that_ignores_sigterm(nursery: trio.Nursery, tmp_path: Path) -> None:
    robot = FakeRobot()
    ready = tmp_path / "ready"
    code = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    children = Children(robot, python(code), cwd=tmp_path, url="u", policy=ChildPolicy(kill_timeout=0.5))
    await nursery.start(children.run, 1)
    with trio.fail_after(20):
        while not ready.exists():
            await trio.sleep(0.01)  # a real process starting: nothing to wait on but the file
        [identity] = children.children
        start = trio.current_time()
        await children.stop(identity)
        [exited] = await robot.exits(1)
    assert exited.returncode == -signal.SIGKILL
    assert trio.current_time() - start >= 0.5


@attrs.define
class FakeProcess:
    pid: int
    returncode: int | None = None
    exit: trio.Event = attrs.Factory(trio.Event)

    async def wait(self) -> int:
        await self.exit.wait()
        return self.returncode or 0

    def send_signal(self, sig: int) -> None:
        self.returncode = -sig
        self.exit.set()


class FakeLauncher:
    """Starts nothing: records when it was asked, and lets the test end each 'process'."""

    def __init__(self) -> None:
        self.started: list[tuple[float, FakeProcess]] = []
        self.changed = trio.Event()

    async def __call__(self, command: list[str], **kwargs: Any) -> FakeProcess:
        process = FakeProcess(pid=os.getpid())  # a live pid, never signalled for real
        self.started.append((trio.current_time(), process))
        self.changed.set()
        self.changed = trio.Event()
        return process

    async def nth(self, n: int) -> tuple[float, FakeProcess]:
        while len(self.started) <= n:
            await self.changed.wait()
        return self.started[n]


async def test_backoff_doubles_after_quick_deaths_and_resets_after_stable_uptime(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    launcher = FakeLauncher()
    policy = ChildPolicy(backoff_base=1, backoff_cap=8, jitter=0, stable_uptime=30)
    children = Children(FakeRobot(), ["bot"], cwd=Path("."), url="u", policy=policy, launch=launcher)
    await nursery.start(children.run, 1)
    gaps = []
    previous_death = 0.0
    for n in range(6):
        at, process = await launcher.nth(n)
        if n:
            gaps.append(round(at - previous_death, 3))
        process.returncode = 1
        process.exit.set()  # dies at once
        await trio.testing.wait_all_tasks_blocked()
        previous_death = trio.current_time()
        children.spawn("replace")
    assert gaps == [1, 2, 4, 8, 8]  # doubling, capped
    at, process = await launcher.nth(6)
    await trio.sleep(31)  # this one lives long enough
    process.exit.set()
    await trio.testing.wait_all_tasks_blocked()
    assert children.quick_deaths == 0
    assert children.backoff() == 0


async def test_jitter_stays_within_its_fraction(autojump_clock: trio.testing.MockClock) -> None:
    children = Children(FakeRobot(), ["bot"], cwd=Path("."), url="u", policy=ChildPolicy(backoff_base=2, jitter=0.5))
    children.quick_deaths = 2
    delays = {children.backoff() for _ in range(200)}
    assert min(delays) >= 4 and max(delays) <= 6 and len(delays) > 100


def test_logs_pruned_by_count_and_total_size(tmp_path: Path) -> None:
    for i in range(10):
        path = tmp_path / f"helium-2026-01-01-00-00-{i:02d}.log"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))
    (tmp_path / "other.txt").write_text("not a log")
    removed = prune_logs(tmp_path, keep=5, max_bytes=10_000)
    assert sorted(p.name[-6:-4] for p in removed) == ["00", "01", "02", "03", "04"]
    removed = prune_logs(tmp_path, keep=5, max_bytes=250)
    assert len(list(tmp_path.glob("helium-*.log"))) == 2  # newest two fit in 250 bytes
    assert (tmp_path / "other.txt").exists()


@pytest.mark.slow
async def test_a_restarted_supervisor_adopts_surviving_children_and_sees_them_exit(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    registry = tmp_path / "children.json"
    ready = tmp_path / "ready"
    code = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    first = Children(FakeRobot(), python(code), cwd=tmp_path, url="u", registry=registry)
    scope = trio.CancelScope()

    async def first_supervisor(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await first.run(1, task_status=task_status)

    await nursery.start(first_supervisor)
    with trio.fail_after(20):
        while not ready.exists():
            await trio.sleep(0.01)
    [(identity, child)] = first.children.items()
    pid = child.pid
    # The first supervisor "crashes": its tasks vanish without stopping the child.
    first._terminate = lambda child: trio.lowlevel.checkpoint()  # type: ignore[method-assign,assignment]
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert os.kill(pid, 0) is None  # still alive, in its own session
    robot = FakeRobot()
    second = Children(robot, python(code), cwd=tmp_path, url="u", registry=registry)
    await nursery.start(second.run, 1)
    assert list(second.children) == [identity] and second.children[identity].process is None
    os.kill(pid, signal.SIGKILL)
    with trio.fail_after(20):
        [exited] = await robot.exits(1)
    assert exited == ProcessExited(identity, None)
    os.waitpid(pid, 0)  # reap it: in this test it is still our own process's child


async def test_a_child_fenced_off_as_hung_is_killed_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    launcher = FakeLauncher()
    robot = FakeRobot()
    children = Children(robot, ["bot"], cwd=Path("."), url="u", launch=launcher)
    await nursery.start(children.run, 1)
    _, process = await launcher.nth(0)
    [identity] = children.children
    fenced_at = trio.current_time()
    children.on_action(Close("sid", "hung: silent for 8.0 s", identity, hung=True))
    [exited] = await robot.exits(1)
    # SIGKILL, no SIGTERM first (a stopped process would not even take it), and no wait before it.
    assert exited.identity == identity and process.returncode == -signal.SIGKILL
    assert trio.current_time() == fenced_at


@pytest.mark.slow
async def test_the_kernel_says_which_silent_child_is_stopped(nursery: trio.Nursery) -> None:
    robot = FakeRobot()
    children = Children(robot, python("import time; time.sleep(60)"), cwd=Path("."), url="u")
    await nursery.start(children.run, 2)
    while len(children.children) < 2:
        await trio.sleep(0.01)
    frozen, blocked = children.children.values()
    os.kill(frozen.pid, signal.SIGSTOP)
    while open(f"/proc/{frozen.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
        await trio.sleep(0.01)  # the kernel stops it asynchronously
    children.on_action(CheckFrozen("w1", frozen.identity))
    children.on_action(CheckFrozen("w2", blocked.identity))  # asleep (a blocked event loop): not stopped
    while Frozen(frozen.identity) not in robot.events:
        await robot.changed.wait()
    await trio.testing.wait_all_tasks_blocked()
    answers = [e for e in robot.events if isinstance(e, Frozen) and e.seen is None]  # not the watch's own report
    assert answers == [Frozen(frozen.identity)]
    for child in (frozen, blocked):
        children.on_action(Close("w", "test over", child.identity, hung=True))
    await robot.exits(2)


@pytest.mark.slow
async def test_the_watch_reports_each_stop_by_a_signal_once_and_only_stops(nursery: trio.Nursery) -> None:
    robot = FakeRobot()
    children = Children(robot, python("import time; time.sleep(60)"), cwd=Path("."), url="u")
    await nursery.start(children.run, 2)
    while len(children.children) < 2:
        await trio.sleep(0.01)
    frozen, asleep = children.children.values()

    async def reports() -> list[Frozen]:
        await trio.sleep(0.3)  # six rounds of the watch
        return [e for e in robot.events if isinstance(e, Frozen)]

    os.kill(frozen.pid, signal.SIGSTOP)
    stopped_at = trio.current_time()
    [report] = await reports()  # once, however long it stays stopped; the sleeping one never
    assert report.identity == frozen.identity and report.seen is not None
    assert 0 <= report.seen - stopped_at < 0.2  # within a round or two of the watch, not a silence limit
    os.kill(frozen.pid, signal.SIGCONT)
    assert len(await reports()) == 1  # running again: nothing more
    os.kill(frozen.pid, signal.SIGSTOP)
    assert len(await reports()) == 2  # a new stop is a new report
    for child in (frozen, asleep):
        children.on_action(Close("w", "test over", child.identity, hung=True))
    await robot.exits(2)


async def test_asked_stops_and_deploy_candidates_do_not_back_off(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    launcher = FakeLauncher()
    children = Children(
        FakeRobot(),
        ["bot"],
        cwd=Path("."),
        url="u",
        launch=launcher,
        policy=ChildPolicy(backoff_base=1, jitter=0, stable_uptime=30),
    )
    await nursery.start(children.run, 1)
    await launcher.nth(0)
    [identity] = children.children
    await children.stop(identity)  # we stopped it: not a crash
    assert children.quick_deaths == 0
    children.quick_deaths = 3
    children.spawn("deploy candidate", backoff=False)
    at, _ = await launcher.nth(1)
    assert at == trio.current_time()  # at once, whatever the restart backoff says
    await trio.sleep(31)  # a child lived stable_uptime: the backoff is over
    assert children.backoff() == 0 and children.quick_deaths == 0


async def test_a_running_child_is_known_by_the_generation_it_was_spawned_with(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """What ``Connected.generation`` carries (serve() wires it): ours, not whatever the child will claim."""
    robot = FakeRobot()
    children = Children(robot, python("import time; time.sleep(60)"), cwd=tmp_path, url="http://127.0.0.1:1")
    with trio.fail_after(20):
        await nursery.start(children.run, 0)
        identity = children.spawn("test", generation=5, backoff=False)
        while identity not in children.children:
            await trio.sleep(0.01)  # a real process starting
    assert children.generation_of(identity) == 5
    assert children.generation_of("child-never-spawned") is None
    assert children.generation_of("worker:external") is None
    await children.stop(identity)


async def test_stop_all_waits_for_the_children_under_one_deadline_then_signals_the_rest(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The supervisor's stop: the workers were asked to shut down; those still running at the one deadline get
    SIGTERM together (not one time-out after another), and nothing new starts, not even a pending restart."""
    launcher = FakeLauncher()
    robot = FakeRobot()
    policy = ChildPolicy(term_timeout=10, kill_timeout=10, backoff_base=5, jitter=0)
    children = Children(robot, ["bot"], cwd=Path("."), url="u", launch=launcher, policy=policy)
    await nursery.start(children.run, 3)
    processes = [(await launcher.nth(n))[1] for n in range(3)]
    children.quick_deaths = 1
    children.spawn("a restart waiting out its back-off")  # due at 5 s, during the stop
    start = trio.current_time()

    async def obey() -> None:  # one worker acts on its shutdown command
        await trio.sleep(3)
        processes[0].returncode = 0
        processes[0].exit.set()

    nursery.start_soon(obey)
    await children.stop_all()
    assert trio.current_time() - start == pytest.approx(10)
    assert [p.returncode for p in processes] == [0, -signal.SIGTERM, -signal.SIGTERM]
    assert len(await robot.exits(3)) == 3 and children.children == {}  # every exit reported before it returned
    children.spawn("after the stop")
    await trio.sleep(60)
    assert len(launcher.started) == 3


async def test_a_spawn_that_waited_out_its_backoff_is_dropped_once_spawning_stopped(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The crash loop is declared while a replacement waits out its back-off: it never starts (issue 12)."""
    launcher = FakeLauncher()
    policy = ChildPolicy(backoff_base=5, jitter=0, stable_uptime=30)
    spawning = [True]
    children = Children(
        FakeRobot(), ["bot"], cwd=Path("."), url="u", policy=policy, launch=launcher, may_spawn=lambda: spawning[0]
    )
    await nursery.start(children.run, 1)
    _, process = await launcher.nth(0)
    process.returncode = 1
    process.exit.set()  # a quick death: the next spawn waits 5 s
    await trio.testing.wait_all_tasks_blocked()
    children.spawn("replace child-1")
    await trio.sleep(1)
    spawning[0] = False  # the core said "no more spawns" meanwhile
    await trio.sleep(10)
    assert len(launcher.started) == 1 and children.children == {}


async def test_top_up_at_once_resets_the_backoff_and_replaces_waiting_spawns(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """try_again: one running plus the standbys at once, not after the back-off the crashes drove up."""
    launcher = FakeLauncher()
    policy = ChildPolicy(backoff_base=8, jitter=0, stable_uptime=30)
    children = Children(FakeRobot(), ["bot"], cwd=Path("."), url="u", policy=policy, launch=launcher)
    await nursery.start(children.run, 2)
    for n in range(2):
        _, process = await launcher.nth(n)
        process.returncode = 1
        process.exit.set()
    await trio.testing.wait_all_tasks_blocked()
    children.spawn("replace")  # waits 16 s (two quick deaths)
    await trio.sleep(1)
    began = trio.current_time()
    children.top_up("try_again", at_once=True)
    await launcher.nth(3)
    await trio.testing.wait_all_tasks_blocked()
    assert [at - began for at, _ in launcher.started[2:]] == [0, 0]  # both at once
    assert len(children.children) == 2 and children.quick_deaths == 0
    await trio.sleep(30)
    assert len(launcher.started) == 4  # the waiting spawn was replaced, not added


async def test_an_exit_is_reported_without_waiting_for_the_registrys_write(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The registry's atomic write (an fsync) ran in the event loop before the exit was reported: every failover
    waited for it. Now a writer writes the newest registry off the loop, and the exit goes first."""
    launcher, robot, disk = FakeLauncher(), FakeRobot(), trio.Event()
    writes: list[bytes] = []

    async def slow_disk(fn: Any, *args: Any) -> None:
        await disk.wait()  # the disk is slow: nothing is written until the test says so
        fn(*args)
        writes.append(registry.read_bytes())

    registry = tmp_path / "children.json"
    children = Children(
        robot, ["bot"], cwd=tmp_path, url="u", registry=registry, launch=launcher, blocking_io=slow_disk
    )
    await nursery.start(children.run, 1)
    _, process = await launcher.nth(0)
    process.returncode = 1
    process.exit.set()
    with trio.fail_after(1):
        [exited] = await robot.exits(1)  # reported while the registry's write still waits for the disk
    assert exited.returncode == 1 and writes == []
    disk.set()
    await trio.testing.wait_all_tasks_blocked()
    assert json.loads(registry.read_text()) == {}  # the newest registry is the one on disk
    # The spawn's registry, if the writer had taken it before the exit, then the newest: never more, never older last.
    assert [sorted(json.loads(w)) for w in writes] in ([[exited.identity], []], [[]])


async def test_each_shard_group_spawns_its_own_code_during_a_rolling_deploy(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Group 0 moved to the new release spawns it; group 1, not reached yet, keeps spawning the old one; whether
    an exit is a candidate's (no crash, no back-off) is judged against the child's own group's code."""
    launcher, launched = FakeLauncher(), []
    old, new = Path("/releases/old"), Path("/releases/new")

    async def launch(command: list[str], **kwargs: Any) -> Any:
        launched.append((kwargs["cwd"], kwargs["env"]["URBAN_ROBOT_GENERATION"]))
        return await launcher(command, **kwargs)

    robot = FakeRobot()
    children = Children(robot, ["bot"], cwd=old, url="u", launch=launch, plan=ShardPlan(4, 2), generation=3)
    await nursery.start(children.run, 1)
    await launcher.nth(1)
    children.set_code(0, Code(4, new, "deploy new"))  # group 0's candidate was promoted
    children.top_up("standby of the new release", group=0)
    children.spawn("replace a lost standby", group=1)
    candidate = children.spawn("deploy new", generation=4, cwd=new, backoff=False, release="deploy new", group=1)
    await launcher.nth(4)
    assert launched[:2] == [(old, "3"), (old, "3")]  # start-up: one per group
    assert sorted(launched[2:]) == [(new, "4"), (new, "4"), (old, "3")]  # (trio starts tasks in any order)
    spawned = {c.identity: (c.group, c.release, c.generation) for c in children.children.values()}
    assert spawned[candidate] == (1, "deploy new", 4)
    expected = [(0, None, 3), (1, None, 3), (0, "deploy new", 4), (1, None, 3), (1, "deploy new", 4)]
    assert sorted(spawned.values(), key=str) == sorted(expected, key=str)
    assert (children.generation, children.code(1)) == (4, Code(3, old))  # what a next candidate must beat: 4
    process = children.children[candidate].process
    assert isinstance(process, FakeProcess)
    process.returncode = 1
    process.exit.set()  # group 1's candidate fails: new code failing, not the running code crashing
    [exited] = await robot.exits(1)
    assert (exited.identity, exited.candidate, exited.group) == (candidate, True, 1)
    assert children.quick_deaths == 0


async def test_a_replacement_waiting_out_its_back_off_starts_its_groups_code_as_it_is_then(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A deploy moved the group on (and pruned the release it ran) while a replacement waited: it starts the new
    code, not the directory it was scheduled with (the shard bench saw 'cannot start ... No such file')."""
    launcher, launched = FakeLauncher(), []
    old, new = Path("/releases/old"), Path("/releases/new")

    async def launch(command: list[str], **kwargs: Any) -> Any:
        launched.append((kwargs["cwd"], kwargs["env"]["URBAN_ROBOT_GENERATION"]))
        return await launcher(command, **kwargs)

    children = Children(FakeRobot(), ["bot"], cwd=old, url="u", launch=launch, plan=ShardPlan(4, 2), generation=3)
    await nursery.start(children.run, 1)
    await launcher.nth(1)  # start-up: one per group
    children.quick_deaths = 3  # a crash loop's back-off: seconds
    children.spawn("replace a crashed worker", group=1)
    assert children.backoff() > 0
    children.set_code(1, Code(4, new, "deploy new"))  # the deploy moved group 1 meanwhile
    await launcher.nth(2)
    assert launched[2] == (new, "4")
