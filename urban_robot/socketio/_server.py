"""The trio Socket.IO v5 server, shaped like python-socketio's ``AsyncServer``.

Layers: ``web`` parses HTTP, hands WebSocket upgrades over and routes requests
(``web.Router``: this server's path to the Engine.IO server, other paths to
``add_route`` handlers); ``engineio.EngineServer`` runs Engine.IO sessions
(polling, WebSocket, upgrade, pings); this module runs Socket.IO on top:
namespaces, handlers, acks, rooms.

A client's handlers run in its Engine.IO session's nursery, so they are
cancelled when the client goes; ``disconnect`` handlers run after that, in
the server's nursery, so they always see the end.

Authentication raises limits: a client whose CONNECT a namespace's ``connect``
handler accepted is trusted (``Session.trust``): from then on it may send
``max_payload`` and binary attachments. Before that its messages are a few
kilobytes (``preauth_message``), binary packets close it, and no packet's JSON
is parsed unless it could be used: a CONNECT, or an event for a namespace it
is connecting to (those together at most ``preauth_message`` characters, and at
most ``MAX_EARLY_EVENTS``). Events past that bound are not dropped: the client's
reader waits, unparsed packet in hand, until the ``connect`` handler has decided
(backpressure, as a full buffer is anywhere else), so every event is handled.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, overload

import trio

from .._errors import ProtocolError, UrbanRobotError
from ..engineio import PREAUTH_MESSAGE, EngineServer, Reason, Session
from ..web import ROUTE_BODY, ConnectionGate, Limits, RouteHandler, Router
from ._namespace import Namespace
from ._packets import RESERVED_EVENTS, Decoder, Head, Packet, PacketType, encode

log = logging.getLogger("urban_robot.socketio")

MAX_EARLY_EVENTS = 100
Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)


class ConnectionRefusedError(builtins.ConnectionRefusedError):  # noqa: A001 - python-socketio's name
    """Raise from a ``connect`` handler to refuse: ``ConnectionRefusedError(message[, data])``.

    The builtin ``ConnectionRefusedError`` works the same way.
    """


class Disconnected(UrbanRobotError):
    """``Server.call`` waited for an ack from a client that disconnected."""


def _refusal(exc: BaseException | None) -> dict[str, Any]:
    args = exc.args if exc is not None else ()
    if not args:
        return {"message": "Connection rejected by server"}
    error: dict[str, Any] = {"message": str(args[0])}
    if len(args) == 2:
        error["data"] = args[1]
    elif len(args) > 2:
        error["data"] = list(args[1:])
    return error


def _arity(handler: Handler) -> int | None:
    """How many positional arguments ``handler`` takes (None = any number)."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            return None
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


class _Undecided(Exception):
    """Raised by ``Client.admit``: this event must wait until ``socket``'s CONNECT is decided (and its early
    events handled), then be decoded again; nothing was parsed or kept."""

    def __init__(self, socket: Socket) -> None:
        super().__init__(socket.namespace)
        self.socket = socket


class Later:
    """Return ``Later(wait)`` from an event handler to acknowledge when ``await wait()`` returns its answer.

    The client's next events are handled meanwhile (handlers run in arrival order in the reader): a
    handler that must not answer before something slow is done (a file on disk) need not hold up the
    client's heartbeats. The wait runs in the connection's nursery and ends with it.
    """

    __slots__ = ("wait",)

    def __init__(self, wait: Callable[[], Awaitable[Any]]) -> None:
        self.wait = wait


async def _invoke(handler: Handler, *args: Any) -> Any:
    result = handler(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class Socket:
    """One client on one namespace."""

    __slots__ = (
        "ack_counter",
        "acks",
        "buffer",
        "client",
        "decided",
        "early",
        "early_size",
        "gone",
        "namespace",
        "rooms",
        "session",
        "sid",
    )

    def __init__(self, sid: str, namespace: str, client: Client) -> None:
        self.sid = sid
        self.namespace = namespace
        self.client = client
        self.buffer: list[list[str | bytes]] | None = []  # until the CONNECT is acknowledged
        self.early: list[Packet] = []  # events that arrived while the connect handler ran
        self.early_size = 0  # their JSON, in characters
        self.decided = trio.Event()  # the connect handler decided and the early events were handled (or it left)
        self.acks: dict[int, Callable[..., Any]] = {}
        self.ack_counter = 0
        self.session: dict[str, Any] = {}
        self.gone = trio.Event()
        self.rooms: set[str] = set()


class Client:
    """One Engine.IO session and the namespaces it joined."""

    __slots__ = ("decoder", "engine", "sockets")

    def __init__(self, engine: Session) -> None:
        self.engine = engine
        # One packet's attachments together fit in max_payload, as each message alone does.
        self.decoder = Decoder(max_attachment_bytes=engine.server.max_payload)
        self.sockets: dict[str, Socket] = {}

    def admit(self, head: Head) -> bool:
        """Whether a packet is worth parsing; before authentication only a CONNECT and a little more are.

        Raises ``_Undecided`` for an event that must wait for its namespace's CONNECT to be decided: past the
        early buffer's bounds (an event dropped here would never be answered), or arriving after the
        acceptance while the early events are still being handled (it must not overtake them).
        """
        trusted = self.engine.trusted
        if head.type in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK) and not trusted:
            raise ProtocolError("binary packets need an authenticated connection")
        if head.type in (PacketType.CONNECT, PacketType.CONNECT_ERROR):
            return True  # a CONNECT_ERROR is refused once parsed, as before
        socket = self.sockets.get(head.namespace)
        if socket is None:
            return False  # nobody on that namespace: it would be dropped anyway, unparsed now
        if head.type in (PacketType.EVENT, PacketType.BINARY_EVENT) and not socket.decided.is_set():
            if socket.buffer is None:
                raise _Undecided(socket)
            if len(socket.early) >= MAX_EARLY_EVENTS:
                raise _Undecided(socket)
            if not trusted and socket.early_size + head.size > self.engine.server.preauth_message:
                raise _Undecided(socket)
            socket.early_size += head.size
        return True


class Server:
    """A Socket.IO server for trio.

    ``port = await nursery.start(server.serve, "127.0.0.1", 0)`` starts it;
    handlers are registered as with python-socketio's ``AsyncServer``.
    """

    reason = Reason

    def __init__(
        self,
        *,
        ping_interval: float = 25,
        ping_timeout: float = 20,
        max_payload: int = 1_000_000,
        connect_timeout: float = 45,
        cors_allowed_origins: str | list[str] | None = None,
        namespaces: str | list[str] | None = None,
        async_handlers: bool = True,
        transports: Iterable[str] = ("polling", "websocket"),
        path: str = "/socket.io/",
        http_limits: Limits | None = None,
        preauth_message: int = PREAUTH_MESSAGE,
    ) -> None:
        for name, value in (
            ("ping_interval", ping_interval),
            ("ping_timeout", ping_timeout),
            ("connect_timeout", connect_timeout),
            ("max_payload", max_payload),
            ("preauth_message", preauth_message),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        transports = tuple(transports)
        if not transports or set(transports) - {"polling", "websocket"}:
            raise ValueError(f"transports must be 'polling' and/or 'websocket', got {transports!r}")
        self.connect_timeout = connect_timeout
        self.async_handlers = async_handlers
        self.path = path if path.endswith("/") else path + "/"
        self.namespaces = ["/"] if namespaces is None else namespaces
        self.handlers: dict[str, dict[str, Handler]] = {}
        self.namespace_handlers: dict[str, Namespace] = {}
        self.sockets: dict[str, Socket] = {}
        self._rooms: dict[str, dict[str, set[str]]] = {}
        self._limits = http_limits or Limits(max_body=max_payload + 16 * 1024)
        self._cancel_scope: trio.CancelScope | None = None
        self.router = Router()  # this server's path to Engine.IO (below), other paths to add_route handlers
        self.connections = ConnectionGate(self.router, self._limits)  # open HTTP connections, bounded
        self._engine = EngineServer(
            self,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_payload=max_payload,
            cors_allowed_origins=cors_allowed_origins,
            transports=transports,
            preauth_message=preauth_message,
            gate=self.connections,
        )
        self.router.mount(self.path, self._engine)

    # ------------------------------------------------------------------ registration
    @overload
    def on(self, event: str, handler: None = None, namespace: str | None = None) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: H, namespace: str | None = None) -> H: ...

    def on(self, event: str, handler: H | None = None, namespace: str | None = None) -> H | Callable[[H], H]:
        """Register ``handler`` for ``event``; without ``handler``, a decorator."""
        handlers = self.handlers.setdefault(namespace or "/", {})

        def register(func: H) -> H:
            handlers[event] = func
            return func

        return register(handler) if handler is not None else register

    def event(self, handler: H) -> H:
        """Decorator registering ``handler`` under its own name (``@server.event``)."""
        return self.on(handler.__name__, handler)

    def register_namespace(self, namespace_handler: Namespace) -> None:
        if not isinstance(namespace_handler, Namespace):
            raise ValueError("register_namespace needs a Namespace instance")
        namespace_handler._set_server(self)
        self.namespace_handlers[namespace_handler.namespace] = namespace_handler

    def add_route(self, method: str, path: str, handler: RouteHandler, *, max_body: int = ROUTE_BODY) -> None:
        """Serve ``handler`` for ``METHOD path`` on the same port (status API, webhooks, ...).

        A request whose body would pass ``max_body`` bytes is answered 413 before it is read whole.
        The table is ``self.router``'s (``web.Router``); this is its shortcut.
        """
        self.router.add_route(method, path, handler, max_body=max_body)

    def _accepts(self, namespace: str) -> bool:
        return (
            self.namespaces == "*"
            or namespace in self.namespaces
            or namespace in self.handlers
            or namespace in self.namespace_handlers
        )

    def _handler(self, namespace: str, event: str) -> Handler | None:
        handler = self.handlers.get(namespace, {}).get(event)
        if handler is None and namespace in self.namespace_handlers:
            handler = self.namespace_handlers[namespace].handler_for(event)
        return handler

    # ------------------------------------------------------------------ serving
    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        listeners: list[trio.abc.Listener[Any]] | None = None,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` until cancelled; ``started`` reports the bound port.

        ``listeners`` replaces the TCP listener (tests pass in-memory ones; the
        reported port is then ``None``).
        """
        with trio.CancelScope() as scope:
            self._cancel_scope = scope
            async with trio.open_nursery() as nursery:
                self._engine.nursery = nursery
                bound: int | None = None
                if listeners is None:
                    tcp = await trio.open_tcp_listeners(port, host=host)
                    bound = tcp[0].socket.getsockname()[1]
                    listeners = list(tcp)

                await nursery.start(trio.serve_listeners, self.connections.handle, listeners)
                log.info("Socket.IO server listening on %s:%s", host, bound)
                task_status.started(bound)

    async def shutdown(self) -> None:
        """Close every client (reason ``server shutdown``) and stop serving."""
        for session in list(self._engine.sessions.values()):
            session.close(Reason.SERVER_SHUTDOWN)
        await trio.lowlevel.checkpoint()
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    # ------------------------------------------------------------------ Engine.IO callbacks
    def engine_open(self, session: Session) -> None:
        session.data = Client(session)
        session.deadline = trio.current_time() + self.connect_timeout

    async def engine_message(self, session: Session, message: str | bytes, start: int = 0) -> None:
        """Decode and dispatch; a ``ProtocolError`` propagates and the engine closes the session."""
        client: Client = session.data
        while True:
            try:
                packet = client.decoder.feed(message, start, client.admit)
            except _Undecided as wait:
                # More than the early buffer holds before authentication: read nothing more from this client
                # until its CONNECT is decided, then decode this packet again (accepted: handled in order;
                # refused or gone: dropped, its CONNECT_ERROR or close being the answer).
                await wait.socket.decided.wait()
                continue
            break
        if packet is not None:
            await self._dispatch(client, packet)

    def engine_close(self, session: Session, reason: str) -> None:
        client: Client = session.data
        for socket in list(client.sockets.values()):
            self._forget(socket, reason)

    # ------------------------------------------------------------------ incoming packets
    async def _dispatch(self, client: Client, packet: Packet) -> None:
        ptype = packet.type
        socket = client.sockets.get(packet.namespace)
        if ptype is PacketType.EVENT:
            if socket is not None and socket.buffer is None:
                await self._start_event(socket, packet)
            elif socket is not None and len(socket.early) < MAX_EARLY_EVENTS:
                socket.early.append(packet)  # the client did not wait for our CONNECT ack
        elif ptype is PacketType.ACK:
            callback = socket.acks.pop(packet.id, None) if socket is not None else None  # type: ignore[arg-type]
            if callback is not None:
                await _invoke(callback, *packet.data)
        elif ptype is PacketType.CONNECT:
            await self._handle_connect(client, packet)
        elif ptype is PacketType.DISCONNECT:
            if socket is not None:
                self._forget(socket, Reason.CLIENT_DISCONNECT)
        else:
            raise ProtocolError(f"a client may not send {ptype.name}")

    async def _handle_connect(self, client: Client, packet: Packet) -> None:
        namespace = packet.namespace
        if namespace in client.sockets:
            return  # already connected (or connecting): the reference servers ignore it too
        if not self._accepts(namespace):
            await self._send_raw(client, Packet(PacketType.CONNECT_ERROR, namespace, {"message": "Invalid namespace"}))
            return
        socket = Socket(secrets.token_urlsafe(15), namespace, client)
        client.sockets[namespace] = socket
        self.sockets[socket.sid] = socket
        client.engine.nursery.start_soon(self._run_connect, socket, packet.data)

    async def _run_connect(self, socket: Socket, auth: Any) -> None:
        try:
            await self._decide_connect(socket, auth)
        finally:
            socket.decided.set()  # the reader may go on: events that waited are handled after the early ones

    async def _decide_connect(self, socket: Socket, auth: Any) -> None:
        handler = self._handler(socket.namespace, "connect")
        refusal: BaseException | None = None
        accepted = True
        if handler is not None:
            args: tuple[Any, ...] = (socket.sid, socket.client.engine.environ, auth)
            arity = _arity(handler)
            if arity is not None and arity < 3:
                args = args[:arity]
            try:
                accepted = await _invoke(handler, *args) is not False
            except builtins.ConnectionRefusedError as exc:  # ours is a subclass
                accepted, refusal = False, exc
            except Exception:
                log.exception("connect handler for %s failed; refusing the client", socket.namespace)
                accepted = False
        client = socket.client
        if not accepted:
            self.sockets.pop(socket.sid, None)
            client.sockets.pop(socket.namespace, None)
            await self._send_raw(client, Packet(PacketType.CONNECT_ERROR, socket.namespace, _refusal(refusal)))
            return
        if socket.sid not in self.sockets:
            # The client left while the handler decided. It accepted, so whatever it set up for this
            # client must be undone as for any other leave: its disconnect handler runs too.
            self._call_disconnect_handler(socket, client.engine.close_reason or Reason.TRANSPORT_CLOSE)
            return
        self._enter(socket, socket.sid)
        client.engine.trust()  # authenticated by the handler: this client may now send max_payload
        client.engine.deadline = float("inf")
        buffered, socket.buffer = socket.buffer or [], None
        await client.engine.send_messages(encode(Packet(PacketType.CONNECT, socket.namespace, {"sid": socket.sid})))
        # What the connect handler emitted follows in writes of its own, as the reference server writes them:
        # a client that attaches its listeners once it has the acknowledgement must not find them in its read.
        for messages in buffered:
            await client.engine.send_messages(messages)
        early, socket.early = socket.early, []
        try:
            for packet in early:
                await self._start_event(socket, packet)
        except ProtocolError as exc:
            self._engine.quiet.info(
                "invalid-packet", "client %s sent an invalid packet, closing: %s", client.engine.sid, exc
            )
            client.engine.close(Reason.TRANSPORT_ERROR)

    async def _start_event(self, socket: Socket, packet: Packet) -> None:
        event, *args = packet.data
        if event in RESERVED_EVENTS:
            # A client must not fire our lifecycle handlers (re-authenticate, fake a leave...).
            raise ProtocolError(f"{event!r} is a reserved event name")
        # An event named "*" must not call the catch-all as if it were its own handler (shifted arguments).
        handler = self._handler(socket.namespace, event) if event != "*" else None
        if handler is not None:
            args.insert(0, socket.sid)
        else:
            handler = self._handler(socket.namespace, "*")
            if handler is None:
                log.debug("no handler for event %r on %s", event, socket.namespace)
                return
            args[:0] = [event, socket.sid]
        if self.async_handlers:
            socket.client.engine.nursery.start_soon(self._run_event, socket, handler, args, packet.id)
        else:  # in arrival order, in the reader: a handler must not wait on this client
            await self._run_event(socket, handler, args, packet.id)

    async def _run_event(self, socket: Socket, handler: Handler, args: list[Any], ack_id: int | None) -> None:
        try:
            result = await _invoke(handler, *args)
        except Exception:
            log.exception("handler for an event on %s failed", socket.namespace)
            return
        if ack_id is None:
            return
        if isinstance(result, Later):
            socket.client.engine.nursery.start_soon(self._ack_later, socket, result, ack_id)
            return
        await self._ack(socket, result, ack_id)

    async def _ack_later(self, socket: Socket, later: Later, ack_id: int) -> None:
        try:
            result = await later.wait()
        except Exception:
            log.exception("a deferred answer on %s failed", socket.namespace)
            return
        if not socket.gone.is_set():
            await self._ack(socket, result, ack_id)

    async def _ack(self, socket: Socket, result: Any, ack_id: int) -> None:
        if result is None:
            data: list[Any] = []
        elif isinstance(result, tuple):
            data = list(result)
        else:
            data = [result]
        await self._send(socket, encode(Packet(PacketType.ACK, socket.namespace, data, ack_id)))

    def _forget(self, socket: Socket, reason: str) -> None:
        if self.sockets.pop(socket.sid, None) is None:
            return
        client = socket.client
        client.sockets.pop(socket.namespace, None)
        for room in list(socket.rooms):
            self._leave(socket, room)
        socket.acks.clear()
        socket.gone.set()
        socket.decided.set()  # a reader waiting for its CONNECT drops what it held: nobody is there
        if not client.sockets and not client.engine.closed:
            client.engine.deadline = trio.current_time() + self.connect_timeout
        if socket.buffer is None:  # it was connected: tell its disconnect handler
            self._call_disconnect_handler(socket, reason)

    def _call_disconnect_handler(self, socket: Socket, reason: str) -> None:
        handler = self._handler(socket.namespace, "disconnect")
        if handler is not None:
            args: tuple[Any, ...] = (socket.sid, reason)
            arity = _arity(handler)
            if arity is not None and arity < 2:
                args = args[:arity]
            self._engine.nursery.start_soon(self._run_disconnect, handler, args)

    @staticmethod
    async def _run_disconnect(handler: Handler, args: tuple[Any, ...]) -> None:
        try:
            await _invoke(handler, *args)
        except Exception:
            log.exception("disconnect handler failed")

    # ------------------------------------------------------------------ outgoing
    async def _send_raw(self, client: Client, packet: Packet) -> None:
        await client.engine.send_messages(encode(packet))

    async def _send(self, socket: Socket, messages: list[str | bytes]) -> None:
        if socket.buffer is not None:
            socket.buffer.append(messages)
        else:
            await socket.client.engine.send_messages(messages)

    def _enter(self, socket: Socket, room: str) -> None:
        self._rooms.setdefault(socket.namespace, {}).setdefault(room, set()).add(socket.sid)
        socket.rooms.add(room)

    def _leave(self, socket: Socket, room: str) -> None:
        socket.rooms.discard(room)
        rooms = self._rooms.get(socket.namespace, {})
        members = rooms.get(room)
        if members is not None:
            members.discard(socket.sid)
            if not members:
                del rooms[room]

    def _recipients(self, namespace: str, to: str | list[str] | None, skip_sid: Any) -> list[Socket]:
        if isinstance(to, str) and skip_sid is None:
            socket = self.sockets.get(to)
            if socket is not None and socket.namespace == namespace:
                return [socket]  # the common case: one client by sid
        if to is None:
            sids: Iterable[str] = [s.sid for s in self.sockets.values() if s.namespace == namespace]
        else:
            rooms = self._rooms.get(namespace, {})
            wanted: set[str] = set()
            for room in [to] if isinstance(to, str) else to:
                wanted |= rooms.get(room, set())
                if room in self.sockets and self.sockets[room].namespace == namespace:
                    wanted.add(room)  # an sid still connecting is addressable too
            sids = wanted
        skip = set([skip_sid] if isinstance(skip_sid, str) else skip_sid or ())
        return [self.sockets[sid] for sid in sids if sid not in skip and sid in self.sockets]

    async def emit(
        self,
        event: str,
        data: Any = None,
        to: str | list[str] | None = None,
        room: str | list[str] | None = None,
        skip_sid: Any = None,
        namespace: str | None = None,
        callback: Callable[..., Any] | None = None,
    ) -> None:
        """Send ``event`` to one client (``to=sid``), a room, or everyone on ``namespace``.

        ``data`` as a tuple sends several arguments; ``None`` sends none.
        """
        namespace = namespace or "/"
        if isinstance(data, tuple):
            args = [event, *data]
        elif data is not None:
            args = [event, data]
        else:
            args = [event]
        recipients = self._recipients(namespace, to if to is not None else room, skip_sid)
        if callback is None:
            messages = encode(Packet(PacketType.EVENT, namespace, args))
            for socket in recipients:
                await self._send(socket, messages)
            return
        for socket in recipients:
            socket.ack_counter += 1
            socket.acks[socket.ack_counter] = callback
            await self._send(socket, encode(Packet(PacketType.EVENT, namespace, args, socket.ack_counter)))

    async def send(
        self,
        data: Any,
        to: str | None = None,
        room: str | None = None,
        skip_sid: Any = None,
        namespace: str | None = None,
        callback: Callable[..., Any] | None = None,
    ) -> None:
        """Emit the ``message`` event."""
        await self.emit("message", data, to=to, room=room, skip_sid=skip_sid, namespace=namespace, callback=callback)

    async def call(
        self,
        event: str,
        data: Any = None,
        to: str | None = None,
        sid: str | None = None,
        namespace: str | None = None,
        timeout: float = 60,
    ) -> Any:
        """Emit to one client and wait for its ack; returns its argument (a tuple if several).

        Raises ``TimeoutError`` after ``timeout`` seconds and ``Disconnected`` if the
        client leaves first.
        """
        target = to or sid
        socket = self.sockets.get(target) if target is not None else None
        if socket is None or socket.namespace != (namespace or "/"):
            raise Disconnected(f"no client {target!r} on namespace {namespace or '/'!r}")
        done = trio.Event()
        answer: list[Any] = []

        def on_ack(*args: Any) -> None:
            answer.extend(args)
            done.set()

        await self.emit(event, data, to=socket.sid, namespace=namespace, callback=on_ack)
        with trio.move_on_after(timeout) as scope:
            async with trio.open_nursery() as nursery:

                async def cancel_when_gone() -> None:
                    await socket.gone.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(cancel_when_gone)
                await done.wait()
                nursery.cancel_scope.cancel()
        if not done.is_set():
            if scope.cancelled_caught:
                raise TimeoutError(f"no ack for {event!r} from {socket.sid} within {timeout}s")
            raise Disconnected(f"client {socket.sid} disconnected before acknowledging {event!r}")
        if not answer:
            return None
        return answer[0] if len(answer) == 1 else tuple(answer)

    async def disconnect(self, sid: str, namespace: str | None = None, ignore_queue: bool = False) -> None:
        """Disconnect ``sid`` from ``namespace``; the client is told, its handler runs."""
        socket = self.sockets.get(sid)
        if socket is None or socket.namespace != (namespace or "/"):
            return
        was_connected = socket.buffer is None
        self._forget(socket, Reason.SERVER_DISCONNECT)  # first: the client may answer before our send returns
        if was_connected:
            await socket.client.engine.send_messages(encode(Packet(PacketType.DISCONNECT, socket.namespace)))

    # ------------------------------------------------------------------ rooms and sessions
    async def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        socket = self.sockets.get(sid)
        if socket is not None and socket.namespace == (namespace or "/"):
            self._enter(socket, room)

    async def leave_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        socket = self.sockets.get(sid)
        if socket is not None and socket.namespace == (namespace or "/"):
            self._leave(socket, room)

    async def close_room(self, room: str, namespace: str | None = None) -> None:
        for sid in list(self._rooms.get(namespace or "/", {}).get(room, ())):
            await self.leave_room(sid, room, namespace)

    def rooms(self, sid: str, namespace: str | None = None) -> list[str]:
        socket = self.sockets.get(sid)
        return sorted(socket.rooms) if socket is not None and socket.namespace == (namespace or "/") else []

    async def get_session(self, sid: str, namespace: str | None = None) -> dict[str, Any]:
        return self.sockets[sid].session

    async def save_session(self, sid: str, session: dict[str, Any], namespace: str | None = None) -> None:
        self.sockets[sid].session = session

    def transport(self, sid: str, namespace: str | None = None) -> str:
        return self.sockets[sid].client.engine.transport

    def get_environ(self, sid: str, namespace: str | None = None) -> dict[str, Any] | None:
        socket = self.sockets.get(sid)
        return socket.client.engine.environ if socket is not None else None

    def start_task(self, sid: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Run ``fn(*args)`` in ``sid``'s connection nursery: it is cancelled when the client goes.

        Returns False (and starts nothing) if ``sid`` is not connected.
        """
        socket = self.sockets.get(sid)
        if socket is None or socket.client.engine.closed:
            return False
        socket.client.engine.nursery.start_soon(fn, *args)
        return True

    def close(self, sid: str, reason: str = Reason.SERVER_DISCONNECT) -> None:
        """Drop ``sid``'s whole connection now (every namespace), without waiting for the client."""
        socket = self.sockets.get(sid)
        if socket is not None:
            socket.client.engine.close(reason)


AsyncServer = Server  # python-socketio's name
