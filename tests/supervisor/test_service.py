"""The supervisor service with simulated workers over real sockets, on a virtual clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket

from tests._helpers import RestartableSupervisor, child_secret, plain, raw_client
from urban_robot.supervisor import (
    Action,
    Handled,
    HealthReport,
    Notify,
    Persist,
    ProcessExited,
    Settings,
    TryAgain,
    UrbanRobot,
)
from urban_robot.testing import SimulatedWorker

SETTINGS = Settings(token="discord-token-xyz", interval=10, grace=5, lease_margin=2, health_timeout=20)
SICK = {"OK": False, "percent": 50, "cogs": {"modules.utilities": True}}


class Harness(RestartableSupervisor):
    def __init__(self, nursery: trio.Nursery, state_dir: Path) -> None:
        super().__init__(nursery, state_dir, SETTINGS)

    async def worker(self, version: str = "1.0", *, health: Any = None, identity: str | None = None) -> SimulatedWorker:
        self.count += 1
        identity = identity or f"child-{self.count}"
        kwargs = {"health": health} if health is not None else {}
        worker = SimulatedWorker(
            self.url, child_secret(self.credentials, identity), version=version, name=identity, **kwargs
        )
        await self.nursery.start(worker.run)
        return worker


def a_sid(robot: UrbanRobot, identity: str = "child-1") -> str:
    [sid] = [sid for sid, conn in robot.conns.items() if conn.identity.name == identity]
    return sid


@pytest.fixture
async def harness(nursery: trio.Nursery, tmp_path: Path) -> Harness:
    h = Harness(nursery, tmp_path / "state")
    await h.start()
    return h


async def test_first_worker_runs_after_check_and_renewal(harness: Harness, autojump_clock: Any) -> None:
    a = await harness.worker()
    await a.wait_for("processing")
    assert a.token == "discord-token-xyz"
    assert [name for _, name, _ in a.log][:4] == ["hello", "cmd:health_check", "cmd:process_commands", "processing"]
    assert harness.robot is not None and harness.robot.status()["epoch"] == 1
    state = json.loads(harness.store.state_path.read_text())
    assert state["epoch"] == 1 and state["holder"]["identity"] == "child-1"
    await trio.sleep(100)  # heartbeats keep the lease
    assert a.processing


async def test_newer_version_takes_over_with_the_cache(harness: Harness, autojump_clock: Any) -> None:
    old = await harness.worker("1.0")
    await old.wait_for("processing")
    assert await old.write("reminder", "tea at 5")
    new = await harness.worker("1.1")
    started, _ = await new.wait_for("processing")
    stopped, _ = await old.wait_for("stopped")
    assert stopped <= started
    assert not old.processing
    assert new.cache == {"reminder": "tea at 5"}
    cache_at, cache = await new.wait_for("cache_received")
    assert cache == {"reminder": "tea at 5"} and cache_at <= started
    assert harness.robot is not None and harness.robot.status()["epoch"] == 2


async def test_failed_check_keeps_the_old_one_running(harness: Harness, autojump_clock: Any) -> None:
    old = await harness.worker("1.0")
    await old.wait_for("processing")
    bad = await harness.worker("2.0", health=SICK)
    _, data = await bad.wait_for("cmd:shutdown")
    assert data["reason"] == "health_check_failure"
    await trio.sleep(60)
    assert old.processing and not bad.processing
    assert [name for _, name, _ in old.log if name.startswith("cmd:")] == ["cmd:health_check", "cmd:process_commands"]


async def test_killed_worker_fails_over_to_the_standby_at_once(harness: Harness, autojump_clock: Any) -> None:
    a = await harness.worker()
    await a.wait_for("processing")
    b = await harness.worker()
    await b.wait_for("cmd:health_check")
    await trio.testing.wait_all_tasks_blocked()
    assert await a.write("k", 1)
    killed_at = trio.current_time()
    await a.drop()  # the process is gone: the process manager reports it
    assert harness.robot is not None
    await harness.robot.submit(ProcessExited("child-1", -9))
    started, _ = await b.wait_for("processing")
    assert started - killed_at < 0.001
    assert b.cache == {"k": 1}


async def test_hung_worker_is_replaced_only_after_its_lease(harness: Harness, autojump_clock: Any) -> None:
    a = await harness.worker()
    await a.wait_for("processing")
    b = await harness.worker()
    await b.wait_for("cmd:health_check")
    await trio.testing.wait_all_tasks_blocked()
    hung_at = trio.current_time()
    a.hang()
    started, _ = await b.wait_for("processing")
    # a's own view of its lease ended by then: it counted from its last heartbeat's sending
    assert a.processing_until <= started
    assert started - hung_at <= SETTINGS.lease + SETTINGS.lease_margin + SETTINGS.interval


async def test_restart_restores_cache_epoch_and_sanity(
    harness: Harness, autojump_clock: Any, nursery: trio.Nursery
) -> None:
    a = await harness.worker()
    await a.wait_for("processing")
    assert await a.write("kept", [1, 2, b"\x00bin"])
    await trio.testing.wait_all_tasks_blocked()
    assert harness.robot is not None
    harness.robot.core.is_sane = False
    await harness.robot._persist(Persist(harness.robot.core.state()))
    harness.stop()
    await a.drop()
    await trio.sleep(1)
    robot = await harness.start()
    assert robot.core.epoch == 1 and robot.core.is_sane is False
    assert plain(robot.core.cache) == {"kept": [1, 2, b"\x00bin"]}
    b = await harness.worker()
    restarted_at = trio.current_time()
    started, _ = await b.wait_for("processing")
    assert started - restarted_at >= SETTINGS.lease + SETTINGS.lease_margin - 1  # the old holder's lease first
    assert b.cache == {"kept": [1, 2, b"\x00bin"]}
    assert robot.core.epoch == 2


async def test_unauthenticated_client_gets_nothing(harness: Harness, autojump_clock: Any) -> None:
    ws_url = harness.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    received: list[str | bytes] = []
    async with trio_websocket.open_websocket_url(ws_url) as ws:
        received.append(await ws.get_message())
        await ws.send_message('40{"secret":"child-9.forged"}')
        received.append(await ws.get_message())
        await ws.send_message('42["identify",{"version":"1.0"}]')
        with trio.move_on_after(5):
            while True:
                message = await ws.get_message()
                if message != "2":
                    received.append(message)
    assert received[1] == '44{"message":"authentication failed"}'
    assert not any("discord-token-xyz" in str(m) for m in received)
    assert len(received) == 2


async def test_malformed_and_unknown_events_get_errors_not_crashes(harness: Harness, autojump_clock: Any) -> None:
    a = await harness.worker()
    await a.wait_for("processing")
    assert await a._emit("heartbeat", {"epoch": "one"}) == {"error": "epoch must be an integer"}
    assert await a._emit("identify", "not an object") == {"error": "the payload must be an object"}
    assert await a._emit("launch_missiles", {}) == {"error": "unknown event 'launch_missiles'"}
    assert await a._emit("health_check", {"OK": True}) == {"error": "no health check was asked of this worker"}
    await trio.sleep(30)
    assert a.processing


async def test_a_cache_is_acknowledged_only_once_it_is_on_disk(harness: Harness, autojump_clock: Any) -> None:
    """An ack means kept: a supervisor killed right after acknowledging still has the cache on restart."""
    robot = harness.robot
    assert robot is not None
    a = await harness.worker()
    await a.wait_for("processing")
    disk_free = trio.Event()
    written: list[Any] = []

    async def stalled_disk(fn: Any, *args: Any) -> Any:
        if fn == harness.store.save_cache:
            await disk_free.wait()
            written.append(plain(args[0]))
        return fn(*args)

    robot.blocking_io = stalled_disk
    acked = trio.Event()

    async def write() -> None:
        assert await a.write("reminder", "tea at 5")
        acked.set()

    harness.nursery.start_soon(write)
    await trio.sleep(SETTINGS.interval * 3)  # several heartbeats while the disk stalls
    assert not acked.is_set() and written == []
    assert a.processing  # the stalled write held up the ack, not the worker's heartbeats (lease renewed)
    disk_free.set()
    await acked.wait()
    assert written == [{"reminder": "tea at 5"}]
    cache, _ = harness.store.load_cache()
    assert plain(cache) == {"reminder": "tea at 5"}


async def test_the_connection_limit_comes_from_the_settings(nursery: trio.Nursery, tmp_path: Path) -> None:
    """``max_connections`` (configuration) bounds the supervisor's port: one more is closed on arrival."""
    harness = RestartableSupervisor(nursery, tmp_path / "state", attrs.evolve(SETTINGS, max_connections=8))
    await harness.start()
    port = int(harness.url.rsplit(":", 1)[1])
    held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(8)]
    with trio.fail_after(10):
        while harness.robot is not None and harness.robot.server.connections.open < 8:
            await trio.sleep(0.01)  # the server accepts them on its own time
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        assert await extra.receive_some(100) == b""  # closed before anything was read
    for stream in held:
        await stream.aclose()


async def test_a_failed_state_write_grants_nothing(
    harness: Harness, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Persist before grant: an epoch that is not on disk is never handed out, nor anything after it."""
    robot = harness.robot
    assert robot is not None
    disk_ok = False

    async def failing_disk(fn: Any, *args: Any) -> Any:
        if fn == harness.store.save_state and not disk_ok:
            raise OSError(28, "No space left on device")
        return fn(*args)

    robot.blocking_io = failing_disk
    notes: list[Any] = []
    robot.bus.subscribe(Notify, notes.append)
    seen: list[Any] = []  # the actions carried out, each step closed by the event it answered
    robot.bus.subscribe(Action, seen.append)
    robot.bus.subscribe(Handled, lambda handled: seen.append(("handled", handled.event)))
    a = await harness.worker()
    await a.wait_for("cmd:health_check")
    await trio.sleep(SETTINGS.interval * 1.5)  # a heartbeats meanwhile
    names = [name for _, name, _ in a.log]
    assert "cmd:process_commands" not in names and "processing" not in names
    [persist] = [x for x in seen if isinstance(x, Persist)]
    assert persist.state["epoch"] == 1
    alarm, after = seen[seen.index(persist) + 1 : seen.index(persist) + 3]
    assert isinstance(alarm, Notify) and alarm.level == "critical"  # the failed write, said on the bus too
    assert after == ("handled", HealthReport(a_sid(robot), a.health))  # the rest of the step (the grant) dropped
    assert notes[0].level == "critical" and "No space left on device" in notes[0].message
    said = [r for r in caplog.records if "No space left on device" in r.getMessage()]
    assert said and all(getattr(r, "_already_notified", False) for r in said)  # the bridge posts no second copy
    assert not any("is running" in n.message for n in notes)
    assert not harness.store.state_path.exists()
    disk_ok = True  # the disk is back: the next promotion writes its epoch first, then grants it
    b = await harness.worker()
    _, grant = await b.wait_for("cmd:process_commands")
    assert grant["epoch"] == 2
    assert json.loads(harness.store.state_path.read_text())["epoch"] == 2
    await b.wait_for("processing")
    assert "processing" not in [name for _, name, _ in a.log]


async def test_a_burst_sent_before_the_connect_ack_is_answered_whole(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Every event gets its ack, even when a worker sends more than 4 KiB before its CONNECT is acknowledged.

    The burst the fuzz test found in CI (tests/web/test_fuzz_edge.py): identify, an unasked ``shutdown``
    with odd keys, an event named "" with odd arguments, ``ready`` with extra arguments, sent at once
    while the supervisor is still deciding on the CONNECT (here: its core waits on a slow state write).
    Before authentication only 4 KiB of such events were buffered; the rest were dropped unanswered and
    the worker waited for acks until the silence fence closed its connection.
    """
    harness = RestartableSupervisor(nursery, tmp_path / "state", SETTINGS)
    robot = await harness.start()
    disk_free = trio.Event()

    async def slow_disk(fn: Any, *args: Any) -> Any:
        await disk_free.wait()
        return fn(*args)

    robot.blocking_io = slow_disk
    nursery.start_soon(robot.submit, TryAgain(None))  # the core is busy writing state.json: a CONNECT waits
    odd = "odd \u00e9\U0001f916 " * 150  # about 2 KiB of JSON each
    burst: list[tuple[str, list[Any]]] = [
        ("identify", [{"version": "0.1"}]),
        ("shutdown", [{"x": odd, "reason": ["not", "a", "string"], "": None}]),
        ("", [{"a": odd}, -1, None]),
        ("ready", [{"x": 2**53}, [odd[:500]], {}]),
    ]
    assert sum(len(json.dumps(event)) for event in burst) > 4096  # over the pre-authentication buffer
    async with raw_client(harness.url) as worker:
        await worker.send("40" + json.dumps({"secret": child_secret(harness.credentials, "child-fuzz-2")}))
        for n, (name, args) in enumerate(burst, start=1):
            await worker.send(f"42{n}" + json.dumps([name, *args]))
        await trio.testing.wait_all_tasks_blocked()  # the server read what it could while the CONNECT waits
        disk_free.set()
        acks: dict[int, Any] = {}
        with trio.move_on_after(5):  # each answer comes at once: seconds mean none is coming
            while len(acks) < len(burst):
                frame = await worker.receive()
                assert isinstance(frame, str) and frame[:1] == "4", frame
                if frame.startswith("43"):
                    ack_id, _, answer = frame[2:].partition("[")
                    acks[int(ack_id)] = json.loads("[" + answer)
    assert sorted(acks) == [1, 2, 3, 4], acks
    assert acks[1][0]["protocol"] == 1
    assert acks[2] == [{}]
    assert acks[3] == [{"error": "unknown event ''"}]
    assert acks[4] == [{}]
