"""Helium children: spawn the bot's command, watch it, report its exit to the core at once.

One task per child, owned by the manager's nursery. A child runs in its own
session (a supervisor crash does not take it down) with ``URBAN_ROBOT_URL``,
``URBAN_ROBOT_SECRET`` (derived from the state key, valid across restarts) and
``URBAN_ROBOT_GENERATION`` in its environment, its output in
``log/helium-YYYY-MM-DD-HH-MM-SS.log``. Its exit is reported the moment it is
seen: that is what makes failover after a crash fast (a dropped socket proves
nothing; an exited process does).

Restart backoff, crash-loop detection, log pruning and adoption after a
supervisor restart are the process manager's next steps (issue #4).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from ._events import ProcessExited
from ._service import UrbanRobot

log = logging.getLogger("urban_robot.children")


class Children:
    def __init__(
        self,
        robot: UrbanRobot,
        command: Sequence[str],
        *,
        cwd: Path,
        url: str,
        log_dir: Path | None = None,
        generation: int = 1,
        term_timeout: float = 10.0,
    ) -> None:
        self.robot = robot
        self.command = list(command)
        self.cwd = cwd
        self.url = url
        self.log_dir = log_dir
        self.generation = generation
        self.term_timeout = term_timeout
        self.processes: dict[str, trio.Process] = {}
        self._numbers = itertools.count(1)
        # Unique across supervisor restarts: a new child must never share a surviving child's identity.
        self._boot = secrets.token_hex(3)
        self._nursery: trio.Nursery | None = None

    async def run(self, count: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start ``count`` children and keep managing them until cancelled (then stop them)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(count):
                self.spawn("start-up")
            task_status.started()
            await trio.sleep_forever()

    def spawn(self, reason: str, *, generation: int | None = None) -> str:
        """Start one more child now; returns its identity."""
        assert self._nursery is not None, "Children.run is not running"
        identity = f"child-{self._boot}-{next(self._numbers)}"
        log.info("spawning %s (%s)", identity, reason)
        self._nursery.start_soon(self._child, identity, generation or self.generation)
        return identity

    def environment(self, identity: str, generation: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "URBAN_ROBOT_URL": self.url,
                "URBAN_ROBOT_SECRET": self.robot.credentials.child_secret(identity),
                "URBAN_ROBOT_GENERATION": str(generation),
            }
        )
        return env

    def _log_file(self) -> Any:
        if self.log_dir is None:
            return subprocess.DEVNULL
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S")
        for n in itertools.count():
            path = self.log_dir / (f"helium-{stamp}.log" if n == 0 else f"helium-{stamp}.{n}.log")
            try:
                return open(path, "xb")
            except FileExistsError:
                continue
        raise AssertionError("unreachable")

    async def _child(self, identity: str, generation: int) -> None:
        output = self._log_file()
        try:
            process = await trio.lowlevel.open_process(
                self.command,
                cwd=self.cwd,
                env=self.environment(identity, generation),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("cannot start %s: %s", " ".join(self.command), exc.strerror)
            return
        finally:
            if output is not subprocess.DEVNULL:
                output.close()
        self.processes[identity] = process
        try:
            returncode = await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    await self._stop(process)
            self.processes.pop(identity, None)
        log.info("%s (pid %s) exited with %s", identity, process.pid, returncode)
        await self.robot.submit(ProcessExited(identity, returncode))

    async def _stop(self, process: trio.Process) -> None:
        """SIGTERM, then SIGKILL after ``term_timeout``."""
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.term_timeout):
            await process.wait()
            return
        process.kill()
        await process.wait()
