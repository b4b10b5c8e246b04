"""The assembly (``_assembly.build``): one place wires the parts, the parts never wire themselves.

Structural checks read the package's source (AST): nobody but the assembly subscribes to the bus, nobody
outside the core's own shell reads ``robot.core``, nobody plugs a callable into another object's slot.
Behaviour checks run real supervisors (real sockets, real child processes) built with seams.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from tests._helpers import QUICK, worker_options
from urban_robot.supervisor import (
    Action,
    App,
    Bus,
    ChildPolicy,
    Handled,
    Notify,
    ProcessExited,
    Seams,
    Spawn,
    TopUp,
    ViewsChanged,
    build,
)

PACKAGE = Path(__file__).resolve().parents[2] / "urban_robot"
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# Who may subscribe: the assembly; dev mode's and the pytest plugin's assemblies, which add their own listeners.
SUBSCRIBERS = {"supervisor/_assembly.py", "dev.py", "testing/_plugin.py"}
# The slots the review counted (and a few like them): a callable plugged into another object from outside.
SLOTS = {
    "spawner",
    "roll_back",
    "notify",
    "top_up",
    "spawned_generation",
    "spawned_release",
    "may_spawn",
    "launch",
    "backoff",
    "handle",
    "log_dir",
    "verdict_timeout",
}
HOOK_NAMES = ("observers", "listeners")


def sources(root: Path) -> list[tuple[str, ast.Module]]:
    files = [p for p in sorted(root.rglob("*.py")) if "fake_discord" not in p.parts and "node_modules" not in p.parts]
    return [(str(p.relative_to(root)), ast.parse(p.read_text(), str(p))) for p in files]


def test_only_the_assemblies_subscribe() -> None:
    found = {
        name
        for name, tree in sources(PACKAGE)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "subscribe"
    }
    assert found - {"supervisor/_bus.py"} <= SUBSCRIBERS
    assert "supervisor/_assembly.py" in found  # the check sees what it is looking for


def test_no_one_outside_the_shell_reads_robot_core() -> None:
    def reads_core(node: ast.AST) -> bool:
        if not (isinstance(node, ast.Attribute) and node.attr == "core"):
            return False
        owner = node.value
        name = owner.attr if isinstance(owner, ast.Attribute) else owner.id if isinstance(owner, ast.Name) else ""
        return name == "robot"

    found = {name for name, tree in sources(PACKAGE) for node in ast.walk(tree) if reads_core(node)}
    assert found == set()  # the shell that owns it says self.core; everyone else reads robot.snapshot()
    benchmarks = {name for name, tree in sources(SCRIPTS / "bench") for node in ast.walk(tree) if reads_core(node)}
    assert "deploy/run.py" not in benchmarks  # it reads snapshots (its old wrapper patched core.handle)


def test_no_hook_attributes_and_no_callable_plugged_into_another_object() -> None:
    hooks, plugged = [], []
    for root in (PACKAGE, SCRIPTS):
        for name, tree in sources(root):
            for node in ast.walk(tree):
                targets = node.targets if isinstance(node, ast.Assign) else []
                targets += [node.target] if isinstance(node, ast.AnnAssign) else []
                for target in targets:
                    if not isinstance(target, ast.Attribute):
                        continue
                    if target.attr.endswith(HOOK_NAMES):
                        hooks.append(f"{name}:{node.lineno} {target.attr}")
                    outside = not (isinstance(target.value, ast.Name) and target.value.id == "self")
                    if outside and target.attr in SLOTS:
                        plugged.append(f"{name}:{node.lineno} .{target.attr} =")
    assert hooks == []
    assert plugged == []


def test_the_bus_calls_subscribers_by_kind_in_order_and_unions_subscribe_each_member() -> None:
    bus, heard = Bus(), []
    bus.subscribe(Spawn, lambda m: heard.append(("spawn", m.reason)))
    bus.subscribe(Spawn | TopUp, lambda m: heard.append(("either", type(m).__name__)))
    bus.subscribe(object, lambda m: heard.append(("anything", type(m).__name__)))
    bus.publish(Spawn("a"))
    bus.publish(TopUp("b"))
    bus.publish(ViewsChanged())
    assert heard == [
        ("spawn", "a"),
        ("either", "Spawn"),
        ("anything", "Spawn"),
        ("either", "TopUp"),
        ("anything", "TopUp"),
        ("anything", "ViewsChanged"),
    ]

    def broken(message: object) -> None:
        raise RuntimeError("a subscriber's bug")

    bus.subscribe(TopUp, broken)
    with pytest.raises(RuntimeError, match="a subscriber's bug"):  # never swallowed
        bus.publish(TopUp("c"))


def test_build_wires_the_whole_graph_and_nothing_runs_until_run(tmp_path: Path) -> None:
    app = build(worker_options(tmp_path))
    try:
        graph = set(app.bus.subscriptions())
        for kind, subscriber in [
            ("Spawn", "build.<locals>.<lambda>"),
            ("TopUp", "build.<locals>.<lambda>"),
            ("Send", "Children.on_action"),
            ("Close", "Children.on_action"),
            ("Kill", "Children.on_action"),
            ("CheckFrozen", "Children.on_action"),
            ("Verdict", "Deployer.on_action"),
            ("RollBack", "Deployer.on_action"),
            ("Heartbeat", "StatusTracker.note"),
            ("RoleChanged", "StatusTracker.observe"),
            ("Handled", "StatusTracker.noted"),
            ("DeployResult", "StatusTracker.deployed"),
            ("ViewsChanged", "DashboardNamespace.poke"),
            ("Handled", "App._handled"),
        ]:
            assert (kind, subscriber) in graph
        assert ("Notify", "Notifier.notify") not in graph  # no notifier configured: nobody to tell
        assert app.url == "" and app.children.children == {}  # built, not running: no port, no process
    finally:
        app.store.unlock()


def test_a_configured_notifier_hears_the_cores_notifications(tmp_path: Path) -> None:
    app = build(worker_options(tmp_path, notify_destination="123", discord_token="x" * 24))
    try:
        assert ("Notify", "Notifier.notify") in app.bus.subscriptions()
    finally:
        app.store.unlock()


@attrs.define
class Launches:
    """A ``launch`` seam: the real launch, each call noted."""

    calls: list[Path] = attrs.Factory(list)

    async def __call__(self, command: Any, *, cwd: Path, **kwargs: Any) -> Any:
        self.calls.append(Path(cwd))
        return await trio.lowlevel.open_process(command, cwd=cwd, **kwargs)


async def until(app: App, predicate: Any) -> None:
    while not predicate():
        await app.changed().wait()


async def test_seams_replace_what_they_name_and_the_running_app_is_never_patched(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    launches = Launches()
    log_dir = tmp_path / "worker-logs"
    app = build(worker_options(tmp_path, log_dir=log_dir), seams=Seams(launch=launches))
    with trio.fail_after(30):
        await nursery.start(app.run)
        await until(app, lambda: (s := app.robot.snapshot()).running is not None and len(s.workers) == 2)
    assert len(launches.calls) == 2  # one running, one standby: each started through the seam
    assert {p.parent for p in map(Path, app.children.logs.values())} == {log_dir}
    app.stop("test over")


async def test_a_command_that_cannot_start_is_a_crash_loop_said_on_discord_not_silence(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """An exec failure used to leave no trace in the core: no worker, no replacement, no crash loop, nothing said."""
    settings = attrs.evolve(QUICK, crash_loop_losses=3)
    options = worker_options(
        tmp_path,
        settings,
        command=(str(tmp_path / "no-such-bot"),),
        policy=ChildPolicy(backoff_base=0.01, backoff_cap=0.05, jitter=0),
    )
    app = build(options)
    notes: list[Notify] = []
    exits: list[ProcessExited] = []
    app.bus.subscribe(Notify, notes.append)
    app.bus.subscribe(ProcessExited, exits.append)
    with trio.fail_after(30):
        await nursery.start(app.run)
        await until(app, lambda: not app.robot.snapshot().is_sane)
    assert len(exits) >= 3 and all(e.returncode is None for e in exits)
    assert any(n.level == "critical" and "crash loop" in n.message for n in notes)
    app.stop("test over")


async def test_handled_wakes_whoever_waits_on_app_changed(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = build(worker_options(tmp_path))
    heard: list[object] = []
    app.bus.subscribe(Handled, heard.append)
    app.bus.subscribe(Action, heard.append)
    with trio.fail_after(30):
        await nursery.start(app.run)
        changed = app.changed()
        await changed.wait()
    assert any(isinstance(h, Handled) for h in heard)
    assert app.changed() is not changed  # a fresh event for the next change
    app.stop("test over")
