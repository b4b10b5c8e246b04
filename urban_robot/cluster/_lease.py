"""An agent's hold on its shard groups' lease keys in etcd (docs/protocol.md §19), sans-IO: time comes in.

One agent per host. It holds one etcd lease of its own (``TTL`` seconds, kept alive) and, per shard group
it runs the holder of, the group's lease key, attached to that etcd lease::

    agent                                               etcd
    GrantLease(at) ─────────────── LeaseGrant(TTL) ──▶  lease_granted(op, lease_id, ttl, now)
    KeepAlive(lease_id, at) ── LeaseKeepAlive, every keepalive_every ──▶  keepalive_answered(op, ttl, now)
    Acquire   txn: create_revision(key) == 0 → put {agent, identity} on our lease; else get key
    Rewrite   txn: mod_revision(key) == epoch → put {agent, identity'} on our lease; else get key
    Release   txn: mod_revision(key) == epoch → delete key; else get key  ──▶  txn_answered(op, result, now)
    (a watch event or a read of the key, maybe old)  ──▶  observed(group, holder, revision, now)

The rules that keep P1 across hosts (§19.4 proves them):

- **The view.** The agent's view of its etcd lease ends at ``at + ttl × (1 − drift) − margin`` of the
  newest keep-alive answered with ``ttl > 0``, where ``at`` was taken *before* the keep-alive was sent
  (etcd counted the TTL from a later instant, on a clock whose rate differs from ours by at most ``drift``).
- **Grants within the view.** A group's workers may be renewed only while the group is held and only up to
  the view's end (``cap``, announced by ``Granting``); from the view's end on, nothing (``StopGranting``).
- **Held only by a transaction.** A group becomes held only by the answer to its *outstanding* txn (older
  answers are ignored): applied, or refused with the key found naming this agent on its current etcd lease
  (an earlier attempt of ours whose answer was lost). Watch events and reads are hints: they may start an
  attempt or end a hold, never begin one.
- **Epochs.** The epoch is the revision of the txn that wrote the key (``Applied.revision``): strictly
  increasing cluster-wide.

A group's states (the table ``TRANSITIONS``; a move not in it is a bug here, ``LocalProtocolError``)::

    idle ──acquire──▶ acquiring ──applied / ours──▶ held ──switch──▶ switching ──applied / ours──▶ held
     ▲                   │ refused                  │ release           │ refused
     └───────────────────┴──────────────────────────┴──▶ releasing ─────┴──▶ idle (any answer)
    every state ──gone (the key or the etcd lease is gone)──▶ idle
    idle ──release──▶ releasing: a late-applied write of ours that nobody wants (a stray) is deleted

What the agent does not know (which worker runs, whether it stopped) the core tells it: ``release`` and
``switch`` are called only once the group's worker is known to have stopped (protocol §8.2).
"""

from __future__ import annotations

import enum
import json
import math

import attrs

from .._errors import UrbanRobotError


class LocalProtocolError(UrbanRobotError):
    """We misused the state machine (a move its table does not have): a bug in the caller or here."""


def _ttl(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"cluster ttl must be a whole number of seconds, at least 2, not {value!r}")


@attrs.frozen
class Timing:
    """The cluster's timing (§19.3). Checked: one keep-alive may be lost without the view running out."""

    ttl: int = attrs.field(default=10, validator=_ttl)  # the etcd lease's TTL asked for, in seconds
    drift: float = 0.01  # ρ: any host's clock runs at 1 ± ρ times the rate of etcd's leader's clock
    margin: float = 1.0  # m: the view ends this much earlier still
    keepalive_every: float = 2.0
    retry_after: float = 1.0  # a txn or lease grant unanswered this long is sent again

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.drift < 0.5 or not self.margin >= 0 or not self.retry_after > 0:
            raise ValueError(f"cluster timing out of range: {self!r}")
        if not 0 < 2 * self.keepalive_every <= self.view_length:
            raise ValueError(
                f"keepalive_every {self.keepalive_every} s is too long for the view of a {self.ttl} s etcd lease "
                f"({self.view_length:.2f} s): send keep-alives at least twice per view"
            )

    @property
    def view_length(self) -> float:
        """How long a keep-alive answered with the TTL asked for lets the agent grant, from its send time."""
        return self.view_end(0.0, self.ttl)

    def view_end(self, sent_at: float, ttl: int) -> float:
        return sent_at + ttl * (1.0 - self.drift) - self.margin


# --- the key and its value (§19.1) ---


def lease_key(cluster: str, group: str) -> str:
    """``/<cluster>/groups/<group name>/lease``, the group's name as §18.1 gives it (``shards 0-3``)."""
    for what, name in (("cluster", cluster), ("group", group)):
        if not name or "/" in name:
            raise ValueError(f"a {what} name must be non-empty and without '/', not {name!r}")
    return f"/{cluster}/groups/{group}/lease"


@attrs.frozen
class Holder:
    """A lease key as read from etcd: whom it names, the etcd lease it is attached to, its ``mod_revision``."""

    agent: str
    identity: str
    lease_id: int
    revision: int


def holder_value(agent: str, identity: str) -> bytes:
    return json.dumps({"agent": agent, "identity": identity}, separators=(",", ":"), sort_keys=True).encode()


def parse_holder(value: bytes, lease_id: int, mod_revision: int) -> Holder:
    """A value that is not ours to read names an unknown holder (``agent=""``): still a holder."""
    try:
        data = json.loads(value)
        agent, identity = data["agent"], data["identity"]
    except (ValueError, TypeError, KeyError):
        return Holder("", "", lease_id, mod_revision)
    if not isinstance(agent, str) or not isinstance(identity, str):
        return Holder("", "", lease_id, mod_revision)
    return Holder(agent, identity, lease_id, mod_revision)


# --- what the shell does for the agent (decisions) ---


@attrs.frozen
class GrantLease:
    """Ask etcd for an etcd lease of ``ttl`` seconds; ``at`` is the send time (pass this back with the answer)."""

    ttl: int
    at: float


@attrs.frozen
class KeepAlive:
    """Send one keep-alive for ``lease_id`` now; ``at`` is taken before it is sent."""

    lease_id: int
    at: float


@attrs.frozen
class Acquire:
    group: str
    identity: str
    lease_id: int
    serial: int


@attrs.frozen
class Rewrite:
    """A hand-over on this host: the key names ``identity`` from a new revision on, the new epoch."""

    group: str
    identity: str
    lease_id: int
    expect: int  # the key's mod_revision we hold it at
    serial: int


@attrs.frozen
class Release:
    group: str
    expect: int
    serial: int


Txn = Acquire | Rewrite | Release


@attrs.frozen
class Granting:
    """The group's workers may be renewed up to ``until`` (this host's clock), under ``epoch``, for ``identity``."""

    group: str
    epoch: int
    identity: str
    until: float


@attrs.frozen
class StopGranting:
    """No renewal for the group's workers from now on: they fence themselves when their lease ends."""

    group: str
    epoch: int
    reason: str


Decision = GrantLease | KeepAlive | Acquire | Rewrite | Release | Granting | StopGranting


# --- what etcd answered a txn ---


@attrs.frozen
class Applied:
    """The compare held; ``revision`` is the txn's header revision (for a put: the key's new mod_revision)."""

    revision: int


@attrs.frozen
class Refused:
    """The compare failed; the key as the txn's else branch read it (None: absent)."""

    holder: Holder | None


@attrs.frozen
class Unknown:
    """No answer in time, or an error: the txn may or may not have been applied."""

    reason: str


TxnResult = Applied | Refused | Unknown


# --- the per-group state machine ---


class State(enum.Enum):
    IDLE = "idle"
    ACQUIRING = "acquiring"
    HELD = "held"
    SWITCHING = "switching"
    RELEASING = "releasing"


TRANSITIONS: dict[State, dict[str, State]] = {
    State.IDLE: {"acquire": State.ACQUIRING, "release": State.RELEASING, "gone": State.IDLE},
    State.ACQUIRING: {
        "applied": State.HELD,
        "ours": State.HELD,
        "refused": State.IDLE,
        "retry": State.ACQUIRING,
        "gone": State.IDLE,
    },
    State.HELD: {"switch": State.SWITCHING, "release": State.RELEASING, "gone": State.IDLE},
    State.SWITCHING: {
        "applied": State.HELD,
        "ours": State.HELD,
        "refused": State.IDLE,
        "retry": State.SWITCHING,
        "gone": State.IDLE,
    },
    State.RELEASING: {
        "applied": State.IDLE,
        "ours": State.IDLE,
        "refused": State.IDLE,
        "retry": State.RELEASING,
        "gone": State.IDLE,
    },
}
BUSY = (State.ACQUIRING, State.SWITCHING, State.RELEASING)  # a txn is out


@attrs.define
class Group:
    name: str
    state: State = State.IDLE
    wanted: str | None = None  # the identity this agent wants to hold the group for (placement says)
    epoch: int = 0  # the revision of our write, while held (and while switching or releasing it)
    identity: str = ""  # whom our key names
    serial: int = 0  # the outstanding txn's: an answer to any other is ignored
    retry_at: float = math.inf
    target: str = ""  # the identity the awaited acquisition or rewrite is for
    announced: float | None = None  # the ``until`` of the last Granting, None after a StopGranting

    def move(self, trigger: str) -> None:
        try:
            self.state = TRANSITIONS[self.state][trigger]
        except KeyError:
            raise LocalProtocolError(f"group {self.name!r}: no move {trigger!r} from {self.state.value}") from None


@attrs.define(eq=False)
class Agent:
    """One host's agent: its etcd lease and its view of it, and a ``Group`` per shard group it has seen."""

    name: str
    timing: Timing = attrs.field(factory=Timing)
    lease_id: int | None = None
    view_until: float = -math.inf  # this host's clock
    groups: dict[str, Group] = attrs.field(factory=dict)
    _next_keepalive: float = -math.inf
    _next_grant: float = -math.inf
    _serial: int = 0

    # --- queries ---

    def cap(self, group: str, now: float) -> float | None:
        """The latest instant a renewal of this group's workers may reach, or None: no renewal now."""
        g = self.groups.get(group)
        if g is None or g.state is not State.HELD or now >= self.view_until:
            return None
        return self.view_until

    def next_deadline(self) -> float:
        """When ``poll`` has something to do next (this host's clock)."""
        times = [self._next_keepalive if self.lease_id is not None else self._next_grant]
        times += [g.retry_at for g in self.groups.values() if g.state in BUSY]
        if any(g.announced is not None for g in self.groups.values()):
            times.append(self.view_until)
        return min(times)

    # --- inputs ---

    def poll(self, now: float) -> list[Decision]:
        """Timers: the etcd lease (grant, keep-alives), txns unanswered for ``retry_after``, the view's end."""
        out: list[Decision] = []
        if self.lease_id is None and now >= self._next_grant:
            self._next_grant = now + self.timing.retry_after
            out.append(GrantLease(self.timing.ttl, now))
        if self.lease_id is not None and now >= self._next_keepalive:
            self._next_keepalive = now + self.timing.keepalive_every
            out.append(KeepAlive(self.lease_id, now))
        for g in self.groups.values():
            if g.state in BUSY and now >= g.retry_at:
                g.move("retry")
                out.append(self._send(g, now))
        self._announce(now, out, "no keep-alive of our etcd lease answered in time: it may have expired")
        return out

    def lease_granted(self, op: GrantLease, lease_id: int, ttl: int, now: float) -> list[Decision]:
        """etcd granted a lease (the first answer counts; another one, to a repeated request, just expires)."""
        out: list[Decision] = []
        if self.lease_id is not None or ttl <= 0:
            return out
        self.lease_id = lease_id
        self.view_until = self.timing.view_end(self._counted_from(op.at, now), ttl)
        self._next_keepalive = now + self.timing.keepalive_every
        for g in self.groups.values():
            if g.state is State.IDLE and g.wanted is not None:
                self._acquire(g, now, out)
        self._announce(now, out, "")
        return out

    def keepalive_answered(self, op: KeepAlive, ttl: int, now: float) -> list[Decision]:
        """A keep-alive's answer: ``ttl > 0`` extends the view from ``op.at``; ``ttl <= 0``: the lease is gone."""
        out: list[Decision] = []
        if op.lease_id != self.lease_id:
            return out  # an answer about an etcd lease we no longer hold
        if ttl <= 0:
            self._lose_lease(now, out)
            return out
        self.view_until = max(self.view_until, self.timing.view_end(self._counted_from(op.at, now), ttl))
        self._announce(now, out, "")
        return out

    def want(self, group: str, identity: str, now: float) -> list[Decision]:
        """Placement: hold ``group`` for ``identity`` (an approved standby here) when its key is free."""
        g = self._group(group)
        g.wanted = identity
        out: list[Decision] = []
        if g.state is State.IDLE:
            self._acquire(g, now, out)
        return out

    def unwant(self, group: str) -> None:
        """Placement: no longer try to take ``group``. A hold is ended by ``release`` once the worker stopped."""
        self._group(group).wanted = None

    def release(self, group: str, now: float) -> list[Decision]:
        """The group's worker is known to have stopped and the group goes elsewhere: delete our key."""
        g = self._group(group)
        g.wanted = None
        out: list[Decision] = []
        g.move("release")
        out.append(self._send(g, now))
        self._announce(now, out, "released")
        return out

    def switch(self, group: str, identity: str, now: float) -> list[Decision]:
        """A hand-over on this host: the old worker is known to have stopped; the key will name ``identity``."""
        g = self._group(group)
        g.wanted = g.target = identity
        out: list[Decision] = []
        g.move("switch")
        out.append(self._send(g, now))
        self._announce(now, out, f"handing over to {identity}")
        return out

    def txn_answered(self, op: Txn, result: TxnResult, now: float) -> list[Decision]:
        out: list[Decision] = []
        g = self.groups.get(op.group)
        if g is None or g.state not in BUSY or op.serial != g.serial:
            return out  # the answer to an attempt since replaced, or one from before the etcd lease was lost
        if isinstance(result, Unknown):
            g.retry_at = min(g.retry_at, now)  # ask again at the next poll
            return out
        if isinstance(result, Applied):
            self._applied(g, op, result.revision, now, out)
        elif result.holder is not None and self._ours(result.holder) and g.state is not State.RELEASING:
            g.move("ours")  # an earlier attempt of ours was applied and its answer lost
            g.epoch, g.identity = result.holder.revision, result.holder.identity
            self._after_held(g, now, out)
        else:
            g.move("refused")
            if g.state is State.IDLE and g.wanted is not None and result.holder is None:
                self._acquire(g, now, out)
        self._announce(now, out, "the lease key is no longer ours")
        return out

    def observed(self, group: str, holder: Holder | None, revision: int, now: float) -> list[Decision]:
        """A watch event or a read of the group's key, as of ``revision`` (maybe long ago): a hint only.

        A delete event's revision is the delete's; a put event's the put's; a read's its header revision."""
        g = self._group(group)
        out: list[Decision] = []
        if g.state is State.HELD and revision >= g.epoch and (holder is None or not self._ours(holder)):
            g.move("gone")  # deleted (etcd expired our lease, or someone removed the key) since we wrote it
            self._announce(now, out, "the lease key was deleted")
        if g.state is State.IDLE and g.wanted is not None and holder is None:
            self._acquire(g, now, out)
        elif g.state is State.IDLE and g.wanted is None and holder is not None and self._ours(holder):
            # A write of ours that we gave up on (its answer lost, the group released or unwanted since) was
            # applied late: nobody was granted under it, and it would keep the group from everyone while we live.
            g.epoch = holder.revision
            g.move("release")
            out.append(self._send(g, now))
        return out

    # --- inside ---

    def _counted_from(self, sent_at: float, answered_at: float) -> float:
        """The view counts from the keep-alive's send time: etcd refreshed the lease later than that."""
        return sent_at

    def _ours(self, holder: Holder) -> bool:
        """Written by this agent under its current etcd lease: alive as long as that lease is."""
        return holder.agent == self.name and self.lease_id is not None and holder.lease_id == self.lease_id

    def _group(self, name: str) -> Group:
        return self.groups.setdefault(name, Group(name))

    def _acquire(self, g: Group, now: float, out: list[Decision]) -> None:
        if self.lease_id is None:
            return  # lease_granted tries again
        g.move("acquire")
        g.target = g.wanted or ""
        out.append(self._send(g, now))

    def _send(self, g: Group, now: float) -> Txn:
        self._serial += 1
        g.serial, g.retry_at = self._serial, now + self.timing.retry_after
        assert self.lease_id is not None or g.state is State.RELEASING
        if g.state is State.ACQUIRING:
            return Acquire(g.name, g.target, self.lease_id or 0, g.serial)
        if g.state is State.SWITCHING:
            return Rewrite(g.name, g.target, self.lease_id or 0, g.epoch, g.serial)
        return Release(g.name, g.epoch, g.serial)

    def _applied(self, g: Group, op: Txn, revision: int, now: float, out: list[Decision]) -> None:
        if isinstance(op, Release):
            g.move("applied")
            if g.wanted is not None:
                self._acquire(g, now, out)
            return
        if op.lease_id != self.lease_id:
            return  # written on an etcd lease we lost since: the key went with it (unreachable: serials)
        g.move("applied")
        g.epoch, g.identity = revision, op.identity
        self._after_held(g, now, out)

    def _after_held(self, g: Group, now: float, out: list[Decision]) -> None:
        g.retry_at = math.inf
        if g.wanted is None:  # placement changed its mind while we asked: give it back at once
            g.move("release")
            out.append(self._send(g, now))

    def _lose_lease(self, now: float, out: list[Decision]) -> None:
        """etcd says our lease is gone: so is every key attached to it."""
        self.lease_id, self.view_until = None, -math.inf
        self._next_grant = -math.inf
        for g in self.groups.values():
            g.move("gone")
            g.retry_at = math.inf
        self._announce(now, out, "our etcd lease expired")
        out.extend(self.poll(now))

    def _announce(self, now: float, out: list[Decision], reason: str) -> None:
        for g in self.groups.values():
            if g.state is State.HELD and now < self.view_until:
                if g.announced != self.view_until:
                    g.announced = self.view_until
                    out.append(Granting(g.name, g.epoch, g.identity, self.view_until))
            elif g.announced is not None:
                g.announced = None
                out.append(StopGranting(g.name, g.epoch, reason))
