"""The stand-ins a rehearsal uses, as real processes: they log each step and come back to a restarted supervisor."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import trio

from tests._helpers import QUICK
from urban_robot.supervisor import App, ChildPolicy, Options, Role, serve
from urban_robot.testing.bot import MAIN_PY

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(app: App, predicate: object) -> None:
    while not predicate():  # type: ignore[operator]
        await app.changed().wait()


@pytest.mark.parametrize("command", ["bot", "worker"])
async def test_the_stand_in_bots_log_and_reconnect_to_a_restarted_supervisor(command: str, tmp_path: Path) -> None:
    """The supervisor dies without stopping its workers (as after SIGKILL): the next one, on the same port, adopts
    them, and the holder reconnects and takes its lease back."""
    bot = tmp_path / "bot"
    bot.mkdir()
    if command == "bot":  # urban_robot.testing.bot: bot.json in the checkout
        (bot / "main.py").write_text(MAIN_PY)
        (bot / "bot.json").write_text(json.dumps({"version": "1.0"}))
        argv: tuple[str, ...] = (sys.executable, "main.py")
    else:  # the rehearsal bot: rehearsal.toml (none here: healthy)
        argv = (sys.executable, "-m", "urban_robot.testing.worker")
    options = Options(
        helium_path=bot,
        settings=QUICK,
        command=argv,
        state_dir=tmp_path / "state",
        port=free_port(),
        standbys=0,
        policy=ChildPolicy(term_timeout=2, kill_timeout=2),
    )
    with trio.fail_after(40):
        async with trio.open_nursery() as first:
            app: App = await first.start(serve, options)
            await until(app, lambda: app.robot.core.lease is not None and app.robot.core.lease.confirmed)
            [holder] = app.children.children.values()
            app.children.keep_running = True  # as a SIGKILL would: nobody stops the workers
            first.cancel_scope.cancel()
        async with trio.open_nursery() as second:
            app = await second.start(serve, options)
            await until(
                app,
                lambda: any(
                    w.identity == holder.identity and w.role is Role.RUNNING for w in app.robot.core.clients.values()
                ),
            )
            assert app.robot.core.epoch == 1  # its own lease, taken back: no promotion
            app.stop("test over")
    log = Path(holder.log or "").read_text()
    assert log.count(f"{holder.identity} hello") == 2  # it logs each step: once per supervisor
    assert f"{holder.identity} cmd:process_commands" in log
