"""A local TCP proxy between the soak's workers and the supervisor, with partitions, delays and drops.

Each worker asks the control port for a listener of its own (one line: its identity; the answer:
a port), so the injector can act on one worker's connections:

- ``partition(identity)``: bytes stop flowing both ways on its connections, old and new, but no
  socket is closed (a black hole, as a cut cable looks: neither side is told); ``heal`` lets
  them flow again, buffered bytes included;
- ``delay``: every chunk forwarded waits this long (per worker, or for all);
- ``drop(identity)``: its connections are closed at once (both ends see them end).

The upstream is the supervisor's fixed port: a restarted supervisor is found again, and while none
listens a new connection is closed at once (the worker reconnects with back-off).
"""

from __future__ import annotations

import math
from collections import Counter

import attrs
import trio


@attrs.define(eq=False)
class Route:
    """One worker's listener and the state of its link."""

    identity: str
    port: int = 0
    open: trio.Event = attrs.Factory(trio.Event)  # set while not partitioned
    delay: float = 0.0
    scopes: set[trio.CancelScope] = attrs.Factory(set)  # one per live connection

    def __attrs_post_init__(self) -> None:
        self.open.set()


class Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.routes: dict[str, Route] = {}
        self.global_delay = 0.0
        self.control_port = 0
        self.stats: Counter[str] = Counter()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.control_port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, self._control, listeners)
            task_status.started()

    # -- the injector's levers ------------------------------------------------------------------------
    def partition(self, identity: str) -> bool:
        route = self.routes.get(identity)
        if route is None or not route.open.is_set():
            return False
        route.open = trio.Event()
        return True

    def heal(self, identity: str) -> None:
        route = self.routes.get(identity)
        if route is not None:
            route.open.set()

    def heal_all(self) -> None:
        for route in self.routes.values():
            route.open.set()
            route.delay = 0.0
        self.global_delay = 0.0

    def set_delay(self, identity: str | None, seconds: float) -> None:
        if identity is None:
            self.global_delay = seconds
        elif identity in self.routes:
            self.routes[identity].delay = seconds

    def drop(self, identity: str) -> int:
        route = self.routes.get(identity)
        scopes = list(route.scopes) if route is not None else []
        for scope in scopes:
            scope.cancel()
        return len(scopes)

    # -- serving -------------------------------------------------------------------------------------
    async def _control(self, stream: trio.SocketStream) -> None:
        async with stream:
            line = b""
            with trio.move_on_after(5):
                while not line.endswith(b"\n") and len(line) < 256:
                    chunk = await stream.receive_some(256)
                    if not chunk:
                        return
                    line += chunk
            identity = line.decode(errors="replace").strip()
            if not identity:
                return
            route = self.routes.get(identity)
            if route is None:
                route = self.routes[identity] = Route(identity)
                assert self._nursery is not None
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                route.port = listeners[0].socket.getsockname()[1]
                self._nursery.start_soon(trio.serve_listeners, lambda s: self._connection(route, s), listeners)
            await stream.send_all(f"{route.port}\n".encode())

    async def _connection(self, route: Route, client: trio.SocketStream) -> None:
        async with client:
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
            except OSError:
                self.stats["refused"] += 1
                return  # no supervisor listening right now
            async with upstream:
                with trio.CancelScope() as scope:
                    route.scopes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, route, client, upstream, nursery.cancel_scope)
                            nursery.start_soon(self._pump, route, upstream, client, nursery.cancel_scope)
                    finally:
                        route.scopes.discard(scope)

    async def _pump(
        self, route: Route, source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        try:
            while True:
                chunk = await source.receive_some(65536)
                await route.open.wait()  # partitioned: hold it, say nothing
                delay = max(route.delay, self.global_delay)
                if delay > 0 and math.isfinite(delay):
                    await trio.sleep(delay)
                    await route.open.wait()
                if not chunk:
                    break
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        both.cancel()  # one side ended: end the other (the supervisor and worker see the close)
