"""The operator subcommands against a real supervisor, and the admin credential file."""

from __future__ import annotations

import functools
import io
import json
import logging
import socket
import stat
import time
from pathlib import Path

import attrs
import pytest
import trio

from tests._helpers import worker_options
from urban_robot.cli import (
    dashboard_url,
    ensure_admin_token,
    format_status,
    read_admin_token,
    run_subcommand,
    supervisor_url,
)
from urban_robot.supervisor import App, serve


async def cli(name: str, url: str, token: str | None, **kwargs: object) -> tuple[int, str, str]:
    """Run a subcommand in a thread (it uses sync httpx): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    call = functools.partial(run_subcommand, name, url=url, token=token, out=out, err=err, **kwargs)  # type: ignore[arg-type]
    code = await trio.to_thread.run_sync(call)
    return code, out.getvalue(), err.getvalue()


async def running_supervisor(nursery: trio.Nursery, tmp_path: Path, token: str) -> tuple[App, str]:
    """A supervisor with one running worker (and a standby); the running worker's identity."""
    options = worker_options(tmp_path, admin_token=token, standbys=1)
    app: App = await nursery.start(serve, options)
    core = app.robot.core
    while not (core.lease and core.lease.confirmed and core.lease.sid):
        await trio.sleep(0.05)  # real processes
    return app, core.lease.identity


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.slow
async def test_subcommands_against_a_running_supervisor(nursery: trio.Nursery, tmp_path: Path) -> None:
    token = ensure_admin_token(tmp_path / "state", None)
    with trio.fail_after(60):
        app, holder = await running_supervisor(nursery, tmp_path, token)

        code, out, err = await cli("status", app.url, token)
        assert (code, err) == (0, "")
        [row] = [line for line in out.splitlines() if line.startswith(holder)]
        assert row.split()[1] == "running"
        assert "is_sane:         true" in out and "last_known_good:" in out and "cache age:" in out
        assert token not in out

        code, out, err = await cli("status", app.url, token, json=True)
        body = json.loads(out)
        assert code == 0 and err == ""
        assert any(w["identity"] == holder and w["role"] == "running" for w in body["workers"])

        for name, answer in (("try-again", "try again requested"), ("deploy", "deploy requested")):
            code, out, err = await cli(name, app.url, token)
            assert (code, err) == (0, "") and answer in out

        for name in ("status", "try-again", "deploy"):
            for wrong in ("wrong-token", None):
                code, out, err = await cli(name, app.url, wrong, state_dir=tmp_path / "state")
                assert code == 1 and out == "" and "wrong-token" not in err and token not in err
                [line] = err.splitlines()
                assert line == (
                    "urban-robot: the supervisor refused the admin credential: "
                    f"check {tmp_path / 'state' / 'admin.token'} or URBAN_ROBOT_ADMIN_TOKEN"
                )
        nursery.cancel_scope.cancel()


async def test_no_supervisor_is_one_line() -> None:
    url = closed_port_url()
    for name in ("status", "try-again", "deploy"):
        code, out, err = await cli(name, url, "anything")
        assert code == 1 and out == ""
        assert err.splitlines() == [
            f"urban-robot: no supervisor answers at {url}: is it running? (start it with python -m urban_robot)"
        ]


async def test_credential_error_names_a_placeholder_without_a_state_dir() -> None:
    async def refuse(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        body = b'{"error": "admin credential missing or wrong"}'
        await stream.send_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await stream.aclose()

    async def fail(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        body = b'{"error": "boom"}'
        await stream.send_all(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await stream.aclose()

    for handler, expected in (
        (refuse, "check <state-dir>/admin.token or URBAN_ROBOT_ADMIN_TOKEN"),
        (fail, "the supervisor answered 500 to POST /api/deploy: boom"),
    ):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            code, out, err = await cli("deploy", f"http://127.0.0.1:{port}", "t")
            nursery.cancel_scope.cancel()
        assert code == 1 and out == ""
        [line] = err.splitlines()
        assert line.startswith("urban-robot: ") and line.endswith(expected)


def test_unknown_subcommand_is_a_usage_error() -> None:
    err = io.StringIO()
    assert run_subcommand("nope", url="http://127.0.0.1:1", token=None, out=io.StringIO(), err=err) == 2
    assert "unknown subcommand" in err.getvalue()


def test_admin_token_created_0600_then_reused_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "new" / "state"
    with caplog.at_level(logging.DEBUG):
        first = ensure_admin_token(state, None)
        second = ensure_admin_token(state, None)
    path = state / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert len(first) >= 32 and first == second == path.read_text().strip()
    assert read_admin_token(state, None) == first
    assert [p.name for p in state.iterdir()] == ["admin.token"]  # no temporary left behind
    assert first not in caplog.text and "admin.token" in caplog.text


def test_a_configured_token_wins_and_writes_nothing(tmp_path: Path) -> None:
    assert ensure_admin_token(tmp_path / "s", "  configured  ") == "configured"
    assert not (tmp_path / "s").exists()
    assert read_admin_token(tmp_path / "s", None) is None
    assert read_admin_token(tmp_path / "s", "configured") == "configured"
    assert ensure_admin_token(tmp_path / "s", "") != ""  # empty means unset: one is generated


def test_an_empty_token_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("\n")
    token = ensure_admin_token(tmp_path, None)
    assert token and (tmp_path / "admin.token").read_text().strip() == token
    assert stat.S_IMODE((tmp_path / "admin.token").stat().st_mode) == 0o600


def test_format_status_without_workers() -> None:
    text = format_status({"workers": [], "is_sane": False, "cache_age": None, "last_known_good": None})
    assert text.splitlines()[0] == "no workers connected"
    assert "is_sane:         false (fix, then: try-again)" in text and "cache age:       -" in text


def test_addresses() -> None:
    assert supervisor_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert supervisor_url("::", 80) == "http://[::1]:80"
    assert supervisor_url("example.org", 1) == "http://example.org:1"
    assert dashboard_url("http://127.0.0.1:8080/", "a/b+c") == "http://127.0.0.1:8080/?token=a%2Fb%2Bc"


def test_logs_print_a_workers_log_and_follow_it(tmp_path: Path) -> None:
    import io
    import json
    import os

    from urban_robot.cli import worker_logs

    log_dir = tmp_path / "log"
    log_dir.mkdir()
    (log_dir / "helium-a.log").write_text("old worker line\n")
    (log_dir / "helium-b.log").write_text("new worker line\n")
    os.utime(log_dir / "helium-a.log", (1, 1))
    registry = {
        "child-x-1": {"pid": 1, "log": str(log_dir / "helium-a.log")},
        "child-x-2": {"pid": 2, "log": str(log_dir / "helium-b.log")},
    }
    (tmp_path / "children.json").write_text(json.dumps(registry))
    out, err = io.StringIO(), io.StringIO()
    assert worker_logs(tmp_path, None, out, err=err, log_dir=log_dir) == 0
    assert out.getvalue() == "new worker line\n"  # the newest by default
    out = io.StringIO()
    assert (
        worker_logs(tmp_path, "child-x-1", out, err=err, log_dir=log_dir) == 0 and out.getvalue() == "old worker line\n"
    )
    rounds = iter(range(3))

    def grow_then_stop() -> bool:
        n = next(rounds, None)
        if n is None:
            return True
        with open(log_dir / "helium-a.log", "a") as f:
            f.write(f"line {n}\n")
        return False

    out = io.StringIO()
    assert (
        worker_logs(tmp_path, "child-x-1", out, follow=True, poll=0, stop=grow_then_stop, err=err, log_dir=log_dir) == 0
    )
    assert out.getvalue() == "old worker line\nline 0\nline 1\nline 2\n"
    assert worker_logs(tmp_path, "child-nope", io.StringIO(), err=err, log_dir=log_dir) == 1
    assert "no log for worker 'child-nope'" in err.getvalue()
    assert worker_logs(tmp_path / "elsewhere", None, io.StringIO(), err=err, log_dir=log_dir) == 1


def test_format_status_shows_each_gateway_and_the_last_failures() -> None:
    workers = [
        {"identity": "child-a-1", "role": "running", "gateway": False, "gateway_down_for": 2.04},
        {"identity": "child-a-2", "role": "standby", "gateway": True, "gateway_down_for": None},
        {"identity": "worker:old", "role": "standby", "gateway": None},
    ]
    at = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    failure = {
        "identity": "child-a-3",
        "generation": 3,
        "version": "1.4.0",
        "reason": "the token was refused",
        "hint": "reset it in the developer portal and update BOT_TOKEN",
        "at": at,
    }
    text = format_status({"workers": workers, "is_sane": True, "failures": [failure]})
    lines = text.splitlines()
    assert lines[0].split()[-1] == "GATEWAY"
    assert [line.split()[-1] for line in lines[1:4]] == ["2.0s", "up", "-"]
    assert lines[1].split()[-2:] == ["down", "2.0s"]
    assert lines[-1] == (
        "last failure:    child-a-3 (generation 3, version 1.4.0): the token was refused — "
        "reset it in the developer portal and update BOT_TOKEN, at 2026-01-02 03:04:05"
    )


def test_logs_find_an_exited_worker_by_the_identity_in_its_file_name(tmp_path: Path) -> None:
    import io
    import json

    from urban_robot.cli import worker_logs

    log_dir = tmp_path / "bot" / "log"
    log_dir.mkdir(parents=True)
    (log_dir / "helium-2026-12-06-07-00-00-child-ab12cd-3.log").write_text("Traceback\nKeyError: 'x'\n")
    (log_dir / "helium-2026-12-06-07-00-01-child-ab12cd-4.log").write_text("running\n")
    registry = {"child-ab12cd-4": {"pid": 1, "log": str(log_dir / "helium-2026-12-06-07-00-01-child-ab12cd-4.log")}}
    (tmp_path / "children.json").write_text(json.dumps(registry))
    out, err = io.StringIO(), io.StringIO()
    assert worker_logs(tmp_path, "child-ab12cd-3", out, err=err, log_dir=log_dir) == 0  # exited: not in the registry
    assert out.getvalue() == "Traceback\nKeyError: 'x'\n"
    out = io.StringIO()
    assert worker_logs(tmp_path, None, out, err=err, log_dir=log_dir) == 0
    assert out.getvalue() == "running\n"  # without an identity: the newest running worker's


def test_logs_follow_every_worker_with_prefixes_new_ones_too(tmp_path: Path) -> None:
    """``logs -f``: the running workers' last lines, then every new line of every worker, a deploy's candidate
    (a file that appears later) included, each prefixed by its identity; terminal escapes shown, not obeyed."""
    import io
    import json

    from urban_robot.cli import worker_logs

    log_dir = tmp_path / "log"
    log_dir.mkdir()
    gone = log_dir / "helium-2026-12-06-06-00-00-child-aa-1.log"
    gone.write_text("an old worker's line\n")
    holder = log_dir / "helium-2026-12-06-07-00-00-child-aa-2.log"
    holder.write_text("".join(f"line {n}\n" for n in range(15)))
    (tmp_path / "children.json").write_text(json.dumps({"child-aa-2": {"pid": 1, "log": str(holder)}}))
    candidate = log_dir / "helium-2026-12-06-07-05-00-child-aa-3.log"
    steps = iter(
        [
            lambda: candidate.write_text("\x1b[31mstarting\n"),
            lambda: holder.open("a").write("coma\n"),
            lambda: candidate.open("a").write("processing\n"),
        ]
    )

    def step() -> bool:
        action = next(steps, None)
        if action is None:
            return True
        action()
        return False

    out = io.StringIO()
    assert worker_logs(tmp_path, None, out, follow=True, poll=0, stop=step, log_dir=log_dir) == 0
    lines = out.getvalue().splitlines()
    assert lines[:10] == [f"child-aa-2 | line {n}" for n in range(5, 15)]  # the holder's last ten lines first
    assert lines[10:] == ["child-aa-3 | \\x1b[31mstarting", "child-aa-2 | coma", "child-aa-3 | processing"]
    assert "an old worker" not in out.getvalue()


@pytest.mark.slow
def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    """``logs | head`` (and ``status | head``): the pipe closes before the output is written; exit 0, no traceback."""
    import json
    import os
    import subprocess
    import sys

    log = tmp_path / "bot" / "log" / "helium-2026-12-06-07-00-00-child-aa-1.log"
    log.parent.mkdir(parents=True)
    log.write_text("x" * 200_000 + "\n")  # more than a pipe holds
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "children.json").write_text(json.dumps({"child-aa-1": {"pid": 1, "log": str(log)}}))
    read, write = os.pipe()
    os.close(read)  # `head` has read its lines and gone
    command = [sys.executable, "-m", "urban_robot", "--state-dir", str(tmp_path / "state"), "logs", "child-aa-1"]
    command[3:3] = ["--helium-path", str(tmp_path / "bot")]  # logs prints only files in its log directory
    done = subprocess.run(command, stdout=write, stderr=subprocess.PIPE, env=os.environ | {"BOT_TOKEN": "x"})
    os.close(write)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()


def test_status_says_what_a_start_waits_for_and_deploy_wait_prints_the_outcome() -> None:
    from urban_robot.cli import format_deploy_outcome

    body = {"workers": [], "is_sane": True, "waiting_for": "waiting for a worker to pass its health check"}
    assert "waiting for:     a worker to pass its health check" in format_status(body).splitlines()
    failed = {"commit": "747c50f12ab3" + "0" * 28, "outcome": "failed", "detail": "health check: vital_cog_failed"}
    assert format_deploy_outcome(failed) == "failed 747c50f12ab3: health check: vital_cog_failed"
    assert format_deploy_outcome({"commit": "-", "outcome": "insane", "detail": ""}) == "insane"


# ---- connection flags before or after the subcommand's name ----
@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, dict[str, object]]]:
    """What ``main`` hands to the subcommand (no supervisor needed), run where no configuration is."""
    import urban_robot.__main__ as entry

    calls: list[tuple[str, dict[str, object]]] = []
    monkeypatch.chdir(tmp_path)
    for name in ("URBAN_ROBOT_CONFIG", "URBAN_ROBOT_PORT", "URBAN_ROBOT_HOST", "URBAN_ROBOT_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(entry, "run_subcommand", lambda name, **kw: calls.append((name, kw)) or 0)
    monkeypatch.setattr(entry, "worker_logs", lambda state_dir, worker, out, **kw: calls.append(("logs", kw)) or 0)
    return calls


@pytest.mark.parametrize("name", ["status", "try-again", "deploy", "stop"])
def test_connection_flags_work_after_the_subcommand_too(
    recorded: list[tuple[str, dict[str, object]]], tmp_path: Path, name: str
) -> None:
    from urban_robot.__main__ import main

    flags = ["--host", "127.0.0.2", "--port", "8123", "--state-dir", str(tmp_path / "s")]
    assert main([*flags, name]) == 0
    assert main([name, *flags]) == 0
    before, after = recorded
    assert before == after
    assert before[1]["url"] == "http://127.0.0.2:8123" and before[1]["state_dir"] == tmp_path / "s"


def test_a_connection_flag_after_the_subcommand_wins_over_the_same_flag_before_it(
    recorded: list[tuple[str, dict[str, object]]], tmp_path: Path
) -> None:
    from urban_robot.__main__ import main

    (tmp_path / "other.toml").write_text("port = 8125\n")
    assert main(["--port", "8124", "--state-dir", "first", "status", "--port", "8123", "--state-dir", "second"]) == 0
    assert main(["--port", "8124", "status"]) == 0  # not given after: the one before stands
    assert main(["deploy", "--config", "other.toml", "--wait"]) == 0
    (_, wins), (_, stands), (_, configured) = recorded
    assert (wins["url"], wins["state_dir"]) == ("http://127.0.0.1:8123", tmp_path / "second")
    assert stands["url"] == "http://127.0.0.1:8124"
    assert configured["url"] == "http://127.0.0.1:8125" and configured["wait"] is True


def test_logs_takes_the_state_directory_and_checkout_after_its_name(
    recorded: list[tuple[str, dict[str, object]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urban_robot.__main__ import main

    monkeypatch.setenv("BOT_TOKEN", "MTIz.bot-token-SECRET")
    bot = tmp_path / "bot"
    bot.mkdir()
    assert main(["logs", "--state-dir", str(tmp_path / "s"), "--helium-path", str(bot)]) == 0
    assert main(["--state-dir", str(tmp_path / "s"), "--helium-path", str(bot), "logs"]) == 0
    (_, after), (_, before) = recorded
    assert after == before and after["log_dir"] == bot / "log"


async def test_status_with_the_port_after_its_name_reaches_the_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's own words, ``urban-robot status --port N``, against a real socket."""
    from urban_robot.__main__ import main

    monkeypatch.chdir(tmp_path)

    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        body = b'{"workers": []}'
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(functools.partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
        port = str(listener.socket.getsockname()[1])
        argv = ["status", "--port", port, "--state-dir", str(tmp_path / "s"), "--json"]
        code = await trio.to_thread.run_sync(main, argv)
        nursery.cancel_scope.cancel()
    assert code == 0 and json.loads(capsys.readouterr().out) == {"workers": []}


def test_format_status_of_64_groups_is_a_summary_then_one_aligned_line_each_idle_first() -> None:
    from tests.supervisor._sharded import SnapshotRobot, sharded
    from urban_robot.supervisor._status import StatusTracker, status

    body = status(StatusTracker(SnapshotRobot(sharded(64, idle=(17, 40)))))  # type: ignore[arg-type]
    lines = format_status(body).splitlines()
    assert lines[0] == "64 groups (256 shards): 62 processing, 2 waiting"
    table = lines[1:66]
    assert table[0].split() == ["GROUP", "RUNNING", "EPOCH", "STANDBYS", "WAITING", "FOR"]
    assert [line[3:17].strip() for line in table[1:4]] == ["shards 68-71", "shards 160-163", "shards 0-3"]
    assert table[1].startswith("!  shards 68-71 ") and table[1].endswith("lease (child-17-a epoch 3) to end in 12 s")
    assert table[3].startswith("   shards 0-3 ") and table[3].split()[-4:] == ["child-0-a", "3", "1", "-"]
    column = table[0].index("RUNNING")
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in table)  # aligned
    assert lines[66] == "126 workers connected (--json lists each)"
    assert "is_sane:         true" in lines and not any(line.startswith("waiting for:") for line in lines)


def test_format_status_of_one_group_is_todays_worker_table() -> None:
    from tests.supervisor._sharded import SnapshotRobot, sharded
    from urban_robot.supervisor._status import StatusTracker, status

    one = sharded(1, idle=())
    unsharded = attrs.evolve(one, groups=(), shard_count=None)  # as today's core makes it
    texts = {format_status(status(StatusTracker(SnapshotRobot(s)))) for s in (one, unsharded)}  # type: ignore[arg-type]
    assert len(texts) == 1  # one group is today's output, whatever the core fills in
    [text] = texts
    assert text.splitlines()[0].split()[0] == "WORKER" and "child-0-a" in text and "groups" not in text
