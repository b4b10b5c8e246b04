"""Red-team probes of shard groups (issue 16, docs/protocol.md §18), from outside: what a worker credential can
ask of the identify slots, what a tampered state directory does to a sharded start, and what a plan change
leaves behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests._helpers import QUICK, image, plain, worker_options
from urban_robot.protocol import ShardPlan
from urban_robot.supervisor import App, Settings, build
from urban_robot.supervisor._auth import LoginThrottle
from urban_robot.supervisor._fleet import Fleet
from urban_robot.supervisor._store import StateStore
from urban_robot.testing._sim import SimulatedWorker


async def until(app: App, predicate: Any) -> None:
    while not predicate():
        await app.changed().wait()


def all_running(app: App) -> bool:
    return all(g.running is not None for g in app.robot.snapshot().groups)


SHARDED = {"version": 1, "epoch": 3, "holder": None, "is_sane": True, "last_known_good": None, "shard_count": 8}
SECRET = "group-zero-shared-secret-0123456789"


async def test_a_group_0_worker_cannot_ask_for_other_groups_shards_nor_grow_the_queue(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A shared-secret worker (group 0 by §18.4) asks identify slots for every shard, with every malformed
    payload, and floods one shard: only its own shards are queued, once each; other groups' asks are refused;
    nothing crashes and the queue stays at most its own group's size."""
    app = build(worker_options(tmp_path, QUICK, shard_count=6, shards_per_worker=2, worker_secrets={"evil": SECRET}))
    with trio.fail_after(60):
        await nursery.start(app.run)
        await until(app, lambda: all_running(app))
        evil = SimulatedWorker(app.url, SECRET, name="evil")
        nursery.start_soon(evil.run)
        await evil.wait_for("hello")
        _, hello = await evil.wait_for("hello")
        assert hello["shards"] == [0, 1] and hello["shard_count"] == 6  # group 0's, whatever it would like
        for other in (2, 3, 4, 5):
            answer = await evil._emit("identify_slot", {"shard_id": other})
            assert "error" in answer and "not this worker's" in answer["error"], answer
        bad: list[Any] = [True, False, None, -1, 2**63, 10**100, "0", 0.0, 1.5, [0], {"x": 0}]
        for value in bad:
            answer = await evil._emit("identify_slot", {"shard_id": value})
            assert isinstance(answer, dict) and "error" in answer, (value, answer)
        for payload in (None, [], "x", 7, {"shard_id": 0, "group": 2}, {"group": 1}):
            answer = await evil._emit("identify_slot", payload)
            assert isinstance(answer, dict), (payload, answer)
        for _ in range(500):  # a flood for its own shards: one place each
            await evil._emit_nowait("identify_slot", {"shard_id": 0})
            await evil._emit_nowait("identify_slot", {"shard_id": 1})
        answer = await evil._emit("identify_slot", {"shard_id": 1})
        assert answer == {"queued": True}
        slots = app.robot.fleet.slots
        owners = {owner for owner, _ in slots._asked}
        assert slots.waiting <= 2 and all(shard in (0, 1) for _, shard in slots._asked), slots._asked
        assert len(owners) <= 1
        assert all_running(app)
        # What a JSON encoder will not write, a hostile peer will: the connection is closed, nothing else.
        for raw in ('4299["identify_slot",{"shard_id":NaN}]', '4298["identify_slot",{"shard_id":-Infinity}]'):
            rude = SimulatedWorker(app.url, SECRET, name="rude")
            nursery.start_soon(rude.run)
            await rude.wait_for("hello")
            await rude.send_raw(raw)
            await rude.wait_for("disconnected")
        assert all_running(app) and app.robot.fleet.slots.waiting <= 2
        app.stop("probe over")


# -- a tampered state.json: refused in one line, never a traceback, never an epoch reused --------------------------
def start_once(state_dir: Path, *flags: str, wait: float = 6) -> str:
    """``python -m urban_robot`` on a bot checkout with a 4-group plan: what it printed (stopped after ``wait``)."""
    bot = state_dir.parent / "bot"
    bot.mkdir(exist_ok=True)
    command = ["-m", "urban_robot", "--helium-path", str(bot), "--state-dir", str(state_dir), "--port", "0"]
    command += ["--command", "/bin/sleep 30", "--notify-api-url", "http://127.0.0.1:9/api/v10", *flags]
    env = {**os.environ, "BOT_TOKEN": "a.b.c"}
    try:
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=wait, env=env)
        return done.stderr + done.stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr or b""
        return out.decode() if isinstance(out, bytes) else out


@pytest.mark.parametrize(
    "groups",
    [
        [1, 2],  # not an object
        {"shards 0-1": 5},  # a group that is not an object
        {"shards 0-1": {"epoch": "7"}},
        {"shards 0-1": {"epoch": -5, "holder": None}},  # a negative epoch would be counted up into used ones
        {"shards 0-1": {"epoch": 10**30, "holder": None}},
        {"shards 0-1": {"epoch": 3, "holder": "child-x"}},
        {"shards 0-1": {"epoch": 3, "holder": {"epoch": 3}}},  # no identity
    ],
)
def test_a_tampered_groups_entry_is_refused_in_one_line(tmp_path: Path, groups: Any) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path = state / "state.json"
    path.write_text(json.dumps({**SHARDED, "shards_per_worker": 2, "groups": groups}))
    path.chmod(0o600)
    out = start_once(state, "--shard-count", "8", "--shards-per-worker", "2")
    assert "Traceback" not in out, out
    assert "state.json is damaged" in out and "move it away" in out, out
    assert path.read_text() == json.dumps({**SHARDED, "shards_per_worker": 2, "groups": groups})  # left as found


def test_a_top_level_holder_that_is_no_object_is_refused_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "state.json").write_text(json.dumps({"epoch": 3, "holder": "child-x"}))
    (state / "state.json").chmod(0o600)
    out = start_once(state)
    assert "Traceback" not in out and "state.json is damaged (holder" in out, out


SHARD_COUNT_0 = ("--shard-count", "0", "--shards-per-worker", "2")


def test_a_bad_shard_count_is_said_once(tmp_path: Path) -> None:
    """An invalid shard_count is one line, not two (it was also "shards_per_worker: set shard_count too")."""
    done = subprocess.run(
        [sys.executable, "-m", "urban_robot", "--state-dir", str(tmp_path / "s"), *SHARD_COUNT_0],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "shard_count:" in done.stderr, done.stderr


# -- the admin login throttle under a flood of wrong worker secrets -----------------------------------------------
def test_the_login_throttle_survives_any_number_of_failures() -> None:
    throttle = LoginThrottle()
    for i in range(5000):
        throttle.failed("127.0.0.1", float(i) * 1e-3)
    assert 0 < throttle.wait("127.0.0.1", 5.0) <= throttle.cap


async def test_the_admin_api_answers_429_not_an_internal_error_after_a_wrong_secret_flood(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Every wrong secret at CONNECT counts as a failed login of its address; after ~1,030 of them (orphaned
    workers of an earlier shard plan knocked 130 times a second) 2.0 ** n overflowed and every admin request
    from that address ended with an internal error and a closed connection."""
    token = "admin-secret-of-the-probe"
    app = build(worker_options(tmp_path, QUICK, standbys=0, admin_token=token))
    with trio.fail_after(30):
        await nursery.start(app.run)
        now = trio.current_time()
        for _ in range(1100):
            app.robot.logins.failed("127.0.0.1", now)
        async with httpx.AsyncClient(base_url=app.url) as http:
            answer = await http.get("/api/status", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 429 and "Retry-After" in answer.headers
        app.stop("probe over")


# -- a change of plan with survivors --------------------------------------------------------------------------------
SETTINGS = Settings(token="tok", interval=1, grace=4, lease_margin=1, spawn_workers=True)
AFTER_4_BY_2 = {
    **SHARDED,
    "epoch": 7,
    "shard_count": 4,
    "shards_per_worker": 2,
    "groups": {
        "shards 0-1": {"epoch": 7, "holder": {"identity": "child-a-1", "epoch": 7, "token": "t1"}},
        "shards 2-3": {"epoch": 5, "holder": {"identity": "child-a-3", "epoch": 5, "token": "t3"}},
    },
}


@pytest.mark.parametrize("plan", [ShardPlan.unsharded(), ShardPlan(4, 4)], ids=["unsharded", "one group"])
def test_one_group_after_a_sharded_run_waits_out_the_old_holders(plan: ShardPlan) -> None:
    """Back to one group with the old groups' holders maybe alive: they may process any shard, so the one group
    waits out the newest lease (its token dropped: nobody reclaims it), as a sharded plan change does."""
    fleet = Fleet(SETTINGS, plan, state=AFTER_4_BY_2, now=0.0)
    lease = fleet.groups[0].lease
    assert lease is not None and lease.identity == "child-a-1" and lease.epoch == 7 and lease.token is None
    assert fleet.groups[0].epoch == 7  # the next is 8: never one of the old groups'
    assert fleet.state()["holder"]["token"] is None


def _status(port: int, state: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "urban_robot", "--port", str(port), "--state-dir", str(state), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return json.loads(done.stdout) if done.returncode == 0 else {}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sharded_supervisor_killed_then_started_unsharded_waits_and_old_children_leave(tmp_path: Path) -> None:
    """Real processes: 4 shards in 2 groups of rehearsal bots, the supervisor SIGKILLed, started again with one
    group. The old holders are waited out (epoch above theirs), and the old plan's children, refused, exit
    instead of knocking every 50 ms forever."""
    bot, state, port = tmp_path / "bot", tmp_path / "state", _free_port()
    bot.mkdir()
    subprocess.run(["git", "init", "-q", str(bot)], check=True)
    base = [sys.executable, "-m", "urban_robot", "--helium-path", str(bot), "--state-dir", str(state)]
    base += ["--port", str(port), "--command", f"{sys.executable} -m urban_robot.testing.worker"]
    base += ["--notify-api-url", "http://127.0.0.1:9/api/v10", "--standbys", "0"]
    env = {**os.environ, "BOT_TOKEN": "a.b.c"}
    log1 = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        [*base, "--shard-count", "4", "--shards-per-worker", "2"], stdout=log1, stderr=log1, env=env
    )
    old: list[int] = []
    second = None
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            snap = _status(port, state)
            if snap and all(g.get("running") for g in snap.get("groups", [])) and len(snap["groups"]) == 2:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("the sharded supervisor never ran both groups")
        old = [w["pid"] for w in snap["workers"]]
        epochs = {g["name"]: g["epoch"] for g in snap["groups"]}
        first.send_signal(signal.SIGKILL)
        first.wait()
        log2 = (tmp_path / "second.log").open("w")
        second = subprocess.Popen(base, stdout=log2, stderr=log2, env=env)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            snap = _status(port, state)
            if snap.get("running"):
                break
            time.sleep(0.3)
        else:
            raise AssertionError("the unsharded supervisor never ran a worker")
        assert snap["epoch"] > max(epochs.values()), (snap["epoch"], epochs)
        text = (tmp_path / "second.log").read_text()
        assert re.search(r"failover: the previous holder's lease \(child-\S+ epoch \d+\) ended", text), text
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in old) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in old), "the old plan's children are still there"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
        for pid in old:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# -- caches per group ------------------------------------------------------------------------------------------------
def _seed(state: Path, plan_state: dict[str, Any], caches: dict[str, Any]) -> None:
    state.mkdir(mode=0o700)
    store = StateStore(state)
    for name, value in caches.items():
        store.cache_store(name).save_cache(image(value), 1)
    (state / "state.json").write_text(json.dumps(plan_state))
    (state / "state.json").chmod(0o600)


async def test_a_cache_of_an_earlier_plan_is_not_brought_back(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Plan 4/2, then 4/1, then 4/2 again: "shards 0-1"'s file is the first run's, older than what the bot wrote
    under 4/1. It is set aside, not loaded into the group (stale data brought back)."""
    state = tmp_path / "state"
    by_one = {"shard 0": {"epoch": 9, "holder": None}}
    _seed(state, {**SHARDED, "epoch": 9, "shard_count": 4, "shards_per_worker": 1, "groups": by_one},
          {"shards 0-1": {"stale": True}, "shard 0": {"newer": True}})  # fmt: skip
    app = build(worker_options(tmp_path, QUICK, shard_count=4, shards_per_worker=2, standbys=0))
    with trio.fail_after(30):
        await nursery.start(app.run)
        assert all(core.cache is None for core in app.robot.fleet.groups)
        assert not (state / "cache.shards-0-1.bin").exists()
        assert [p.name.startswith("cache.shards-0-1.bin.other-plan-") for p in state.iterdir()].count(True) == 1
        assert [core.epoch for core in app.robot.fleet.groups] == [9, 9]
        app.stop("probe over")


async def test_a_failover_in_group_1_keeps_each_groups_own_cache(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Each group's cache is its own: group 1's holder dies, its successor's group keeps group 1's cache and
    group 0's file is not touched."""
    state = tmp_path / "state"
    groups = {"shards 0-1": {"epoch": 2, "holder": None}, "shards 2-3": {"epoch": 2, "holder": None}}
    _seed(state, {**SHARDED, "epoch": 2, "shard_count": 4, "shards_per_worker": 2, "groups": groups},
          {"shards 0-1": {"group": 0}, "shards 2-3": {"group": 1}})  # fmt: skip
    zero = (state / "cache.shards-0-1.bin").read_bytes()
    app = build(worker_options(tmp_path, QUICK, shard_count=4, shards_per_worker=2))
    with trio.fail_after(60):
        await nursery.start(app.run)
        await until(app, lambda: all_running(app) and all(g.standbys >= 1 for g in app.robot.snapshot().groups))
        fleet = app.robot.fleet
        assert [plain(core.cache) for core in fleet.groups] == [{"group": 0}, {"group": 1}]
        holder = fleet.groups[1].lease
        assert holder is not None
        pid = next(w.pid for w in app.robot.snapshot().workers if w.identity == holder.identity)
        os.kill(pid, signal.SIGKILL)
        await until(
            app, lambda: fleet.groups[1].lease is not None and fleet.groups[1].lease.identity != holder.identity
        )
        assert [plain(core.cache) for core in fleet.groups] == [{"group": 0}, {"group": 1}]
        assert fleet.groups[1].epoch == 4 and fleet.groups[0].epoch == 3  # 2 restored, 3 at start, 4 the failover
        app.stop("probe over")
    assert (state / "cache.shards-0-1.bin").read_bytes() == zero
    got, _ = StateStore(state).cache_store("shards 2-3").load_cache()
    assert plain(got) == {"group": 1}


async def test_one_group_of_a_configured_shard_count_says_the_workers_are_not_told(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """shard_count 4 without shards_per_worker is one group, which §18.3 runs as v1 (hello names no shards): the
    start said "4 shards in 1 groups of 4", as if the bot would run 4. It says what happens instead, once."""
    caplog.set_level("INFO", "urban_robot")
    app = build(worker_options(tmp_path, QUICK, shard_count=4, standbys=0))
    with trio.fail_after(30):
        await nursery.start(app.run)
        await until(app, lambda: app.robot.core.lease is not None)
        app.stop("probe over")
    said = [r.getMessage() for r in caplog.records if "shard_count 4" in r.getMessage()]
    assert len(said) == 1 and "one group" in said[0] and "not told the shard count" in said[0], said
    assert not any("groups of" in r.getMessage() for r in caplog.records)


# -- a bot author's own identify hook ---------------------------------------------------------------------------------
@pytest.mark.xfail(
    strict=True,
    reason="gate_identify replaces bot.before_identify_hook on the instance: a hook the author assigns to the "
    "instance after attach() replaces the gate, and every IDENTIFY then goes without a slot (Discord closes "
    "the shard, or worse, other workers' windows are broken). Gating discord.py's call site (client._hooks"
    "['before_identify'] / _call_before_identify_hook) and calling whatever hook is current would hold.",
)
def test_a_hook_assigned_to_the_instance_after_attach_still_waits_for_a_slot() -> None:
    import asyncio

    import discord
    from discord.ext import commands

    from tests.integrations._discord_fakes import FakeSupervisor, hello, make_attachment, run_virtual

    class Offline(commands.AutoShardedBot):
        def __init__(self) -> None:
            super().__init__(command_prefix="!", intents=discord.Intents.default())
            self.connected = asyncio.Event()

        async def login(self, token: str) -> None:
            await self._async_setup_hook()

        async def connect(self, *, reconnect: bool = True) -> None:
            self.connected.set()
            await asyncio.Event().wait()

    async def scenario() -> None:
        supervisor, bot = FakeSupervisor(), Offline()
        att, _ = make_attachment(bot, supervisor, vital_cogs=())
        runner = asyncio.create_task(att.run())
        (await supervisor.next("identify")).answer(hello(shards=[2, 3], shard_count=4))
        await bot.connected.wait()
        mine: list[int | None] = []

        async def my_hook(shard_id: int | None, *, initial: bool = False) -> None:
            mine.append(shard_id)

        bot.before_identify_hook = my_hook  # type: ignore[method-assign]
        hook = asyncio.create_task(bot._hooks["before_identify"](3, initial=False))  # what the gateway awaits
        await asyncio.sleep(1)
        assert mine == [3] and not hook.done(), "the IDENTIFY went without a slot"
        runner.cancel()

    run_virtual(scenario)
