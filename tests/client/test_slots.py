"""The trio Worker's identify slots (docs/protocol.md §18.3) against a minimal supervisor on our own Socket.IO
server, over real loopback sockets: it answers ``identify`` with a sharded hello and queues ``identify_slot``;
the test grants slots by pushing ``cmd identify``, as the supervisor will."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from urban_robot.client import ShardError, Worker
from urban_robot.socketio import Server

HELLO = {"protocol": 1, "token": "tok", "process_commands": False, "interval": 10, "lease": 15, "epoch": 0}


class SlotSupervisor:
    def __init__(self, hello: dict[str, Any]) -> None:
        self.hello = hello
        self.server = Server()
        self.refuse: set[int] = set()
        self.asks: list[tuple[str, int]] = []  # (sid, shard id) of each identify_slot, in order
        self.asked = trio.Event()
        self.sids: list[str] = []
        self.server.on("connect", self._connect)
        self.server.on("identify", lambda sid, data: self.hello)
        self.server.on("heartbeat", lambda sid, data: {})
        self.server.on("identify_slot", self._slot)

    def _connect(self, sid: str, environ: Any, auth: Any) -> None:
        self.sids.append(sid)

    def _slot(self, sid: str, data: Any) -> dict[str, Any]:
        self.asks.append((sid, data["shard_id"]))
        self.asked.set()
        if data["shard_id"] in self.refuse:
            return {"error": f"shard {data['shard_id']} is not in this worker's group"}
        return {"queued": True}

    async def next_ask(self) -> tuple[str, int]:
        await self.asked.wait()
        self.asked = trio.Event()
        return self.asks[-1]

    async def grant(self, sid: str, shard_id: int) -> None:
        await self.server.emit("cmd", {"t": "identify", "d": {"shard_id": shard_id}}, to=sid)


async def serving(nursery: trio.Nursery, hello: dict[str, Any]) -> tuple[SlotSupervisor, Worker]:
    supervisor = SlotSupervisor(hello)
    port = await nursery.start(supervisor.server.serve, "127.0.0.1", 0)
    worker = Worker(f"http://127.0.0.1:{port}", "secret", version="1.0")
    await nursery.start(worker.run)
    return supervisor, worker


async def test_a_sharded_worker_knows_its_shards_and_waits_for_each_grant(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    supervisor, worker = await serving(nursery, {**HELLO, "shards": [2, 3], "shard_count": 4})
    assert (worker.shards, worker.shard_count) == ((2, 3), 4)
    granted: list[tuple[int, float]] = []
    done = trio.Event()

    async def identify(shard_id: int) -> None:
        await worker.identify_slot(shard_id)
        granted.append((shard_id, trio.current_time()))
        done.set()

    nursery.start_soon(identify, 2)
    sid, shard = await supervisor.next_ask()
    assert shard == 2
    await trio.sleep(3)  # the supervisor makes it wait: nothing is granted meanwhile
    assert granted == []
    at = trio.current_time()
    await supervisor.grant(sid, 2)
    await done.wait()
    assert granted[0][0] == 2 and granted[0][1] - at < worker.protocol.identify_margin
    assert supervisor.asks == [(sid, 2)]  # asked once


async def test_an_ask_lost_with_the_connection_goes_again_after_hello(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    supervisor, worker = await serving(nursery, {**HELLO, "shards": [0], "shard_count": 1})
    done = trio.Event()

    async def identify() -> None:
        await worker.identify_slot(0)
        done.set()

    nursery.start_soon(identify)
    first, _ = await supervisor.next_ask()
    supervisor.server.close(first)  # the supervisor forgets the ask with the connection
    second, shard = await supervisor.next_ask()
    assert second != first and shard == 0 and worker.sessions == 2
    await supervisor.grant(second, 0)
    with trio.fail_after(1):
        await done.wait()


async def test_a_grant_not_asked_for_is_ignored_and_a_cancelled_wait_withdraws(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    supervisor, worker = await serving(nursery, {**HELLO, "shards": [0, 1], "shard_count": 2})
    (sid,) = supervisor.sids
    await supervisor.grant(sid, 1)  # nobody asked
    with trio.move_on_after(2):
        await worker.identify_slot(0)  # asked, never granted: gives up
    assert supervisor.asks == [(sid, 0)] and worker.protocol.slot_asks == frozenset()
    await supervisor.grant(sid, 0)  # too late for anyone
    await trio.testing.wait_all_tasks_blocked()
    assert not worker.protocol.use_identify_grant(0, trio.current_time())
    assert not worker.protocol.use_identify_grant(1, trio.current_time())


async def test_slots_for_shards_not_ours_raise(nursery: trio.Nursery, autojump_clock: Any) -> None:
    supervisor, worker = await serving(nursery, HELLO)
    assert (worker.shards, worker.shard_count) == (None, None)
    with pytest.raises(ShardError, match="not sharded"):
        await worker.identify_slot(0)
    assert supervisor.asks == []


async def test_a_refused_slot_raises(nursery: trio.Nursery, autojump_clock: Any) -> None:
    supervisor, worker = await serving(nursery, {**HELLO, "shards": [0, 1], "shard_count": 2})
    supervisor.refuse.add(1)
    with pytest.raises(ShardError, match="shard 1 is not in this worker's group"):
        await worker.identify_slot(1)
    assert [shard for _, shard in supervisor.asks] == [1] and worker.protocol.slot_asks == frozenset()
