"""A discord.py bot under the real supervisor process, against the fake Discord served by the test.

``Stack`` puts together, in a temporary directory:

- the bot's git repositories: a bare upstream, a developer's clone that commits and pushes, and the clone the
  supervisor manages (``helium_path``). The bot's files are copied in unchanged (``examples/discord_bot``
  by default); a deploy is a commit pushed upstream and ``POST /api/deploy``, as an operator triggers it;
- the fake Discord (``FakeDiscord``, in the test's trio loop), whose records the checker reads;
- ``python -m urban_robot --config urban-robot.toml``: the real supervisor, in a session of its own so it
  can be SIGKILLed and started again (its children, each in a session of its own, are adopted). Two
  workers: one running, one standby. Its notifications go to the fake (``notify.api_url``) under the
  client name ``supervisor``; with ``notify_webhook=True`` it also has a webhook of the fake's ``#bot-log``
  (``secrets.notify_webhook``), the fallback when Discord refuses the bot's token;
- a poll of ``GET /api/status`` every ``STATUS_EVERY`` seconds: the supervisor's view of the lease, on the
  wall clock, kept as ``Stack.timeline``.

Timings are short by default (``SHORT_TIMINGS``: ``workers.interval`` 1 s, ``grace`` 1 s: a lease of 2 s);
``timings={}`` runs the supervisor at its shipped defaults (interval 1 s, grace 9 s, margin 2 s: a 10 s lease).

Each worker names itself to the fake as ``pid<its pid>`` (``configure_from_environment``'s default), so a
record says which process did what. Every process is killed in ``Stack``'s ``finally``: the supervisor's
process group, and every worker process the status poll or ``children.json`` ever named (each its own
process group), checked by its start time so a reused pid is left alone.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
import trio

from urban_robot.supervisor._children import start_ticks
from urban_robot.testing.fake_discord import DEFAULT_TOKEN, FakeDiscord
from urban_robot.testing.traffic import InProcess, Item, Profile, Traffic, Verdict, classify, records_of

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "discord_bot"
SELF_TEST_BOT = Path(__file__).with_name("every_entry_point")
ADMIN = "e2e-admin-token-0123456789"
STATUS_EVERY = 0.1
SHORT_TIMINGS = {"interval": 1.0, "grace": 1.0, "lease_margin": 0.5}
T = TypeVar("T")

# What examples/discord_bot answers, and how (see urban_robot.testing.traffic.Profile).
EXAMPLE_PROFILE = Profile(
    ping="!ping",
    ping_dm=True,  # `!ping` answers with ctx.send, no reference: one DM channel per ping tells the answers apart
    slash=("panel", {}),
    button="panel:press",
    select=("panel:drink", ("tea",)),
    modal=("feedback", "a fine bot"),
    join=True,
    loop=None,  # its tasks.loop logs, posts nothing: the integration's own tests cover its gate
)
# The self-test bot (every_entry_point/): replies, and a loop that posts.
SELF_TEST_PROFILE = Profile(
    ping="!ping",
    slash=("hello", {}),
    button="example:wave",
    select=("example:colour", ("blue",)),
    modal=("feedback", "a fine bot"),
    join=True,
    loop="tick",
)


async def git(cwd: Path, *args: str) -> str:
    done = await trio.run_process(["git", *args], cwd=cwd, capture_stdout=True, capture_stderr=True)
    return done.stdout.decode().strip()


class BotRepo:
    """A bare upstream, a developer's clone that pushes to it, and the clone the supervisor manages."""

    def __init__(self, tmp: Path, source: Path) -> None:
        self.source = source
        self.upstream = tmp / "upstream.git"
        self.work = tmp / "work"
        self.managed = tmp / "helium"

    async def create(self) -> None:
        tmp = self.upstream.parent
        await git(tmp, "init", "-q", "--bare", "-b", "main", str(self.upstream))
        await git(tmp, "clone", "-q", str(self.upstream), str(self.work))
        for key, value in (("user.name", "e2e"), ("user.email", "e2e@example.invalid")):
            await git(self.work, "config", key, value)
        shutil.copytree(self.source, self.work, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        (self.work / ".gitignore").write_text("log/\n__pycache__/\n")
        await self.push("the bot, as it is")
        await git(tmp, "clone", "-q", str(self.upstream), str(self.managed))

    async def push(self, message: str) -> str:
        await git(self.work, "add", "-A")
        await git(self.work, "commit", "-q", "-m", message)
        await git(self.work, "push", "-q", "origin", "HEAD:main")
        return await git(self.work, "rev-parse", "HEAD")

    async def bump(self, version: str) -> str:
        """Commit and push the bot with ``VERSION = "<version>"`` (a newer version takes over)."""
        main = self.work / "main.py"
        lines = [
            f'VERSION = "{version}"' if line.startswith("VERSION = ") else line for line in main.read_text().split("\n")
        ]
        main.write_text("\n".join(lines))
        return await self.push(f"release {version}")


@attrs.frozen
class Seen:
    """One poll of /api/status, on the wall clock."""

    at: float
    holder: str | None  # the lease holder's identity, when connected and confirmed
    epoch: int | None
    pids: dict[str, int]  # identity -> pid of every connected worker
    roles: dict[str, str]
    versions: dict[str, str | None]
    is_sane: bool


@attrs.define
class Fault:
    name: str
    start: float
    end: float = 0.0


class Stack:
    def __init__(
        self,
        tmp: Path,
        fake: FakeDiscord,
        nursery: trio.Nursery,
        *,
        source: Path = EXAMPLE,
        token: str = DEFAULT_TOKEN,
        env: dict[str, str] | None = None,
        crash_loop_losses: int = 3,
        notify_webhook: bool = False,
        timings: Mapping[str, float] = SHORT_TIMINGS,
    ) -> None:
        self.tmp = tmp
        self.timings = timings
        self.fake = fake
        self.nursery = nursery
        self.repo = BotRepo(tmp, source)
        self.token = token
        self.extra_env = env or {}
        self.crash_loop_losses = crash_loop_losses
        self.notify_webhook = notify_webhook
        self.state_dir = tmp / "state"
        self.log = tmp / "supervisor.log"
        self.port = 0
        self.process: trio.Process | None = None
        self.http = httpx.AsyncClient(timeout=5, headers={"Authorization": f"Bearer {ADMIN}"})
        self.timeline: list[Seen] = []
        self.workers_seen: dict[int, int | None] = {}  # pid -> start ticks, every worker ever seen
        self.faults: list[Fault] = []
        self.starts = 0
        self.traffic_start = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- set-up -------------------------------------------------------------------------------------------------
    async def set_up(self) -> None:
        await self.repo.create()
        with socket_bound() as port:
            self.port = port
        channel = self.fake.channel("bot-log").id
        webhook = self.fake.create_webhook("bot-log", client="supervisor") if self.notify_webhook else None
        config = self.tmp / "urban-robot.toml"
        timings = "\n".join(f"{key} = {value}" for key, value in self.timings.items())
        config.write_text(
            f"""
helium_path = "{self.repo.managed}"
command = ["{sys.executable}", "main.py"]
port = {self.port}
state_dir = "{self.state_dir}"
standbys = 1
branch = "main"
log_level = "INFO"
deploy_timeout = 60

[workers]
{timings}
health_timeout = 20
crash_loop_losses = {self.crash_loop_losses}
crash_loop_window = 120
restart_backoff = 0.2
restart_backoff_max = 1
stop_timeout = 3

[notify]
channel = {channel}
level = "WARNING"
api_url = "{self.fake.url}/c/supervisor/api/v10"

[secrets]
bot_token = "{self.token}"
admin_token = "{ADMIN}"
{f'notify_webhook = "{webhook}"' if webhook else ""}
"""
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("URBAN_ROBOT", "BOT_TOKEN", "HELIUM_PATH"))}
        env.update(
            PYTHONPATH=str(ROOT),
            URBAN_ROBOT_DISCORD_URL=self.fake.url,  # attach() points discord.py at the fake
            URBAN_ROBOT_CONFIG=str(config),
            LOGGING_CHANNEL="",
            **self.extra_env,
        )
        self.env = env
        self.nursery.start_soon(self._poll_status)

    async def start(self) -> None:
        """Start the supervisor process and wait until its port answers."""
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "urban_robot"],
                env=self.env,
                cwd=str(self.tmp),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.starts += 1
        with trio.fail_after(30):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the supervisor exited with {self.process.returncode}: {self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    await self.http.get(f"{self.url}/api/status")
                    return
                await trio.sleep(0.05)

    async def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            with trio.fail_after(30):
                await self.process.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- what the supervisor says ---------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any] | None:
        try:
            response = await self.http.get(f"{self.url}/api/status")
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    async def _poll_status(self) -> None:
        while True:
            status = await self.status() if self.port else None
            if status is not None:
                self._note(status)
            await trio.sleep(STATUS_EVERY)

    def _note(self, status: dict[str, Any]) -> None:
        lease = status.get("lease") or {}
        live = lease.get("connected") and lease.get("confirmed") and not lease.get("stopping")
        pids = {w["identity"]: w["pid"] for w in status["workers"] if w.get("pid")}
        for child in status.get("children") or []:
            pids.setdefault(child["identity"], child["pid"])
        for pid in pids.values():
            if pid not in self.workers_seen:
                self.workers_seen[pid] = start_ticks(pid)
        self.timeline.append(
            Seen(
                time.time(),
                lease.get("identity") if live else None,
                lease.get("epoch"),
                pids,
                {w["identity"]: w["role"] for w in status["workers"]},
                {w["identity"]: w.get("version") for w in status["workers"]},
                bool(status.get("is_sane")),
            )
        )

    def last(self) -> Seen | None:
        return self.timeline[-1] if self.timeline else None

    async def until(self, predicate: Callable[[Seen], T | None], timeout: float, what: str) -> T:
        """Wait for a status poll that satisfies ``predicate``; fail with ``what`` and the log's tail."""
        seen = len(self.timeline)
        with trio.move_on_after(timeout):
            while True:
                for snap in self.timeline[seen:]:
                    result = predicate(snap)
                    if result:
                        return result
                seen = len(self.timeline)
                await trio.sleep(STATUS_EVERY)
        raise AssertionError(f"waited {timeout} s for {what}; supervisor log:\n{self.tail()}")

    async def steady(self, timeout: float = 60.0) -> Seen:
        """A confirmed holder and a standby, both logged in to the fake (answering ``!ping``: see warm_up)."""

        def ready(snap: Seen) -> Seen | None:
            roles = sorted(snap.roles.values())
            return snap if snap.holder and roles == ["running", "standby"] and len(snap.pids) == 2 else None

        snap = await self.until(ready, timeout, "a running worker and a standby")
        await self.fake.wait_for(lambda: self.logged_in() >= 2, timeout=timeout)
        return snap

    def logged_in(self) -> int:
        return sum(1 for c in self.fake.connections if c.login and c.closed_at is None)

    def holder(self) -> tuple[str, int]:
        snap = self.last()
        assert snap is not None and snap.holder is not None, "no lease holder right now"
        return snap.holder, snap.pids[snap.holder]

    def lease_changes(self, since: float, until: float) -> int:
        """How many times the confirmed holder changed (to another worker) between two times."""
        holders = [s.holder for s in self.timeline if since <= s.at <= until and s.holder]
        return sum(1 for a, b in itertools.pairwise(holders) if a != b)

    def no_lease(self, since: float, until: float) -> float:
        """The longest stretch, by the status polls, with no confirmed, connected lease holder."""
        longest, start = 0.0, None
        for snap in (s for s in self.timeline if since <= s.at <= until):
            if snap.holder is None and start is None:
                start = snap.at
            elif snap.holder is not None and start is not None:
                longest, start = max(longest, snap.at - start), None
        return max(longest, (until - start) if start is not None else 0.0)

    # -- traffic and verdicts -----------------------------------------------------------------------------------
    def traffic(self, profile: Profile, rate: float = 20.0) -> Traffic:
        self.traffic_start = time.time()
        return Traffic(InProcess(self.fake), profile, rate=rate, prefix=f"m{len(self.faults)}x")

    async def settle(self, items: list[Item], profile: Profile, timeout: float = 5.0) -> Verdict:
        """Wait until every item is answered, or ``timeout`` passes with answers missing; then the verdict."""
        with trio.move_on_after(timeout):
            while classify(items, records_of(self.fake), profile).figures()["unanswered"]:
                await self.fake.changed()
                await trio.sleep(0.2)  # re-judged at most five times a second: the fake shares this process
        await trio.sleep(0.5)  # a second answer (the double this test is after) is given time to arrive
        return self.verdict(items, profile)

    def verdict(self, items: list[Item], profile: Profile) -> Verdict:
        evidence: dict[str, Any] = {
            "items": [attrs.asdict(i) for i in items],
            "faults": [attrs.asdict(f) for f in self.faults],
            "timeline": [attrs.asdict(s) for s in self.timeline],
            "records": records_of(self.fake),
        }
        (self.tmp / "evidence.json").write_text(json.dumps(evidence, indent=1))
        windows = [(f.start, f.end or time.time()) for f in self.faults]
        return classify(items, records_of(self.fake), profile, faults=windows)

    async def through(
        self, profile: Profile, name: str, fault: Callable[[], Awaitable[None]], *, around: float = 3.0
    ) -> Verdict:
        """Traffic for ``around`` seconds, then ``fault()`` (which returns once the system has recovered, by its
        own measure), then ``around`` seconds more; the verdict, with the fault's window from its start to its
        return."""
        traffic = self.traffic(profile)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic.run)
            await trio.sleep(around)  # the traffic's schedule, not a wait for something to happen
            record = Fault(name, time.time())
            self.faults.append(record)
            await fault()
            record.end = time.time()
            await trio.sleep(around)
            traffic.stop()
        return await self.settle(traffic.items, profile)

    async def new_holder(self, old: str, timeout: float = 30.0) -> Seen:
        """The first status poll with a confirmed holder other than ``old``."""
        return await self.until(
            lambda s: s if s.holder not in (None, old) else None, timeout, f"a holder other than {old}"
        )

    # -- the end --------------------------------------------------------------------------------------------------
    def kill_everything(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        registry = _read_json(self.state_dir / "children.json") or {}
        for info in registry.values():
            pid = int(info["pid"])
            self.workers_seen.setdefault(pid, info.get("start_ticks"))
        for pid, ticks in self.workers_seen.items():
            if ticks is not None and start_ticks(pid) == ticks:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGCONT)
                    os.killpg(pid, signal.SIGKILL)


def missing(source: Path, profile: Profile) -> list[str]:
    """The profile's kinds a bot's source shows no sign of handling (by the names the profile uses)."""
    text = "\n".join(path.read_text() for path in source.rglob("*.py"))
    signs = {
        "ping": ["ping"] if profile.ping_dm else [".reply("],
        "slash": [profile.slash[0]] if profile.slash else [],
        "button": [profile.button or ""],
        "select": [profile.select[0]] if profile.select else [],
        "modal": [profile.modal[0], "ui.Modal"] if profile.modal else [],
        "join": ["on_member_join"],
        "loop": ["tasks.loop", profile.loop or ""],
    }
    kinds = [*profile.kinds, *(["loop"] if profile.loop else [])]
    return [kind for kind in kinds if not all(sign in text for sign in signs[kind])]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def socket_bound() -> Any:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def running_stack(
    tmp: Path,
    *,
    intents: tuple[str, ...] = ("members", "presences", "message_content"),
    sharding: dict[str, Any] | None = None,
    **kw: Any,
) -> AsyncIterator[Stack]:
    """The fake Discord, the bot's repositories and the supervisor with two workers, torn down after.

    ``intents``: the privileged intents the fake's application has enabled (fewer: the bot is refused, 4014).
    ``sharding``: the fake's ``set_sharding`` (what GET /gateway/bot says and the gateway enforces).
    """
    fake = FakeDiscord(heartbeat_interval=10.0, enabled_intents=intents)
    if sharding:
        fake.set_sharding(**sharding)
    stack: Stack | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            stack = Stack(tmp, fake, nursery, **kw)
            await stack.set_up()
            await stack.start()
            try:
                yield stack
            finally:
                with trio.CancelScope(shield=True):
                    if stack.process is not None and stack.process.returncode is None:
                        stack.process.send_signal(signal.SIGTERM)
                        with trio.move_on_after(10):
                            await stack.process.wait()
                nursery.cancel_scope.cancel()
    finally:
        if stack is not None:
            stack.kill_everything()
            await stack.http.aclose()
