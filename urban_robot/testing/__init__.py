"""Test helpers for bots and for Urban Robot itself: simulated workers (more in later releases)."""

from ._sim import HEALTHY as HEALTHY
from ._sim import SimulatedWorker as SimulatedWorker
