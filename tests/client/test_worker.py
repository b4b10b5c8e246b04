"""The Worker against the real supervisor, over real loopback sockets, on a virtual clock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from tests._helpers import child_secret, plain
from urban_robot.client import Worker
from urban_robot.protocol import encode_value

from ._harness import SETTINGS, UTILITIES_OK, Harness


async def test_first_worker_runs(harness: Harness, autojump_clock: Any) -> None:
    worker, rec = await harness.started()
    await worker.processing_started.wait()
    assert worker.processing and worker.token == "discord-token-xyz"
    assert "discord-token-xyz" not in repr(worker.hello) and "discord-token-xyz" not in repr(worker)
    assert worker.lease.grant is not None and worker.lease.grant.epoch == 1
    assert [name for _, name, _ in rec.events] == ["hello", "start"]
    await trio.sleep(100)  # heartbeats keep the lease
    assert worker.processing
    assert harness.robot is not None and harness.robot.status()["running"] is not None


async def test_reconnect_delivers_messages_queued_while_away_once_in_order(
    harness: Harness, autojump_clock: Any
) -> None:
    assert harness.robot is not None
    seen: list[Any] = []

    async def note(sid: str, data: Any) -> dict[str, bool]:
        seen.append(data["n"])
        return {"noted": True}

    harness.robot.server.on("note", note)
    worker, rec = await harness.started()
    await worker.processing_started.wait()
    first = worker.emit("note", {"n": 0})
    assert await first.wait() == {"noted": True} and first.state == "acked"
    harness.robot.server.close(harness.sid_of(worker))
    await worker.connected.off.wait()
    deliveries = [worker.emit("note", {"n": n}) for n in (1, 2, 3)]
    assert all(d.state == "queued" for d in deliveries) and len(worker.outbox) == 3
    await worker.connected.on.wait()
    assert [await d.wait() for d in deliveries] == [{"noted": True}] * 3
    assert seen == [0, 1, 2, 3]
    # the reconnecting holder claimed its grant and was adopted: it never stopped processing
    assert worker.sessions == 2 and worker.processing
    assert rec.times("stop") == [] and harness.robot.status()["epoch"] == 1
    await trio.sleep(60)
    assert seen == [0, 1, 2, 3]


async def test_self_fences_when_renewals_stop(harness: Harness, autojump_clock: Any) -> None:
    """Processing stops exactly when the lease counted from the last renewed heartbeat's sending ends."""
    assert harness.robot is not None
    robot = harness.robot
    beats: list[float] = []
    real_message = robot.server.engine_message

    async def tap(session: Any, message: str | bytes, start: int = 0) -> None:
        if isinstance(message, str) and '"heartbeat"' in message:
            beats.append(trio.current_time())
        await real_message(session, message, start)

    robot.server.engine_message = tap  # type: ignore[method-assign]
    worker, rec = await harness.started()
    await worker.processing_started.wait()
    await trio.sleep(25)  # a few renewals
    await trio.testing.wait_all_tasks_blocked()

    async def silent(sid: str, *args: Any) -> None:
        return None  # an empty ack: no renewal

    robot.server.on("heartbeat", silent)
    last_renewed = beats[-1]
    assert worker.lease.until == pytest.approx(last_renewed + SETTINGS.lease, abs=1e-6)
    await worker.processing_stopped.wait()
    (stopped_at,) = rec.times("stop")
    assert stopped_at == pytest.approx(last_renewed + SETTINGS.lease, abs=1e-6)
    assert rec.events[-1][2] == "lease ran out"
    assert len(beats) > 1 + 25 // SETTINGS.interval  # it kept beating; nothing came back


async def test_keeps_processing_only_until_its_view_ends_when_the_supervisor_dies(
    harness: Harness, autojump_clock: Any
) -> None:
    worker, rec = await harness.started()
    await worker.processing_started.wait()
    await trio.sleep(12)
    until = worker.lease.until
    harness.stop()  # the supervisor vanishes: its sockets close, reconnects are refused
    await worker.connected.off.wait()
    assert worker.processing  # still within its own view
    await worker.processing_stopped.wait()
    assert rec.times("stop") == [pytest.approx(until, abs=1e-6)]
    assert not worker.processing


async def test_processing_ends_with_the_lease_even_while_the_stop_waits_behind_user_code(
    harness: Harness, autojump_clock: Any
) -> None:
    """``processing`` is the lease view's answer, not only the shell's flag: a stop queued behind a slow callback
    does not let the worker act past its lease."""
    busy = trio.Event()
    started = trio.Event()

    async def slow_start() -> None:
        started.set()
        await busy.wait()  # the user executor is here, so the lease's StopProcessing waits behind it

    worker = Worker(
        harness.url,
        child_secret(harness.credentials, "child-slow"),
        version="1.0",
        health_checks=UTILITIES_OK,
        auto_ready=True,
        on_start_processing=slow_start,
    )
    await harness.nursery.start(worker.run)
    await started.wait()
    assert worker.processing
    harness.stop()  # no more renewals
    await worker.connected.off.wait()
    until = worker.lease.until
    await trio.sleep_until(until)
    assert worker.processing_flag  # the stop is not carried out yet...
    assert not worker.processing  # ...but the lease has ended
    busy.set()
    await worker.processing_stopped.wait()
    assert trio.current_time() == until


async def test_a_slow_callback_holds_up_no_heartbeat(harness: Harness, autojump_clock: Any) -> None:
    """Effects that only write go on their own executor: user code that takes long costs no renewal."""
    busy = trio.Event()

    async def slow_start() -> None:
        await busy.wait()

    worker = Worker(
        harness.url,
        child_secret(harness.credentials, "child-slow"),
        version="1.0",
        health_checks=UTILITIES_OK,
        auto_ready=True,
        on_start_processing=slow_start,
    )
    await harness.nursery.start(worker.run)
    await worker.processing_started.wait()
    await trio.sleep(3 * SETTINGS.lease)  # the user executor is in slow_start all along
    assert worker.processing and worker.lease.until > trio.current_time()
    assert worker.sessions == 1 and harness.robot is not None and harness.robot.status()["epoch"] == 1
    busy.set()


async def test_a_coma_whose_connection_is_lost_before_the_answer_returns_none(
    harness: Harness, autojump_clock: Any
) -> None:
    assert harness.robot is not None
    server = harness.robot.server
    worker, _ = await harness.started()
    await worker.processing_started.wait()

    async def lost(sid: str, *args: Any) -> Any:
        server.close(sid)  # the connection goes while the coma waits for its answer
        await trio.sleep_forever()

    server.on("coma", lost)
    with trio.fail_after(SETTINGS.interval):  # not left waiting for an answer that cannot come
        assert await worker.coma("tired") is None
    assert not worker.processing and worker.lease.grant is None


async def test_a_standby_shutting_down_gets_the_answer(harness: Harness, autojump_clock: Any) -> None:
    holder, _ = await harness.started()
    await holder.processing_started.wait()
    standby, _ = await harness.started()
    await trio.testing.wait_all_tasks_blocked()
    assert not standby.processing and standby.lease.grant is None
    assert await standby.shutdown("bye") == {}  # the supervisor's answer, once it came
    assert standby.shut_down and holder.processing


async def test_a_worker_that_fails_ends_its_run_with_the_reason(harness: Harness, autojump_clock: Any) -> None:
    worker, _ = await harness.started()
    await worker.processing_started.wait()
    with trio.fail_after(SETTINGS.interval):
        await worker.fail("Discord refused the token", "reset it in the developer portal")
    assert worker.shut_down and not worker.processing
    assert worker.error == "Discord refused the token: reset it in the developer portal"


async def test_extra_checks_do_not_hide_the_cogs_from_the_report(harness: Harness, autojump_clock: Any) -> None:
    worker, _ = await harness.started(extra_checks={"database": lambda: True})
    with trio.fail_after(SETTINGS.interval):  # the vital cog is reported as a cog, so the report passes
        await worker.processing_started.wait()
    assert worker.processing


class Tap:
    """Every WebSocket message the server receives, as it came off the wire."""

    def __init__(self, harness: Harness) -> None:
        assert harness.robot is not None
        self.frames: list[str | bytes] = []
        server = harness.robot.server
        self._real = server.engine_message
        server.engine_message = self  # type: ignore[method-assign]

    async def __call__(self, session: Any, message: str | bytes, start: int = 0) -> None:
        self.frames.append(message)
        await self._real(session, message, start)


async def test_dry_run_frames_are_byte_equal_to_the_wire(harness: Harness, autojump_clock: Any) -> None:
    tap = Tap(harness)
    worker, _ = await harness.started()
    await worker.processing_started.wait()
    await trio.testing.wait_all_tasks_blocked()
    predicted = await worker.heartbeat(dry_run=True)
    before = len(tap.frames)
    assert (await worker.heartbeat())["lease"] == SETTINGS.lease
    assert tap.frames[before:] == predicted
    assert predicted[0].startswith("42") and '["heartbeat",{"epoch":1}]' in predicted[0]

    cache = {"blob": b"\x00\x01binary", "list": [1, "two"]}
    before = len(tap.frames)
    assert await worker.sync_cache(cache) == {"accepted": True}
    text, entry = tap.frames[before:]  # one part: its text, then the entry as a binary attachment
    assert text.startswith("451-") and '"set":{"":{"_placeholder":true,"num":0}}' in text
    assert entry == encode_value(cache)
    assert harness.robot is not None
    await trio.testing.wait_all_tasks_blocked()
    assert plain(harness.robot.core.cache) == cache

    predicted = await worker.ready(dry_run=True)
    before = len(tap.frames)
    await worker.ready()
    assert tap.frames[before:] == predicted

    predicted = await worker.coma("tired", dry_run=True)
    before = len(tap.frames)
    assert await worker.coma("tired") == {}  # the supervisor's answer
    assert tap.frames[before:] == predicted and not worker.processing

    await trio.testing.wait_all_tasks_blocked()
    [predicted_shutdown] = await worker.shutdown("bye", dry_run=True)
    assert await worker.shutdown("bye") is None  # it returns once the run has finished...
    assert worker.shut_down  # ...after the final cache and the shutdown, the last frame written
    shutdown_message = predicted_shutdown.lstrip("0123456789")
    assert isinstance(tap.frames[-1], str) and tap.frames[-1].endswith(shutdown_message)


async def test_malformed_server_messages_are_logged_not_fatal(
    harness: Harness, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert harness.robot is not None
    worker, _ = await harness.started()
    await worker.processing_started.wait()
    sid = harness.sid_of(worker)
    garbage: list[Any] = [
        ("cmd", {"t": "process_commands", "d": {"epoch": "one", "lease": 5, "lease_token": "very-secret-tok"}}),
        ("cmd", "not an object"),
        ("cmd", {"t": "coma", "d": {"cache_sync": "yes"}}),
        ("cache_sync", {"no cache": 1}),
        ("hello", {"token": "leaked-token", "protocol": "1"}),
        ("cmd", {"t": "launch_missiles", "d": {}}),
        ("weird_event", {"x": 1}),
    ]
    for event, data in garbage:
        await harness.robot.server.emit(event, data, to=sid)
    await trio.sleep(30)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name == "urban_robot.client"]
    assert len(errors) == 5, errors
    assert all("malformed" in e for e in errors)
    assert not any("very-secret-tok" in r.getMessage() or "leaked-token" in r.getMessage() for r in caplog.records)
    assert "<redacted>" in errors[0] and "'one'" in errors[0]
    assert worker.processing and worker.sessions == 1 and worker.lease.grant is not None


async def test_hand_over_moves_the_cache(harness: Harness, autojump_clock: Any) -> None:
    old, old_rec = await harness.started("1.0", get_cache=lambda: {"reminder": "tea at 5"})
    await old.processing_started.wait()
    new, new_rec = await harness.started("1.1")
    await new.processing_started.wait()
    (stopped,) = old_rec.times("stop")
    (started,) = new_rec.times("start")
    assert stopped <= started and not old.processing
    assert new_rec.cache == {"reminder": "tea at 5"}
    assert new_rec.times("set_cache")[0] <= started
    assert old.connected and not old.shut_down and old.lease.grant is None  # a standby now
    assert harness.robot is not None and harness.robot.status()["epoch"] == 2


async def test_a_drain_in_on_stop_processing_is_cut_where_the_lease_view_ends(
    harness: Harness, autojump_clock: Any
) -> None:
    """Red team finding 1, trio side: a pause that waits 100 s for its work is cancelled when the lease it had
    ends; the coma is acknowledged then and the newer worker starts after it, not 100 s later."""
    seen: list[tuple[str, float]] = []

    async def pause(reason: str) -> None:
        seen.append(("pause", trio.current_time()))
        try:
            await trio.sleep(100)
        finally:
            seen.append(("over", trio.current_time()))

    old, _ = await harness.started("1.0", on_stop_processing=pause)
    await old.processing_started.wait()
    await trio.sleep(5)  # between heartbeats: the lease view ends 15 s after the last renewing one was sent
    new, new_rec = await harness.started("1.1")
    await new.processing_started.wait()
    (paused, over) = (at for _, at in seen)
    assert 0 < over - paused <= SETTINGS.lease  # cut at the lease end, not 100 s later
    assert new_rec.times("start")[0] >= over and not old.processing


async def test_failing_vital_cog_gets_shut_down(harness: Harness, autojump_clock: Any) -> None:
    async def music() -> bool:
        return True

    def broken() -> bool:
        raise RuntimeError("cog crashed")

    checks = {"modules.utilities": broken, "modules.music": music}
    worker, rec = harness.worker(health_checks=checks)
    start = trio.current_time()
    with trio.fail_after(60):
        await worker.run()  # returns once shut down
    assert worker.shut_down and not worker.processing and rec.times("start") == []
    assert trio.current_time() - start < 1  # its report came at once: no time-out decided it
    assert harness.robot is not None
    await trio.testing.wait_all_tasks_blocked()
    assert harness.robot.conns == {}


async def test_hung_connection_is_dropped_and_redone(harness: Harness, autojump_clock: Any) -> None:
    assert harness.robot is not None
    worker, _ = await harness.started()
    await worker.processing_started.wait()
    release = trio.Event()

    async def stuck(sid: str, *args: Any) -> Any:
        harness.robot.server.handlers["/"].pop("heartbeat")  # type: ignore[union-attr]
        await release.wait()  # the supervisor stops answering this connection

    harness.robot.server.on("heartbeat", stuck)
    hung_at = trio.current_time()
    await worker.connected.off.wait()
    assert trio.current_time() - hung_at <= SETTINGS.interval + worker.timeouts.ack + 0.01
    release.set()
    await worker.connected.on.wait()
    assert worker.sessions == 2


async def test_authentication_failure_is_raised_not_retried(harness: Harness, autojump_clock: Any) -> None:
    from urban_robot.client import AuthenticationFailed

    worker = Worker(harness.url, "child-9.forged", version="1.0")
    with pytest.raises(AuthenticationFailed):
        await worker.run()
