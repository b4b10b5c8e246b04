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
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs pytest")
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

    def __init__(self, python: str, tests: list[str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="urban-robot-mutation-"))
        shutil.copytree(ROOT, self.dir, ignore=IGNORED, dirs_exist_ok=True, symlinks=True)
        self.python = python
        self.tests = tests
        self.env = os.environ | {
            "PYTHONPATH": str(self.dir),
            # A mutant of the same size written within the same second would otherwise reuse stale bytecode.
            "PYTHONDONTWRITEBYTECODE": "1",
            "HYPOTHESIS_PROFILE": "mutation",
        }

    def check_imports_copy(self, module: str) -> None:
        name = module.removesuffix(".py").replace("/", ".")
        code = f"import {name} as m; print(m.__file__)"
        out = subprocess.run([self.python, "-c", code], cwd=self.dir, env=self.env, capture_output=True, text=True)
        where = Path(out.stdout.strip()).resolve()
        if where != (self.dir / module).resolve():
            raise SystemExit(f"the sandbox imports {name} from {where or out.stderr}, not from its copy: giving up")

    def pytest(self, timeout: float) -> tuple[str, float, str]:
        """("passed" | "failed" | "timeout", seconds, the output's tail)."""
        command = [self.python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *self.tests]
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
        tail = output.decode(errors="replace").strip().splitlines()[-1:]
        return ("passed" if proc.returncode == 0 else "failed"), time.monotonic() - started, "".join(tail)

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
    sandbox = Sandbox(args.python, args.tests)
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
