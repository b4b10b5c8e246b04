"""docs/testing.md's complete example is run as it is written, so the document stays true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "testing.md"


@pytest.mark.slow
def test_the_documented_example_passes(tmp_path: Path) -> None:
    code = re.search(r"```python\n# tests/test_supervised.py\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None, "docs/testing.md lost its example"
    (tmp_path / "test_supervised.py").write_text(code.group(1))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "trio_mode=true", "test_supervised.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
