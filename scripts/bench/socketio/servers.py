"""The three echo servers the benchmark compares, one per process.

``python servers.py KIND`` binds 127.0.0.1 on a free port, prints ``PORT <n>``
once it accepts connections, and serves until killed. Every kind answers the
``echo`` event with its argument as the ack and takes messages up to
``MAX_PAYLOAD`` bytes, so the 10 MB test fits everywhere. The peers start as
they are usually deployed: uvicorn on uvloop through its own loop factory,
aiohttp through ``web.run_app``.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

MAX_PAYLOAD = 20_000_000
PING_INTERVAL = 25
PING_TIMEOUT = 20
KINDS = ("urban-robot", "uvicorn", "aiohttp")


def _announce(port: int) -> None:
    # run.py waits for this line: it means the listening socket is being served.
    print(f"PORT {port}", flush=True)


def _listening_socket() -> socket.socket:
    # Binding here (port 0) rather than in run.py leaves no window for another
    # process to take the port between choosing and binding it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    return sock


def run_urban_robot() -> None:
    import trio

    from urban_robot.socketio import Server

    server = Server(
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        max_payload=MAX_PAYLOAD,
        connect_timeout=45,
        cors_allowed_origins="*",
    )

    @server.on("echo")
    async def echo(sid: str, data: Any) -> Any:
        return data

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            _announce(await nursery.start(server.serve, "127.0.0.1", 0))

    trio.run(main)


def _python_socketio(async_mode: str) -> Any:
    import socketio

    sio = socketio.AsyncServer(
        async_mode=async_mode,
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        max_http_buffer_size=MAX_PAYLOAD,
        cors_allowed_origins="*",
    )

    async def echo(sid: str, data: Any) -> Any:
        return data

    sio.on("echo", echo)
    return sio


def run_uvicorn() -> None:
    import asyncio

    import socketio
    import uvicorn

    app = socketio.ASGIApp(_python_socketio("asgi"))
    # uvicorn as ``uvicorn.run`` starts it with the ``standard`` extra: uvloop (its fastest loop), and by
    # default httptools and websockets' sans-I/O protocol. ``Server.run`` builds the loop from
    # ``get_loop_factory``; a plain ``asyncio.run`` would leave uvicorn on the standard loop.
    config = uvicorn.Config(
        app,
        loop="uvloop",
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws_max_size=MAX_PAYLOAD,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[_listening_socket()]))
        while not server.started:  # uvicorn has no "ready" callback
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        _announce(server.servers[0].sockets[0].getsockname()[1])
        await task

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(main())


def run_aiohttp() -> None:
    from aiohttp import web

    app = web.Application(client_max_size=MAX_PAYLOAD)
    _python_socketio("aiohttp").attach(app)
    sock = _listening_socket()
    # web.run_app with its defaults, as an aiohttp service is usually started; its ``print``
    # runs once the site is serving, which is when run.py may connect.
    web.run_app(app, sock=sock, print=lambda *_args: _announce(sock.getsockname()[1]))


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in KINDS:
        print(f"usage: servers.py {{{','.join(KINDS)}}}", file=sys.stderr)
        return 2
    {"urban-robot": run_urban_robot, "uvicorn": run_uvicorn, "aiohttp": run_aiohttp}[argv[0]]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
