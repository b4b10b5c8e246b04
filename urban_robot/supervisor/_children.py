"""Helium children: spawn the bot's command, watch it, report its exit to the core at once.

One task per child, owned by the manager's nursery. A child runs in its own
session (a supervisor crash does not take it down) with ``URBAN_ROBOT_URL``,
``URBAN_ROBOT_SECRET`` (derived from the state key, so still valid after a
supervisor restart) and ``URBAN_ROBOT_GENERATION`` in its environment, its
output in ``log/helium-YYYY-MM-DD-HH-MM-SS-<identity>.log`` (named by its identity,
so ``logs <identity>`` finds it after it exited; old logs pruned by count and
total size). Its exit is reported the moment it is seen, with how long it lived
and its last lines of output (redacted, control characters escaped): that is
what makes failover after a crash fast (a dropped socket proves nothing; an
exited process does) and a crash message say why.

Restarts wait an exponential backoff with jitter after quick deaths, reset
once a child has lived ``stable_uptime``; how many children there should be is
the core's call (it asks for a ``Spawn`` per loss, and stops asking in a crash
loop; a spawn still waiting out its back-off when the core stopped asking is
dropped). ``TopUp`` (``try_again``) brings the count back at once: the back-off
reset, waiting spawns replaced by immediate ones. Children are recorded in ``children.json`` in the state directory; a
restarted supervisor adopts the ones still alive (same pid *and* start time)
and watches them through a pidfd although they are not its children.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import secrets
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from ..logs import read_tail
from ._events import CheckFrozen, Close, Frozen, ProcessExited, Send
from ._store import atomic_write

log = logging.getLogger("urban_robot.children")
# Never handed to a worker: a compromised bot must not be able to deploy, stop or forge webhooks.
SUPERVISOR_SECRETS = frozenset({"URBAN_ROBOT_ADMIN_TOKEN", "URBAN_ROBOT_WEBHOOK_SECRET"})
WORKER_SECRETS_PREFIX = "URBAN_ROBOT_WORKER_SECRET_"  # external workers' secrets: a child must not pose as one
LOGS_KEPT = 100  # exited children whose log files the manager still names (for failed-deploy messages)


def log_identity(path: Path) -> str | None:
    """The worker identity a log file is named by (``helium-<stamp>-<identity>[.n].log``); None for older names."""
    stem = path.name.removeprefix("helium-").removesuffix(".log").split(".")[0]
    parts = stem.split("-", 6)  # YYYY-MM-DD-HH-MM-SS-<identity>
    return parts[6] if len(parts) == 7 and parts[6] else None


class Robot(Protocol):
    """What the manager needs of the supervisor service."""

    credentials: Any

    async def submit(self, event: Any) -> Any: ...


@attrs.frozen
class ChildPolicy:
    term_timeout: float = 10.0  # after asking a child to shut down, before SIGTERM
    kill_timeout: float = 10.0  # after SIGTERM, before SIGKILL
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    jitter: float = 0.5  # up to this fraction added to each backoff, so restarts do not march in step
    stable_uptime: float = 60.0  # a child that lived this long resets the backoff
    log_keep: int = 20
    log_max_bytes: int = 100 * 1024 * 1024


@attrs.define(eq=False)
class Child:
    identity: str
    pid: int
    generation: int
    started: float  # trio clock
    start_ticks: int | None  # /proc/<pid>/stat starttime: tells a reused pid from ours
    process: trio.Process | None = None  # None once adopted from an earlier supervisor
    log: str | None = None  # its log file, for `urban-robot logs`
    release: str | None = None  # what it runs ("deploy 747c50f12ab3"), for the reasons people read
    reported: trio.Event = attrs.Factory(trio.Event)  # set once its exit has been handed to the supervisor


def start_ticks(pid: int) -> int | None:
    stat = _stat(pid)
    return int(stat[19]) if stat is not None else None  # field 22


def stopped(pid: int, ticks: int | None) -> bool:
    """Whether the kernel has ``pid`` (still the process started at ``ticks``) stopped: T (a signal) or t (traced)."""
    stat = _stat(pid)
    return stat is not None and int(stat[19]) == ticks and stat[0] in ("T", "t")


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on: the command name before it may hold spaces and parentheses."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


Launch = Callable[..., Awaitable[Any]]


class Children:
    def __init__(
        self,
        robot: Robot,
        command: Sequence[str],
        *,
        cwd: Path,
        url: str,
        log_dir: Path | None = None,
        registry: Path | None = None,
        generation: int = 1,
        policy: ChildPolicy = ChildPolicy(),
        launch: Launch = trio.lowlevel.open_process,
        rng: random.Random | None = None,
    ) -> None:
        self.robot = robot
        self.command = list(command)
        self.cwd = cwd
        self.url = url
        self.log_dir = log_dir
        self.registry = registry
        self.generation = generation
        self.policy = policy
        self.launch = launch
        self.rng = rng or random.Random()
        self.children: dict[str, Child] = {}
        self.exit_observers: list[Callable[[str, int | None], None]] = []
        self.asked: set[str] = set()  # children asked to stop: their exit is no crash
        self.target = 0  # how many children run() keeps (one running + the hot standbys)
        # When this manager stops: stop the children (default), or leave them to the next supervisor.
        self.keep_running = False
        self.stopping = False  # stop_all() has begun: nothing new starts
        self.quick_deaths = 0  # consecutive children that died before stable_uptime
        self.release: str | None = None  # what children of the current generation run, for reasons ("deploy …")
        # Whether a spawn that waited out its back-off may still start (the core may have said "no more spawns").
        self.may_spawn: Callable[[], bool] = lambda: True
        self.logs: dict[str, str] = {}  # identity -> log file, exited children's too (the last LOGS_KEPT)
        self._waiting: dict[str, tuple[int, trio.CancelScope]] = {}  # spawns in their back-off: generation, scope
        self._numbers = itertools.count(1)
        # Unique across supervisor restarts: a new child must never share a surviving child's identity.
        self._boot = secrets.token_hex(3)
        self._nursery: trio.Nursery | None = None

    @property
    def processes(self) -> dict[str, Child]:
        return self.children

    # -- running ------------------------------------------------------------------------------
    async def run(self, count: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Adopt surviving children, start more up to ``count``, then manage them until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.target = count
            adopted = self._adopt_survivors()
            for _ in range(max(0, count - adopted)):
                self.spawn("start-up")
            task_status.started()
            await trio.sleep_forever()

    def spawn(
        self,
        reason: str,
        *,
        generation: int | None = None,
        cwd: Path | None = None,
        backoff: bool = True,
        release: str | None = None,
    ) -> str:
        """Start one more child (after the current backoff); returns its identity.

        ``cwd`` runs it from another directory (a deploy's release) than the usual one;
        ``backoff=False`` starts it at once (a deploy's candidate is no restart); ``release`` says what it runs.
        """
        assert self._nursery is not None, "Children.run is not running"
        identity = f"child-{self._boot}-{next(self._numbers)}"
        if self.stopping:
            log.info("not spawning %s (%s): the supervisor stops", identity, reason)
            return identity
        delay = self.backoff() if backoff else 0.0
        log.info("spawning %s (%s)%s", identity, reason, f" in {delay:.1f}s" if delay else "")
        try:
            self._nursery.start_soon(
                self._child, identity, generation or self.generation, delay, cwd or self.cwd, release or self.release
            )
        except RuntimeError:  # the manager is shutting down: nothing new starts
            log.info("not spawning %s: shutting down", identity)
        return identity

    def top_up(self, reason: str, *, at_once: bool = False) -> None:
        """Spawn children of the current generation until there are ``target`` of it (counting those waiting
        out a back-off). ``at_once`` (``try_again``): the back-off reset, the waiting ones started now instead."""
        if at_once:
            self.quick_deaths = 0
            for _generation, scope in self._waiting.values():
                scope.cancel()  # replaced just below, without the wait
            self._waiting.clear()
        current = sum(1 for child in self.children.values() if child.generation == self.generation)
        current += sum(1 for generation, _ in self._waiting.values() if generation == self.generation)
        for _ in range(self.target - current):
            self.spawn(reason, backoff=not at_once)

    def backoff(self) -> float:
        now = trio.current_time()
        if any(now - child.started >= self.policy.stable_uptime for child in self.children.values()):
            self.quick_deaths = 0  # a child has lived long enough: the code is not crash-looping
        if self.quick_deaths == 0:
            return 0.0
        p = self.policy
        base = min(p.backoff_cap, p.backoff_base * 2 ** (self.quick_deaths - 1))
        return float(base * (1 + p.jitter * self.rng.random()))

    def generation_of(self, identity: str) -> int | None:
        """The generation ``identity`` was spawned (or adopted) with; None if it is not one of our children."""
        child = self.children.get(identity)
        return child.generation if child is not None else None

    def environment(self, identity: str, generation: int) -> dict[str, str]:
        """The supervisor's environment minus its own secrets, plus what the worker needs to connect."""
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in SUPERVISOR_SECRETS and not name.startswith(WORKER_SECRETS_PREFIX)
        }
        env.update(
            {
                "URBAN_ROBOT_URL": self.url,
                "URBAN_ROBOT_SECRET": self.robot.credentials.child_secret(identity),
                "URBAN_ROBOT_GENERATION": str(generation),
            }
        )
        return env

    async def _child(self, identity: str, generation: int, delay: float, cwd: Path, release: str | None) -> None:
        if delay:
            with trio.CancelScope() as waiting:
                self._waiting[identity] = (generation, waiting)
                await trio.sleep(delay)
            self._waiting.pop(identity, None)
            if waiting.cancelled_caught:
                return  # try_again started another at once in its place
            if not self.may_spawn():
                log.info("not spawning %s after its back-off: the supervisor stopped spawning meanwhile", identity)
                return
        if self.stopping:
            return  # its back-off ended during a stop
        output = self._log_file(identity)
        try:
            process = await self.launch(
                self.command,
                cwd=cwd,
                env=self.environment(identity, generation),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("cannot start %s in %s: %s", " ".join(self.command), cwd, exc.strerror or exc)
            self.quick_deaths += 1
            for observer in self.exit_observers:
                observer(identity, None)
            return
        finally:
            if output is not subprocess.DEVNULL:
                output.close()
        child = Child(
            identity,
            process.pid,
            generation,
            trio.current_time(),
            start_ticks(process.pid),
            process,
            getattr(output, "name", None),
            release,
        )
        self._record(child)
        try:
            returncode = await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None and not self.keep_running:
                    await self._terminate(child)
        await self._exited(child, returncode)

    async def _exited(self, child: Child, returncode: int | None) -> None:
        self._forget(child)
        uptime = trio.current_time() - child.started
        tail = tuple(self.tail(child.identity))  # at most 16 KiB of a file just written: read inline
        candidate = child.generation > self.generation  # a deploy's candidate, never confirmed
        if child.identity in self.asked:
            self.asked.discard(child.identity)  # we stopped it: no crash, no backoff
        elif not candidate:  # a failed candidate is new code failing, not the running code crashing
            self.quick_deaths = self.quick_deaths + 1 if uptime < self.policy.stable_uptime else 0
        log.info("%s (pid %s) exited with %s after %.1fs", child.identity, child.pid, returncode, uptime)
        for observer in self.exit_observers:
            observer(child.identity, returncode)
        try:
            lived = uptime if child.process is not None else None  # an adopted child started before we saw it
            exited = ProcessExited(child.identity, returncode, candidate=candidate, uptime=lived, tail=tail)
            await self.robot.submit(exited)
        finally:
            child.reported.set()

    def release_of(self, identity: str) -> str | None:
        """What ``identity`` runs ("deploy 747c50f12ab3"), if it is one of our children and we know."""
        child = self.children.get(identity)
        return child.release if child is not None else None

    def tail(self, identity: str) -> list[str]:
        """The last lines of ``identity``'s output, with its own secret and the bot token redacted."""
        settings = getattr(self.robot, "settings", None)
        secrets = [self.robot.credentials.child_secret(identity), getattr(settings, "token", None)]
        return read_tail(self.logs.get(identity), secrets=secrets)

    def on_action(self, action: Any) -> None:
        """A supervisor observer: a child the core fenced off as hung is killed (then replaced); asked whether
        a silent child is stopped, the kernel answers."""
        if isinstance(action, Send) and action.event == "cmd" and action.data.get("t") == "shutdown":
            core = getattr(self.robot, "core", None)
            worker = core.clients.get(action.wid) if core is not None else None
            if worker is not None:
                self.asked.add(worker.identity)  # the supervisor asked it to go
        if isinstance(action, Close) and action.hung and action.identity in self.children:
            self.kill(action.identity, action.reason)
        if isinstance(action, CheckFrozen) and action.identity in self.children:
            child = self.children[action.identity]
            if stopped(child.pid, child.start_ticks):
                assert self._nursery is not None
                self._nursery.start_soon(self.robot.submit, Frozen(action.identity))

    def kill(self, identity: str, reason: str) -> None:
        """SIGKILL a hung child now: it answers neither the protocol nor SIGTERM (a stopped process does not even
        take SIGTERM until continued). Its exit, reported as every exit is, is what releases a lease it held."""
        child = self.children[identity]
        log.warning("%s (pid %s) is hung (%s): killing it", identity, child.pid, reason)
        self.asked.add(identity)  # we ended it: no back-off for its replacement (the core still counts the loss)
        self._signal(child, signal.SIGKILL)

    # -- stopping ---------------------------------------------------------------------------------
    async def stop_all(self) -> None:
        """Stop every child under one deadline: each was asked to shut down (the core's ``Stopping``), so
        wait up to ``term_timeout`` for them all to exit, SIGTERM those left, SIGKILL after ``kill_timeout``.

        Returns once every exit has been reported to the supervisor (its lease released on disk).
        Nothing new is spawned meanwhile, nor after.
        """
        self.stopping = True
        deadline = trio.current_time() + self.policy.term_timeout
        tried: set[str] = set()
        while children := [child for child in self.children.values() if child.identity not in tried]:
            tried.update(child.identity for child in children)  # one launched meanwhile: another round
            self.asked.update(tried)
            async with trio.open_nursery() as nursery:
                for child in children:
                    nursery.start_soon(self._stop_by, child, deadline)

    async def _stop_by(self, child: Child, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await child.reported.wait()
            return
        await self._terminate(child)
        with trio.move_on_after(self.policy.kill_timeout):  # reported a moment after the exit is seen
            await child.reported.wait()

    async def stop(self, identity: str, ask: Callable[[], Awaitable[None]] | None = None) -> None:
        """Stop one child politely: ``ask`` (the shutdown cmd), then SIGTERM, then SIGKILL."""
        child = self.children.get(identity)
        if child is None:
            return
        self.asked.add(identity)
        if ask is not None:
            await ask()
            if await self._wait_gone(child, self.policy.term_timeout):
                return
        await self._terminate(child)

    async def _terminate(self, child: Child) -> None:
        self._signal(child, signal.SIGTERM)
        if await self._wait_gone(child, self.policy.kill_timeout):
            return
        log.warning("%s ignored SIGTERM for %ss: killing it", child.identity, self.policy.kill_timeout)
        self._signal(child, signal.SIGKILL)
        await self._wait_gone(child, self.policy.kill_timeout)

    def _signal(self, child: Child, sig: int) -> None:
        try:
            if child.process is not None:
                child.process.send_signal(sig)
            elif start_ticks(child.pid) == child.start_ticks:
                os.kill(child.pid, sig)
        except ProcessLookupError:
            pass

    async def _wait_gone(self, child: Child, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            if child.process is not None:
                await child.process.wait()
            else:
                await _wait_pid(child.pid)
            return True
        return False

    # -- adoption after a supervisor restart --------------------------------------------------------
    def _adopt_survivors(self) -> int:
        adopted = 0
        for identity, info in self._load_registry().items():
            pid, ticks = int(info["pid"]), info.get("start_ticks")
            if ticks is None or start_ticks(pid) != ticks:
                continue  # gone, or the pid now belongs to someone else
            child = Child(
                identity,
                pid,
                int(info.get("generation", self.generation)),
                trio.current_time(),
                ticks,
                log=info.get("log"),
                release=info.get("release"),
            )
            self.children[identity] = child
            if child.log:
                self.logs[identity] = child.log
            assert self._nursery is not None
            self._nursery.start_soon(self._watch_adopted, child)
            self.generation = max(self.generation, child.generation)  # a deploy must beat what runs
            log.info("adopted %s (pid %s) from an earlier supervisor", identity, pid)
            adopted += 1
        self._save_registry()
        return adopted

    async def _watch_adopted(self, child: Child) -> None:
        try:
            await _wait_pid(child.pid)
        finally:
            with trio.CancelScope(shield=True):
                if start_ticks(child.pid) == child.start_ticks and not self.keep_running:
                    await self._terminate(child)
        await self._exited(child, None)  # not our child: its exit status is not ours to read

    # -- bookkeeping ----------------------------------------------------------------------------------
    def _record(self, child: Child) -> None:
        self.children[child.identity] = child
        if child.log is not None:
            self.logs[child.identity] = child.log
            while len(self.logs) > LOGS_KEPT:
                del self.logs[next(iter(self.logs))]  # the oldest: dicts keep insertion order
        self._save_registry()

    def _forget(self, child: Child) -> None:
        self.children.pop(child.identity, None)
        self._save_registry()

    def _load_registry(self) -> dict[str, dict[str, Any]]:
        if self.registry is None:
            return {}
        try:
            data = json.loads(self.registry.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_registry(self) -> None:
        if self.registry is None:
            return
        data = {
            c.identity: {
                "pid": c.pid,
                "generation": c.generation,
                "start_ticks": c.start_ticks,
                "log": c.log,
                "release": c.release,
            }
            for c in self.children.values()
        }
        atomic_write(self.registry, json.dumps(data, sort_keys=True).encode())

    def _log_file(self, identity: str) -> Any:
        if self.log_dir is None:
            return subprocess.DEVNULL
        self.log_dir.mkdir(parents=True, exist_ok=True)
        prune_logs(self.log_dir, keep=self.policy.log_keep - 1, max_bytes=self.policy.log_max_bytes)
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S")
        for n in itertools.count():
            path = self.log_dir / (f"helium-{stamp}-{identity}.log" if n == 0 else f"helium-{stamp}-{identity}.{n}.log")
            try:
                return open(path, "xb")
            except FileExistsError:
                continue
        raise AssertionError("unreachable")


def prune_logs(log_dir: Path, *, keep: int, max_bytes: int) -> list[Path]:
    """Delete the oldest ``helium-*.log`` beyond ``keep`` files or ``max_bytes`` in all; the deleted ones."""
    logs = sorted(log_dir.glob("helium-*.log"), key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
    kept_bytes, removed = 0, []
    for index, path in enumerate(logs):
        size = path.stat().st_size
        if index >= keep or kept_bytes + size > max_bytes:
            path.unlink(missing_ok=True)
            removed.append(path)
        else:
            kept_bytes += size
    return removed


async def _wait_pid(pid: int) -> None:
    """Wait for any process (child or not) to exit, through a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)
