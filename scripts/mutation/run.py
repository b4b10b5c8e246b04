"""Mutation testing: plant plausible bugs one at a time and see whether the chosen tests notice.

    python scripts/mutation/run.py MODULE [MODULE ...] [options] --tests TEST_FILE [TEST_FILE ...]
    python scripts/mutation/run.py MODULE [MODULE ...] [options] -- PYTEST_ARGS  (e.g. -- tests/x.py -k name)
    just mutate urban_robot/supervisor/_store.py --tests tests/supervisor/test_store.py

The working tree is never touched: the repository's files are copied to a temporary directory, each
mutant is written there, and the tests run there (``PYTHONPATH`` puts the copy first; the runner
checks that the copy is what gets imported). Mutants run one after another, each under a time limit;
a mutant that makes the tests fail, crash or time out is *killed*, one that passes them *survived*.
The tests run with ``HYPOTHESIS_PROFILE=mutation`` (few, derandomized examples; tests/conftest.py).

Every survivor is printed with its diff. The last line is one JSON object: per module
``{"module", "mutants", "killed", "survived", "timeout"}`` (timeouts count as killed), and with
several modules a total (``"module": "all"``) whose ``"modules"`` lists each one.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import Mutant, mutants

ROOT = Path(__file__).resolve().parents[2]
# Imported once by the runner, then shared by every forked test run: most of pytest's start-up time.
# Never the project's own packages: each run must import the mutated module afresh.
PRELOAD = (
    "pytest",
    "_pytest.python",
    "trio",
    "trio.testing",
    "pytest_trio",
    "hypothesis",
    "hypothesis.stateful",
    "attrs",
    "httpx",
    "h11",
    "wsproto",
    "trio_websocket",
    "packaging.version",
    "socketio",
    "engineio",
    "aiohttp",
    "prometheus_client",
)
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "__pycache__", ".hypothesis", ".pytest_cache", ".mypy_cache", ".ruff_cache"
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Options before ``--``; after it, pytest's own arguments (``-- tests/x.py -k name``)."""
    argv = list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="+", help="source files to mutate, relative to the repository")
    parser.add_argument("--tests", nargs="+", default=[], help="test files pytest runs for each mutant")
    parser.add_argument("--only", default="", help="mutant numbers to run, e.g. 3,17,40-45 (one module)")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per mutant (default: 5 x the clean run)")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--quiet", action="store_true", help="no diffs for survivors")
    parser.add_argument("--json-out", type=Path, help="write every mutant's outcome (and diff) to this file")
    parser.add_argument(
        "--no-fork",
        action="store_true",
        help="start a new interpreter per mutant instead of forking one that imported the libraries already",
    )
    args = parser.parse_args(argv)
    args.tests = [*args.tests, *extra]
    return args


def numbers(spec: str) -> set[int] | None:
    if not spec:
        return None
    chosen: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        chosen.update(range(int(low), int(high or low) + 1))
    return chosen


def diff(path: str, before: str, after: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{path}", f"b/{path}", n=1
    )
    return "".join(lines)


class Sandbox:
    """A copy of the repository where mutants are written and tests run."""

    def __init__(self, tests: list[str], *, fork: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="urban-robot-mutation-"))
        shutil.copytree(ROOT, self.dir, ignore=IGNORED, dirs_exist_ok=True, symlinks=True)
        self.tests = tests
        self.fork = fork
        self.extra = {
            "PYTHONPATH": str(self.dir),
            # A mutant of the same size written within the same second would otherwise reuse stale bytecode.
            "PYTHONDONTWRITEBYTECODE": "1",
            "HYPOTHESIS_PROFILE": "mutation",
        }
        self.env = os.environ | self.extra
        if fork:
            for name in PRELOAD:
                try:
                    importlib.import_module(name)
                except ImportError:
                    pass  # not installed here: the forked run imports what it needs

    def check_imports_copy(self, module: str) -> None:
        name = module.removesuffix(".py").replace("/", ".")
        code = f"import {name} as m; print(m.__file__)"
        if self.fork:
            out = self._forked(lambda: exec(code, {}) or 0, timeout=60)[2]
        else:
            run = subprocess.run([sys.executable, "-c", code], cwd=self.dir, env=self.env, capture_output=True)
            out = run.stdout.decode() + run.stderr.decode()
        where = Path(out.strip().splitlines()[-1] if out.strip() else "?").resolve()
        if where != (self.dir / module).resolve():
            raise SystemExit(f"the sandbox imports {name} from {where} ({out[-300:]}), not from its copy: giving up")

    def pytest(self, timeout: float) -> tuple[str, float, str]:
        """("passed" | "failed" | "timeout", seconds, the output's tail)."""
        args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *self.tests]
        if self.fork:
            import pytest

            outcome, seconds, text = self._forked(lambda: int(pytest.main(args)), timeout)
            return outcome, seconds, "".join(text.strip().splitlines()[-1:])
        command = [sys.executable, "-m", "pytest", *args]
        started = time.monotonic()
        pipe = subprocess.PIPE
        proc = subprocess.Popen(
            command, cwd=self.dir, env=self.env, stdout=pipe, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.monotonic() - started, ""
        finally:
            if proc.poll() is None:  # timed out, or we are being stopped: the whole session goes
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        if proc.returncode == -signal.SIGTERM:  # stopped from outside, as in _forked
            raise SystemExit("a test run was stopped (SIGTERM): the mutation run stops too")
        tail = output.decode(errors="replace").strip().splitlines()[-1:]
        return ("passed" if proc.returncode == 0 else "failed"), time.monotonic() - started, "".join(tail)

    def _forked(self, run: Any, timeout: float) -> tuple[str, float, str]:
        """``run()`` in a forked child inside the sandbox: its exit code decides, its output is kept."""
        output = self.dir / ".mutation-output"
        sys.stdout.flush()
        sys.stderr.flush()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 99
            try:
                # A stop meant for the run: the runner's handler would only fail the running test (the mutant
                # then counted as killed, the run going on), so the child dies of it and the runner stops.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.setsid()  # its own process group, so that a time-out takes whatever it started too
                fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.chdir(self.dir)
                os.environ.update(self.extra)
                sys.path.insert(0, str(self.dir))
                sys.dont_write_bytecode = True
                code = run()
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        status: int | None = None
        try:
            deadline = started + timeout
            while status is None and time.monotonic() < deadline:
                done, code = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = code
                else:
                    time.sleep(0.02)
        finally:
            if status is None:  # timed out, or we are being stopped: the whole group goes
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        seconds = time.monotonic() - started
        text = output.read_text(errors="replace") if output.exists() else ""
        if status is None:
            return "timeout", seconds, text
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM:
            # Stopped from outside (a forked run has the runner's command line, so `kill PID` often finds it
            # first): no verdict on the mutant, and the whole run stops.
            raise SystemExit("a test run was stopped (SIGTERM): the mutation run stops too")
        return ("passed" if os.waitstatus_to_exitcode(status) == 0 else "failed"), seconds, text

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def run_module(sandbox: Sandbox, module: str, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    target = sandbox.dir / module
    original = target.read_text()
    chosen = numbers(args.only)
    planted = [m for m in mutants(original) if chosen is None or m.number in chosen]
    counts = {"module": module, "mutants": len(planted), "killed": 0, "survived": 0, "timeout": 0}
    outcomes: list[dict[str, Any]] = []
    try:
        for mutant in planted:
            target.write_text(mutant.source)
            outcome, seconds, tail = sandbox.pytest(timeout)
            outcomes.append(report(module, mutant, original, outcome, seconds, tail, args.quiet))
            counts["survived" if outcome == "passed" else "killed"] += 1
            counts["timeout"] += outcome == "timeout"
    finally:
        target.write_text(original)
    counts["outcomes"] = outcomes
    return counts


def report(
    module: str, mutant: Mutant, original: str, outcome: str, seconds: float, tail: str, quiet: bool
) -> dict[str, Any]:
    verdict = {"passed": "SURVIVED", "failed": "killed", "timeout": "killed (timeout)"}[outcome]
    print(
        f"#{mutant.number:<4} {module}:{mutant.line:<4} {mutant.kind:<10} {verdict:<16} {seconds:5.1f}s  "
        f"{mutant.description}",
        flush=True,
    )
    patch = diff(module, original, mutant.source)
    if outcome == "passed" and not quiet:
        print(patch, flush=True)
    return {
        "number": mutant.number,
        "line": mutant.line,
        "kind": mutant.kind,
        "description": mutant.description,
        "outcome": "survived" if outcome == "passed" else "killed",
        "timeout": outcome == "timeout",
        "seconds": round(seconds, 2),
        "failure": tail,
        "diff": patch,
    }


def untouched(before: dict[str, bytes]) -> None:
    """The working tree must be as it was: the sandbox is a copy, but check rather than trust."""
    changed = [module for module, data in before.items() if (ROOT / module).read_bytes() != data]
    if changed:
        raise SystemExit(f"the working tree's {', '.join(changed)} changed during the run: this is a bug of the tool")


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    for module in args.modules:
        if not (ROOT / module).is_file():
            raise SystemExit(f"no such module: {module}")
    if args.list:
        for module in args.modules:
            for m in mutants((ROOT / module).read_text()):
                print(f"#{m.number:<4} {module}:{m.line:<4} {m.kind:<10} {m.description}")
        return 0
    if not args.tests:
        raise SystemExit("which tests should catch the mutants? --tests FILE ..., or -- PYTEST_ARGS")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still remove the sandbox (finally)
    before = {module: (ROOT / module).read_bytes() for module in args.modules}
    sandbox = Sandbox(args.tests, fork=not args.no_fork)
    try:
        for module in args.modules:
            sandbox.check_imports_copy(module)
        outcome, seconds, tail = sandbox.pytest(timeout=3600)
        if outcome != "passed":
            raise SystemExit(f"the tests fail without any mutant ({tail}): fix them first")
        timeout = args.timeout or max(10.0, 5 * seconds)
        print(f"clean run: {seconds:.1f}s; time limit per mutant {timeout:.0f}s", flush=True)
        results = [run_module(sandbox, module, args, timeout) for module in args.modules]
    finally:
        sandbox.remove()
        untouched(before)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    summaries = [{k: v for k, v in r.items() if k != "outcomes"} for r in results]
    for summary in summaries:
        print(json.dumps(summary))
    if len(summaries) > 1:
        total = {k: sum(s[k] for s in summaries) for k in ("mutants", "killed", "survived", "timeout")}
        print(json.dumps({"module": "all", **total, "modules": summaries}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
