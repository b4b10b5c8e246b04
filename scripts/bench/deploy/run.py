"""Deploy benchmark: a real git repository, the real webhook, real worker processes, N rounds.

The whole supervisor runs in this process (``serve(Options(...))``, as the CLI
runs it) on a managed clone of a bare "upstream" repository in a temporary
directory. The bot in that repository (``main.py``) is a simulated Helium
worker (``urban_robot.testing.SimulatedWorker``) whose version, health report
and cache size come from ``bot.json`` in the same commit. Each round pushes
two commits upstream and announces each with a signed GitHub push webhook
(``POST /webhook/github``, a valid ``X-Hub-Signature-256``):

- a good commit whose bot, once it processes, writes a cache of ``--cache-mb``
  MB (so every hand-over moves one that size):
  * deploy → processing: from POSTing the webhook to the supervisor answering
    the new version's first lease renewal (after which it processes);
  * hand-over gap: from sending ``coma`` to the old holder to answering the new
    holder's first renewal. The real gap (old stops → new starts) lies inside
    this window, so the figure is an upper bound (as in the failover bench);
- a commit whose bot fails its health check (vital cog false). The running
  worker must not notice: from the last renewal before the POST to the first
  one after the rollback finished, the holder and its epoch must stay the same
  and every one of its renewals must be granted. The gap reported is the
  longest time in that window not covered by a granted renewal's lease
  (0 when all is well).

Times are taken in the supervisor's process on one clock, from an observer on
the app's bus (the core's actions, and each heartbeat with the ``Handled`` that
closes it, so that its answer is attributed to the lease holder of the moment:
an action does not say whom it answers). Medians over the rounds are reported, and the
largest failed-deploy gap. ``--fresh`` is a diagnostic: before each deploy it
stops every standby but the holder and resets the children's restart backoff
(two effects that grew from round to round before deploys retired older
standbys and candidates skipped the backoff).

The last line printed is one JSON object:
{"deploy_to_processing_s", "handover_gap_ms", "failed_deploy_gap_ms", "rounds", ...}
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from urban_robot.supervisor import Role, Settings
from urban_robot.supervisor._assembly import App, Options, build
from urban_robot.supervisor._bus import Handled
from urban_robot.supervisor._children import ChildPolicy
from urban_robot.supervisor._events import Action, Heartbeat, PersistCache, Reply, RoleChanged, Send
from urban_robot.supervisor._webhook import sign
from urban_robot.testing.bot import MAIN_PY

BOT = MAIN_PY  # the stand-in bot of urban_robot.testing.bot, driven by bot.json
HEALTHY = {"OK": True, "percent": 100, "cogs": {"modules.utilities": True}}
VITAL_COG_FAILED = {"OK": False, "percent": 100, "cogs": {"modules.utilities": False}}
SECRET = b"bench-webhook-secret"
SETTINGS = Settings(token="bench-token", interval=2, grace=2, lease_margin=1, health_timeout=10, spawn_workers=True)
POLICY = ChildPolicy(term_timeout=2, kill_timeout=2)
STEP_TIMEOUT = 60  # seconds for any one deploy: a hang fails the run instead of holding it


async def git(cwd: Path, *args: str) -> str:
    done = await trio.run_process(["git", *args], cwd=cwd, capture_stdout=True, capture_stderr=True)
    return done.stdout.decode().strip()


class Repos:
    """A bare upstream, a developer's clone to push from, and the clone Urban Robot manages."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.upstream = tmp / "upstream.git"
        self.work = tmp / "work"
        self.managed = tmp / "helium"

    async def create(self) -> None:
        await git(self.tmp, "init", "-q", "--bare", "-b", "main", str(self.upstream))
        await git(self.tmp, "clone", "-q", str(self.upstream), str(self.work))
        for key, value in (("user.name", "bench"), ("user.email", "bench@example.invalid")):
            await git(self.work, "config", key, value)
        (self.work / ".gitignore").write_text("log/\n")  # the supervisor writes child logs into the checkout

    async def commit(self, message: str, **bot: Any) -> str:
        (self.work / "main.py").write_text(BOT)
        (self.work / "bot.json").write_text(json.dumps({"health": HEALTHY, **bot}))
        await git(self.work, "add", "-A")
        await git(self.work, "commit", "-q", "-m", message)
        await git(self.work, "push", "-q", "origin", "HEAD:main")
        return await git(self.work, "rev-parse", "HEAD")


@attrs.frozen
class Renewal:
    """The core's answer to a heartbeat of the lease holder of the moment."""

    at: float
    identity: str
    epoch: int
    granted: bool


class Recorder:
    """Timestamps of the core's actions and of the holder's renewals, and an event to wait on.

    Subscribed to the app's bus (as ``build`` subscribes the supervisor's own parts): each action, and each
    heartbeat with the ``Handled`` that closes it, so that a heartbeat's answer is attributed to the lease
    holder of that moment (the answer itself names no worker)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.actions: list[tuple[float, Action]] = []
        self.renewals: list[Renewal] = []
        self.changed = trio.Event()
        self._holder: tuple[str, str, int] | None = None  # (sid, identity, epoch) of the heartbeat being handled
        app.bus.subscribe(Action, self._observe)
        app.bus.subscribe(Heartbeat, self._heartbeat)
        app.bus.subscribe(Handled, self._handled)

    def _heartbeat(self, event: Heartbeat) -> None:
        lease = self.app.robot.snapshot().lease  # before the core handles it: whose lease it renews
        if lease is not None and lease.sid == event.sid:
            self._holder = (lease.sid, lease.identity, lease.epoch)

    def _handled(self, handled: Handled) -> None:
        self._holder = None

    def backoff_since(self, since: float) -> float:
        return sum(delay for at, delay in self.app.children.delays if at >= since)

    def _observe(self, action: Action) -> None:
        now = trio.current_time()
        self.actions.append((now, action))
        if self._holder is not None and isinstance(action, Reply):
            granted = isinstance(action.data, dict) and bool(action.data.get("lease"))
            self.renewals.append(Renewal(now, self._holder[1], self._holder[2], granted))
            self._holder = None
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate: Callable[[Action], bool], since: int) -> tuple[int, float, Action]:
        """The first action from index ``since`` on that matches: its index, time and itself."""
        while True:
            for index in range(since, len(self.actions)):
                at, action = self.actions[index]
                if predicate(action):
                    return index, at, action
            await self.changed.wait()

    async def next_granted_renewal(self, after: float) -> Renewal:
        while True:
            for renewal in self.renewals:
                if renewal.granted and renewal.at > after:
                    return renewal
            await self.changed.wait()


def is_grant(action: Action) -> bool:
    return isinstance(action, Send) and action.event == "cmd" and action.data["t"] == "process_commands"


def is_stop_of(sid: str | None) -> Callable[[Action], bool]:
    return lambda a: isinstance(a, Send) and a.sid == sid and a.event == "cmd" and a.data["t"] in ("coma", "shutdown")


def renewal_of(epoch: int) -> Callable[[Action], bool]:
    return lambda a: isinstance(a, Reply) and a.data.get("epoch") == epoch and a.data.get("lease", 0) > 0


async def push_webhook(http: httpx.AsyncClient, url: str, commit: str, delivery: str) -> int:
    body = json.dumps(
        {"ref": "refs/heads/main", "after": commit, "head_commit": {"id": commit, "message": "bench"}}
    ).encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(SECRET, body),
        "Content-Type": "application/json",
    }
    response = await http.post(f"{url}/webhook/github", content=body, headers=headers)
    return response.status_code


async def steady(app: App, recorder: Recorder, cache_bytes: int) -> None:
    """Wait until a holder processes (renewed its lease) and, with a cache, has written its own."""
    while (lease := app.robot.snapshot().lease) is None or not lease.confirmed or lease.sid is None:
        await recorder.changed.wait()
    if cache_bytes:
        last_grant = max(i for i, (_, a) in enumerate(recorder.actions) if is_grant(a))
        await recorder.wait_for(lambda a: isinstance(a, PersistCache), last_grant)


async def tidy(app: App) -> None:
    """``--fresh``: stop every standby (the earlier deploys' old holders) and reset the restart backoff."""
    for w in app.robot.snapshot().workers:
        if w.role == Role.STANDBY.value and w.holds is None:
            ask = functools.partial(app.robot.ask_shutdown, w.identity, "bench: --fresh")
            await app.children.stop(w.identity, ask=ask)
    app.children.quick_deaths = 0


@attrs.frozen
class GoodDeploy:
    to_processing_s: float  # webhook POSTed → the new version's first renewal answered
    backoff_s: float  # of that, how long Children held the candidate's spawn back
    handover_ms: float  # coma sent → the new holder's first renewal answered
    ack_ms: float  # of that: coma sent → the old holder's ack (its final cache is in by then)
    grant_ms: float  # ack → process_commands sent (state written, cache pushed if need be)
    cache_copies: int  # 10 MB cache_sync sends queued during the hand-over (one per standby)


def is_ack_of(sid: str | None) -> Callable[[Action], bool]:
    return lambda a: isinstance(a, RoleChanged) and a.sid == sid and a.old == "stopping"


async def good_deploy(
    app: App,
    recorder: Recorder,
    repos: Repos,
    http: httpx.AsyncClient,
    n: int,
    cache_bytes: int,
    fresh: bool,
    cache: dict[str, Any],
) -> GoodDeploy:
    version = f"2.{n}"
    commit = await repos.commit(f"good {n}", version=version, cache_bytes=cache_bytes, **cache)
    await steady(app, recorder, cache_bytes)
    if fresh:
        await tidy(app)
    lease = app.robot.snapshot().lease
    assert lease is not None
    mark = len(recorder.actions)
    posted_at = trio.current_time()
    status = await push_webhook(http, app.url, commit, f"good-{n}")
    assert status == 202, f"webhook answered {status}"
    coma, coma_at, _ = await recorder.wait_for(is_stop_of(lease.sid), mark)
    _, acked_at, _ = await recorder.wait_for(is_ack_of(lease.sid), coma)
    granted, granted_at, grant = await recorder.wait_for(is_grant, mark)
    assert isinstance(grant, Send)
    epoch = grant.data["d"]["epoch"]
    _, renewed_at, _ = await recorder.wait_for(renewal_of(epoch), mark)
    await app.deployer.wait_idle()
    assert app.deployer.history[-1] == (commit, "deployed"), app.deployer.history[-1]
    holder = app.robot.snapshot().worker(grant.sid)
    assert holder is not None, "the new holder is gone"
    assert holder.version == version, f"{holder.version} processes, not {version}"
    copies = sum(isinstance(a, Send) and a.event == "cache_sync" for _, a in recorder.actions[coma:granted])
    return GoodDeploy(
        to_processing_s=renewed_at - posted_at,
        backoff_s=recorder.backoff_since(posted_at),
        handover_ms=(renewed_at - coma_at) * 1000,
        ack_ms=(acked_at - coma_at) * 1000,
        grant_ms=(granted_at - acked_at) * 1000,
        cache_copies=copies,
    )


@attrs.frozen
class FailedDeploy:
    gap_ms: float
    holder_kept: bool
    renewals: int  # the holder's renewals in the window
    refused: int  # how many of them were refused
    duration_s: float  # POST → rolled back
    backoff_s: float  # of that, how long Children held the candidate's spawn back


def processing_gap(renewals: list[Renewal], stops: list[float], start: Renewal, end: Renewal, lease: float) -> float:
    """The longest time between ``start`` and ``end`` covered by no granted renewal's lease, in seconds.

    A granted renewal at t covers [t, t + lease]; a refused one, or a coma/shutdown sent to the holder,
    ends the cover at once (the worker stops processing when it is told to).
    """
    covered, gap = start.at + lease, 0.0
    events = sorted([(r.at, r.granted) for r in renewals if start.at < r.at <= end.at] + [(t, False) for t in stops])
    for at, granted in events:
        if granted:
            gap = max(gap, at - covered)
            covered = at + lease
        else:
            covered = min(covered, at)
    return max(gap, 0.0)


async def failed_deploy(
    app: App, recorder: Recorder, repos: Repos, http: httpx.AsyncClient, n: int, cache_bytes: int, fresh: bool
) -> FailedDeploy:
    commit = await repos.commit(f"broken {n}", version=f"9.{n}", health=VITAL_COG_FAILED)
    await steady(app, recorder, cache_bytes)
    if fresh:
        await tidy(app)
    lease = app.robot.snapshot().lease
    assert lease is not None
    holder = (lease.identity, lease.epoch)
    first = len(recorder.renewals)
    mark = len(recorder.actions)
    posted_at = trio.current_time()
    status = await push_webhook(http, app.url, commit, f"broken-{n}")
    assert status == 202, f"webhook answered {status}"
    await app.deployer.wait_idle()
    rolled_back_at = trio.current_time()
    assert app.deployer.history[-1] == (commit, "failed"), app.deployer.history[-1]
    end = await recorder.next_granted_renewal(rolled_back_at)
    start = next(r for r in reversed(recorder.renewals[:first]) if r.granted)
    window = [r for r in recorder.renewals if start.at < r.at <= end.at]
    stop = is_stop_of(lease.sid)
    stops = [at for at, a in recorder.actions[mark:] if stop(a) and at <= end.at]
    grants = [a for _, a in recorder.actions[mark:] if is_grant(a)]
    now = app.robot.snapshot().lease
    kept = (
        not grants
        and not stops
        and (start.identity, start.epoch) == holder
        and all((r.identity, r.epoch) == holder for r in window)
        and now is not None
        and (now.identity, now.epoch) == holder
    )
    refused = sum(not r.granted for r in window)
    gap = processing_gap(window, stops, start, end, SETTINGS.lease)
    return FailedDeploy(
        gap * 1000, kept, len(window), refused, rolled_back_at - posted_at, recorder.backoff_since(posted_at)
    )


async def main(
    rounds: int, cache_mb: float, fresh: bool, changed_mb: float | None = None, plain: bool = False
) -> dict[str, Any]:
    cache_bytes = int(cache_mb * 1_000_000)
    cache = {"cache_changed": int((changed_mb or 0) * 1_000_000), "cache_plain": plain}
    good: list[GoodDeploy] = []
    failed: list[FailedDeploy] = []
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        repos = Repos(Path(tmp))
        await repos.create()
        await repos.commit("first", version="1.0", cache_bytes=cache_bytes, **cache)
        await git(repos.tmp, "clone", "-q", str(repos.upstream), str(repos.managed))
        options = Options(
            helium_path=repos.managed,
            settings=SETTINGS,
            command=(sys.executable, "main.py"),
            state_dir=Path(tmp) / "state",
            port=0,
            standbys=1,
            webhook_secret=SECRET,
            policy=POLICY,
        )
        async with httpx.AsyncClient(timeout=30) as http, trio.open_nursery() as nursery:
            app = build(options)
            recorder = Recorder(app)  # subscribed before anything runs: it misses nothing
            await nursery.start(app.run)
            with trio.fail_after(STEP_TIMEOUT):  # the first deploy: the checkout's commit becomes last known good
                await steady(app, recorder, 0)
                app.deployer.request("bench start")
                await app.deployer.wait_idle()
                assert app.robot.snapshot().last_known_good is not None, app.deployer.history
            for n in range(1, rounds + 1):
                with trio.fail_after(STEP_TIMEOUT):
                    good.append(await good_deploy(app, recorder, repos, http, n, cache_bytes, fresh, cache))
                with trio.fail_after(STEP_TIMEOUT):
                    failed.append(await failed_deploy(app, recorder, repos, http, n, cache_bytes, fresh))
                g, f = good[-1], failed[-1]
                print(
                    f"round {n}: webhook -> processing {g.to_processing_s:.3f} s (spawn backoff {g.backoff_s:.2f} s);"
                    f" hand-over gap {g.handover_ms:.1f} ms (coma -> ack {g.ack_ms:.1f}, ack -> grant"
                    f" {g.grant_ms:.1f}, {g.cache_copies} cache copies); failed deploy rolled back in"
                    f" {f.duration_s:.2f} s (spawn backoff {f.backoff_s:.2f} s), holder kept {f.holder_kept},"
                    f" {f.renewals - f.refused}/{f.renewals} renewals granted, gap {f.gap_ms:.1f} ms",
                    flush=True,
                )
            processes = len(app.children.children)
            nursery.cancel_scope.cancel()  # Children stops every child it started
    result: dict[str, Any] = {
        "deploy_to_processing_s": round(statistics.median(g.to_processing_s for g in good), 3),
        "handover_gap_ms": round(statistics.median(g.handover_ms for g in good), 1),
        "failed_deploy_gap_ms": round(max(f.gap_ms for f in failed), 1),
        "rounds": rounds,
        "cache_mb": cache_mb,
        "fresh": fresh,
        "deploy_to_processing_runs_s": [round(g.to_processing_s, 3) for g in good],
        "deploy_spawn_backoffs_s": [round(g.backoff_s, 2) for g in good],
        "deploy_to_processing_without_backoff_s": round(
            statistics.median(g.to_processing_s - g.backoff_s for g in good), 3
        ),
        "handover_gaps_ms": [round(g.handover_ms, 1) for g in good],
        "handover_coma_to_ack_ms": round(statistics.median(g.ack_ms for g in good), 1),
        "handover_ack_to_grant_ms": round(statistics.median(g.grant_ms for g in good), 1),
        "handover_cache_copies": [g.cache_copies for g in good],
        "failed_deploy_holder_kept": all(f.holder_kept for f in failed),
        "failed_deploy_renewals": sum(f.renewals for f in failed),
        "failed_deploy_refused_renewals": sum(f.refused for f in failed),
        "failed_deploy_rollback_runs_s": [round(f.duration_s, 2) for f in failed],
        "failed_deploy_spawn_backoffs_s": [round(f.backoff_s, 2) for f in failed],
        "worker_processes_at_end": processes,
    }
    result["cache_plain"] = plain
    if changed_mb is not None:  # the hand-over's final cache is a delta of changed_mb
        result["delta_handover_gap_ms"] = result["handover_gap_ms"]
        result["changed_mb"] = changed_mb
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache-mb", type=float, default=10)
    parser.add_argument(
        "--changed-mb",
        type=float,
        default=None,
        help="the bot (a CacheMap of 1 MB keys) changes this many MB before each hand-over: its final cache is a delta",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="a bot whose cache is one value sent whole at every sync, its final cache too (the worst case)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="before each deploy, stop the standbys left by earlier deploys and reset the children's restart "
        "backoff (a diagnostic: the figures without those two effects, see docs/benchmarks.md)",
    )
    args = parser.parse_args()
    # Failed deploys warn by design (health check failed, rolling back); errors are still shown.
    logging.basicConfig(level=logging.ERROR)
    result = trio.run(main, args.rounds, args.cache_mb, args.fresh, args.changed_mb, args.plain)
    print(
        f"webhook -> new version processing (first renewal answered), median of {result['rounds']}: "
        f"{result['deploy_to_processing_s']} s; without the spawn backoff: "
        f"{result['deploy_to_processing_without_backoff_s']} s"
    )
    print(
        f"hand-over with a {args.cache_mb:g} MB cache: coma -> new holder renewed, median: "
        f"{result['handover_gap_ms']} ms"
    )
    print(
        f"failed deploy (vital cog false): holder kept in every round: {result['failed_deploy_holder_kept']}, "
        f"{result['failed_deploy_refused_renewals']} of {result['failed_deploy_renewals']} renewals refused, "
        f"longest processing gap {result['failed_deploy_gap_ms']} ms"
    )
    print(json.dumps(result))
