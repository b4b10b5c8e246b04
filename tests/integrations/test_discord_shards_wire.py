"""Real discord.py (an ``AutoShardedBot``) against the fake Discord at the wire (a process), its supervisor in
memory (tests/integrations/_discord_fakes.py) granting identify slots: the worker connects exactly its shards,
asks a slot before each IDENTIFY and sends it only when granted; an IDENTIFY granted too fast is answered op 9
by the fake as by Discord, and asked again; a RESUME needs no slot."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

discord = pytest.importorskip("discord")
import yarl  # noqa: E402
from discord.ext import commands  # noqa: E402

from urban_robot.protocol import IDENTIFY_MARGIN, IDENTIFY_WINDOW  # noqa: E402
from urban_robot.testing.fake_discord import DEFAULT_TOKEN  # noqa: E402

from ._discord_fakes import Emitted, FakeSupervisor, hello, make_attachment  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "sharded"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    command = [sys.executable, "-m", "urban_robot.testing.fake_discord", "--port", "0", "--print-port"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert process.stdout is not None
        url = f"http://127.0.0.1:{int(process.stdout.readline())}"
        monkeypatch.setattr(discord.http.Route, "BASE", f"{url}/c/{CLIENT}/api/v10")
        gateway = yarl.URL(f"ws://127.0.0.1:{url.rsplit(':', 1)[1]}/c/{CLIENT}/gateway")
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", gateway)
        yield url
    finally:
        process.terminate()
        process.wait(10)


async def records(http: httpx.AsyncClient, want: Any) -> dict[str, Any]:
    """The fake's records once ``want(records)`` holds (long polls: no sleeping)."""
    version = -1
    while True:
        body = (await http.get("/_fake/records", params={"after": version, "wait": 10})).json()
        if want(body):
            return body
        version = body["version"]


def identified(body: dict[str, Any]) -> list[tuple[tuple[int, int], str]]:
    return [(tuple(r["shard"]), r["outcome"]) for r in body["identifies"]]


def test_an_auto_sharded_worker_identifies_its_shards_only_with_slots_and_resumes_without(fake: str) -> None:
    httpx.post(f"{fake}/_fake/settings", json={"max_concurrency": 1}).raise_for_status()  # shards 2, 3: one key

    async def scenario() -> None:
        supervisor = FakeSupervisor()
        bot = commands.AutoShardedBot(command_prefix="!", intents=discord.Intents.default())
        att, _ = make_attachment(bot, supervisor, vital_cogs=())
        asks: asyncio.Queue[Emitted] = asyncio.Queue()

        async def answer_the_rest() -> None:  # heartbeats, ready...: answered as a standby's; slots: by the test
            while True:
                emitted = await supervisor.inbox.get()
                if emitted.event == "identify_slot":
                    emitted.answer({"queued": True})
                    asks.put_nowait(emitted)
                else:
                    emitted.answer({})

        async with httpx.AsyncClient(base_url=fake) as http, asyncio.TaskGroup() as group:
            runner = group.create_task(att.run())
            (await supervisor.next("identify")).answer(hello(token=DEFAULT_TOKEN, shards=[2, 3], shard_count=4))
            pump = group.create_task(answer_the_rest())

            first = await asks.get()
            assert first.data == {"shard_id": 2}
            body = await records(http, lambda b: True)
            assert identified(body) == [] and [c["client"] for c in body["connections"]] == [CLIENT]  # HELLO came
            supervisor.cmd("identify", shard_id=2)
            second = await asks.get()  # shard 2 identified; shard 3's connection is open and waits
            assert second.data == {"shard_id": 3}
            assert identified(await records(http, lambda b: len(b["identifies"]) == 1)) == [((2, 4), "ready")]
            granted_2 = asyncio.get_running_loop().time()

            supervisor.cmd("identify", shard_id=3)  # too fast for key 0: Discord's answer is op 9
            again = await asks.get()  # ...and the worker's next IDENTIFY waits for a slot again
            assert again.data == {"shard_id": 3}
            body = await records(http, lambda b: len(b["identifies"]) == 2)
            assert identified(body) == [((2, 4), "ready"), ((3, 4), "rate limited")]

            # as the supervisor's IdentifySlots would: the key's next grant 5 s + margin after the last one
            await asyncio.sleep(IDENTIFY_WINDOW + IDENTIFY_MARGIN - (asyncio.get_running_loop().time() - granted_2))
            supervisor.cmd("identify", shard_id=3)
            body = await records(http, lambda b: len(b["identifies"]) == 3)
            assert identified(body) == [((2, 4), "ready"), ((3, 4), "rate limited"), ((3, 4), "ready")]
            assert sorted(tuple(s["shard"]) for s in body["sessions"]) == [(2, 4), (3, 4)]  # exactly its shards

            await http.post("/_fake/gateway/reconnect", json={"client": CLIENT})  # op 7: both shards RESUME
            body = await records(http, lambda b: sum(c["login"] == "resume" for c in b["connections"]) == 2)
            assert len(body["identifies"]) == 3 and asks.empty()  # no IDENTIFY, no slot asked
            pump.cancel()
            runner.cancel()

    asyncio.run(scenario())
