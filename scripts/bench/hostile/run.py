"""Hostile-peer benchmark: what strangers cost a real supervisor while a worker keeps heartbeating.

A real supervisor (``python -m urban_robot`` in its own process, real worker children) on 127.0.0.1.
A measuring worker connects with a child secret minted from the state directory's key and sends a
heartbeat every 50 ms, timing each answer. Then ``--connections`` hostile connections (none
authenticated) of six kinds, in equal parts, are opened and held for ``--seconds``:

- held body:    POST /webhook/github announcing 50 MB, 1 MiB sent, then nothing
- trickled body: POST /api/deploy announcing 2,000 bytes, one byte a second
- half-open WebSocket: upgraded, half a frame header, then nothing
- parked polling session: an Engine.IO handshake, its connection closed, the session left to wait
- JSON bomb: a CONNECT whose auth is 2 MiB of ``[],``
- unfinished text message: a fragmented text message of astral characters, 2 MiB, never finished

Then one stranger knocks (refused CONNECTs, one WebSocket) for 2 s and the supervisor's log lines
are counted. Measured: the supervisor's RSS (``/proc/<pid>/status``) above its level before the
attack, the worst and median heartbeat answer during it, and log lines per second from the stranger.

``--code DIR`` runs the supervisor from another checkout (``--code /work/main`` for "before").
The last line printed is one JSON object:
{"connections", "rss_growth_mb", "heartbeat_max_ms", "heartbeat_p50_ms", "stranger_lines_per_s", ...}
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import wsproto
import wsproto.events

HOST = "127.0.0.1"
MiB = 1024 * 1024
KINDS = ("held_body", "trickled_body", "half_open_ws", "parked_polling", "json_bomb", "unfinished_text")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def start_supervisor(root: Path, port: int, code: Path | None) -> subprocess.Popen[bytes]:
    bot = root / "bot"
    bot.mkdir()
    (bot / "main.py").write_text("")
    git = ["git", "-C", str(bot), "-c", "user.name=b", "-c", "user.email=b@b"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], check=True)
    env = dict(os.environ)
    env |= {
        "BOT_TOKEN": "bench-bot-token-not-real",
        "URBAN_ROBOT_COMMAND": f"{sys.executable} -m urban_robot.testing.worker",
        "URBAN_ROBOT_WEBHOOK_SECRET": "bench-webhook-secret-0123456789",
        "URBAN_ROBOT_STANDBYS": "0",
    }
    if code is not None:
        env["PYTHONPATH"] = str(code)
    argv = [sys.executable, "-m", "urban_robot", "--helium-path", str(bot), "--state-dir", str(root / "state")]
    argv += ["--port", str(port), "--log-level", "INFO"]
    log = (root / "supervisor.log").open("wb")
    return subprocess.Popen(argv, cwd=code or root, env=env, stdout=log, stderr=subprocess.STDOUT)


def log_lines(root: Path) -> int:
    return (root / "supervisor.log").read_bytes().count(b"\n")


async def wait_ready(root: Path, port: int) -> None:
    with trio.fail_after(60):
        while not (root / "state" / "secret.key").exists():
            await trio.sleep(0.1)
        while True:
            try:
                stream = await trio.open_tcp_stream(HOST, port)
                await stream.aclose()
                return
            except OSError:
                await trio.sleep(0.1)


# ---- a small WebSocket client (wsproto over a trio stream) ----


class WS:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.messages: list[str | bytes] = []
        self._parts: list[Any] = []

    @classmethod
    async def open(cls, port: int) -> WS:
        ws = cls(await trio.open_tcp_stream(HOST, port))
        await ws.stream.send_all(
            ws.conn.send(wsproto.events.Request(host=HOST, target="/socket.io/?EIO=4&transport=websocket"))
        )
        while not ws.conn.state == wsproto.connection.ConnectionState.OPEN:
            await ws._read()
        return ws

    async def _read(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError
        self.conn.receive_data(data)
        for event in self.conn.events():
            if isinstance(event, wsproto.events.TextMessage | wsproto.events.BytesMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    joined = "".join(self._parts) if isinstance(event.data, str) else b"".join(self._parts)
                    self.messages.append(joined)
                    self._parts = []
            elif isinstance(event, wsproto.events.Ping):
                await self.stream.send_all(self.conn.send(event.response()))
            elif isinstance(event, wsproto.events.CloseConnection):
                raise EOFError

    async def receive(self) -> str | bytes:
        while not self.messages:
            await self._read()
        return self.messages.pop(0)

    async def send(self, text: str, *, finished: bool = True) -> None:
        await self.stream.send_all(self.conn.send(wsproto.events.TextMessage(text, message_finished=finished)))


# ---- the measuring worker ----


async def meter(port: int, secret: str, out: Path) -> None:
    """The measuring worker, in a process of its own so the attackers' work never delays its clock."""
    with out.open("w", buffering=1) as file:
        await heartbeat(port, secret, file)


async def heartbeat(port: int, secret: str, file: Any) -> None:
    while True:
        try:
            ws = await WS.open(port)
            await ws.receive()  # the Engine.IO open packet
            await ws.send("40" + json.dumps({"secret": secret}))
            while not str(await ws.receive()).startswith("40"):
                pass
            file.write("ready\n")
            ack = 0
            while True:
                ack += 1
                sent = time.monotonic()
                await ws.send(f'42{ack}["heartbeat",{{}}]')
                while True:
                    message = await ws.receive()
                    if message == "2":
                        await ws.send("3")
                    elif isinstance(message, str) and message.startswith(f"43{ack}["):
                        break
                file.write(f"{sent} {time.monotonic() - sent}\n")
                await trio.sleep(0.05)
        except (OSError, EOFError, trio.BrokenResourceError, wsproto.utilities.LocalProtocolError):
            file.write("reconnect\n")
            await trio.sleep(0.2)


# ---- the hostile kinds ----


async def held_body(port: int, hold: float) -> None:
    stream = await trio.open_tcp_stream(HOST, port)
    await stream.send_all(HELD_BODY)
    await trio.sleep(hold)


async def trickled_body(port: int, hold: float) -> None:
    stream = await trio.open_tcp_stream(HOST, port)
    await stream.send_all(f"POST /api/deploy HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2000\r\n\r\n".encode())
    with trio.move_on_after(hold):
        while True:
            await trio.sleep(1)
            await stream.send_all(b"x")


async def half_open_ws(port: int, hold: float) -> None:
    ws = await WS.open(port)
    await ws.stream.send_all(b"\x81\xfe")  # a masked text frame's first bytes, its length never sent
    await trio.sleep(hold)


async def parked_polling(port: int, hold: float) -> None:
    stream = await trio.open_tcp_stream(HOST, port)
    request = f"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    await stream.send_all(request.encode())
    with trio.move_on_after(5):
        while await stream.receive_some(65536):
            pass
    await stream.aclose()
    await trio.sleep(hold)


def frame(payload: bytes, *, opcode: int, fin: bool) -> bytes:
    """A client frame laid out once and sent to every connection (mask key 0: the payload as is)."""
    length = len(payload)
    if length < 126:
        header = bytes([(0x80 if fin else 0) | opcode, 0x80 | length])
    elif length < 1 << 16:
        header = bytes([(0x80 if fin else 0) | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([(0x80 if fin else 0) | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


# Laid out once: the attackers must not be what slows the machine down.
BOMB = frame(("40" + json.dumps({"secret": [[]] * (2 * MiB // 3)}, separators=(",", ":"))).encode(), opcode=1, fin=True)
UNFINISHED = frame(b"42", opcode=1, fin=False) + frame(("😀" * (2 * MiB // 4)).encode(), opcode=0, fin=False)
HELD_BODY = f"POST /webhook/github HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 50000000\r\n\r\n".encode() + b"x" * MiB


async def json_bomb(port: int, hold: float) -> None:
    ws = await WS.open(port)
    await ws.receive()
    await ws.stream.send_all(BOMB)
    await trio.sleep(hold)


async def unfinished_text(port: int, hold: float) -> None:
    ws = await WS.open(port)
    await ws.receive()
    await ws.stream.send_all(UNFINISHED)
    await trio.sleep(hold)


async def hostile(kind: str, port: int, hold: float, outcome: dict[str, int]) -> None:
    try:
        with trio.move_on_after(hold + 10):
            await globals()[kind](port, hold)
        outcome["held"] += 1
    except (OSError, EOFError, trio.BrokenResourceError, wsproto.utilities.LocalProtocolError):
        outcome["cut"] += 1  # refused or closed by the supervisor: that is the defence working


async def knock(port: int, seconds: float) -> int:
    """One stranger sending refused CONNECTs for ``seconds``; how many it sent."""
    ws = await WS.open(port)
    await ws.receive()
    sent = 0
    with trio.move_on_after(seconds):
        while True:
            await ws.send('40{"secret":"wrong"}')
            sent += 1
            while not str(await ws.receive()).startswith("44"):
                pass
    return sent


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="urban-robot-hostile-"))
    port = free_port()
    process = start_supervisor(root, port, args.code)
    try:
        await wait_ready(root, port)
        key = (root / "state" / "secret.key").read_bytes()
        identity = "child-bench-meter"
        secret = f"{identity}.{hmac.new(key, identity.encode(), hashlib.sha256).hexdigest()}"
        samples = root / "heartbeats.txt"
        meter_process = subprocess.Popen(
            [sys.executable, __file__, "--meter", str(port), secret, str(samples)], stdin=subprocess.DEVNULL
        )
        async with trio.open_nursery() as nursery:
            with trio.fail_after(30):
                while not samples.exists() or "ready" not in samples.read_text():
                    await trio.sleep(0.05)
            await trio.sleep(2)  # settle: children started, first heartbeats answered
            baseline = rss_mb(process.pid)
            cpu_before = cpu_seconds(process.pid)
            peak = baseline
            attack_start = time.monotonic()
            outcome = {"held": 0, "cut": 0}
            lines_before = log_lines(root)

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, rss_mb(process.pid))
                    await trio.sleep(0.05)

            async with trio.open_nursery() as attack:
                attack.start_soon(sample)
                async with trio.open_nursery() as hostiles:
                    for n in range(args.connections):
                        hostiles.start_soon(hostile, args.kinds[n % len(args.kinds)], port, args.seconds, outcome)
                        if n % 50 == 49:
                            await trio.sleep(0.01)
                attack.cancel_scope.cancel()
            attack_end = time.monotonic()
            attack_cpu = cpu_seconds(process.pid) - cpu_before
            attack_lines = log_lines(root) - lines_before
            await trio.sleep(1)
            lines_before = log_lines(root)
            knocks = await knock(port, 2.0)
            await trio.sleep(0.5)
            stranger_lines = log_lines(root) - lines_before
            nursery.cancel_scope.cancel()
        meter_process.terminate()
        meter_process.wait(10)
        lines = samples.read_text().splitlines()
        reconnects = lines.count("reconnect")
        rtts = [tuple(map(float, line.split())) for line in lines if line[0].isdigit()]
        during = [rtt for at, rtt in rtts if attack_start <= at <= attack_end]
        return {
            "connections": args.connections,
            "seconds": args.seconds,
            "code": str(args.code or "this checkout"),
            "rss_baseline_mb": round(baseline, 1),
            "rss_growth_mb": round(peak - baseline, 1),
            "heartbeats": len(during),
            "heartbeat_max_ms": round(max(during, default=float("inf")) * 1000, 1),
            "heartbeat_p50_ms": round(statistics.median(during) * 1000, 1) if during else None,
            "heartbeat_p99_ms": round(sorted(during)[int(len(during) * 0.99)] * 1000, 1) if during else None,
            "slowest_at_s": [
                (round(at - attack_start, 2), round(rtt * 1000, 1))
                for at, rtt in sorted((x for x in rtts if attack_start <= x[0] <= attack_end), key=lambda x: -x[1])[:3]
            ],
            "worker_reconnects": reconnects,
            "supervisor_cpu_s": round(attack_cpu, 2),
            "load_average": round(os.getloadavg()[0], 1),
            "hostile_held": outcome["held"],
            "hostile_cut": outcome["cut"],
            "log_lines_during_attack": attack_lines,
            "stranger_knocks": knocks,
            "stranger_lines_per_s": round(stranger_lines / 2.0, 1),
            "ok": bool(during) and peak - baseline < args.max_rss_mb and max(during) * 1000 < args.max_delay_ms,
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the hostile connections are held")
    parser.add_argument("--code", type=Path, help="run the supervisor from this checkout (e.g. the one before)")
    parser.add_argument("--kinds", type=lambda v: v.split(","), default=KINDS, help="a comma-separated subset")
    parser.add_argument("--max-rss-mb", type=float, default=100.0)
    parser.add_argument("--max-delay-ms", type=float, default=100.0)
    parser.add_argument("--meter", nargs=3, metavar=("PORT", "SECRET", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.meter:
        try:
            trio.run(meter, int(args.meter[0]), args.meter[1], Path(args.meter[2]))
        except KeyboardInterrupt:
            pass
        sys.exit(0)
    result = trio.run(main, args)
    for name, value in result.items():
        print(f"{name:>24}: {value}")
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)
