"""Cache replication between agents (docs/protocol.md §19.8, issue 17 Deliver 4): the transport.

The holder's agent sends each cache update of a group to the agents of that group's standbys, which keep it on
disk; a write counts as acknowledged once one of them (besides the holder) answered ``ok``. Three parts:

- :class:`Record` and its codec (:func:`encode_record`, :func:`decode_record`): one update as compact bytes.
  Entries stay the bytes they came as; nothing here decodes a value. The decoder refuses malformed or oversize
  input with a one-line :class:`MalformedRecord`.
- The receiving side: :class:`ReplicaGate` (sans-IO: headers, body and the wall-clock time in, a
  :class:`Record` or a :class:`Refusal` out) behind :class:`ReplicaRoute`, an ``HttpApp`` mounted at
  ``POST /cluster/replica`` on the supervisor's own port (:func:`install_replica_route`).
- The sending side: :class:`Replicator`. Per (peer, group) it knows what the peer holds: a delta goes only to a
  peer that acknowledged the delta's base, anyone else gets the whole image.

Authentication: every agent of a cluster shares one secret (``secrets.cluster``). A request carries an
HMAC-SHA256 over a canonical string binding the method, the path, the sender, the receiver, a wall-clock
timestamp, a random nonce and the body's length and SHA-256 (:func:`canonical`). The receiver checks the head
before it reads a byte of body: a stranger's body is never buffered, only an authentic sender's may be as large
as a whole cache. The secret itself never travels and is never logged.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Literal, Protocol, TypeVar
from urllib.parse import quote, unquote

import attrs
import httpx
import trio

from .._errors import UrbanRobotError
from ..logs import Throttled
from ..protocol._cache import CacheChange, CacheImage, Chunks
from ..protocol._messages import cache_key_ok
from ..web import ConnectionGate, PeerWatch, Request, Response, Router, Upgrade

log = logging.getLogger("urban_robot.cluster.replica")
T = TypeVar("T")

PATH = "/cluster/replica"
MIN_SECRET = 16  # bytes of secrets.cluster
WINDOW = 30.0  # seconds: a request's timestamp may be this far from the receiver's wall clock, either way
MAX_NAME = 255  # UTF-8 bytes of a group's or an agent's name
MAX_INT = 2**63 - 1


class MalformedRecord(UrbanRobotError, ValueError):
    """Bytes that are not a valid replication record (or answer): one line saying what is wrong."""


# -- the record and its bytes -----------------------------------------------------------------------
@attrs.frozen
class Record:
    """One cache update of one group, from the holder's agent (``origin``) at its ``epoch``.

    ``seq`` is the sender's cache number for the group (it only grows while the sender runs); ``base`` the
    ``seq`` the change applies to, 0 for a whole image (``change.full``).
    """

    group: str
    origin: str
    epoch: int
    seq: int
    base: int
    change: CacheChange

    @property
    def whole(self) -> bool:
        return self.base == 0

    @classmethod
    def of_image(cls, group: str, origin: str, epoch: int, seq: int, image: CacheImage) -> Record:
        """The whole ``image`` (cache number ``seq``) as a record."""
        return cls(group, origin, epoch, seq, 0, image.as_change())

    @classmethod
    def update(
        cls, group: str, origin: str, epoch: int, seq: int, base: int, change: CacheChange, image: CacheImage
    ) -> Record:
        """``change`` on cache number ``base`` made ``image`` (number ``seq``): the change as a delta, or the whole
        image when it is one (``change.full``, or nothing to build on: ``base`` 0). A ``PersistCache`` maps 1:1."""
        if change.full or base == 0:
            return cls.of_image(group, origin, epoch, seq, image)
        return cls(group, origin, epoch, seq, base, change)


def _check_name(what: str, name: str) -> bytes:
    data = name.encode("utf-8", "surrogatepass") if isinstance(name, str) else b""
    if not name or len(data) > MAX_NAME or not cache_key_ok(name):
        raise MalformedRecord(f"a record's {what} must be 1 to {MAX_NAME} bytes of UTF-8, got {name!r:.80}")
    return data


def _check_numbers(epoch: int, seq: int, base: int, full: bool, deletes: int) -> None:
    if not all(0 <= n <= MAX_INT for n in (epoch, seq, base)):
        raise MalformedRecord("a record's epoch, seq and base must be integers from 0 to 2**63 - 1")
    if seq < 1:
        raise MalformedRecord(f"a record's seq starts at 1, got {seq}")
    if full != (base == 0):
        raise MalformedRecord(f"a record with base {base} must be {'a delta' if base else 'a whole image'}")
    if base >= seq:
        raise MalformedRecord(f"a delta applies to an earlier seq: base {base} is not below seq {seq}")
    if full and deletes:
        raise MalformedRecord("a whole image deletes nothing")


_MAGIC = b"URR1"
_NUMBERS = struct.Struct(">QQQB")  # epoch, seq, base, flags (1: a whole image)
_B8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_FULL = 1


def encode_record(record: Record) -> bytes:
    """``record`` as bytes (layout: docs/protocol.md §19.8): entries written as they are, never decoded."""
    change = record.change
    _check_numbers(record.epoch, record.seq, record.base, change.full, len(change.delete))
    group, origin = _check_name("group", record.group), _check_name("origin", record.origin)
    if change.delete & change.set.keys():
        raise MalformedRecord("a key is both set and deleted")
    out = [_MAGIC, bytes([len(group)]), group, bytes([len(origin)]), origin]
    out.append(_NUMBERS.pack(record.epoch, record.seq, record.base, _FULL if change.full else 0))
    out.append(_U32.pack(len(change.set)))
    for key, chunks in change.set.items():
        out += (_key(key), _U64.pack(sum(len(c) for c in chunks)), *chunks)
    out.append(_U32.pack(len(change.delete)))
    out += (_key(key) for key in sorted(change.delete))
    return b"".join(out)


def _key(key: str) -> bytes:
    if not cache_key_ok(key):
        raise MalformedRecord(f"not a cache key: {key!r:.80}")
    data = key.encode()
    return _U16.pack(len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.at = 0

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.view) - self.at:
            raise MalformedRecord(f"record cut short: {what} needs {n} bytes, {len(self.view) - self.at} left")
        piece = self.view[self.at : self.at + n]
        self.at += n
        return piece

    def unpack(self, fmt: struct.Struct, what: str) -> tuple[int, ...]:
        return fmt.unpack(self.take(fmt.size, what))

    def text(self, length: struct.Struct, what: str) -> str:
        (n,) = self.unpack(length, what)
        try:
            return str(self.take(n, what), "utf-8")
        except UnicodeDecodeError:
            raise MalformedRecord(f"a record's {what} is not UTF-8") from None

    def count(self, smallest: int, what: str) -> int:
        """A count of items of at least ``smallest`` bytes each: no more than the bytes left can hold."""
        (n,) = self.unpack(_U32, what)
        if n * smallest > len(self.view) - self.at:
            raise MalformedRecord(f"a record claims {n} {what}, more than its {len(self.view) - self.at} bytes hold")
        return n


def decode_record(data: bytes, limit: int) -> Record:
    """The record in ``data``; :class:`MalformedRecord` (one line) for anything else or past ``limit`` bytes."""
    if len(data) > limit:
        raise MalformedRecord(f"record of {len(data)} bytes is larger than the limit ({limit} bytes)")
    reader = _Reader(data)
    if bytes(reader.take(len(_MAGIC), "the header")) != _MAGIC:
        raise MalformedRecord("not a replication record (version 1): bad magic bytes")
    group = reader.text(_B8, "group")
    origin = reader.text(_B8, "origin")
    epoch, seq, base, flags = reader.unpack(_NUMBERS, "the numbers")
    if flags & ~_FULL:
        raise MalformedRecord(f"unknown record flags {flags:#x}")
    entries: dict[str, Chunks] = {}
    for _ in range(reader.count(_U16.size + _U64.size, "entries")):
        key = reader.text(_U16, "entry key")
        (size,) = reader.unpack(_U64, "entry size")
        if key in entries:
            raise MalformedRecord(f"entry {key!r:.80} appears twice")
        entries[key] = (bytes(reader.take(size, f"entry {key!r:.80}")),)
    deletes = [reader.text(_U16, "deleted key") for _ in range(reader.count(_U16.size, "deleted keys"))]
    if reader.at != len(data):
        raise MalformedRecord(f"{len(data) - reader.at} bytes after the end of the record")
    if len(set(deletes)) != len(deletes) or entries.keys() & set(deletes):
        raise MalformedRecord("a key is deleted twice, or both set and deleted")
    for key in (*entries, *deletes):
        if not cache_key_ok(key):
            raise MalformedRecord(f"not a cache key: {key!r:.80}")
    record = Record(group, origin, epoch, seq, base, CacheChange(bool(flags & _FULL), entries, frozenset(deletes)))
    _check_numbers(epoch, seq, base, bool(flags & _FULL), len(deletes))
    _check_name("group", group), _check_name("origin", origin)
    return record


def replica_body_limit(cache_max: int) -> int:
    """The largest record body an agent accepts, for its ``cache_max``.

    A whole image weighs ``cache_max`` at most, counting each entry's key (in characters) and 64 bytes besides
    its bytes; its record spends 10 bytes an entry and its keys' UTF-8, so an image with ASCII keys encodes to no
    more than its weight. Twice ``cache_max`` leaves room for keys beyond ASCII and a delta's deleted keys (an
    image of mostly long non-ASCII keys with tiny values could still pass it: refused 413, logged by the sender).
    """
    return 2 * cache_max + 64 * 1024


# -- answers ----------------------------------------------------------------------------------------
@attrs.frozen
class ReplicaAnswer:
    """What a receiving agent made of a record: ``ok`` (kept, on disk), ``resync`` (send me the whole image),
    or ``refused`` with a one-line ``reason``."""

    kind: Literal["ok", "resync", "refused"]
    reason: str = ""

    @classmethod
    def refused(cls, reason: str) -> ReplicaAnswer:
        return cls("refused", reason)

    @classmethod
    def of(cls, reply: Mapping[str, object]) -> ReplicaAnswer:
        """The answer a core's ``Reply`` body says: ``{"ok": True}``, ``{"resync": True}``, ``{"refused": why}``."""
        if reply.get("ok") is True:
            return OK
        if reply.get("resync") is True:
            return RESYNC
        return cls.refused(str(reply.get("refused", f"unexpected answer {dict(reply)!r:.200}")))

    def to_json(self) -> bytes:
        body: dict[str, str] = {"answer": self.kind}
        if self.kind == "refused":
            body["reason"] = self.reason
        return json.dumps(body).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ReplicaAnswer:
        try:
            body = json.loads(data)
        except ValueError:
            raise MalformedRecord("the peer's answer is not JSON") from None
        kind = body.get("answer") if isinstance(body, dict) else None
        if kind not in ("ok", "resync", "refused"):
            raise MalformedRecord(f"the peer's answer is not ok, resync or refused: {data[:80]!r}")
        reason = body.get("reason", "")
        return cls(kind, reason if isinstance(reason, str) else repr(reason))


OK = ReplicaAnswer("ok")
RESYNC = ReplicaAnswer("resync")

Receiver = Callable[[Record], Awaitable[ReplicaAnswer]]


# -- signatures -------------------------------------------------------------------------------------
H_AGENT = "X-Urban-Robot-Agent"  # the sender's name, percent-encoded (UTF-8)
H_TO = "X-Urban-Robot-To"  # the receiver's name, percent-encoded
H_TIME = "X-Urban-Robot-Time"  # Unix time in milliseconds, decimal
H_NONCE = "X-Urban-Robot-Nonce"  # 32 lower-case hex digits, random per request
H_DIGEST = "X-Urban-Robot-Content-SHA256"  # the body's SHA-256, 64 lower-case hex digits
H_SIGNATURE = "X-Urban-Robot-Signature"  # HMAC-SHA256(secret, canonical(...)), 64 lower-case hex digits
_HEX = frozenset("0123456789abcdef")


def check_secret(secret: bytes) -> bytes:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET:
        raise ValueError(
            f"secrets.cluster must be at least {MIN_SECRET} bytes: set the same long random value on every agent"
        )
    return secret


def canonical(
    method: str, path: str, sender: str, receiver: str, millis: int, nonce: str, length: int, digest: str
) -> bytes:
    """The string a request's signature is computed over (docs/protocol.md §19.8), one field a line."""
    fields = ("urban-robot replica v1", method, path, quote(sender, safe=""), quote(receiver, safe=""))
    return "\n".join((*fields, str(millis), nonce, str(length), digest)).encode("ascii")


def _mac(secret: bytes, message: bytes) -> str:
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(
    secret: bytes, sender: str, receiver: str, body: bytes, now: float, digest: str | None = None
) -> dict[str, str]:
    """The headers that authenticate ``body`` from ``sender`` to ``receiver`` at wall-clock time ``now``
    (``digest``: the body's SHA-256 in hex, if computed already)."""
    millis, nonce = int(now * 1000), secrets.token_hex(16)
    digest = digest or hashlib.sha256(body).hexdigest()
    message = canonical("POST", PATH, sender, receiver, millis, nonce, len(body), digest)
    return {
        H_AGENT: quote(sender, safe=""),
        H_TO: quote(receiver, safe=""),
        H_TIME: str(millis),
        H_NONCE: nonce,
        H_DIGEST: digest,
        H_SIGNATURE: _mac(secret, message),
    }


# -- the receiving side, sans-IO ----------------------------------------------------------------------
@attrs.frozen
class Refusal:
    """A request refused: the HTTP ``status``, a one-line ``reason`` (sent back), and a ``kind`` for the log."""

    status: int
    reason: str
    kind: str

    def response(self) -> Response:
        return Response(self.status, json.dumps({"error": self.reason}).encode(), content_type="application/json")


@attrs.frozen
class Head:
    """What an authentic request's head says."""

    sender: str
    millis: int
    nonce: str
    digest: str


UNSIGNED = "replica request unsigned or signature wrong: every agent needs the same secrets.cluster"


class NonceMemory:
    """The nonces of accepted requests while their timestamps are inside the window: a replay is refused.

    Bounded: past ``capacity`` live nonces new requests are refused (503) until old ones leave the window.
    Only authentic requests are remembered, so only agents holding the secret can fill it.
    """

    def __init__(self, window: float = WINDOW, capacity: int = 100_000) -> None:
        self.window = window
        self.capacity = capacity
        self._live: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._live)

    def seen(self, nonce: str) -> bool:
        return nonce in self._live

    def full(self, now: float) -> bool:
        self._forget(now)
        return len(self._live) >= self.capacity

    def remember(self, nonce: str, sent: float, now: float) -> None:
        self._forget(now)
        self._live.add(nonce)
        heapq.heappush(self._expiry, (sent + self.window, nonce))

    def _forget(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            self._live.discard(heapq.heappop(self._expiry)[1])


class ReplicaGate:
    """Decides what a replication request is worth, cheapest and least trusting checks first (sans-IO).

    :meth:`check_head` runs on the head alone (no body read yet): its names, the signature, the time.
    :meth:`check` runs on the whole request: all of that again, the body's digest, the nonce (remembered
    then), the record itself and its origin. ``now`` is the wall clock, in seconds.
    """

    def __init__(
        self, me: str, secret: bytes, limit: int, *, window: float = WINDOW, nonces: NonceMemory | None = None
    ) -> None:
        self.me = me
        self._secret = check_secret(secret)
        self.limit = limit
        self.window = window
        self.nonces = nonces if nonces is not None else NonceMemory(window)

    def check_head(self, headers: Mapping[str, str], now: float) -> Head | Refusal:
        try:
            sender = unquote(headers[H_AGENT.lower()], errors="strict")
            to = unquote(headers[H_TO.lower()], errors="strict")
            millis_text, nonce = headers[H_TIME.lower()], headers[H_NONCE.lower()]
            digest, signature = headers[H_DIGEST.lower()], headers[H_SIGNATURE.lower()]
        except (KeyError, UnicodeDecodeError):
            return Refusal(401, UNSIGNED, "unsigned")
        if not (millis_text.isascii() and millis_text.isdigit() and len(millis_text) <= 15):
            return Refusal(401, UNSIGNED, "unsigned")
        if not all(len(v) == n and set(v) <= _HEX for v, n in ((nonce, 32), (digest, 64), (signature, 64))):
            return Refusal(401, UNSIGNED, "unsigned")
        length = headers.get("content-length", "")
        if not (length.isascii() and length.isdigit()):
            return Refusal(411, "replica requests carry a Content-Length", "no-length")
        millis = int(millis_text)
        expected = _mac(self._secret, canonical("POST", PATH, sender, to, millis, nonce, int(length), digest))
        if not hmac.compare_digest(expected, signature):
            return Refusal(401, UNSIGNED, "forged")
        if to != self.me:
            return Refusal(
                421,
                f"replica request meant for agent {to!r:.80}; this is {self.me!r}: check its peer address",
                "misdirected",
            )
        skew = now - millis / 1000
        if abs(skew) > self.window:
            reason = (
                f"replica request from {sender!r:.80} is {skew:+.0f} s off this agent's clock"
                f" (limit ±{self.window:.0f} s): check NTP on both hosts"
            )
            return Refusal(401, reason, "stale")
        return Head(sender, millis, nonce, digest)

    def check(self, headers: Mapping[str, str], body: bytes, now: float) -> Record | Refusal:
        """The whole request's verdict: :meth:`authenticate`, then :meth:`record`."""
        head = self.authenticate(headers, len(body), hashlib.sha256(body).hexdigest(), now)
        return head if isinstance(head, Refusal) else self.record(head, body)

    def authenticate(self, headers: Mapping[str, str], length: int, digest: str, now: float) -> Head | Refusal:
        """The head again, with the body read: its ``length`` and SHA-256 ``digest`` (hex); the nonce is used up."""
        head = self.check_head(headers, now)
        if isinstance(head, Refusal):
            return head
        if length > self.limit:
            return self.too_large()
        if not hmac.compare_digest(digest, head.digest):
            return Refusal(401, UNSIGNED, "forged")
        if self.nonces.seen(head.nonce):
            return Refusal(401, "replica request replayed (its nonce was used already)", "replayed")
        if self.nonces.full(now):
            return Refusal(503, f"too many replica requests in the last {self.window:.0f} s: retry later", "busy")
        self.nonces.remember(head.nonce, head.millis / 1000, now)
        return head

    def record(self, head: Head, body: bytes) -> Record | Refusal:
        """The record an authentic request carries (may run in a worker thread: it touches no state)."""
        try:
            record = decode_record(body, self.limit)
        except MalformedRecord as exc:
            return Refusal(400, str(exc), "malformed")
        if record.origin != head.sender:
            return Refusal(400, f"record from {record.origin!r:.80} sent by agent {head.sender!r:.80}", "malformed")
        return record

    def too_large(self) -> Refusal:
        return Refusal(
            413,
            f"replica record larger than {self.limit} bytes (twice cache_max): raise cache_max on this agent",
            "oversize",
        )


# -- the receiving side: the route --------------------------------------------------------------------
IN_THREAD = 1024 * 1024  # bytes of body past which hashing and (de)coding run in a worker thread


async def _off_loop(size: int, work: Callable[[], T]) -> T:
    """``work()``, in a worker thread when ``size`` is large: 100 MB take tenths of a second, heartbeats wait not."""
    return await trio.to_thread.run_sync(work) if size > IN_THREAD else work()


class ReplicaRoute:
    """``POST /cluster/replica`` as an ``HttpApp`` mounted on the supervisor's router.

    Mounted rather than added as a plain route because its body limit depends on who asks: a head that does
    not authenticate may carry no body at all (401 before a byte is read), an authentic one up to
    ``gate.limit``. Refusals are logged at INFO, at most one line per kind per 10 s.
    """

    def __init__(self, gate: ReplicaGate, receiver: Receiver, *, clock: Callable[[], float] = time.time) -> None:
        self.gate = gate
        self.receiver = receiver
        self.clock = clock
        self.quiet = Throttled(log)

    def body_limit(self, request: Request) -> int:
        if request.method != "POST" or isinstance(self.gate.check_head(request.headers, self.clock()), Refusal):
            return 0
        return self.gate.limit

    def too_large(self, request: Request) -> Response:
        head = self.gate.check_head(request.headers, self.clock())
        return self._refuse(request, head if isinstance(head, Refusal) else self.gate.too_large())

    async def handle_request(self, request: Request, peer: PeerWatch) -> Response:
        if request.method != "POST" or request.path.rstrip("/") != PATH:
            return Response.text(405, "replica records are POSTed to /cluster/replica", headers=(("Allow", "POST"),))
        body = request.body
        digest = await _off_loop(len(body), lambda: hashlib.sha256(body).hexdigest())
        head = self.gate.authenticate(request.headers, len(body), digest, self.clock())
        if isinstance(head, Refusal):
            return self._refuse(request, head)
        decision = await _off_loop(len(body), lambda: self.gate.record(head, body))
        if isinstance(decision, Refusal):
            return self._refuse(request, decision)
        try:
            answer = await self.receiver(decision)
        except Exception:
            log.exception(
                "replica record of %s seq %d from %s could not be taken", decision.group, decision.seq, decision.origin
            )
            return Refusal(500, "the receiving agent failed to take the record (see its log)", "failed").response()
        return Response(200, answer.to_json(), content_type="application/json")

    async def handle_websocket(self, request: Request, upgrade: Upgrade) -> Response | None:
        return Response.text(405, "replica records are POSTed to /cluster/replica")

    def _refuse(self, request: Request, refusal: Refusal) -> Response:
        host = request.client[0] if request.client else "?"
        claimed = (request.header(H_AGENT.lower()) or "?")[:80]
        self.quiet.info(
            f"replica-{refusal.kind}",
            "replica request from %s (agent %r): %d %s",
            host,
            claimed,
            refusal.status,
            refusal.reason,
        )
        return refusal.response()


def _encoded(record: Record) -> tuple[bytes, str]:
    body = encode_record(record)
    return body, hashlib.sha256(body).hexdigest()


class _Server(Protocol):
    router: Router
    connections: ConnectionGate


def install_replica_route(
    server: Router | _Server, receiver: Receiver, *, me: str, secret: bytes, cache_max: int
) -> ReplicaRoute:
    """Serve ``POST /cluster/replica`` on ``server`` (a ``socketio.Server``, or a bare ``web.Router``).

    ``receiver`` is awaited with each authentic, well-formed record and its answer returned; it answers ``ok``
    only once the record is on disk. A server's ``Limits.max_body`` must allow ``replica_body_limit(cache_max)``
    (a ``ValueError`` says so otherwise): only authentic senders may send that much.
    """
    limit = replica_body_limit(cache_max)
    if isinstance(server, Router):
        router = server
    else:
        router = server.router
        if server.connections.limits.max_body < limit:
            raise ValueError(
                f"the server's Limits.max_body ({server.connections.limits.max_body}) is below the replica body "
                f"limit ({limit}, twice cache_max): build it with Limits(max_body=replica_body_limit(cache_max))"
            )
    route = ReplicaRoute(ReplicaGate(me, secret, limit), receiver)
    router.mount(PATH, route)
    return route


# -- the sending side -------------------------------------------------------------------------------
MIN_RATE = 8 * 1024 * 1024  # bytes/s a peer is given to take a large body, on top of the time-out
BACKOFF = (0.5, 30.0)  # first and longest wait before a lagging peer is sent the whole image again


def _at(record: Record) -> tuple[int, int]:
    """Where a peer that took ``record`` stands: a delta of the same epoch on this seq builds on it."""
    return record.epoch, record.seq


@attrs.define(eq=False)
class _Lane:
    """What one peer holds of one group, and what is still to send it."""

    url: str
    acked: tuple[int, int] | None = None  # (epoch, seq) the peer holds (it answered ok); None: unknown, send whole
    done: int = 0  # the newest seq whose sending is over, acknowledged or not
    pending: list[Record] = attrs.Factory(list)  # deltas to send, in order
    whole: Callable[[], Record] | None = None  # the newest image's maker
    lagging: bool = False  # the last attempt failed: the whole image goes after a back-off
    failures: int = 0
    busy: bool = False  # a task is sending


class Replicator:
    """Sends each group's cache updates to the peers' agents (docs/protocol.md §19.8).

    Start :meth:`run` in the supervisor's nursery (``await nursery.start(replicator.run)``): the sends outlive
    :meth:`replicate`, which returns once ``need`` peers acknowledged. One task per (peer, group) at most,
    sending in order; updates that pile up behind a slow peer are replaced by one whole image.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        me: str,
        secret: bytes,
        timeout: float = 5.0,
        *,
        clock: Callable[[], float] = time.time,
        max_pending: int = 64,
    ) -> None:
        self.http = http
        self.me = me
        self._secret = check_secret(secret)
        self.timeout = timeout
        self.clock = clock
        self.max_pending = max_pending
        self.quiet = Throttled(log, every=60.0)
        self._peers: dict[str, str] = {}
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._progress = trio.Event()
        self._nursery: trio.Nursery | None = None

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """The agents to replicate to, ``{name: base URL}``; a peer gone or moved starts again from a whole image."""
        self._peers = {name: url.rstrip("/") for name, url in peers.items() if name != self.me}
        for key, lane in list(self._lanes.items()):
            if self._peers.get(key[0]) != lane.url:
                del self._lanes[key]
        self._moved()

    def acked(self, group: str) -> dict[str, tuple[int, int]]:
        """The peers known to hold ``group``, each with the ``(epoch, seq)`` it acknowledged last."""
        return {name: lane.acked for (name, g), lane in self._lanes.items() if g == group and lane.acked is not None}

    def forget(self, group: str) -> None:
        """Stop sending ``group`` (this agent no longer holds it): its queued updates and retries are dropped."""
        for key in [key for key in self._lanes if key[1] == group]:
            del self._lanes[key]
        self._moved()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def replicate(
        self, record: Record, whole: Callable[[], Record], *, need: int = 1, to: Iterable[str] | None = None
    ) -> set[str]:
        """Send ``record`` to the peers (all, or those named in ``to``); the names of those that acknowledged it.

        Returns once ``need`` of them did, or every one answered otherwise, or ``timeout`` passed. ``whole()``
        makes the group's whole image (seq at least ``record.seq``) for a peer that cannot take the delta.
        Never raises for a peer's fault: transport errors, refusals and time-outs are logged.
        """
        if self._nursery is None:
            raise RuntimeError("Replicator.run is not running: start it in the supervisor's nursery first")
        names = set(self._peers) if to is None else set(to) & set(self._peers)
        lanes = {name: self._add(name, record, whole) for name in names}
        with trio.move_on_after(self.timeout):
            while True:
                progress = self._progress
                acked = {name for name, lane in lanes.items() if self._holds(name, lane, record)}
                waiting = [
                    lane
                    for name, lane in lanes.items()
                    if self._lanes.get((name, record.group)) is lane and lane.done < record.seq and not lane.lagging
                ]
                if len(acked) >= need or not waiting:
                    return acked
                await progress.wait()
        return {name for name, lane in lanes.items() if self._holds(name, lane, record)}

    def _holds(self, name: str, lane: _Lane, record: Record) -> bool:
        return (
            self._lanes.get((name, record.group)) is lane
            and lane.acked is not None
            and lane.acked >= (record.epoch, record.seq)
        )

    def _add(self, name: str, record: Record, whole: Callable[[], Record]) -> _Lane:
        url = self._peers[name]
        lane = self._lanes.setdefault((name, record.group), _Lane(url))
        lane.whole = whole
        lane.pending.append(record)
        if len(lane.pending) > self.max_pending:
            lane.pending.clear()
            lane.acked = None  # too far behind: the whole image instead
        if not lane.busy:
            lane.busy = True
            assert self._nursery is not None
            self._nursery.start_soon(self._drive, name, record.group, lane)
        return lane

    def _moved(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def _drive(self, name: str, group: str, lane: _Lane) -> None:
        try:
            while self._lanes.get((name, group)) is lane and (lane.pending or lane.lagging):
                if lane.lagging:
                    await trio.sleep(min(BACKOFF[0] * 2 ** (lane.failures - 1), BACKOFF[1]))
                    if self._lanes.get((name, group)) is not lane:
                        return
                await self._send_pending(name, lane)
                self._moved()
        finally:
            lane.busy = False

    async def _send_pending(self, name: str, lane: _Lane) -> None:
        batch, lane.pending = lane.pending, []
        if lane.acked is not None:
            batch = [r for r in batch if (r.epoch, r.seq) > lane.acked]
        if not batch and not lane.lagging:
            return
        newest = max((r.seq for r in batch), default=lane.done)
        chained = (
            lane.acked is not None
            and not lane.lagging
            and all((r.epoch, r.base) == (lane.acked if i == 0 else _at(batch[i - 1])) for i, r in enumerate(batch))
        )
        for record in batch if chained else [None]:
            answer = await self._send(name, lane, record)
            if answer is RESYNC:
                answer = await self._send(name, lane, None)
            if answer is not OK:
                lane.done = max(lane.done, newest)
                return
        lane.done = max(lane.done, newest)

    async def _send(self, name: str, lane: _Lane, record: Record | None) -> ReplicaAnswer | None:
        """Send ``record`` (None: the whole image); OK, RESYNC, or None when it was not taken (logged)."""
        if record is None:
            try:
                assert lane.whole is not None
                record = lane.whole()
            except Exception:
                log.exception("the whole cache image could not be made for replication to %s", name)
                self._failed(lane)
                return None
        try:
            body, digest = await _off_loop(record.change.size, lambda: _encoded(record))
        except MalformedRecord as exc:
            self.quiet.log(logging.ERROR, f"{name}:encode", "replica record not sent to %s: %s", name, exc)
            self._failed(lane)
            return None
        headers = sign(self._secret, self.me, name, body, self.clock(), digest)
        headers["Content-Type"] = "application/octet-stream"
        answer: ReplicaAnswer | None = None
        with trio.move_on_after(self.timeout + len(body) / MIN_RATE) as scope:
            try:
                response = await self.http.post(lane.url + PATH, content=body, headers=headers, timeout=self.timeout)
                answer = self._answer(name, response)
            except (httpx.HTTPError, OSError) as exc:
                kind = type(exc).__name__
                self._warn(name, kind, "replica peer %s unreachable at %s: %s", name, lane.url, kind)
        if scope.cancelled_caught:
            self._warn(name, "timeout", "replica peer %s at %s: no answer in time", name, lane.url)
        if answer is None:
            self._failed(lane)
            return None
        if answer.kind == "refused":
            self._warn(
                name,
                "refused",
                "replica peer %s refused %s seq %d: %s",
                name,
                record.group,
                record.seq,
                answer.reason[:200],
            )
            lane.acked = None
            return None
        if answer.kind == "ok":
            if lane.failures:
                log.info("replica peer %s takes records again", name)
            lane.acked, lane.failures, lane.lagging = _at(record), 0, False
            return OK
        lane.acked = None
        return RESYNC

    def _answer(self, name: str, response: httpx.Response) -> ReplicaAnswer | None:
        if response.status_code != 200:
            try:
                reason = str(response.json().get("error", ""))[:200]
            except (ValueError, AttributeError):
                reason = response.text[:200]
            self._warn(
                name,
                f"http-{response.status_code}",
                "replica peer %s answered %d: %s",
                name,
                response.status_code,
                reason,
            )
            return None
        try:
            return ReplicaAnswer.from_json(response.content)
        except MalformedRecord as exc:
            self._warn(name, "answer", "replica peer %s: %s", name, exc)
            return None

    def _warn(self, name: str, kind: str, message: str, *args: object) -> None:
        self.quiet.log(logging.WARNING, f"{name}:{kind}", message, *args)

    def _failed(self, lane: _Lane) -> None:
        lane.acked, lane.lagging = None, True
        lane.failures += 1
        return None
