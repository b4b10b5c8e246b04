"""The justfile passes its overrides on: ``just python=… <recipe>`` runs every command with that python.

A recipe that ran a nested ``{{just_executable()}} <recipe>`` started a fresh ``just`` with the defaults, so
``just python=… chaos`` ran its fuzz step with ``.venv/bin/python``. ``just --dry-run`` prints each command as
it would run, without running it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JUST = shutil.which("just", path=str(Path(sys.executable).parent)) or shutil.which("just")
OVERRIDE = "/nowhere/override/python"

pytestmark = pytest.mark.skipif(JUST is None, reason="just is not installed (the dev extra's rust-just)")


def just(*args: str) -> subprocess.CompletedProcess[str]:
    assert JUST is not None
    return subprocess.run([JUST, "--justfile", str(ROOT / "justfile"), *args], capture_output=True, text=True)


def recipes() -> list[str]:
    return just("--summary").stdout.split()


def test_the_justfile_has_recipes() -> None:
    assert {"chaos", "fuzz", "test", "check", "bench"} <= set(recipes())


@pytest.mark.parametrize("recipe", recipes() if JUST is not None else [])
def test_every_recipe_runs_with_the_overridden_python_all_the_way_down(recipe: str) -> None:
    done = just("--dry-run", f"python={OVERRIDE}", recipe)
    assert done.returncode == 0, done.stderr
    commands = done.stderr
    assert ".venv/bin/python" not in commands, f"{recipe} runs a command without the override:\n{commands}"
    assert f"{Path(JUST or '').name} " not in commands.replace(OVERRIDE, ""), f"{recipe} runs a nested just"


def test_chaos_runs_its_fuzz_step_with_the_override() -> None:
    lines = just("--dry-run", f"python={OVERRIDE}", "chaos", "5").stderr.splitlines()
    assert lines[0] == f"{OVERRIDE} scripts/chaos/run.py --seconds 5 "
    assert lines[1].startswith(f"HYPOTHESIS_PROFILE=chaos {OVERRIDE} -m pytest")
