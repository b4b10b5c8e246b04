"""Helium children: spawn the bot's command, watch it, report its exit to the core at once.

One task per child, owned by the manager's nursery. A child runs in its own
session (a supervisor crash does not take it down), as ``workers.user`` when one
is set (``RunAs``), with ``URBAN_ROBOT_URL``, ``URBAN_ROBOT_SECRET`` (bound to
this spawn: valid while the child runs, also after a supervisor restart that
adopts it) and ``URBAN_ROBOT_GENERATION`` in its environment and no other secret
(``inherited``), its output in ``log/helium-YYYY-MM-DD-HH-MM-SS-<identity>.log``
(0600, in a 0700 directory; named by its identity, so ``logs <identity>`` finds
it after it exited; old logs pruned by count and total size). Its exit is
reported the moment it is seen, with how long it lived and its last lines of
output (redacted, control characters escaped): that is what makes failover after
a crash fast (a dropped socket proves nothing; an exited process does) and a
crash message say why.

Restarts wait an exponential backoff with jitter after quick deaths, reset
once a child has lived ``stable_uptime``; how many children there should be is
the core's call (it asks for a ``Spawn`` per loss, and stops asking in a crash
loop; a spawn still waiting out its back-off when the core stopped asking is
dropped). ``TopUp`` (``try_again``) brings the count back at once: the back-off
reset, waiting spawns replaced by immediate ones. Children are recorded in
``children.json`` in the state directory; a restarted supervisor adopts the ones
it can verify (``_verify``: the pid alive with the recorded start time, the
expected uid, the session we created for it, this spawn's secret in its
environment) and watches and signals them through a pidfd although they are not
its children. An entry that fails is dropped with one line and its process is
never signalled: a planted registry cannot get a foreign process killed.
"""

from __future__ import annotations

import collections
import contextlib
import grp
import itertools
import json
import logging
import os
import pwd
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

from .._errors import UrbanRobotError
from ..logs import read_tail
from ..protocol import ShardPlan
from ._events import CheckFrozen, Close, Frozen, Kill, ProcessExited, Send
from ._store import atomic_write, read_private

log = logging.getLogger("urban_robot.children")
# Of the supervisor's own variables a child gets only these (its own three are set for it): a compromised bot must
# not deploy, stop, forge webhooks or notifications, or pose as an external worker. The two for a fake Discord
# (tests/e2e, the chaos soak) say where Discord is, nothing secret.
PASSED_THROUGH = frozenset({"URBAN_ROBOT_DISCORD_URL", "URBAN_ROBOT_DISCORD_CLIENT"})
WITHHELD = frozenset({"BOT_TOKEN"})  # the token reaches a worker only in `hello`, after it authenticated


def inherited(name: str) -> bool:
    """Whether a child inherits the supervisor's environment variable ``name``."""
    return name not in WITHHELD and (not name.startswith("URBAN_ROBOT_") or name in PASSED_THROUGH)


class RunAsError(UrbanRobotError):
    """``workers.user``/``workers.group`` cannot be used; the message (one line) says why."""


@attrs.frozen
class RunAs:
    """The user and group children run as (``workers.user``, ``workers.group``): the supervisor must be root."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def resolve(cls, user: str, group: str | None = None) -> RunAs:
        if os.geteuid() != 0:
            raise RunAsError(
                f"workers.user = {user!r} needs the supervisor to run as root (it runs as uid {os.geteuid()}):"
                " unset it, or start the supervisor as root"
            )
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except (KeyError, ValueError):
            raise RunAsError(f"workers.user: no such user {user!r} on this host (create it, e.g. useradd)") from None
        gid = entry.pw_gid
        if group is not None:
            try:
                gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
            except (KeyError, ValueError):
                raise RunAsError(f"workers.group: no such group {group!r} on this host") from None
        if entry.pw_uid == 0:
            raise RunAsError(f"workers.user = {user!r} is root: name an unprivileged user")
        return cls(entry.pw_name, entry.pw_uid, gid, entry.pw_dir)

    def popen(self) -> dict[str, Any]:
        """Popen's arguments that drop the supervisor's privileges (its supplementary groups too)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


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
    # How often the kernel is asked whether a child is stopped by a signal (``Frozen(seen=...)``): a stopped
    # lease holder is fenced when this sees it. Reading /proc/<pid>/stat takes microseconds.
    stop_watch: float = 0.05


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
    nonce: str | None = attrs.field(default=None, repr=False)  # its spawn's, binding its secret (children.json)
    uid: int = attrs.Factory(os.getuid)  # the user it runs as
    pidfd: int | None = None  # an adopted child's, opened after it was verified: signals reach it and no other
    group: int = 0  # the shard group it runs (0: the only one, unsharded)


def start_ticks(pid: int) -> int | None:
    stat = _stat(pid)
    return int(stat[19]) if stat is not None else None  # field 22


def stopped(pid: int, ticks: int | None, states: tuple[str, ...] = ("T", "t")) -> bool:
    """Whether the kernel has ``pid`` (still the process started at ``ticks``) stopped: T (a signal) or t (traced)."""
    stat = _stat(pid)
    return stat is not None and int(stat[19]) == ticks and stat[0] in states


def _uid(pid: int) -> int | None:
    """The real uid ``pid`` runs as."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    uids = [line.split()[1] for line in status.splitlines() if line.startswith("Uid:")]
    return int(uids[0]) if uids else None


def _environ(pid: int) -> dict[bytes, bytes]:
    """The environment ``pid`` was started with (readable by its own user and root)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(entry.partition(b"=")[::2] for entry in raw.split(b"\0") if entry)


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on: the command name before it may hold spaces and parentheses."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


Launch = Callable[..., Awaitable[Any]]


@attrs.frozen
class Code:
    """What a shard group's children run: the generation they are spawned as, the directory they start in (the
    checkout, or a deploy's release) and what that is for the reasons people read ("deploy 747c50f12ab3")."""

    generation: int
    cwd: Path
    release: str | None = None


class Children:
    def __init__(
        self,
        robot: Robot,
        command: Sequence[str],
        *,
        cwd: Path,
        url: str = "",
        log_dir: Path | None = None,
        registry: Path | None = None,
        generation: int = 1,
        policy: ChildPolicy = ChildPolicy(),
        launch: Launch = trio.lowlevel.open_process,
        rng: random.Random | None = None,
        run_as: RunAs | None = None,
        may_spawn: Callable[[], bool] = lambda: True,
        blocking_io: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync,
        plan: ShardPlan | None = None,
    ) -> None:
        self.robot = robot
        self.command = list(command)
        self.url = url
        self.log_dir = log_dir
        self.registry = registry
        self.policy = policy
        self.launch = launch
        self.rng = rng or random.Random()
        self.run_as = run_as
        self.children: dict[str, Child] = {}
        self.asked: set[str] = set()  # children asked to stop: their exit is no crash
        self.target = 0  # how many children run() keeps per shard group (one running + the hot standbys)
        self.plan = plan if plan is not None else ShardPlan.unsharded()
        self.groups = len(self.plan.groups)  # shard groups: each has its own ``target`` children (1 unsharded)
        # Each group's current code: a rolling deploy moves the groups one at a time, so during a rollout a group
        # not yet moved keeps spawning (replacements, top-ups) the old release and a moved one the new.
        self.codes: list[Code] = [Code(generation, cwd)] * self.groups
        # When this manager stops: stop the children (default), or leave them to the next supervisor.
        self.keep_running = False
        self.stopping = False  # stop_all() has begun: nothing new starts
        self.quick_deaths = 0  # consecutive children that died before stable_uptime
        # Whether a spawn that waited out its back-off may still start (the core may have said "no more spawns").
        self.may_spawn = may_spawn
        self.blocking_io = blocking_io  # the registry's writes (fsync): never in the event loop, where they held up
        self._registry_due: bytes | None = None  # the newest registry not written yet (latest wins)
        self._registry_wake = trio.Event()
        self.logs: dict[str, str] = {}  # identity -> log file, exited children's too (the last LOGS_KEPT)
        # (when, back-off) of the last spawns: how long restarts were held back (the deploy benchmark reads it)
        self.delays: collections.deque[tuple[float, float]] = collections.deque(maxlen=100)
        self._nonces: dict[str, str] = {}  # identity -> its spawn's nonce, as long as its log is named: to redact
        # spawns in their back-off: generation, shard group, scope
        self._waiting: dict[str, tuple[int, int, trio.CancelScope]] = {}
        self._numbers = itertools.count(1)
        # Unique across supervisor restarts: a new child must never share a surviving child's identity.
        self._boot = secrets.token_hex(3)
        self._nursery: trio.Nursery | None = None
        self._survivors: list[Child] | None = None  # verified and admitted, not yet adopted (admit_survivors)

    def use_plan(self, plan: ShardPlan) -> None:
        """Run ``plan``'s shard groups (``target`` children each): before ``run`` and ``admit_survivors``."""
        self.plan, self.groups = plan, len(plan.groups)
        self.codes = [self.codes[0]] * self.groups

    def code(self, group: int) -> Code:
        """What group ``group``'s children run now."""
        return self.codes[group]

    def set_code(self, group: int, code: Code) -> None:
        """Group ``group`` runs ``code`` from now on: its replacements and top-ups spawn it."""
        self.codes[group] = code

    # Every group's code at once (dev mode, a restart's resume, unsharded bots). Read during a rolling deploy,
    # ``generation`` is the newest any group runs (what a candidate must beat), ``cwd`` and ``release`` group 0's.
    @property
    def generation(self) -> int:
        return max(code.generation for code in self.codes)

    @generation.setter
    def generation(self, value: int) -> None:
        self.codes = [attrs.evolve(code, generation=value) for code in self.codes]

    @property
    def cwd(self) -> Path:
        return self.codes[0].cwd

    @cwd.setter
    def cwd(self, value: Path) -> None:
        self.codes = [attrs.evolve(code, cwd=value) for code in self.codes]

    @property
    def release(self) -> str | None:
        return self.codes[0].release

    @release.setter
    def release(self, value: str | None) -> None:
        self.codes = [attrs.evolve(code, release=value) for code in self.codes]

    @property
    def processes(self) -> dict[str, Child]:
        return self.children

    # -- running ------------------------------------------------------------------------------
    async def run(
        self, count: int, url: str | None = None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Adopt surviving children, start more up to ``count``, then manage them until cancelled. ``url`` is
        where children connect (``URBAN_ROBOT_URL``): known once the supervisor's port is bound."""
        if url is not None:
            self.url = url
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._registry_writer)
                await self._manage(nursery, count, task_status)
        finally:
            self._flush_registry()  # what changed last is on disk before we go

    async def _manage(self, nursery: trio.Nursery, count: int, task_status: trio.TaskStatus[None]) -> None:
        self.target = count
        self._adopt_survivors()
        for group in range(self.groups):  # group by group: each group's first worker before any group's second
            adopted = sum(1 for child in self.children.values() if child.group == group)
            for _ in range(max(0, count - adopted)):
                self.spawn("start-up", group=group)
        nursery.start_soon(self._watch_stops)
        task_status.started()
        await trio.sleep_forever()

    async def _watch_stops(self) -> None:
        """Tell the supervisor when a child is stopped by a signal (SIGSTOP: state T), once per stop.

        A debugger's stop (t: py-spy, gdb) is left to the silence probe (``CheckFrozen``): it is brief, and
        an operator's. Adopted children are watched alike (no SIGCHLD reaches us from them)."""
        seen: set[str] = set()
        while True:
            await trio.sleep(self.policy.stop_watch)
            for identity, child in list(self.children.items()):
                if not stopped(child.pid, child.start_ticks, ("T",)):
                    seen.discard(identity)
                elif identity not in seen:
                    seen.add(identity)
                    await self.robot.submit(Frozen(identity, seen=trio.current_time(), group=child.group))
            seen &= set(self.children)

    def spawn(
        self,
        reason: str,
        *,
        generation: int | None = None,
        cwd: Path | None = None,
        backoff: bool = True,
        release: str | None = None,
        group: int = 0,
    ) -> str:
        """Start one more child for shard group ``group`` (after the current backoff); returns its identity.

        ``cwd`` runs it from another directory (a deploy's release) than the usual one;
        ``backoff=False`` starts it at once (a deploy's candidate is no restart); ``release`` says what it runs.
        """
        assert self._nursery is not None, "Children.run is not running"
        identity = f"child-{self._boot}-{next(self._numbers)}"
        if self.stopping:
            log.info("not spawning %s (%s): the supervisor stops", identity, reason)
            return identity
        delay = self.backoff() if backoff else 0.0
        code = self.codes[group]
        self.delays.append((trio.current_time(), delay))
        log.info("spawning %s (%s)%s", identity, reason, f" in {delay:.1f}s" if delay else "")
        try:
            self._nursery.start_soon(
                self._child,
                identity,
                generation or code.generation,
                delay,
                cwd or code.cwd,
                release or code.release,
                group,
                generation is None and cwd is None,  # its group's code, whatever that is when its back-off ends
            )
        except RuntimeError:  # the manager is shutting down: nothing new starts
            log.info("not spawning %s: shutting down", identity)
        return identity

    def top_up(self, reason: str, *, at_once: bool = False, group: int | None = None) -> None:
        """Spawn children of each shard group's current code (``group``: that one's only) until the group has
        ``target`` of its generation (counting those waiting out a back-off). ``at_once`` (``try_again``): the
        back-off reset, the waiting ones started now instead."""
        groups = range(self.groups) if group is None else [group]
        if at_once:
            self.quick_deaths = 0
            for identity, (_generation, in_group, scope) in list(self._waiting.items()):
                if in_group in groups:
                    scope.cancel()  # replaced just below, without the wait
                    del self._waiting[identity]
        for g in groups:
            generation = self.codes[g].generation
            current = sum(1 for c in self.children.values() if c.generation == generation and c.group == g)
            current += sum(1 for gen, in_g, _ in self._waiting.values() if gen == generation and in_g == g)
            for _ in range(self.target - current):
                self.spawn(reason, backoff=not at_once, group=g)

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
        env = {name: value for name, value in os.environ.items() if inherited(name)}
        if self.run_as is not None:
            env.update(HOME=self.run_as.home, USER=self.run_as.name, LOGNAME=self.run_as.name)
        env.update(
            {
                "URBAN_ROBOT_URL": self.url,
                "URBAN_ROBOT_SECRET": self.robot.credentials.child_secret(identity),
                "URBAN_ROBOT_GENERATION": str(generation),
            }
        )
        return env

    async def _child(
        self,
        identity: str,
        generation: int,
        delay: float,
        cwd: Path,
        release: str | None,
        group: int = 0,
        current: bool = False,
    ) -> None:
        if delay:
            with trio.CancelScope() as waiting:
                self._waiting[identity] = (generation, group, waiting)
                await trio.sleep(delay)
            self._waiting.pop(identity, None)
            if waiting.cancelled_caught:
                return  # try_again started another at once in its place
            if not self.may_spawn():
                log.info("not spawning %s after its back-off: the supervisor stopped spawning meanwhile", identity)
                return
        if self.stopping:
            return  # its back-off ended during a stop
        if current and delay:
            # A replacement runs its group's code as it is now: a deploy may have moved the group on (and pruned
            # the release it would have started in) while it waited out its back-off.
            code = self.codes[group]
            generation, cwd, release = code.generation, code.cwd, code.release
        try:
            output = self._log_file(identity)
        except OSError as exc:  # the log directory unusable (a file now, a full or read-only disk): run it anyway
            log.error("cannot open a log file for %s in %s: %s; its output is lost", identity, self.log_dir, exc)
            output = subprocess.DEVNULL
        # A fresh nonce: this spawn's secret, no earlier one's; its Identity says what we spawned it as.
        self.robot.credentials.bind(identity, generation=generation, release=release, group=group)
        try:
            process = await self.launch(
                self.command,
                cwd=cwd,
                env=self.environment(identity, generation),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **(self.run_as.popen() if self.run_as is not None else {}),
            )
        except OSError as exc:
            self.robot.credentials.revoke(identity)
            log.error("cannot start %s in %s: %s", " ".join(self.command), cwd, exc.strerror or exc)
            candidate = generation > self.codes[group].generation
            if not candidate:  # as in _exited: a failed candidate is new code failing, not the running code crashing
                self.quick_deaths += 1
            exited = ProcessExited(identity, None, candidate=candidate, uptime=0.0, group=group)  # as any exit
            await self.robot.submit(exited)
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
            nonce=self.robot.credentials.nonce(identity),
            uid=self.run_as.uid if self.run_as is not None else os.getuid(),
            group=group,
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
        self._forget(child, save=False)  # saved once the core knows: its disk work held up a failover's state write
        uptime = trio.current_time() - child.started
        tail = tuple(self.tail(child.identity))  # at most 16 KiB of a file just written: read inline
        candidate = child.generation > self.codes[child.group].generation  # a deploy's candidate, never confirmed
        if child.identity in self.asked:
            self.asked.discard(child.identity)  # we stopped it: no crash, no backoff
        elif not candidate:  # a failed candidate is new code failing, not the running code crashing
            self.quick_deaths = self.quick_deaths + 1 if uptime < self.policy.stable_uptime else 0
        log.info("%s (pid %s) exited with %s after %.1fs", child.identity, child.pid, returncode, uptime)
        try:
            lived = uptime if child.process is not None else None  # an adopted child started before we saw it
            exited = ProcessExited(
                child.identity, returncode, candidate=candidate, uptime=lived, tail=tail, group=child.group
            )
            await self.robot.submit(exited)
        finally:
            self._save_registry()
            child.reported.set()

    def release_of(self, identity: str) -> str | None:
        """What ``identity`` runs ("deploy 747c50f12ab3"), if it is one of our children and we know."""
        child = self.children.get(identity)
        return child.release if child is not None else None

    def tail(self, identity: str) -> list[str]:
        """The last lines of ``identity``'s output, with its own secret and the bot token redacted."""
        settings = getattr(self.robot, "settings", None)
        nonce = self._nonces.get(identity)  # an exited child's too: its secret is refused, but still not shown
        own = self.robot.credentials.secret_for(identity, nonce) if nonce is not None else None
        secrets = [own, getattr(settings, "token", None)]
        return read_tail(self.logs.get(identity), secrets=secrets)

    def on_action(self, action: Any) -> None:
        """A supervisor observer: a child the core fenced off as hung is killed (then replaced); asked whether
        a silent child is stopped, the kernel answers."""
        if isinstance(action, Send) and action.event == "cmd" and action.data.get("t") == "shutdown":
            if action.identity is not None:
                self.asked.add(action.identity)  # the supervisor asked it to go
                child = self.children.get(action.identity)
                if child is not None and self._nursery is not None and not self.stopping:
                    with contextlib.suppress(RuntimeError):  # the manager is shutting down: stop_all sees to it
                        self._nursery.start_soon(self._see_off, child)
        if isinstance(action, Close) and action.hung and action.identity in self.children:
            self.kill(action.identity, action.reason)
        if isinstance(action, Kill) and action.identity in self.children:
            self.kill(action.identity, action.reason)
        if isinstance(action, CheckFrozen) and action.identity in self.children:
            child = self.children[action.identity]
            if stopped(child.pid, child.start_ticks):
                assert self._nursery is not None
                self._nursery.start_soon(self.robot.submit, Frozen(action.identity))

    async def _see_off(self, child: Child) -> None:
        """A child asked to shut down disconnects and exits (protocol v1 §7): it has ``term_timeout`` for that,
        then SIGTERM, then SIGKILL after ``kill_timeout`` (``workers.stop_timeout``), as in a stop of the supervisor.
        One that lingers (its own loop outlives its worker) would otherwise run, disconnected, for good."""
        with trio.move_on_after(self.policy.term_timeout):
            await child.reported.wait()
            return
        if self.children.get(child.identity) is child and not self.keep_running and not self.stopping:
            log.warning(
                "%s (pid %s) did not exit %gs after it was asked to shut down: terminating it",
                child.identity,
                child.pid,
                self.policy.term_timeout,
            )
            await self._terminate(child)

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
        """Stop one child politely: ``ask`` (the shutdown cmd), then SIGTERM, then SIGKILL; return once its exit
        is reported to the supervisor (or it could not be made to go)."""
        child = self.children.get(identity)
        if child is None:
            return
        self.asked.add(identity)
        if ask is None or not await self._wait_gone_asked(child, ask):
            await self._terminate(child)
        with trio.move_on_after(self.policy.kill_timeout):  # reported a moment after the exit is seen
            await child.reported.wait()

    async def _wait_gone_asked(self, child: Child, ask: Callable[[], Awaitable[None]]) -> bool:
        await ask()
        return await self._wait_gone(child, self.policy.term_timeout)

    async def _terminate(self, child: Child) -> None:
        self._signal(child, signal.SIGTERM)
        if await self._wait_gone(child, self.policy.kill_timeout):
            return
        log.warning("%s ignored SIGTERM for %ss: killing it", child.identity, self.policy.kill_timeout)
        self._signal(child, signal.SIGKILL)
        await self._wait_gone(child, self.policy.kill_timeout)

    def _signal(self, child: Child, sig: int) -> None:
        """Signal our own child through its trio.Process, an adopted one through the pidfd opened when it was
        verified (never by pid: a recycled pid would be someone else's process)."""
        try:
            if child.process is not None:
                child.process.send_signal(sig)
            elif child.pidfd is not None:
                signal.pidfd_send_signal(child.pidfd, sig)
        except ProcessLookupError:
            pass

    async def _wait_gone(self, child: Child, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            if child.process is not None:
                await child.process.wait()
            elif child.pidfd is not None:
                await _wait_pidfd(child.pidfd)
            return True
        return False

    # -- adoption after a supervisor restart --------------------------------------------------------
    def admit_survivors(self) -> int:
        """The registry's children that still run (verified by the kernel) get their secrets back: call it before
        the supervisor's port opens. A survivor reconnecting earlier than its adoption was refused, and a worker
        takes a refusal for a wrong secret and exits — the holder too (the chaos soak's kill_supervisor
        stretches of ~2 s). ``run`` adopts them (watches their exits); calling this again changes nothing."""
        if self._survivors is None:
            self._survivors = []
            for identity, info in self._load_registry().items():
                child = self._verify(identity, info)
                if child is None:
                    continue
                # Its secret, and only its, is valid again; the generation and release it was spawned with, too.
                self.robot.credentials.bind(
                    identity, child.nonce, generation=child.generation, release=child.release, group=child.group
                )
                self._survivors.append(child)
        return len(self._survivors)

    def _adopt_survivors(self) -> int:
        self.admit_survivors()
        survivors, self._survivors = self._survivors or [], []
        for child in survivors:
            identity = child.identity
            self.children[identity] = child
            self._remember(child)
            assert self._nursery is not None
            self._nursery.start_soon(self._watch_adopted, child)
            code = self.codes[child.group]  # a deploy must beat what runs
            self.codes[child.group] = attrs.evolve(code, generation=max(code.generation, child.generation))
            log.info("adopted %s (pid %s) from an earlier supervisor", identity, child.pid)
        self._save_registry()
        return len(survivors)

    def _verify(self, identity: str, info: Any) -> Child | None:
        """The registry entry as a child to adopt, if its process is the one we spawned; else None, said in one line.

        Trusted only after the kernel confirms it: the pid alive with the recorded start time, running as the
        user our children run as, leading the session we created for it; then a pidfd pins that very process.
        """
        expected_uid = self.run_as.uid if self.run_as is not None else os.getuid()
        try:
            pid, ticks, nonce = int(info["pid"]), int(info["start_ticks"]), str(info["nonce"])
            generation, log_file = int(info.get("generation", self.generation)), info.get("log")
        except (KeyError, TypeError, ValueError):
            return self._drop(identity, info, "the entry is incomplete (no start time or nonce)")
        fields = _stat(pid)
        if fields is None or int(fields[19]) != ticks:
            return self._drop(identity, info, "that process is gone (its pid is unused or someone else's now)")
        if int(fields[3]) != pid:
            return self._drop(identity, info, "that process is not in the session the supervisor created for it")
        if _uid(pid) != expected_uid:
            return self._drop(identity, info, f"that process does not run as uid {expected_uid}")
        if _environ(pid).get(b"URBAN_ROBOT_SECRET") != self.robot.credentials.secret_for(identity, nonce).encode():
            return self._drop(identity, info, "that process was not started with this spawn's secret")
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return self._drop(identity, info, "that process is gone")
        if start_ticks(pid) != ticks:  # it ended between the check and the pidfd: the pidfd may be another's
            os.close(pidfd)
            return self._drop(identity, info, "that process is gone")
        log_name = str(log_file) if isinstance(log_file, str) else None
        release = info.get("release")
        child = Child(identity, pid, generation, trio.current_time(), ticks, log=log_name, nonce=nonce, pidfd=pidfd)
        child.release = release if isinstance(release, str) else None
        child.uid = expected_uid
        group, shards = info.get("group", 0), info.get("shards", self._shards_name(0))
        if not isinstance(group, int) or not 0 <= group < self.groups or shards != self._shards_name(group):
            os.close(pidfd)  # it ran shards of another plan: a group of this one may be served by another now
            return self._drop(identity, info, f"it ran {shards!r} of another shard plan")
        child.group = group
        return child

    @staticmethod
    def _drop(identity: str, info: Any, why: str) -> None:
        pid = info.get("pid") if isinstance(info, dict) else None
        log.warning("children.json: not adopting %.80r (pid %.20r): %s; it is not signalled", identity, pid, why)

    async def _watch_adopted(self, child: Child) -> None:
        assert child.pidfd is not None
        try:
            await _wait_pidfd(child.pidfd)
        finally:
            with trio.CancelScope(shield=True):
                if not self.keep_running:
                    await self._terminate(child)  # through the pidfd: an exited one is not signalled
                os.close(child.pidfd)
                child.pidfd = None
        await self._exited(child, None)  # not our child: its exit status is not ours to read

    # -- bookkeeping ----------------------------------------------------------------------------------
    def _record(self, child: Child) -> None:
        self.children[child.identity] = child
        self._remember(child)
        self._save_registry()

    def _remember(self, child: Child) -> None:
        """Its log file and nonce, named after it exits too (the last LOGS_KEPT)."""
        if child.nonce is not None:
            self._nonces[child.identity] = child.nonce
        if child.log is not None:
            self.logs[child.identity] = child.log
        for kept in (self.logs, self._nonces):
            while len(kept) > LOGS_KEPT:
                del kept[next(iter(kept))]  # the oldest: dicts keep insertion order

    def _forget(self, child: Child, *, save: bool = True) -> None:
        self.children.pop(child.identity, None)
        self.robot.credentials.revoke(child.identity)  # it exited: its secret is refused from now on
        if save:
            self._save_registry()

    def _load_registry(self) -> dict[str, dict[str, Any]]:
        if self.registry is None:
            return {}
        try:
            data = json.loads(read_private(self.registry))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_registry(self) -> None:
        """The registry as it is now, for the writer (a thread: an fsync in the event loop held up the exit
        report, and so every failover, by a millisecond or more); written at once when no writer runs."""
        if self.registry is None:
            return
        self._registry_due = self._registry_bytes()
        if self._nursery is None:
            self._flush_registry()
        else:
            self._registry_wake.set()

    async def _registry_writer(self) -> None:
        while True:
            await self._registry_wake.wait()
            self._registry_wake = trio.Event()
            data, self._registry_due = self._registry_due, None
            if data is not None and self.registry is not None:
                await self._write_registry(data)

    async def _write_registry(self, data: bytes) -> None:
        await self.blocking_io(self._write_registry_now, data)

    def _flush_registry(self) -> None:
        data, self._registry_due = self._registry_due, None
        if data is not None:
            self._write_registry_now(data)

    def _write_registry_now(self, data: bytes) -> None:
        if self.registry is None:
            return
        try:
            atomic_write(self.registry, data, durable=False)  # its children die with the machine: no fsync
        except OSError as exc:
            log.error("cannot write %s: %s; a restarted supervisor may not adopt running workers", self.registry, exc)

    def _registry_bytes(self) -> bytes:
        data = {
            c.identity: {
                "pid": c.pid,
                "generation": c.generation,
                "start_ticks": c.start_ticks,
                "log": c.log,
                "release": c.release,
                "nonce": c.nonce,
                "uid": c.uid,
                "group": c.group,
                "shards": self._shards_name(c.group),
            }
            for c in self.children.values()
        }
        return json.dumps(data, sort_keys=True).encode()

    def _shards_name(self, group: int) -> str:
        """What group ``group`` runs, as the registry keeps it: "all shards" unsharded, else "shards 0-3"."""
        return self.plan.groups[group].name if self.plan.sharded else "all shards"

    def _log_file(self, identity: str) -> Any:
        if self.log_dir is None:
            return subprocess.DEVNULL
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.log_dir.stat().st_mode & 0o077:
            self.log_dir.chmod(0o700)  # an older supervisor's 0755: the bot's output is the operator's to read
        prune_logs(self.log_dir, keep=self.policy.log_keep - 1, max_bytes=self.policy.log_max_bytes)
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S")
        for n in itertools.count():
            path = self.log_dir / (f"helium-{stamp}-{identity}.log" if n == 0 else f"helium-{stamp}-{identity}.{n}.log")
            try:
                return open(path, "xb", opener=_private)  # 0600, never through a planted link
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


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


async def _wait_pidfd(pidfd: int) -> None:
    """Wait for the process behind ``pidfd`` (child or not) to exit. A duplicate is waited on, so two tasks can wait
    for one process at once (trio allows one waiter per descriptor)."""
    fd = os.dup(pidfd)
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)
