"""Run the fake Discord as its own process: ``python -m urban_robot.testing.fake_discord --port 0 --print-port``.

With ``--print-port`` the bound port is the first line on stdout, once connections are accepted. The
token comes from ``URBAN_ROBOT_FAKE_DISCORD_TOKEN`` (default ``fake-discord-token``), never from the
command line, where ``ps`` would show it. Drive it through ``/_fake/...`` (see ``_control.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial

import trio

from ._fake import DEFAULT_TOKEN, FakeDiscord

TOKEN_ENV = "URBAN_ROBOT_FAKE_DISCORD_TOKEN"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m urban_robot.testing.fake_discord", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--print-port", action="store_true", help="print the bound port on stdout once listening")
    parser.add_argument("--heartbeat-interval", type=float, default=41.25, help="seconds, sent in HELLO")
    parser.add_argument("--resume-window", type=float, default=60.0, help="seconds a session stays resumable")
    parser.add_argument(
        "--intents",
        default="members,presences,message_content",
        help="privileged intents enabled for the application, comma-separated ('' for none)",
    )
    return parser


async def _main(args: argparse.Namespace) -> None:
    fake = FakeDiscord(
        token=os.environ.get(TOKEN_ENV) or DEFAULT_TOKEN,
        enabled_intents=[name for name in args.intents.split(",") if name],
        heartbeat_interval=args.heartbeat_interval,
        resume_window=args.resume_window,
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(fake.serve, args.host, args.port))
        if args.print_port:
            print(port, flush=True)
        logging.getLogger(__name__).info("fake Discord at %s (control API under /_fake/)", fake.url)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(_main, args)
    except ValueError as exc:
        print(f"fake Discord: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
