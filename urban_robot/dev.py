"""Dev mode, ``python -m urban_robot dev PATH``: every saved change goes through the health gate.

The supervisor runs as usual (``serve``: dashboard, admin API, cache hand-over), with one worker
and no standby. A watcher (``watchfiles``) sees the bot's source tree change; once the edits have
settled (a burst of saves, a formatter run, a ``git checkout``: one change), the tree is copied to
``<state-dir>/dev/<n>/`` and that copy starts as a candidate of the next generation
(``Deployer.try_tree``). The core health-checks it exactly as it would a deploy: passed, it takes
over with the cache; failed, it is stopped, the running worker — never displaced — keeps running,
and the reason is printed with the end of the candidate's log. A change made while a candidate is
being checked is tried after it.

Why a copy: a worker's files must never change under it (a lazy import, a reloaded cog or a
restart after a crash would run half-edited code), and a rejected change must not become what the
running generation restarts from. Copies skip what a bot does not run from (``.git``, caches,
virtualenvs, ``node_modules``, the top-level ``log/``, the state directory, ``--ignore`` patterns)
and are deleted once no worker of theirs is left. No git is needed: the tree need not be a
repository, and ``last_known_good`` is left alone (dev mode deploys nothing).

Differences from ``serve`` on a configuration, on purpose: no standby (a swap starts one
process, not two), no webhook, poll or install step, no Discord notifications, a placeholder
token when ``BOT_TOKEN`` is unset (simulated bots need none), no crash-loop stop (a broken save is
rejected, not a reason to stop trying), and a state directory of its own
(``PATH/.urban-robot-dev`` by default), never the production one.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio
import watchfiles

from ._bootstrap import config_errors, dashboard_line, prepare, run_until_stopped
from .cli import run_command
from .config import Config, ConfigError, load_config
from .logs import LogFormat
from .supervisor import (
    App,
    HealthReport,
    Launch,
    Options,
    RoleChanged,
    Seams,
    Settings,
    TreeOutcome,
    TryAgain,
    WorkerView,
    build,
)

log = logging.getLogger("urban_robot.dev")

STATE_DIR_NAME = ".urban-robot-dev"
PLACEHOLDER_TOKEN = "dev-mode-no-discord-token"
IGNORED_NAMES = frozenset(watchfiles.DefaultFilter.ignore_dirs) | {"venv", ".ruff_cache"}
IGNORED_PATTERNS = ("*.py[cod]", "*.sw?", "*~", ".#*", ".DS_Store", "flycheck_*")  # editors' droppings
QUIET = 0.3  # seconds without another change before a burst of edits counts as one change
VERDICT_TIMEOUT = 60.0  # a candidate that never gets ready is rejected after this long
WATCH_TICK_MS = 250  # the watcher thread looks up this often (and so notices it should stop)
LOG_TAIL = 8  # lines of a rejected candidate's log shown


class TreeCopyError(Exception):
    """The tree could not be copied (a file vanished mid-copy, permissions); the message says what."""


@attrs.define(eq=False)
class Tree:
    """The bot's source tree: what counts as a change, and copies of it to run from."""

    root: Path
    snapshots: Path  # <state-dir>/dev
    skip: tuple[Path, ...] = ()  # absolute paths never copied nor watched (the state dir, root/log)
    patterns: tuple[str, ...] = ()  # --ignore: matched against names and root-relative paths

    def ignored(self, path: Path) -> bool:
        """Whether ``path`` (absolute) is left out of copies, and its changes are no change."""
        if any(path == skip or skip in path.parents for skip in self.skip):
            return True
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return True
        if any(part in IGNORED_NAMES for part in relative.parts):
            return True
        patterns = (*IGNORED_PATTERNS, *self.patterns)
        return any(fnmatch.fnmatch(path.name, p) or fnmatch.fnmatch(relative.as_posix(), p) for p in patterns)

    def watch_filter(self, change: watchfiles.Change, path: str) -> bool:
        return not self.ignored(Path(path))

    def snapshot(self) -> Path:
        """Copy the tree to the next ``<snapshots>/<n>``, atomically (blocking: run it in a thread)."""
        self.snapshots.mkdir(mode=0o700, parents=True, exist_ok=True)
        taken = [int(p.name) for p in self.snapshots.iterdir() if p.name.isdigit()]
        number = max(taken, default=0) + 1
        partial = self.snapshots / f".partial-{number}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            shutil.copytree(self.root, partial, ignore=self._ignore_names, ignore_dangling_symlinks=True)
        except OSError as exc:  # shutil.Error too: a file changed or vanished while it was copied
            shutil.rmtree(partial, ignore_errors=True)
            raise TreeCopyError(f"cannot copy {self.root}: {_first_error(exc)}") from None
        target = self.snapshots / str(number)
        partial.rename(target)
        return target

    def _ignore_names(self, directory: str, names: list[str]) -> list[str]:
        return [name for name in names if self.ignored(Path(directory, name))]

    def discard(self, snapshot: Path) -> None:
        if snapshot.parent == self.snapshots and snapshot.name.isdigit():
            shutil.rmtree(snapshot, ignore_errors=True)

    def discard_all_but(self, keep: set[Path]) -> None:
        for path in self.snapshots.iterdir():
            if path not in keep and (path.name.isdigit() or path.name.startswith(".partial-")):
                shutil.rmtree(path, ignore_errors=True)


def _first_error(exc: OSError) -> str:
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        source, _destination, why = exc.args[0][0]
        return f"{source}: {why}"
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)


class Debouncer:
    """Many pokes → one wake-up, once ``quiet`` seconds have passed without another poke."""

    def __init__(self, quiet: float) -> None:
        self.quiet = quiet
        self._poked = trio.Event()
        self._last = -math.inf

    def poke(self) -> None:
        self._last = trio.current_time()
        self._poked.set()

    async def wait(self) -> None:
        """Return once poked and then left alone for ``quiet`` seconds (at once if that is past already)."""
        await self._poked.wait()
        while trio.current_time() < self._last + self.quiet:
            await trio.sleep_until(self._last + self.quiet)
        self._poked = trio.Event()


@attrs.frozen
class Attempt:
    """One change tried: its number, what became of it, and the line printed about it."""

    number: int
    outcome: str  # "promoted", or why not (TreeOutcome.outcome, or "not tried: ...")
    generation: int | None
    message: str


class DevMode:
    """Watch ``tree``, try each change on the running supervisor ``app``, print what happened to ``out``."""

    def __init__(
        self, app: App, tree: Tree, *, out: TextIO, quiet: float = QUIET, logs: dict[Path, str] | None = None
    ) -> None:
        """``app`` is built (``develop`` wires what dev mode hears: ``on_role``, ``on_report``), not yet running.
        ``logs`` is filled by the children's launch (``noting_logs``): snapshot -> its candidate's log file."""
        self.app = app
        self.tree = tree
        self.out = out
        self.changes = Debouncer(quiet)
        self.attempts: list[Attempt] = []
        self._logs = logs if logs is not None else {}
        self._reports: dict[str, Any] = {}  # identity -> its last health report
        self._snapshots: dict[Path, int] = {app.children.cwd: app.children.generation}
        self._scope = trio.CancelScope()

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    # -- running ------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch and swap until ``stop()`` (or the supervisor stops); started once the watcher is on."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._watch)
                nursery.start_soon(self._swaps)
                task_status.started()
                await self.app.stop_requested.wait()  # a signal, POST /api/stop, stop()
                nursery.cancel_scope.cancel()

    def stop(self, reason: str = "dev mode stopped") -> None:
        """Stop watching, then the supervisor (its workers asked to shut down first)."""
        self._scope.cancel()
        self.app.stop(reason)

    async def _watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        watching = False
        async for changes in watchfiles.awatch(
            self.tree.root,
            watch_filter=self.tree.watch_filter,
            step=50,
            rust_timeout=WATCH_TICK_MS,
            yield_on_timeout=True,  # the first (empty) yield proves the watch is set up
        ):
            if not watching:
                watching = True
                task_status.started()
            if changes:
                log.debug("changed: %s", sorted(path for _change, path in changes))
                self.changes.poke()

    async def _swaps(self) -> None:
        while True:
            await self.changes.wait()
            await self.try_change()

    # -- one change ---------------------------------------------------------------------------------
    async def try_change(self) -> Attempt:
        """Snapshot the tree and put it through the gate; the attempt, also printed and kept."""
        number = len(self.attempts) + 1
        robot, children = self.app.robot, self.app.children
        if not robot.snapshot().is_sane:  # a new save is the developer saying try_again
            await robot.submit(TryAgain(None))
        try:
            snapshot = await trio.to_thread.run_sync(self.tree.snapshot)
        except TreeCopyError as exc:
            return self._record(Attempt(number, f"not tried: {exc}", None, f"change {number} not tried: {exc}"))
        self._snapshots[snapshot] = children.generation + 1
        started = trio.current_time()
        result = await self.app.deployer.try_tree(snapshot, f"change {number}")
        if result.promoted:
            message = self._swapped(result, trio.current_time() - started)
        else:
            message = self._rejected(result, self._logs.get(snapshot))
            self._snapshots.pop(snapshot, None)
            self.tree.discard(snapshot)
        self._reports.clear()
        self._prune()
        return self._record(Attempt(number, result.outcome, result.generation, message))

    def _record(self, attempt: Attempt) -> Attempt:
        self.attempts.append(attempt)
        self.say(attempt.message)
        return attempt

    def _swapped(self, result: TreeOutcome, seconds: float) -> str:
        snap = self.app.robot.snapshot()
        holder = snap.running
        if snap.cache_bytes is None:
            cache = "no cache to hand over"
        elif holder is not None and holder.cache_current:
            cache = "cache handed over"
        else:
            cache = "cache not handed over"
        return f"generation {result.generation} is running (swapped in {seconds:.1f} s, {cache})"

    def _rejected(self, result: TreeOutcome, log_file: str | None) -> str:
        tail = _tail(log_file)
        why = self._explain(result, tail)
        holder = self.app.robot.snapshot().running
        still = (
            f"generation {holder.generation} keeps running"
            if holder is not None
            else "no worker is running; fix the code and save again"
        )
        lines = [f"change rejected: {why} — {still}"]
        if tail:
            lines.append(f"  last lines of {log_file}:")
            lines.extend(f"  | {line}" for line in tail)
        return "\n".join(lines)

    def _explain(self, result: TreeOutcome, tail: list[str]) -> str:
        settings = self.app.robot.settings
        outcome = result.outcome
        reason = outcome.removeprefix("health check: ").split(" (")[0]  # the code, without the failing cogs
        if reason == "vital_cog_failed":
            return f"health check: {_failed_cogs(self._reports.get(result.identity or ''), settings)}"
        if reason == "health_check_failure":
            return f"health check: fewer than {settings.healthy_percentage:g}% of its cogs are healthy"
        if reason == "health_check_timeout":
            return f"health check: no answer within {settings.health_timeout:g} s"
        if reason == "health_check_malformed":
            return "health check: its report was malformed (see docs/protocol.md)"
        if outcome == "no verdict in time":
            return f"not ready within {self.app.deployer.verdict_timeout:g} s (stuck at start?)"
        if outcome.startswith("exited") and tail:
            return f"{outcome}: {tail[-1]}"
        return outcome

    # -- watching the supervisor (subscribed in ``develop``) ---------------------------------------
    def on_role(self, action: RoleChanged) -> None:
        """A worker of the current generation started running (after a crash, say): say so."""
        if action.new != "running":
            return
        worker = self.app.robot.snapshot().worker(action.sid)
        if worker is None or (worker.generation or 0) > self.app.children.generation:
            return  # a candidate: try_change says how its swap went
        self._say_running(worker, action.epoch)

    def _say_running(self, worker: WorkerView, epoch: int | None) -> None:
        self.say(f"generation {worker.generation} is running ({worker.identity}, epoch {epoch})")

    def on_report(self, event: HealthReport) -> None:
        """Keep each worker's health report: a rejected change names its failing cogs."""
        worker = self.app.robot.snapshot().worker(event.sid)
        if worker is not None:
            self._reports[worker.identity] = event.report

    def _prune(self) -> None:
        """Delete the snapshots no worker runs from (nor will restart from)."""
        children = self.app.children
        live = {child.generation for child in children.children.values()} | {children.generation}
        for snapshot, generation in list(self._snapshots.items()):
            if generation not in live and snapshot != children.cwd:
                del self._snapshots[snapshot]
                self._logs.pop(snapshot, None)
                self.tree.discard(snapshot)


def _failed_cogs(report: Any, settings: Settings) -> str:
    cogs = report.get("cogs") if isinstance(report, dict) else None
    if not isinstance(cogs, dict):
        return f"a vital cog failed ({', '.join(settings.vital_cogs)})"
    failed = [name for name in settings.vital_cogs if cogs.get(name) is not True]
    named = ", ".join(f"'{name}'" + ("" if name in cogs else " (missing)") for name in failed)
    return f"vital cog {named} failed" if len(failed) == 1 else f"vital cogs {named} failed"


def _tail(log_file: str | None, lines: int = LOG_TAIL) -> list[str]:
    if log_file is None:
        return []
    try:
        with open(log_file, "rb") as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - 16384))
            text = file.read().decode(errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


# -- putting it together ------------------------------------------------------------------------------


def dev_options(base: Options, state_dir: Path) -> Options:
    """A configuration's ``Options`` made into dev mode's (see the module docstring for why each)."""
    settings = attrs.evolve(base.settings, crash_loop_losses=sys.maxsize, spawn_workers=True)
    return attrs.evolve(
        base,
        settings=settings,
        state_dir=state_dir,
        standbys=0,
        webhook_secret=None,
        poll_interval=None,
        install=None,
        notify_destination=None,
    )


async def develop(
    tree: Path,
    options: Options,
    *,
    out: TextIO = sys.stdout,
    ignore: Sequence[str] = (),
    quiet: float = QUIET,
    verdict_timeout: float = VERDICT_TIMEOUT,
    task_status: trio.TaskStatus[DevMode] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Supervise copies of ``tree`` with ``options`` made dev mode's (``dev_options``), swapping in each change.

    ``options.helium_path`` is replaced by the first copy. Returns once ``DevMode.stop()`` (or
    ``POST /api/stop``) has stopped the workers. Dev mode's assembly: ``build`` with its seams, plus what
    dev mode hears.
    """
    root = tree.resolve()
    state_dir = options.state_dir.resolve()
    options = dev_options(options, state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ignore_file = state_dir / ".gitignore"
    if not ignore_file.exists():
        ignore_file.write_text("# urban-robot dev mode's state: snapshots, logs, cache\n*\n")
        ignore_file.chmod(0o600)  # nothing in the state directory may be writable by others
    dev_tree = Tree(root, state_dir / "dev", skip=(state_dir, root / "log"), patterns=tuple(ignore))
    first = await trio.to_thread.run_sync(_first_snapshot, dev_tree, state_dir)
    options = attrs.evolve(
        options, helium_path=first, state_dir=state_dir, log_dir=state_dir / "log", deploy_timeout=verdict_timeout
    )
    logs: dict[Path, str] = {}
    # One worker of the current code, whatever died: a crashed candidate is no reason to start another.
    app = build(options, seams=Seams(launch=noting_logs(logs), on_spawn="top up"))
    dev = DevMode(app, dev_tree, out=out, quiet=quiet, logs=logs)
    app.bus.subscribe(RoleChanged, dev.on_role)
    app.bus.subscribe(HealthReport, dev.on_report)
    async with trio.open_nursery() as nursery:
        await nursery.start(app.run)
        print(
            f"Urban Robot dev mode: watching {root}; each change is health-checked and swapped in (Ctrl+C stops).",
            file=out,
        )
        print(dashboard_line(app.url, options.admin_token, options.state_dir, out), file=out, flush=True)
        await nursery.start(dev.run)
        task_status.started(dev)


def noting_logs(logs: dict[Path, str], launch: Launch = trio.lowlevel.open_process) -> Launch:
    """Children's ``launch``, noting each log file by working directory in ``logs``: a snapshot's candidate's log."""

    async def launch_noting_log(command: Any, *, cwd: Path, stdout: Any = None, **kwargs: Any) -> Any:
        name = getattr(stdout, "name", None)
        if isinstance(name, str):
            logs[Path(cwd)] = name
        return await launch(command, cwd=cwd, stdout=stdout, **kwargs)

    return launch_noting_log


def _first_snapshot(tree: Tree, state_dir: Path) -> Path:
    """Generation 1's copy; earlier runs' copies go unless a worker of theirs may still run (to be adopted)."""
    registry = state_dir / "children.json"
    survivors = registry.exists() and registry.read_text().strip() not in ("", "{}")
    if tree.snapshots.exists() and not survivors:
        tree.discard_all_but(set())
    first = tree.snapshot()
    log_dir = state_dir / "log"
    log_dir.mkdir(mode=0o700, exist_ok=True)
    (first / "log").symlink_to(log_dir, target_is_directory=True)  # serve() logs to helium_path/log
    return first


# -- the command line ---------------------------------------------------------------------------------


def main(
    path: Path,
    *,
    command: str | None = None,
    host: str | None = None,
    port: int | None = None,
    state_dir: Path | None = None,
    ignore: Sequence[str] = (),
    config_path: Path | None = None,
    log_level: str | None = None,
    log_format: LogFormat = "text",
) -> int:
    """``python -m urban_robot dev PATH``; the exit status."""
    if not path.is_dir():
        print(f"urban-robot dev: {path} is not a directory; give the bot's source tree", file=sys.stderr)
        return 2
    flags = {"helium_path": path, "command": command, "host": host, "port": port, "log_level": log_level}
    try:
        config = _load_config(flags, config_path)
    except ConfigError as exc:
        return config_errors(exc)
    assert config.options is not None  # helium_path is given
    options = dev_options(config.options, state_dir or path / STATE_DIR_NAME)
    prepared = prepare(options, config.log_level if log_level is not None else logging.WARNING, log_format)
    if isinstance(prepared, int):
        return prepared
    return run_command(_run, path, prepared, list(ignore), address=f"{prepared.host}:{prepared.port}")


def _load_config(flags: dict[str, Any], config_path: Path | None) -> Config:
    """The configuration, with a placeholder bot token if none is configured anywhere (simulated bots need none)."""
    try:
        return load_config(flags, os.environ, config_path, Path.cwd())
    except ConfigError as exc:
        if not any(problem.startswith("secrets.bot_token: required") for problem in exc.problems):
            raise
    return load_config(flags, {**os.environ, "BOT_TOKEN": PLACEHOLDER_TOKEN}, config_path, Path.cwd())


async def _run(path: Path, options: Options, ignore: list[str]) -> None:
    def say(line: str, again: bool) -> None:
        print(line, flush=True)

    await run_until_stopped(
        functools.partial(develop, path, options, ignore=ignore), say=say, app_of=lambda dev: dev.app
    )
