"""Shard groups and IDENTIFY slots, sans-IO (docs/protocol.md §18; not yet wired: issue 16).

- :class:`ShardPlan` splits a bot's ``shard_count`` shards into groups of ``shards_per_worker``
  contiguous ids, one group per worker role set. One group is today's unsharded supervisor.
- :class:`GatewayBot` is Discord's ``GET /gateway/bot`` answer, parsed and checked.
- :class:`IdentifySlots` decides when each shard, whichever worker runs it, may send IDENTIFY.

What Discord's documentation says (discord/discord-api-docs, ``docs/topics/Gateway.md``, published as
https://discord.com/developers/docs/topics/gateway; read 2026-12-06; the same text as the libraries'
copies: discord-api-types' ``APIGatewaySessionStartLimit``, twilight-gateway-queue):

- ``GET /gateway/bot`` (#get-gateway-bot) answers ``{"url": string, "shards": integer (the recommended
  count), "session_start_limit": object}``; the session start limit object
  (#session-start-limit-object) is four integers: ``total`` and ``remaining`` session starts,
  ``reset_after`` (milliseconds until ``remaining`` resets to ``total``) and ``max_concurrency``,
  "the number of identify requests allowed per 5 seconds".
- Max concurrency (#sharding, "Max Concurrency"): a shard's rate limit key is
  ``shard_id % max_concurrency``; keys put shards in buckets; "you may start up to
  ``max_concurrency`` shards at a time", by bucket, in order (shards 0-15 together, then 16-31, for
  16). We read it as twilight does: each key may start one IDENTIFY per 5 s. The docs' "in order" is
  kept within a key by granting in request order; across keys Discord states no order and we keep none.
- Identifying (#identifying): IDENTIFYs are limited per 24 hours (1000; for very large bots
  ``max(2000, guild_count / 1000 * 3)``), globally across shards, RESUME not counted; past the limit
  Discord terminates every session and resets the token. Hence ``remaining`` is a hard stop here.

The bound of :data:`MAX_SHARDS` is ours, not Discord's (which states none): the largest bots run a
few tens of thousands of shards; a larger number is a typo.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeGuard

import attrs

from ._errors import ShardError

MAX_SHARDS = 65_536  # shard_count, shards_per_worker, max_concurrency and shard ids stay below or at it
IDENTIFY_WINDOW = 5.0  # seconds: one IDENTIFY per rate limit key per window (Discord)
IDENTIFY_MARGIN = 0.5  # seconds added to the window: a grant travels to its worker before its IDENTIFY goes
SESSION_WINDOW = 86_400.0  # seconds: session starts are counted per 24 hours (Discord)
_SHOWN = 40  # a bad value is shown cut to this many characters


def _show(value: object) -> str:
    text = repr(value)  # repr escapes line breaks: the message stays one line
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _whole(value: object, low: int, high: float) -> TypeGuard[int]:
    return type(value) is int and low <= value <= high


# -- the plan -----------------------------------------------------------------------------------------------


@attrs.frozen
class ShardGroup:
    """Shards ``ids`` (contiguous), run by one worker at a time; ``index`` counts groups from 0."""

    index: int
    ids: range

    @property
    def name(self) -> str:
        """Stable (it depends on the ids only): ``"shards 0-3"``, or ``"shard 4"`` for one."""
        first, last = self.ids[0], self.ids[-1]
        return f"shard {first}" if first == last else f"shards {first}-{last}"

    def __contains__(self, shard_id: object) -> bool:
        return shard_id in self.ids


def _check_count(name: str, hint: str) -> Any:
    def check(_: object, __: object, value: object) -> None:
        if not _whole(value, 1, MAX_SHARDS):
            raise ShardError(f"{name} must be a whole number from 1 to {MAX_SHARDS}, not {_show(value)}: {hint}")

    return check


@attrs.frozen
class ShardPlan:
    """``shard_count`` shards in groups of ``shards_per_worker`` contiguous ids; the last may be smaller.

    ``sharded`` is false when there is one group (``shards_per_worker >= shard_count``): the supervisor
    then runs exactly as it does unsharded (one role set, one lease, one epoch sequence, one cache).
    Whether that one worker opens one gateway connection or several is ``shard_count``'s business.
    """

    shard_count: int = attrs.field(
        validator=_check_count("shard_count", "set it to Discord's recommended count (GET /gateway/bot) or more")
    )
    shards_per_worker: int = attrs.field(
        validator=_check_count("shards_per_worker", "set it to how many shards one worker process runs")
    )
    groups: tuple[ShardGroup, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:  # after the validators: the sizes are sound
        starts = range(0, self.shard_count, self.shards_per_worker)
        groups = tuple(
            ShardGroup(index, range(start, min(start + self.shards_per_worker, self.shard_count)))
            for index, start in enumerate(starts)
        )
        object.__setattr__(self, "groups", groups)

    @classmethod
    def unsharded(cls) -> ShardPlan:
        """Today's supervisor: one shard, one group."""
        return cls(1, 1)

    @property
    def sharded(self) -> bool:
        return len(self.groups) > 1

    def group_of(self, shard_id: int) -> ShardGroup:
        if not _whole(shard_id, 0, self.shard_count - 1):
            raise ShardError(
                f"shard {_show(shard_id)} is not in this plan (shards 0-{self.shard_count - 1}): "
                "ask for a shard id below shard_count"
            )
        return self.groups[shard_id // self.shards_per_worker]


# -- Discord's GET /gateway/bot ------------------------------------------------------------------------------


def _malformed(path: str, problem: str) -> ShardError:
    return ShardError(
        f"Discord's GET /gateway/bot answer is malformed: {path} {problem}; "
        "retry later, and report it if it persists (Discord's API may have changed)"
    )


def _field(low: int, high: float = math.inf) -> Any:
    def check(_: object, attribute: attrs.Attribute[int], value: object) -> None:
        if not _whole(value, low, high):
            limits = f"from {low} to {high}" if high < math.inf else f"of at least {low}"
            path = f"session_start_limit.{attribute.name}"
            raise _malformed(path, f"must be a whole number {limits}, not {_show(value)}")

    return attrs.field(validator=check)


@attrs.frozen
class SessionStartLimit:
    """Discord's session start limit object (``reset_after`` is in milliseconds, as Discord sends it)."""

    total: int = _field(1)
    remaining: int = _field(0)
    reset_after: int = _field(0)
    max_concurrency: int = _field(1, MAX_SHARDS)

    def __attrs_post_init__(self) -> None:
        if self.remaining > self.total:
            raise _malformed("session_start_limit.remaining", f"({self.remaining}) exceeds total ({self.total})")

    def key(self, shard_id: int) -> int:
        """The shard's rate limit key (its bucket): ``shard_id % max_concurrency``."""
        return shard_id % self.max_concurrency


@attrs.frozen
class GatewayBot:
    url: str
    shards: int  # Discord's recommended shard count
    session_start_limit: SessionStartLimit

    @classmethod
    def from_json(cls, body: object) -> GatewayBot:
        """Parse the answer: its bytes or text, or the JSON value already decoded. Unknown keys are ignored."""
        if isinstance(body, bytes | str):
            try:
                body = json.loads(body)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                raise _malformed("the body", "is not JSON") from exc
        if not isinstance(body, dict):
            raise _malformed("the body", f"must be an object, not {type(body).__name__}")
        url, shards, limit = body.get("url"), body.get("shards"), body.get("session_start_limit")
        if not isinstance(url, str) or not url:
            raise _malformed("url", f"must be a non-empty string, not {_show(url)}")
        if not _whole(shards, 1, MAX_SHARDS):
            raise _malformed("shards", f"must be a whole number from 1 to {MAX_SHARDS}, not {_show(shards)}")
        if not isinstance(limit, dict):
            raise _malformed("session_start_limit", f"must be an object, not {_show(limit)}")
        keys = ("total", "remaining", "reset_after", "max_concurrency")
        if missing := [key for key in keys if key not in limit]:
            raise _malformed("session_start_limit", f"lacks {', '.join(missing)}")
        return cls(url, shards, SessionStartLimit(*(limit[key] for key in keys)))


# -- identify slots ------------------------------------------------------------------------------------------


@attrs.frozen
class IdentifyGrant:
    """Shard ``shard_id`` (asked for by ``owner``) may send one IDENTIFY now: at ``at``, not later (§18.2)."""

    ticket: int
    shard_id: int
    owner: str
    key: int
    at: float
    asked_at: float  # the request's time: ``at - asked_at`` is how long it waited


@attrs.frozen
class SessionsExhausted:
    """No session start is left: nothing is granted before ``until``; ``waiting`` requests are held.
    Said once each time grants stop for this reason."""

    until: float
    waiting: int


IdentifyEvent = IdentifyGrant | SessionsExhausted


@attrs.frozen
class _Request:
    ticket: int
    shard_id: int
    owner: str
    at: float


class IdentifySlots:
    """Grants IDENTIFY slots across all workers: events in (``request``, ``cancel``, ``release``), decisions
    out (``poll``), and ``next_deadline`` for the shell's timer. Time is always passed in.

    Rules (docs/protocol.md §18.2):

    - grants for one rate limit key are at least ``IDENTIFY_WINDOW + margin`` seconds apart;
    - within a key, requests are granted in the order they came (FIFO); when several keys are free at
      once and only some session starts are left, the oldest request goes first;
    - a request cancelled before its grant frees its place; a grant is never taken back (the IDENTIFY
      may have gone), so it counts against its key's window and ``remaining`` either way;
    - every grant spends one of ``remaining``; at 0 nothing is granted until the limit resets, then
      ``remaining`` is ``total`` again. The first reset is ``reset_after`` after construction; each next
      one ``SESSION_WINDOW`` after the first grant following a reset: never earlier than Discord's,
      whether Discord's day starts at its reset or at the first session start after it.

    ``not_before`` holds every key until then: a supervisor restarted with grants of its previous run
    possibly still in flight passes ``now + IDENTIFY_WINDOW + margin``.
    """

    def __init__(
        self,
        limit: SessionStartLimit,
        now: float,
        *,
        margin: float = IDENTIFY_MARGIN,
        not_before: float = -math.inf,
    ) -> None:
        if not (type(margin) in (int, float) and 0 <= margin <= IDENTIFY_WINDOW):
            raise ShardError(f"margin must be from 0 to {IDENTIFY_WINDOW} seconds, not {_show(margin)}")
        self.limit = limit
        self.spacing = IDENTIFY_WINDOW + margin
        self.remaining = limit.remaining
        self.resets_at: float | None = now + limit.reset_after / 1000
        self._floor = not_before
        self._queues: dict[int, dict[int, _Request]] = {}  # key → waiting requests by ticket, oldest first
        self._free_at: dict[int, float] = {}  # key → earliest time of its next grant
        self._tickets: dict[int, int] = {}  # ticket of a waiting request → its key
        self._asked: dict[tuple[str, int], int] = {}  # (owner, shard id) of a waiting request → its ticket
        self._last_ticket = 0
        self._told = False  # SessionsExhausted already said for the current stop

    @property
    def waiting(self) -> int:
        return len(self._tickets)

    @property
    def exhausted_until(self) -> float | None:
        """When the session starts come back, if none is left (as of the last ``poll``)."""
        return self.resets_at if self.remaining == 0 else None

    def request(self, shard_id: int, now: float, owner: str = "") -> int:
        """Queue a request for shard ``shard_id``'s IDENTIFY; its ticket. Asking again for the same shard and
        owner while waiting returns the same ticket (and keeps its place)."""
        if not _whole(shard_id, 0, MAX_SHARDS - 1):
            raise ShardError(
                f"shard id must be a whole number from 0 to {MAX_SHARDS - 1}, not {_show(shard_id)}: "
                "ask for a shard of the plan"
            )
        if (ticket := self._asked.get((owner, shard_id))) is not None:
            return ticket
        self._last_ticket += 1
        ticket, key = self._last_ticket, self.limit.key(shard_id)
        self._queues.setdefault(key, {})[ticket] = _Request(ticket, shard_id, owner, now)
        self._tickets[ticket] = key
        self._asked[owner, shard_id] = ticket
        return ticket

    def cancel(self, ticket: int) -> bool:
        """Withdraw a waiting request; false if it was granted, cancelled already or never existed."""
        key = self._tickets.pop(ticket, None)
        if key is None:
            return False
        request = self._queues[key].pop(ticket)
        del self._asked[request.owner, request.shard_id]
        if not self._queues[key]:
            del self._queues[key]
        return True

    def release(self, owner: str) -> tuple[int, ...]:
        """Withdraw every waiting request of ``owner`` (its worker died or left); their tickets."""
        tickets = tuple(ticket for (who, _), ticket in self._asked.items() if who == owner)
        for ticket in tickets:
            self.cancel(ticket)
        return tickets

    def poll(self, now: float) -> list[IdentifyEvent]:
        """What is decided at ``now``: grants, oldest request first, and whether session starts ran out."""
        self._renew(now)
        events: list[IdentifyEvent] = []
        # A grant only makes its own key busy: the keys free now are granted in one pass, oldest head first.
        ready = sorted((next(iter(queue)), key) for key, queue in self._queues.items() if self._free(key) <= now)
        for ticket, key in ready:
            if self.remaining == 0:
                if not self._told:
                    self._told = True
                    events.append(SessionsExhausted(self._reset_time(), self.waiting))
                break
            events.append(self._grant(ticket, key, now))
        return events

    def next_deadline(self) -> float | None:
        """When ``poll`` may next decide something that it cannot now: None while nothing waits. A deadline
        at or before the last ``poll``'s ``now`` is never returned after it; before it, it means "poll now"."""
        times = [self._free(key) for key in self._queues]
        if not times:
            return None
        return max(min(times), self._reset_time()) if self.remaining == 0 else min(times)

    def _free(self, key: int) -> float:
        return max(self._floor, self._free_at.get(key, -math.inf))

    def _reset_time(self) -> float:
        assert self.resets_at is not None  # remaining is 0 only after a grant or a limit with resets_at set
        return self.resets_at

    def _renew(self, now: float) -> None:
        if self.resets_at is not None and now >= self.resets_at:
            self.remaining, self.resets_at, self._told = self.limit.total, None, False

    def _grant(self, ticket: int, key: int, now: float) -> IdentifyGrant:
        request = self._queues[key][ticket]
        self.cancel(ticket)
        self.remaining -= 1
        self._free_at[key] = now + self.spacing
        if self.resets_at is None:
            self.resets_at = now + SESSION_WINDOW
        return IdentifyGrant(ticket, request.shard_id, request.owner, key, now, request.at)
