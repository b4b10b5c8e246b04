"""The HTTP gate with real discord.py against the fake Discord (a process): a worker without the lease writes nothing.

``discord.Client.login`` and every call below go through discord.py's own ``HTTPClient.request`` and webhook
adapter to the fake's REST API, which records what was posted and by which client.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

discord = pytest.importorskip("discord")
from discord import app_commands  # noqa: E402

from urban_robot.integrations._discord_gates import install  # noqa: E402
from urban_robot.integrations.discord import NotProcessing  # noqa: E402
from urban_robot.testing.fake_discord import DEFAULT_TOKEN  # noqa: E402

from .test_discord_gates import Switch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, dict[str, Any]]]:
    command = [sys.executable, "-m", "urban_robot.testing.fake_discord", "--port", "0", "--print-port"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert process.stdout is not None
        url = f"http://127.0.0.1:{int(process.stdout.readline())}"
        yield url, httpx.get(f"{url}/_fake/world").json()
    finally:
        process.terminate()
        process.wait(10)


def test_off_lease_writes_are_refused_with_one_warning_per_kind_and_setup_still_works(
    fake: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url, world = fake
    monkeypatch.setattr(discord.http.Route, "BASE", f"{url}/c/gate/api/v10")
    general = int(world["guilds"][0]["channels"]["general"])
    refused: list[str] = []

    async def scenario() -> None:
        client = discord.Client(intents=discord.Intents.default())
        tree = app_commands.CommandTree(client)

        @tree.command()
        async def hello(interaction: discord.Interaction) -> None:
            pass

        switch = Switch()
        install(client, switch)
        await client.login(DEFAULT_TOKEN)  # GET /users/@me: a read
        try:
            channel = client.get_partial_messageable(general)
            for text in ("standby 1", "standby 2"):
                with pytest.raises(NotProcessing) as error:
                    await channel.send(text)
                refused.append(str(error.value))
            assert isinstance(error.value, discord.ClientException)
            webhook = discord.Webhook.partial(int(world["application_id"]), "a-token", client=client)
            with pytest.raises(NotProcessing):
                await webhook.send("a follow-up from a standby")  # interaction follow-ups take this road
            assert (await client.fetch_channel(general)).id == general  # reads are allowed
            assert [c.name for c in await tree.sync()] == ["hello"]  # PUT application commands: setup
            switch.draining = True  # the holder's drain, within its lease
            await channel.send("drained")
            switch.draining, switch.processing = False, True
            await channel.send("holder")
        finally:
            await client.close()

    with caplog.at_level(logging.WARNING, logger="urban_robot.integrations.discord"):
        asyncio.run(scenario())
    posted = [p["content"] for p in httpx.get(f"{url}/_fake/records").json()["posted"] if p["client"] == "gate"]
    assert posted == ["drained", "holder"]
    assert refused[0].startswith("POST /channels/{channel_id}/messages refused")
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    tail = ": this worker does not hold the lease (further ones are not logged)"
    assert lines == [  # one line per kind of route, however many refusals
        "refused POST /channels/{channel_id}/messages" + tail,
        "refused POST /webhooks/{webhook_id}/{webhook_token}" + tail,
    ]
