"""Shard groups benchmark: a sharded bot of ``--groups`` groups (one shard each, one running worker and one hot
standby per group: twice as many real worker processes), start-up, crash failover per group, a rolling deploy.

The whole supervisor runs in this process (``build(Options(shard_count=..., shards_per_worker=...))``, as the CLI
runs it) on a managed clone of a bare "upstream" git repository. The bot is the rehearsal worker
(``python -m urban_robot.testing.worker``): its ``rehearsal.toml`` makes every worker journal, with the wall-clock
time, each change of whether it processes and its shards (``<unix time> <identity> processing|idle 3-3``,
looked at every 20 ms: the journal's figures are exact to about 20 ms). Each commit names a journal file of its
own, so the journal says which code processes.

- **Start-up**: from starting the app to every group's first holder journaling ``processing``.
- **Crash failover per group** (``--kills`` rounds; in each, every group's holder in turn, a seeded order):
  SIGKILL the holder of one group, then the time to that group's new holder being granted the lease (the bus's
  ``RoleChanged`` to running, in this process: the failover benchmark's measure) and to the answer of its first
  granted renewal, after which it processes (``failover_to_processing_*``; the run also waits for its journal to
  say so). Before each round every group has its standby back.
- **Rolling deploy**: a new commit pushed upstream and announced with a signed GitHub push webhook, as GitHub
  does; whatever the deployer does then is measured: the seconds from the webhook to every group processing on
  the new code (from the new commit's journal), and per group the longest time without a processor in that
  window: from a holder leaving ``running`` (its ``coma``) to its successor's first granted renewal, on the bus
  (an upper bound, as the deploy benchmark's hand-over gap). ``max_group_gap_ms`` is the longest over the groups.
  The journals' view of the same gaps (``max_group_gap_journal_ms``) is only as fine as their 20 ms looks: an old
  holder's ``idle`` may be written after its successor's ``processing``, which reads as no gap.

The last line printed is one JSON object: {"groups", "startup_s", "failover_p50_ms", "failover_p99_ms",
"rolling_deploy_s", "max_group_gap_ms", ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

SCRIPTS = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(SCRIPTS))

from bench.deploy.run import SECRET, Repos, git, push_webhook  # noqa: E402

from urban_robot.supervisor import Settings  # noqa: E402
from urban_robot.supervisor._assembly import App, Options, build  # noqa: E402
from urban_robot.supervisor._bus import Handled  # noqa: E402
from urban_robot.supervisor._children import ChildPolicy  # noqa: E402
from urban_robot.supervisor._events import Heartbeat, Reply, RoleChanged  # noqa: E402

WORKER = (sys.executable, "-m", "urban_robot.testing.worker")
# The kills are deliberate: crash-loop detection would (rightly) stop respawning after five.
SETTINGS = Settings(
    token="bench-token",
    interval=2,
    grace=2,
    lease_margin=1,
    health_timeout=20,
    spawn_workers=True,
    crash_loop_losses=1_000_000,
)
POLICY = ChildPolicy(term_timeout=2, kill_timeout=2)
STEP_TIMEOUT = 180  # seconds for any one phase: a hang fails the run instead of holding it


class ShardRepos(Repos):
    """The deploy benchmark's repositories, holding a ``rehearsal.toml`` bot: each version its own journal."""

    async def commit(self, message: str, **bot: Any) -> str:
        version = bot["version"]
        journal = self.tmp / f"journal-{version}"
        (self.work / "rehearsal.toml").write_text(f'version = "{version}"\njournal = "{journal}"\n')
        await git(self.work, "add", "-A")
        await git(self.work, "commit", "-q", "-m", message)
        await git(self.work, "push", "-q", "origin", "HEAD:main")
        return await git(self.work, "rev-parse", "HEAD")


# -- the journal ------------------------------------------------------------------------------------------------
Line = tuple[float, str, bool, str]  # (unix time, identity, processing, group "3-3")


def read_journal(path: Path) -> list[Line]:
    lines: list[Line] = []
    with contextlib.suppress(FileNotFoundError):
        for raw in path.read_text().splitlines():
            parts = raw.split()
            if len(parts) == 4:
                lines.append((float(parts[0]), parts[1], parts[2] == "processing", parts[3]))
    return lines


def first_processing(lines: list[Line], after: float = 0.0) -> dict[str, float]:
    """Each group's first ``processing`` line at or after ``after``."""
    first: dict[str, float] = {}
    for at, _, processing, group in sorted(lines):
        if processing and at >= after:
            first.setdefault(group, at)
    return first


def longest_gaps(lines: list[Line], since: float, until: float) -> dict[str, float]:
    """Per group: the longest stretch of [since, until] in which none of its workers journaled processing."""
    by_group: dict[str, list[Line]] = {}
    for line in sorted(lines):
        by_group.setdefault(line[3], []).append(line)
    gaps: dict[str, float] = {}
    for group, mine in by_group.items():
        on: set[str] = set()
        idle_from: float | None = None
        longest = 0.0
        for at, who, processing, _ in mine:
            if at > until:
                break
            before = bool(on)
            (on.add if processing else on.discard)(who)
            if at < since:
                continue
            if before and not on:
                idle_from = at
            elif not before and on and idle_from is not None:
                longest = max(longest, at - idle_from)
                idle_from = None
        if not on and idle_from is not None:
            longest = max(longest, until - idle_from)
        gaps[group] = longest
    return gaps


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# -- the bus ----------------------------------------------------------------------------------------------------
class Roles:
    """Every ``RoleChanged`` on the app's bus, timestamped (trio's clock), each holder's granted renewals (as the
    deploy benchmark attributes them: the heartbeat being handled names the holder), and an event to wait on."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.changes: list[tuple[float, float, RoleChanged]] = []
        self.renewals: list[tuple[float, int, str]] = []  # (time, group, identity) of each granted renewal
        self.changed = trio.Event()
        self._holder: tuple[int, str] | None = None  # (group, identity) whose heartbeat is being handled
        app.bus.subscribe(RoleChanged, self._observe)
        app.bus.subscribe(Heartbeat, self._heartbeat)
        app.bus.subscribe(Handled, self._handled)
        app.bus.subscribe(Reply, self._reply)

    def _observe(self, change: RoleChanged) -> None:
        self.changes.append((trio.current_time(), time.time(), change))
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _heartbeat(self, event: Heartbeat) -> None:
        for group in self.app.robot.snapshot().groups:  # before the core handles it: whose lease it renews
            if group.lease is not None and group.lease.sid == event.sid:
                self._holder = (group.index, group.lease.identity)

    def _handled(self, handled: Handled) -> None:
        self._holder = None

    def _reply(self, reply: Reply) -> None:
        if self._holder is not None and isinstance(reply.data, dict) and reply.data.get("lease"):
            self.renewals.append((trio.current_time(), *self._holder))
            self._holder = None
            self._wake()

    async def renewed(self, group: int, identity: str, after: float) -> float:
        """When ``identity``'s first granted renewal in ``group`` after ``after`` was answered (it processes then)."""
        while True:
            for at, g, who in self.renewals:
                if g == group and who == identity and at >= after:
                    return at
            await self.changed.wait()

    async def running(self, group: int, since: int, not_identity: str | None = None) -> tuple[float, str]:
        """When (trio's clock) a worker of ``group`` entered ``running`` from change ``since`` on, and which."""
        while True:
            for at, _, change in self.changes[since:]:
                if change.group == group and change.new == "running" and change.identity != not_identity:
                    return at, change.identity
            await self.changed.wait()

    def gaps(self, since: int) -> dict[int, float]:
        """Per group, from change ``since`` on: the longest time from a holder leaving ``running`` to the next one's
        first granted renewal (ms): an upper bound of the time no worker of the group processed."""
        left: dict[int, float] = {}
        gaps: dict[int, float] = {}
        for at, _, change in self.changes[since:]:
            if change.old == "running" and change.new != "running":
                left.setdefault(change.group, at)
            elif change.new == "running" and change.group in left:
                renewed = [t for t, g, who in self.renewals if g == change.group and who == change.identity and t >= at]
                end = min(renewed) if renewed else at
                gap = (end - left.pop(change.group)) * 1000
                gaps[change.group] = max(gaps.get(change.group, 0.0), gap)
        return gaps


async def until(app: App, roles: Roles, ready: Any) -> None:
    while not ready(app.robot.snapshot()):
        with trio.move_on_after(0.2):  # a standby's approval changes no role event's count: look again anyway
            await roles.changed.wait()


def every_group_has_a_standby(snapshot: Any) -> bool:
    return all(g.running is not None and g.lease is not None and g.standbys >= 1 for g in snapshot.groups)


async def wait_journal(path: Path, ready: Any) -> list[Line]:
    while not ready(lines := read_journal(path)):
        await trio.sleep(0.02)
    return lines


async def main(groups: int, kills: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        repos = ShardRepos(Path(tmp))
        await repos.create()
        await repos.commit("first", version="1.0")
        await git(repos.tmp, "clone", "-q", str(repos.upstream), str(repos.managed))
        old_journal, new_journal = repos.tmp / "journal-1.0", repos.tmp / "journal-2.0"
        options = Options(
            helium_path=repos.managed,
            settings=SETTINGS,
            command=WORKER,
            state_dir=repos.tmp / "state",
            port=0,
            standbys=1,
            webhook_secret=SECRET,
            policy=POLICY,
            shard_count=groups,
            shards_per_worker=1,
            discord_api_url="http://127.0.0.1:9",  # nothing listens: max_concurrency stays 1 (no worker identifies)
        )
        async with httpx.AsyncClient(timeout=30) as http, trio.open_nursery() as nursery:
            app = build(options)
            roles = Roles(app)
            started = time.time()
            await nursery.start(app.run)
            with trio.fail_after(STEP_TIMEOUT):
                lines = await wait_journal(old_journal, lambda lines: len(first_processing(lines)) >= groups)
            startup_s = max(first_processing(lines).values()) - started
            print(f"start-up: {groups} groups process {startup_s:.2f} s after the start", flush=True)
            with trio.fail_after(STEP_TIMEOUT):
                await until(app, roles, every_group_has_a_standby)
                app.deployer.request("bench start")  # the checkout's commit becomes last known good
                await app.deployer.wait_idle()

            to_grant: list[float] = []
            to_processing: list[float] = []
            for round_ in range(1, kills + 1):
                with trio.fail_after(STEP_TIMEOUT):
                    await until(app, roles, every_group_has_a_standby)
                for group in rng.sample(range(groups), groups):
                    with trio.fail_after(STEP_TIMEOUT):
                        grant_ms, processing_ms = await failover(app, roles, group, old_journal)
                    to_grant.append(grant_ms)
                    to_processing.append(processing_ms)
                print(
                    f"failover round {round_}: median {statistics.median(to_grant[-groups:]):.1f} ms,"
                    f" worst {max(to_grant[-groups:]):.1f} ms to the grant",
                    flush=True,
                )

            with trio.fail_after(STEP_TIMEOUT):
                await until(app, roles, every_group_has_a_standby)
                commit = await repos.commit("new code", version="2.0")
                mark = len(roles.changes)
                posted = time.time()
                status = await push_webhook(http, app.url, commit, "shards-deploy")
                assert status == 202, f"webhook answered {status}"
                lines = await wait_journal(new_journal, lambda lines: len(first_processing(lines)) >= groups)
                on_new = max(first_processing(lines).values())
                await app.deployer.wait_idle()
            outcome = app.deployer.history[-1]
            await trio.sleep(0.1)  # the journals' last looks (every 20 ms) are in
            done = time.time()
            journal_gaps = longest_gaps(read_journal(old_journal) + read_journal(new_journal), posted, done)
            gaps = roles.gaps(mark)
            processes = len(app.children.children)
            nursery.cancel_scope.cancel()  # Children stops every child it started
    deploy_s = on_new - posted
    print(
        f"rolling deploy: every group on the new code {deploy_s:.2f} s after the webhook ({outcome[1]});"
        f" longest per-group gap {max(gaps.values(), default=0.0):.1f} ms ({len(gaps)} groups handed over)",
        flush=True,
    )
    return {
        "groups": groups,
        "startup_s": round(startup_s, 2),
        "failover_p50_ms": round(statistics.median(to_grant), 1),
        "failover_p99_ms": round(percentile(to_grant, 99), 1),
        "failover_to_processing_p50_ms": round(statistics.median(to_processing), 1),
        "failover_to_processing_p99_ms": round(percentile(to_processing, 99), 1),
        "failover_runs": len(to_grant),
        "rolling_deploy_s": round(deploy_s, 2),
        "max_group_gap_ms": round(max(gaps.values(), default=0.0), 1),
        "median_group_gap_ms": round(statistics.median(gaps.values()), 1) if gaps else None,
        "groups_handed_over": len(gaps),
        "max_group_gap_journal_ms": round(max(journal_gaps.values(), default=0.0) * 1000, 1),
        "deploy_outcome": outcome[1],
        "worker_processes": processes,
        "seed": seed,
    }


async def failover(app: App, roles: Roles, group: int, journal: Path) -> tuple[float, float]:
    """SIGKILL ``group``'s holder; (ms to its successor's grant, ms to its successor journaling processing)."""
    view = app.robot.snapshot().groups[group]
    holder = view.running
    assert holder is not None, f"group {view.name} has no holder"
    child = app.children.children[holder]
    mark = len(roles.changes)
    name = f"{view.shard_ids[0]}-{view.shard_ids[-1]}"
    killed_wall, killed = time.time(), trio.current_time()
    os.kill(child.pid, signal.SIGKILL)
    granted, successor = await roles.running(group, mark, not_identity=holder)
    renewed = await roles.renewed(group, successor, granted)

    def successor_processes(lines: list[Line]) -> bool:
        return any(p and g == name and who == successor and at >= killed_wall for at, who, p, g in lines)

    await wait_journal(journal, successor_processes)  # it did process (seen by the worker itself)
    return (granted - killed) * 1000, (renewed - killed) * 1000


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=16, help="shard groups (one shard each; default 16)")
    parser.add_argument("--kills", type=int, default=3, help="rounds of SIGKILLs: every group's holder once each")
    parser.add_argument("--seed", type=int, default=7, help="fixes the order of the kills")
    args = parser.parse_args()
    if args.groups < 2 or args.kills < 1:
        parser.error("--groups must be at least 2 and --kills at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(json.dumps(trio.run(main, args.groups, args.kills, args.seed)))
