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

from tests.e2e._harness import BotRepo, Stack, git
from urban_robot.testing.etcd import EtcdCluster
from urban_robot.testing.fake_discord import FakeDiscord

HOSTS = ("alpha", "beta", "gamma")
SECRET = "cluster-secret-0123456789abcdef"


class SharedRepo(BotRepo):
    """Another host's checkout of the first host's upstream: one bot, one history, a commit deploys everywhere."""

    def __init__(self, tmp: Path, first: BotRepo) -> None:
        super().__init__(tmp, first.source)
        self.upstream, self.work = first.upstream, first.work

    async def create(self) -> None:
        await git(self.managed.parent, "clone", "-q", str(self.upstream), str(self.managed))


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
        first: BotRepo | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(tmp, fake, nursery, **kw)
        if first is not None:
            self.repo = SharedRepo(tmp, first)
        self.host, self.cluster, self.etcd_urls = host, cluster, etcd

    async def set_up(self) -> None:
        await super().set_up()
        config = self.tmp / "urban-robot.toml"
        text = config.read_text().replace("standbys = 1", "standbys = 0")
        etcd = ", ".join(f'"{u}"' for u in self.etcd_urls)
        # [secrets] is the file's last table: its key goes on, then the [cluster] table.
        text += f'cluster = "{SECRET}"\n\n[cluster]\nname = "{self.cluster}"\nhost = "{self.host}"\netcd = [{etcd}]\n'
        text += "ttl = 6\n"
        text = text.replace("deploy_timeout = 60", "deploy_timeout = 90")
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
                        first=stacks[0].repo if stacks else None,
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


async def steady(stacks: list[HostStack], workers: int, timeout: float = 150.0) -> list[dict[str, Any] | None]:
    """Each of the two groups processed on exactly one host, and ``workers`` bot sessions logged in."""
    with trio.fail_after(timeout):
        while True:
            statuses = await groups_status(stacks)
            if all(len(processors(statuses, g)) == 1 for g in (0, 1)) and stacks[0].logged_in() >= workers:
                return statuses
            await trio.sleep(0.2)  # three other processes' status, polled
