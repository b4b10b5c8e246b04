"""Cache replication between agents (urban_robot/cluster/_replica.py, docs/protocol.md §19.8).

The codec and the gate are sans-IO (plain tests); the route and the Replicator run on real sockets: three
supervisor HTTP servers on 127.0.0.1 in one trio test, real httpx.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import httpx
import pytest
import trio
from hypothesis import given, strategies as st

from urban_robot.cluster._replica import (
    BACKOFF,
    H_DIGEST,
    H_SIGNATURE,
    OK,
    PATH,
    RESYNC,
    MalformedRecord,
    NonceMemory,
    Record,
    Refusal,
    ReplicaAnswer,
    ReplicaGate,
    Replicator,
    decode_record,
    encode_record,
    install_replica_route,
    replica_body_limit,
    sign,
)
from urban_robot.protocol._cache import CacheChange, CacheImage
from urban_robot.socketio import Server
from urban_robot.web import Limits

SECRET = b"correct horse battery staple 42"
GROUP = "shards 0-3"
CACHE_MAX = 200_000


def delta(seq: int, **entries: bytes) -> Record:
    return Record(GROUP, "a", 7, seq, seq - 1, CacheChange(False, {k: (v,) for k, v in entries.items()}))


# -- the codec ---------------------------------------------------------------------------------------
def test_a_delta_and_a_whole_image_come_back_as_they_went() -> None:
    change = CacheChange(False, {"k": (b"ab", b"c"), "ü/🙂": (), "bin": (bytes(range(256)),)}, frozenset({"gone"}))
    record = Record("shard 0", "agent-ä", 2**40, 12, 11, change)
    back = decode_record(encode_record(record), 10_000)
    assert attrs.evolve(back, change=None) == attrs.evolve(record, change=None)
    assert {k: b"".join(v) for k, v in back.change.set.items()} == {"k": b"abc", "ü/🙂": b"", "bin": bytes(range(256))}
    assert back.change.delete == {"gone"} and not back.change.full
    whole = Record("shard 0", "a", 1, 3, 0, CacheImage.of({"": (b'{"x":1}',)}).as_change())
    assert decode_record(encode_record(whole), 100) == whole


@pytest.mark.slow
@given(
    st.dictionaries(st.text(max_size=20), st.lists(st.binary(max_size=40), max_size=3).map(tuple), max_size=5),
    st.frozensets(st.text(max_size=20), max_size=3),
    st.integers(2, 2**63 - 1),
)
def test_any_record_round_trips_and_every_cut_of_it_is_refused(
    entries: dict[str, tuple[bytes, ...]], deletes: frozenset[str], seq: int
) -> None:
    record = Record("g", "o", 3, seq, seq - 1, CacheChange(False, entries, deletes - entries.keys()))
    data = encode_record(record)
    back = decode_record(data, len(data))
    assert {k: b"".join(v) for k, v in back.change.set.items()} == {k: b"".join(v) for k, v in entries.items()}
    assert back.change.delete == record.change.delete and back.seq == seq
    for cut in range(len(data)):
        with pytest.raises(MalformedRecord):
            decode_record(data[:cut], len(data))


@pytest.mark.parametrize(
    ("mangle", "says"),
    [
        (lambda d: b"XXXX" + d[4:], "magic"),
        (lambda d: d + b"\0", "after the end"),
        (lambda d: d[:-4] + b"\xff\xff\xff\xff", "claims 4294967295"),  # the deleted keys' count
        (lambda d: d.replace(b"key", b"\xffey"), "not UTF-8"),
        (lambda d: d.replace(b"key", b"\xed\xa0\x80"), "not UTF-8"),  # a lone surrogate
        (lambda d: d[:4] + b"\0" + d[5 + len(GROUP) :], "group must be"),  # an empty group name
    ],
)
def test_malformed_bytes_are_refused_with_one_line(mangle: Callable[[bytes], bytes], says: str) -> None:
    data = encode_record(delta(2, key=b"value"))
    with pytest.raises(MalformedRecord) as caught:
        decode_record(mangle(data), 10_000)
    assert "\n" not in str(caught.value) and says in str(caught.value)


@pytest.mark.parametrize(
    ("record", "says"),
    [
        (Record(GROUP, "a", 1, 0, 0, CacheChange(True)), "seq starts at 1"),
        (Record(GROUP, "a", 1, 2, 0, CacheChange(False)), "must be a whole image"),
        (Record(GROUP, "a", 1, 2, 1, CacheChange(True)), "must be a delta"),
        (Record(GROUP, "a", 1, 2, 2, CacheChange(False)), "base 2 is not below seq 2"),
        (Record(GROUP, "a", 1, 2, 0, CacheChange(True, {}, frozenset({"x"}))), "deletes nothing"),
        (Record(GROUP, "a", -1, 2, 1, CacheChange(False)), "2**63"),
        (Record("", "a", 1, 2, 1, CacheChange(False)), "group must be"),
        (Record("g" * 256, "a", 1, 2, 1, CacheChange(False)), "group must be"),
        (Record(GROUP, "a", 1, 2, 1, CacheChange(False, {"x" * 513: ()})), "not a cache key"),
        (Record(GROUP, "a", 1, 2, 1, CacheChange(False, {"x": ()}, frozenset({"x"}))), "both set and deleted"),
    ],
)
def test_records_that_break_the_rules_are_not_encoded(record: Record, says: str) -> None:
    with pytest.raises(MalformedRecord, match=says.replace("*", r"\*")):
        encode_record(record)


def test_an_accepted_cache_becomes_a_delta_only_when_it_builds_on_something() -> None:
    image = CacheImage.of({"a": (b"1",), "b": (b"2",)})
    change = CacheChange(False, {"b": (b"2",)}, frozenset({"c"}))
    assert Record.update(GROUP, "a", 3, 5, 4, change, image) == Record(GROUP, "a", 3, 5, 4, change)
    whole = Record(GROUP, "a", 3, 5, 0, image.as_change())
    assert Record.update(GROUP, "a", 3, 5, 0, change, image) == whole  # on nothing: the whole image
    assert Record.update(GROUP, "a", 3, 5, 4, CacheChange(True, {"b": (b"2",)}), image) == whole
    assert Record.of_image(GROUP, "a", 3, 5, image) == whole


def test_the_decoder_refuses_what_passes_its_limit_and_a_lying_entry_size() -> None:
    data = encode_record(delta(2, key=b"v" * 100))
    with pytest.raises(MalformedRecord, match="larger than the limit"):
        decode_record(data, len(data) - 1)
    at = data.index(b"key") + 3  # the entry's size follows its key
    lying = data[:at] + (2**40).to_bytes(8, "big") + data[at + 8 :]
    with pytest.raises(MalformedRecord, match="cut short"):
        decode_record(lying, 10_000)


def test_answers_as_json_and_back_and_from_the_cores_replies() -> None:
    for answer in (OK, RESYNC, ReplicaAnswer.refused("older epoch")):
        assert ReplicaAnswer.from_json(answer.to_json()) == answer
    assert ReplicaAnswer.of({"ok": True}) == OK and ReplicaAnswer.of({"resync": True}) == RESYNC
    assert ReplicaAnswer.of({"refused": "a holder here"}) == ReplicaAnswer.refused("a holder here")
    assert ReplicaAnswer.of({}).kind == "refused"
    for junk in (b"", b"[]", b'{"answer": "maybe"}', b"\xff"):
        with pytest.raises(MalformedRecord):
            ReplicaAnswer.from_json(junk)


# -- the gate, sans-IO --------------------------------------------------------------------------------
def signed(
    body: bytes, *, secret: bytes = SECRET, sender: str = "a", to: str = "b", now: float = 1000.0
) -> dict[str, str]:
    headers = {k.lower(): v for k, v in sign(secret, sender, to, body, now).items()}
    headers["content-length"] = str(len(body))
    return headers


def test_the_gate_takes_a_signed_record_once() -> None:
    gate = ReplicaGate("b", SECRET, 10_000)
    body = encode_record(delta(2, key=b"v"))
    headers = signed(body)
    assert gate.check(headers, body, 1000.0) == delta(2, key=b"v")
    assert gate.check(headers, body, 1001.0) == Refusal(
        401, "replica request replayed (its nonce was used already)", "replayed"
    )


@pytest.mark.parametrize(
    ("tamper", "status", "kind"),
    [
        (lambda h, b: ({**h, "x-urban-robot-signature": "0" * 64}, b), 401, "forged"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "x-urban-robot-signature"}, b), 401, "unsigned"),
        (lambda h, b: ({**h, "x-urban-robot-agent": "c"}, b), 401, "forged"),  # another sender's name
        (lambda h, b: ({**h, "x-urban-robot-time": "999"}, b), 401, "forged"),  # the time moved
        (lambda h, b: (h, b[:-1] + b"w"), 401, "forged"),  # the body changed, its digest not
        (
            lambda h, b: ({**h, H_DIGEST.lower(): hashlib.sha256(b[:-1] + b"w").hexdigest()}, b[:-1] + b"w"),
            401,
            "forged",
        ),
        (lambda h, b: ({**h, "content-length": ""}, b), 411, "no-length"),
    ],
)
def test_the_gate_refuses_tampered_requests(
    tamper: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]], status: int, kind: str
) -> None:
    gate = ReplicaGate("b", SECRET, 10_000)
    body = encode_record(delta(2, key=b"v"))
    headers, body = tamper(signed(body), body)
    refusal = gate.check(headers, body, 1000.0)
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.kind) == (status, kind)
    assert len(gate.nonces) == 0  # nothing of it remembered


def test_the_gate_refuses_wrong_secret_stale_time_misdirection_and_a_borrowed_origin() -> None:
    gate = ReplicaGate("b", SECRET, 10_000)
    body = encode_record(delta(2, key=b"v"))

    def refused(headers: dict[str, str], now: float = 1000.0, data: bytes = body) -> tuple[int, str]:
        decision = gate.check(headers, data, now)
        assert isinstance(decision, Refusal), decision
        return decision.status, decision.kind

    assert refused(signed(body, secret=b"another secret, long enough")) == (401, "forged")
    assert refused(signed(body), now=1030.5) == (401, "stale")
    assert refused(signed(body), now=969.5) == (401, "stale")
    assert not isinstance(gate.check(signed(body), body, 1029.9), Refusal)
    assert refused(signed(body, to="c")) == (421, "misdirected")
    assert refused(signed(body, sender="c")) == (400, "malformed")  # c signs a record that names a as its origin
    assert refused(signed(b"garbage"), data=b"garbage") == (400, "malformed")


def test_nonces_are_forgotten_after_the_window_and_bounded() -> None:
    memory = NonceMemory(window=30.0, capacity=2)
    memory.remember("a" * 32, 100.0, 100.0)
    memory.remember("b" * 32, 110.0, 110.0)
    assert memory.full(129.0) and memory.seen("a" * 32)
    assert not memory.full(130.5) and not memory.seen("a" * 32) and memory.seen("b" * 32)
    gate = ReplicaGate("b", SECRET, 10_000, nonces=NonceMemory(capacity=1))
    first, second = encode_record(delta(2, k=b"1")), encode_record(delta(3, k=b"2"))
    assert isinstance(gate.check(signed(first), first, 1000.0), Record)
    busy = gate.check(signed(second), second, 1000.0)
    assert isinstance(busy, Refusal) and busy.status == 503


def test_a_short_secret_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        ReplicaGate("b", b"short", 100)


# -- over real sockets --------------------------------------------------------------------------------
@attrs.define
class Peer:
    """A receiving agent's side as the lead's receiver will be: apply in order, else ask for the whole image."""

    name: str
    url: str = ""
    images: dict[str, tuple[int, CacheImage]] = attrs.Factory(dict)
    got: list[Record] = attrs.Factory(list)
    hold: trio.Event | None = None  # set: answers wait for it (a slow disk)
    broken: bool = False  # every record fails (500), as with a full disk
    arrived: trio.Event = attrs.Factory(trio.Event)  # set by each record, then replaced

    async def receive(self, record: Record) -> ReplicaAnswer:
        self.got.append(record)
        if self.hold is not None:
            await self.hold.wait()
        if self.broken:
            self.arrived.set()
            self.arrived = trio.Event()
            raise OSError("No space left on device")
        answer = self.apply(record)
        self.arrived.set()  # after the image changed: a waiter woken finds it changed
        self.arrived = trio.Event()
        return answer

    def apply(self, record: Record) -> ReplicaAnswer:
        held = self.images.get(record.group)
        if record.whole:
            self.images[record.group] = (record.seq, CacheImage().apply(record.change))
            return OK
        if held is None or held[0] != record.base:
            return RESYNC
        self.images[record.group] = (record.seq, held[1].apply(record.change))
        return OK

    def image(self) -> dict[str, bytes]:
        return {k: b"".join(v) for k, v in self.images[GROUP][1].entries.items()}

    async def wait_for(self, seq: int, within: float = 10) -> None:
        with trio.fail_after(within):
            while self.images.get(GROUP, (0,))[0] < seq:
                await self.arrived.wait()


@attrs.define
class Holder:
    """The holder's agent's side: its cache, numbered."""

    seq: int = 0
    cache: CacheImage = attrs.Factory(CacheImage)
    epoch: int = 7

    def write(self, **entries: bytes) -> Record:
        change = CacheChange(self.seq == 0, {k: (v,) for k, v in entries.items()})
        self.seq += 1
        self.cache = self.cache.apply(change)
        return Record(GROUP, "a", self.epoch, self.seq, 0 if change.full else self.seq - 1, change)

    def whole(self) -> Record:
        return Record(GROUP, "a", self.epoch, self.seq, 0, self.cache.as_change())

    def image(self) -> dict[str, bytes]:
        return {k: b"".join(v) for k, v in self.cache.entries.items()}


async def serve_peer(nursery: trio.Nursery, peer: Peer, port: int = 0, cache_max: int = CACHE_MAX) -> Peer:
    server = Server(http_limits=Limits(max_body=replica_body_limit(cache_max)))
    install_replica_route(server, peer.receive, me=peer.name, secret=SECRET, cache_max=cache_max)
    port = await nursery.start(server.serve, "127.0.0.1", port)
    peer.url = f"http://127.0.0.1:{port}"
    return peer


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def replicator(nursery: trio.Nursery, http: httpx.AsyncClient, peers: list[Peer], **kw: Any) -> Replicator:
    sender = Replicator(http, "a", SECRET, **kw)
    await nursery.start(sender.run)
    sender.set_peers({p.name: p.url for p in peers})
    return sender


@pytest.mark.slow
async def test_a_delta_chain_arrives_in_order_and_is_applied(nursery: trio.Nursery, http: httpx.AsyncClient) -> None:
    b, c = await serve_peer(nursery, Peer("b")), await serve_peer(nursery, Peer("c"))
    sender = await replicator(nursery, http, [b, c])
    holder = Holder()
    for i in range(6):
        record = holder.write(**{f"k{i}": bytes([i]) * 10, "same": str(i).encode()})
        assert await sender.replicate(record, holder.whole, need=2) == {"b", "c"}
    for peer in (b, c):
        assert peer.image() == holder.image() and peer.images[GROUP][0] == 6
        assert [(r.seq, r.base) for r in peer.got] == [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 5)]


@pytest.mark.slow
async def test_a_new_epoch_starts_with_the_whole_image(nursery: trio.Nursery, http: httpx.AsyncClient) -> None:
    b = await serve_peer(nursery, Peer("b"))
    sender = await replicator(nursery, http, [b])
    holder = Holder()
    for i in range(2):
        assert await sender.replicate(holder.write(**{f"k{i}": b"v"}), holder.whole) == {"b"}
    holder.epoch = 9  # a hand-over on the holder's host: the receiving core keys its replica by epoch too
    assert await sender.replicate(holder.write(k2=b"v"), holder.whole) == {"b"}
    assert await sender.replicate(holder.write(k3=b"v"), holder.whole) == {"b"}
    assert [(r.epoch, r.seq, r.base) for r in b.got] == [(7, 1, 0), (7, 2, 1), (9, 3, 0), (9, 4, 3)]
    assert sender.acked(GROUP) == {"b": (9, 4)} and b.image() == holder.image()


@pytest.mark.slow
async def test_a_peer_that_missed_updates_gets_the_whole_image(nursery: trio.Nursery, http: httpx.AsyncClient) -> None:
    b, c = await serve_peer(nursery, Peer("b")), await serve_peer(nursery, Peer("c"))
    sender = await replicator(nursery, http, [b, c])
    holder = Holder()
    for i in range(3):
        assert await sender.replicate(holder.write(**{f"k{i}": b"x"}), holder.whole, need=2) == {"b", "c"}
    b.images.clear()  # b restarted empty on the same address: it answers resync, and gets the image
    b.got.clear()
    assert await sender.replicate(holder.write(k9=b"y"), holder.whole, need=2) == {"b", "c"}
    assert [(r.seq, r.base) for r in b.got] == [(4, 3), (4, 0)] and b.image() == holder.image()
    assert [(r.seq, r.base) for r in c.got][-1] == (4, 3)
    moved = await serve_peer(nursery, Peer("c"))  # c came back on another port: nothing is assumed of it
    sender.set_peers({"b": b.url, "c": moved.url})
    assert await sender.replicate(holder.write(k10=b"z"), holder.whole, need=2) == {"b", "c"}
    assert [(r.seq, r.base) for r in moved.got] == [(5, 0)] and moved.image() == holder.image()
    assert [(r.seq, r.base) for r in b.got][-1] == (5, 4)


async def post(http: httpx.AsyncClient, peer: Peer, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await http.post(peer.url + PATH, content=body, headers=headers)


@pytest.mark.slow
async def test_bad_requests_are_refused_and_survived(
    nursery: trio.Nursery, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    b = await serve_peer(nursery, Peer("b"))
    sender = await replicator(nursery, http, [b])
    holder = Holder()
    assert await sender.replicate(holder.write(k=b"1"), holder.whole) == {"b"}
    good = encode_record(holder.write(k=b"2"))
    now = time.time()

    def head(body: bytes, **kw: Any) -> dict[str, str]:
        return sign(kw.pop("secret", SECRET), "a", "b", body, kw.pop("now", now))

    cases = [
        ("forged", good, {**head(good), H_SIGNATURE: "ab" * 32}, 401),
        ("unsigned", good, {}, 401),
        ("wrong secret", good, head(good, secret=b"not the cluster secret at all"), 401),
        ("stale", good, head(good, now=now - 45), 401),
        ("garbage", b"garbage" * 10, head(b"garbage" * 10), 400),
    ]
    for what, body, headers, status in cases:
        response = await post(http, b, body, headers)
        assert (what, response.status_code) == (what, status)
        assert "\n" not in response.json()["error"]
    replayed = head(good)
    assert (await post(http, b, good, replayed)).status_code == 200
    assert (await post(http, b, good, replayed)).status_code == 401
    # Oversize: an authentic head naming a body past the limit is answered 413 before the body is read; a
    # stranger's is answered 401 before a byte of it is.
    big = b"\0" * (replica_body_limit(CACHE_MAX) + 1)
    assert (await post(http, b, big, head(big))).status_code == 413
    assert (await post(http, b, big, {**head(big), H_SIGNATURE: "0" * 64})).status_code == 401
    assert len(b.got) == 2  # only the valid ones reached the receiver
    assert await sender.replicate(holder.write(k=b"3"), holder.whole) == {"b"}  # still serving
    assert b.image() == holder.image()
    assert "replica request from 127.0.0.1" in caplog.text and "401" in caplog.text
    for trace in (SECRET.decode(), SECRET.hex(), SECRET.decode()[:12], repr(SECRET)[2:14]):
        assert trace not in caplog.text


@pytest.mark.slow
async def test_a_dead_peer_and_a_silent_one_do_not_hold_up_the_ack(
    nursery: trio.Nursery, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    b, refusing = await serve_peer(nursery, Peer("b")), refused_port()
    dead = f"http://127.0.0.1:{refusing.getsockname()[1]}"  # bound, not listening: connections refused
    silent_listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    silent = f"http://127.0.0.1:{silent_listeners[0].socket.getsockname()[1]}"

    async def never_answer(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, never_answer, silent_listeners)
    sender = Replicator(http, "a", SECRET, timeout=2.5)
    await nursery.start(sender.run)
    sender.set_peers({"b": b.url, "dead": dead, "silent": silent})
    holder = Holder()

    async def took(seconds: float, *to: str) -> set[str]:
        started = trio.current_time()
        acked = await sender.replicate(holder.write(**{f"k{holder.seq}": b"v"}), holder.whole, to=to or None)
        assert trio.current_time() - started < seconds
        return acked

    assert await took(sender.timeout * 0.8, "dead") == set()  # refused at once: no waiting for the time-out
    assert await took(sender.timeout * 0.8) == {"b"}  # neither waits for the silent peer
    assert await took(sender.timeout * 0.8) == {"b"}
    # Without the live peer the ack cannot come: the silent one runs out the clock, the dead one is not waited
    # for while it lags (it is retried in the background).
    started = trio.current_time()
    assert await sender.replicate(holder.write(k=b"3"), holder.whole, to=["dead", "silent"]) == set()
    assert trio.current_time() - started >= sender.timeout - 0.1
    assert await took(sender.timeout * 0.8, "dead") == set()
    assert "replica peer dead unreachable" in caplog.text and SECRET.decode() not in caplog.text
    refusing.close()


def refused_port() -> socket.socket:
    """A port bound but not listening: connections to it are refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.slow
async def test_a_slow_peer_gets_one_whole_image_instead_of_a_pile_of_deltas(
    nursery: trio.Nursery, http: httpx.AsyncClient
) -> None:
    b, slow = await serve_peer(nursery, Peer("b")), await serve_peer(nursery, Peer("slow", hold=trio.Event()))
    sender = await replicator(nursery, http, [b, slow], max_pending=8)
    holder = Holder()
    started = trio.current_time()
    for i in range(20):
        assert await sender.replicate(holder.write(**{f"k{i}": b"v"}), holder.whole) == {"b"}
    assert trio.current_time() - started < sender.timeout
    assert slow.hold is not None
    slow.hold.set()
    await slow.wait_for(20)
    assert [(r.seq, r.base) for r in slow.got] == [(1, 0), (20, 0)] and slow.image() == holder.image()
    assert len(b.got) == 20


@pytest.mark.slow
async def test_a_peer_that_failed_is_sent_the_whole_image_again_without_waiting_for_updates(
    nursery: trio.Nursery, http: httpx.AsyncClient
) -> None:
    b, c = await serve_peer(nursery, Peer("b")), await serve_peer(nursery, Peer("c", broken=True))
    sender = await replicator(nursery, http, [b, c])
    holder = Holder()
    for i in range(3):
        assert await sender.replicate(holder.write(**{f"k{i}": b"v"}), holder.whole) == {"b"}
    with trio.fail_after(10):  # c's disk fails (500) until an attempt carrying seq 3 has failed too
        while not c.got or c.got[-1].seq < 3:
            await c.arrived.wait()
    c.broken = False
    await c.wait_for(3)  # no update since: the retry after a back-off brings it
    assert c.image() == holder.image() and c.got[-1].whole
    assert all(r.whole for r in c.got)


@pytest.mark.slow
async def test_a_large_image_travels_whole(nursery: trio.Nursery, http: httpx.AsyncClient) -> None:
    b = await serve_peer(nursery, Peer("b"), cache_max=8_000_000)
    sender = await replicator(nursery, http, [b])
    holder = Holder()
    blob = bytes(range(256)) * 12_000  # 3 MB: hashed and coded off the event loop on both sides
    assert await sender.replicate(holder.write(big=blob, small=b"x"), holder.whole) == {"b"}
    assert await sender.replicate(holder.write(big=blob[::-1]), holder.whole) == {"b"}
    assert b.image() == holder.image() and [(r.seq, r.base) for r in b.got] == [(1, 0), (2, 1)]


async def test_a_strangers_body_is_not_waited_for(nursery: trio.Nursery) -> None:
    b = await serve_peer(nursery, Peer("b"))
    headers = sign(b"not the cluster secret at all", "a", "b", b"x" * 100_000, time.time())
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    port = int(b.url.rpartition(":")[2])
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n{head}\r\n".encode())
        answer = b""
        with trio.fail_after(5):  # the body never comes: the answer must not wait for it
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 401 ")


def test_a_server_that_cannot_take_a_whole_cache_is_refused_at_wiring() -> None:
    async def never(record: Record) -> ReplicaAnswer:
        raise AssertionError

    server = Server()  # bodies up to its Socket.IO max_payload (1 MB)
    with pytest.raises(ValueError, match=r"max_body \(1016384\) is below the replica body limit \(2065536"):
        install_replica_route(server, never, me="b", secret=SECRET, cache_max=1_000_000)


@pytest.mark.slow
async def test_a_group_forgotten_is_no_longer_sent(nursery: trio.Nursery, http: httpx.AsyncClient) -> None:
    b, c = await serve_peer(nursery, Peer("b")), await serve_peer(nursery, Peer("c", broken=True))
    sender = await replicator(nursery, http, [b, c])
    holder = Holder()
    assert await sender.replicate(holder.write(k=b"1"), holder.whole) == {"b"}
    sender.forget(GROUP)  # the group went to another host: c, lagging, is not retried
    with trio.move_on_after(BACKOFF[0] * 3):
        while len(c.got) < 2:
            await c.arrived.wait()
    assert len(c.got) == 1


async def test_a_failing_peer_is_retried_with_growing_waits_and_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """No sockets here (httpx's MockTransport): the back-off on a virtual clock."""
    attempts: list[float] = []
    peer = Peer("b")
    gate = ReplicaGate("b", SECRET, 10_000)

    async def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(trio.current_time())
        if len(attempts) <= 5:
            raise httpx.ConnectError("connection refused")
        body = await request.aread()
        record = gate.check({k.lower(): v for k, v in request.headers.items()}, body, time.time())
        assert isinstance(record, Record)
        return httpx.Response(200, content=(await peer.receive(record)).to_json())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http, trio.open_nursery() as nursery:
        sender = await replicator(nursery, http, [attrs.evolve(peer, url="http://b.invalid")])
        holder = Holder()
        assert await sender.replicate(holder.write(k=b"1"), holder.whole) == set()
        assert await sender.replicate(holder.write(k=b"2"), holder.whole) == set()  # lagging: not waited for
        await peer.wait_for(2, within=60)
        assert sender.acked(GROUP) == {"b": (7, 2)} and peer.image() == holder.image()
        nursery.cancel_scope.cancel()
    waits = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert caplog.text.count("replica peer b unreachable") == 1
    assert [(r.seq, r.base) for r in peer.got] == [(2, 0)]
