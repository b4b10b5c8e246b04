"""The etcd client at its HTTP seam (``httpx.MockTransport``): the gateway's JSON, fail-over, time-outs, the watch's
resumption and cancellation, errors in one line. No etcd needed; test_etcd.py checks the same against the real one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio

from urban_robot.cluster import (
    Compacted,
    EtcdClient,
    EtcdRefused,
    EtcdUnavailable,
    LeaseNotFound,
    prefix_end,
)

A, B = "http://a:2379", "http://b:2379"
HEADER = {"cluster_id": "1", "member_id": "18446744073709551615", "revision": "7", "raft_term": "2"}

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ok(**fields: Any) -> httpx.Response:
    return httpx.Response(200, json={"header": HEADER, **fields})


def lines(*answers: dict[str, Any], forever: bool = False) -> httpx.Response:
    """A streamed gateway answer: one ``{"result": ...}`` a line, then the end (or silence)."""

    async def body() -> AsyncIterator[bytes]:
        for answer in answers:
            yield (json.dumps({"result": answer}) + "\n").encode()
        if forever:
            await trio.sleep_forever()

    return httpx.Response(200, content=body())


class Etcd:
    """Routes each request to ``routes[(host, path)]``; remembers every request."""

    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.routes = routes
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        self.seen.append((request.url.host, request.url.path, body))
        assert request.headers["Grpc-Metadata-hasleader"] == "true"
        handler = self.routes.get((request.url.host, request.url.path))
        if handler is None:
            raise httpx.ConnectError("Connection refused", request=request)
        return await handler(request)


def answer(response: httpx.Response) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        return response

    return handler


def client(etcd: Etcd, *endpoints: str, attempt_timeout: float = 1.0) -> Any:
    return EtcdClient.open(endpoints or (A,), attempt_timeout=attempt_timeout, transport=httpx.MockTransport(etcd))


def test_a_prefix_is_the_range_up_to_its_successor() -> None:
    assert prefix_end(b"/groups/") == b"/groups0"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff") == prefix_end(b"") == b"\0"  # every key from there on


async def test_bytes_travel_in_base64_integers_as_strings_zero_fields_left_out() -> None:
    kv = {"key": b64(b"/g/\x00"), "create_revision": "5", "mod_revision": "7", "version": "2", "lease": "42"}
    etcd = Etcd({("a", "/v3/kv/range"): answer(ok(kvs=[kv], count="1"))})
    async with client(etcd) as c:
        got = await c.get(b"/g/", prefix=True)
    assert etcd.seen == [("a", "/v3/kv/range", {"key": b64(b"/g/"), "range_end": b64(b"/g0")})]
    assert (got.revision, got.member_id, got.count) == (7, 2**64 - 1, 1)
    assert got.kv is not None and got.kv.key == b"/g/\x00" and got.kv.value == b""  # an empty value is left out
    assert (got.kv.create_revision, got.kv.mod_revision, got.kv.version, got.kv.lease) == (5, 7, 2, 42)


async def test_create_if_absent_is_one_transaction_reading_the_holder_when_it_fails() -> None:
    holder = {"key": b64(b"k"), "value": b64(b"other"), "create_revision": "3", "mod_revision": "3", "lease": "9"}
    taken = ok(responses=[{"response_range": {"header": HEADER, "kvs": [holder], "count": "1"}}])  # no "succeeded"
    etcd = Etcd({("a", "/v3/kv/txn"): answer(taken)})
    async with client(etcd) as c:
        acquired = await c.create_if_absent(b"k", b"me", lease=42)
    [(_, _, body)] = etcd.seen
    assert body == {
        "compare": [{"key": b64(b"k"), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
        "success": [{"request_put": {"key": b64(b"k"), "value": b64(b"me"), "lease": "42"}}],
        "failure": [{"request_range": {"key": b64(b"k")}}],
    }
    assert not acquired.created and not acquired.mine and acquired.epoch == 3
    assert acquired.holder is not None and (acquired.holder.value, acquired.holder.lease) == (b"other", 9)


async def test_a_member_without_leader_or_connection_is_skipped_and_the_next_one_preferred() -> None:
    no_leader = httpx.Response(
        503, json={"error": "etcdserver: no leader", "code": 14, "message": "etcdserver: no leader"}
    )
    etcd = Etcd({("a", "/v3/kv/put"): answer(no_leader), ("b", "/v3/kv/put"): answer(ok())})
    async with client(etcd, "http://down:2379", A, B) as c:
        await c.put(b"k", b"v")
        await c.put(b"k", b"v")
    assert [host for host, _, _ in etcd.seen] == ["down", "a", "b", "b"]


async def test_a_silent_member_costs_one_attempt_timeout(autojump_clock: trio.abc.Clock) -> None:
    async def silent(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError

    etcd = Etcd({("a", "/v3/kv/put"): silent, ("b", "/v3/kv/put"): answer(ok())})
    async with client(etcd, A, B, attempt_timeout=0.5) as c:
        start = trio.current_time()
        await c.put(b"k", b"v")
        assert trio.current_time() - start == pytest.approx(0.5)


async def test_every_endpoint_down_is_one_line_naming_them_and_what_to_do(autojump_clock: trio.abc.Clock) -> None:
    async with client(Etcd({}), A, B) as c:
        with pytest.raises(EtcdUnavailable) as caught:
            await c.get(b"k")
    message = str(caught.value)
    assert message.startswith(f"cannot reach etcd at {A}, {B}: {A}: ConnectError: Connection refused; {B}: ")
    assert message.endswith(": start etcd (or the missing members) or correct the cluster's endpoints")
    assert "\n" not in message


async def test_refusals_say_which_member_refused_what() -> None:
    bad = httpx.Response(400, json={"error": "etcdserver: key is not provided", "code": 3, "message": "x"})
    gone = httpx.Response(404, json={"code": 5, "message": "etcdserver: requested lease not found"})
    old = httpx.Response(404, text="Not Found")  # etcd 3.3 serves /v3beta/, not /v3/
    etcd = Etcd({("a", "/v3/kv/put"): answer(bad), ("a", "/v3/lease/revoke"): answer(gone)})
    etcd.routes[("a", "/v3/kv/range")] = answer(old)
    async with client(etcd) as c:
        with pytest.raises(EtcdRefused, match=r"^etcd at http://a:2379 refused kv/put: x \(gRPC code 3\): ") as caught:
            await c.put(b"", b"v")
        assert caught.value.code == 3
        with pytest.raises(LeaseNotFound, match=r"requested lease not found: grant a new lease$"):
            await c.lease_revoke(42)
        with pytest.raises(EtcdUnavailable, match=r"no /v3/kv/range here \(HTTP 404\): is it etcd 3.4 or later\?"):
            await c.get(b"k")


async def test_a_keepalive_is_one_message_to_the_stream_endpoint_and_its_first_answer() -> None:
    renewed = lines({"header": HEADER, "ID": "42", "TTL": "10"})
    expired = lines({"header": HEADER, "ID": "43"})  # etcd's answer for a lease it no longer has: TTL 0, left out
    etcd = Etcd({("a", "/v3/lease/keepalive"): answer(renewed)})
    async with client(etcd) as c:
        assert (await c.lease_keepalive_once(42)).ttl == 10
        etcd.routes[("a", "/v3/lease/keepalive")] = answer(expired)
        with pytest.raises(LeaseNotFound, match=r"^etcd lease 2b expired or was revoked: grant a new one$"):
            await c.lease_keepalive_once(43)
    assert [body for _, _, body in etcd.seen] == [{"ID": "42"}, {"ID": "43"}]


async def test_a_lease_a_call_could_outlast_is_refused_before_asking() -> None:
    etcd = Etcd({})
    async with client(etcd, A, B, "http://c:2379") as c:
        with pytest.raises(
            ValueError, match=r"lease of 3 s does not outlast one call \(3 s at most: 1 s for each of 3 "
        ):
            await c.lease_grant(3)
    assert etcd.seen == []


def event(key: bytes, revision: int, kind: str = "PUT") -> dict[str, Any]:
    kv = {"key": b64(key), "mod_revision": str(revision)}
    return {"kv": kv} if kind == "PUT" else {"type": kind, "kv": kv}


CREATED = {"header": HEADER, "created": True}


async def test_a_broken_watch_resumes_on_the_next_endpoint_after_the_last_event() -> None:
    first = lines(CREATED, {"header": HEADER, "events": [event(b"k", 5), event(b"j", 6, "DELETE"), event(b"i", 6)]})
    second = lines(CREATED, {"header": HEADER, "events": [event(b"k", 7)]}, forever=True)
    etcd = Etcd({("a", "/v3/watch"): answer(first), ("b", "/v3/watch"): answer(second)})
    async with client(etcd, A, B) as c, c.watch(b"k", start_revision=5) as watch:
        seen = [await watch.next() for _ in range(4)]
    assert [(e.kind, e.kv.key, e.kv.mod_revision) for e in seen] == [
        ("put", b"k", 5),
        ("delete", b"j", 6),
        ("put", b"i", 6),
        ("put", b"k", 7),
    ]
    assert [(host, body["create_request"].get("start_revision")) for host, _, body in etcd.seen] == [
        ("a", "5"),
        ("b", "7"),
    ]


async def test_a_cancelled_wait_on_a_watch_loses_nothing(autojump_clock: trio.abc.Clock) -> None:
    streams = [
        lines(CREATED, {"header": HEADER, "events": [event(b"k", 3)]}, forever=True),
        lines(CREATED, {"header": HEADER, "events": [event(b"k", 4)]}, forever=True),
    ]

    async def next_stream(request: httpx.Request) -> httpx.Response:
        return streams.pop(0)

    etcd = Etcd({("a", "/v3/watch"): next_stream})
    async with client(etcd) as c, c.watch(b"k") as watch:
        assert (await watch.next()).kv.mod_revision == 3
        with trio.move_on_after(5):
            await watch.next()
            pytest.fail("nothing came, the wait was to be cancelled")
        assert (await watch.next()).kv.mod_revision == 4  # from a new stream, from the revision after 3
    assert [body["create_request"].get("start_revision") for _, _, body in etcd.seen] == [None, "4"]


async def test_a_watch_from_compacted_revisions_says_what_to_do() -> None:
    # etcd creates the watch, then cancels it saying up to where it compacted.
    canceled = lines(CREATED, {"header": HEADER, "canceled": True, "compact_revision": "10"})
    async with client(Etcd({("a", "/v3/watch"): answer(canceled)})) as c, c.watch(b"k", start_revision=2) as watch:
        with pytest.raises(Compacted, match=r"up to 10\): read the keys again") as caught:
            await watch.next()
    assert caught.value.compact_revision == 10


async def test_a_lease_with_less_than_a_second_left_is_alive_one_etcd_does_not_have_is_not() -> None:
    etcd = Etcd({("a", "/v3/lease/timetolive"): answer(ok(ID="42", grantedTTL="5"))})  # TTL 0: left out
    async with client(etcd) as c:
        assert (await c.lease_ttl(42)).ttl == 0
        etcd.routes[("a", "/v3/lease/timetolive")] = answer(ok(ID="42", TTL="-1"))
        with pytest.raises(LeaseNotFound):
            await c.lease_ttl(42)


async def test_a_stream_endpoint_without_leader_is_skipped_and_said_in_words() -> None:
    refusal = {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader", "http_status": "x"}
    etcd = Etcd({("a", "/v3/watch"): answer(httpx.Response(503, json={"error": refusal}))})
    async with client(etcd) as c:
        with pytest.raises(EtcdUnavailable, match=r"http://a:2379: etcdserver: no leader: start etcd"):
            async with c.watch(b"k"):
                pass


async def test_an_etcd_with_authentication_on_and_a_member_shutting_down_are_told_apart() -> None:
    """etcd with auth on answers a request without a user InvalidArgument, "user name is empty" (seen with etcd
    3.4.23): the hint names authentication, not a bug of ours. A member shutting down answers Canceled, "the client
    connection is closing": the next member is asked."""
    empty = "etcdserver: user name is empty"
    auth = httpx.Response(400, json={"error": empty, "code": 3, "message": empty})
    closing_400 = httpx.Response(400, json={"code": 1, "message": "grpc: the client connection is closing"})
    ok = httpx.Response(200, json={"header": HEADER, "kvs": [], "count": "0"})
    etcd = Etcd({("a", "/v3/kv/put"): answer(auth), ("a", "/v3/kv/range"): answer(closing_400)})
    etcd.routes[("b", "/v3/kv/range")] = answer(ok)
    async with client(etcd, A, B) as c:
        with pytest.raises(EtcdRefused, match=r"Urban Robot does not log in to etcd"):
            await c.put(b"k", b"v")
        assert (await c.get(b"k")).kvs == ()
