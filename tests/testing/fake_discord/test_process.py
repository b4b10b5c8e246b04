"""The fake as its own process, driven over its HTTP control API, and how a process points discord.py at it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from urban_robot.testing.fake_discord import DEFAULT_TOKEN, FakeDiscordURLError, configure_from_environment

from .test_with_discord_py import BOT, ROOT, env_for

discord = pytest.importorskip("discord")


@pytest.fixture
async def fake_process(nursery: trio.Nursery) -> AsyncIterator[str]:
    command = [sys.executable, "-m", "urban_robot.testing.fake_discord", "--port", "0", "--print-port"]
    process = await trio.lowlevel.open_process(
        [*command, "--heartbeat-interval", "1"], stdout=subprocess.PIPE, cwd=str(ROOT)
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(20):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(64)
                assert chunk, "the fake exited before printing its port"
                line += chunk
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        process.kill()


async def records_until(http: httpx.AsyncClient, url: str, found: Any) -> Any:
    """Long-poll /_fake/records until ``found(records)`` is truthy."""
    version = -1
    with trio.fail_after(30):
        while True:
            response = await http.get(f"{url}/_fake/records", params={"after": version, "wait": 10})
            records = response.json()
            result = found(records)
            if result:
                return result
            version = records["version"]


@pytest.mark.slow
async def test_a_bot_against_the_fake_process_through_the_control_api(fake_process: str, tmp_path: Path) -> None:
    url = fake_process
    async with httpx.AsyncClient(timeout=40) as http, trio.open_nursery() as nursery:
        world = (await http.get(f"{url}/_fake/world")).json()
        channels = world["guilds"][0]["channels"]
        env = env_for(url, "soak", "message_content", DEFAULT_TOKEN, channels["bot-log"])
        with open(tmp_path / "soak.log", "wb") as log:
            nursery.start_soon(
                lambda: trio.run_process([sys.executable, str(BOT)], env=env, stdout=log, stderr=subprocess.STDOUT)
            )
            await records_until(http, url, lambda r: [p for p in r["posted"] if p["content"].startswith("ready")])
            answer = await http.post(f"{url}/_fake/messages", json={"content": "!ping", "author": "bob"})
            message_id = int(answer.json()["id"])
            reply = await records_until(http, url, lambda r: [p for p in r["posted"] if p["reply_to"] == message_id])
            assert [(p["content"], p["client"]) for p in reply] == [("pong", "soak")]
            assert (await http.post(f"{url}/_fake/gateway/reconnect", json={})).json() == {"count": 1}
            await records_until(http, url, lambda r: [c for c in r["connections"] if c["login"] == "resume"])
            bad = await http.post(f"{url}/_fake/messages", json={"content": "x", "channel": "nope"})
            assert bad.status_code == 400 and "nope" in bad.json()["error"]
            nursery.cancel_scope.cancel()


def test_configure_from_environment_points_discord_py_at_the_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    )
    assert configure_from_environment({}) is False
    assert discord.http.Route.BASE == "https://discord.com/api/v10"
    env = {"URBAN_ROBOT_DISCORD_URL": "http://127.0.0.1:5555", "URBAN_ROBOT_DISCORD_CLIENT": "worker-1"}
    assert configure_from_environment(env) is True
    assert discord.http.Route.BASE == "http://127.0.0.1:5555/c/worker-1/api/v10"
    assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == "ws://127.0.0.1:5555/c/worker-1/gateway"
    with pytest.raises(FakeDiscordURLError, match=re.escape("must look like http://127.0.0.1:PORT")):
        configure_from_environment({"URBAN_ROBOT_DISCORD_URL": "127.0.0.1:5555"})
