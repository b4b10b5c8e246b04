"""``python -m urban_robot``: until the supervisor lands, a Socket.IO echo server."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import trio

from .socketio import Server


def build_echo_server() -> Server:
    server = Server(cors_allowed_origins="*")

    @server.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        logging.getLogger("urban_robot").info("client %s connected from %s", sid, environ.get("REMOTE_ADDR"))

    @server.on("echo")
    async def echo(sid: str, *args: Any) -> tuple[Any, ...]:
        await server.emit("echo", args, to=sid)
        return args

    @server.on("disconnect")
    async def disconnect(sid: str, reason: str) -> None:
        logging.getLogger("urban_robot").info("client %s left: %s", sid, reason)

    return server


async def _main(host: str, port: int) -> None:
    server = build_echo_server()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, host, port)
        print(f"Urban Robot echo server on http://{host}:{bound}/socket.io/ (Ctrl+C stops)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="urban-robot", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(_main, args.host, args.port)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(
            f"urban-robot: cannot listen on {args.host}:{args.port}: {exc.strerror}; pick another --port",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
