"""The live dashboard: ``GET /`` in a real headless Chromium against a real supervisor, and its namespace.

The browser tests drive Chromium over the DevTools protocol (tests/_browser.py) against ``serve(Options)``
with real worker processes; without Chromium they skip locally and fail under ``$CI``. The namespace is
also tested with python-socketio's own client, and its push timing on a virtual clock.

The screenshot lands in ``$URBAN_ROBOT_ARTIFACTS`` if set, else ``<repo>/test-artifacts/``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from tests._browser import Page, chromium_or_skip, open_browser
from tests._helpers import MemoryListener, dashboard_client, raw_memory_client, worker_options
from urban_robot.socketio import Server
from urban_robot.supervisor._assembly import App, serve
from urban_robot.supervisor._bus import Bus, ViewsChanged
from urban_robot.supervisor._dashboard import NAMESPACE, DashboardNamespace, page_response
from urban_robot.supervisor._events import Action, Heartbeat, RoleChanged, Verdict, WorkerFailed
from urban_robot.supervisor._status import StatusTracker

ADMIN = "admin-secret-for-the-dashboard"
REPO = Path(__file__).resolve().parents[2]


def artifacts() -> Path:
    return Path(os.environ.get("URBAN_ROBOT_ARTIFACTS") or REPO / "test-artifacts")


# -- a real supervisor with real worker processes --------------------------------------------------------


@attrs.define(eq=False)
class Live:
    app: App
    changed: trio.Event = attrs.Factory(trio.Event)

    def observe(self, action: Action) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def until(self, condition: Callable[[], Any]) -> Any:
        """Wait for ``condition()`` to be truthy, re-checked after each action of the core."""
        while not (value := condition()):
            with trio.move_on_after(0.5):  # a process exit is noticed by the children's task, not an action
                await self.changed.wait()
        return value

    def holder(self) -> str | None:
        core = self.app.robot.core
        lease = core.lease
        return lease.identity if lease is not None and lease.confirmed and lease.sid else None

    def standby(self) -> str | None:
        ready = [w.identity for w in self.app.robot.core.clients.values() if w.approved and w.role.value == "standby"]
        return ready[0] if ready else None


@pytest.fixture
def chromium() -> str:
    """Skips (fails under $CI) before a supervisor is started for nothing."""
    return chromium_or_skip()


@pytest.fixture
async def live(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Live]:
    options = worker_options(tmp_path, admin_token=ADMIN)
    with trio.fail_after(30):
        app: App = await nursery.start(serve, options)
    supervised = Live(app)
    app.bus.subscribe(Action, supervised.observe)
    with trio.fail_after(30):
        await supervised.until(lambda: supervised.holder() and supervised.standby())
    yield supervised
    app.stop()


def outside(page: Page, url: str) -> list[str]:
    """Every URL the page asked for that is not this supervisor (data: URLs stay in the page)."""
    origin = url.removeprefix("http://")
    allowed = (f"http://{origin}/", f"ws://{origin}/", "data:", "about:blank")
    asked = [r["request"]["url"] for r in page.named("Network.requestWillBeSent")]
    asked += [w["url"] for w in page.named("Network.webSocketCreated")]
    return [u for u in asked if not u.startswith(allowed)]


def errors(page: Page) -> list[str]:
    """Console errors, uncaught exceptions and browser-side errors (CSP violations among them)."""
    found = [str(e["exceptionDetails"]) for e in page.named("Runtime.exceptionThrown")]
    found += [str(c["args"]) for c in page.named("Runtime.consoleAPICalled") if c["type"] in ("error", "assert")]
    found += [e["entry"]["text"] for e in page.named("Log.entryAdded") if e["entry"]["level"] == "error"]
    return found


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


STANDBY = "document.querySelector('#workers tr[data-identity=\"{identity}\"][data-role=standby]')"
NOTICE = "!document.getElementById('notice').hidden && document.getElementById('notice').textContent"
RUNNING = "document.querySelector('#workers tr.running')?.dataset.identity"

# Resolves (with the wall-clock time) once the running row names someone other than ``OLD``.
PROMOTION_WATCH = """window.promotion = new Promise((resolve) => {
    const old = %s;
    const check = () => {
        const row = document.querySelector('#workers tr.running');
        if (row && row.dataset.identity !== old) {
            observer.disconnect();
            resolve({identity: row.dataset.identity, at: performance.timeOrigin + performance.now()});
        }
    };
    const observer = new MutationObserver(check);
    observer.observe(document.getElementById('workers'), {childList: true, subtree: true, attributes: true});
    check();
}); true"""


@pytest.mark.slow
async def test_the_page_shows_the_workers_and_follows_a_promotion_within_a_second(chromium: str, live: Live) -> None:
    app = live.app
    holder, standby = live.holder(), live.standby()
    async with open_browser() as page:
        await page.navigate(f"{app.url}/?token={ADMIN}")
        # (1) the workers and their roles, as the supervisor has them
        await page.wait_for(STANDBY.format(identity=standby))
        assert await page.evaluate(RUNNING) == holder
        rows = await page.evaluate(
            "[...document.querySelectorAll('#workers tr')].map(r => [r.dataset.identity, r.dataset.role,"
            " [...r.cells].map(c => c.textContent)])"
        )
        roles = {identity: role for identity, role, _ in rows}
        assert roles == {holder: "running", standby: "standby"}
        for identity, _, cells in rows:
            child = app.children.children[identity]
            assert cells[0] == identity and cells[4] == str(child.pid)  # identity ... pid
            assert cells[5].endswith(" s")  # heartbeat age
        assert await page.evaluate("document.getElementById('sane').textContent") == "is_sane"
        assert await page.evaluate("document.getElementById('conn').textContent") == "live"
        assert await page.evaluate("document.getElementById('waiting').hidden") is True  # a worker runs: no wait
        assert "token" not in await page.evaluate("location.href")  # gone from the address bar (and history)
        assert await page.evaluate("history.length") == 2  # about:blank, then the clean URL: no ?token= entry
        assert await page.evaluate("document.cookie") == ""  # the credential is an HttpOnly cookie: no script sees it

        # (2) the running worker dies: measure from its standby's promotion to the page showing it
        promoted: list[tuple[float, float, str]] = []

        def on_promotion(action: Action) -> None:
            if isinstance(action, RoleChanged) and (action.old, action.new) == ("standby", "running"):
                promoted.append((time.perf_counter(), time.time(), action.identity))

        app.bus.subscribe(RoleChanged, on_promotion)
        assert await page.evaluate(PROMOTION_WATCH % json.dumps(holder)) is True
        killed = time.perf_counter()
        os.kill(app.children.children[holder].pid, signal.SIGKILL)
        with trio.fail_after(15):
            shown = await page.evaluate("window.promotion")
        seen = time.perf_counter()
        # The core decides before its actions are carried out (the new epoch is written to disk first): a
        # snapshot taken meanwhile shows the promotion, so the page may beat this observer by a hair.
        await live.until(lambda: promoted)
        promoted_at, promoted_wall, identity = promoted[0]
        assert shown["identity"] == identity == standby
        in_page, to_test, from_kill = shown["at"] / 1000 - promoted_wall, seen - promoted_at, seen - killed
        print(
            f"\npromotion -> page: {in_page * 1000:.0f} ms (page's clock), {to_test * 1000:.0f} ms (to the test);"
            f" SIGKILL -> page: {from_kill * 1000:.0f} ms"
        )
        assert seen - promoted_at < 1.0 and seen - killed < 1.0

        # the timeline says what happened, newest first; a replacement stands by again
        await page.wait_for(
            "[...document.querySelectorAll('#timeline li')].some(li => li.textContent.includes("
            f"'{standby}: standby → running'))"
        )
        times = await page.evaluate("[...document.querySelectorAll('#timeline time')].map(t => t.dateTime)")
        assert len(times) > 3 and times == sorted(times, reverse=True)  # newest first
        with trio.fail_after(30):
            replacement = await live.until(live.standby)
        await page.wait_for(STANDBY.format(identity=replacement))

        # (3) a screenshot as an artifact
        png = await page.screenshot(artifacts() / "dashboard.png")
        width, height = png_size(png)
        assert width >= 1000 and height >= 600 and len(png) > 20_000  # a rendered page, not a blank one

        # (4) nothing fetched from anywhere else, no console errors (CSP violations would be among them)
        assert outside(page, app.url) == []
        assert errors(page) == []
        assert page.named("Network.webSocketCreated")  # live over the WebSocket, not by polling
        assert not [r for r in page.named("Network.requestWillBeSent") if "/api/status" in r["request"]["url"]]


@pytest.mark.slow
async def test_the_page_shows_each_gateway_and_the_last_failure(chromium: str, live: Live) -> None:
    app = live.app
    standby = live.standby()
    [sid] = [w.sid for w in app.robot.core.clients.values() if w.identity == standby]
    row = f"document.querySelector('#workers tr[data-identity=\"{standby}\"]')"
    async with open_browser() as page:
        await page.navigate(f"{app.url}/?token={ADMIN}")
        await page.wait_for(STANDBY.format(identity=standby))
        assert await page.evaluate(f"{row}.cells[8].textContent") == "—"  # the demo worker never says: up
        assert await page.evaluate("document.getElementById('failures-box').hidden") is True
        await app.robot.submit(Heartbeat(sid, None, gateway=False))  # as its heartbeat would say it
        shown = await page.wait_for(f"{row}?.querySelector('td.gateway.down')?.textContent")
        assert shown.startswith("down") and shown.endswith(" s")
        await app.robot.submit(WorkerFailed(sid, "the token was refused", "reset it and update BOT_TOKEN"))
        text = await page.wait_for("document.querySelector('#failures li')?.textContent")
        child = app.children.children[standby]
        assert text.startswith(f"last failure: {standby} (generation {child.generation}, version ")
        assert "): the token was refused — reset it and update BOT_TOKEN, at " in text
        assert await page.evaluate(f"{row}?.dataset.role") in ("failed", None)  # failed, or gone already
        assert errors(page) == []


@pytest.mark.slow
async def test_without_the_right_token_the_page_says_so_and_receives_nothing(chromium: str, live: Live) -> None:
    url = live.app.url
    async with open_browser() as page:
        await page.navigate(f"{url}/")
        text = await page.wait_for(NOTICE)
        assert "No admin token" in text and "admin.token" in text
        assert not page.named("Network.webSocketCreated")

        await page.navigate(f"{url}/?token=wrong-token")
        text = await page.wait_for(NOTICE)
        assert "refused" in text
        assert await page.evaluate("document.querySelectorAll('#workers tr').length") == 0
        assert await page.evaluate("document.getElementById('content').hidden") is True
        assert await page.evaluate("sessionStorage.length") == 0  # a refused token is not kept
        frames = [f["response"]["payloadData"] for f in page.named("Network.webSocketFrameReceived")]
        assert frames and not [f for f in frames if f.startswith("42")]  # the refusal, and no event
        assert any(f.startswith("44/dashboard,") for f in frames)
        assert outside(page, url) == []


# -- the page's headers -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_page_is_served_with_a_strict_policy_and_no_data(live: Live) -> None:
    async with httpx.AsyncClient(follow_redirects=True) as http:
        response = await http.get(f"{live.app.url}/?token={ADMIN}")  # exchanged for a cookie: see test_cookie.py
    assert response.status_code == 200 and str(response.url) == f"{live.app.url}/"
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe" not in policy
    assert ADMIN not in response.text and live.holder() not in response.text  # no secret, no data
    assert "http://" not in response.text and "https://" not in response.text  # nothing to fetch elsewhere


def test_the_policy_allows_exactly_the_inline_script_and_style() -> None:
    policy = dict(
        part.split(" ", 1)
        for part in dict(page_response("<style>a{}</style><script>1</script>").headers)[
            "Content-Security-Policy"
        ].split("; ")
    )
    assert policy["script-src"] == "'sha256-a4ayc/80/OGda4BO/1o/V0etpOqiLx1JwB5S3beHW0s='"  # sha256("1")
    assert policy["style-src"].startswith("'sha256-") and policy["default-src"] == "'none'"


# -- the /dashboard namespace with python-socketio's client -----------------------------------------------


@pytest.mark.slow
async def test_the_namespace_pushes_status_to_the_admin_only(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="urban_robot.dashboard")
    url = live.app.url
    clients_before = set(live.app.robot.core.clients)
    for auth in (None, {}, {"token": "wrong"}, {"secret": ADMIN}, {"token": ["x"]}, "text"):
        got = await trio.to_thread.run_sync(dashboard_client, url, auth)
        assert "refused" in got and got["status"] == [], auth
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused a dashboard")]
    assert refusals and all(r.levelno < logging.WARNING for r in refusals)  # never to Discord
    got = await trio.to_thread.run_sync(dashboard_client, url, {"token": ADMIN})
    assert "refused" not in got
    body = got["status"][0]
    assert {w["identity"] for w in body["workers"]} == {live.holder(), live.standby()}
    assert {"running", "epoch", "is_sane", "cache_age", "last_known_good", "timeline"} <= set(body)
    assert any(e["kind"] == "role" and "→ running" in e["text"] for e in body["timeline"])
    assert set(live.app.robot.core.clients) == clients_before  # the dashboard never became a worker
    assert not [c for c in live.app.robot.conns.values() if c.identity.admin]


# -- push timing on a virtual clock --------------------------------------------------------------------------


async def test_pushes_come_on_connect_after_changes_coalesced_and_every_tick(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    counter = [0]
    namespace = DashboardNamespace("tok", lambda: {"n": counter[0]}, tick=1.0, gap=0.05)
    server = Server()
    server.register_namespace(namespace)
    listener = MemoryListener()
    await nursery.start(lambda task_status: server.serve(listeners=[listener], task_status=task_status))

    async with raw_memory_client(listener) as refused:
        await refused.send('40/dashboard,{"token":"nope"}')
        assert (await refused.receive()).startswith("44/dashboard,")  # type: ignore[union-attr]

    async with raw_memory_client(listener) as client, trio.open_nursery() as inner:
        await client.connect_namespace(NAMESPACE, {"token": "tok"})
        start = trio.current_time()
        pushes: list[tuple[float, str | bytes]] = []

        async def receive() -> None:
            while True:
                message = await client.receive()
                pushes.append((round(trio.current_time() - start, 6), message))

        inner.start_soon(receive)
        await trio.sleep(1.3)
        for _ in range(10):  # a burst of changes, 1 ms apart
            counter[0] += 1
            namespace.poke()
            await trio.sleep(0.001)
        await trio.sleep(1.5)
        inner.cancel_scope.cancel()
    assert [at for at, _ in pushes] == [
        0,  # a snapshot at once
        1.0,  # nothing changed: one a tick
        1.3,  # the burst's first change, at once (the last push was long enough ago) ...
        1.35,  # ... the rest of it as one push, a gap later
        2.35,  # then quiet again: a tick later
    ]
    assert pushes[0][1] == '42/dashboard,["status",{"n":0}]'
    assert pushes[3][1] == '42/dashboard,["status",{"n":10}]'
    await trio.testing.wait_all_tasks_blocked()
    assert namespace.dashboards == 0  # its pusher ended with its connection


def test_the_tracker_notes_deploy_outcomes_once_per_change() -> None:
    @attrs.define
    class History:
        history: list[tuple[str, str]] = attrs.Factory(list)

    deployer, bus = History(), Bus()
    robot = types.SimpleNamespace(bus=bus)  # all the tracker needs of a robot here: where to say views changed
    tracker = StatusTracker(robot, deployer=deployer, wall_clock=lambda: 1.5)  # type: ignore[arg-type]
    changes: list[ViewsChanged] = []
    bus.subscribe(ViewsChanged, changes.append)
    deployer.history += [("abc", "up to date")] * 3 + [("def", "failed"), ("abc", "up to date")]
    tracker.sync_deploys()
    tracker.sync_deploys()
    texts = [(e["text"], e["level"], e["at"]) for e in tracker.timeline.entries]
    assert texts == [
        ("deploy of abc: up to date", "info", 1.5),
        ("deploy of def: failed", "warning", 1.5),
        ("deploy of abc: up to date", "info", 1.5),
    ]
    assert len(changes) == 3  # one push per entry, none for the repeats


# -- 64 shard groups: the table and each group's last hour ---------------------------------------------------


LANE = "document.querySelector('#lanes g.group[data-group=\"{group}\"]')"


@pytest.mark.slow
async def test_the_page_draws_64_groups_their_bars_gaps_and_deploys(chromium: str, nursery: trio.Nursery) -> None:
    from tests.supervisor._sharded import SnapshotRobot, sharded
    from urban_robot.supervisor._dashboard import install_dashboard
    from urban_robot.supervisor._deploy import DeployResult

    robot = SnapshotRobot(sharded(64, idle=(17,)))
    now = [time.time() - 3000]  # the tracker heard 50 minutes of this bot
    tracker = StatusTracker(robot, wall_clock=lambda: now[0])  # type: ignore[arg-type]

    def at(offset: float, action: Any) -> None:
        now[0] = start + offset
        tracker.observe(action)

    start = now[0]
    for group in range(64):
        at(1 + group / 10, RoleChanged(f"sid-{group}-a", f"child-{group}-a", "standby", "running", 1, group=group))
    at(1000, RoleChanged("sid-5-a", "child-5-a", "running", "gone", None, "process exited (-9)", group=5))
    at(1000.05, RoleChanged("sid-5-b", "child-5-b", "standby", "running", 2, "failover", group=5))  # a 50 ms gap
    at(2000, RoleChanged("sid-17-a", "child-17-a", "running", "gone", None, "silent", group=17))  # no one since
    at(2500, Verdict("child-9-b", 2, "promoted", group=9))
    now[0] = start + 2600
    tracker.deployed(DeployResult("0123456789abcdef", "deployed"))
    now[0] = start + 3000

    install_dashboard(robot, tracker, admin_token=ADMIN)  # type: ignore[arg-type]
    port = await nursery.start(robot.server.serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    async with open_browser(height=1200) as page:
        await page.navigate(f"{url}/?token={ADMIN}")
        await page.wait_for("document.querySelectorAll('#lanes g.group').length === 64")
        summary = await page.evaluate("document.getElementById('groups-summary').textContent")
        assert summary == "64 groups (256 shards): 63 processing, 1 waiting"
        rows = await page.evaluate(
            "[...document.querySelectorAll('#groups tr')].map(r => [r.dataset.group, r.className])"
        )
        assert len(rows) == 64 and rows[0] == ["17", "idle"] and rows[1] == ["0", ""]  # the problem first
        lanes = await page.evaluate(
            "[...document.querySelectorAll('#lanes g.group')].map(g => [g.dataset.group,"
            " [...g.querySelectorAll('rect.bar')].map(b => [b.dataset.worker, b.getAttribute('fill')]),"
            " [...g.querySelectorAll('rect.gap')].map(r => +r.getAttribute('width')),"
            " g.querySelectorAll('line.mark').length])"
        )
        by_group = {int(group): (bars, gap_widths, marks) for group, bars, gap_widths, marks in lanes}
        bars, gap_widths, marks = by_group[5]
        assert [worker for worker, _ in bars] == ["child-5-a", "child-5-b"]
        assert bars[0][1] != bars[1][1]  # generation 2, then 3: another colour
        assert len(gap_widths) == 2 and min(gap_widths) >= 2  # the start, and the 50 ms failover, still visible
        assert marks == 0
        bars, gap_widths, _ = by_group[17]
        assert [worker for worker, _ in bars] == ["child-17-a"] and len(gap_widths) == 2 and gap_widths[1] > 100
        assert by_group[9][2] == 1 and by_group[0][2] == 0  # the verdict marks its own group only
        tooltip = await page.evaluate(f"{LANE.format(group=5)}.querySelectorAll('rect.gap')[1].textContent")
        assert tooltip.startswith("shards 20-23: no processor ") and tooltip.endswith("(50 ms)")
        shared = await page.evaluate("[...document.querySelectorAll('#lanes g.shared-mark')].map(m => m.textContent)")
        assert len(shared) == 1 and shared[0].endswith("deploy of 0123456789ab: deployed")
        legend = await page.evaluate("document.getElementById('legend').textContent")
        assert "generation 2" in legend and "generation 3" in legend and "no processor" in legend
        png = await page.screenshot(artifacts() / "dashboard-64-groups.png")
        assert png_size(png)[1] >= 1000
        assert outside(page, url) == []
        assert errors(page) == []
