"""Each shard group's last hour, for the dashboard's timeline: who processed when, the gaps, the deploys (sans-IO).

``GroupHistory`` is told, with the time passed in (wall-clock Unix time, as the status timeline's), when a
worker starts processing a group (``began``: its role became ``running``), when it stops (``ended``: it
left ``running``/``stopping``), and what deploys and rollbacks happened (``mark``: one group's, or every
group's with ``group=None``). ``view(now)`` gives, per group, the spans of the last ``window`` seconds,
the gaps between them (time when nobody processed it, computed here so every reader draws the same), and
the marks; ``without_processor(group, now)`` the seconds that group had no processor since ``created``.

Bounded: at most ``spans`` spans and ``marks`` marks per group, ``marks`` shared marks, each text cut to
``TEXT``. A span pushed out by the cap moves the group's ``known_from`` to its end: before that nothing is
known, which the views show as unknown, not as a gap. Measured (tests/supervisor/test_history.py): 64 groups
filled to the caps take under ``MEMORY_BOUND`` bytes.
"""

from __future__ import annotations

import collections
from typing import Any

import attrs

WINDOW = 3600.0  # seconds of history kept and shown
SPANS = 120  # per group: a hand-over every 30 s for an hour
MARKS = 40  # per group, and shared (deploys, rollbacks)
TEXT = 160  # characters of a mark's text
MEMORY_BOUND = 4 * 1024 * 1024  # what 64 full groups may take (measured: 2.6 MiB with a new identity per bar)


@attrs.define(slots=True, eq=False)
class Span:
    """One worker processing one group from ``start`` to ``end`` (None: still processing)."""

    sid: str
    worker: str
    epoch: int | None
    version: str | None
    generation: int | None
    start: float
    end: float | None = None


@attrs.frozen
class Mark:
    at: float
    kind: str  # "deploy" or "rollback"
    level: str  # "info", "warning", "critical"
    text: str


@attrs.define(eq=False)
class _Group:
    known_from: float
    spans: collections.deque[Span] = attrs.field(factory=lambda: collections.deque(maxlen=SPANS))
    marks: collections.deque[Mark] = attrs.field(factory=lambda: collections.deque(maxlen=MARKS))
    idle_total: float = 0.0  # seconds without a processor, until idle_since
    idle_since: float | None = None  # None: someone processes it now


class GroupHistory:
    def __init__(self, created: float, *, window: float = WINDOW) -> None:
        self.created = created
        self.window = window
        self._groups: dict[int, _Group] = {}
        self.shared: collections.deque[Mark] = collections.deque(maxlen=MARKS)

    def _group(self, index: int) -> _Group:
        group = self._groups.get(index)
        if group is None:
            group = self._groups[index] = _Group(self.created, idle_since=self.created)
        return group

    def began(
        self,
        group: int,
        sid: str,
        worker: str,
        at: float,
        *,
        epoch: int | None = None,
        version: str | None = None,
        generation: int | None = None,
    ) -> None:
        """``worker`` (connection ``sid``) processes ``group`` from ``at``."""
        g = self._group(group)
        if len(g.spans) == g.spans.maxlen:  # the oldest goes: nothing before its end is known any more
            dropped = g.spans[0]
            g.known_from = max(g.known_from, dropped.end if dropped.end is not None else dropped.start)
        g.spans.append(Span(sid, worker, epoch, version, generation, at))
        if g.idle_since is not None:
            g.idle_total += max(0.0, at - g.idle_since)
            g.idle_since = None
        self._prune(g, at)

    def ended(self, group: int, sid: str, at: float) -> None:
        """The worker on ``sid`` stopped processing ``group`` at ``at`` (nothing if it was not)."""
        g = self._group(group)
        span = next((s for s in reversed(g.spans) if s.sid == sid and s.end is None), None)
        if span is None:
            return
        span.end = max(at, span.start)
        if g.idle_since is None and not any(s.end is None for s in g.spans):
            g.idle_since = span.end
        self._prune(g, at)

    def mark(self, group: int | None, at: float, kind: str, text: str, *, level: str = "info") -> None:
        """A deploy or rollback at ``at``: in one group, or (``group=None``) in all."""
        mark = Mark(at, kind, level, text[:TEXT])
        if group is None:
            self.shared.append(mark)
            while self.shared and self.shared[0].at < at - self.window:
                self.shared.popleft()
        else:
            g = self._group(group)
            g.marks.append(mark)
            self._prune(g, at)

    def without_processor(self, group: int, now: float) -> float:
        """Seconds ``group`` had no processor since ``created`` (a counter: it never goes down)."""
        g = self._groups.get(group)
        if g is None:
            return max(0.0, now - self.created)
        return g.idle_total + (0.0 if g.idle_since is None else max(0.0, now - g.idle_since))

    def _prune(self, g: _Group, now: float) -> None:
        start = now - self.window
        while g.spans and g.spans[0].end is not None and g.spans[0].end < start:
            g.spans.popleft()
        while g.marks and g.marks[0].at < start:
            g.marks.popleft()

    def view(self, now: float, groups: int) -> dict[str, Any]:
        """The last ``window`` seconds of groups ``0 .. groups - 1``, as JSON-ready values."""
        start = now - self.window
        shared = [attrs.asdict(m) for m in self.shared if m.at >= start]
        rows = [self._one(i, now) for i in range(groups)]
        return {"now": now, "window": self.window, "marks": shared, "groups": rows}

    def _one(self, index: int, now: float) -> dict[str, Any]:
        g = self._group(index)
        self._prune(g, now)
        start = max(now - self.window, g.known_from)
        spans = [s for s in g.spans if s.end is None or s.end > start]
        return {
            "index": index,
            "known_from": start,
            "spans": [
                {
                    "worker": s.worker,
                    "epoch": s.epoch,
                    "version": s.version,
                    "generation": s.generation,
                    "from": max(s.start, start),
                    "to": s.end,
                }
                for s in spans
            ],
            "gaps": gaps(spans, start, now),
            "marks": [attrs.asdict(m) for m in g.marks if m.at >= start],
        }


def gaps(spans: list[Span], start: float, now: float) -> list[dict[str, float | None]]:
    """The stretches of ``[start, now]`` no span covers; an ongoing one ends at None (now)."""
    found: list[dict[str, float | None]] = []
    covered = start
    for span in sorted(spans, key=lambda s: s.start):
        if span.start > covered:
            found.append({"from": covered, "to": span.start})
        covered = max(covered, now if span.end is None else span.end)
    if covered < now:
        found.append({"from": covered, "to": None})
    return found


__all__ = ["MARKS", "SPANS", "WINDOW", "GroupHistory", "Mark", "Span", "gaps"]
