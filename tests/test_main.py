"""The README's first command: ``python -m urban_robot`` runs the demo and stops cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

from tests._helpers import read_until


def urban_robot(tmp_path: Path, *args: str) -> list[str]:
    """``python -m urban_robot`` on any free port with its state in ``tmp_path/state``."""
    return [sys.executable, "-m", "urban_robot", "--port", "0", "--state-dir", str(tmp_path / "state"), *args]


@asynccontextmanager
async def supervisor(command: list[str], **kwargs: Any) -> AsyncIterator[trio.Process]:
    """The supervisor process of one test; killed at the end if the test did not stop it."""
    proc = await trio.lowlevel.open_process(command, **kwargs)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()


def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie not yet reaped by its session counts): stopped, not orphaned."""
    return not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.slow
async def test_demo_supervises_two_workers_and_stops_them_on_sigterm(tmp_path: Path) -> None:
    async with supervisor(urban_robot(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        seen = b""
        with trio.fail_after(30):
            seen = await read_until(proc.stdout, b"Workers: child-", b"is running, epoch 1", seen=seen)
            listed = seen.split(b"Workers: ")[1].split(b". Kill")[0].replace(b",", b" ").split()
            pids = [int(p) for p in listed if p.isdigit()]
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    assert len(pids) == 2
    token = (tmp_path / "state" / "admin.token").read_text().strip()
    [line] = [line for line in seen.decode().splitlines() if line.startswith("Dashboard: http://127.0.0.1:")]
    assert token not in seen.decode() and "admin.token" in line  # not a terminal: where the token is, not it
    for pid in pids:  # the children were stopped with it, not orphaned
        assert gone(pid)


@pytest.mark.slow
async def test_a_second_sigterm_while_stopping_does_not_cut_the_stop_short(tmp_path: Path) -> None:
    """A bot that takes its time to stop, a second SIGTERM (an operator's kill after systemctl stop): the stop
    still ends in order and nothing is orphaned. (A second Ctrl+C was already safe: trio defers it.)"""
    (tmp_path / "bot").mkdir()
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    command = urban_robot(
        tmp_path, "--helium-path", str(tmp_path / "bot"), "--standbys", "0", "--workers-stop-timeout", "1"
    )
    command += ["--command", f"{sys.executable} -c '{stubborn}'"]
    env = {**os.environ, "BOT_TOKEN": "bot-token"}
    registry = tmp_path / "state" / "children.json"
    async with supervisor(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
        assert proc.stdout is not None
        with trio.fail_after(30):
            await read_until(proc.stdout, b"Urban Robot on ")
            while not (registry.exists() and json.loads(registry.read_text())):
                await trio.sleep(0.05)  # another process's file: nothing to wait on but itself
            [pid] = [child["pid"] for child in json.loads(registry.read_text()).values()]
            proc.send_signal(signal.SIGTERM)
            await read_until(proc.stdout, b"SIGTERM: stopping")  # its worker ignores SIGTERM: ~1 s to stop it
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0  # was: killed by the second SIGTERM (-15), the worker left running
    assert gone(pid)


@pytest.mark.slow
async def test_on_a_terminal_the_dashboard_line_carries_the_token(tmp_path: Path) -> None:
    """As Jupyter does: the operator clicks the printed link and is in."""
    main_end, terminal = pty.openpty()
    proc = await trio.lowlevel.open_process(urban_robot(tmp_path), stdout=terminal, stderr=terminal)
    os.close(terminal)
    terminal_output = trio.lowlevel.FdStream(main_end)
    try:
        with trio.fail_after(30):
            seen = await read_until(terminal_output, b"Dashboard: ", b"Admin API on")
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(trio.BrokenResourceError):  # EIO once the last writer is gone
                while await terminal_output.receive_some(65536):  # a terminal is read to the end
                    pass
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await terminal_output.aclose()
    token = (tmp_path / "state" / "admin.token").read_text().strip()
    [line] = [line for line in seen.decode().splitlines() if line.startswith("Dashboard: ")]
    assert line.endswith(f"/?token={token}") and line.startswith("Dashboard: http://127.0.0.1:")


@pytest.mark.slow
async def test_a_second_supervisor_on_the_same_state_is_refused_in_one_line(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    first = await trio.lowlevel.open_process(
        [sys.executable, "-m", "urban_robot", "--port", "0", *state], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert first.stdout is not None
        seen = b""
        with trio.fail_after(30):
            seen = await read_until(first.stdout, b"Urban Robot demo on", seen=seen)
            second = await trio.run_process(
                [sys.executable, "-m", "urban_robot", "--port", "0", *state], capture_stderr=True, check=False
            )
    finally:
        first.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await first.wait()
    assert second.returncode == 1
    lines = second.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "another supervisor" in lines[0] and "Traceback" not in lines[0], lines


@pytest.mark.slow
async def test_a_busy_port_is_one_line_too(tmp_path: Path) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    with listener, trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "urban_robot", "--port", str(port), "--state-dir", str(tmp_path / "s")],
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    stderr = result.stderr.decode()
    line = stderr.strip().splitlines()[-1]  # after the start-up log lines
    assert line == f"urban-robot: cannot listen on 127.0.0.1:{port}: Address already in use; pick another --port"
    assert "Traceback" not in stderr


@pytest.mark.slow
async def test_a_bad_configuration_is_refused_with_one_line_per_problem(tmp_path: Path) -> None:
    (tmp_path / "urban-robot.toml").write_text('port = "eighty"\nhelium_path = "/nonexistent"\ntypo = 1\n')
    result = await trio.run_process(
        [sys.executable, "-m", "urban_robot"], cwd=tmp_path, capture_stderr=True, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("urban-robot: configuration: ") for line in lines)
    assert {line.split(": ")[2] for line in lines} == {"port", "helium_path", "typo"}


def test_every_documented_flag_is_a_flag_and_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from urban_robot.__main__ import main
    from urban_robot.config import KEYS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "urban-robot.toml").write_text("standbys = 1\n[workers]\ninterval = 30\n")
    assert main(["--standbys", "many", "--workers-interval", "-3", "--require-deploy-tag", "maybe"]) == 2
    problems = capsys.readouterr().err.strip().splitlines()
    assert sorted(line.split(": ")[2] for line in problems) == ["require_deploy_tag", "standbys", "workers.interval"]
    assert all("(from --" in line for line in problems)  # the flag's value, not the file's, was judged
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    assert all(key.flag in usage for key in KEYS if key.flag), "docs/configuration.md lists flags the CLI lacks"
    assert not any(key.secret and key.env.lower().replace("_", "-") in usage for key in KEYS)


@pytest.mark.slow
async def test_systemd_notify_and_json_logs(tmp_path: Path) -> None:
    import json
    import os

    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    await sock.bind(str(tmp_path / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"))
    command = [
        sys.executable,
        "-m",
        "urban_robot",
        "--port",
        "0",
        "--state-dir",
        str(tmp_path / "s"),
        "--log-format",
        "json",
    ]
    proc = await trio.lowlevel.open_process(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(30):
            ready = await sock.recv(4096)
            assert ready.startswith(b"READY=1")
            assert proc.stderr is not None
            err = b""
            err = await read_until(proc.stderr, b"is running, epoch 1", seen=err)
            # STATUS= follows the bot's health, not a fixed "supervising".
            while not (status := (await sock.recv(4096)).decode()).startswith("STATUS=running child-"):
                assert status.startswith("STATUS=waiting for"), status
            assert status.endswith("(version 1.0, epoch 1); 1 standby") or status.endswith("; 0 standby"), status
            proc.send_signal(signal.SIGTERM)
            while not (message := await sock.recv(4096)).startswith(b"STOPPING=1"):
                assert message.startswith(b"STATUS="), message
            while chunk := await proc.stderr.receive_some(65536):
                err += chunk
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        sock.close()
    records = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert any("is running, epoch 1" in r["message"] for r in records)
    [sigterm] = [r["message"] for r in records if r["message"].startswith("SIGTERM: ")]
    assert sigterm.startswith(
        "SIGTERM: stopping the supervisor, the bot goes offline: 2 workers are asked to shut down"
    )


@pytest.mark.slow
async def test_stop_subcommand_stops_the_supervisor_and_its_workers(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    async with supervisor(urban_robot(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        seen = b""
        with trio.fail_after(30):
            seen = await read_until(proc.stdout, b"Workers: child-", seen=seen)
            url = seen.split(b"Urban Robot demo on ")[1].split()[0].decode()
            port = url.rsplit(":", 1)[1]
            listed = seen.split(b"Workers: ")[1].split(b". Kill")[0].replace(b",", b" ").split()
            pids = [int(p) for p in listed if p.isdigit()]
            stop = await trio.run_process(
                [sys.executable, "-m", "urban_robot", "--port", port, *state, "stop"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert stop.returncode == 0 and b"stop requested" in stop.stdout, stop.stderr
            during_stop = (await read_to_end(proc.stdout)).decode()
            assert await proc.wait() == 0
    for pid in pids:
        assert gone(pid)
    # The same stop as SIGTERM's: said once with its reason, nobody promoted, no holder left behind.
    assert during_stop.count("supervisor stopping: the bot goes offline (stop requested through the admin API)") == 1
    assert "is running" not in during_stop
    assert json.loads((tmp_path / "state" / "state.json").read_text())["holder"] is None


@contextlib.contextmanager
def discord_channel() -> Iterator[tuple[str, list[str]]]:
    """A stand-in for Discord's REST API (notify.api_url) that keeps every message posted to it, in order."""
    posted: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            posted.append(body["content"])
            answer = json.dumps({"id": str(len(posted))}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v10", posted
    finally:
        server.shutdown()
        server.server_close()


async def read_to_end(stream: trio.abc.ReceiveStream, seen: bytes = b"") -> bytes:
    while chunk := await stream.receive_some(65536):
        seen += chunk
    return seen


@pytest.mark.slow
async def test_sigterm_asks_the_workers_to_shut_down_releases_the_lease_and_the_next_start_processes_at_once(
    tmp_path: Path,
) -> None:
    """The one stop path: SIGTERM → ``cmd shutdown`` to every worker (no signal needed), no promotion on the way
    down, one "goes offline" notification, no holder left in state.json; so a restart does not wait the lease
    out (it did: ~50 s with the default lease, issue 12)."""
    (tmp_path / "bot").mkdir()
    worker = f"{sys.executable} -m urban_robot.testing.worker"
    state = tmp_path / "state"
    with discord_channel() as (api_url, posted):
        command = urban_robot(tmp_path, "--helium-path", str(tmp_path / "bot"), "--command", worker)
        command += ["--notify-channel", "123", "--notify-api-url", api_url]
        env = {**os.environ, "BOT_TOKEN": "bot-token"}
        async with supervisor(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
            assert proc.stdout is not None
            with trio.fail_after(30):
                seen = await read_until(proc.stdout, b"is running, epoch 1")
                while seen.count(b"health check passed") < 2:  # the standby is warm too: two workers to stop
                    seen += await proc.stdout.receive_some(65536)
                proc.send_signal(signal.SIGTERM)
                during_stop = (await read_to_end(proc.stdout)).decode()
                assert await proc.wait() == 0
        passed = r"worker (child-\S+) \(\S+\): checking -> standby: health check passed"
        identities = set(re.findall(passed, seen.decode()))
        assert "is running" not in during_stop and "spawning" not in during_stop  # no promotion, no replacement
        exits = dict(re.findall(r"(child-\S+) \(pid \d+\) exited with (\S+) ", during_stop))
        assert len(identities) == 2 and exits == dict.fromkeys(identities, "0")  # a SIGTERM would be -15
        logs = [path.read_text() for path in (tmp_path / "bot" / "log").glob("helium-*.log")]
        assert len(logs) == 2 and all(" cmd:shutdown\n" in log and " stopped\n" in log for log in logs)
        assert json.loads((state / "state.json").read_text())["holder"] is None
        stopping = [message for message in posted if "supervisor stopping" in message]
        assert stopping == ["⚠️ supervisor stopping: the bot goes offline (SIGTERM)"], posted
        assert not any("is running, epoch 2" in message for message in posted)

        # The next start: a worker processes as soon as one passes its check, no lease to wait out.
        async with supervisor(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
            assert proc.stdout is not None
            started = trio.current_time()
            with trio.fail_after(30):
                await read_until(proc.stdout, b"is running, epoch 2")
                restart = trio.current_time() - started
                proc.send_signal(signal.SIGTERM)
                await read_to_end(proc.stdout)
                assert await proc.wait() == 0
    assert restart < 10, f"{restart:.1f}s: the next start waited for a lease (45 s + 5 s margin by default)"
