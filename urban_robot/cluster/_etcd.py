"""An etcd v3 client on trio: etcd's documented JSON gateway, through httpx.

    EtcdClient.open([url, ...]) ── POST url/v3/<service>/<method>, JSON ──▶ etcd's gRPC gateway (same port as gRPC)
        unary calls: one attempt per endpoint, each bounded by ``attempt_timeout``, starting at the last one
                     that answered; a refused connection, a time-out or "no leader" (gRPC 14) moves to the next
        lease_keepalive_once: one JSON message to the stream endpoint, whose body then ends: one answer
        watch: a streamed answer, one JSON object a line; resumed on the next endpoint after the last
               revision delivered

Why the gateway and not a library: every Python etcd v3 client speaks gRPC through ``grpcio``, whose async
API is asyncio-only (no trio support is planned), and the ones that exist are unmaintained or new
(docs/cluster.md has the survey). The gateway is part of etcd (``/v3/...`` since 3.4), speaks JSON, and
httpx already runs on trio here.

The encoding is the gateway's proto3 JSON: ``key``/``value`` bytes are base64, 64-bit integers are strings,
fields with their zero value are left out (a missing ``kvs`` is no key, a missing ``type`` is a PUT, a
missing ``TTL`` in a keep-alive answer is an expired lease).

Every answer carries the store's revision when it was made (``revision``): the epoch of §8.2 is the
revision of the transaction that created the lease key (``Acquired.revision``), strictly increasing
cluster-wide. Reads are linearizable (etcd's default); every request asks for a member with a leader
(``hasleader``), so a member cut off from its cluster answers "no leader" at once instead of a stale or
hanging answer, and ends its watches.

Retries across endpoints repeat a request that may have been applied by the member that did not answer in
time. Puts, deletes, revokes and keep-alives do no harm twice; a granted lease that is lost so expires by
its TTL; a transaction may find its own earlier write: ``create_if_absent`` reads the key when the compare
fails, and a holder whose value and lease are the caller's own is the caller's (``Acquired.mine``).
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import attrs
import httpx
import trio

from .._errors import UrbanRobotError

ATTEMPT_TIMEOUT = 1.0  # seconds for one endpoint to answer; a call tries each endpoint once
# Ask for a member that has a leader: grpc-gateway passes "Grpc-Metadata-*" headers on as gRPC metadata,
# and etcd answers "no leader" (gRPC 14, HTTP 503) instead of waiting, and cancels a leaderless member's
# watches (etcd's clientv3.WithRequireLeader does the same).
HEADERS = {"Grpc-Metadata-hasleader": "true"}
CLOSE_TIMEOUT = 1.0  # seconds to close a stream, even when cancelled
UNAVAILABLE = 14  # gRPC's code for "no leader", "leader changed", "request timed out", "stopping"
CANCELED = 1  # gRPC's code for "the client connection is closing": a member shutting down

Json = dict[str, Any]
T = TypeVar("T")


class EtcdError(UrbanRobotError):
    """Something about etcd: one line naming the endpoint(s) and what to do."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered: all down, refusing connections, too slow, or without a leader."""


class EtcdRefused(EtcdError):
    """A member answered with an error; ``code`` is the gRPC status code (0 when the answer was not etcd's)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class LeaseNotFound(EtcdRefused):
    """The etcd lease expired or was revoked: whatever was attached to it is gone."""


class Compacted(EtcdRefused):
    """A watch asked for revisions etcd compacted away; read again and watch from the read's revision."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message, 11)
        self.compact_revision = compact_revision


# --- values ----------------------------------------------------------------------------------------------------


@attrs.frozen
class Answer:
    """What every answer carries: the store's revision when it was made, and the member that made it."""

    revision: int
    member_id: int


@attrs.frozen
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int  # the revision that created this key (0 in a compare: "absent")
    mod_revision: int  # the revision of its last change
    version: int  # changes since its creation, 1 at creation
    lease: int  # the etcd lease it is attached to, 0 for none


@attrs.frozen
class Range(Answer):
    kvs: tuple[KeyValue, ...]
    count: int  # keys in the range (more than ``kvs`` when limited)

    @property
    def kv(self) -> KeyValue | None:
        """The one key asked for, if it exists."""
        return self.kvs[0] if self.kvs else None


@attrs.frozen
class Deleted(Answer):
    deleted: int


@attrs.frozen
class Grant(Answer):
    id: int
    ttl: int  # seconds, as etcd chose it: never less than asked, maybe more (its minimum is 1.5 elections)


@attrs.frozen
class LeaseTTL(Answer):
    id: int
    ttl: int  # whole seconds left, rounded down (a keep-alive's answer: the whole TTL again)
    granted_ttl: int = 0  # 0 in a keep-alive's answer


@attrs.frozen
class Status(Answer):
    leader: int  # the member id this member takes for the leader, 0 for none
    raft_term: int
    version: str


@attrs.frozen
class Txn(Answer):
    succeeded: bool
    responses: tuple[Range | Answer | Deleted, ...]  # one per operation of the branch taken


@attrs.frozen
class Acquired(Answer):
    """``create_if_absent``'s result: ``created``, or the holder found instead (None if it vanished meanwhile)."""

    created: bool
    holder: KeyValue | None
    value: bytes = attrs.field(repr=False)
    lease: int = 0

    @property
    def mine(self) -> bool:
        """Created now, or by this caller's earlier attempt (same value, same lease) that the answer was lost for."""
        holder = self.holder
        return self.created or (holder is not None and holder.value == self.value and holder.lease == self.lease)

    @property
    def epoch(self) -> int:
        """The holder's creation revision: §8.2's epoch (strictly increasing cluster-wide); 0 if none."""
        return self.revision if self.created else (self.holder.create_revision if self.holder else 0)


@attrs.frozen
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KeyValue  # a delete's: the key and the delete's revision (``mod_revision``), no value
    revision: int  # the revision of the watch answer that carried it


Target = Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
Result = Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]
_TARGET_FIELD = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision", "LEASE": "lease"}


@attrs.frozen
class Compare:
    """One condition of a transaction: ``target`` of ``key`` is ``result`` to ``value``."""

    key: bytes
    target: Target
    result: Result
    value: int | bytes

    @classmethod
    def absent(cls, key: bytes) -> Compare:
        return cls(key, "CREATE", "EQUAL", 0)

    @classmethod
    def mod_revision(cls, key: bytes, revision: int) -> Compare:
        return cls(key, "MOD", "EQUAL", revision)

    @classmethod
    def value_is(cls, key: bytes, value: bytes) -> Compare:
        return cls(key, "VALUE", "EQUAL", value)

    def to_json(self) -> Json:
        body: Json = {"key": _b64(self.key), "target": self.target, "result": self.result}
        if self.target == "VALUE":
            assert isinstance(self.value, bytes), self
            body["value"] = _b64(self.value)
        else:
            assert isinstance(self.value, int), self
            body[_TARGET_FIELD[self.target]] = str(self.value)
        return body


@attrs.frozen
class Op:
    """One operation of a transaction's branch: ``Op.put``, ``Op.get`` or ``Op.delete``."""

    kind: Literal["put", "range", "delete_range"]
    body: Json

    @classmethod
    def put(cls, key: bytes, value: bytes, lease: int = 0) -> Op:
        return cls("put", _put_body(key, value, lease))

    @classmethod
    def get(cls, key: bytes, *, prefix: bool = False) -> Op:
        return cls("range", _range_body(key, prefix))

    @classmethod
    def delete(cls, key: bytes, *, prefix: bool = False) -> Op:
        return cls("delete_range", _range_body(key, prefix))

    def to_json(self) -> Json:
        return {f"request_{self.kind}": self.body}


# --- the client --------------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class EtcdClient:
    """Calls to an etcd cluster through any of ``endpoints`` (``http://host:2379``), preferring the last that answered.

    A call takes at most ``call_timeout`` (``attempt_timeout`` per endpoint); ``lease_grant`` refuses a TTL
    that a call could outlast, so a renewal that fails is known to have failed while the lease still runs.
    """

    endpoints: tuple[str, ...]
    http: httpx.AsyncClient
    attempt_timeout: float = ATTEMPT_TIMEOUT
    _preferred: int = 0

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        endpoints: Iterable[str],
        *,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> AsyncIterator[EtcdClient]:
        """A client with its own connection pool; ``transport`` is the tests' seam (``httpx.MockTransport``)."""
        urls = tuple(url.rstrip("/") for url in endpoints)
        if not urls or not all(url.startswith(("http://", "https://")) for url in urls):
            raise ValueError(f"etcd endpoints must be http(s):// URLs, one at least: {list(urls)}")
        # trust_env=False: an HTTP(S)_PROXY in the environment must not carry the agents' coordination.
        async with httpx.AsyncClient(transport=transport, trust_env=False, headers=HEADERS, timeout=None) as http:
            yield cls(urls, http, attempt_timeout)

    @property
    def call_timeout(self) -> float:
        return self.attempt_timeout * len(self.endpoints)

    # KV

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> Answer:
        return _answer(await self._call("kv/put", _put_body(key, value, lease)))

    async def get(self, key: bytes, *, prefix: bool = False, limit: int = 0) -> Range:
        body = _range_body(key, prefix)
        if limit:
            body["limit"] = str(limit)
        return _range(await self._call("kv/range", body))

    async def delete(self, key: bytes, *, prefix: bool = False) -> Deleted:
        answer = await self._call("kv/deleterange", _range_body(key, prefix))
        return Deleted(*_header(answer), deleted=int(answer.get("deleted", 0)))

    async def txn(self, compare: Iterable[Compare], success: Iterable[Op], failure: Iterable[Op] = ()) -> Txn:
        body = {
            "compare": [c.to_json() for c in compare],
            "success": [op.to_json() for op in success],
            "failure": [op.to_json() for op in failure],
        }
        answer = await self._call("kv/txn", body)
        responses = tuple(_response_op(op) for op in answer.get("responses", ()))
        return Txn(*_header(answer), succeeded=bool(answer.get("succeeded", False)), responses=responses)

    async def create_if_absent(self, key: bytes, value: bytes, *, lease: int) -> Acquired:
        """Create ``key`` attached to ``lease`` unless it exists; else say who holds it.

        Created: ``revision`` is the key's creation revision (the epoch). Not created: ``holder`` is the key
        as read in the same transaction (``mine`` tells a lost answer to an earlier attempt of ours apart).
        """
        txn = await self.txn([Compare.absent(key)], [Op.put(key, value, lease)], [Op.get(key)])
        holder = None if txn.succeeded else _only_range(txn).kv
        return Acquired(txn.revision, txn.member_id, txn.succeeded, holder, value, lease)

    async def put_if_unchanged(self, key: bytes, value: bytes, *, mod_revision: int, lease: int = 0) -> Txn:
        """Replace ``key`` if its last change is still ``mod_revision``; the failure branch reads it."""
        return await self.txn([Compare.mod_revision(key, mod_revision)], [Op.put(key, value, lease)], [Op.get(key)])

    async def delete_if_unchanged(self, key: bytes, *, mod_revision: int) -> Txn:
        """Delete ``key`` if its last change is still ``mod_revision`` (release only what is still ours)."""
        return await self.txn([Compare.mod_revision(key, mod_revision)], [Op.delete(key)], [Op.get(key)])

    # leases

    async def lease_grant(self, ttl: int) -> Grant:
        if ttl <= self.call_timeout:
            raise ValueError(
                f"an etcd lease of {ttl} s does not outlast one call ({self.call_timeout:g} s at most: "
                f"{self.attempt_timeout:g} s for each of {len(self.endpoints)} endpoints): use a longer TTL"
            )
        answer = await self._call("lease/grant", {"TTL": str(ttl), "ID": "0"})
        if answer.get("error"):
            raise EtcdRefused(f"etcd refused a lease of {ttl} s: {answer['error']}: check etcd's log")
        return Grant(*_header(answer), id=int(answer["ID"]), ttl=int(answer["TTL"]))

    async def lease_keepalive_once(self, lease: int) -> LeaseTTL:
        """One renewal: the keep-alive stream endpoint with one message, whose answer ends after one reply.

        Raises ``LeaseNotFound`` if the lease is gone (etcd answers a TTL of 0). The caller counts the new TTL
        from when it sent this request, not from the answer (§8.2's safety chain).
        """
        answer = await self._call("lease/keepalive", {"ID": str(lease)}, stream=True)
        ttl = int(answer.get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFound(f"etcd lease {lease:x} expired or was revoked: grant a new one", 5)
        return LeaseTTL(*_header(answer), id=lease, ttl=ttl)

    async def lease_revoke(self, lease: int) -> Answer:
        """Revoke ``lease`` and delete every key attached to it; ``LeaseNotFound`` if it is already gone."""
        return _answer(await self._call("lease/revoke", {"ID": str(lease)}))

    async def lease_ttl(self, lease: int) -> LeaseTTL:
        answer = await self._call("lease/timetolive", {"ID": str(lease)})
        ttl = int(answer.get("TTL", 0))  # whole seconds left, rounded down: 0 (left out) is a lease still alive
        if ttl < 0:  # etcd's answer for a lease it does not have: -1
            raise LeaseNotFound(f"etcd lease {lease:x} expired or was revoked: grant a new one", 5)
        return LeaseTTL(*_header(answer), id=lease, ttl=ttl, granted_ttl=int(answer.get("grantedTTL", 0)))

    # maintenance

    async def status(self) -> Status:
        """The status of the member that answers (the first reachable endpoint)."""
        answer = await self._call("maintenance/status", {})
        return Status(
            *_header(answer),
            leader=int(answer.get("leader", 0)),
            raft_term=int(answer.get("raftTerm", 0)),
            version=str(answer.get("version", "")),
        )

    # watch

    @asynccontextmanager
    async def watch(self, key: bytes, *, prefix: bool = False, start_revision: int = 0) -> AsyncIterator[Watch]:
        """The changes of ``key`` (or every key under it) from ``start_revision`` (0: from now), in order.

        ``async with client.watch(b"/groups/", prefix=True, start_revision=r + 1) as events:`` then
        ``async for event in events`` (or ``await events.next()``). The watch is created on a member when the
        ``async with`` is entered. See ``Watch`` for fail-over and cancellation.
        """
        watch = Watch(self, _range_body(key, prefix), start_revision)
        try:
            await watch.open()
            yield watch
        finally:
            await watch.aclose()

    async def _open_watch(self, endpoint: str, body: Json) -> _Stream:
        """A watch stream whose ``created`` answer has come."""
        stream = await self._open_stream(endpoint, "watch", body)
        try:
            first = await anext(stream.lines, None)
            if first is None:
                raise _EndpointFailed(f"{endpoint}: the watch stream ended before it was created")
            _check_canceled(endpoint, first)
            if not first.get("created"):
                raise _EndpointFailed(f"{endpoint}: the watch's first answer was not its creation")
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def _open_stream(self, endpoint: str, path: str, body: Json) -> _Stream:
        request = self.http.build_request("POST", f"{endpoint}/v3/{path}", json=body)
        response = await self.http.send(request, stream=True)
        if response.is_error:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise _refusal(endpoint, path, response.status_code, _error_of(response.text))
        return _Stream(endpoint, response, _aiter_json_lines(endpoint, response))

    # one request, with fail-over

    async def _call(self, path: str, body: Json, *, stream: bool = False) -> Json:
        if stream:
            return await self._on_any_endpoint(lambda endpoint: self._first_of_stream(endpoint, path, body))
        return await self._on_any_endpoint(lambda endpoint: self._post(endpoint, path, body))

    async def _on_any_endpoint(self, attempt: Callable[[str], Awaitable[T]]) -> T:
        """``attempt`` on each endpoint in turn from the preferred one, each within ``attempt_timeout``."""
        failures: list[str] = []
        for step in range(len(self.endpoints)):
            index = (self._preferred + step) % len(self.endpoints)
            endpoint = self.endpoints[index]
            with trio.move_on_after(self.attempt_timeout):
                try:
                    result = await attempt(endpoint)
                except httpx.TransportError as exc:
                    failures.append(f"{endpoint}: {_transport_error(exc)}")
                    continue
                except _EndpointFailed as exc:
                    failures.append(str(exc))
                    continue
                self._preferred = index
                return result
            failures.append(f"{endpoint}: no answer within {self.attempt_timeout:.2g} s")
        raise EtcdUnavailable(_unreachable(self.endpoints, failures))

    async def _post(self, endpoint: str, path: str, body: Json) -> Json:
        return _decode(endpoint, path, await self.http.post(f"{endpoint}/v3/{path}", json=body))

    async def _first_of_stream(self, endpoint: str, path: str, body: Json) -> Json:
        """One message to a stream endpoint and its first answer; closing the request ends the server's side."""
        stream = await self._open_stream(endpoint, path, body)
        try:
            first = await anext(stream.lines, None)
        finally:
            await stream.aclose()
        if first is None:
            raise _EndpointFailed(f"{endpoint}: the {path} stream ended without an answer")
        return first


@attrs.define(eq=False)
class Watch:
    """The events of one watch, in revision order, each once: ``async for event in watch`` or ``await watch.next()``.

    Fail-over: when the stream breaks (a member dies, loses its leader, or the connection drops) it is opened
    again on any endpoint from ``next_revision``, the revision after the last event handed out; the events of
    one revision arrive together, so none is skipped or repeated. ``EtcdUnavailable`` when no endpoint takes
    the watch; ``Compacted`` when etcd no longer has ``next_revision``.

    Cancellation is safe: a cancelled ``next()`` drops the stream it was reading, and the next call opens one
    again from ``next_revision`` (what was received and not handed out is kept).
    """

    client: EtcdClient
    request: Json
    next_revision: int  # 0 until the first event: "from when the watch was created"
    _stream: _Stream | None = None
    _pending: deque[WatchEvent] = attrs.field(factory=deque)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        return await self.next()

    async def next(self) -> WatchEvent:
        while not self._pending:
            await self._receive()
        event = self._pending.popleft()
        self.next_revision = event.kv.mod_revision + 1
        return event

    @property
    def endpoint(self) -> str | None:
        """The endpoint whose stream is being read (None between a break and the next ``next()``)."""
        return self._stream.endpoint if self._stream else None

    async def open(self) -> None:
        """Create the watch on a member if no stream is open (``next()`` does it too)."""
        if self._stream is None:
            self._stream = await self.client._on_any_endpoint(self._open)

    async def _receive(self) -> None:
        await self.open()
        stream = self._stream
        assert stream is not None
        try:
            answer = await anext(stream.lines, None)
            if answer is None:
                raise _EndpointFailed(f"{stream.endpoint}: the watch stream ended")
            _check_canceled(stream.endpoint, answer)
        except (httpx.TransportError, _EndpointFailed):
            await self._drop()  # opened again on the next call, from the next endpoint on
            self.client._preferred = (self.client.endpoints.index(stream.endpoint) + 1) % len(self.client.endpoints)
            return
        except BaseException:
            await self._drop()
            raise
        revision = _header(answer)[0]
        self._pending.extend(_event(raw, revision) for raw in answer.get("events", ()))

    async def _open(self, endpoint: str) -> _Stream:
        create = dict(self.request)
        if self.next_revision:
            create["start_revision"] = str(self.next_revision)
        return await self.client._open_watch(endpoint, {"create_request": create})

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()

    async def aclose(self) -> None:
        await self._drop()


# --- the gateway's JSON ----------------------------------------------------------------------------------------------


class _EndpointFailed(Exception):
    """This endpoint did not serve the request; the next one may (never escapes the client)."""


@attrs.define(eq=False)
class _Stream:
    """A streamed answer being read, one JSON object a line."""

    endpoint: str
    response: httpx.Response
    lines: AsyncGenerator[Json, None]

    async def aclose(self) -> None:
        # Shielded (this runs on cancellation too) and bounded: closing drops the connection, waits for nothing.
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            try:
                await self.lines.aclose()
            finally:
                await self.response.aclose()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def prefix_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``prefix`` (etcd's ``range_end``)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # every key from ``prefix`` on
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _range_body(key: bytes, prefix: bool) -> Json:
    body: Json = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _b64(prefix_end(key))
    return body


def _put_body(key: bytes, value: bytes, lease: int) -> Json:
    body: Json = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return body


def _header(answer: Json) -> tuple[int, int]:
    header = answer.get("header") or {}
    return int(header.get("revision", 0)), int(header.get("member_id", 0))


def _answer(answer: Json) -> Answer:
    return Answer(*_header(answer))


def _kv(raw: Json) -> KeyValue:
    return KeyValue(
        key=_unb64(raw.get("key", "")),
        value=_unb64(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _range(answer: Json) -> Range:
    kvs = tuple(_kv(raw) for raw in answer.get("kvs", ()))
    return Range(*_header(answer), kvs=kvs, count=int(answer.get("count", 0)))


def _response_op(op: Json) -> Range | Answer | Deleted:
    if "response_range" in op:
        return _range(op["response_range"])
    if "response_delete_range" in op:
        inner = op["response_delete_range"]
        return Deleted(*_header(inner), deleted=int(inner.get("deleted", 0)))
    return _answer(op.get("response_put") or {})


def _only_range(txn: Txn) -> Range:
    [answer] = txn.responses
    assert isinstance(answer, Range), txn
    return answer


def _event(raw: Json, revision: int) -> WatchEvent:
    kind: Literal["put", "delete"] = "delete" if raw.get("type") == "DELETE" else "put"
    return WatchEvent(kind, _kv(raw.get("kv") or {}), revision)


def _check_canceled(endpoint: str, answer: Json) -> None:
    """A watch answer saying etcd ended the watch: compacted revisions, or another reason."""
    if not answer.get("canceled"):
        return
    compacted = int(answer.get("compact_revision", 0))
    if compacted:
        raise Compacted(
            f"etcd at {endpoint} compacted the revisions this watch asked for (up to {compacted}): "
            "read the keys again and watch from the read's revision + 1",
            compacted,
        )
    reason = answer.get("cancel_reason") or "no reason given"
    if "no leader" in reason:
        raise _EndpointFailed(f"{endpoint}: {reason}")
    raise EtcdRefused(f"etcd at {endpoint} ended the watch: {reason}: check the key and the revision")


async def _aiter_json_lines(endpoint: str, response: httpx.Response) -> AsyncGenerator[Json, None]:
    """A streamed gateway answer: one ``{"result": ...}`` or ``{"error": ...}`` object a line."""
    async for line in response.aiter_lines():
        if line.strip():
            yield _stream_item(endpoint, line)


def _stream_item(endpoint: str, line: str) -> Json:
    try:
        item = json.loads(line)
    except ValueError as exc:
        raise _EndpointFailed(f"{endpoint}: not etcd's JSON gateway ({line[:80]!r})") from exc
    if not isinstance(item, dict):
        raise _EndpointFailed(f"{endpoint}: not etcd's JSON gateway ({line[:80]!r})")
    if "error" in item:
        error = item["error"] if isinstance(item["error"], dict) else {"message": str(item["error"])}
        raise _refusal(endpoint, "stream", int(error.get("http_code", 0)), error)
    result = item.get("result")
    if not isinstance(result, dict):
        raise _EndpointFailed(f"{endpoint}: not etcd's JSON gateway ({line[:80]!r})")
    return result


def _decode(endpoint: str, path: str, response: httpx.Response) -> Json:
    if response.is_error:
        raise _refusal(endpoint, path, response.status_code, _error_of(response.text))
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise _EndpointFailed(
            f"{endpoint}: not etcd's JSON gateway (HTTP {response.status_code}: {response.text[:80]!r})"
        )
    return answer


def _error_of(text: str) -> Mapping[str, Any]:
    try:
        error = json.loads(text)
    except ValueError:
        return {"message": text[:200]}
    return error if isinstance(error, dict) else {"message": text[:200]}


def _refusal(endpoint: str, path: str, status: int, error: Mapping[str, Any]) -> Exception:
    """An error answer: "try the next member" (unavailable, not a gateway), or the caller's ``EtcdRefused``."""
    inner = error.get("error")
    if isinstance(inner, Mapping):  # a stream endpoint's refusal: {"error": {"grpc_code": ..., "message": ...}}
        error = inner
    code = int(error.get("code") or error.get("grpc_code") or 0)  # unary answers say "code", streams "grpc_code"
    message = str(error.get("message") or error.get("error") or f"HTTP {status}")
    if code == UNAVAILABLE or status == 503 or (code == CANCELED and "closing" in message):
        # A member going down answers "the client connection is closing" (Canceled): the next member may serve.
        return _EndpointFailed(f"{endpoint}: {message}")
    if status == 404 and not code:
        return _EndpointFailed(f"{endpoint}: no /v3/{path} here (HTTP 404): is it etcd 3.4 or later?")
    if "lease not found" in message:
        return LeaseNotFound(f"etcd at {endpoint}: {message}: grant a new lease", code)
    return EtcdRefused(f"etcd at {endpoint} refused {path}: {message} (gRPC code {code}): {_hint(code, message)}", code)


def _hint(code: int, message: str = "") -> str:
    # PermissionDenied, Unauthenticated; etcd with authentication on answers a request without a user InvalidArgument
    # ("user name is empty") instead.
    if code in (7, 16) or "user name" in message or "auth" in message.lower():
        return "Urban Robot does not log in to etcd: give it a cluster without authentication"
    if code == 8:  # ResourceExhausted: the quota, or too many requests
        return "etcd's database is full or overloaded: compact and defragment it (etcdctl), or raise its quota"
    return "check etcd's log; if the request was malformed, report it as an Urban Robot bug"


def _transport_error(exc: httpx.TransportError) -> str:
    detail = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {detail}" if str(exc) else detail


def _unreachable(endpoints: tuple[str, ...], failures: list[str]) -> str:
    return (
        f"cannot reach etcd at {', '.join(endpoints)}: {'; '.join(failures)}: "
        "start etcd (or the missing members) or correct the cluster's endpoints"
    )
