"""The WebSocket's own parser of common frames against wsproto parsing everything.

``WebSocket`` unmasks and decodes the common frame itself and hands every other
frame to wsproto (see ``urban_robot/web/_websocket.py``). Whatever the frames
and however the bytes are split into reads, the messages delivered, the way the
connection ends and the bytes written back must be the same as when wsproto
parses every frame (``_fast_frames = False``, the behaviour before the parser).
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, strategies as st

from tests._fuzz import examples
from urban_robot.web._websocket import FAST_FRAME, YIELD_EVERY, WebSocket, WebSocketClosed


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    wide: bool = False,
) -> bytes:
    """A client frame; ``wide`` declares the length in more bytes than needed (not allowed)."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if mask else 0
    if n < 126 and not wide:
        head += bytes([bit | n])
    elif n < 1 << 16 and not (wide and n >= 126):
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Reference(WebSocket):
    _fast_frames = False


async def _run(cls: type[WebSocket], chunks: list[bytes], max_message: int) -> tuple[list[object], object, bytes]:
    server, client = trio.testing.memory_stream_pair()
    ws = cls(server, chunks[0] if chunks else b"", max_message=max_message)  # the first as trailing handshake data
    for chunk in chunks[1:]:
        await client.send_all(chunk)
    await client.send_eof()
    messages: list[object] = []
    with trio.fail_after(5):
        try:
            while True:
                messages.append(await ws.receive())
        except WebSocketClosed as exc:
            end: object = (exc.code, exc.reason)
        sent = b""
        while chunk := await client.receive_some():
            sent += chunk
    return messages, end, sent


SIZES = st.sampled_from([0, 1, 5, 125, 126, 127, 300, 4096, 4097, 65535, FAST_FRAME + 1])
PAYLOADS = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    SIZES.map(lambda n: b"x" * n),
    st.just("é€😀".encode()),
    st.just(b"\xff\xfe"),  # not UTF-8
    st.just("😀".encode()[:2]),  # a character cut in two
)
FRAMES = st.builds(
    frame,
    opcode=st.sampled_from([0x1, 0x1, 0x1, 0x2, 0x0, 0x8, 0x9, 0xA, 0x3]),
    payload=PAYLOADS,
    fin=st.sampled_from([True, True, False]),
    mask=st.sampled_from([True] * 9 + [False]),  # mostly valid frames, so sequences get far enough to matter
    rsv=st.sampled_from([0] * 9 + [4]),
    wide=st.sampled_from([False] * 9 + [True]),
)


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    data = b"".join(draw(st.lists(FRAMES, max_size=10)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@examples(300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(chunks=streams(), max_message=st.sampled_from([10, 4096, 1_000_000]))
def test_same_messages_end_and_answers_as_wsproto_alone(chunks: list[bytes], max_message: int) -> None:
    ours = trio.run(_run, WebSocket, chunks, max_message)
    reference = trio.run(_run, Reference, chunks, max_message)
    assert ours == reference


@pytest.mark.parametrize(
    "data",
    [
        frame(1, b"40") + frame(1, b'42["echo","x"]') + frame(2, b"\x00\x01"),
        frame(1, "héllo".encode(), fin=False) + frame(9, b"ping") + frame(0, b" world"),
        frame(1, b"y" * (FAST_FRAME + 1)) + frame(1, b"after"),
        frame(1, b"\xff") + frame(1, b"never"),
        frame(1, b"a", fin=False) + frame(1, b"not a continuation"),
        frame(2, b"a", fin=False) + frame(0, b"b", fin=False) + frame(0, b"c") + frame(1, b"d"),
    ],
)
async def test_byte_at_a_time_as_wsproto_alone(data: bytes) -> None:
    chunks = [b"", *(data[i : i + 1] for i in range(len(data)))]
    assert await _run(WebSocket, chunks, 1_000_000) == await _run(Reference, chunks, 1_000_000)


async def test_over_a_real_socket_reads_and_writes_the_descriptor() -> None:
    a, b = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    ws = WebSocket(stream, b"", max_message=1_000_000)
    assert ws._sock is not None  # the direct path is the one under test
    b.sendall(b"".join(frame(1, f"m{i}".encode()) for i in range(50)) + frame(2, b"z" * 70_000))
    with trio.fail_after(5):
        got = [await ws.receive() for _ in range(51)]
        assert got == [f"m{i}" for i in range(50)] + [b"z" * 70_000]
        big = "w" * 3_000_000  # more than a socket buffer: the write finishes through trio
        async with trio.open_nursery() as nursery:
            received = bytearray()

            expected = bytes([0x81, 127]) + struct.pack("!Q", len(big) + 1) + b"4" + big.encode() + b"\x81\x024x"

            def drain() -> None:
                while len(received) < len(expected):
                    received.extend(b.recv(1 << 20))

            nursery.start_soon(trio.to_thread.run_sync, drain)
            await ws.send_many([big, "x"], text_prefix="4")
        assert bytes(received) == expected
        b.close()
        with pytest.raises(WebSocketClosed):
            await ws.receive()
    await stream.aclose()


async def test_a_task_that_only_sends_still_yields_and_is_cancelled() -> None:
    a, b = socket.socketpair()  # its buffer takes every write below at once: none of them waits
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    ws = WebSocket(stream, b"", max_message=1_000)
    ticks = 0

    async def other() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.sleep(0)
        before = ticks
        for _ in range(3 * YIELD_EVERY):
            await ws.send("x")
        assert ticks - before >= 2  # the other task ran meanwhile
        nursery.cancel_scope.cancel()
    with trio.CancelScope() as scope:
        scope.cancel()
        await ws.send("x")
    assert scope.cancelled_caught
    await stream.aclose()
    assert len(b.recv(1 << 16)) == 3 * YIELD_EVERY * 3
    b.close()
