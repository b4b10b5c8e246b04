"""The assembled supervisor (``serve(Options)``, a real worker process) seen from its HTTP port.

Webhooks that are forged, unsigned, replayed or for another branch deploy nothing; every admin route
refuses a missing, wrong or malformed credential; the default bind address is loopback; and no secret
(bot token, admin token, webhook secret, the child key and child secrets) appears in any log (text or
JSON), any HTTP answer, or the CLI's output — except the one intended delivery, ``hello`` to a worker.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from tests._helpers import QUICK, dashboard_client, worker_options
from urban_robot.cli import run_subcommand
from urban_robot.config import load_config
from urban_robot.logs import JsonFormatter, Redactor, configure_logging
from urban_robot.supervisor._assembly import App, Options, serve
from urban_robot.supervisor._webhook import sign

from .._helpers import read_until

pytestmark = pytest.mark.slow

BOT_TOKEN = "bot-token-Zq8x7Wv"
ADMIN = "admin-token-Lk4j3Hn"
WEBHOOK = b"webhook-secret-Pp0o9Iu"
DISCORD = "discord-notify-token-Mm5n6Bb"
SETTINGS = attrs.evolve(QUICK, token=BOT_TOKEN)
ADMIN_ROUTES = [
    ("POST", "/api/deploy"),
    ("POST", "/api/try-again"),
    ("POST", "/api/stop"),
    ("GET", "/api/status"),
    ("GET", "/metrics"),
]
BAD_CREDENTIALS = {
    "none": None,
    "empty": "",
    "Bearer only": "Bearer",
    "Bearer empty": "Bearer ",
    "wrong": "Bearer wrong",
    "prefix": "Bearer " + ADMIN[:-1],
    "longer": "Bearer " + ADMIN + "x",
    "Basic": "Basic " + base64.b64encode(f"admin:{ADMIN}".encode()).decode(),
    "no scheme": ADMIN,
    "tab instead of space": "Bearer\t" + ADMIN,
    "token twice": f"Bearer {ADMIN} {ADMIN}",
    "other scheme": "Token " + ADMIN,
    "case changed": "Bearer " + ADMIN.upper(),
}


@attrs.define
class Running:
    app: App
    logs: io.StringIO
    options: Options


@pytest.fixture
async def running(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Running]:
    options = worker_options(
        tmp_path,
        SETTINGS,
        standbys=0,
        admin_token=ADMIN,
        webhook_secret=WEBHOOK,
        discord_token=DISCORD,
    )
    logs = io.StringIO()
    raw = logging.StreamHandler(logs)  # no redaction at all: nothing may log a secret in the first place
    raw.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    json_handler = logging.StreamHandler(logs)
    json_handler.setFormatter(JsonFormatter(Redactor([])))
    root = logging.getLogger("urban_robot")  # the product's loggers (not the test's own HTTP client)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(raw)
    root.addHandler(json_handler)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[App]) -> None:
        with scope:
            await serve(options, task_status=task_status)

    try:
        with trio.fail_after(30):
            app = await nursery.start(run)
            while not (app.robot.core.lease and app.robot.core.lease.confirmed):
                await trio.sleep(0.05)  # a real child process: nothing in here to wait on
        yield Running(app, logs, options)
    finally:
        scope.cancel()
        root.removeHandler(raw)
        root.removeHandler(json_handler)
        root.setLevel(old_level)


def push(branch: str = "main", sha: str = "a" * 40) -> bytes:
    return json.dumps({"ref": f"refs/heads/{branch}", "after": sha, "head_commit": {"message": "x"}}).encode()


async def test_webhooks_forged_unsigned_replayed_or_other_branch_deploy_nothing(running: Running) -> None:
    deployer = running.app.deployer
    requested: list[tuple[str, str | None]] = []
    deployer.request = lambda reason, commit=None: requested.append((reason, commit))  # type: ignore[method-assign]
    url = running.app.url + "/webhook/github"
    body = push()

    def headers(signature: str | None, delivery: str = "d-1", event: str = "push") -> dict[str, str]:
        found = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "Content-Type": "application/json"}
        if signature is not None:
            found["X-Hub-Signature-256"] = signature
        return found

    async with httpx.AsyncClient() as http:
        answers = {
            "unsigned": await http.post(url, content=body, headers=headers(None)),
            "forged": await http.post(url, content=body, headers=headers(sign(b"not the secret", body))),
            "signed other body": await http.post(url, content=push(sha="b" * 40), headers=headers(sign(WEBHOOK, body))),
            "sha1 header": await http.post(url, content=body, headers=headers("sha1=" + "0" * 40)),
            "other branch": await http.post(
                url, content=push("dev"), headers=headers(sign(WEBHOOK, push("dev")), "d-0")
            ),
        }
        assert requested == []
        first = await http.post(url, content=body, headers=headers(sign(WEBHOOK, body), "d-1"))
        replayed = await http.post(url, content=body, headers=headers(sign(WEBHOOK, body), "d-1"))
    assert {name: a.status_code for name, a in answers.items()} == {
        "unsigned": 401,
        "forged": 401,
        "signed other body": 401,
        "sha1 header": 401,
        "other branch": 200,
    }
    assert "is not 'main'" in answers["other branch"].text
    done = [("webhook", "a" * 40)]  # the signed body's commit, exactly
    assert first.status_code == 202 and requested == done  # the control: a good one does deploy
    assert replayed.status_code == 200 and "already seen" in replayed.text and requested == done


async def raw_request(url: str, method: str, path: str, authorization: str | None) -> bytes:
    """One request over a raw socket: header values no client library would send (trailing blanks, tabs)."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n"
    if authorization is not None:
        head += f"Authorization: {authorization}\r\n"
    async with stream:
        await stream.send_all(head.encode() + b"\r\n")
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
    return answer


async def test_every_admin_route_refuses_bad_credentials(running: Running) -> None:
    app = running.app
    for method, path in ADMIN_ROUTES:
        for name, value in BAD_CREDENTIALS.items():
            answer = await raw_request(app.url, method, path, value)
            # 429 once this address has tried too many wrong tokens (LoginThrottle): refused unchecked
            assert answer.startswith((b"HTTP/1.1 401 ", b"HTTP/1.1 429 ")), (method, path, name, answer[:40])
            assert ADMIN.encode() not in answer
        other = "GET" if method == "POST" else "POST"
        assert (await raw_request(app.url, other, path, "Bearer " + ADMIN)).startswith(b"HTTP/1.1 405 ")
    throttled = await raw_request(app.url, "GET", "/api/status", f"Bearer {ADMIN}")
    assert throttled.startswith(b"HTTP/1.1 429 ") and b"Retry-After: " in throttled  # even the right one, for now
    app.robot.logins.clear()  # as if the wait were over
    for tolerated in (f"Bearer {ADMIN}", f"bearer {ADMIN}", f"Bearer  {ADMIN} "):  # blanks around the token
        assert (await raw_request(app.url, "GET", "/api/status", tolerated)).startswith(b"HTTP/1.1 200 ")
    assert not app.stop_requested.is_set() and app.deployer.history == []  # nothing was deployed or stopped


async def test_no_secret_in_logs_answers_or_cli_output(running: Running, tmp_path: Path) -> None:
    app, robot = running.app, running.app.robot
    child_key = robot.credentials.key
    child_secrets = [robot.credentials.child_secret(identity) for identity in app.children.children]
    secrets = [BOT_TOKEN, ADMIN, WEBHOOK.decode(), DISCORD, *child_secrets]
    forms = [*secrets, child_key.hex(), base64.b64encode(child_key).decode()]
    forms += [base64.b64encode(s.encode()).decode() for s in secrets] + [s.encode().hex() for s in secrets]
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=app.url) as http:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        for method, path, headers, content in [
            ("GET", "/api/status", auth, None),
            ("GET", "/metrics", auth, None),
            ("GET", "/api/status", {"Authorization": "Bearer " + ADMIN + "x"}, None),
            ("GET", "/", {}, None),
            ("GET", "/nope", {}, None),
            ("POST", "/webhook/github", {"X-Hub-Signature-256": "sha256=" + "0" * 64}, b"{}"),
            ("POST", "/webhook/github", {}, b"x" * 2_000_000),
            ("GET", "/socket.io/?EIO=4&transport=polling&sid=" + BOT_TOKEN, {}, None),
            ("GET", "/socket.io/?EIO=3", {}, None),
            ("POST", "/api/deploy", auth, None),
        ]:
            answer = await http.request(method, path, headers=headers, content=content)
            seen.append(f"{answer.status_code} {answer.headers} {answer.text}")
    pushed = await trio.to_thread.run_sync(dashboard_client, app.url, {"token": ADMIN})  # the dashboard's feed
    assert pushed["status"], pushed
    seen.append(json.dumps(pushed))
    for name in ("status", "deploy", "try-again"):
        for token in (ADMIN, "wrong-token", None):
            out, err = io.StringIO(), io.StringIO()
            run = functools.partial(
                run_subcommand, name, url=app.url, token=token, out=out, err=err, state_dir=tmp_path / "none"
            )
            await trio.to_thread.run_sync(run)
            seen += [out.getvalue(), err.getvalue()]
    await app.deployer.wait_idle()
    text_logs = io.StringIO()
    handler = configure_logging(logging.INFO, "text", [], stream=text_logs)  # the CLI's text format, no redaction
    try:
        logging.getLogger("urban_robot").warning("status %s", robot.status())
    finally:
        logging.getLogger().removeHandler(handler)
    logs = running.logs.getvalue() + text_logs.getvalue()
    assert "authentication" in logs or "supervising" in logs  # the capture did capture
    everything = "\n".join([*seen, logs, repr(running.options), repr(robot.credentials), repr(robot.settings)])
    for form in forms:
        assert form not in everything, f"a secret leaked: {form[:6]}..."


def test_default_bind_is_loopback(tmp_path: Path) -> None:
    assert Options(helium_path=tmp_path).host == "127.0.0.1"
    assert load_config({}, {}, None, tmp_path).host == "127.0.0.1"


async def test_python_m_urban_robot_without_config_listens_on_loopback_only(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("URBAN_ROBOT_", "BOT_TOKEN", "HELIUM_PATH"))}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "urban_robot", "--port", "0", "--state-dir", str(tmp_path / "state")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with trio.fail_after(30):
            assert process.stdout is not None
            seen = await read_until(process.stdout, b"Urban Robot demo on http://", b"\n")
            port = int(seen.split(b"Urban Robot demo on http://127.0.0.1:")[1].split(b" ")[0])
            listening = _listening_addresses(port)
    finally:
        process.send_signal(signal.SIGTERM)  # stops its demo workers in order
        with trio.move_on_after(20):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert listening == ["127.0.0.1"]


def _listening_addresses(port: int) -> list[str]:
    """Local addresses of LISTEN sockets on ``port`` (Linux /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            pytest.skip("no /proc/net/tcp here")
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                found.append(".".join(str(b) for b in reversed(raw)) if len(raw) == 4 else raw.hex())
    return found
