"""A simulated Helium worker speaking the Urban Robot v1 protocol, for tests and benchmarks.

It does what a well-behaved worker must (docs/protocol.md, §15's checklist):
identify → hello → ready; answer health checks; process only after a lease
renewal, counting the lease from when it *sent* the heartbeat that earned it;
stop before acknowledging coma/shutdown, sending its final cache first.
Faults can be switched on: ``hang()`` (stops answering, like SIGSTOP) and
``drop()`` (the connection vanishes, the worker keeps its lease view).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from typing import Any

import trio
import trio_websocket

from ..engineio import PacketType, decode_packet
from ..protocol import (
    Assembly,
    CacheChange,
    CacheMap,
    Coma,
    Heartbeat,
    Identify,
    MalformedMessage,
    Message,
    Ready,
    Shutdown,
    parse_cache_sync,
)
from ..socketio import Decoder, Packet, PacketType as SioType, encode

log = logging.getLogger("urban_robot.testing")

HEALTHY = {"OK": True, "percent": 100, "cogs": {"modules.utilities": True}}


class SimulatedWorker:
    def __init__(
        self,
        url: str,
        secret: str,
        *,
        version: str = "1.0",
        generation: int | None = None,
        health: Any = HEALTHY,
        name: str = "worker",
        echo: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.secret = secret
        self.version = version
        self.generation = generation
        self.health = health
        self.name = name
        self.echo = echo  # print each step on stdout (a child's log file)
        self.shards: list[int] | None = None  # the shard ids its hello gave it (None: unsharded)
        self.slow = 0.0  # seconds to wait before answering each command
        self.cache = CacheMap()  # its cache: the changed keys are synced (a CacheMap bot) ...
        self.plain = False  # ... or, set, the whole cache at every sync (a plain-cache bot)
        self._cache_in_step = False  # the supervisor holds what we hold: a delta applies
        self._syncs = 0
        self._incoming = Assembly(limit=1 << 62)
        self._cache_lock = trio.Lock()  # one sync's parts go out together
        self._plain_kept: bytes | None = None  # plain: the fingerprint of what the supervisor holds
        self._send_lock = trio.Lock()  # one packet's messages (text, then attachments) go out together
        self.token: str | None = None
        self.interval = 30.0
        self.granted: int | None = None
        self.lease_token: str | None = None
        self.processing_until = -math.inf
        self.hung = False
        self.shut_down = False
        self.refused = False  # the supervisor refused its secret (not its child, or not adopted): not retried
        self.log: list[tuple[float, str, Any]] = []
        self.changed = trio.Event()  # set (and replaced) on every logged step
        self.done = trio.Event()
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._acks: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._ids = itertools.count(1)
        self._decoder = Decoder()
        self._connected = trio.Event()

    # -- what tests look at ------------------------------------------------------------------------
    @property
    def processing(self) -> bool:
        return self.granted is not None and trio.current_time() < self.processing_until

    def _note(self, what: str, data: Any = None) -> None:
        self.log.append((trio.current_time(), what, data))
        if self.echo:
            sharded = what == "hello" and isinstance(data, dict) and data.get("shards") is not None
            shards = f" shards {data['shards']} of {data['shard_count']}" if sharded else ""
            why = f": {data}" if what == "cache_refused" else ""
            print(f"{time.monotonic():.6f} {self.name} {what}{shards}{why}", flush=True)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, what: str) -> tuple[float, Any]:
        """The first logged step called ``what`` (waiting for it if need be)."""
        while True:
            for at, name, data in self.log:
                if name == what:
                    return at, data
            await self.changed.wait()

    # -- faults ------------------------------------------------------------------------------------
    def hang(self) -> None:
        self.hung = True
        self._note("hung")

    async def drop(self) -> None:
        if self._ws is not None:
            await self._ws.aclose()

    async def send_raw(self, frame: str | bytes) -> None:
        """Put any frame on the wire (a bad message, a forged event): the supervisor must survive it."""
        if self._ws is not None:
            await self._ws.send_message(frame)

    # -- running -------------------------------------------------------------------------------------
    async def run(
        self, *, reconnect: bool = False, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve one connection; with ``reconnect``, come back (0.05 s → 2 s backoff) until shut down.

        A reconnecting holder presents its epoch and lease token, and keeps
        processing on its own lease view while away (P1: that view ends first).
        """
        delay = 0.05
        while True:
            try:
                await self._session(task_status)
                delay = 0.05
            except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed):
                pass
            task_status = trio.TASK_STATUS_IGNORED
            if not reconnect or self.shut_down or self.refused:
                break  # refused: retrying every 0.05 s forever fills the log and the admin login throttle
            await trio.sleep(delay)
            delay = min(2.0, delay * 2)
        self.done.set()

    async def _session(self, task_status: trio.TaskStatus[None]) -> None:
        ws_url = self.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        async with trio_websocket.open_websocket_url(
            ws_url, max_message_size=64 * 1024 * 1024, receive_buffer_size=256 * 1024
        ) as ws:
            self._ws = ws
            opened = await ws.get_message()
            assert isinstance(opened, str) and opened.startswith("0")
            await ws.send_message("40" + json.dumps({"secret": self.secret}))
            self._connected = trio.Event()
            self._decoder = Decoder()
            self._cache_in_step = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, nursery)
                task_status.started()
                await self._connected.wait()
                await self._send(Identify(self.version, os.getpid(), self.generation, self.granted, self.lease_token))
                await self._send(Ready())
                nursery.start_soon(self._heartbeats)

    async def _reader(self, nursery: trio.Nursery) -> None:
        assert self._ws is not None
        try:
            while True:
                frame = await self._ws.get_message()
                if self.hung:
                    continue
                packet = decode_packet(frame)
                if packet.type is PacketType.PING:
                    await self._ws.send_message("3")
                elif packet.type is PacketType.MESSAGE:
                    sio = self._decoder.feed(packet.data)
                    if sio is not None:
                        await self._on_packet(sio, nursery)
                elif packet.type is PacketType.CLOSE:
                    break
        except trio_websocket.ConnectionClosed:
            pass
        self._note("disconnected")
        nursery.cancel_scope.cancel()

    async def _on_packet(self, packet: Packet, nursery: trio.Nursery) -> None:
        if packet.type is SioType.CONNECT:
            self._connected.set()
        elif packet.type is SioType.CONNECT_ERROR:
            self.refused = True  # as the SDKs: a refused secret is not retried (``run`` ends)
            self._note("refused", packet.data)
            nursery.cancel_scope.cancel()
        elif packet.type is SioType.ACK and packet.id in self._acks:
            done, answer = self._acks.pop(packet.id)
            answer.extend(packet.data)
            done.set()
        elif packet.type is SioType.EVENT:
            event, *args = packet.data
            if event == "cache_sync":  # applied here, in order: before any command that follows it
                self._on_cache_push(args[0] if args else None)
            else:
                nursery.start_soon(self._on_event, event, args[0] if args else None)

    def _on_cache_push(self, data: Any) -> None:
        try:
            change = self._incoming.add(parse_cache_sync(data))
            if change is not None:
                self.cache.apply(change)
        except MalformedMessage as exc:
            self._note("bad_cache_push", str(exc))
            return
        if change is not None:
            self._cache_in_step = True
            self._note("cache_received", dict(self.cache))

    async def _on_event(self, event: str, data: Any) -> None:
        if event == "hello":
            self.token = data["token"]
            self.interval = data["interval"]
            self.shards = data.get("shards")  # a sharded bot's group (§18.3); None unsharded
            self._note("hello", {k: v for k, v in data.items() if k != "token"})
            if data.get("process_commands"):
                self.granted = data["epoch"]
                await self.heartbeat()
        elif event == "cmd":
            await self._on_cmd(data["t"], data.get("d") or {})

    async def _on_cmd(self, name: str, data: dict[str, Any]) -> None:
        self._note("cmd:" + name, data)
        if self.slow:
            await trio.sleep(self.slow)  # a slow worker: every answer to a command comes late
        if name == "health_check":
            # ``health``: the report, or a function of the worker's shards (a rehearsal failing in some groups only)
            await self._emit("health_check", self.health(self.shards) if callable(self.health) else self.health)
        elif name == "process_commands":
            self.granted = data["epoch"]
            self.lease_token = data.get("lease_token")
            await self.heartbeat()  # the grant is used only once renewed
        elif name in ("coma", "shutdown"):
            self.granted = None
            self.processing_until = -math.inf
            self._note("stopped", name)
            if data.get("cache_sync"):
                await self.sync_cache()
            reason = str(data.get("reason", ""))
            await self._send(Shutdown(reason) if name == "shutdown" else Coma(reason))
            if name == "shutdown":
                self.shut_down = True
                await self.drop()

    async def heartbeat(self) -> None:
        sent_at = trio.current_time()
        epoch = self.granted
        reply = await self._send(Heartbeat(epoch))
        if not isinstance(reply, dict):
            return
        if reply.get("lease") and epoch is not None and epoch == self.granted:
            was = self.processing
            self.processing_until = sent_at + reply["lease"]
            if not was and self.processing:
                self._note("processing", epoch)
        elif epoch is not None and self.granted == epoch:
            self.granted = None
            self.processing_until = -math.inf
            self._note("fenced", reply)

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.interval)
            if not self.hung:
                await self.heartbeat()

    async def write(self, key: str, value: Any) -> bool:
        """A cache write while processing: kept locally, synced to the supervisor."""
        if not self.processing:
            return False
        self.cache[key] = value
        reply = await self.sync_cache()
        return bool(isinstance(reply, dict) and reply.get("accepted"))

    async def sync_cache(self) -> Any:
        """Send the cache in parts (what changed, or all of it) and return the last part's answer."""
        async with self._cache_lock:
            change = self.cache.take(full=self.plain or not self._cache_in_step)
            digest = None
            if self.plain:  # as the SDKs do with a plain cache: an unchanged one is an empty delta
                digest = change.digest()
                if self._cache_in_step and digest == self._plain_kept:
                    change = CacheChange(False)
            self._syncs += 1
            waiters = [await self._emit_nowait(part.event, part.payload()) for part in change.parts(self._syncs)]
        answers = [await self._answer(w) for w in waiters]
        reply = answers[-1] if answers else None
        accepted = isinstance(reply, dict) and reply.get("accepted") is True
        self._cache_in_step = accepted
        self._plain_kept = digest if accepted else None
        if not accepted:
            self.cache.mark_all()
            if isinstance(reply, dict) and reply.get("resync") is True:
                return await self.sync_cache()
            self._note("cache_refused", reply.get("error") if isinstance(reply, dict) else reply)
        return reply

    async def _send(self, message: Message) -> Any:
        return await self._emit(message.event, message.payload())

    async def _emit(self, event: str, data: Any) -> Any:
        """Emit with an ack and wait for it; None if the connection went first."""
        return await self._answer(await self._emit_nowait(event, data))

    async def _emit_nowait(self, event: str, data: Any) -> tuple[trio.Event, list[Any]] | None:
        """Emit with an ack; what to wait on for it (None: not sent)."""
        if self._ws is None or self.hung:
            return None
        ack_id = next(self._ids)
        done, answer = trio.Event(), list[Any]()
        self._acks[ack_id] = (done, answer)
        try:
            async with self._send_lock:
                for message in encode(Packet(SioType.EVENT, "/", [event, data], ack_id)):
                    await self._ws.send_message("4" + message if isinstance(message, str) else message)
        except trio_websocket.ConnectionClosed:
            return None
        return done, answer

    @staticmethod
    async def _answer(waiter: tuple[trio.Event, list[Any]] | None) -> Any:
        if waiter is None:
            return None
        done, answer = waiter
        await done.wait()
        return answer[0] if answer else None
