"""Everything wired together: supervisor service, children, deployer, webhook, admin API, dashboard, Discord.

``serve(options)`` runs one supervisor until ``App.stop(reason)`` (or until cancelled). The operator CLI
(``urban_robot.config``) builds ``Options`` from flags, environment and a config file; tests
and library users build it directly.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import httpx
import trio

from ._api import admin_route
from ._auth import Credentials
from ._children import ChildPolicy, Children, RunAs
from ._core import Settings
from ._dashboard import install_dashboard
from ._deploy import Deployer
from ._events import Stopping, TryAgain
from ._git import Git
from ._notify import DISCORD_API, DiscordLogHandler, DiscordWebhook, Notifier
from ._service import UrbanRobot
from ._status import install_status_routes
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


NOTIFY_FLUSH_TIMEOUT = 5.0  # seconds the last notifications (the stopping one) get to reach Discord
ANSWER_GRACE = 0.1  # seconds for the HTTP answer to a stop request to leave when no worker was left to wait for


@attrs.define(eq=False)
class App:
    """The running parts, for tests and the CLI to look at."""

    robot: UrbanRobot
    children: Children
    deployer: Deployer
    notifier: Notifier | None
    url: str
    stop_requested: trio.Event = attrs.Factory(trio.Event)  # set: serve() stops its workers and returns
    stop_reason: str | None = None

    def stop(self, reason: str = "stop requested") -> bool:
        """Stop this supervisor, the one way it stops: signals, the admin API and dev mode all come here.

        ``serve`` then asks every worker to shut down (the core's ``Stopping``: no promotion, no spawn from
        then on), waits for them to exit, signals the ones left (``Children.stop_all``) and returns.
        False if a stop was under way already (its reason stands).
        """
        if self.stop_requested.is_set():
            return False
        self.stop_reason = reason
        self.stop_requested.set()
        return True


async def serve(options: Options, *, task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED) -> None:
    run_as = RunAs.resolve(options.workers_user, options.workers_group) if options.workers_user else None
    store = StateStore(options.state_dir)
    store.prepare()
    store.lock()
    if run_as is not None:
        _open_releases_to_workers(options.state_dir)
    credentials = Credentials(
        store.secret_key(), admin_token=options.admin_token, worker_secrets=dict(options.worker_secrets)
    )
    async with httpx.AsyncClient(timeout=15) as http, trio.open_nursery() as nursery:
        notifier = await _start_notifier(nursery, http, options)
        robot = UrbanRobot(
            options.settings,
            store,
            credentials,
            notify=notifier.notify if notifier else None,
            allowed_hosts=(options.host, *options.allowed_hosts),
        )
        port = await nursery.start(robot.run, options.host, options.port)
        url = f"http://{options.host}:{port}"
        children = Children(
            robot,
            options.command,
            cwd=options.helium_path,
            url=url,
            log_dir=options.helium_path / "log",
            registry=options.state_dir / "children.json",
            policy=options.policy,
            run_as=run_as,
        )
        robot.spawner = children.spawn
        robot.top_up = lambda reason: children.top_up(reason, at_once=True)
        robot.spawned_generation = children.generation_of  # a child's generation is ours to say, not its own
        robot.spawned_release = children.release_of
        children.may_spawn = lambda: robot.core.is_sane and robot.core.stopping is None
        robot.observers.append(children.on_action)
        deployer = Deployer(
            robot,
            children,
            Git(options.helium_path),
            branch=options.branch,
            releases_dir=options.state_dir / "releases",
            bad_commits_file=options.state_dir / "bad_commits.json",
            install=options.install,
            verdict_timeout=options.deploy_timeout,
            install_timeout=options.install_timeout,
        )
        tracker = install_status_routes(
            robot, admin_token=options.admin_token, deployer=deployer, children=children, notifier=notifier
        )
        install_dashboard(
            robot, tracker, admin_token=options.admin_token, deployer=deployer, children=children, notifier=notifier
        )
        app = App(robot, children, deployer, notifier, url)
        _routes(robot, deployer, options, app)
        await deployer.resume()  # workers start from the last known good release, not the checkout
        await nursery.start(children.run, 1 + options.standbys)
        await nursery.start(
            lambda task_status: deployer.run(poll_interval=options.poll_interval, task_status=task_status)
        )
        log.info("supervising %s from %s", " ".join(options.command), options.helium_path)
        task_status.started(app)
        try:
            await app.stop_requested.wait()
            await _stop(app, options.policy)
            nursery.cancel_scope.cancel()
        finally:
            store.unlock()


def _open_releases_to_workers(state_dir: Path) -> None:
    """Children running as ``workers.user`` run from ``<state-dir>/releases/<commit>``: they may pass through the
    state directory (0711: no listing; its files stay 0600, the supervisor's) and the releases directory to
    their own release, whose files git wrote readable. Nothing else in the state directory is theirs to read."""
    state_dir.chmod(0o711)
    releases = state_dir / "releases"
    releases.mkdir(mode=0o711, exist_ok=True)
    releases.chmod(0o711)


async def _stop(app: App, policy: ChildPolicy) -> None:
    """Ask every worker to shut down, wait for their exits (SIGTERM, then SIGKILL, the ones that stay), keep the
    final cache on disk and let the stopping notification leave. A holder that stopped leaves no lease behind:
    its acknowledgement or its exit released it in state.json, so the next start promotes at once."""
    reason = app.stop_reason or "stop requested"
    log.info(
        "stopping (%s): every worker is asked to shut down; SIGTERM after %gs, SIGKILL %gs later",
        reason,
        policy.term_timeout,
        policy.kill_timeout,
    )
    await app.robot.submit(Stopping(reason))
    await app.children.stop_all()
    await app.robot.caches_written()
    if app.notifier is not None:
        with trio.move_on_after(NOTIFY_FLUSH_TIMEOUT):
            await app.notifier.flush()
    await trio.sleep(ANSWER_GRACE)
    left = ", ".join(app.children.children)
    if left:
        log.warning("stopped; still not gone after SIGKILL: %s", left)
    else:
        log.info("stopped: no worker is left")


async def _start_notifier(nursery: trio.Nursery, http: httpx.AsyncClient, options: Options) -> Notifier | None:
    destination = options.notify_destination if options.discord_token else None  # the bot's route needs both
    if destination is None and options.notify_webhook is None:
        return None
    notifier = Notifier(
        http,
        options.discord_token,
        destination,
        dm=options.notify_dm,
        base_url=options.discord_api_url,
        webhook=options.notify_webhook,
    )
    await nursery.start(notifier.run)
    logging.getLogger().addHandler(DiscordLogHandler(notifier, options.discord_log_level))
    return notifier


def _routes(robot: UrbanRobot, deployer: Deployer, options: Options, app: App) -> None:
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
        return {"deploy": "done", "commit": result.commit, "outcome": result.outcome, "detail": result.detail}

    def try_again() -> dict[str, object]:
        deployer.forget_bad_commits()
        robot.submit_nowait(TryAgain(None))
        deployer.request("try_again")
        return {"try_again": "requested"}

    deploy_route = admin_route(options.admin_token, deploy, robot.logins, wait=deploy_and_wait)
    robot.server.add_route("POST", "/api/deploy", deploy_route)
    robot.server.add_route("POST", "/api/try-again", admin_route(options.admin_token, try_again, robot.logins))

    def stop() -> dict[str, object]:
        app.stop("stop requested through the admin API")
        return {"stop": "requested"}

    robot.server.add_route("POST", "/api/stop", admin_route(options.admin_token, stop, robot.logins))
