"""A real in-process supervisor on port 0 and Workers connected to it over loopback sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests._helpers import RestartableSupervisor, child_secret
from urban_robot.client import Backoff, Worker
from urban_robot.supervisor import Settings

SETTINGS = Settings(token="discord-token-xyz", interval=10, grace=5, lease_margin=2, health_timeout=20)
UTILITIES_OK = {"modules.utilities": lambda: True}


class Recorder:
    """What a worker's callbacks saw, with virtual times."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, Any]] = []
        self.cache: Any = None

    def note(self, what: str, data: Any = None) -> None:
        self.events.append((trio.current_time(), what, data))

    def times(self, what: str) -> list[float]:
        return [at for at, name, _ in self.events if name == what]

    def set_cache(self, cache: Any) -> None:
        self.cache = cache
        self.note("set_cache", cache)


class Harness(RestartableSupervisor):
    def __init__(self, nursery: trio.Nursery, state_dir: Path) -> None:
        super().__init__(nursery, state_dir, SETTINGS)

    def worker(self, version: str = "1.0", *, identity: str | None = None, **kwargs: Any) -> tuple[Worker, Recorder]:
        self.count += 1
        rec = Recorder()
        kwargs.setdefault("health_checks", UTILITIES_OK)
        kwargs.setdefault("auto_ready", True)
        kwargs.setdefault("set_cache", rec.set_cache)
        kwargs.setdefault("backoff", Backoff(initial=0.05, cap=2.0))
        worker = Worker(
            self.url,
            child_secret(self.credentials, identity or f"child-{self.count}"),
            version=version,
            on_hello=lambda hello: rec.note("hello", hello),
            on_start_processing=lambda: rec.note("start"),
            **{"on_stop_processing": lambda reason: rec.note("stop", reason), **kwargs},
        )
        return worker, rec

    async def started(self, version: str = "1.0", **kwargs: Any) -> tuple[Worker, Recorder]:
        worker, rec = self.worker(version, **kwargs)
        await self.nursery.start(worker.run)
        return worker, rec

    def sid_of(self, worker: Worker) -> str:
        assert self.robot is not None
        (sid,) = [sid for sid, conn in self.robot.conns.items() if conn.identity.name == self.identity_of(worker)]
        return sid

    @staticmethod
    def identity_of(worker: Worker) -> str:
        return worker.endpoint.secret.split(".")[0]
