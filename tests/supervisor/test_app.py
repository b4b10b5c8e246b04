"""The assembled supervisor (serve(Options)) with real worker processes: restarts and the admin API."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from tests._helpers import WORKER, worker_options
from urban_robot.supervisor import ProcessExited
from urban_robot.supervisor._assembly import App, Options, serve
from urban_robot.supervisor._children import ChildPolicy

pytestmark = pytest.mark.slow


async def start(nursery: trio.Nursery, options: Options) -> tuple[App, trio.CancelScope]:
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[App]) -> None:
        with scope:
            await serve(options, task_status=task_status)

    return await nursery.start(run), scope


async def settled(app: App) -> tuple[str, int]:
    """The lease holder (renewed) and its epoch, once a hot standby is ready too."""
    core = app.robot.core
    while not (
        core.lease
        and core.lease.confirmed
        and core.lease.sid
        and any(w.approved and w.role.value == "standby" for w in core.clients.values())
    ):
        await trio.sleep(0.05)  # real processes: nothing inside this process to wait on
    return core.lease.identity, core.lease.epoch


async def test_supervisor_restart_adopts_children_and_the_holder_keeps_processing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    options = worker_options(tmp_path)
    with trio.fail_after(60):
        app, scope = await start(nursery, options)
        holder, epoch = await settled(app)
        pids = {identity: child.pid for identity, child in app.children.children.items()}
        app.children.keep_running = True  # as if the supervisor process died: children live on
        scope.cancel()
        await trio.sleep(0.3)
        port = int(app.url.rsplit(":", 1)[1])
        app2, _ = await start(nursery, attrs.evolve(options, port=port))
        assert {i: c.pid for i, c in app2.children.children.items()} == pids  # adopted, none spawned
        holder2, epoch2 = await settled(app2)
    assert (holder2, epoch2) == (holder, epoch)  # same holder, same lease: no failover happened
    # An adopted child's generation is still the supervisor's record (children.json), handed to the core.
    assert all(
        w.spawned_generation == app2.children.children[w.identity].generation for w in app2.robot.core.clients.values()
    )
    logs = "\n".join(p.read_text() for p in (tmp_path / "bot" / "log").glob("helium-*.log"))
    holder_lines = [line.split()[2] for line in logs.splitlines() if f" {holder} " in line]
    assert "fenced" not in holder_lines and holder_lines.count("processing") == 1  # never stopped


async def test_admin_api_deploy_needs_the_credential(nursery: trio.Nursery, tmp_path: Path) -> None:
    options = worker_options(tmp_path, admin_token="admin-secret", standbys=0)
    with trio.fail_after(30):
        app, _ = await start(nursery, options)
        async with httpx.AsyncClient() as http:
            refused = await http.post(f"{app.url}/api/deploy")
            accepted = await http.post(f"{app.url}/api/try-again", headers={"Authorization": "Bearer admin-secret"})
            status = await http.get(f"{app.url}/api/status", headers={"Authorization": "Bearer admin-secret"})
            metrics = await http.get(f"{app.url}/metrics", headers={"Authorization": "Bearer admin-secret"})
        await app.deployer.wait_idle()
    assert refused.status_code == 401
    assert accepted.status_code == 202
    assert status.status_code == 200 and status.json()["is_sane"] is True
    assert metrics.status_code == 200 and "urban_robot_epoch" in metrics.text
    assert app.deployer.history[-1] == ("-", "error")  # no git repository here: a clear error, nothing started


async def test_a_standby_of_the_cache_writing_test_worker_stops_when_asked(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The benchmarks' --cache-bytes worker used to wait to process before it would hear of a shutdown."""
    options = worker_options(
        tmp_path,
        command=(*WORKER, "--cache-bytes", "1000"),
        policy=ChildPolicy(term_timeout=60, kill_timeout=60),  # a shutdown ignored would show as a hang
    )
    exits: list[tuple[str, int | None]] = []
    with trio.fail_after(30):
        app, _ = await start(nursery, options)
        app.bus.subscribe(ProcessExited, lambda exited: exits.append((exited.identity, exited.returncode)))
        holder, _ = await settled(app)
        [standby] = [identity for identity in app.children.children if identity != holder]
        await app.children.stop(standby, ask=lambda: app.robot.ask_shutdown(standby, "test"))
    assert exits == [(standby, 0)]  # it ended by itself, at once, when asked


async def test_a_configured_worker_secret_connects_as_worker_name_and_a_wrong_one_is_refused(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The configuration key (URBAN_ROBOT_WORKER_SECRET_<NAME>) reaches the credentials of the real supervisor."""
    from urban_robot.config import load_config
    from urban_robot.testing._sim import SimulatedWorker

    (tmp_path / "bot").mkdir()
    secret = "eu-worker-secret-0123456789"
    env = {"HELIUM_PATH": str(tmp_path / "bot"), "BOT_TOKEN": "bot-token", "URBAN_ROBOT_WORKER_SECRET_eu": secret}
    config = load_config({"port": 0, "state_dir": tmp_path / "state", "standbys": 0}, env, None, tmp_path)
    assert config.options is not None
    options = attrs.evolve(config.options, command=WORKER)
    with trio.fail_after(30):
        app, _ = await start(nursery, options)
        external = SimulatedWorker(app.url, secret, version="1.0")
        stranger = SimulatedWorker(app.url, secret[:-1] + "X", version="1.0")
        await nursery.start(external.run)
        await nursery.start(stranger.run)
        _, hello = await external.wait_for("hello")
        _, refusal = await stranger.wait_for("refused")
    assert hello["protocol"] == 1 and external.token == "bot-token"
    assert "worker:eu" in {w.identity for w in app.robot.core.clients.values()}
    assert refusal == {"message": "authentication failed"} and stranger.token is None


async def test_a_stop_shuts_a_real_client_down_through_the_protocol_and_leaves_no_lease(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The project's own client (as an external worker:NAME) is told to shut down by App.stop, stops processing,
    and its run() returns: no signal reaches it. A child that never connects is signalled at the deadline."""
    from urban_robot.client import Worker

    secret = "eu-worker-secret-0123456789"
    silent = (sys.executable, "-c", "import time; time.sleep(60)")  # a child that never connects
    options = worker_options(
        tmp_path, command=silent, standbys=0, worker_secrets={"eu": secret}, policy=ChildPolicy(term_timeout=1)
    )
    stopped: list[str] = []
    with trio.fail_after(30):
        app, _ = await start(nursery, options)
        client = Worker(
            app.url,
            secret,
            version="1.0",
            auto_ready=True,
            health_checks={"modules.utilities": lambda: True},
            on_stop_processing=stopped.append,
        )
        done = trio.Event()

        async def run_client() -> None:
            await client.run()
            done.set()

        nursery.start_soon(run_client)
        await client.processing_started.wait()
        assert app.robot.core.lease is not None and app.robot.core.lease.identity == "worker:eu"
        started = trio.current_time()
        assert app.stop("test") and not app.stop("again")  # one stop: the second is refused
        await done.wait()  # the client ended by itself, on its shutdown command
        while app.children.children:
            await trio.sleep(0.05)  # the silent child: SIGTERM at the 1 s deadline
        elapsed = trio.current_time() - started
    assert client.shut_down and not client.processing and stopped
    assert json.loads((tmp_path / "state" / "state.json").read_text())["holder"] is None
    assert 1 <= elapsed < 5
