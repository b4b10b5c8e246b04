"""A pytest plugin (entry point ``urban_robot``) for bot authors and for this project's own tests.

Fixtures, all under pytest-trio (``trio_mode = true``) and fine with ``autojump_clock``:

- ``urban_robot_supervisor``: a real supervisor in the test's nursery on 127.0.0.1, port 0, with a temp
  state directory. ``await supervisor.worker(version=..., health=...)`` starts a simulated worker; the
  harness can crash one (its process "exits"), and collects every notification in ``supervisor.notes``.
- ``fake_discord``: Discord's REST API at the HTTP boundary (``httpx.MockTransport``): records every
  message, can answer 429s; hand ``fake_discord.client`` to a ``Notifier``.
- ``fake_discord_server``: a whole local Discord (REST + gateway, ``urban_robot.testing.fake_discord``)
  on 127.0.0.1 that real discord.py bots in child processes log in to (``URBAN_ROBOT_DISCORD_URL``).

Misbehaving workers: ``worker.hang()`` (stops answering), ``worker.slow = 5`` (late answers),
``await worker.send_raw(frame)`` (a bad message), ``await supervisor.crash(worker)`` (process death).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from ..supervisor import App, Credentials, Notify, Options, ProcessExited, Seams, Settings, UrbanRobot, build
from ._sim import HEALTHY, SimulatedWorker

TEST_SETTINGS = Settings(token="test-discord-token", interval=10, grace=5, lease_margin=2, health_timeout=20)


async def _inline(fn: Any, *args: Any) -> Any:
    """File writes without a thread: a thread's real time would let a virtual clock jump ahead."""
    return fn(*args)


@attrs.define(eq=False)
class SupervisorHarness:
    app: App
    nursery: trio.Nursery
    notes: list[Notify] = attrs.Factory(list)
    count: int = 0

    @property
    def robot(self) -> UrbanRobot:
        return self.app.robot

    @property
    def url(self) -> str:
        return self.app.url

    @property
    def credentials(self) -> Credentials:
        return self.app.robot.credentials

    async def worker(
        self, version: str = "1.0", *, health: Any = HEALTHY, generation: int | None = None, identity: str | None = None
    ) -> SimulatedWorker:
        """A simulated worker with its own child identity, connected and identifying."""
        self.count += 1
        identity = identity or f"child-test-{self.count}"
        worker = SimulatedWorker(
            self.url,
            self._secret(identity),
            version=version,
            generation=generation,
            health=health,
            name=identity,
        )
        await self.nursery.start(worker.run)
        return worker

    def _secret(self, identity: str) -> str:
        """The identity's child secret, bound as a spawn of ours (there is no process: the worker stands in for one)."""
        bound = self.credentials.nonce(identity) is not None
        return self.credentials.child_secret(identity) if bound else self.credentials.bind(identity)

    async def crash(self, worker: SimulatedWorker) -> None:
        """The worker's process dies: its connection drops and its exit is reported, as a real one's would be."""
        await worker.drop()
        await self.robot.submit(ProcessExited(worker.name, -9))

    @property
    def running(self) -> str | None:
        """The identity of the lease holder, if any."""
        lease = self.robot.snapshot().lease
        return lease.identity if lease is not None else None


@pytest.fixture
async def urban_robot_supervisor(nursery: trio.Nursery, tmp_path: Path) -> SupervisorHarness:
    options = Options(
        tmp_path,
        settings=TEST_SETTINGS,
        state_dir=tmp_path / "urban-robot-state",
        port=0,
        admin_token="test-admin-token",
    )
    app = build(options, seams=Seams(spawn=False, blocking_io=_inline))  # simulated workers: no process to start
    notes: list[Notify] = []
    app.bus.subscribe(Notify, notes.append)
    await nursery.start(app.run)
    return SupervisorHarness(app, nursery, notes)


@attrs.define(eq=False)
class FakeDiscord:
    """Discord's REST API, faked at the HTTP boundary: channels and DMs, every message recorded."""

    messages: list[tuple[str, str]] = attrs.Factory(list)  # (channel id, content)
    rate_limit_next: int = 0  # answer this many next requests with 429
    client: httpx.AsyncClient = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self._handle))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if self.rate_limit_next:
            self.rate_limit_next -= 1
            return httpx.Response(
                429, json={"message": "You are being rate limited.", "retry_after": 0.5, "global": False}
            )
        body = json.loads(request.content or b"{}")
        path = request.url.path
        if path.endswith("/users/@me/channels"):
            return httpx.Response(200, json={"id": f"dm-{body['recipient_id']}"})
        if "/channels/" in path and path.endswith("/messages"):
            channel = path.split("/channels/")[1].split("/")[0]
            self.messages.append((channel, body.get("content", "")))
            return httpx.Response(200, json={"id": str(len(self.messages))})
        return httpx.Response(404, json={"message": "Unknown route"})


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    async with fake.client:
        yield fake


@pytest.fixture
async def fake_discord_server(nursery: trio.Nursery) -> Any:
    """A ``FakeDiscord`` served on 127.0.0.1 (port 0), heartbeat interval 1 s; its ``url`` is set."""
    from .fake_discord import FakeDiscord  # imported here: plugin users without the fake pay nothing

    fake = FakeDiscord(heartbeat_interval=1.0)
    await nursery.start(fake.serve)
    return fake
