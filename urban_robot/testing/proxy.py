"""A TCP proxy on 127.0.0.1 whose links between named processes can be cut: partitions for tests and soaks.

    net = Net()
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        port = await net.listen("m0", upstream=2379, source="alpha")   # alpha's way to etcd member m0
        peer = await net.listen("beta", upstream=8001)                   # anyone's way to beta
        net.register("alpha", alpha_pid)                                 # connections alpha's process opens
        net.cut("alpha", "m0"); net.heal("alpha", "m0")                  # one link, both directions
        net.isolate("alpha", ["beta", "gamma"]); net.heal_all()

Each listener forwards every connection to one fixed upstream port (``dst`` names it). A connection's **source**
is the listener's own ``source`` if it has one, else the registered process that owns the connecting socket
(found in ``/proc``: the socket's inode in ``/proc/net/tcp``, then that inode among the registered pids' open
files), else ``"?"``. A link ``(source, dst)`` that is cut is a black hole both ways: bytes stop flowing on its
connections, old and new, and no socket is closed (neither side is told, as with a pulled cable); when it heals,
what was held flows on. ``drop(source, dst)`` closes its connections instead (both ends see them end). While the
upstream is not listening (a killed process, before its restart), a new connection is closed at once.

Linux only (``/proc``); every connection is on 127.0.0.1.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
import trio

UNKNOWN = "?"
CHUNK = 65536


def _parse_address(text: str) -> tuple[bytes, int]:
    """``0100007F:1F90`` (``/proc/net/tcp``: the address in host byte order, little-endian here) -> (ip, port)."""
    address, _, port = text.partition(":")
    raw = bytes.fromhex(address)
    if len(raw) == 4:
        ip = raw[::-1]
    else:  # tcp6: four 32-bit words, each in host order
        ip = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return ip, int(port, 16)


def _ip_bytes(host: str) -> bytes:
    import ipaddress

    return ipaddress.ip_address(host).packed


def socket_inode(address: tuple[str, int], proc: Path = Path("/proc")) -> int | None:
    """The inode of the TCP socket whose *local* address is ``address`` (host, port), or None."""
    want_ip, want_port = _ip_bytes(address[0]), address[1]
    mapped = b"\0" * 10 + b"\xff\xff" + want_ip if len(want_ip) == 4 else want_ip
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            ip, port = _parse_address(fields[1])
            if port == want_port and ip in (want_ip, mapped):
                inode = int(fields[9])
                if inode:
                    return inode
    return None


def socket_owner(address: tuple[str, int], pids: Mapping[int, str], proc: Path = Path("/proc")) -> str | None:
    """The name of the registered process (``pids``: pid -> name) that has the socket bound locally to
    ``address`` open, or None."""
    inode = socket_inode(address, proc)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid, name in pids.items():
        try:
            entries = list(os.scandir(proc / str(pid) / "fd"))
        except OSError:
            continue
        for entry in entries:
            try:
                if os.readlink(entry.path) == target:
                    return name
            except OSError:
                continue
    return None


@attrs.define(eq=False)
class Listener:
    dst: str
    upstream: int
    source: str | None
    port: int = 0


class Net:
    def __init__(self) -> None:
        self.opened: list[Listener] = []
        self.pids: dict[int, str] = {}
        self.delay = 0.0  # seconds every forwarded chunk waits (math.inf: none is forwarded)
        self.stats: Counter[str] = Counter()
        self._open: dict[tuple[str, str], trio.Event] = {}  # only links that are or were cut
        self._scopes: dict[tuple[str, str], set[trio.CancelScope]] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the listeners (added with ``listen``) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def listen(self, dst: str, upstream: int, source: str | None = None) -> int:
        """A new listener on 127.0.0.1 forwarding to ``upstream`` (named ``dst``); its port."""
        assert self._nursery is not None, "start Net.run first"
        [sock] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = Listener(dst, upstream, source, sock.socket.getsockname()[1])
        self.opened.append(listener)
        self._nursery.start_soon(trio.serve_listeners, lambda s: self._connection(listener, s), [sock])
        return listener.port

    # -- who is who ---------------------------------------------------------------------------------------
    def register(self, name: str, pid: int) -> None:
        """Connections ``pid`` opens to a listener without a fixed source come from ``name`` (a restarted process:
        register its new pid; the old one is forgotten)."""
        for old in [p for p, n in self.pids.items() if n == name]:
            del self.pids[old]
        self.pids[pid] = name

    def source_of(self, listener: Listener, peer: tuple[str, int]) -> str:
        if listener.source is not None:
            return listener.source
        return socket_owner(peer, self.pids) or UNKNOWN

    # -- the levers --------------------------------------------------------------------------------------------
    def cut(self, source: str, dst: str) -> None:
        """Bytes stop flowing between ``source`` and ``dst``, both ways, on old and new connections."""
        event = self._open.get((source, dst))
        if event is None or event.is_set():
            self._open[(source, dst)] = trio.Event()

    def heal(self, source: str, dst: str) -> None:
        event = self._open.get((source, dst))
        if event is not None:
            event.set()

    def isolate(self, name: str, others: Iterable[str]) -> None:
        """Cut ``name`` from each of ``others``, both ways: its connections to them and theirs to it."""
        for other in others:
            self.cut(name, other)
            self.cut(other, name)

    def rejoin(self, name: str, others: Iterable[str]) -> None:
        for other in others:
            self.heal(name, other)
            self.heal(other, name)

    def heal_all(self) -> None:
        for event in self._open.values():
            event.set()
        self.delay = 0.0

    def is_cut(self, source: str, dst: str) -> bool:
        event = self._open.get((source, dst))
        return event is not None and not event.is_set()

    def drop(self, source: str, dst: str) -> int:
        """Close the link's connections now; how many there were."""
        scopes = list(self._scopes.get((source, dst), ()))
        for scope in scopes:
            scope.cancel()
        return len(scopes)

    # -- forwarding ----------------------------------------------------------------------------------------
    async def _connection(self, listener: Listener, client: trio.SocketStream) -> None:
        async with client:
            peer = client.socket.getpeername()
            source = self.source_of(listener, (peer[0], peer[1]))
            link = (source, listener.dst)
            self.stats[f"{source}->{listener.dst}"] += 1
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", listener.upstream)
            except OSError:
                self.stats["refused"] += 1
                return
            async with upstream:
                with trio.CancelScope() as scope:
                    self._scopes.setdefault(link, set()).add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, link, client, upstream, nursery.cancel_scope)
                            nursery.start_soon(self._pump, link, upstream, client, nursery.cancel_scope)
                    finally:
                        self._scopes[link].discard(scope)

    async def _wait_open(self, link: tuple[str, str]) -> None:
        while True:
            event = self._open.get(link)
            if event is None or event.is_set():
                return
            await event.wait()  # a heal sets it; a cut after the heal puts a new one in its place

    async def _pump(
        self, link: tuple[str, str], source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        try:
            while True:
                chunk = await source.receive_some(CHUNK)
                await self._wait_open(link)  # cut: hold it, say nothing
                if self.delay > 0:
                    await trio.sleep(self.delay if math.isfinite(self.delay) else math.inf)
                    await self._wait_open(link)
                if not chunk:
                    break
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        both.cancel()  # one side ended: end the other (both ends see the close)
