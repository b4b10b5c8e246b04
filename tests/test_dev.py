"""Dev mode end to end: a real source tree in a tmp dir, real worker processes, real file edits.

The bot is the stand-in of ``urban_robot.testing.bot``: ``main.py`` plus a ``bot.json`` that says
what it does (its version, its health report, crash at start, write a cache once it processes),
so editing ``bot.json`` is editing the bot.
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests._helpers import plain, pushed, read_until
from urban_robot.dev import Debouncer, DevMode, Tree, develop
from urban_robot.supervisor import Settings
from urban_robot.supervisor._assembly import Options
from urban_robot.supervisor._children import ChildPolicy
from urban_robot.supervisor._events import Action, PersistCache, Send
from urban_robot.testing.bot import MAIN_PY

HEALTHY = {"OK": True, "percent": 100, "cogs": {"modules.utilities": True}}
SETTINGS = Settings(token="bot-token", interval=1, grace=1, lease_margin=0.5, health_timeout=5, spawn_workers=True)


def write_bot(tree: Path, **bot: Any) -> None:
    (tree / "bot.json").write_text(json.dumps({"version": "1.0", "health": HEALTHY, **bot}))


def make_tree(tmp_path: Path, **bot: Any) -> Path:
    tree = tmp_path / "bot"
    tree.mkdir()
    (tree / "main.py").write_text(MAIN_PY)
    write_bot(tree, **bot)
    return tree


async def start(
    nursery: trio.Nursery, tmp_path: Path, verdict_timeout: float = 10, **bot: Any
) -> tuple[DevMode, io.StringIO]:
    tree = make_tree(tmp_path, **bot)
    options = Options(
        helium_path=tree,
        settings=SETTINGS,
        state_dir=tmp_path / "state",
        port=0,
        policy=ChildPolicy(kill_timeout=2, term_timeout=0.5),
    )
    out = io.StringIO()
    dev: DevMode = await nursery.start(
        functools.partial(develop, tree, options, out=out, verdict_timeout=verdict_timeout)
    )
    return dev, out


async def running(dev: DevMode) -> tuple[str, int, int]:
    """The running worker's identity, pid and epoch, once one runs."""
    core = dev.app.robot.core
    while core.lease is None or not core.lease.confirmed or core.lease.sid not in core.clients:
        await trio.sleep(0.05)  # real processes starting: polled, under the caller's fail_after
    worker = core.clients[core.lease.sid]
    assert worker.pid is not None
    return worker.identity, worker.pid, core.lease.epoch


async def attempts(dev: DevMode, count: int) -> None:
    while len(dev.attempts) < count:
        await trio.sleep(0.05)


async def only_children(dev: DevMode, identities: set[str]) -> None:
    while set(dev.app.children.children) != identities:
        await trio.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        return "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:1]
    except FileNotFoundError:
        return True


@pytest.mark.slow
async def test_a_good_change_is_swapped_in_with_the_cache(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(60):
        dev, out = await start(nursery, tmp_path, version="1.0", cache_bytes=64)
        core = dev.app.robot.core
        old, old_pid, epoch = await running(dev)
        while core.cache is None:  # the running worker writes its cache once it processes
            await trio.sleep(0.05)
        accepted: list[Any] = []
        handed: list[Any] = []

        def observe(action: object) -> None:
            if isinstance(action, PersistCache):
                accepted.append(plain(action.image))
            elif isinstance(action, Send) and action.event == "cache_sync":
                handed.append(action)

        dev.app.bus.subscribe(Action, observe)
        write_bot(dev.tree.root, version="2.0")
        await attempts(dev, 1)
        new, new_pid, new_epoch = await running(dev)
        await only_children(dev, {new})
    attempt = dev.attempts[0]
    assert attempt.outcome == "promoted" and attempt.generation == 2
    assert attempt.message.startswith("generation 2 is running (swapped in ") and "cache handed over" in attempt.message
    assert new != old and new_epoch == epoch + 1
    holder = core.clients[core.lease.sid]  # type: ignore[union-attr,index]
    assert holder.version == "2.0" and holder.generation == 2
    assert accepted and len(accepted[-1]["k0"]) == 64  # the old worker's final cache, taken at its coma ...
    assert pushed(handed, holder.sid) == accepted[-1]  # ... is what the new worker was given before it processed
    assert gone(old_pid) and not gone(new_pid)
    assert dev.app.children.cwd == dev.tree.snapshots / "2"
    assert "generation 1 is running" in out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("broken", "why"),
    [
        ({"crash": True}, "exited with 1 before it was promoted: crashing at start, as bot.json says"),
        (
            {"health": {"OK": False, "percent": 100, "cogs": {"modules.utilities": False}}},
            "health check: vital cog 'modules.utilities' failed",
        ),
        (
            {"health": {"OK": False, "percent": 40, "cogs": {}}},
            "health check: vital cog 'modules.utilities' (missing) failed",
        ),
        (
            {"health": {"OK": False, "percent": 40, "cogs": {"modules.utilities": True, "modules.music": False}}},
            "health check: fewer than 100% of its cogs are healthy",
        ),
    ],
)
async def test_a_broken_change_leaves_the_old_worker_running_and_says_why(
    nursery: trio.Nursery, tmp_path: Path, broken: dict[str, Any], why: str
) -> None:
    with trio.fail_after(60):
        dev, out = await start(nursery, tmp_path)
        first, first_pid, epoch = await running(dev)
        write_bot(dev.tree.root, version="2.0", **broken)
        await attempts(dev, 1)
        rejected = dev.attempts[0]
        assert await running(dev) == (first, first_pid, epoch)  # never displaced: no hand-over happened
        assert rejected.outcome != "promoted"
        assert rejected.message.startswith(f"change rejected: {why} — generation 1 keeps running"), rejected.message
        assert rejected.message in out.getvalue()
        assert dev.app.children.generation == 1 and not (dev.tree.snapshots / "2").exists()
        write_bot(dev.tree.root, version="2.1")
        await attempts(dev, 2)
        fixed, _pid, fixed_epoch = await running(dev)
        await only_children(dev, {fixed})  # the rejected candidate left no extra worker behind
    assert dev.attempts[1].outcome == "promoted" and dev.attempts[1].generation == 2
    # Children are numbered as spawned: 1 the first worker, 2 the rejected candidate, 3 the fixed one. A crashed
    # candidate is no running worker lost: nothing was spawned to "replace" it.
    assert fixed.endswith("-3") and fixed_epoch == epoch + 1
    assert dev.app.robot.core.clients[dev.app.robot.core.lease.sid].version == "2.1"  # type: ignore[union-attr,index]


@pytest.mark.slow
async def test_a_change_made_while_a_candidate_is_checked_is_tried_after_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        dev, _out = await start(nursery, tmp_path, verdict_timeout=2)
        first, _pid, epoch = await running(dev)
        write_bot(dev.tree.root, version="2.0", hang=True)  # never gets ready: rejected after verdict_timeout
        while not any(c.generation == 2 for c in dev.app.children.children.values()):
            await trio.sleep(0.05)
        write_bot(dev.tree.root, version="2.1")  # the fix, saved while the hung candidate is still being waited on
        await attempts(dev, 2)
        fixed, _pid, fixed_epoch = await running(dev)
    hung, tried_after = dev.attempts
    assert hung.outcome == "no verdict in time"
    assert hung.message.startswith("change rejected: not ready within 2 s (stuck at start?) — generation 1 keeps")
    assert tried_after.outcome == "promoted" and fixed != first and fixed_epoch == epoch + 1


@pytest.mark.slow
async def test_a_burst_of_edits_is_one_candidate(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(60):
        dev, _out = await start(nursery, tmp_path)
        await running(dev)
        for n in range(1, 6):
            write_bot(dev.tree.root, version=f"1.{n}")
            await trio.sleep(0.05)  # the pace of a save burst (the input), shorter than dev mode's quiet period
        await attempts(dev, 1)
        assert dev.app.robot.core.clients[dev.app.robot.core.lease.sid].version == "1.5"  # type: ignore[union-attr,index]
        write_bot(dev.tree.root, version="2.0")  # a later edit: any straggler from the burst would come before it
        await attempts(dev, 2)
    assert [a.outcome for a in dev.attempts] == ["promoted", "promoted"]
    assert dev.app.robot.core.clients[dev.app.robot.core.lease.sid].version == "2.0"  # type: ignore[union-attr,index]


async def test_debouncer_waits_for_quiet_and_remembers_a_change_made_meanwhile(autojump_clock: object) -> None:
    changes = Debouncer(quiet=0.3)
    woke: list[float] = []

    async def swaps() -> None:
        while True:
            await changes.wait()
            woke.append(trio.current_time())
            await trio.sleep(5)  # a candidate being checked

    async with trio.open_nursery() as nursery:
        nursery.start_soon(swaps)
        for at in (0.0, 0.1, 0.2):  # one burst
            await trio.sleep_until(at)
            changes.poke()
        await trio.sleep_until(1.0)
        changes.poke()  # during the check
        changes.poke()
        await trio.sleep_until(20.0)
        nursery.cancel_scope.cancel()
    assert woke == [pytest.approx(0.5), pytest.approx(5.5)]


def test_snapshot_copies_what_the_bot_runs_from_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "bot"
    files = ["main.py", "cogs/music.py", ".env", "data/log/keep.txt", "notes.db"]
    skipped = [".git/HEAD", "cogs/__pycache__/music.pyc", ".venv/bin/python", "node_modules/x/y.js", "log/helium.log"]
    skipped += [".urban-robot-dev/state.json", "main.py.swp", "main.py~", "secret.db"]
    for name in files + skipped:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    state = root / ".urban-robot-dev"
    tree = Tree(root, state / "dev", skip=(state, root / "log"), patterns=("secret.*",))
    first = tree.snapshot()
    copied = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert first == state / "dev" / "1" and tree.snapshot() == state / "dev" / "2"
    assert copied == sorted(files)
    assert not tree.watch_filter(1, str(root / "log" / "helium-1.log"))  # type: ignore[arg-type]
    assert tree.watch_filter(1, str(root / "cogs" / "music.py"))  # type: ignore[arg-type]


@pytest.mark.slow
async def test_the_cli_swaps_a_change_in_and_stops_its_workers_on_sigint(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "BOT_TOKEN" and not k.startswith("URBAN_ROBOT_")}
    command = [sys.executable, "-m", "urban_robot", "dev", str(tree), "--port", "0"]
    proc = await trio.lowlevel.open_process(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        with trio.fail_after(60):
            seen = await read_until(proc.stdout, b"Dashboard: http://127.0.0.1:", b"generation 1 is running")
            write_bot(tree, version="2.0")
            seen = await read_until(proc.stdout, b"generation 2 is running (swapped in", seen=seen)
            registry = json.loads((tree / ".urban-robot-dev" / "children.json").read_text())
            pids = [int(child["pid"]) for child in registry.values()]
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    assert pids and all(gone(pid) for pid in pids)
    assert "Traceback" not in seen.decode()
    assert sorted(p.name for p in tree.iterdir()) == [".urban-robot-dev", "bot.json", "main.py"]
