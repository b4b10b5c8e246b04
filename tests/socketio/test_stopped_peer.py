"""A peer stopped by a signal (SIGSTOP: its socket open, nothing read) while we send to it, then closed from our
side: the server must go on serving everyone else, and the close must end in bounded time.

Found by the chaos soak (session 4): closing a just-stopped standby's connection while its cache was being
pushed left the supervisor's port unserved. The peer here is a real process, really stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests._helpers import raw_client
from urban_robot.socketio import Server

pytestmark = pytest.mark.slow

PEER = """
import json, sys, trio, trio_websocket
async def main():
    url = sys.argv[1].replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with trio_websocket.open_websocket_url(url, message_queue_size=0) as ws:
        await ws.get_message()  # OPEN
        await ws.send_message("40")
        connected = await ws.get_message()
        print(json.loads(connected[2:])["sid"], flush=True)
        await trio.sleep_forever()  # reads nothing more: the test stops this process anyway
trio.run(main)
"""


async def test_closing_a_stopped_peer_we_were_sending_to_leaves_the_server_serving(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = Server(async_handlers=False, max_payload=8 * 1024 * 1024)
    served = trio.Event()

    async def serve(task_status: trio.TaskStatus[int]) -> None:
        try:
            await server.serve("127.0.0.1", 0, task_status=task_status)
        finally:
            served.set()

    url = f"http://127.0.0.1:{await nursery.start(serve)}"
    peer = subprocess.Popen([sys.executable, "-c", PEER, url], stdout=subprocess.PIPE, text=True)
    try:
        with trio.fail_after(20):
            assert peer.stdout is not None
            sid = (await trio.to_thread.run_sync(peer.stdout.readline)).strip()
            while sid not in server.sockets:
                await trio.sleep(0.01)  # the CONNECT is handled in the server's task: nothing to wait on here
        os.kill(peer.pid, signal.SIGSTOP)
        pushed = trio.Event()

        async def push() -> None:
            try:
                for _ in range(64):  # 64 MiB: far beyond what the kernel buffers for a reader that reads nothing
                    await server.emit("cache", b"\0" * (1024 * 1024), to=sid)
            finally:
                pushed.set()

        nursery.start_soon(push)
        await trio.sleep(1)  # let the sends fill the buffers and block (the condition under test, not a wait)
        assert not pushed.is_set()  # the sender is stuck on the stopped peer
        server.close(sid)
        with trio.fail_after(10):  # the server still serves newcomers
            async with raw_client(url) as fresh:
                assert await fresh.connect_namespace()
        with trio.fail_after(10):  # the close is bounded (a few seconds), and so the stuck sender's end
            await pushed.wait()
        await server.shutdown()
        with trio.fail_after(10):  # no session holds the server open: its goodbye to the stopped peer was bounded
            await served.wait()
    finally:
        peer.kill()
        peer.wait()
