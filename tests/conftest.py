from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=300, deadline=None)
settings.register_profile("chaos", max_examples=20_000, deadline=None)
# The mutation run (scripts/mutation, `just mutate`) runs the tests once per planted bug: few examples, the
# same ones every time (derandomized, no example database carried from one mutant to the next).
settings.register_profile("mutation", max_examples=30, deadline=None, derandomize=True, database=None)
# HYPOTHESIS_PROFILE=chaos (the chaos recipe) runs the fuzz tests with large example counts.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
