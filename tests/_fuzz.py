"""Example counts of the fuzz tests: modest in CI, ``URBAN_ROBOT_FUZZ_SCALE`` (20) times more under chaos.

``HYPOTHESIS_PROFILE=chaos`` (the ``just chaos`` recipe) scales every fuzz test of the codecs and of the
HTTP/WebSocket edge at once, so the long run searches the same ground as CI, only much further.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import settings

CHAOS = os.environ.get("HYPOTHESIS_PROFILE") == "chaos"
SCALE = int(os.environ.get("URBAN_ROBOT_FUZZ_SCALE", "20")) if CHAOS else 1


def examples(ci: int, **kwargs: Any) -> settings:
    """Hypothesis settings for a fuzz test that runs ``ci`` examples in CI."""
    return settings(max_examples=ci * SCALE, deadline=None, **kwargs)
