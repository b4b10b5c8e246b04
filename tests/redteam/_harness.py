"""Red-team harness: the fake Discord and the real supervisor as processes, real discord.py bots as workers.

Everything is a real process: ``python -m urban_robot.testing.fake_discord``, ``python -m urban_robot``
(configured through the environment, as docs/configuration.md says) and the bots it spawns. Tests are
synchronous and bounded; every process started here (and every worker pid ever seen) is killed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "redteam-admin-token-0123456789abcdef"
UTILITIES = (ROOT / "examples" / "discord_bot" / "modules" / "utilities.py").read_text()

#: the top of every probe bot: a commands.Bot attached to the supervisor, and ``post(text)`` to #bot-log
PRELUDE = '''
from __future__ import annotations
import asyncio, logging, os, sys, time
import discord
from discord import app_commands
from discord.ext import commands, tasks
from urban_robot.integrations.discord import attach, everywhere

logging.basicConfig(level=logging.INFO, stream=sys.stdout)
LOG = int(os.environ["PROBE_LOG_CHANNEL"])
VERSION = os.environ.get("PROBE_VERSION", "1.0.0")
intents = discord.Intents.default()
intents.message_content = True
intents.members = True

async def post(text):
    """A visible side effect: a message in #bot-log (the fake records which process sent it)."""
    await bot.get_partial_messageable(LOG).send(text)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Fake:
    """``python -m urban_robot.testing.fake_discord`` and its control API."""

    def __init__(self, tmp: Path, *, intents: str = "members,presences,message_content", heartbeat: float = 5) -> None:
        command = [sys.executable, "-m", "urban_robot.testing.fake_discord", "--port", "0", "--print-port"]
        command += ["--heartbeat-interval", str(heartbeat), "--intents", intents]
        self.log = open(tmp / "fake.log", "wb")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip().isdigit(), f"the fake did not print its port: {line!r}"
        self.url = f"http://127.0.0.1:{int(line)}"
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.world = self.http.get("/_fake/world").json()
        channels = self.world["guilds"][0]["channels"]
        self.general, self.bot_log = int(channels["general"]), int(channels["bot-log"])

    def do(self, path: str, **body: Any) -> Any:
        response = self.http.post(f"/_fake/{path}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def records(self) -> dict[str, Any]:
        return self.http.get("/_fake/records").json()

    def posts(self, *, channel: int | None = None, prefix: str = "") -> list[dict[str, Any]]:
        return [
            p
            for p in self.records()["posted"]
            if (channel is None or int(p["channel_id"]) == channel) and p["content"].startswith(prefix)
        ]

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.http.close()
        self.log.close()


class Supervisor:
    """``python -m urban_robot`` supervising ``bot_source`` (a main.py) against the fake."""

    def __init__(
        self,
        tmp: Path,
        fake: Fake,
        bot_source: str,
        *,
        env: dict[str, str] | None = None,
        token: str = "fake-discord-token",
        prelude: str = PRELUDE,
    ) -> None:
        self.tmp, self.fake = tmp, fake
        self.bot_dir = tmp / "bot"
        (self.bot_dir / "modules").mkdir(parents=True, exist_ok=True)
        (self.bot_dir / "modules" / "__init__.py").write_text("")
        (self.bot_dir / "modules" / "utilities.py").write_text(UTILITIES)
        (self.bot_dir / "main.py").write_text(prelude + textwrap.dedent(bot_source))
        self.port = free_port()
        self.env = {
            **os.environ,
            "HELIUM_PATH": str(self.bot_dir),
            "BOT_TOKEN": token,
            "URBAN_ROBOT_COMMAND": json.dumps([sys.executable, "main.py"]),
            "URBAN_ROBOT_PORT": str(self.port),
            "URBAN_ROBOT_STATE_DIR": str(tmp / "state"),
            "URBAN_ROBOT_ADMIN_TOKEN": ADMIN,
            "URBAN_ROBOT_DISCORD_URL": fake.url,
            "URBAN_ROBOT_DISCORD_API_URL": f"{fake.url}/api/v10",
            "LOGGING_CHANNEL": str(fake.bot_log),
            "PROBE_LOG_CHANNEL": str(fake.bot_log),
            "URBAN_ROBOT_WORKERS_RESTART_BACKOFF": "0.5",
            **(env or {}),
        }
        self.env.pop("URBAN_ROBOT_DISCORD_CLIENT", None)  # each worker is pid<pid> in the fake's records
        self.env["URBAN_ROBOT_COMMAND"] = f"{sys.executable} main.py"
        self.log_path = tmp / "supervisor.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "urban_robot"],
            cwd=tmp,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10,
                                 headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip
        self.pids: set[int] = set()

    # -- looking -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        try:
            answer = self.http.get("/api/status").json()
        except httpx.HTTPError:
            return {"workers": []}
        self.pids.update(w["pid"] for w in answer.get("workers", []) if w.get("pid"))
        return answer

    def role(self, role: str) -> list[dict[str, Any]]:
        return [w for w in self.status()["workers"] if w["role"] == role]

    def holder(self, timeout: float = 60) -> dict[str, Any]:
        def find() -> Any:
            running = self.role("running")
            return running[0] if running and self.status()["lease"] and self.status()["lease"]["confirmed"] else None

        return wait_until(find, timeout, "a confirmed holder")

    def two_up(self, timeout: float = 60) -> tuple[dict[str, Any], dict[str, Any]]:
        """Wait for a confirmed holder and an approved standby whose Gateway is up."""
        holder = self.holder(timeout)
        standby = wait_until(lambda: [w for w in self.role("standby") if w.get("gateway")], timeout, "a standby")[0]
        return holder, standby

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_logs(self) -> str:
        logs = sorted((self.bot_dir / "log").glob("helium-*.log"))
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')}" for p in logs)

    # -- ending ------------------------------------------------------------------------------------
    def stop(self, timeout: float = 30) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.process.poll()

    def close(self) -> None:
        self.status()
        self.stop(25)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for pid in self.pids:
            _kill(pid, signal.SIGCONT)
            _kill(pid)
        self.http.close()
        self.log.close()


def client_of(worker: dict[str, Any]) -> str:
    return f"pid{worker['pid']}"


@contextlib.contextmanager
def supervised(tmp: Path, bot_source: str, **kwargs: Any) -> Iterator[tuple[Fake, Supervisor]]:
    """A context manager: the fake, then the supervisor running the bot; both cleaned up."""
    fake = Fake(tmp, **{k: kwargs.pop(k) for k in ("intents",) if k in kwargs})
    supervisor = None
    try:
        supervisor = Supervisor(tmp, fake, bot_source, **kwargs)
        yield fake, supervisor
    finally:
        if supervisor is not None:
            supervisor.close()
            print("---- supervisor output ----\n" + supervisor.output()[-6000:])
            print("---- worker logs ----\n" + supervisor.worker_logs()[-8000:])
        fake.close()
