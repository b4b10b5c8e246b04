"""The soak's verdict, from the workers' shared journal (one JSON object per line, see worker.py).

- **Segments.** A worker's processing is cut into segments: its ``cmd`` lines between two of its
  ``start``/``stop`` marks under one epoch. A segment runs from its first command to its last: a
  killed worker's ends at its last journaled command, and a SIGSTOPped holder that woke and
  processed after losing its lease would stretch its segment over its successor's.
- **P1**: segments of different workers never overlap; and, command by command in time order,
  the epoch never goes down and a change of worker comes with a strictly higher epoch (a stale
  holder processing under an old epoch is caught even between two of its own segments).
- **P2**: time in the window covered by no segment. For this measure only, a segment is also cut
  where its worker journaled nothing for ``GAP`` seconds (a frozen holder whose lease had not run
  out yet processes nothing either). Each stretch is put down to the last fault or commit the soak
  journaled before it began (``{"e": "chaos", "kind": ...}`` lines).
- **P3**: every key journaled as acknowledged is in the final holder's cache dump.
- **P4**: no command journaled by a worker running a bad commit's version.

A sharded bot (``check_groups``): the worker lines carry their shard group (``"grp"``); every check above runs
on each group's lines alone (its own workers, epochs, final holder's dump), with the soak's marks aimed at that
group or at none (a supervisor kill, a delay for everyone, a commit). A worker's lines in two groups, or a
command of a worker that never said its group, are violations too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

GAP = 0.1  # seconds without a command that P2 counts as "no processor" even inside a segment
# A fault is journaled just before it is done; a holder's last command can come a moment before that line.
MARK_SLACK = 0.05


@attrs.define
class Segment:
    identity: str
    pid: int
    version: str
    epoch: int | None
    start: float
    end: float
    commands: int = 1


def read_journal(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a SIGKILL mid-write cannot happen (one write), but never trust a file
    events.sort(key=lambda e: e["t"])
    return events


def segments(events: Iterable[dict[str, Any]], gap: float | None = None) -> list[Segment]:
    """Processing segments, cut at marks and epoch changes (and at silences longer than ``gap``)."""
    done: list[Segment] = []
    open_: dict[str, Segment] = {}
    for event in events:
        who = event["id"]
        current = open_.get(who)
        if event["e"] in ("start", "stop"):
            if current is not None:
                done.append(open_.pop(who))
        elif event["e"] == "cmd":
            cut = current is not None and (
                current.epoch != event.get("epoch") or (gap is not None and event["t"] - current.end > gap)
            )
            if cut:
                assert current is not None
                done.append(open_.pop(who))
                current = None
            if current is None:
                open_[who] = Segment(who, event["pid"], event["ver"], event.get("epoch"), event["t"], event["t"])
            else:
                current.end = event["t"]
                current.commands += 1
    done.extend(open_.values())
    done.sort(key=lambda s: s.start)
    return done


def overlaps(segs: list[Segment]) -> list[tuple[Segment, Segment]]:
    """Pairs of segments of different workers that share an instant."""
    found: list[tuple[Segment, Segment]] = []
    active: list[Segment] = []
    for seg in sorted(segs, key=lambda s: s.start):
        active = [a for a in active if a.end >= seg.start]
        found.extend((a, seg) for a in active if a.identity != seg.identity)
        active.append(seg)
    return found


def epoch_violations(events: Iterable[dict[str, Any]]) -> list[str]:
    """Commands in time order: the epoch never goes down; another worker means a strictly higher one."""
    problems = []
    last: dict[str, Any] | None = None
    for event in events:
        if event["e"] != "cmd":
            continue
        if last is not None:
            epoch, before = event.get("epoch") or 0, last.get("epoch") or 0
            other = event["id"] != last["id"]
            if epoch < before or (other and epoch == before):
                problems.append(
                    f"{event['id']} processed under epoch {epoch} at t={event['t']:.3f} after"
                    f" {last['id']} processed under epoch {before} at t={last['t']:.3f}"
                )
        last = event
    return problems


def idle_stretches(segs: list[Segment], since: float, until: float) -> list[float]:
    """Durations of the stretches of [since, until] that no segment covers."""
    return [end - start for start, end in idle_spans(segs, since, until)]


def idle_spans(segs: list[Segment], since: float, until: float) -> list[tuple[float, float]]:
    """The stretches of [since, until] that no segment covers, as (start, end)."""
    spans = []
    covered = since
    for seg in sorted(segs, key=lambda s: s.start):
        if seg.end < since or seg.start > until:
            continue
        if seg.start > covered:
            spans.append((covered, min(seg.start, until)))
        covered = max(covered, seg.end)
    if until > covered:
        spans.append((covered, until))
    return spans


def causes(spans: list[tuple[float, float]], marks: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """Each stretch's likely cause: the last fault or commit the soak journaled (``"e": "chaos"``) before
    the stretch began, as (kind, seconds from it to the stretch's start, the stretch's length)."""
    found = []
    ordered = sorted(marks, key=lambda m: m["t"])
    for start, end in spans:
        before = [m for m in ordered if m["t"] <= start + MARK_SLACK]
        mark = before[-1] if before else None
        found.append((mark["kind"] if mark else "start", start - mark["t"] if mark else 0.0, end - start))
    return found


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@attrs.frozen
class Verdict:
    commands: int
    segments: int
    overlaps: list[str]
    epoch_problems: list[str]
    idle: list[float]
    writes_checked: int
    writes_lost: list[str]
    bad_commands: list[str]
    idle_causes: list[tuple[str, float, float]] = attrs.Factory(list)  # (kind, fault to stretch, stretch)

    @property
    def violations(self) -> list[str]:
        found = []
        if self.overlaps:
            found.append(f"P1: {len(self.overlaps)} overlapping processing intervals, e.g. {self.overlaps[0]}")
        if self.epoch_problems:
            found.append(f"epochs: {len(self.epoch_problems)} out of order, e.g. {self.epoch_problems[0]}")
        if self.writes_lost:
            found.append(f"P3: {len(self.writes_lost)} acknowledged writes lost, e.g. {self.writes_lost[:5]}")
        if self.bad_commands:
            found.append(f"P4: bad commits processed commands: {self.bad_commands[:5]}")
        return found


def check(events: list[dict[str, Any]], dump: set[str], bad_versions: set[str], since: float, until: float) -> Verdict:
    segs = segments(events)
    pairs = overlaps(segs)
    described = [
        f"{a.identity} (pid {a.pid}, epoch {a.epoch}) {a.start:.3f}-{a.end:.3f} and"
        f" {b.identity} (pid {b.pid}, epoch {b.epoch}) {b.start:.3f}-{b.end:.3f}"
        for a, b in pairs
    ]
    written = {e["key"] for e in events if e["e"] == "write"}
    spans = idle_spans(segments(events, gap=GAP), since, until)
    bad: dict[str, int] = {}
    for e in events:
        if e["e"] == "cmd" and e["ver"] in bad_versions:
            bad[f"{e['id']} v{e['ver']}"] = bad.get(f"{e['id']} v{e['ver']}", 0) + 1
    return Verdict(
        commands=sum(1 for e in events if e["e"] == "cmd"),
        segments=len(segs),
        overlaps=described,
        epoch_problems=epoch_violations(events),
        idle=[end - start for start, end in spans],
        idle_causes=causes(spans, [e for e in events if e["e"] == "chaos"]),
        writes_checked=len(written),
        writes_lost=sorted(written - dump),
        bad_commands=[f"{who}: {n} commands" for who, n in bad.items()],
    )


def split_groups(events: list[dict[str, Any]], groups: list[str]) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Each group's journal: its workers' lines (a worker's group is the ``grp`` its lines carry) and the soak's
    marks aimed at it or at no group. Also the problems: a worker in two groups, a command with no group."""
    owner: dict[str, str] = {}
    problems: list[str] = []
    for e in events:
        grp = e.get("grp")
        if grp is None or e["id"] == "soak":
            continue
        if owner.setdefault(e["id"], grp) != grp:
            problems.append(f"{e['id']} journaled for {owner[e['id']]!r} and then for {grp!r} at t={e['t']:.3f}")
            owner[e["id"]] = grp
    split: dict[str, list[dict[str, Any]]] = {g: [] for g in groups}
    for e in events:
        if e["e"] == "chaos":
            for g in [e["group"]] if e.get("group") in split else groups:
                split[g].append(e)
            continue
        grp = e.get("grp") or owner.get(e["id"])
        if grp in split:
            split[grp].append(e)
        elif e["e"] == "cmd":
            problems.append(f"{e['id']} processed a command at t={e['t']:.3f} outside every shard group ({grp!r})")
    return split, problems


def check_groups(
    events: list[dict[str, Any]],
    dumps: dict[str, set[str]],
    bad_versions: set[str],
    since: float,
    until: float,
    groups: list[str],
) -> tuple[Verdict, dict[str, Verdict], list[str]]:
    """Every check per shard group (``dumps``: each group's final holder's keys); the overall verdict (the sums, every
    group's stretches without a processor), each group's, and the problems of the split itself."""
    split, problems = split_groups(events, groups)
    verdicts = {g: check(split[g], dumps.get(g, set()), bad_versions, since, until) for g in groups}

    def each(field: str) -> list[Any]:
        return [f"{g}: {item}" for g, v in verdicts.items() for item in getattr(v, field)]

    overall = Verdict(
        commands=sum(v.commands for v in verdicts.values()),
        segments=sum(v.segments for v in verdicts.values()),
        overlaps=each("overlaps"),
        epoch_problems=each("epoch_problems"),
        idle=[x for v in verdicts.values() for x in v.idle],
        writes_checked=sum(v.writes_checked for v in verdicts.values()),
        writes_lost=each("writes_lost"),
        bad_commands=each("bad_commands"),
        idle_causes=[c for v in verdicts.values() for c in v.idle_causes],
    )
    return overall, verdicts, problems
