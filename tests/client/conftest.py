from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ._harness import Harness


@pytest.fixture
async def harness(nursery: trio.Nursery, tmp_path: Path) -> Harness:
    h = Harness(nursery, tmp_path / "state")
    await h.start()
    return h
