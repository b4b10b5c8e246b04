"""Test helpers for bots and for Urban Robot itself: simulated workers (more in later releases)."""

from ._sim import HEALTHY as HEALTHY, SimulatedWorker as SimulatedWorker
