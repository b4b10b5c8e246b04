"""The operator's subcommands against a *running* supervisor, and the admin credential file.

``run_subcommand("status" | "try-again" | "deploy", url=..., token=..., out=...)`` talks to the
supervisor's HTTP API (docs/api.md) with the admin credential and returns an exit code: 0 done,
1 with one line on ``err`` (no traceback) when the supervisor is not running, refuses the
credential, or answers an error.

The admin credential: ``URBAN_ROBOT_ADMIN_TOKEN`` (``[secrets] admin_token``) when configured, else
``<state-dir>/admin.token``, which ``ensure_admin_token`` creates (mode 0600) the first time a
supervisor starts without one and reuses after; ``read_admin_token`` is the subcommands' side. The
token itself is never logged.
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import httpx
import trio

from .logs import escape_controls, printable
from .protocol import ShardError
from .supervisor import NotifyError, RunAsError, StateError, check_private, log_identity, read_private

__all__ = [
    "ADMIN_TOKEN_FILE",
    "SUBCOMMANDS",
    "dashboard_url",
    "ensure_admin_token",
    "explain_error",
    "format_status",
    "read_admin_token",
    "run_command",
    "run_subcommand",
    "supervisor_url",
    "worker_logs",
]

log = logging.getLogger("urban_robot")

ADMIN_TOKEN_FILE = "admin.token"
ADMIN_TOKEN_ENV = "URBAN_ROBOT_ADMIN_TOKEN"
TIMEOUT = 10.0  # seconds; the admin routes answer at once


# ---- the admin credential ----


def _configured(configured: str | None) -> str | None:
    return configured.strip() or None if configured else None


def read_admin_token(state_dir: Path, configured: str | None) -> str | None:
    """The credential a subcommand sends: the configured one, else ``<state-dir>/admin.token``, else None."""
    token = _configured(configured)
    if token is not None:
        return token
    try:
        return read_private(state_dir / ADMIN_TOKEN_FILE).decode("utf-8").strip() or None
    except (OSError, UnicodeDecodeError, StateError):
        return None  # the 401 that follows names the file to check


def ensure_admin_token(state_dir: Path, configured: str | None) -> str:
    """The supervisor's admin credential: the configured one, else ``<state-dir>/admin.token`` (created if absent).

    A new token is ``secrets.token_urlsafe(32)``, written to a 0600 temporary file and linked into
    place, so the file never exists half-written or readable by others, and two processes starting
    at once agree on one token. Raises ``StateError`` (one line, no token in it) if it cannot be done.
    """
    token = _configured(configured)
    if token is not None:
        return token
    path = state_dir / ADMIN_TOKEN_FILE
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create state directory {state_dir}: {exc.strerror}") from exc
    check_private(state_dir)  # a token planted by another user must never be used
    existing = _read_existing(path)
    if existing is not None:
        return existing
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")  # unpredictable, created exclusively
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces a token another process just wrote
        except FileExistsError:
            existing = _read_existing(path)
            if existing is not None:
                return existing  # another process was first: its token
            os.replace(tmp, path)  # an empty file holds no credential: replace it
    except OSError as exc:
        raise StateError(f"cannot write the admin credential {path}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created the admin credential in %s (mode 0600)", path)
    return token


def _read_existing(path: Path) -> str | None:
    try:
        token = read_private(path).decode("utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise StateError(f"cannot read the admin credential {path}: {reason}") from exc
    if not token:
        return None
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users: chmod 600 it", path)
    return token


def explain_error(exc: BaseException, address: str) -> str | None:
    """One line for the errors a user can cause (found inside trio's exception groups), else None."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = explain_error(inner, address)
            if found is not None:
                return found
        return None
    if isinstance(exc, StateError | RunAsError | NotifyError | ShardError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot listen on {address}: {exc.strerror}; pick another --port"
    return None


def run_command(main: Callable[..., Awaitable[object]], *args: Any, address: str) -> int:
    """``trio.run(main, *args)`` as a command's exit code: 0 when it ends (or on Ctrl+C before the signal
    handler is in place), 1 with one line on stderr for an error a user can cause, else the traceback."""
    try:
        trio.run(main, *args)
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        message = explain_error(exc, address)
        if message is None:
            raise
        print(f"urban-robot: {message}", file=sys.stderr)
        return 1
    return 0


# ---- addresses ----


def supervisor_url(host: str, port: int) -> str:
    """Where a local subcommand reaches the supervisor that listens on ``host``:``port``."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def dashboard_url(url: str, token: str) -> str:
    """``url`` with the credential in the query, as Jupyter prints it: for the operator's terminal only."""
    return f"{url.rstrip('/')}/?token={quote(token, safe='')}"


# ---- the subcommands ----


class _Failed(Exception):
    """One line for the operator; the subcommand exits 1."""


def _request(
    method: str, url: str, path: str, token: str | None, state_dir: Path | None, timeout: float | None = TIMEOUT
) -> Any:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with httpx.Client(timeout=timeout) as client:
            response = client.request(method, url + path, headers=headers)
    except httpx.ConnectError:
        raise _Failed(f"no supervisor answers at {url}: is it running? (start it with python -m urban_robot)") from None
    except httpx.TimeoutException:
        raise _Failed(f"the supervisor at {url} did not answer within {TIMEOUT:g}s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _Failed(f"cannot reach the supervisor at {url}: {exc or type(exc).__name__}") from None
    except UnicodeEncodeError:
        raise _Failed("the admin credential has characters an HTTP header cannot carry: check it") from None
    if response.status_code == 401:
        where = str(state_dir / ADMIN_TOKEN_FILE) if state_dir is not None else f"<state-dir>/{ADMIN_TOKEN_FILE}"
        raise _Failed(f"the supervisor refused the admin credential: check {where} or {ADMIN_TOKEN_ENV}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not response.is_success:
        detail = body.get("error") if isinstance(body, dict) else None
        if not isinstance(detail, str):
            detail = " ".join(response.text.split())[:200] or "no details"
        raise _Failed(f"the supervisor answered {response.status_code} to {method} {path}: {detail}")
    if not isinstance(body, dict):
        raise _Failed(f"the supervisor answered {method} {path} with something other than a JSON object")
    return body


def _seconds(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.1f}s"


def _cell(value: Any) -> str:
    return "-" if value is None else printable(str(value))  # a worker's version could hold escape sequences


def _gateway(worker: dict[str, Any]) -> str:
    """A worker's Discord Gateway: ``up``, ``down 3.2s``, or ``-`` when the worker never said."""
    up = worker.get("gateway")
    if up is None:
        return "-"
    if up:
        return "up"
    down_for = worker.get("gateway_down_for")
    return f"down {_seconds(down_for)}" if isinstance(down_for, int | float) else "down"


def _failure(failure: Any) -> str | None:
    """``last failure: child-x (generation 3, version 1.0): what failed — what to do, at 2026-01-02 03:04:05``."""
    if not isinstance(failure, dict):
        return None
    about = ", ".join(f"{name} {failure[name]}" for name in ("generation", "version") if failure.get(name) is not None)
    what = f"{failure.get('reason')}" + (f" — {failure['hint']}" if failure.get("hint") else "")
    at = failure.get("at")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else "?"
    return f"last failure:    {failure.get('identity')}{f' ({about})' if about else ''}: {what}, at {when}"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def _workers(body: dict[str, Any]) -> list[str]:
    header = ("WORKER", "ROLE", "VERSION", "GENERATION", "PID", "HEARTBEAT AGE", "EPOCH", "GATEWAY")
    rows = [
        (
            _cell(w.get("identity")),
            _cell(w.get("role")),
            _cell(w.get("version")),
            _cell(w.get("generation")),
            _cell(w.get("pid")),
            _seconds(w.get("heartbeat_age")),
            _cell(w.get("epoch")),
            _gateway(w),
        )
        for w in body.get("workers") or []
        if isinstance(w, dict)
    ]
    return _table(header, rows) if rows else ["no workers connected"]


def _waiting(what: Any) -> str | None:
    return what.removeprefix("waiting for ") if isinstance(what, str) else None


def _groups(body: dict[str, Any], groups: list[dict[str, Any]]) -> list[str]:
    """One line per shard group, those without a processor first (marked ``!``), after a summary line."""
    idle = [g for g in groups if g.get("running") is None]
    shards = body.get("shard_count")
    summary = f"{len(groups)} groups" + (f" ({shards} shards)" if isinstance(shards, int) else "")
    summary += f": {len(groups) - len(idle)} processing" + (f", {len(idle)} waiting" if idle else "")
    header = ("", "GROUP", "RUNNING", "EPOCH", "STANDBYS", "WAITING FOR")
    ordered = idle + [g for g in groups if g.get("running") is not None]  # each part keeps the groups' order
    rows = [
        (
            "!" if g.get("running") is None else "",
            _cell(g.get("name")),
            _cell(g.get("running")),
            _cell(g.get("epoch")),
            _cell(g.get("standbys")),
            _cell(_waiting(g.get("waiting_for"))),
        )
        for g in ordered
    ]
    workers = [w for w in body.get("workers") or [] if isinstance(w, dict)]
    return [summary, *_table(header, rows), f"{len(workers)} workers connected (--json lists each)"]


def format_status(body: dict[str, Any]) -> str:
    """The human view of ``GET /api/status``: a table of workers (sharded: of shard groups), then the state."""
    groups = [g for g in body.get("groups") or [] if isinstance(g, dict)]
    sharded = body.get("shard_count") is not None and len(groups) > 1
    lines = _groups(body, groups) if sharded else _workers(body)
    lines.append("")
    sane = body.get("is_sane")
    lines.append(f"cache age:       {_seconds(body.get('cache_age'))}")
    lines.append(f"is_sane:         {_cell(sane).lower()}" + ("" if sane is not False else " (fix, then: try-again)"))
    lines.append(f"last_known_good: {_cell(body.get('last_known_good'))}")
    if isinstance(body.get("waiting_for"), str) and not sharded:  # sharded: each group's is in its row
        lines.append(f"waiting for:     {body['waiting_for'].removeprefix('waiting for ')}")
    lines.extend(line for line in map(_failure, body.get("failures") or []) if line)
    if isinstance(body.get("cluster"), dict):
        lines.extend(_cluster(body["cluster"]))
    return "\n".join(lines)


def _cluster(c: dict[str, Any]) -> list[str]:
    """Several hosts: this host, its etcd lease, what it holds, the deployer, the peers (docs/deployment.md)."""
    raw_groups, raw_peers = c.get("groups"), c.get("peers")
    groups: dict[str, Any] = raw_groups if isinstance(raw_groups, dict) else {}
    peers: dict[str, Any] = raw_peers if isinstance(raw_peers, dict) else {}
    held = [name for name, g in groups.items() if isinstance(g, dict) and g.get("held_here")]
    lease = c.get("etcd_lease")
    left = c.get("view_left")
    etcd = f"etcd lease {lease} (grants {_seconds(left)} more)" if lease else "no etcd lease: nothing is granted here"
    deployer = c.get("deployer") or "none elected"
    return [
        f"cluster:         {_cell(c.get('name'))}, this host {_cell(c.get('host'))}; {etcd}",
        f"held here:       {', '.join(held) or 'no group'}",
        f"deployer:        {deployer}" + (" (this host)" if c.get("elected") else ""),
        f"other hosts:     {', '.join(sorted(peers)) or 'none seen'}",
    ]


def _acknowledged(what: str) -> Callable[[dict[str, Any]], str]:
    return lambda body: what


SUBCOMMANDS: dict[str, tuple[str, str, Callable[[dict[str, Any]], str]]] = {
    "status": ("GET", "/api/status", format_status),
    "try-again": (
        "POST",
        "/api/try-again",
        _acknowledged("try again requested: known-bad commits forgotten, is_sane set, deploy requested"),
    ),
    "deploy": ("POST", "/api/deploy", _acknowledged("deploy requested")),
    "stop": ("POST", "/api/stop", _acknowledged("stop requested: the supervisor stops its workers and exits")),
}


DEPLOY_SUCCESSES = frozenset({"deployed", "up to date"})


def format_deploy_outcome(body: dict[str, Any]) -> str:
    """``deploy --wait``'s line: ``deployed 747c50f12ab3`` or ``failed 747c50f12ab3: <why>``."""
    commit = str(body.get("commit") or "-")
    what = str(body.get("outcome") or "?") + ("" if commit == "-" else f" {commit[:12]}")
    return what + (f": {body['detail']}" if body.get("detail") else "")


def run_subcommand(
    name: str,
    *,
    url: str,
    token: str | None,
    out: TextIO,
    json: bool = False,
    err: TextIO | None = None,
    state_dir: Path | None = None,
    wait: bool = False,
) -> int:
    """Run subcommand ``name`` against the supervisor at ``url``; the exit code (0 done, 1 failed).

    ``json``: print the supervisor's answer as it came. ``err`` (default stderr) gets the one-line
    error; ``state_dir`` names the credential file in it. ``wait`` (``deploy --wait``): wait for the
    deploy to end, print its outcome, and exit 1 unless it deployed (or there was nothing to deploy).
    """
    err = sys.stderr if err is None else err
    if name not in SUBCOMMANDS:
        print(f"urban-robot: unknown subcommand {name!r} (one of {', '.join(SUBCOMMANDS)})", file=err)
        return 2
    method, path, render = SUBCOMMANDS[name]
    waiting = wait and name == "deploy"
    if waiting:
        path, render = path + "?wait=1", format_deploy_outcome
    try:
        body = _request(method, url.rstrip("/"), path, token, state_dir, timeout=None if waiting else TIMEOUT)
    except _Failed as exc:
        print(f"urban-robot: {exc}", file=err)
        return 1
    print(jsonlib.dumps(body, indent=2) if json else render(body), file=out, flush=True)
    return 0 if not waiting or body.get("outcome") in DEPLOY_SUCCESSES else 1


def _logs_on_disk(log_dir: Path | None) -> dict[str, Path]:
    """identity -> its newest log file in ``log_dir`` (files are named by identity: ``helium-<stamp>-<id>.log``)."""
    found: dict[str, Path] = {}
    if log_dir is None or not log_dir.is_dir():
        return found
    for path in sorted(log_dir.glob("helium-*.log"), key=lambda p: p.stat().st_mtime):
        identity = log_identity(path)
        if identity is not None:
            found[identity] = path
    return found


def worker_logs(
    state_dir: Path,
    identity: str | None,
    out: TextIO,
    *,
    follow: bool = False,
    err: TextIO | None = None,
    poll: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
    log_dir: Path | None = None,
) -> int:
    """Print a worker's log (the newest running worker's without ``identity``); ``follow`` keeps printing.

    Read from the machine the supervisor runs on: the children registry in the state directory names each
    running worker's log file, and ``log_dir`` (``<helium_path>/log``) holds every worker's, named by its
    identity, so an exited worker's log is found too. ``follow`` without ``identity`` follows every worker,
    each line prefixed with its identity (as ``pm2 logs`` does): the new ones too as they start, so it
    keeps showing the running worker across hand-overs, and a failing candidate's last words.

    Only files directly in ``log_dir`` (links resolved) named ``helium-*.log`` are printed: a registry
    naming ``/etc/shadow`` prints nothing (one line says the entry is ignored).
    """
    err = err or sys.stderr
    try:
        registry = jsonlib.loads(read_private(state_dir / "children.json"))
    except (OSError, ValueError, StateError):
        registry = None
    running: dict[str, Path] = {}
    for name, info in registry.items() if isinstance(registry, dict) else ():
        recorded = info.get("log") if isinstance(info, dict) else None
        path = _worker_log(recorded, log_dir) if isinstance(recorded, str) else None
        if path is not None:
            running[name] = path
        elif recorded:
            print(f"urban-robot: ignoring the log recorded for {printable(name)[:80]}: not in {log_dir}", file=err)
    logs = _logs_on_disk(log_dir) | running
    if registry is None and not logs:
        print(
            f"urban-robot: no workers recorded in {state_dir}: is a supervisor running with this --state-dir?", file=err
        )
        return 1
    if identity is None and follow:
        return _follow_all(log_dir, running, out, poll=poll, stop=stop)
    if identity is None and logs:
        pool = running or logs
        identity = max(pool, key=lambda name: pool[name].stat().st_mtime if pool[name].exists() else 0)
    if identity not in logs:
        known = ", ".join(sorted(running)) or "none"
        print(f"urban-robot: no log for worker {identity!r} (running workers: {known})", file=err)
        return 1
    with open(logs[identity], errors="replace", opener=_no_follow) as file:
        out.write(escape_controls_keeping_lines(file.read()))
        out.flush()
        while follow and not stop():
            time.sleep(poll)
            out.write(escape_controls_keeping_lines(file.read()))
            out.flush()
    return 0


def _worker_log(recorded: str, log_dir: Path | None) -> Path | None:
    """``recorded`` resolved, if it is a worker's log file directly in ``log_dir``; else None (never outside it)."""
    if log_dir is None:
        return None
    try:
        path, home = Path(recorded).resolve(strict=True), log_dir.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    named = path.name.startswith("helium-") and path.name.endswith(".log")
    return path if path.parent == home and named and path.is_file() else None


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def escape_controls_keeping_lines(text: str) -> str:
    """A worker's output for the operator's terminal: control characters escaped, line breaks kept."""
    return "".join(escape_controls(line) + "\n" for line in text.split("\n"))[:-1]


FOLLOW_BACKLOG = 10  # lines of each running worker's log shown before following


def _follow_all(
    log_dir: Path | None, running: dict[str, Path], out: TextIO, *, poll: float, stop: Callable[[], bool]
) -> int:
    """Every worker's new lines as ``identity | line``: the running ones' last lines first, then each new line,
    of workers that start later too (a deploy's candidate, a replacement)."""
    files: dict[Path, tuple[str, Any, str]] = {}  # path -> (identity, open file, partial line)

    def add(path: Path, name: str) -> Any:
        try:
            file = open(path, errors="replace", opener=_no_follow)
        except OSError:
            return None
        files[path] = (name, file, "")
        return file

    def write(name: str, lines: list[str]) -> None:
        out.write("".join(f"{name} | {escape_controls(line)}\n" for line in lines))

    old = set(_logs_on_disk(log_dir).values())  # workers gone before we started: not followed
    try:
        for name, path in running.items():
            file = add(path, name)
            if file is not None:
                write(name, file.read().splitlines()[-FOLLOW_BACKLOG:])
        out.flush()
        while not stop():
            time.sleep(poll)
            for name, path in _logs_on_disk(log_dir).items():
                if path not in files and path not in old:
                    add(path, name)  # a new worker: all of it
            for path, (name, file, partial) in list(files.items()):
                *lines, partial = (partial + file.read()).split("\n")
                write(name, lines)
                files[path] = (name, file, partial)
            out.flush()
    finally:
        for _, file, _ in files.values():
            file.close()
    return 0
