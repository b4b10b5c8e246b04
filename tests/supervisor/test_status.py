"""GET /api/status and GET /metrics over real HTTP, with simulated workers on a virtual clock."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from tests._helpers import child_secret
from urban_robot.supervisor import (
    Action,
    Credentials,
    Event,
    Handled,
    ProcessExited,
    Settings,
    Spawn,
    StateStore,
    UrbanRobot,
)
from urban_robot.supervisor._status import StatusTracker, install_status_routes
from urban_robot.testing import SimulatedWorker

SETTINGS = Settings(
    token="discord-token-xyz", interval=10, grace=5, lease_margin=2, health_timeout=20, spawn_workers=True
)
ADMIN = "admin-secret-abc"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
WORKER_KEYS = {
    "identity",
    "sid",
    "pid",
    "role",
    "version",
    "generation",
    "heartbeat_age",
    "epoch",
    "gateway",
    "gateway_down_for",
}


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Virtual time, but it only jumps after 10 ms of real quiet: an HTTP exchange on loopback finishes first.
    return trio.testing.MockClock(autojump_threshold=0.01)


async def inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


@attrs.define
class FakeDeployer:
    history: list[tuple[str, str]] = attrs.Factory(list)


@attrs.define
class FakeChild:
    identity: str
    pid: int
    generation: int


@attrs.define
class FakeChildren:
    children: dict[str, FakeChild] = attrs.Factory(dict)


@attrs.define
class FakeNotifier:
    dropped: int = 0
    failed: int = 0
    _queue: list[str] = attrs.Factory(list)


@attrs.define(eq=False)
class Harness:
    robot: UrbanRobot
    tracker: StatusTracker
    credentials: Credentials
    url: str
    nursery: trio.Nursery
    http: httpx.AsyncClient
    spawned: list[str]
    deployer: FakeDeployer
    children: FakeChildren
    notifier: FakeNotifier
    count: int = 0

    async def worker(self, version: str = "1.0") -> SimulatedWorker:
        self.count += 1
        identity = f"child-{self.count}"
        worker = SimulatedWorker(self.url, child_secret(self.credentials, identity), version=version, name=identity)
        await self.nursery.start(worker.run)
        return worker

    async def standby(self, version: str = "1.0") -> SimulatedWorker:
        """A worker that passed its health check and waits as a hot standby."""
        worker = await self.worker(version)
        await worker.wait_for("cmd:health_check")
        while not any(w.approved and w.identity == worker.name for w in self.robot.core.clients.values()):
            await trio.sleep(0.1)
        return worker

    async def status(self) -> dict[str, Any]:
        response = await self.http.get(f"{self.url}/api/status", headers=AUTH)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body: dict[str, Any] = response.json()
        return body

    async def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """Sample name -> {sorted labels: value}."""
        response = await self.http.get(f"{self.url}/metrics", headers=AUTH)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return samples


async def start(nursery: trio.Nursery, tmp_path: Path, *, public_metrics: bool = False) -> Harness:
    store = StateStore(tmp_path / "state")
    store.prepare()
    credentials = Credentials(store.secret_key(), admin_token=ADMIN)
    spawned: list[str] = []
    robot = UrbanRobot(SETTINGS, store, credentials, blocking_io=inline)
    deployer, children, notifier = FakeDeployer(), FakeChildren(), FakeNotifier()
    tracker = StatusTracker(robot, deployer=deployer)
    # The views' part of the assembly (``_assembly.build``), with fakes for the parts they read.
    robot.bus.subscribe(Spawn, lambda spawn: spawned.append(spawn.reason))
    robot.bus.subscribe(Event, tracker.note)
    robot.bus.subscribe(Action, tracker.observe)
    robot.bus.subscribe(Handled, tracker.noted)
    port = await nursery.start(robot.run, "127.0.0.1", 0)
    install_status_routes(
        robot,
        tracker,
        admin_token=ADMIN,
        deployer=deployer,
        children=children,
        notifier=notifier,
        public_metrics=public_metrics,
    )
    http = httpx.AsyncClient(timeout=None)
    return Harness(
        robot, tracker, credentials, f"http://127.0.0.1:{port}", nursery, http, spawned, deployer, children, notifier
    )


@pytest.fixture
async def harness(nursery: trio.Nursery, tmp_path: Path, clock: trio.testing.MockClock) -> Any:
    h = await start(nursery, tmp_path)
    async with h.http:
        yield h


def by_identity(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["identity"]: w for w in body["workers"]}


def secrets_of(h: Harness) -> list[str]:
    lease = h.robot.core.lease
    found = [ADMIN, SETTINGS.token, *(child_secret(h.credentials, f"child-{i}") for i in range(1, h.count + 1))]
    return found + ([lease.token] if lease is not None and lease.token else [])


async def test_status_names_the_running_worker_and_the_standby(clock: trio.testing.MockClock, harness: Harness) -> None:
    a = await harness.worker("1.0")
    await a.wait_for("processing")
    assert await a.write("k", "v" * 100)
    b = await harness.standby("1.0")
    harness.deployer.history += [("abc123", "deployed")]
    harness.children.children["child-1"] = FakeChild("child-1", 4242, 1)

    body = await harness.status()

    assert {"running", "epoch", "is_sane", "last_known_good", "cache_age", "workers", "lease"} <= set(body)
    workers = by_identity(body)
    assert set(workers) == {a.name, b.name}
    for worker in workers.values():
        assert set(worker) >= WORKER_KEYS
        assert 0 <= worker["heartbeat_age"] < SETTINGS.interval
        assert worker["version"] == "1.0"
    running, standby = workers[a.name], workers[b.name]
    assert body["running"] == a.name  # the identity (its connection id is the worker's "sid")
    assert running["sid"] != a.name and len({w["sid"] for w in workers.values()}) == 2
    assert (running["role"], running["epoch"]) == ("running", 1)
    assert (standby["role"], standby["epoch"]) == ("standby", None)
    assert body["epoch"] == 1 and body["is_sane"] is True and body["last_known_good"] is None
    assert body["cache_age"] is not None and body["cache_age"] >= 0
    assert body["lease"]["identity"] == a.name and body["lease"]["connected"] is True
    assert 0 < body["lease"]["expires_in"] <= SETTINGS.lease + SETTINGS.lease_margin
    assert (body["promotions"], body["failovers"]) == (1, 0)
    assert body["deploys"] == [{"commit": "abc123", "outcome": "deployed"}]
    assert body["children"] == [{"identity": "child-1", "pid": 4242, "generation": 1}]
    assert body["notifications"] == {"queued": 0, "dropped": 0, "failed": 0}


async def test_heartbeat_age_grows_between_messages_and_resets_on_each(
    clock: trio.testing.MockClock, harness: Harness
) -> None:
    a = await harness.worker()
    await a.wait_for("processing")
    await a.heartbeat()
    assert by_identity(await harness.status())[a.name]["heartbeat_age"] < 0.01
    ages = []
    for _ in range(25):  # two and a half heartbeat intervals, one sample a second
        await trio.sleep(1)
        ages.append(by_identity(await harness.status())[a.name]["heartbeat_age"])
    steps = [after - before for before, after in itertools.pairwise(ages)]
    grew = [s for s in steps if s > 0]
    assert all(abs(s - 1) < 0.01 for s in grew)  # a second later, a second older
    assert len(grew) >= 20
    assert sum(1 for s in steps if s < 0) >= 2  # each heartbeat reset it
    assert max(ages) <= SETTINGS.interval + 0.01


async def test_a_disconnected_worker_is_forgotten(clock: trio.testing.MockClock, harness: Harness) -> None:
    a = await harness.worker()
    await a.wait_for("processing")
    await a.drop()
    while harness.robot.conns or harness.robot.snapshot().workers:
        await trio.sleep(0.1)
    await trio.testing.wait_all_tasks_blocked()  # the Disconnected handled to the end (Handled published)
    assert harness.tracker._names == {}  # nothing of it is kept: the tracker's only per-connection record
    body = await harness.status()
    assert body["workers"] == [] and body["running"] is None
    assert body["lease"]["identity"] == a.name and body["lease"]["connected"] is False


@pytest.mark.parametrize("path", ["/api/status", "/metrics"])
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {ADMIN}", f"Bearer {ADMIN}x"])
async def test_both_views_need_the_admin_credential(
    clock: trio.testing.MockClock, harness: Harness, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    response = await harness.http.get(f"{harness.url}{path}", headers=headers)
    assert response.status_code == 401
    assert ADMIN not in response.text


async def test_public_metrics_serve_metrics_but_not_status(
    clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    h = await start(nursery, tmp_path, public_metrics=True)
    async with h.http:
        assert (await h.http.get(f"{h.url}/metrics")).status_code == 200
        assert (await h.http.get(f"{h.url}/api/status")).status_code == 401


async def test_no_admin_token_configured_refuses_everyone(
    clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    store = StateStore(tmp_path / "state")
    robot = UrbanRobot(SETTINGS, store, Credentials(b"k" * 32), blocking_io=inline)
    port = await nursery.start(robot.run, "127.0.0.1", 0)
    install_status_routes(robot, StatusTracker(robot), admin_token=None)
    async with httpx.AsyncClient(timeout=None) as http:
        for path in ("/api/status", "/metrics"):
            response = await http.get(f"http://127.0.0.1:{port}{path}", headers={"Authorization": "Bearer anything"})
            assert response.status_code == 401


async def test_metrics_count_promotions_failovers_and_hand_overs(
    clock: trio.testing.MockClock, harness: Harness
) -> None:
    a = await harness.worker("1.0")
    await a.wait_for("processing")
    assert await a.write("k", "v")
    await harness.standby("1.0")

    m = await harness.metrics()
    assert m["urban_robot_promotions_total"] == {(): 1}
    assert m["urban_robot_failovers_total"] == {(): 0}
    assert m["urban_robot_workers"][(("role", "running"),)] == 1
    assert m["urban_robot_workers"][(("role", "standby"),)] == 1
    assert m["urban_robot_workers"][(("role", "checking"),)] == 0
    assert set(m["urban_robot_heartbeat_age_seconds"]) == {(("worker", "child-1"),), (("worker", "child-2"),)}
    assert all(0 <= age < SETTINGS.interval for age in m["urban_robot_heartbeat_age_seconds"].values())
    assert m["urban_robot_cache_bytes"][()] == harness.robot.core.cache.size > 0
    assert m["urban_robot_cache_age_seconds"][()] >= 0

    # a failover: the running worker's process dies; the standby takes over at once
    await a.drop()
    await harness.robot.submit(ProcessExited(a.name, -9))
    b = by_identity(await harness.status())["child-2"]
    assert b["role"] == "running" and b["epoch"] == 2
    m = await harness.metrics()
    assert m["urban_robot_promotions_total"] == {(): 2}
    assert m["urban_robot_failovers_total"] == {(): 1}
    assert m["urban_robot_restarts_total"] == {(): 1} and harness.spawned == ["replace child-1: exited (-9)"]
    assert m["urban_robot_epoch"] == {(): 2}

    # a hand-over: newer code takes over after the holder acknowledged its coma
    c = await harness.worker("2.0")
    await c.wait_for("processing")
    m = await harness.metrics()
    assert m["urban_robot_promotions_total"] == {(): 3}
    assert m["urban_robot_failovers_total"] == {(): 1}
    assert m["urban_robot_epoch"] == {(): 3}
    assert m["urban_robot_is_sane"] == {(): 1}
    assert m["urban_robot_workers"][(("role", "running"),)] == 1
    assert m["urban_robot_workers"][(("role", "standby"),)] == 1


async def test_metrics_from_deployer_children_and_notifier(clock: trio.testing.MockClock, harness: Harness) -> None:
    harness.deployer.history += [("a1", "deployed"), ("b2", "failed"), ("b2", "known bad"), ("c3", "deployed")]
    harness.children.children.update({"child-1": FakeChild("child-1", 1, 1), "child-2": FakeChild("child-2", 2, 1)})
    harness.notifier.dropped, harness.notifier.failed = 3, 1
    harness.notifier._queue += ["x", "y"]
    m = await harness.metrics()
    assert m["urban_robot_deploys_total"] == {
        (("outcome", "deployed"),): 2,
        (("outcome", "failed"),): 1,
        (("outcome", "known bad"),): 1,
    }
    assert m["urban_robot_children"] == {(): 2}
    assert m["urban_robot_notifications_queued"] == {(): 2}
    assert m["urban_robot_notifications_dropped"] == {(): 3}
    assert m["urban_robot_notifications_failed"] == {(): 1}
    assert "urban_robot_cache_bytes" not in m  # nothing persisted yet
    harness.robot.core.is_sane = False
    assert (await harness.metrics())["urban_robot_is_sane"] == {(): 0}


async def test_no_secret_in_either_body(clock: trio.testing.MockClock, harness: Harness) -> None:
    a = await harness.worker()
    await a.wait_for("processing")
    await harness.standby()
    bodies = [
        (await harness.http.get(f"{harness.url}{path}", headers=AUTH)).text for path in ("/api/status", "/metrics")
    ]
    secrets = secrets_of(harness)
    assert len(secrets) == 5  # admin, Discord token, two child secrets, the lease token
    for body in bodies:
        for secret in secrets:
            assert secret not in body


async def test_status_and_metrics_show_each_gateway_and_the_last_failure(
    clock: trio.testing.MockClock, harness: Harness
) -> None:
    a = await harness.worker()
    await a.wait_for("processing")
    b = await harness.standby()
    c = await harness.standby()
    await a._emit("heartbeat", {"epoch": a.granted, "gateway": True})
    await b._emit("heartbeat", {"gateway": False})
    await trio.sleep(1)
    workers = by_identity(await harness.status())
    assert (workers[a.name]["gateway"], workers[a.name]["gateway_down_for"]) == (True, None)
    assert workers[b.name]["gateway"] is False and workers[b.name]["gateway_down_for"] == pytest.approx(1, abs=0.05)
    assert (workers[c.name]["gateway"], workers[c.name]["gateway_down_for"]) == (None, None)  # never said
    metrics = await harness.metrics()
    assert metrics["urban_robot_gateway_up"] == {(("worker", a.name),): 1.0, (("worker", b.name),): 0.0}
    assert metrics["urban_robot_worker_failures"] == {(): 0.0}

    before = time.time()
    assert await c._emit("failed", {"reason": "privileged intent refused", "hint": "enable Message Content"}) == {}
    body = await harness.status()
    [failure] = body["failures"]
    assert {k: failure[k] for k in ("kind", "identity", "generation", "reason", "hint")} == {
        "kind": c.name,  # an unknown child's generation: its identity is its kind
        "identity": c.name,
        "generation": None,
        "reason": "privileged intent refused",
        "hint": "enable Message Content",
    }
    assert before - 1 <= failure["at"] <= time.time() + 1  # wall clock, as the timeline's
    assert by_identity(body)[c.name]["role"] == "failed"
    assert any(e["level"] == "critical" and "enable Message Content" in e["text"] for e in body["timeline"])
    assert (await harness.metrics())["urban_robot_worker_failures"] == {(): 1.0}


# -- shard groups ---------------------------------------------------------------------------------------------


async def test_one_group_status_and_metrics_repeat_the_top_level(
    clock: trio.testing.MockClock, harness: Harness
) -> None:
    a = await harness.worker()
    await a.wait_for("processing")
    await harness.standby()
    body = await harness.status()
    assert body["shard_count"] is None and body["running"] == a.name
    [group] = body["groups"]
    assert group == {
        "index": 0,
        "name": "all shards",
        "shard_ids": [],
        "epoch": body["epoch"],
        "running": a.name,
        "lease": group["lease"],
        "standbys": 1,
        "workers": 2,
        "waiting_for": None,
        "cache_age": body["cache_age"],
    }
    assert group["lease"]["identity"] == body["lease"]["identity"] and group["lease"]["epoch"] == 1
    assert {w["group"] for w in body["workers"]} == {0}
    assert [span["worker"] for span in body["group_timeline"]["groups"][0]["spans"]] == [a.name]
    metrics = await harness.metrics()
    label = (("group", "all shards"),)
    assert metrics["urban_robot_group_processing"] == {label: 1}
    assert metrics["urban_robot_group_epoch"] == {label: 1}
    assert metrics["urban_robot_group_standbys"] == {label: 1}
    assert set(metrics["urban_robot_group_without_processor_seconds_total"]) == {label}
    assert metrics["urban_robot_epoch"] == {(): 1}  # today's series as they were


def test_64_groups_in_status_and_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from tests.supervisor._sharded import SnapshotRobot, sharded
    from urban_robot.supervisor._status import MetricsCollector, status

    now = [1000.0]
    tracker = StatusTracker(SnapshotRobot(sharded(64)), wall_clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] = 1010.0
    body = status(tracker)
    assert body["shard_count"] == 256 and len(body["groups"]) == 64
    assert [g["name"] for g in body["groups"][:2]] == ["shards 0-3", "shards 4-7"]
    idle = body["groups"][17]
    assert (idle["running"], idle["lease"]["connected"], idle["shard_ids"]) == (None, False, [68, 69, 70, 71])
    assert idle["waiting_for"].startswith("waiting for the previous holder's lease")
    assert {w["group"] for w in body["workers"]} == set(range(64)) and len(body["group_timeline"]["groups"]) == 64

    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(tracker))
    samples: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if "group" in sample.labels:
                samples.setdefault(sample.name, {})[sample.labels["group"]] = sample.value
    assert len(samples["urban_robot_group_processing"]) == 64
    assert samples["urban_robot_group_processing"]["shards 68-71"] == 0
    assert samples["urban_robot_group_processing"]["shards 252-255"] == 1
    assert set(samples["urban_robot_group_epoch"].values()) == {3}
    assert samples["urban_robot_group_standbys"]["shards 0-3"] == 1
    # no RoleChanged was heard: every group has been without a processor since the tracker started
    assert set(samples["urban_robot_group_without_processor_seconds_total"].values()) == {10.0}
