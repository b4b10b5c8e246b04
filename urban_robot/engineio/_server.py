"""The Engine.IO v4 server on trio: sessions over HTTP long-polling and WebSocket.

The trio shell around this package's sans-IO codec (``_packets``, ``_handshake``); it is an
``HttpApp`` that ``web.Router`` mounts under the Socket.IO path.

Each session has one owner task in the server's nursery. It holds the
session's nursery (where the layer above runs that client's handlers, so a
client's work dies with its connection) and runs the ping/pong clock. A
WebSocket's reader runs in its HTTP connection's task and feeds the session.

Upgrade (polling → WebSocket), as the reference servers do it: the client opens
a WebSocket with the session's sid and sends ``2probe``; we answer ``3probe``
and answer the pending polling GET (and any later one) with NOOP; the client
sends ``5`` on the WebSocket, and from then on everything goes there.

Trust: a session starts *untrusted*. Its messages (WebSocket message, polling
body) may be ``preauth_message`` bytes, a few kilobytes, enough for a CONNECT
and its credentials; an untrusted long-polling session holds a connection slot
(``ConnectionGate.hold``) while it waits between requests. The layer above calls
``Session.trust()`` once the peer authenticated; only then may it send
``max_payload``. A stranger therefore costs kilobytes, not ``max_payload``.
"""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any, Protocol

import trio

from .._errors import ProtocolError
from ..logs import Throttled
from ..web import ConnectionGate, PeerWatch, Request, Response, Upgrade, WebSocket, WebSocketClosed
from ._handshake import EngineError, EngineErrorCode, open_packet, parse_query
from ._packets import Packet, PacketType, decode_packet, decode_payload, encode_packet, encode_payload

log = logging.getLogger("urban_robot.engineio")

PROBE_TIMEOUT = 10.0
NOTIFY_TIMEOUT = 2.0  # seconds the goodbye (CLOSE packet) to a peer gets before its connection is dropped
MAX_PAYLOAD_PACKETS = 1000
PREAUTH_MESSAGE = 4096  # bytes an untrusted session may send at once: a CONNECT with its auth fits
GET_BODY = 1024  # a GET carries no body; a little is tolerated


class Reason:
    """Why a session ended: the strings python-socketio uses."""

    CLIENT_DISCONNECT = "client disconnect"
    SERVER_DISCONNECT = "server disconnect"
    SERVER_SHUTDOWN = "server shutdown"
    PING_TIMEOUT = "ping timeout"
    TRANSPORT_CLOSE = "transport close"
    TRANSPORT_ERROR = "transport error"


class EngineHandler(Protocol):
    def engine_open(self, session: Session) -> None: ...

    async def engine_message(self, session: Session, message: str | bytes, start: int = 0) -> None: ...

    def engine_close(self, session: Session, reason: str) -> None: ...


class Session:
    """One Engine.IO session (one client), whichever transport carries it."""

    def __init__(self, server: EngineServer, sid: str, transport: str, environ: dict[str, Any]) -> None:
        self.server = server
        self.sid = sid
        self.transport = transport
        self.environ = environ
        self.ws: WebSocket | None = None
        self.queue: list[Packet] = []
        self.wake = trio.Event()
        self.polling_busy = False
        self.upgrading = False
        self.closed = False
        self.close_reason = ""
        self.closed_event = trio.Event()
        self.finished = trio.Event()  # the owner task said goodbye to the peer
        self.pong = trio.Event()
        self.nursery: trio.Nursery = None  # type: ignore[assignment]  # set by the owner task
        self._deadline = math.inf
        self._next_ping = math.inf
        self._wait_scope: trio.CancelScope | None = None
        self.data: Any = None  # for the layer above
        self._notify_peer = False
        self.trusted = False
        self.holds_slot = False  # an untrusted polling session holds a connection slot

    @property
    def max_message(self) -> int:
        """The most one message (or polling body) from this peer may hold: small until trusted."""
        return self.server.max_payload if self.trusted else min(self.server.preauth_message, self.server.max_payload)

    def trust(self) -> None:
        """The peer authenticated (the layer above decided): raise its limits, give back its slot."""
        if self.trusted:
            return
        self.trusted = True
        if self.ws is not None:
            self.ws.max_message = self.max_message
        self._release_slot()

    def _release_slot(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            if self.server.gate is not None:
                self.server.gate.release()

    @property
    def deadline(self) -> float:
        """When the session closes unless someone moves this (Socket.IO's connect_timeout)."""
        return self._deadline

    @deadline.setter
    def deadline(self, when: float) -> None:
        self._deadline = when
        if self._wait_scope is not None:
            self._wait_scope.deadline = min(self._next_ping, when)

    # -- sending -----------------------------------------------------------
    async def send_messages(self, messages: list[str | bytes]) -> None:
        """Send Engine.IO MESSAGE packets; silently dropped once the session is closed."""
        if self.closed:
            return
        ws = self.ws
        if ws is not None:
            try:
                await ws.send_many(messages, text_prefix="4")
            except WebSocketClosed:
                self.close(Reason.TRANSPORT_CLOSE, notify_peer=False)
            return
        self.queue.extend(Packet(PacketType.MESSAGE, m) for m in messages)
        self.wake.set()

    async def _send_packet(self, packet: Packet) -> None:
        ws = self.ws
        if ws is not None:
            try:
                await ws.send(encode_packet(packet))
            except WebSocketClosed:
                self.close(Reason.TRANSPORT_CLOSE, notify_peer=False)
        else:
            self.queue.append(packet)
            self.wake.set()

    # -- closing -------------------------------------------------------------
    def close(self, reason: str, *, notify_peer: bool = True) -> None:
        """End the session now (idempotent); the owner task tells the peer and cleans up."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.server.sessions.pop(self.sid, None)
        self._release_slot()
        if notify_peer and self.ws is None:
            self.queue.append(Packet(PacketType.CLOSE))
        self._notify_peer = notify_peer
        self.wake.set()
        self.closed_event.set()
        self.server.handler.engine_close(self, reason)

    # -- receiving -----------------------------------------------------------
    async def receive_packet(self, packet: Packet) -> None:
        ptype = packet.type
        if ptype is PacketType.MESSAGE:
            await self.server.handler.engine_message(self, packet.data)
        elif ptype is PacketType.PONG:
            self.pong.set()
        elif ptype is PacketType.CLOSE:
            self.close(Reason.CLIENT_DISCONNECT, notify_peer=False)
        elif ptype is PacketType.PING:
            await self._send_packet(Packet(PacketType.PONG, packet.data))
        elif ptype is PacketType.NOOP:
            pass
        else:
            raise ProtocolError(f"unexpected {ptype.name} packet from a client")

    # -- the owner task --------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        server = self.server
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                task_status.started()
                await self._clock(server.ping_interval, server.ping_timeout)
                nursery.cancel_scope.cancel()
        except Exception:
            # A bug in one client's tasks ends that client, never the server.
            log.exception("session %s: internal error, closing it", self.sid)
            self.close(Reason.TRANSPORT_ERROR)
        finally:
            if self.ws is not None:
                with trio.CancelScope(shield=True):
                    # Bounded: a peer stopped by a signal reads nothing, and a send of ours to it may hold the
                    # socket's send lock for ever; unbounded, this goodbye waited for it, shielded, for ever (the
                    # session never ended, and neither could the server's nursery).
                    with trio.move_on_after(NOTIFY_TIMEOUT):
                        if self._notify_peer:
                            try:
                                await self.ws.send("1")
                            except WebSocketClosed:
                                pass
                    await self.ws.close()  # time-limited itself; it drops the connection, failing any stuck send
            self.finished.set()

    async def _clock(self, interval: float, timeout: float) -> None:
        self._next_ping = trio.current_time() + interval
        while not self.closed:
            with trio.move_on_at(min(self._next_ping, self._deadline)) as self._wait_scope:
                await self.closed_event.wait()
                return
            self._wait_scope = None
            now = trio.current_time()
            if now >= self.deadline:
                self.server.quiet.info("no-connect", "session %s: no Socket.IO CONNECT in time, closing", self.sid)
                self.close(Reason.TRANSPORT_CLOSE)
                return
            if now < self._next_ping:
                continue
            self.pong = trio.Event()
            await self._send_packet(Packet(PacketType.PING))
            with trio.move_on_after(timeout):
                await self.pong.wait()
            if self.closed:
                return
            if not self.pong.is_set():
                self.server.quiet.info("no-pong", "session %s: no pong within %ss, closing", self.sid, timeout)
                self.close(Reason.PING_TIMEOUT, notify_peer=False)
                return
            self._next_ping = trio.current_time() + interval


class EngineServer:
    def __init__(
        self,
        handler: EngineHandler,
        *,
        ping_interval: float,
        ping_timeout: float,
        max_payload: int,
        cors_allowed_origins: str | list[str] | None,
        transports: tuple[str, ...] = ("polling", "websocket"),
        preauth_message: int = PREAUTH_MESSAGE,
        gate: ConnectionGate | None = None,
    ) -> None:
        self.handler = handler
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_payload = max_payload
        self.preauth_message = preauth_message
        self.gate = gate  # untrusted polling sessions hold slots of it
        self.quiet = Throttled(log)  # what strangers cause: at most a line per kind per 10 s, with counts
        self.cors_allowed_origins = cors_allowed_origins
        self.transports = transports
        self.sessions: dict[str, Session] = {}
        self.nursery: trio.Nursery = None  # type: ignore[assignment]  # set by serve()

    # -- plumbing ----------------------------------------------------------------
    async def _open_session(self, transport: str, request: Request, *, holds_slot: bool = False) -> Session:
        sid = secrets.token_urlsafe(15)
        session = Session(self, sid, transport, _environ(request))
        session.holds_slot = holds_slot
        self.sessions[sid] = session
        await self.nursery.start(session.run)
        self.handler.engine_open(session)
        return session

    def _handshake(self, session: Session) -> Packet:
        upgrades = ["websocket"] if session.transport == "polling" and "websocket" in self.transports else []
        return open_packet(
            session.sid,
            upgrades=upgrades,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            max_payload=self.max_payload,
        )

    def _cors_headers(self, request: Request) -> tuple[tuple[str, str], ...] | None:
        """CORS answer headers, or ``None`` if the request's Origin is refused."""
        origin = request.header("origin")
        allowed = self.cors_allowed_origins
        if origin is None or allowed == []:
            return ()
        if allowed == "*":
            ok = True
        elif allowed is None:
            host = request.header("host", "")
            ok = origin in (f"http://{host}", f"https://{host}")
        else:
            ok = origin in ([allowed] if isinstance(allowed, str) else allowed)
        if not ok:
            return None
        return (("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true"))

    # -- HTTP long-polling ------------------------------------------------------
    def body_limit(self, request: Request) -> int:
        """A polling POST may carry its session's ``max_message`` (small until trusted); nothing else a body."""
        if request.method != "POST":
            return GET_BODY
        try:
            sid = parse_query(request.query).sid
        except EngineError:
            return GET_BODY
        session = self.sessions.get(sid) if sid is not None else None
        return session.max_message if session is not None else self.preauth_message

    def too_large(self, request: Request) -> Response:
        """An oversize polling body ends its session, as the reference servers do."""
        try:
            sid = parse_query(request.query).sid
        except EngineError:
            sid = None
        session = self.sessions.get(sid) if sid is not None else None
        if session is not None:
            session.close(Reason.TRANSPORT_ERROR)
        return Response.text(413, "Payload too large")

    async def handle_request(self, request: Request, peer: PeerWatch) -> Response:
        cors = self._cors_headers(request)
        if cors is None:
            return Response.text(400, "Not an accepted origin.")
        if request.method == "OPTIONS":
            allow_headers = request.header("access-control-request-headers")
            extra: tuple[tuple[str, str], ...] = (("Access-Control-Allow-Methods", "OPTIONS, GET, POST"),)
            if allow_headers:
                extra += (("Access-Control-Allow-Headers", allow_headers),)
            return Response(204, headers=cors + extra)
        try:
            response = await self._polling(request, peer)
        except EngineError as exc:
            response = Response(exc.status, exc.body(), content_type="application/json")
        return _with_headers(response, cors)

    async def _polling(self, request: Request, peer: PeerWatch) -> Response:
        query = parse_query(request.query)
        if query.transport != "polling" or "polling" not in self.transports:
            raise EngineError(EngineErrorCode.UNKNOWN_TRANSPORT)
        if request.method not in ("GET", "POST"):
            raise EngineError(EngineErrorCode.BAD_HANDSHAKE_METHOD)
        if query.sid is None:
            if request.method != "GET":
                raise EngineError(EngineErrorCode.BAD_HANDSHAKE_METHOD)
            if self.gate is not None and not self.gate.hold():
                return Response.text(503, "Too many connections")
            opened = await self._open_session("polling", request, holds_slot=self.gate is not None)
            return Response(200, encode_payload([self._handshake(opened)]).encode())
        session = self.sessions.get(query.sid)
        if session is None or session.transport != "polling":
            raise EngineError(EngineErrorCode.UNKNOWN_SID)
        if request.method == "GET":
            return await self._long_poll(session, peer)
        return await self._post(session, request)

    async def _long_poll(self, session: Session, peer: PeerWatch) -> Response:
        if session.polling_busy:
            # Two GETs at once for one session is a client bug the spec forbids.
            session.close(Reason.TRANSPORT_ERROR)
            raise EngineError(EngineErrorCode.BAD_REQUEST)
        session.polling_busy = True
        try:
            if session.upgrading and not session.queue:
                session.queue.append(Packet(PacketType.NOOP))
            if not session.queue:
                if not await peer.wait(session.wake):
                    session.close(Reason.TRANSPORT_CLOSE, notify_peer=False)
                    return Response(400)
            # An empty answer would read as an error packet to engine.io-client: say NOOP instead.
            packets, session.queue = session.queue or [Packet(PacketType.NOOP)], []
            session.wake = trio.Event()
            return Response(200, encode_payload(packets).encode())
        finally:
            session.polling_busy = False

    async def _post(self, session: Session, request: Request) -> Response:
        if len(request.body) > session.max_message:
            session.close(Reason.TRANSPORT_ERROR)
            return Response.text(413, "Payload too large")
        try:
            packets = decode_payload(request.body, max_packets=MAX_PAYLOAD_PACKETS)
            for packet in packets:
                await session.receive_packet(packet)
        except ProtocolError as exc:
            self.quiet.info("invalid-packet", "session %s: invalid packet, closing: %s", session.sid, exc)
            session.close(Reason.TRANSPORT_ERROR)
            raise EngineError(EngineErrorCode.BAD_REQUEST) from exc
        return Response(200, b"ok")

    # -- WebSocket -------------------------------------------------------------------
    async def handle_websocket(self, request: Request, upgrade: Upgrade) -> Response | None:
        cors = self._cors_headers(request)
        if cors is None:
            return Response.text(400, "Not an accepted origin.")
        try:
            query = parse_query(request.query)
            if query.transport != "websocket" or "websocket" not in self.transports:
                raise EngineError(EngineErrorCode.UNKNOWN_TRANSPORT)
            if request.method != "GET":
                raise EngineError(EngineErrorCode.BAD_HANDSHAKE_METHOD)
            session: Session | None = None
            if query.sid is not None:
                session = self.sessions.get(query.sid)
                if session is None:
                    raise EngineError(EngineErrorCode.UNKNOWN_SID)
        except EngineError as exc:
            return Response(exc.status, exc.body(), content_type="application/json")
        if session is not None and (session.transport != "polling" or session.upgrading):
            # A second upgrade of a session that has one (done or under way): the reference server accepts the
            # WebSocket and closes it at once (engine.io's onWebSocket), and clients expect a close, not a 400.
            ws = await upgrade.accept(max_message=self.preauth_message)
            await ws.close()
            return None
        ws = await upgrade.accept(max_message=session.max_message if session is not None else self.preauth_message)
        if session is None:
            session = await self._open_session("websocket", request)
            session.ws = ws
            await session._send_packet(self._handshake(session))
        elif not await self._upgrade(session, ws):
            await ws.close()
            return None
        await self._read_websocket(session, ws)
        return None

    async def _upgrade(self, session: Session, ws: WebSocket) -> bool:
        """Run the probe/upgrade exchange; True once the session moved to ``ws``."""
        session.upgrading = True
        try:
            with trio.move_on_after(PROBE_TIMEOUT):
                if await ws.receive() != "2probe":
                    return False
                await ws.send("3probe")
                session.queue.append(Packet(PacketType.NOOP))
                session.wake.set()
                if await ws.receive() != "5":
                    return False
                if session.closed:
                    return False
                session.transport = "websocket"
                session.ws = ws
                ws.max_message = session.max_message  # it may have been trusted during the probe
                queued, session.queue = session.queue, []
                messages = [p for p in queued if p.type is not PacketType.NOOP]
                if messages:
                    await ws.send_many([encode_packet(p) for p in messages])
                return True
            return False
        except WebSocketClosed:
            return False
        finally:
            session.upgrading = False

    async def _read_websocket(self, session: Session, ws: WebSocket) -> None:
        try:
            while not session.closed:
                frame = await ws.receive()
                if type(frame) is str and frame[:1] == "4":
                    # The hot path: hand the frame over whole (no copy of a large message).
                    await self.handler.engine_message(session, frame, 1)
                else:
                    await session.receive_packet(decode_packet(frame))
                del frame  # do not hold the last message while waiting for the next
        except WebSocketClosed as exc:
            reason = Reason.TRANSPORT_ERROR if exc.code == 1009 else Reason.TRANSPORT_CLOSE
            session.close(reason, notify_peer=False)
        except ProtocolError as exc:
            self.quiet.info("invalid-packet", "session %s: invalid packet, closing: %s", session.sid, exc)
            session.close(Reason.TRANSPORT_ERROR)
        finally:
            if not session.closed:
                session.close(Reason.TRANSPORT_CLOSE, notify_peer=False)
            with trio.CancelScope(shield=True):
                await session.finished.wait()  # bounded: closing a WebSocket has a time-out


def _with_headers(response: Response, extra: tuple[tuple[str, str], ...]) -> Response:
    if not extra:
        return response
    return Response(response.status, response.body, response.content_type, response.headers + extra)


def _environ(request: Request) -> dict[str, Any]:
    """A WSGI-style environ, as python-socketio hands its ``connect`` handlers."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "PATH_INFO": request.path,
        "QUERY_STRING": request.query,
        "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
        "REMOTE_ADDR": request.client[0] if request.client else "",
        "REMOTE_PORT": str(request.client[1]) if request.client else "",
        "urban_robot.request": request,
    }
    for name, value in request.headers.items():
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = value
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
    return environ
