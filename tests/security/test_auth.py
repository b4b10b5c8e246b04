"""Authentication and authority over real sockets: strangers get nothing, a worker cannot act for others.

A real supervisor (the ``urban_robot_supervisor`` fixture) with simulated workers; attackers are raw
Engine.IO clients (WebSocket and polling) and the real python-socketio client. Every frame an attacker
receives is kept, and the tests assert that none of them carries ``hello``, the token or any event.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import socketio
import trio
import trio_websocket

from tests._helpers import child_secret
from urban_robot.supervisor import Credentials
from urban_robot.supervisor._service import AUTH_HINT
from urban_robot.testing._plugin import TEST_SETTINGS, SupervisorHarness

TOKEN = TEST_SETTINGS.token
REFUSED = '44{"message":"authentication failed"}'
# No secret at all (a seeds-era worker) is told how to send one; any other refusal says nothing more.
HINTED = "44" + json.dumps({"message": "authentication failed", "data": {"hint": AUTH_HINT}}, separators=(",", ":"))
NO_SECRET = frozenset({"none", "no secret", "empty", "wrong type"})


def bad_secrets(credentials: Credentials) -> dict[str, Any]:
    other = Credentials(b"another supervisor's key, 32 bytes!")
    a_secret = child_secret(credentials, "child-test-1")
    return {
        "none": None,
        "no secret": {},
        "empty": {"secret": ""},
        "wrong type": {"secret": 12345},
        "wrong": {"secret": "hunter2"},
        "too long": {"secret": a_secret + "x" * 600},
        "other supervisor's child secret": {"secret": child_secret(other, "child-test-1")},
        "A's HMAC under B's name": {"secret": "child-test-2." + a_secret.rpartition(".")[2]},
        "truncated HMAC": {"secret": a_secret[:-1]},
        "upper-case HMAC": {"secret": a_secret.upper()},
        "not a child": {"secret": credentials.secret_for("worker-1", credentials.nonce("child-test-1") or "")},
        "admin token with a space": {"secret": "test-admin-token "},
    }


async def eavesdrop_websocket(url: str, auth: Any, frames: list[str | bytes], task_status: Any) -> None:
    """Connect with ``auth``, then ask for everything a worker would, and record every frame until cancelled."""
    async with trio_websocket.open_websocket_url(
        url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    ) as ws:
        frames.append(await ws.get_message())
        await ws.send_message("40" if auth is None else "40" + json.dumps(auth))
        for n, event in enumerate(["identify", "heartbeat", "ready", "try_again", "cache_sync"], start=1):
            await ws.send_message(f"42{n}" + json.dumps([event, {"version": "9.9", "epoch": 1, "cache": 1}]))
        task_status.started()
        try:
            while True:
                frame = await ws.get_message()
                frames.append(frame)
                if frame == "2":
                    await ws.send_message("3")
        except trio_websocket.ConnectionClosed:
            pass


async def eavesdrop_polling(url: str, auth: Any, frames: list[str], task_status: Any) -> None:
    async with httpx.AsyncClient(base_url=url + "/socket.io/", timeout=60) as http:
        opened = (await http.get("?EIO=4&transport=polling")).text
        frames.append(opened)
        sid = json.loads(opened[1:])["sid"]
        query = f"?EIO=4&transport=polling&sid={sid}"
        body = "\x1e".join(
            ["40" + json.dumps(auth), '421["identify",{"version":"9.9"}]', '422["try_again",{}]', '423["ready",{}]']
        )
        await http.post(query, content=body)
        task_status.started()
        while True:
            answer = await http.get(query)
            frames.extend(answer.text.split("\x1e"))
            if answer.status_code != 200 or "1" in answer.text.split("\x1e"):
                return


def assert_only_refused(frames: list[Any], refusal: str = REFUSED) -> None:
    assert frames and isinstance(frames[0], str) and frames[0].startswith("0")  # the Engine.IO OPEN
    rest = [f for f in frames[1:] if f not in ("2", "6", "1")]  # pings, noops, the close
    assert rest == [refusal], rest
    assert not any(TOKEN in str(f) or "hello" in str(f) or "cmd" in str(f) for f in frames)


async def test_strangers_get_connect_error_and_nothing_else(urban_robot_supervisor: SupervisorHarness) -> None:
    harness = urban_robot_supervisor
    ws_frames: dict[str, list[Any]] = {}
    poll_frames: dict[str, list[Any]] = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for name, auth in bad_secrets(harness.credentials).items():
                ws_frames[name], poll_frames[name] = [], []
                await nursery.start(eavesdrop_websocket, harness.url, auth, ws_frames[name])
                if auth is not None:
                    await nursery.start(eavesdrop_polling, harness.url, auth, poll_frames[name])
            # Meanwhile the system works: hellos, commands and cache pushes flow to real workers.
            first = await harness.worker("1.0")
            await first.wait_for("processing")
            second = await harness.worker("1.0")
            await second.wait_for("cmd:health_check")
            assert await first.write("k", "v")
            await second.wait_for("cache_received")
            nursery.cancel_scope.cancel()
    for name in ws_frames:
        refusal = HINTED if name in NO_SECRET else REFUSED
        assert_only_refused(ws_frames[name], refusal)
        if poll_frames[name]:
            assert_only_refused(poll_frames[name], refusal)
    assert first.token == TOKEN  # the intended delivery happened, to authenticated workers only
    assert all(w.identity.startswith("child-test-") for w in harness.robot.core.clients.values())


def python_socketio_attempt(url: str, auth: Any) -> tuple[str, list[Any]]:
    client = socketio.Client(reconnection=False)
    events: list[Any] = []
    client.on("*", lambda event, *args: events.append((event, args)))
    try:
        client.connect(url, auth=auth, wait_timeout=5)
    except socketio.exceptions.ConnectionError as exc:
        return str(exc), events
    client.disconnect()
    return "connected", events


@pytest.mark.slow
async def test_python_socketio_client_with_bad_secrets_is_refused(urban_robot_supervisor: SupervisorHarness) -> None:
    harness = urban_robot_supervisor
    with trio.fail_after(30):
        for name, auth in bad_secrets(harness.credentials).items():
            outcome, events = await trio.to_thread.run_sync(python_socketio_attempt, harness.url, auth)
            assert outcome in ("authentication failed", "One or more namespaces failed to connect: /"), (name, outcome)
            assert events == [], name


async def raw_worker(nursery: trio.Nursery, url: str, secret: str) -> Any:
    """A hand-driven worker connection: ``call(event, data)`` returns the ack; pushes are kept in ``.pushes``."""

    class Peer:
        def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
            self.ws = ws
            self.ids = 0
            self.pushes: list[Any] = []

        async def call(self, event: str, data: Any) -> Any:
            self.ids += 1
            await self.ws.send_message(f"42{self.ids}" + json.dumps([event, data]))
            while True:
                frame = await self.ws.get_message()
                if frame == "2":
                    await self.ws.send_message("3")
                elif isinstance(frame, str) and frame.startswith(f"43{self.ids}["):
                    return json.loads(frame[len(f"43{self.ids}") :])[0]
                else:
                    self.pushes.append(frame)

    ws = await trio_websocket.connect_websocket_url(
        nursery, url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    )
    await ws.get_message()
    await ws.send_message("40" + json.dumps({"secret": secret}))
    reply = await ws.get_message()
    assert isinstance(reply, str) and reply.startswith("40{"), reply
    return Peer(ws)


async def test_a_worker_cannot_act_as_admin_or_as_another_worker(
    urban_robot_supervisor: SupervisorHarness, nursery: trio.Nursery
) -> None:
    harness = urban_robot_supervisor
    core = harness.robot.core
    with trio.fail_after(20):
        holder = await harness.worker("1.0")
        await holder.wait_for("processing")
        standby = await harness.worker("1.0")
        await standby.wait_for("cmd:health_check")
        lease = core.lease
        assert lease is not None
        epoch, holder_sid, token = core.epoch, lease.sid, holder.lease_token
        assert token and lease.identity == holder.name

        # A worker's try_again is refused and changes nothing (is_sane stays false).
        core.is_sane = False  # as after a failed rollback
        rogue = await raw_worker(nursery, harness.url, child_secret(harness.credentials, standby.name))
        assert await rogue.call("try_again", {}) == {"error": "try_again needs the admin credential"}
        assert core.is_sane is False

        # The holder's identity, epoch and lease token, used from another identity's connection: no lease.
        assert (await rogue.call("identify", {"version": "99", "epoch": epoch, "lease_token": token}))[
            "process_commands"
        ] is False
        assert await rogue.call("heartbeat", {"epoch": epoch}) == {"epoch": epoch, "lease": 0}
        # A second connection as the holder's own identity (its secret stolen) without the token: no lease.
        twin = await raw_worker(nursery, harness.url, child_secret(harness.credentials, holder.name))
        hello = await twin.call("identify", {"version": "1.0", "epoch": epoch, "lease_token": "0" * 32})
        assert hello["process_commands"] is False and hello["token"] == TOKEN  # authenticated: it does get hello
        assert await twin.call("heartbeat", {"epoch": epoch}) == {"epoch": epoch, "lease": 0}
        kept = core.cache
        forged = {"sync": 1, "part": 0, "parts": 1, "full": True, "set": {}}  # an empty cache: all it could wipe
        assert (await twin.call("cache_sync", forged))["accepted"] is False
        assert core.cache is kept

        # A second identify on a connection is refused; a reserved event closes only that connection.
        assert "error" in await rogue.call("identify", {"version": "1.0"})
        await rogue.ws.send_message('42["connect"]')
        with pytest.raises(trio_websocket.ConnectionClosed):
            await rogue.call("heartbeat", {})

        # The admin's try_again works (the test above could fail), and the holder never lost its lease.
        admin = await raw_worker(nursery, harness.url, "test-admin-token")
        assert await admin.call("try_again", {}) == {"is_sane": True}
        assert "error" in await admin.call("identify", {"version": "1.0"})
        await holder.heartbeat()
    assert core.lease is lease and (core.epoch, lease.sid, lease.identity) == (epoch, holder_sid, holder.name)
    assert holder.processing and not any(name == "fenced" for _, name, _ in holder.log)
