"""``python -m urban_robot``: with no configuration, a demo — the supervisor with two simulated workers.

With a configuration (``urban-robot.toml``, environment, ``.env``: docs/configuration.md) naming the
bot's checkout (``helium_path``), it supervises the real bot.

One worker runs, one stands by warm. Kill the running one (``kill <pid>``) and
watch the standby take over within milliseconds; a replacement is spawned
and health-checked. No Discord, no token needed. (Supervising a real bot from a
config file is the operator CLI's job: docs/deploying.md shows the library way
until then.)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from .config import ConfigError, load_config
from .supervisor import Settings, StateError
from .supervisor._app import App, Options, serve

DEMO_WORKER = (sys.executable, "-m", "urban_robot.testing.worker")


def demo_options(host: str, port: int, state_dir: Path) -> Options:
    demo_dir = state_dir / "demo-bot"
    demo_dir.mkdir(parents=True, exist_ok=True)
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


async def _stop_on_signal(cancel_scope: trio.CancelScope) -> None:
    """SIGTERM/SIGINT end the supervisor in order: its children are stopped, not orphaned."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logging.getLogger("urban_robot").info("%s: stopping", signal.Signals(signum).name)
            cancel_scope.cancel()
            return


async def _main(options: Options, demo: bool) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        app: App = await nursery.start(serve, options)
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
        pids = ", ".join(f"{identity} pid {child.pid}" for identity, child in app.children.children.items())
        print(f"Workers: {pids}. Kill the running one and watch the standby take over; Ctrl+C stops.", flush=True)


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
    args = parser.parse_args(argv)
    flags = {
        "host": args.host,
        "port": args.port,
        "state_dir": args.state_dir,
        "helium_path": args.helium_path,
        "log_level": args.log_level,
    }
    try:
        config = load_config(flags, os.environ, args.config, Path.cwd())
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"urban-robot: configuration: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = config.options or demo_options(config.host, config.port, config.state_dir)
    try:
        trio.run(_main, options, config.options is None)
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        message = _explain(exc, f"{config.host}:{config.port}")
        if message is None:
            raise
        print(f"urban-robot: {message}", file=sys.stderr)
        return 1
    return 0


def _explain(exc: BaseException, address: str) -> str | None:
    """One line for the errors a user can cause (found inside trio's exception groups), else None."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _explain(inner, address)
            if found is not None:
                return found
        return None
    if isinstance(exc, StateError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot listen on {address}: {exc.strerror}; pick another --port"
    return None


if __name__ == "__main__":
    sys.exit(main())
