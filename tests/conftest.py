from __future__ import annotations

from hypothesis import settings

settings.register_profile("ci", max_examples=300, deadline=None)
settings.register_profile("chaos", max_examples=20_000, deadline=None)
settings.load_profile("ci")
