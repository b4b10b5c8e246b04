"""The mutation tool (scripts/mutation): which bugs it plants, and that a run leaves the tree alone."""

from __future__ import annotations

import ast
import difflib
import json
import subprocess
import sys
from pathlib import Path

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
