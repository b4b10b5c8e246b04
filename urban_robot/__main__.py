"""``python -m urban_robot``: with no configuration, a demo — the supervisor with two simulated workers.

One worker runs, one stands by warm. Kill the running one (``kill <pid>``) and
watch the standby take over within milliseconds; a replacement is spawned
and health-checked. No Discord, no token needed. (Supervising a real bot from a
config file is the operator CLI's job: docs/deploying.md shows the library way
until then.)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import trio

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


async def _main(options: Options) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        app: App = await nursery.start(serve, options)
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
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--state-dir", type=Path, default=Path(".urban-robot"))
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(_main, demo_options(args.host, args.port, args.state_dir))
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        message = _explain(exc, f"{args.host}:{args.port}")
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
