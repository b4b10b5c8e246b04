"""urban_robot.testing.proxy: real sockets on 127.0.0.1, a real second process for the owner look-up."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import trio

from urban_robot.testing.proxy import UNKNOWN, Net, socket_inode, socket_owner

QUIET = 0.3  # seconds a cut link is watched for bytes that must not come through


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            async for chunk in stream:
                await stream.send_all(chunk)
        except trio.BrokenResourceError:
            pass


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> int:
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, echo, [listener])
    return int(listener.socket.getsockname()[1])


@pytest.fixture
async def net(nursery: trio.Nursery) -> AsyncIterator[Net]:
    proxy = Net()
    await nursery.start(proxy.run)
    yield proxy


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    with trio.fail_after(5):
        while len(data) < size:
            chunk = await stream.receive_some(size - len(data))
            assert chunk, "the connection ended"
            data += chunk
    return data


async def test_a_cut_link_holds_bytes_without_closing_and_a_heal_delivers_them(net: Net, upstream: int) -> None:
    port = await net.listen("echo", upstream, source="alpha")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"one")
        assert await receive_exactly(stream, 3) == b"one"
        net.cut("alpha", "echo")
        assert net.is_cut("alpha", "echo")
        await stream.send_all(b"two")
        with trio.move_on_after(QUIET) as quiet:
            await stream.receive_some(10)
        assert quiet.cancelled_caught, "bytes crossed a cut link"
        late = await trio.open_tcp_stream("127.0.0.1", port)  # a new connection is held too
        async with late:
            await late.send_all(b"new")
            net.cut("beta", "echo")  # another link's cut changes nothing for alpha
            net.heal("alpha", "echo")
            assert await receive_exactly(stream, 3) == b"two"
            assert await receive_exactly(late, 3) == b"new"
    assert net.stats["alpha->echo"] == 2


async def test_a_connection_is_put_down_to_the_registered_process_that_opened_it(net: Net, upstream: int) -> None:
    port = await net.listen("echo", upstream)  # no fixed source: found in /proc
    code = (
        "import socket, sys\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        "print('connected', flush=True)\n"
        "sys.stdin.readline()\n"
        "s.sendall(b'ping'); data = b''\n"
        "while len(data) < 4: data += s.recv(4)\n"
        "print(data.decode(), flush=True)\n"
    )
    child = await trio.lowlevel.open_process(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        net.register("child", child.pid)
        net.register("me", os.getpid())
        net.cut("child", "echo")
        assert await receive_exactly(child.stdout, len(b"connected\n")) == b"connected\n"
        await child.stdin.send_all(b"go\n")
        mine = await trio.open_tcp_stream("127.0.0.1", port)  # this process's link is not cut
        async with mine:
            await mine.send_all(b"mine")
            assert await receive_exactly(mine, 4) == b"mine"
        with trio.move_on_after(QUIET) as quiet:
            await child.stdout.receive_some(10)
        assert quiet.cancelled_caught, "the cut child got its answer"
        net.heal_all()
        assert await receive_exactly(child.stdout, 5) == b"ping\n"
        assert net.stats["child->echo"] == 1 and net.stats["me->echo"] == 1
    finally:
        child.kill()
        await child.wait()


async def test_drop_closes_the_links_connections_and_a_dead_upstream_refuses_at_once(net: Net, upstream: int) -> None:
    port = await net.listen("echo", upstream, source="alpha")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"x")
        await receive_exactly(stream, 1)
        assert net.drop("alpha", "echo") == 1
        with trio.fail_after(5):
            assert await stream.receive_some(10) == b""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        nobody = sock.getsockname()[1]  # bound, not listening: connections to it are refused
        dead = await net.listen("gone", nobody)
        stream = await trio.open_tcp_stream("127.0.0.1", dead)
        async with stream:
            with trio.fail_after(5):
                assert await stream.receive_some(10) == b""
    assert net.stats["refused"] == 1


async def test_an_unknown_source_is_named_so_and_the_lookup_finds_only_live_local_sockets(upstream: int) -> None:
    net = Net()
    stream = await trio.open_tcp_stream("127.0.0.1", upstream)
    async with stream:
        local = stream.socket.getsockname()
        assert socket_inode(local) is not None
        assert socket_owner(local, {os.getpid(): "me"}) == "me"
        assert socket_owner(local, {1: "init"}) is None
        listener = type("L", (), {"source": None})()
        assert net.source_of(listener, local) == UNKNOWN  # type: ignore[arg-type]
    assert socket_inode(("127.0.0.1", 1)) is None


async def test_isolate_cuts_both_directions_of_every_named_link_and_rejoin_heals_them(net: Net) -> None:
    net.isolate("alpha", ["beta", "gamma"])
    cut = {(s, d) for s in ("alpha", "beta", "gamma") for d in ("alpha", "beta", "gamma") if net.is_cut(s, d)}
    assert cut == {("alpha", "beta"), ("beta", "alpha"), ("alpha", "gamma"), ("gamma", "alpha")}
    net.rejoin("alpha", ["beta"])
    assert not net.is_cut("alpha", "beta") and not net.is_cut("beta", "alpha") and net.is_cut("gamma", "alpha")
    net.heal_all()
    assert not any(net.is_cut(s, d) for s, d in cut)
