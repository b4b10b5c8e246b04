"""A frozen holder under the DEFAULT timings (``Settings()``: interval 1 s, grace 9 s, margin 2 s), with real
worker processes (``python -m urban_robot.testing.worker``) under the assembled supervisor (``serve``).

The kernel fences it: the process manager's 50 ms watch sees it stopped by a signal (/proc state T), it is
SIGKILLed at once and its lease released by its confirmed exit, so the standby processes within a second
(about 50 ms on an idle machine), not after ``frozen_limit`` (2.5 s) nor the 10 s lease, and never while the
frozen process still exists.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on the host): the worker logs
each step with it (``SimulatedWorker(echo=True)``), this test takes its own with it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import trio

from tests._helpers import worker_options
from urban_robot.supervisor import Action, ProcessExited, Reply, Send, Settings
from urban_robot.supervisor._assembly import App, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DEFAULT_TIMINGS = Settings(token="bot-token", spawn_workers=True)  # every timing as shipped


class Actions:
    """Each action the supervisor carries out, with the monotonic time, and an event to wait for the next."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, Action]] = []
        self.changed = trio.Event()

    def __call__(self, action: Action) -> None:
        self.seen.append((time.monotonic(), action))
        self.changed.set()
        self.changed = trio.Event()

    async def renewals(self, epoch: int, count: int) -> None:
        """Wait until ``count`` heartbeats of ``epoch`` were answered with a renewal."""
        while len([a for _, a in self.seen if renews(a, epoch)]) < count:
            await self.changed.wait()

    def grants(self) -> list[tuple[float, Send]]:
        return [
            (at, a)
            for at, a in self.seen
            if isinstance(a, Send) and a.event == "cmd" and a.data["t"] == "process_commands"
        ]


def renews(action: Action, epoch: int) -> bool:
    return isinstance(action, Reply) and isinstance(action.data, dict) and action.data.get("epoch") == epoch


async def start(nursery: trio.Nursery, tmp_path: Path) -> tuple[App, Actions]:
    assert DEFAULT_TIMINGS.interval == 1 and DEFAULT_TIMINGS.lease == 10 and DEFAULT_TIMINGS.frozen_after == 2.5
    app: App = await nursery.start(serve, worker_options(tmp_path, DEFAULT_TIMINGS))
    actions = Actions()
    app.bus.subscribe(Action, actions)
    return app, actions


async def settled(app: App, actions: Actions, not_holder: str | None = None) -> str:
    """A renewed holder (other than ``not_holder``) and an approved standby; the holder's identity."""
    core = app.robot.core
    while True:
        lease = core.lease
        standby = any(w.approved and w.role.value == "standby" for w in core.clients.values())
        if lease and lease.confirmed and lease.sid and lease.identity != not_holder and (standby or not_holder):
            return lease.identity
        await actions.changed.wait()


def processing_at(tmp_path: Path, identity: str) -> list[float]:
    """When the worker ``identity`` started processing (its renewed grants), from its own log."""
    logs = "\n".join(p.read_text() for p in (tmp_path / "bot" / "log").glob("helium-*.log"))
    return [float(line.split()[0]) for line in logs.splitlines() if line.endswith(f" {identity} processing")]


async def test_a_sigstopped_holder_is_killed_and_the_standby_processes_within_5_s_after_its_exit(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    exits: list[tuple[float, str, int | None]] = []
    with trio.fail_after(60):
        app, actions = await start(nursery, tmp_path)
        app.bus.subscribe(ProcessExited, lambda e: exits.append((time.monotonic(), e.identity, e.returncode)))
        holder = await settled(app, actions)
        [standby] = [identity for identity in app.children.children if identity != holder]
        frozen = app.children.children[holder]
        stopped_at = time.monotonic()
        os.kill(frozen.pid, signal.SIGSTOP)
        successor = await settled(app, actions, not_holder=holder)
        await actions.renewals(app.robot.core.epoch, 2)  # the first starts it; by the second it has logged that
    [(exited_at, _, code)] = [e for e in exits if e[1] == holder]
    [granted_at] = [at for at, _ in actions.grants() if at > stopped_at]
    [started] = [at for at in processing_at(tmp_path, successor) if at > stopped_at]

    assert successor == standby
    assert code == -signal.SIGKILL  # killed while stopped: never continued, so it never ran another instruction
    # Not a silence limit (2.5 s): the watch's round (50 ms), the kill, the promotion; 1 s leaves room for load.
    assert started - stopped_at < 1.0, f"{started - stopped_at:.2f} s from SIGSTOP to the standby processing"
    # No overlap: the grant left after the frozen process's exit was seen (waitpid), and the standby processed
    # only once its grant was renewed, later still.
    assert stopped_at < exited_at <= granted_at < started
    print(
        f"\nSIGSTOP -> SIGKILLed exit {exited_at - stopped_at:.2f} s -> grant {granted_at - stopped_at:.2f} s"
        f" -> standby processing {started - stopped_at:.2f} s (default timings)"
    )
