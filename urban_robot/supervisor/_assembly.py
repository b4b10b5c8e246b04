"""The assembly: every part of a supervisor, who hears what, and what runs — in this one file.

``build(options, seams=...)`` makes the parts and wires them; ``await app.run()`` runs them until
``app.stop(reason)`` (signals, ``POST /api/stop`` and dev mode all call it). ``serve(options)`` is both.
The operator CLI (``urban_robot.config``) builds ``Options`` from flags, environment and a config file;
tests, benchmarks and dev mode call ``build`` with ``Seams`` for what they replace — never by patching
a running App.

Who talks to whom (→ a call, ⇢ a message on the bus, subscribed below and nowhere else)::

    workers ─ Socket.IO ─▶ UrbanRobot ─ events ─▶ core (Supervisor) ─ actions ─▶ UrbanRobot carries out:
                            │                                          Send, Close, Persist, PersistCache, Reply
                            ⇢ each event, each action, Handled(event)
    Spawn, TopUp ⇢ Children.spawn / top_up           Children → robot.submit(ProcessExited, Frozen)
    Claim, Yield ⇢ ClusterLink (several hosts)       ClusterLink → robot.submit(ClusterGrant, ClusterStop,
                                                                         CacheReplicated)
    Send(shutdown), Close, Kill, CheckFrozen ⇢ Children.on_action (asked, killed, probed)
    Verdict, RollBack ⇢ Deployer.on_action           Deployer → robot.submit(CandidateStarted, DeployConfirmed,
    Notify ⇢ Notifier.notify                                         RetireOlder, RollbackFinished)
    events, actions, Handled, DeployResult ⇢ StatusTracker ⇢ ViewsChanged ⇢ DashboardNamespace.poke
    Handled ⇢ App.changed (systemd's status line, tests)
    HTTP: /webhook/github → WebhookGate → Deployer.request_push; /api/deploy, /api/try-again, /api/stop;
          /api/status, /metrics, / and /dashboard read robot.snapshot() and the tracker.

The nursery tree ``App.run`` starts: notifier, robot (its loop, timer, cache writer, listener), children
(each child: wait + log; the stop watch), deployer (one deploy at a time; the poll).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import httpx
import trio

from ..protocol import SessionStartLimit, ShardError, ShardPlan
from ._api import admin_route
from ._auth import Credentials
from ._bus import Bus, Handled, ViewsChanged
from ._children import ChildPolicy, Children, Launch, RunAs
from ._cluster import ClusterLink, ClusterOptions
from ._cluster_deploy import ClusterDeploys
from ._core import Settings
from ._dashboard import DashboardNamespace, install_dashboard
from ._deploy import Deployer, DeployResult, GitLike
from ._events import (
    Action,
    CheckFrozen,
    Claim,
    Close,
    Event,
    IdentifyLimit,
    Kill,
    Notify,
    RollBack,
    Send,
    Spawn,
    Stopping,
    TopUp,
    TryAgain,
    Verdict,
    Yield,
)
from ._git import Git
from ._notify import DISCORD_API, DiscordLogHandler, DiscordWebhook, Notifier, NotifyError, gateway_bot
from ._service import UrbanRobot
from ._status import StatusTracker, install_status_routes
from ._store import StateStore
from ._webhook import WebhookConfig, WebhookGate
from ._webhook_route import webhook_route

log = logging.getLogger("urban_robot")


@attrs.frozen
class Options:
    helium_path: Path  # the bot's git checkout
    settings: Settings = attrs.field(factory=Settings)
    command: Sequence[str] = (sys.executable, "main.py")
    state_dir: Path = Path(".urban-robot")
    host: str = "127.0.0.1"
    port: int = 8080
    allowed_hosts: Sequence[str] = ()  # Host names served besides host, loopback and the address connected to
    standbys: int = 1
    branch: str = "main"
    webhook_secret: bytes | None = attrs.field(default=None, repr=False)
    require_deploy_tag: bool = False  # the original's "[DEPLOY]" commit-message rule
    poll_interval: float | None = None  # periodic fetch, seconds
    install: Sequence[str] | None = None  # run in each new release before its candidate starts
    install_timeout: float = 600.0
    deploy_timeout: float = 180.0  # a candidate not running by then is rolled back ("no verdict in time")
    admin_token: str | None = attrs.field(default=None, repr=False)
    worker_secrets: Mapping[str, str] = attrs.field(factory=dict, repr=False)  # NAME -> secret: worker:NAME
    discord_token: str | None = attrs.field(default=None, repr=False)  # for notifications
    notify_destination: str | None = None  # a channel id, or a user id with notify_dm
    notify_dm: bool = False
    notify_webhook: DiscordWebhook | None = attrs.field(default=None, repr=False)  # alone, or when the bot's is refused
    discord_log_level: int = logging.WARNING
    discord_api_url: str = DISCORD_API  # notify.api_url: Discord's REST API, or a stand-in for it
    policy: ChildPolicy = attrs.field(factory=ChildPolicy)
    workers_user: str | None = None  # run children as this user (the supervisor must be root)
    workers_group: str | None = None  # ... and group (default: the user's own)
    log_dir: Path | None = None  # the workers' log files (default: <helium_path>/log)
    # A sharded bot (docs/protocol.md §18): its shard count ("auto": Discord's recommended one, GET /gateway/bot),
    # and how many shards one worker runs (None: all of them, one group: the unsharded supervisor).
    shard_count: int | Literal["auto"] | None = None
    shards_per_worker: int | None = None
    # Several hosts (docs/protocol.md §19): this host's agent in an etcd-coordinated cluster; None: one host.
    cluster: ClusterOptions | None = None


@attrs.frozen
class Seams:
    """What a test, a benchmark or dev mode replaces in ``build``; the defaults are production's."""

    git: GitLike | None = None  # the deployer's git (default: ``Git(options.helium_path)``)
    launch: Launch = trio.lowlevel.open_process  # how a child process starts
    blocking_io: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync  # file writes (inline on a fake clock)
    # What a ``Spawn`` (a replacement for a worker that exited) does: start one more child, or top the current
    # generation up to its count (dev mode: a crashed candidate is no reason to start another).
    on_spawn: Literal["one more", "top up"] = "one more"
    # False: start no worker process at all (the pytest plugin's simulated workers stand in for them).
    spawn: bool = True


NOTIFY_FLUSH_TIMEOUT = 5.0  # seconds the last notifications (the stopping one) get to reach Discord
ANSWER_GRACE = 0.1  # seconds for the HTTP answer to a stop request to leave when no worker was left to wait for


@attrs.define(eq=False)
class App:
    """A supervisor's parts, built and wired by ``build``; ``run`` runs them."""

    options: Options
    seams: Seams
    store: StateStore
    bus: Bus
    robot: UrbanRobot
    children: Children
    deployer: Deployer
    notifier: Notifier | None
    tracker: StatusTracker
    dashboard: DashboardNamespace
    http: httpx.AsyncClient
    cluster: ClusterLink | None = None  # this host's agent, with a [cluster] section
    cluster_deploys: ClusterDeploys | None = None  # ... and its part in the cluster's deploys
    url: str = ""  # known once run() has bound the port
    stop_requested: trio.Event = attrs.Factory(trio.Event)  # set: run() stops its workers and returns
    stop_reason: str | None = None
    _changed: trio.Event = attrs.Factory(trio.Event)

    def stop(self, reason: str = "stop requested") -> bool:
        """Stop this supervisor, the one way it stops: signals, the admin API and dev mode all come here.

        ``run`` then asks every worker to shut down (the core's ``Stopping``: no promotion, no spawn from
        then on), waits for them to exit under one deadline (``ChildPolicy.term_timeout``), SIGTERMs the ones
        left, SIGKILLs after ``kill_timeout`` (``Children.stop_all``) and returns.
        False if a stop was under way already (its reason stands).
        """
        if self.stop_requested.is_set():
            return False
        self.stop_reason = reason
        self.stop_requested.set()
        return True

    def changed(self) -> trio.Event:
        """An event set the next time the core has handled something (a status may have changed)."""
        return self._changed

    def _handled(self, _: Handled) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every part until ``stop``; started once the port is bound and the workers are being spawned."""
        options, bridge = self.options, None
        try:
            async with trio.open_nursery() as nursery:
                if self.notifier is not None:
                    await nursery.start(self.notifier.run)
                    bridge = DiscordLogHandler(self.notifier, options.discord_log_level)
                    logging.getLogger().addHandler(bridge)
                await self._learn_shards(nursery)  # the plan first: survivors are adopted into their shard groups
                self.children.admit_survivors()  # their secrets valid before anyone can reconnect
                port = await nursery.start(self.robot.run, options.host, options.port)
                self.url = f"http://{options.host}:{port}"
                if self.cluster is not None:  # before any worker: none is promoted without etcd's grant
                    await nursery.start(self.cluster.run, self.url, self.robot)
                if self.cluster_deploys is not None:
                    await nursery.start(self.cluster_deploys.run, self.deployer)
                await self.deployer.resume()  # workers start from the last known good release, not the checkout
                count = 1 + options.standbys if self.seams.spawn else 0
                await nursery.start(self.children.run, count, self.url)
                await nursery.start(
                    lambda task_status: self.deployer.run(poll_interval=options.poll_interval, task_status=task_status)
                )
                log.info("supervising %s from %s", " ".join(options.command), options.helium_path)
                log.debug("who hears what: %s", ", ".join(f"{kind} -> {fn}" for kind, fn in self.bus.subscriptions()))
                task_status.started(self)
                await self.stop_requested.wait()
                await self._stop()
                nursery.cancel_scope.cancel()
        finally:
            if bridge is not None:
                logging.getLogger().removeHandler(bridge)
            with trio.CancelScope(shield=True):
                await self.http.aclose()
            self.store.unlock()

    async def _learn_shards(self, nursery: trio.Nursery) -> None:
        """A sharded bot: its plan and Discord's IDENTIFY limits (GET /gateway/bot, with the bot's token).

        ``auto`` needs Discord's answer before anything starts; a number of shards does not: the workers start at
        once, one IDENTIFY per 5 s (the least Discord allows), and Discord's own limit applies once it answers."""
        options = self.options
        if options.shard_count is None:
            return
        if options.shard_count != "auto":
            self._say_plan(self.robot.plan, None)
            if self.robot.plan.sharded:  # one group asks no slot
                nursery.start_soon(self._learn_identify_limit)
            return
        try:
            gateway = await gateway_bot(options.settings.token, client=self.http, base_url=options.discord_api_url)
        except (NotifyError, ShardError) as exc:
            raise NotifyError(
                f"shard_count = auto: cannot learn Discord's recommended shard count ({exc}); "
                "set shard_count to a number"
            ) from None
        plan = ShardPlan(gateway.shards, options.shards_per_worker or gateway.shards)
        self.robot.use_plan(plan, gateway.session_start_limit)
        self.children.use_plan(plan)
        self._say_plan(plan, gateway.session_start_limit)

    async def _learn_identify_limit(self) -> None:
        options = self.options
        try:
            gateway = await gateway_bot(options.settings.token, client=self.http, base_url=options.discord_api_url)
        except (NotifyError, ShardError) as exc:
            log.warning("cannot learn Discord's max_concurrency (%s): one shard identifies per 5 s", exc)
            return
        if gateway.shards > self.robot.plan.shard_count:
            log.warning(
                "Discord recommends %d shards, shard_count is %d: Discord closes a bot with too few shards (4011)",
                gateway.shards,
                self.robot.plan.shard_count,
            )
        await self.robot.submit(IdentifyLimit(gateway.session_start_limit))
        self._say_plan(self.robot.plan, gateway.session_start_limit)

    @staticmethod
    def _say_plan(plan: ShardPlan, limit: SessionStartLimit | None) -> None:
        if not plan.sharded:  # one group is the unsharded supervisor: hello names no shards (docs/protocol.md §18.3)
            log.info(
                "shard_count %d with shards_per_worker %d is one group: run as an unsharded bot, and its workers "
                "are not told the shard count (the bot decides); set shards_per_worker below shard_count to cut "
                "the shards into groups",
                plan.shard_count,
                plan.shards_per_worker,
            )
            return
        log.info(
            "%d shards in %d groups of %d%s",
            plan.shard_count,
            len(plan.groups),
            plan.shards_per_worker,
            f"; Discord allows {limit.max_concurrency} IDENTIFY per 5 s, {limit.remaining} session starts left"
            if limit is not None
            else "",
        )

    async def _stop(self) -> None:
        """Ask every worker to shut down, wait for their exits (SIGTERM, then SIGKILL, the ones that stay), keep
        the final cache on disk and let the stopping notification leave. A holder that stopped leaves no lease
        behind: its acknowledgement or its exit released it in state.json, so the next start promotes at once."""
        reason, policy = self.stop_reason or "stop requested", self.options.policy
        log.info(
            "stopping (%s): every worker is asked to shut down; SIGTERM after %gs, SIGKILL %gs later",
            reason,
            policy.term_timeout,
            policy.kill_timeout,
        )
        await self.robot.submit(Stopping(reason))
        await self.children.stop_all()
        await self.robot.caches_written()  # the holders' final caches, on disk and (several hosts) another host's
        if self.cluster is not None:
            held = [core.name for core in self.robot.fleet.groups if core.lease is not None]
            alive = list(self.children.children)
            if held or alive:
                log.warning(
                    "leaving the cluster without revoking this host's etcd lease (%s): the other hosts take its "
                    "groups over once it expires",
                    "; ".join(
                        ([f"workers still running: {', '.join(alive)}"] if alive else [])
                        + ([f"a lease still held in {', '.join(held)}"] if held else [])
                    ),
                )
            await self.cluster.leave(every_worker_stopped=not held and not alive)
        await self.robot.caches_written()
        if self.notifier is not None:
            with trio.move_on_after(NOTIFY_FLUSH_TIMEOUT):
                await self.notifier.flush()
        await trio.sleep(ANSWER_GRACE)
        left = ", ".join(self.children.children)
        if left:
            log.warning("stopped; still not gone after SIGKILL: %s", left)
        else:
            log.info("stopped: no worker is left")


def build(options: Options, *, seams: Seams = Seams()) -> App:
    """Every part of a supervisor for ``options``, wired; nothing runs until ``App.run``.

    Takes the state directory (its lock; ``run`` gives it back when it returns)."""
    run_as = RunAs.resolve(options.workers_user, options.workers_group) if options.workers_user else None
    store = StateStore(options.state_dir)
    store.prepare()
    store.lock()
    if run_as is not None:
        _open_releases_to_workers(options.state_dir)
    credentials = Credentials(
        store.secret_key(), admin_token=options.admin_token, worker_secrets=dict(options.worker_secrets)
    )
    bus = Bus()
    # A number of shards is known now; "auto" asks Discord when the App runs (``App._learn_shards``).
    count = options.shard_count if isinstance(options.shard_count, int) else 1
    plan = ShardPlan(count, options.shards_per_worker or count)
    settings = options.settings if options.cluster is None else attrs.evolve(options.settings, cluster=True)
    # Several hosts: this host's agent, and its part in the cluster's deploys (docs/protocol.md §19).
    cluster = ClusterLink(options.cluster, lambda: [g.name for g in robot.plan.groups]) if options.cluster else None
    deploys = ClusterDeploys(cluster) if cluster is not None else None
    robot = UrbanRobot(
        settings,
        store,
        credentials,
        bus=bus,
        allowed_hosts=(options.host, *options.allowed_hosts),
        blocking_io=seams.blocking_io,
        plan=plan,
        cluster=cluster,
    )
    children = Children(
        robot,
        options.command,
        cwd=options.helium_path,
        log_dir=options.log_dir or options.helium_path / "log",
        registry=options.state_dir / "children.json",
        policy=options.policy,
        run_as=run_as,
        may_spawn=lambda: robot.snapshot().spawning,  # a spawn that waited out its back-off may still start?
        launch=seams.launch,
        blocking_io=seams.blocking_io,
        plan=plan,
    )
    deployer = Deployer(
        robot,
        children,
        seams.git or Git(options.helium_path),
        branch=options.branch,
        releases_dir=options.state_dir / "releases",
        bad_commits_file=options.state_dir / "bad_commits.json",
        install=options.install,
        verdict_timeout=options.deploy_timeout,
        install_timeout=options.install_timeout,
        cluster=deploys,
    )
    http = httpx.AsyncClient(timeout=15)
    notifier = _notifier(http, options)
    tracker = StatusTracker(robot, deployer=deployer)

    # -- who hears what: every subscription of a supervisor ------------------------------------------
    if seams.on_spawn == "top up":
        bus.subscribe(Spawn, lambda spawn: children.top_up(spawn.reason, group=spawn.group))
    else:
        bus.subscribe(Spawn, lambda spawn: children.spawn(spawn.reason, group=spawn.group))
    bus.subscribe(TopUp, lambda top_up: children.top_up(top_up.reason, at_once=True, group=top_up.group))
    for kind in (Send, Close, Kill, CheckFrozen):
        bus.subscribe(kind, children.on_action)  # who was asked to go; fenced children killed; stops probed
    bus.subscribe(Verdict, deployer.on_action)
    bus.subscribe(RollBack, deployer.on_action)
    if notifier is not None:
        bus.subscribe(Notify, notifier.notify)
    bus.subscribe(Event, tracker.note)
    bus.subscribe(Action, tracker.observe)
    bus.subscribe(Handled, tracker.noted)
    bus.subscribe(DeployResult, tracker.deployed)

    if cluster is not None and deploys is not None:
        bus.subscribe(Claim, cluster.on_claim)  # the core needs a group's lease key in etcd for a worker ...
        bus.subscribe(Yield, cluster.on_yield)  # ... or gives it up: nobody of the group can run here
        bus.subscribe(TryAgain, lambda e: deploys.try_again() if e.sid in robot.fleet.admins else None)
        cluster.install_replica_route(robot)

    # -- what the port serves -------------------------------------------------------------------------
    token = options.admin_token
    install_status_routes(
        robot,
        tracker,
        admin_token=token,
        deployer=deployer,
        children=children,
        notifier=notifier,
        cluster=deploys.view if deploys is not None else None,
    )
    dashboard = install_dashboard(
        robot, tracker, admin_token=token, deployer=deployer, children=children, notifier=notifier
    )
    bus.subscribe(ViewsChanged, dashboard.poke)
    app = App(
        options, seams, store, bus, robot, children, deployer, notifier, tracker, dashboard, http, cluster, deploys
    )
    bus.subscribe(Handled, app._handled)
    _control_routes(app)
    return app


async def serve(
    options: Options, *, seams: Seams = Seams(), task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED
) -> None:
    """``build(options, seams=seams).run()``: one supervisor, until ``App.stop``."""
    await build(options, seams=seams).run(task_status=task_status)


def _open_releases_to_workers(state_dir: Path) -> None:
    """Children running as ``workers.user`` run from ``<state-dir>/releases/<commit>``: they may pass through the
    state directory (0711: no listing; its files stay 0600, the supervisor's) and the releases directory to
    their own release, whose files git wrote readable. Nothing else in the state directory is theirs to read."""
    state_dir.chmod(0o711)
    releases = state_dir / "releases"
    releases.mkdir(mode=0o711, exist_ok=True)
    releases.chmod(0o711)


def _notifier(http: httpx.AsyncClient, options: Options) -> Notifier | None:
    destination = options.notify_destination if options.discord_token else None  # the bot's route needs both
    if destination is None and options.notify_webhook is None:
        return None
    return Notifier(
        http,
        options.discord_token,
        destination,
        dm=options.notify_dm,
        base_url=options.discord_api_url,
        webhook=options.notify_webhook,
    )


def _control_routes(app: App) -> None:
    """The webhook and the admin API: the ways in that change what runs."""
    robot, deployer, options = app.robot, app.deployer, app.options
    gate = WebhookGate(
        WebhookConfig(
            secret=options.webhook_secret, branch=options.branch, require_deploy_tag=options.require_deploy_tag
        )
    )
    robot.server.add_route(
        "POST",
        "/webhook/github",
        webhook_route(gate, lambda commit: deployer.request_push(commit.sha)),  # the verified commit, no other
        max_body=gate.config.max_body,  # 413 from Content-Length, before the body is read
    )

    def deploy() -> dict[str, object]:
        deployer.request("admin API")
        return {"deploy": "requested"}

    async def deploy_and_wait() -> dict[str, object]:
        result = await deployer.outcome_of(deployer.request("admin API"))
        done: dict[str, object] = {
            "deploy": "done",
            "commit": result.commit,
            "outcome": result.outcome,
            "detail": result.detail,
        }
        if result.groups > 1:  # a sharded bot's rollout: how far it got
            done |= {"failed_group": result.failed_group, "groups_moved": result.groups_moved, "groups": result.groups}
        return done

    def try_again() -> dict[str, object]:
        if app.cluster_deploys is not None:
            app.cluster_deploys.try_again()  # the cluster's deploy state too: every host follows it
        deployer.forget_bad_commits()
        robot.submit_nowait(TryAgain(None))
        deployer.request("try_again")
        return {"try_again": "requested"}

    def stop() -> dict[str, object]:
        app.stop("stop requested through the admin API")
        return {"stop": "requested"}

    deploy_route = admin_route(options.admin_token, deploy, robot.logins, wait=deploy_and_wait)
    robot.server.add_route("POST", "/api/deploy", deploy_route)
    robot.server.add_route("POST", "/api/try-again", admin_route(options.admin_token, try_again, robot.logins))
    robot.server.add_route("POST", "/api/stop", admin_route(options.admin_token, stop, robot.logins))
