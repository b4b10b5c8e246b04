"""Deploys end to end: a real git repository, a tiny bot as real processes, the webhook, rollback.

The bot (``main.py`` in the managed repository) is a simulated Helium worker
whose version, health report and misbehaviour come from ``bot.json`` in the
same commit, so each commit is a different bot: good, failing its vital cog,
failing the percentage, crashing at import, hanging before it is ready.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from urban_robot.supervisor import Credentials, Notifier, Notify, Settings, Spawn, StateStore, UrbanRobot
from urban_robot.supervisor._children import ChildPolicy, Children
from urban_robot.supervisor._deploy import Deployer
from urban_robot.supervisor._git import Git
from urban_robot.supervisor._webhook import WebhookConfig, WebhookGate, sign
from urban_robot.supervisor._webhook_route import webhook_route
from urban_robot.testing.bot import MAIN_PY

pytestmark = pytest.mark.slow

BOT = MAIN_PY  # the stand-in bot of urban_robot.testing.bot, driven by bot.json
HEALTHY = {"OK": True, "percent": 100, "cogs": {"modules.utilities": True}}
SECRET = b"webhook-secret"
SETTINGS = Settings(token="bot-token", interval=1, grace=1, lease_margin=0.5, health_timeout=5, spawn_workers=True)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


class World:
    def __init__(self, tmp: Path) -> None:
        self.upstream = tmp / "upstream.git"
        self.work = tmp / "work"  # where the bot's developer pushes from
        self.repo = tmp / "helium"  # the checkout Urban Robot manages
        git(tmp, "init", "--bare", "-b", "main", str(self.upstream))
        git(tmp, "clone", str(self.upstream), str(self.work))
        for key, value in (("user.name", "dev"), ("user.email", "dev@example.invalid")):
            git(self.work, "config", key, value)
        self.notes: list[Notify] = []

    def commit(self, message: str, *, branch: str = "main", **bot: Any) -> str:
        config = {"version": "1.0", "health": HEALTHY, **bot}
        (self.work / "main.py").write_text(BOT)
        (self.work / "bot.json").write_text(json.dumps(config))
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", f"HEAD:{branch}")
        return git(self.work, "rev-parse", "HEAD")


async def start(
    nursery: trio.Nursery, world: World, tmp: Path, notify: Any = None, *, require_deploy_tag: bool = False
) -> tuple[UrbanRobot, Children, Deployer, str]:
    git(tmp, "clone", "-q", str(world.upstream), str(world.repo))
    store = StateStore(tmp / "state")
    store.prepare()
    robot = UrbanRobot(SETTINGS, store, Credentials(store.secret_key()), notify=notify or world.notes.append)
    port = await nursery.start(robot.run, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    children = Children(
        robot,
        [sys.executable, "main.py"],
        cwd=world.repo,
        url=url,
        log_dir=tmp / "log",
        policy=ChildPolicy(kill_timeout=2, term_timeout=0.5),
    )
    robot.spawner = children.spawn
    deployer = Deployer(
        robot,
        children,
        Git(world.repo),
        releases_dir=tmp / "releases",
        verdict_timeout=3,
        bad_commits_file=tmp / "state" / "bad_commits.json",
    )
    gate = WebhookGate(WebhookConfig(secret=SECRET, branch="main", require_deploy_tag=require_deploy_tag))
    robot.server.add_route(
        "POST", "/webhook/github", webhook_route(gate, lambda commit: deployer.request_push(commit.sha))
    )
    await nursery.start(children.run, 1)
    await nursery.start(deployer.run)
    return robot, children, deployer, url


async def push_webhook(
    url: str, commit: str, delivery: str, *, secret: bytes = SECRET, message: str = "update"
) -> httpx.Response:
    body = json.dumps(
        {"ref": "refs/heads/main", "after": commit, "head_commit": {"id": commit, "message": message}}
    ).encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(secret, body),
        "Content-Type": "application/json",
    }
    async with httpx.AsyncClient() as http:
        return await http.post(f"{url}/webhook/github", content=body, headers=headers)


async def running_identity(robot: UrbanRobot) -> str:
    while robot.core.lease is None or not robot.core.lease.confirmed:
        await trio.sleep(0.05)  # real processes starting; the core has no event to wait on from here
    return robot.core.lease.identity


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"health": {"OK": False, "percent": 100, "cogs": {"modules.utilities": False}}}, "vital_cog_failed"),
        ({"health": {"OK": False, "percent": 60, "cogs": {"modules.utilities": True}}}, "health_check_failure"),
        ({"crash": True}, "exited"),
        ({"hang": True}, "no verdict in time"),
    ],
)
async def test_bad_commit_is_rolled_back_and_the_old_worker_keeps_running(
    nursery: trio.Nursery, tmp_path: Path, bad: dict[str, Any], why: str
) -> None:
    world = World(tmp_path)
    good = world.commit("good", version="1.0")
    with trio.fail_after(60):
        robot, _children, deployer, url = await start(nursery, world, tmp_path)
        await running_identity(robot)
        deployer.request("first deploy")
        await deployer.wait_idle()
        assert robot.core.last_known_good_hash == good
        first, epoch = await running_identity(robot), robot.core.epoch
        spawns: list[Spawn] = []
        robot.observers.append(lambda action: spawns.append(action) if isinstance(action, Spawn) else None)
        broken = world.commit("broken", version="2.0", **bad)
        forged = await push_webhook(url, broken, "d-forged", secret=b"wrong")
        assert forged.status_code == 401
        accepted = await push_webhook(url, broken, "d-1")
        assert accepted.status_code == 202
        await trio.sleep(0.1)
        await deployer.wait_idle()
    assert deployer.history[-1] == (broken, "failed")
    assert robot.core.lease is not None and robot.core.lease.identity == first and robot.core.epoch == epoch
    assert robot.core.last_known_good_hash == good
    assert git(world.repo, "rev-parse", "HEAD") == good
    assert broken in deployer.bad_commits
    assert spawns == []  # a failed candidate is no lost worker: no spare of the old code piles up
    assert robot.core.is_sane and robot.core.losses == []
    assert any(why in n.message or "failed" in n.message for n in world.notes)
    replay = await push_webhook(url, broken, "d-1")
    assert replay.status_code == 200  # a replayed delivery is ignored


async def test_a_restarted_supervisor_remembers_the_failed_commit_until_try_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = World(tmp_path)
    world.commit("good", version="1.0")
    with trio.fail_after(60):
        robot, children, deployer, _url = await start(nursery, world, tmp_path)
        await running_identity(robot)
        assert await deployer.deploy("first deploy") == "deployed"
        broken = world.commit("broken", version="2.0", crash=True)
        assert await deployer.deploy("webhook") == "failed"
    assert deployer.bad_commits_file is not None
    # What the next supervisor process reads at start: the broken head is not tried (and rolled back) again.
    again = Deployer(
        robot, children, Git(world.repo), releases_dir=tmp_path / "r2", bad_commits_file=deployer.bad_commits_file
    )
    assert again.bad_commits == {broken}
    deployer.forget_bad_commits()  # try_again
    assert (
        Deployer(
            robot, children, Git(world.repo), releases_dir=tmp_path / "r3", bad_commits_file=deployer.bad_commits_file
        ).bad_commits
        == set()
    )
    deployer.bad_commits_file.write_text("{not json")
    assert (
        Deployer(
            robot, children, Git(world.repo), releases_dir=tmp_path / "r4", bad_commits_file=deployer.bad_commits_file
        ).bad_commits
        == set()
    )


async def test_good_commit_is_deployed_with_a_handover(nursery: trio.Nursery, tmp_path: Path) -> None:
    world = World(tmp_path)
    world.commit("v1", version="1.0")
    with trio.fail_after(60):
        robot, _children, deployer, url = await start(nursery, world, tmp_path)
        await running_identity(robot)
        deployer.request("first deploy")
        await deployer.wait_idle()
        v2 = world.commit("v2", version="2.0")
        assert (await push_webhook(url, v2, "d-2")).status_code == 202
        await trio.sleep(0.1)
        await deployer.wait_idle()
    assert deployer.history[-1] == (v2, "deployed")
    assert robot.core.last_known_good_hash == v2
    assert git(world.repo, "rev-parse", "HEAD") == v2
    holder = robot.core.clients[robot.core.lease.wid]  # type: ignore[union-attr,index]
    assert holder.version == "2.0" and holder.generation == 3  # start-up 1, first deploy 2, v2 3
    assert json.loads((tmp_path / "state" / "state.json").read_text())["last_known_good"] == v2


async def test_failed_rollback_makes_the_supervisor_insane_until_try_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = World(tmp_path)
    good = world.commit("good")
    with trio.fail_after(60):
        robot, _children, deployer, url = await start(nursery, world, tmp_path)
        await running_identity(robot)
        deployer.request("first deploy")
        await deployer.wait_idle()
        (world.repo / ".git" / "index.lock").touch()  # a real reason for git reset to fail
        broken = world.commit("broken", version="2.0", crash=True)
        assert (await push_webhook(url, broken, "d-3")).status_code == 202
        await trio.sleep(0.1)
        await deployer.wait_idle()
        assert robot.core.is_sane is False
        assert any(n.level == "critical" and "rollback failed" in n.message for n in world.notes)
        newer = world.commit("newer", version="3.0")
        refused = await push_webhook(url, newer, "d-4")
        assert (refused.status_code, refused.text) == (
            200,
            f"not deploying {newer[:12]}: is_sane is false (crash loop or failed rollback); try-again first",
        )
        await deployer.outcome_of(deployer.request("admin API"))
    assert deployer.history[-1] == ("-", "insane")  # nothing deploys until an operator says try_again
    assert robot.core.last_known_good_hash == good


async def test_operator_hears_of_a_failed_deploy_on_discord_despite_a_429(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    posted: list[dict[str, Any]] = []
    limited: list[int] = []

    def fake_discord(request: httpx.Request) -> httpx.Response:
        if not limited:
            limited.append(1)
            return httpx.Response(429, json={"message": "slow down", "retry_after": 0.05, "global": False})
        posted.append(json.loads(request.content))
        return httpx.Response(200, json={"id": str(len(posted))})

    world = World(tmp_path)
    world.commit("good")
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake_discord)) as http:
        notifier = Notifier(http, "discord-bot-token.abc.def", "123456789012345678")
        await nursery.start(notifier.run)
        with trio.fail_after(60):
            robot, _children, deployer, _url = await start(nursery, world, tmp_path, notify=notifier.notify)
            await running_identity(robot)
            broken = world.commit("broken", version="2.0", health={"OK": False, "percent": 0, "cogs": {}})
            deployer.request("test")
            await deployer.wait_idle()
            while not any("failed its health check" in p["content"] for p in posted):
                await trio.sleep(0.05)  # the notifier's queue drains in its own time, by design
    assert limited == [1]
    assert deployer.history[-1] == (broken, "failed")
    assert all("discord-bot-token" not in p["content"] for p in posted)


async def test_a_failing_install_step_is_an_error_to_retry_not_a_bad_commit(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """pip failing (the network, an index hiccup) is no verdict on the commit: tried once more at once, then the
    deploy ends as "install failed" with the commit not marked bad; the next request deploys it once it works."""
    world = World(tmp_path)
    world.commit("good")
    attempts = tmp_path / "attempts"
    broken = tmp_path / "index-down"
    broken.touch()
    script = (
        "import pathlib, sys; a = pathlib.Path(sys.argv[1]); a.write_text(a.read_text() + 'x' if a.exists() else 'x'); "
        "sys.exit('ERROR: Could not find a version that satisfies the requirement tinydep' "
        "if pathlib.Path(sys.argv[2]).exists() else 0)"
    )
    with trio.fail_after(60):
        robot, _children, deployer, _url = await start(nursery, world, tmp_path)
        await running_identity(robot)
        deployer.install = [sys.executable, "-c", script, str(attempts), str(broken)]
        deployer.install_retry_delay = 0
        newer = world.commit("needs a package", version="2.0")
        deployer.request("test")
        await deployer.wait_idle()
        assert deployer.history[-1] == (newer, "install failed")
        assert attempts.read_text() == "xx"  # tried twice
        assert newer not in deployer.bad_commits and robot.core.epoch == 1  # no verdict, no candidate
        assert deployer.expect(newer) == (202, f"deploying {newer[:12]}")  # the webhook says it will try
        broken.unlink()  # the index is back
        ticket = deployer.request("test")
        result = await deployer.outcome_of(ticket)
    assert (result.commit, result.outcome) == (newer, "deployed")
    assert deployer.expect(newer) == (200, f"already running {newer[:12]}")


async def test_the_webhook_deploys_its_tagged_commit_not_the_untagged_head_above_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The [DEPLOY] rule is checked on the announced commit, and that commit is the one deployed: an untagged
    commit pushed on top before the deploy fetches is not deployed in its place."""
    world = World(tmp_path)
    world.commit("[DEPLOY] v1", version="1.0")
    with trio.fail_after(60):
        robot, _children, deployer, url = await start(nursery, world, tmp_path, require_deploy_tag=True)
        await running_identity(robot)
        tagged = world.commit("[DEPLOY] v2", version="2.0")
        untagged = world.commit("v3, work in progress", version="3.0")  # the branch head when the deploy fetches
        assert (await push_webhook(url, tagged, "d-tagged", message="[DEPLOY] v2")).status_code == 202
        ignored = await push_webhook(url, untagged, "d-untagged", message="v3, work in progress")
        assert (ignored.status_code, ignored.text) == (200, "head commit message does not start with [DEPLOY]")
        await trio.sleep(0.1)
        await deployer.wait_idle()
    assert deployer.history == [(tagged, "deployed")]
    assert robot.core.last_known_good_hash == tagged
    assert git(world.repo, "rev-parse", "HEAD") == tagged
    holder = robot.core.clients[robot.core.lease.wid]  # type: ignore[union-attr,index]
    assert holder.version == "2.0"


async def test_a_webhook_cannot_deploy_a_commit_of_another_branch(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A signed push for ``main`` naming a commit that is only on another branch is refused after the fetch."""
    world = World(tmp_path)
    good = world.commit("good")
    with trio.fail_after(60):
        robot, _children, deployer, url = await start(nursery, world, tmp_path)
        await running_identity(robot)
        assert await deployer.deploy("first deploy") == "deployed"
        git(world.work, "switch", "-q", "-c", "experiment")
        other = world.commit("experiment", branch="experiment", version="9.0")
        assert (await push_webhook(url, other, "d-other")).status_code == 202
        await trio.sleep(0.1)
        await deployer.wait_idle()
    assert deployer.history[-1] == (other, "not on branch")
    assert robot.core.last_known_good_hash == good and git(world.repo, "rev-parse", "HEAD") == good
    assert other not in deployer.bad_commits  # no verdict on the commit: it was never tried
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == [
        f"deploy (webhook) refused: {other[:12]} is not on origin/main (another branch's commit, or force-pushed away)"
    ]


async def test_the_newest_announced_commit_wins_and_an_older_one_is_never_deployed_after_it(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two webhooks in quick succession deploy the newer commit once; a late delivery of the older one (or a
    replayed body) is ignored with a log line instead of moving the bot back."""
    caplog.set_level(logging.INFO, logger="urban_robot.deploy")
    world = World(tmp_path)
    world.commit("v1", version="1.0")
    with trio.fail_after(60):
        robot, _children, deployer, url = await start(nursery, world, tmp_path)
        await running_identity(robot)
        v2 = world.commit("v2", version="2.0")
        v3 = world.commit("v3", version="3.0")
        world.commit("v4, not announced yet", version="4.0")
        deployer.request("webhook", v3)  # both arrive before the deploy loop runs: newest first, then older
        deployer.request("webhook", v2)
        await trio.sleep(0.1)
        await deployer.wait_idle()
        assert deployer.history == [(v3, "deployed")]
        late = await push_webhook(url, v2, "d-late")
        assert late.status_code == 202  # the answer comes before the fetch that tells
        await trio.sleep(0.1)
        await deployer.wait_idle()
    assert deployer.history == [(v3, "deployed"), (v2, "outdated")]
    assert robot.core.last_known_good_hash == v3 and git(world.repo, "rev-parse", "HEAD") == v3
    messages = [r.getMessage() for r in caplog.records]
    assert f"deploy (webhook): {v2[:12]} skipped, {v3[:12]} was announced too and is newer" in messages
    assert f"deploy (webhook) ignored: {v2[:12]} is older than the deployed {v3[:12]}" in messages
