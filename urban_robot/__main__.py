"""``python -m urban_robot``: with no configuration, a demo — the supervisor with two simulated workers.

With a configuration (``urban-robot.toml``, environment, ``.env``: docs/configuration.md) naming the
bot's checkout (``helium_path``), it supervises the real bot. It prints the dashboard's address.

In the demo one worker runs, one stands by warm. Kill the running one (``kill <pid>``) and watch
the standby take over within milliseconds; a replacement is spawned and health-checked. No
Discord, no token needed. The subcommands talk to a running supervisor; ``dev PATH`` hot-swaps
each saved change of a bot's source tree through the health gate.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path

import trio

from ._bootstrap import config_errors, dashboard_line, prepare, run_until_stopped
from .cli import SUBCOMMANDS, read_admin_token, run_command, run_subcommand, supervisor_url, worker_logs
from .config import KEYS, ConfigError, load_config
from .logs import FORMATS
from .supervisor import App, Options, Settings, TimerFired, serve
from .systemd import Liveness, SdNotify, run_watchdog, watchdog_interval

DEMO_WORKER = (sys.executable, "-m", "urban_robot.testing.worker")
EXPLICIT_FLAGS = {"host", "port", "state_dir", "helium_path", "log_level"}  # typed flags of their own
FLAG_DEST = "setting:"  # argparse destination prefix of the generic --<key> flags
CONNECTION_FLAGS = (  # accepted after a subcommand's name too; given in both places, the one after it wins
    ("--config", Path, "urban-robot.toml (default: $URBAN_ROBOT_CONFIG or ./urban-robot.toml)"),
    ("--host", str, "the supervisor's host (default: from the configuration)"),
    ("--port", int, "the supervisor's port (default: from the configuration)"),
    ("--state-dir", Path, "the supervisor's state directory, where admin.token is (default: from the configuration)"),
)


def _connection_flags(sub: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """``status --port 8080`` as well as ``--port 8080 status``: the same destinations as the top-level flags,
    with no default of their own, so a flag after the subcommand's name overrides one before it and an absent
    one leaves the top-level value alone."""
    for flag, kind, help_text in CONNECTION_FLAGS:
        if flag not in skip:
            sub.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)


def demo_options(host: str, port: int, state_dir: Path) -> Options:
    demo_dir = state_dir / "demo-bot"
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, as every state directory (issue 13)
    demo_dir.mkdir(mode=0o700, exist_ok=True)
    settings = Settings(token="demo-no-discord", interval=5, grace=5, lease_margin=1, spawn_workers=True)
    return Options(
        helium_path=demo_dir,
        settings=settings,
        command=DEMO_WORKER,
        state_dir=state_dir,
        host=host,
        port=port,
        standbys=1,
    )


def _say(line: str, again: bool) -> None:
    logging.getLogger("urban_robot").log(logging.WARNING if again else logging.INFO, "%s", line)


async def _main(options: Options, demo: bool) -> None:
    async def started(app: App, nursery: trio.Nursery, notify: SdNotify) -> None:
        await _started(app, options, demo, nursery, notify)

    await run_until_stopped(functools.partial(serve, options), say=_say, started=started)


async def _started(app: App, options: Options, demo: bool, nursery: trio.Nursery, notify: SdNotify) -> None:
    interval = watchdog_interval()
    if notify.enabled and interval is not None:
        # Healthy while the core's event loop answers (TimerFired only acts on expired deadlines):
        # a hung loop stops the pings, and systemd restarts the supervisor.
        liveness = Liveness(lambda: app.robot.submit(TimerFired()), every=interval / 2, stale_after=interval * 1.5)
        await nursery.start(liveness.run)
        nursery.start_soon(run_watchdog, notify, liveness, interval)
    await notify.ready(f"supervising on {app.url}")
    nursery.start_soon(_follow_health, app, notify)
    print(dashboard_line(app.url, options.admin_token, options.state_dir, sys.stdout), flush=True)
    port = app.url.rsplit(":", 1)[1]
    print(
        f"Admin API on {app.url}/api/ (credential in {options.state_dir / 'admin.token'} unless configured);"
        f" try: python -m urban_robot --port {port} --state-dir {options.state_dir} status",
        flush=True,
    )
    if not demo:
        print(
            f"Urban Robot on {app.url} — supervising {' '.join(options.command)} in {options.helium_path}",
            flush=True,
        )
        return
    print(
        f"Urban Robot demo on {app.url} — supervising two simulated workers (state in {options.state_dir}).",
        flush=True,
    )
    await trio.sleep(1)
    lease = app.robot.snapshot().lease
    running = lease.identity if lease is not None else None

    def described(identity: str, pid: int) -> str:
        return f"{identity} pid {pid}" + (" (running)" if identity == running else "")

    pids = ", ".join(described(identity, child.pid) for identity, child in app.children.children.items())
    print(f"Workers: {pids}. Kill the running one and watch the standby take over; Ctrl+C stops.", flush=True)


def _reader_gone() -> int:
    """``status | head``: the reader left. No traceback, and none at exit when Python flushes stdout again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


async def _follow_health(app: App, notify: SdNotify, every: float = 1.0) -> None:
    """systemd's STATUS= follows the bot's health (``systemctl status`` says "crash loop", not "supervising"),
    looked at after the core handled something, at most once a ``every`` seconds."""
    if not notify.enabled:
        return
    said = ""
    while not app.stop_requested.is_set():  # once stopping, STOPPING=1 says so
        changed = app.changed()  # taken before the look: a change after it wakes us at once
        line = app.robot.snapshot().health_line
        if line != said:
            await notify.status(line)
            said = line
        await trio.sleep(every)
        await changed.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="urban-robot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, help="urban-robot.toml (default: $URBAN_ROBOT_CONFIG or ./urban-robot.toml)"
    )
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--helium-path", type=Path, help="the bot's git checkout (without one: the demo)")
    parser.add_argument("--log-level")
    settings = parser.add_argument_group("every other setting (docs/configuration.md; flags win over all else)")
    for key in KEYS:
        if key.flag is not None and key.name not in EXPLICIT_FLAGS:
            settings.add_argument(
                key.flag, dest=FLAG_DEST + key.name, metavar="VALUE", help=f"{key.meaning} [{key.env}]"
            )
    commands = parser.add_subparsers(dest="subcommand", metavar="{status,try-again,deploy,stop,logs,dev}")
    dev = commands.add_parser(
        "dev",
        help="watch a bot's source tree; health-check each change and hot-swap it in (docs/deploying.md)",
        description="Watch PATH; on each change run a copy of it as a candidate through the health gate and "
        "hot-swap it in with the cache. A broken change leaves the running worker alone and says why.",
    )
    dev.add_argument("path", type=Path, help="the bot's source tree (need not be a git repository)")
    dev.add_argument("--command", help='how to start one worker, run in a copy of PATH (default: "python main.py")')
    dev.add_argument("--port", type=int, default=argparse.SUPPRESS, help="port of the supervisor (0: any free port)")
    dev.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="dev mode's own state (default: PATH/.urban-robot-dev)",
    )
    dev.add_argument("--ignore", action="append", default=[], metavar="PATTERN", help="glob of paths not to watch/copy")
    _connection_flags(dev, skip=("--port", "--state-dir"))
    logs = commands.add_parser("logs", help="print a worker's log (the newest worker's by default)")
    logs.add_argument("worker", nargs="?", help="the worker's identity, e.g. child-3f2a1c-2 (see status)")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing; without a worker: every worker's lines, prefixed, new workers too (Ctrl+C stops)",
    )
    _connection_flags(logs)
    logs.add_argument("--helium-path", type=Path, default=argparse.SUPPRESS, help="the bot's checkout (its log/)")
    for name, help_text in (
        ("status", "show the running supervisor's workers and state"),
        ("try-again", "forget known-bad commits, set is_sane again, and deploy"),
        ("deploy", "deploy the branch head now"),
        ("stop", "stop the supervisor and its workers"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--url", help="the supervisor's address (default: from --host/--port and the configuration)")
        sub.add_argument("--json", action="store_true", help="print the supervisor's JSON answer as it is")
        _connection_flags(sub)
        if name == "deploy":
            sub.add_argument("--wait", action="store_true", help="wait for the deploy to end and print its outcome")
    parser.add_argument("--log-format", choices=FORMATS, default="text", help="text (default) or json lines")
    args = parser.parse_args(argv)
    if args.subcommand == "dev":
        from . import dev as dev_mode  # watchfiles is loaded only for dev mode

        return dev_mode.main(
            args.path,
            command=args.command,
            host=args.host,
            port=args.port,
            state_dir=args.state_dir,
            ignore=args.ignore,
            config_path=args.config,
            log_level=args.log_level,
            log_format=args.log_format,
        )
    flags = {
        "host": args.host,
        "port": args.port,
        "state_dir": args.state_dir,
        "helium_path": args.helium_path,
        "log_level": args.log_level,
    }
    flags.update({name[len(FLAG_DEST) :]: value for name, value in vars(args).items() if name.startswith(FLAG_DEST)})
    try:
        config = load_config(flags, os.environ, args.config, Path.cwd())
    except ConfigError as exc:
        return config_errors(exc)
    configured_token = config.options.admin_token if config.options else None
    if args.subcommand == "logs":
        helium_path = config.options.helium_path if config.options else config.state_dir / "demo-bot"
        try:
            return worker_logs(
                config.state_dir, args.worker, sys.stdout, follow=args.follow, log_dir=helium_path / "log"
            )
        except KeyboardInterrupt:
            return 0
        except BrokenPipeError:
            return _reader_gone()
    if args.subcommand in SUBCOMMANDS:  # before logging is set up: httpx would log every request
        try:
            return run_subcommand(
                args.subcommand,
                url=args.url or supervisor_url(config.host, config.port),
                token=read_admin_token(config.state_dir, configured_token),
                out=sys.stdout,
                json=args.json,
                state_dir=config.state_dir,
                wait=getattr(args, "wait", False),
            )
        except BrokenPipeError:
            return _reader_gone()
    prepared = prepare(
        config.options or demo_options(config.host, config.port, config.state_dir), config.log_level, args.log_format
    )
    if isinstance(prepared, int):
        return prepared
    return run_command(_main, prepared, config.options is None, address=f"{config.host}:{config.port}")


if __name__ == "__main__":
    sys.exit(main())
