from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=300, deadline=None)
settings.register_profile("chaos", max_examples=20_000, deadline=None)
# HYPOTHESIS_PROFILE=chaos (the chaos recipe) runs the fuzz tests with large example counts.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
