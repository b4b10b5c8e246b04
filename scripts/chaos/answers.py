"""P1 judged by what the fake Discord saw (``run.py --discord-py``): who answered, and when.

- **Twice**: an item (message, slash command, button, select, member join) answered by two processes, or
  once plus a refused second response (40060): two processes ran its handler (``urban_robot.testing.traffic``).
- **Switches**: the answers (and ``tasks.loop`` posts) in time order, each tagged with the process that
  made it. Every change from one process to another must come with a lease hand-over: an epoch change
  seen in the supervisor's state.json between the last answer of the one and the first of the other,
  give or take ``SLACK`` (state.json is sampled every 0.2 s). A switch with none is two processes
  answering within one lease: a P1 violation, as is any twice.
- **No processor**: the gaps of the traffic (runs of unanswered items between answered ones), in seconds.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs

from urban_robot.testing.traffic import Item, Profile, Verdict, answers, classify

SLACK = 0.5
JSON = dict[str, Any]


@attrs.frozen
class AnswerVerdict:
    traffic: Verdict
    switches: int
    unexplained_switches: list[str]

    @property
    def violations(self) -> list[str]:
        found = []
        if self.traffic.doubles:
            found.append(f"P1: {len(self.traffic.doubles)} items answered twice, e.g. {self.traffic.doubles[0]}")
        if self.unexplained_switches:
            found.append(
                f"P1: {len(self.unexplained_switches)} changes of answering process without a lease hand-over,"
                f" e.g. {self.unexplained_switches[0]}"
            )
        return found


def judge(items: list[Item], records: JSON, profile: Profile, epochs: list[tuple[float, int]]) -> AnswerVerdict:
    """``epochs``: (wall-clock time, epoch) samples of state.json, in time order."""
    verdict = classify(items, records, profile)
    made = [(a.at, a.client) for found in answers(items, records, profile).values() for a in found]
    if profile.loop:
        made += [(p["at"], p["client"]) for p in records["posted"] if p["content"].startswith(profile.loop)]
    made.sort()
    changes = [at for (at, epoch), (_, before) in zip(epochs[1:], epochs, strict=False) if epoch != before]
    switches, unexplained = 0, []
    for (t1, c1), (t2, c2) in itertools.pairwise(made):
        if c1 == c2:
            continue
        switches += 1
        if not any(t1 - SLACK <= at <= t2 + SLACK for at in changes):
            unexplained.append(f"{c1} answered at {t1:.3f}, then {c2} at {t2:.3f}, no epoch change between")
    return AnswerVerdict(verdict, switches, unexplained)
