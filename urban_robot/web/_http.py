"""The HTTP/1.1 front on one port: h11 parses requests, WebSocket upgrades go to wsproto.

Why h11 rather than Hypercorn (see docs/design-decisions.md): fewer layers on
the hot path (the Engine.IO session talks to the socket directly), one task
per connection, and lower memory per idle connection; h11 and wsproto still
do all HTTP and WebSocket parsing. Limits bound every peer: request head and
body sizes, one absolute deadline to send a whole request (head and body: a
body trickling a byte at a time is cut at it), and an idle keep-alive
time-out; and, when ``max_connections`` is set, they bound all peers together:
past that many open connections (and held slots, see ``ConnectionGate.hold``) a
new one is closed at once (a flood must not exhaust file descriptors or memory,
and the connections already open, the workers' among them, keep being served).
A library ``Server`` has no such cap by default, as python-socketio and the Node
server have none; the supervisor sets its own (``max_connections``, 512).

Order of checks on each request, cheapest and least trusting first: the head
(``max_head``), the ``Host`` header against ``allowed_hosts`` (421: DNS
rebinding), then the app's body limit for this request (``HttpApp.body_limit``,
from the head alone: a ``Content-Length`` over it is answered 413 before a byte
of body is read, a chunked body is counted as it comes and cut at it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Protocol

import attrs
import h11
import trio
from wsproto.utilities import generate_accept_token

from ..logs import Throttled
from ._websocket import RECEIVE_SIZE, WebSocket

log = logging.getLogger("urban_robot.web")


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _host_name(host: str) -> str:
    """``Host`` header value without its port, lower-cased: ``[::1]:80`` -> ``[::1]``, ``A.b:1`` -> ``a.b``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _hosts(names: Iterable[str] | None) -> frozenset[str] | None:
    return None if names is None else frozenset(_host_name(str(name)) for name in names)


@attrs.frozen
class Limits:
    max_body: int = 1_000_000  # the most any route may allow
    max_head: int = 16 * 1024
    request_timeout: float = 20.0  # from a request's first byte to its last, head and body (slowloris)
    keepalive_timeout: float = 60.0  # between requests on one connection
    max_connections: int | None = None  # open at once (WebSockets included); more are closed on arrival. None: no cap
    #: Host names served (DNS rebinding); None = any. Loopback names and the address the peer connected to
    #: are always served: a rebinding page sends its own name, never an IP literal of this host.
    allowed_hosts: frozenset[str] | None = attrs.field(default=None, converter=_hosts)


@attrs.frozen
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client: tuple[str, int] | None
    http_version: str = "1.1"

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    @property
    def is_websocket(self) -> bool:
        return (
            self.header("upgrade", "").lower() == "websocket"  # type: ignore[union-attr]
            and "upgrade" in self.header("connection", "").lower()  # type: ignore[union-attr]
        )


@attrs.frozen
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=UTF-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, text: str, **kw: object) -> Response:
        return cls(status, text.encode(), **kw)  # type: ignore[arg-type]


class Upgrade(Protocol):
    async def accept(self, *, max_message: int, headers: tuple[tuple[str, str], ...] = ()) -> WebSocket: ...


class HttpApp(Protocol):
    def body_limit(self, request: Request) -> int:
        """The most body bytes ``request`` (its head; ``body`` still empty) may carry."""
        ...

    def too_large(self, request: Request) -> Response:
        """The answer (413) to ``request`` (its head) whose body passed ``body_limit``."""
        ...

    async def handle_request(self, request: Request, peer: PeerWatch) -> Response: ...

    async def handle_websocket(self, request: Request, upgrade: Upgrade) -> Response | None: ...


_READ_ERRORS = (trio.TooSlowError, h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError)


class PeerWatch:
    """Lets a long-polling handler notice that its client went away."""

    def __init__(self, conn: _HttpConnection) -> None:
        self._conn = conn

    async def wait(self, event: trio.Event) -> bool:
        """Wait for ``event``; return ``False`` early if the peer closed the connection."""
        return await self._conn.wait_event_or_eof(event)


class _WebSocketUpgrade:
    def __init__(self, conn: _HttpConnection, request: Request) -> None:
        self._conn = conn
        self._request = request

    async def accept(self, *, max_message: int, headers: tuple[tuple[str, str], ...] = ()) -> WebSocket:
        key = (self._request.header("sec-websocket-key") or "").encode()
        response_headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", generate_accept_token(key).decode()),
            *headers,
        ]
        await self._conn.send(h11.InformationalResponse(status_code=101, headers=response_headers))
        trailing, _closed = self._conn.h11.trailing_data
        self._conn.upgraded = True
        return WebSocket(self._conn.stream, bytes(trailing), max_message=max_message)


class _HttpConnection:
    def __init__(self, stream: trio.abc.Stream, app: HttpApp, limits: Limits, quiet: Throttled | None = None) -> None:
        self.quiet = quiet or Throttled(log)
        self.stream = stream
        self.app = app
        self.limits = limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
        self.upgraded = False
        self.client: tuple[str, int] | None = None
        self.local_host: str | None = None  # the address the peer connected to, as a Host header names it
        self.request_deadline: float | None = None  # set by a request's first byte: head and body by then
        sock = getattr(stream, "socket", None)
        if sock is not None:
            try:
                peer = sock.getpeername()
                self.client = (str(peer[0]), int(peer[1]))
                local = str(sock.getsockname()[0])
                self.local_host = f"[{local}]" if ":" in local else local
            except OSError:
                self.client = None

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def _receive_into_h11(self) -> None:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        self.h11.receive_data(bytes(data))

    async def next_event(self, timeout: float) -> object:
        """The next h11 event within ``timeout``; a request begun must end at its one absolute deadline.

        The deadline is set once, by the request's first byte, and never moves: a peer sending a byte
        now and then cannot keep a request open past ``request_timeout``.
        """
        with trio.fail_after(timeout) as scope:
            while True:
                if self.request_deadline is None and self.h11.trailing_data[0]:
                    self.request_deadline = trio.current_time() + self.limits.request_timeout
                if self.request_deadline is not None:
                    scope.deadline = min(scope.deadline, self.request_deadline)
                event = self.h11.next_event()
                if event is not h11.NEED_DATA:
                    return event
                await self._receive_into_h11()

    async def wait_event_or_eof(self, event: trio.Event) -> bool:
        peer_alive = True

        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal peer_alive
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if data:
                    self.h11.receive_data(bytes(data))  # a pipelined request: keep it for later
                    await trio.sleep_forever()
                peer_alive = False
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await event.wait()
            nursery.cancel_scope.cancel()
        return peer_alive

    async def serve(self) -> None:
        timeout = self.limits.keepalive_timeout
        while True:
            try:
                event = await self.next_event(timeout)
            except _READ_ERRORS as exc:
                await self._refuse_quietly(exc)
                return
            timeout = self.limits.request_timeout
            if not isinstance(event, h11.Request):
                return  # closed, paused or out of step: nothing more to serve here
            request = await self._read_request(event)
            if request is None:
                return
            self.request_deadline = None  # read whole: the handler's time is its own
            if request.is_websocket:
                response = await self.app.handle_websocket(request, _WebSocketUpgrade(self, request))
                if self.upgraded or response is None:
                    return
                await self._respond(response, close=True)
                return
            response = await self.app.handle_request(request, PeerWatch(self))
            if not await self._respond(response):
                return
            timeout = self.limits.keepalive_timeout

    async def _read_request(self, event: h11.Request) -> Request | None:
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers}
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        head = Request(
            method=event.method.decode("ascii", "replace"),
            path=path,
            query=query,
            headers=headers,
            body=b"",
            client=self.client,
            http_version=event.http_version.decode("ascii", "replace"),
        )
        if not self._host_allowed(headers.get("host")):
            self.quiet.info(
                "host", "refused a request for Host %r from %s: not in allowed_hosts", headers["host"][:80], self.client
            )
            await self._respond(Response.text(421, "Misdirected request: unknown Host"), close=True)
            return None
        limit = min(self.app.body_limit(head), self.limits.max_body)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._respond(self.app.too_large(head), close=True)
            return None
        body = bytearray()
        try:
            while True:
                part = await self.next_event(self.limits.request_timeout)
                if isinstance(part, h11.EndOfMessage):
                    break
                if not isinstance(part, h11.Data):
                    return None
                body += part.data
                if len(body) > limit:
                    await self._respond(self.app.too_large(head), close=True)
                    return None
        except _READ_ERRORS as exc:
            await self._refuse_quietly(exc)
            return None
        return attrs.evolve(head, body=bytes(body))

    def _host_allowed(self, host: str | None) -> bool:
        allowed = self.limits.allowed_hosts
        if allowed is None or host is None:  # no Host at all: HTTP/1.0, never a browser
            return True
        name = _host_name(host)
        return name in allowed or name in LOOPBACK_HOSTS or name == self.local_host

    async def _respond(self, response: Response, *, close: bool = False) -> bool:
        """Send ``response``; return whether the connection can serve another request."""
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        if close:
            headers.append(("Connection", "close"))
        try:
            # One write, not three: a system call is most of what answering costs (a flood of 413s, 421s...).
            head = self.h11.send(h11.Response(status_code=response.status, headers=headers)) or b""
            body = self.h11.send(h11.Data(data=response.body)) or b""
            end = self.h11.send(h11.EndOfMessage()) or b""
            if len(body) < 65536:
                await self.stream.send_all(head + body + end)
            else:  # a large polling answer: not copied once more
                await self.stream.send_all(head)
                await self.stream.send_all(body)
                await self.stream.send_all(end)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            return False
        if close or self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            return False
        self.h11.start_next_cycle()
        self.request_deadline = None
        return True

    async def _refuse_quietly(self, exc: BaseException) -> None:
        """Answer a broken or too-slow request with 400/408 if we still can, then close."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        if isinstance(exc, h11.RemoteProtocolError):
            status = exc.error_status_hint
        elif isinstance(exc, trio.TooSlowError) and (self.h11.their_state is not h11.IDLE or self.h11.trailing_data[0]):
            status = 408
        else:
            return
        log.debug("refusing HTTP request from %s: %s", self.client, exc)
        text = "Bad request" if status == 400 else "Request timeout"
        with trio.move_on_after(1):
            await self._respond(Response.text(status, text), close=True)


LIMIT_LOG_EVERY = 60.0  # seconds between "connection limit reached" lines while a flood lasts


class ConnectionGate:
    """Serves each accepted connection unless ``limits.max_connections`` (if set) are open (or held) already.

    A refused connection is closed before anything is read from it. The refusal is logged as one
    warning when the limit is first reached, then at most once a minute with the count refused since.
    Something that costs as much as a connection without being one (an unauthenticated long-polling
    session between its requests) takes a slot with ``hold()`` and gives it back with ``release()``.
    """

    def __init__(self, app: HttpApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.open = 0
        self.held = 0
        self.refused = 0  # since the last log line
        self._logged_at = -math.inf
        self.quiet = Throttled(log)  # lines strangers cause on these connections: one per kind per 10 s

    def full(self) -> bool:
        cap = self.limits.max_connections
        return cap is not None and self.open + self.held >= cap

    def hold(self) -> bool:
        """Take a slot if one is free (False: none is; refuse what wanted it)."""
        if self.full():
            self._note_refusal()
            return False
        self.held += 1
        return True

    def release(self) -> None:
        self.held -= 1

    async def handle(self, stream: trio.abc.Stream) -> None:
        if self.full():
            self._note_refusal()
            await trio.aclose_forcefully(stream)
            return
        self.open += 1
        try:
            await serve_connection(stream, self.app, self.limits, self.quiet)
        finally:
            self.open -= 1

    def _note_refusal(self) -> None:
        self.refused += 1
        now = trio.current_time()
        if now - self._logged_at < LIMIT_LOG_EVERY:
            return
        log.warning(
            "connection limit reached: %d connections open (max_connections); closed %d new connection(s)",
            self.open,
            self.refused,
        )
        self._logged_at, self.refused = now, 0


async def serve_connection(
    stream: trio.abc.Stream, app: HttpApp, limits: Limits, quiet: Throttled | None = None
) -> None:
    """Serve HTTP requests (and at most one WebSocket) on one accepted connection."""
    conn = _HttpConnection(stream, app, limits, quiet)
    try:
        await conn.serve()
    except Exception:
        # A bug met by one connection must not take the server (and the supervisor) down.
        log.exception("internal error while serving %s; connection closed", conn.client)
    finally:
        await trio.aclose_forcefully(stream)
