"""The mutation tool (scripts/mutation): which bugs it plants, and that a run leaves the tree alone."""

from __future__ import annotations

import ast
import difflib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "mutation"))

from mutants import mutants  # noqa: E402

SAMPLE = '''"""A docstring is never mutated."""
import logging

log = logging.getLogger("x")
TABLE = {"a": A, "b": B}


def decide(lease, now, out):
    """Nor is this one."""
    log.info("expired at %s", now + 1)
    if lease.expires <= now and not lease.stopping:
        out.append(Persist(lease.epoch + 1))
        lease.confirmed = True
        return max(lease.expires, now)
    return None
'''


def changed_lines(after: str) -> list[str]:
    diff = difflib.unified_diff(SAMPLE.splitlines(), after.splitlines(), n=0, lineterm="")
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def test_every_mutant_compiles_differs_and_changes_one_place() -> None:
    found = mutants(SAMPLE)
    assert len(found) > 15
    sources = {m.source for m in found}
    assert len(sources) == len(found) and SAMPLE not in sources
    for m in found:
        ast.parse(m.source)
        removed = [line for line in changed_lines(m.source) if line.startswith("-")]
        assert len(removed) == 1, m  # one line of the original touched
        assert SAMPLE.splitlines()[m.line - 1][1:].strip() in removed[0] or m.kind == "dict_drop", m


def test_the_plausible_bugs_are_there() -> None:
    found = {(m.kind, m.description) for m in mutants(SAMPLE)}
    for expected in [
        ("compare", "<= -> <"),
        ("boolop", "and -> or"),
        ("not", "drop 'not'"),
        ("binop", "+ -> -"),
        ("constant", "True -> False"),
        ("condition", "negate the condition"),
        ("drop", "drop the statement 'out.append(Persist(lease.epoch + 1))'"),
        ("drop", "drop the statement 'lease.confirmed = True'"),
        ("return", "return None instead"),
        ("minmax", "max -> min"),
        ("swap_args", "swap the first two arguments"),
        ("dict_drop", "drop the entry 'a'"),
        ("dict_value", "'a': A -> B"),
    ]:
        assert expected in found


def test_texts_docstrings_and_log_calls_are_left_alone() -> None:
    for m in mutants(SAMPLE):
        changed = "".join(changed_lines(m.source))
        assert "docstring" not in changed and "Nor is this" not in changed
        assert "log.info" not in changed and "getLogger" not in changed


def test_the_same_source_gives_the_same_mutants() -> None:
    source = (ROOT / "urban_robot" / "supervisor" / "_core.py").read_text()
    first, second = mutants(source), mutants(source)
    assert first == second
    assert [m.number for m in first] == list(range(1, len(first) + 1))
    assert [m.line for m in first] == sorted(m.line for m in first)


@pytest.mark.slow
def test_a_run_reports_killed_and_survived_and_leaves_the_tree_alone(tmp_path: Path) -> None:
    module = ROOT / "urban_robot" / "supervisor" / "_roles.py"
    before = module.read_bytes()
    lines = before.decode().splitlines()
    # One that the role table's tests kill, and one they cannot: the fallback name is the same word.
    [same_word] = [
        m.number
        for m in mutants(before.decode())
        if m.description == "drop the entry T.READY" and lines[m.line - 1].startswith("WIRE_NAMES")
    ]
    script, target = "scripts/mutation/run.py", "urban_robot/supervisor/_roles.py"
    command = [sys.executable, script, target, "--only", f"1,{same_word}"]
    pytest_args = ["tests/supervisor/test_roles.py", "-k", "documented"]
    out = subprocess.run(
        [*command, "--json-out", str(tmp_path / "r.json"), "--", *pytest_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {"module": "urban_robot/supervisor/_roles.py", "mutants": 2, "killed": 1, "survived": 1, "timeout": 0}
    assert last == expected
    assert "\n-WIRE_NAMES = {" in out.stdout and "\n+WIRE_NAMES = {" in out.stdout  # the survivor's diff
    [report] = json.loads((tmp_path / "r.json").read_text())
    assert [o["outcome"] for o in report["outcomes"]] == ["killed", "survived"]
    assert module.read_bytes() == before


BLOCKING_TEST = """
import os
from pathlib import Path

HERE = Path(__file__).parent


def test_passes_clean_then_waits_for_a_stop():
    runs = HERE / "runs"
    runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
    if runs.read_text() == "x":
        return  # the clean run
    with open(HERE / "pid", "w") as fifo:  # a FIFO: the test reads it, so no waiting by time
        fifo.write(f"{os.getpid()} {os.getcwd()}")
    os.read(os.open(HERE / "never", os.O_RDONLY), 1)  # nobody writes: only a signal ends this
"""


@pytest.mark.slow
def test_a_sigterm_to_the_running_tests_stops_the_run(tmp_path: Path) -> None:
    # The forked test run has the runner's command line, so `kill PID` may find it instead of the runner:
    # it used to fail the test in progress (the mutant counted as killed) and the run went on.
    (tmp_path / "test_block.py").write_text(BLOCKING_TEST)
    os.mkfifo(tmp_path / "pid")
    os.mkfifo(tmp_path / "never")
    command = [sys.executable, "scripts/mutation/run.py", "urban_robot/supervisor/_roles.py", "--only", "1,2"]
    proc = subprocess.Popen(
        [*command, "--", str(tmp_path / "test_block.py")], cwd=ROOT, stdout=PIPE, stderr=PIPE, text=True
    )
    try:
        with open(tmp_path / "pid") as fifo:
            pid, sandbox = fifo.read().split(" ", 1)
        os.kill(int(pid), signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "stopped (SIGTERM)" in err
    assert "#1" not in out  # no verdict on the mutant whose run was stopped
    assert (tmp_path / "runs").read_text() == "xx"  # and no further mutant
    assert not Path(sandbox).exists()
