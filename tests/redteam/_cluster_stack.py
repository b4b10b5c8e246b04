"""Three real supervisor processes, each a host's agent in one etcd cluster, running one discord.py bot against one
fake Discord (issue 17, docs/protocol.md §19): the e2e harness's ``Stack`` once per host, with a ``[cluster]``
section, ``standbys = 0`` (a group's standbys are the other hosts' workers) and the cluster's shared secret.

Each host has its own port, state directory and bot checkout; the fake, its records and the traffic checker are
shared, so "answered exactly once" is judged across hosts.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from tests.e2e._harness import Stack
from urban_robot.testing.etcd import EtcdCluster
from urban_robot.testing.fake_discord import FakeDiscord

HOSTS = ("alpha", "beta", "gamma")
SECRET = "cluster-secret-0123456789abcdef"


class HostStack(Stack):
    """One host: ``python -m urban_robot`` with a ``[cluster]`` section."""

    def __init__(
        self,
        tmp: Path,
        fake: FakeDiscord,
        nursery: trio.Nursery,
        *,
        host: str,
        cluster: str,
        etcd: list[str],
        **kw: Any,
    ) -> None:
        super().__init__(tmp, fake, nursery, **kw)
        self.host, self.cluster, self.etcd_urls = host, cluster, etcd

    async def set_up(self) -> None:
        await super().set_up()
        config = self.tmp / "urban-robot.toml"
        text = config.read_text().replace("standbys = 1", "standbys = 0")
        etcd = ", ".join(f'"{u}"' for u in self.etcd_urls)
        # [secrets] is the file's last table: its key goes on, then the [cluster] table.
        text += f'cluster = "{SECRET}"\n\n[cluster]\nname = "{self.cluster}"\nhost = "{self.host}"\netcd = [{etcd}]\n'
        text += "ttl = 6\n"
        config.write_text(text)


async def groups_status(stacks: list[HostStack]) -> list[dict[str, Any] | None]:
    return [await s.status() if s.process is not None and s.process.returncode is None else None for s in stacks]


def processors(statuses: list[dict[str, Any] | None], group: int) -> list[tuple[str, str]]:
    """(host index, identity) of every host whose status names a running worker of ``group``."""
    out = []
    for i, status in enumerate(statuses):
        groups = (status or {}).get("groups") or []
        if len(groups) > group and groups[group].get("running"):
            out.append((str(i), groups[group]["running"]))
    return out


@contextlib.asynccontextmanager
async def three_hosts(
    tmp: Path, *, source: Path, env: dict[str, str], sharding: dict[str, Any] | None = None
) -> AsyncIterator[tuple[FakeDiscord, list[HostStack], EtcdCluster]]:
    fake = FakeDiscord(heartbeat_interval=10.0, enabled_intents=("members", "presences", "message_content"))
    if sharding:
        fake.set_sharding(**sharding)
    stacks: list[HostStack] = []
    with EtcdCluster.start(tmp / "etcd", heartbeat_ms=25, election_ms=250) as etcd:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(fake.serve)
                for host in HOSTS:
                    (tmp / host).mkdir()
                    stack = HostStack(
                        tmp / host,
                        fake,
                        nursery,
                        host=host,
                        cluster="redteam",
                        etcd=etcd.endpoints,
                        source=source,
                        env=env,
                    )
                    await stack.set_up()
                    stacks.append(stack)
                for stack in stacks:
                    await stack.start()
                try:
                    yield fake, stacks, etcd
                finally:
                    with trio.CancelScope(shield=True):
                        for stack in stacks:
                            if stack.process is not None and stack.process.returncode is None:
                                stack.process.send_signal(signal.SIGTERM)
                        for stack in stacks:
                            if stack.process is not None:
                                with trio.move_on_after(10):
                                    await stack.process.wait()
                    nursery.cancel_scope.cancel()
        finally:
            for stack in stacks:
                stack.kill_everything()
                await stack.http.aclose()
