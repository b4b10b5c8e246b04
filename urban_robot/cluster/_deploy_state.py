"""The cluster's deploy state and its one deployer, in etcd (docs/protocol.md §19.1, §19.7; issue 17).

    /<cluster>/deploy    DeployRecord as JSON, attached to no lease (it outlives every agent)
                         DeployStore.update(fn): read → fn(record) → txn{mod_revision == read's → put; else get}
    /<cluster>/deployer  {"agent": "<name>"}, attached to the campaigning agent's own etcd lease
                         Election.campaign(name, lease): txn{create_revision == 0 → put; else get}

The record and its changes are plain values (``DeployRecord.with_rollout(commit)`` and friends decide, and refuse
with ``UpdateRefused``); the store and the election carry them to etcd and back.

A value that is not a deploy record (tampered with, truncated, written by hand) never becomes a traceback: reading
it raises ``InvalidDeployRecord``, one line naming the key and the fault, and the record counts as unreadable:
``update`` writes nothing over it and a watch hands out ``Unreadable`` until an operator corrects or deletes it
(``etcdctl get/put/del /<cluster>/deploy``; deleted, the default record applies).

Errors (``DeployStateError``, under ``UrbanRobotError``)::

    DeployStateError        something about the deploy state; one line
     ├─ InvalidDeployRecord the key holds no valid record (also a ValueError)
     ├─ InvalidDeployer     the deployer key holds what no campaign wrote: no agent can be elected (a ValueError)
     ├─ UpdateRefused       the change makes no sense from the current record (a rollout in progress, ...)
     └─ UpdateContended     no attempt won its compare within the bounded attempts

etcd's own errors (``EtcdUnavailable``, ...) pass through unchanged.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio

from .._errors import UrbanRobotError
from ._etcd import Compacted, Compare, EtcdClient, EtcdUnavailable, KeyValue, Op, Watch

log = logging.getLogger("urban_robot.cluster")
T = TypeVar("T")

MAX_BAD = 100  # bad commits kept, the oldest dropped first
MAX_VALUE = 16 * 1024  # bytes: a record of 100 bad commits is about 4.6 KiB
MAX_REASON = 200  # characters of ``reason``
ATTEMPTS = 16  # compares lost in a row before ``update`` gives up
PATIENCE = 15.0  # seconds ``update`` keeps trying through an etcd without answers (an election takes 1–2 s)
RETRY_AFTER = 0.5  # seconds between two tries when etcd does not answer
HISTORY_EVENTS = 1000  # changes of the key looked through to find whether a write of ours was applied

_COMMIT = re.compile(r"[0-9a-f]{40}")
_WRITE = re.compile(r"[0-9a-f]{32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIELDS = {"is_sane", "last_known_good", "bad", "target", "serial", "reason", "write"}
_FIX = "correct it or delete it (etcdctl get/put/del {key}; docs/protocol.md §19.7)"


class DeployStateError(UrbanRobotError):
    """Something about the cluster's deploy state in etcd: one line saying what and what to do."""


class InvalidDeployRecord(DeployStateError, ValueError):
    """The key holds something that is not a deploy record: the record is unreadable until an operator fixes it."""


class InvalidDeployer(DeployStateError, ValueError):
    """The deployer key holds a value no campaign wrote (unparsable, or on no etcd lease): nobody can be elected."""


class UpdateRefused(DeployStateError):
    """The change asked for does not apply to the current record (nothing was written)."""


class UpdateContended(DeployStateError):
    """Other writers changed the record before each of our attempts, ``ATTEMPTS`` times in a row."""


# --- keys ------------------------------------------------------------------------------------------------------------


def _cluster(cluster: str) -> str:
    if not cluster or "/" in cluster:
        raise ValueError(f"a cluster name must be non-empty and without '/', not {cluster!r}")
    return cluster


def deploy_key(cluster: str) -> str:
    """``/<cluster>/deploy``: the deploy record."""
    return f"/{_cluster(cluster)}/deploy"


def deployer_key(cluster: str) -> str:
    """``/<cluster>/deployer``: the elected deployer, on its etcd lease."""
    return f"/{_cluster(cluster)}/deployer"


# --- the record (sans-IO) ---------------------------------------------------------------------------------------------


def _is_commit(value: object) -> bool:
    return isinstance(value, str) and _COMMIT.fullmatch(value) is not None


def _commit(commit: str) -> str:
    if not _is_commit(commit):
        raise ValueError(f"a commit is 40 lowercase hex digits, not {commit!r:.60}")
    return commit


def _optional_commit(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        _commit(value)


def _bad(instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    if len(value) > MAX_BAD or len(set(value)) != len(value):
        raise ValueError(f"bad commits: at most {MAX_BAD}, each once, not {len(value)}")
    for commit in value:
        _commit(commit)


def _commits(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _serial(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise ValueError(f"serial must be a whole number from 0 to 2**53 - 1, not {value!r:.40}")


def _reason(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if len(value) > MAX_REASON or _CONTROL.search(value):
        raise ValueError(f"reason: one line of at most {MAX_REASON} characters, not {value!r:.60}")


def one_line(text: str) -> str:
    """``text`` as a ``reason``: control characters become spaces, cut to ``MAX_REASON`` characters."""
    return _CONTROL.sub(" ", text)[:MAX_REASON]


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "none"


@attrs.frozen
class DeployRecord:
    """The cluster's deploy state. The default (``DeployRecord()``) is what an absent key means.

    ``bad`` lists the commits that failed, newest last, at most ``MAX_BAD``; ``target`` is the commit being rolled
    out (None: no rollout), ``serial`` counts rollouts started; ``reason`` says why ``is_sane`` is false.
    """

    is_sane: bool = True
    last_known_good: str | None = attrs.field(default=None, validator=_optional_commit)
    bad: tuple[str, ...] = attrs.field(default=(), converter=_commits, validator=_bad)
    target: str | None = attrs.field(default=None, validator=_optional_commit)
    serial: int = attrs.field(default=0, validator=_serial)
    reason: str = attrs.field(default="", validator=_reason)

    # the changes the deployer makes: each refuses (``UpdateRefused``) what its current record makes wrong

    def with_rollout(self, commit: str) -> DeployRecord:
        """Start rolling ``commit`` out (``serial`` + 1). Unchanged if it is the target already, or the last known
        good with no rollout in progress.

        Refused while not sane, for a known-bad commit, and while another commit's rollout is in progress: two
        deployers (or one that lost its election without knowing) cannot both start rollouts from one record.
        """
        _commit(commit)
        if commit == self.target or (self.target is None and commit == self.last_known_good):
            return self
        if not self.is_sane:
            raise UpdateRefused(f"no rollout of {_short(commit)}: is_sane is false ({self.reason}): try-again first")
        if commit in self.bad:
            raise UpdateRefused(f"no rollout of {_short(commit)}: it failed before; push a fix or try-again")
        if self.target is not None:
            raise UpdateRefused(
                f"no rollout of {_short(commit)}: the rollout of {_short(self.target)} (serial {self.serial}) "
                "is in progress: confirm it or mark it bad first"
            )
        return attrs.evolve(self, target=commit, serial=self.serial + 1)

    def confirmed(self, commit: str) -> DeployRecord:
        """``commit``'s rollout finished: it is the last known good and nothing rolls out. Unchanged if done already.

        Refused unless ``commit`` is the target: a confirmation from a rollout since superseded changes nothing.
        """
        _commit(commit)
        if self.target is None and self.last_known_good == commit:
            return self
        if self.target != commit:
            raise UpdateRefused(
                f"cannot confirm {_short(commit)}: the rollout in progress is {_short(self.target)} (serial "
                f"{self.serial}); read the deploy state again"
            )
        return attrs.evolve(self, last_known_good=commit, target=None)

    def with_bad(self, commit: str) -> DeployRecord:
        """``commit`` failed: remembered (newest last, the oldest forgotten past ``MAX_BAD``); its rollout ends."""
        _commit(commit)
        bad = self.bad if commit in self.bad else (*self.bad, commit)[-MAX_BAD:]
        return attrs.evolve(self, bad=bad, target=None if self.target == commit else self.target)

    def with_sane(self, sane: bool, why: str = "") -> DeployRecord:
        """``is_sane`` set (false: nothing rolls out until ``tried_again``), with ``why`` as the reason."""
        return attrs.evolve(self, is_sane=sane, reason="" if sane else one_line(why))

    def tried_again(self) -> DeployRecord:
        """The operator's try-again: sane again, the failed commits forgotten (as on one host)."""
        return attrs.evolve(self, is_sane=True, reason="", bad=())

    # JSON

    def to_json(self, write: str = "") -> bytes:
        """Compact, sorted keys; ``write`` (32 hex digits) tells the store's own writes apart, "" for none."""
        data: dict[str, Any] = {
            "is_sane": self.is_sane,
            "last_known_good": self.last_known_good,
            "bad": list(self.bad),
            "target": self.target,
            "serial": self.serial,
            "reason": self.reason,
        }
        if write:
            data["write"] = write
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


@attrs.frozen
class _Stored:
    """A record as read from etcd: the record, its key's ``mod_revision`` (0: absent) and the write's tag."""

    record: DeployRecord
    mod_revision: int
    write: str = ""


def parse_record(value: bytes, key: str = "/<cluster>/deploy") -> tuple[DeployRecord, str]:
    """The record and its write tag, or ``InvalidDeployRecord``: one line, which quotes nothing of the value."""

    def bad(what: str) -> InvalidDeployRecord:
        return InvalidDeployRecord(f"etcd key {key} holds no valid deploy record: {what}: {_FIX.format(key=key)}")

    if len(value) > MAX_VALUE:
        raise bad(f"{len(value)} bytes, at most {MAX_VALUE}")
    try:
        data = json.loads(value.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise bad(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise bad(f"a JSON {type(data).__name__}, not an object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise bad(f"unknown field {unknown[0]!r:.40}")
    checks: list[tuple[str, Callable[[object], bool], str]] = [
        ("is_sane", lambda v: isinstance(v, bool), "true or false"),
        ("last_known_good", lambda v: v is None or _is_commit(v), "null or a commit (40 lowercase hex digits)"),
        ("target", lambda v: v is None or _is_commit(v), "null or a commit (40 lowercase hex digits)"),
        ("serial", lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53, "0 to 2**53 - 1"),
        ("bad", _bad_list, f"a list of at most {MAX_BAD} different commits (40 lowercase hex digits)"),
        ("reason", lambda v: isinstance(v, str) and len(v) <= MAX_REASON and not _CONTROL.search(v), "one line"),
        ("write", lambda v: isinstance(v, str) and _WRITE.fullmatch(v) is not None, "32 lowercase hex digits"),
    ]
    for name, valid, expected in checks:
        if name in data and not valid(data[name]):
            raise bad(f"{name!r} must be {expected}")
    missing = [name for name in ("is_sane", "last_known_good", "bad", "target", "serial") if name not in data]
    if missing:
        raise bad(f"field {missing[0]!r} missing")
    write = data.pop("write", "")
    return DeployRecord(**data), write


def _bad_list(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= MAX_BAD
        and all(_is_commit(commit) for commit in value)
        and len(set(value)) == len(value)
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("a field twice")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode(kv: KeyValue | None, key: str) -> _Stored:
    if kv is None:
        return _Stored(DeployRecord(), 0)
    record, write = parse_record(kv.value, key)
    return _Stored(record, kv.mod_revision, write)


@attrs.frozen
class Unreadable:
    """What a watch hands out while the key holds no valid record: ``error`` is one line to log."""

    error: InvalidDeployRecord
    mod_revision: int


# --- the store (trio shell) ------------------------------------------------------------------------------------------


@attrs.frozen
class _Attempt:
    """A write sent whose outcome is not known yet: it may be in etcd after ``since``, tagged ``write``."""

    write: str
    record: DeployRecord
    since: int  # the key's mod_revision it compared with; absent: the read's revision
    creation: bool  # compared with create_revision == 0: any creation since may be it, not only the first change


@attrs.define(eq=False)
class DeployStore:
    """The record at ``/<cluster>/deploy``: ``read``, ``update`` by compare-and-swap, ``watch``.

    Every write is a transaction on the ``mod_revision`` read (``create_revision == 0`` when the key was absent):
    a write made from an old record never lands; the update is applied again to the newer record instead.

    Exactly once: a write's answer may be lost (a member dies after committing it; the client asks another one,
    whose compare then fails on our own write). Each write carries a random tag (``write``); before applying
    ``fn`` again, ``update`` looks for its last write's tag in the key's changes since the revision it compared
    with (only the first change after that revision can be it). So ``update`` applies ``fn`` at most once, and
    an increment is never counted twice.
    """

    client: EtcdClient
    cluster: str = attrs.field(validator=lambda _, __, value: _cluster(value))
    attempts: int = ATTEMPTS
    patience: float = PATIENCE
    retry_after: float = RETRY_AFTER

    @property
    def key(self) -> str:
        return deploy_key(self.cluster)

    async def read(self) -> tuple[DeployRecord, int]:
        """The record and its ``mod_revision``; absent: the default record and 0. ``InvalidDeployRecord`` if
        the key holds something else."""
        stored = _decode((await self.client.get(self.key.encode())).kv, self.key)
        return stored.record, stored.mod_revision

    async def update(self, fn: Callable[[DeployRecord], DeployRecord]) -> DeployRecord:
        """``fn`` applied to the current record and written by compare-and-swap; the record written is returned.

        On a lost compare, ``fn`` is applied again to the newer record (``ATTEMPTS`` times at most, then
        ``UpdateContended``). ``fn`` may raise (``UpdateRefused``): nothing is written. A record ``fn`` leaves
        equal is not written. ``InvalidDeployRecord``: the key holds no valid record, nothing is written over it.
        While etcd does not answer, tries again every ``retry_after`` for ``patience`` seconds, then lets the
        ``EtcdUnavailable`` through: the update may then have been applied or not (``read`` tells).
        """
        key = self.key.encode()
        deadline = trio.current_time() + self.patience
        pending: _Attempt | None = None
        kv, revision = await self._unavailable_retried(deadline, lambda: self._get(key))
        for _ in range(self.attempts):
            if pending is not None and await self._applied(key, pending, kv, deadline):
                return pending.record
            current = _decode(kv, self.key)
            new = fn(current.record)
            if new == current.record:
                return new
            write = secrets.token_hex(16)
            compare = Compare.mod_revision(key, kv.mod_revision) if kv else Compare.absent(key)
            pending = _Attempt(write, new, kv.mod_revision if kv else revision, kv is None)
            put, get = Op.put(key, new.to_json(write)), Op.get(key)
            try:
                txn = await self.client.txn([compare], [put], [get])
            except EtcdUnavailable:
                kv, revision = await self._unavailable_retried(deadline, lambda: self._get(key))
                continue
            if txn.succeeded:
                return new
            [answer] = txn.responses
            kv, revision = getattr(answer, "kv", None), txn.revision
        raise UpdateContended(
            f"the deploy record {self.key} changed before each of {self.attempts} attempts to update it: "
            "too many writers; try again (are several deployers elected?)"
        )

    async def mark_bad(self, commit: str) -> DeployRecord:
        return await self.update(lambda record: record.with_bad(commit))

    async def confirm(self, commit: str) -> DeployRecord:
        return await self.update(lambda record: record.confirmed(commit))

    async def set_sane(self, sane: bool, why: str = "") -> DeployRecord:
        return await self.update(lambda record: record.with_sane(sane, why))

    async def try_again(self) -> DeployRecord:
        return await self.update(lambda record: record.tried_again())

    async def start_rollout(self, commit: str) -> DeployRecord:
        return await self.update(lambda record: record.with_rollout(commit))

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[DeployWatch]:
        """The record now, then each change: ``async with store.watch() as records: async for record in records``.

        Each item is a ``DeployRecord`` (a deleted key: the default) or ``Unreadable``. See ``DeployWatch``.
        """
        watch = DeployWatch(self)
        try:
            await watch.open()
            yield watch
        finally:
            await watch.aclose()

    async def _get(self, key: bytes) -> tuple[KeyValue | None, int]:
        answer = await self.client.get(key)
        return answer.kv, answer.revision

    async def _unavailable_retried(self, deadline: float, call: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                return await call()
            except EtcdUnavailable:
                if trio.current_time() + self.retry_after > deadline:
                    raise
                await trio.sleep(self.retry_after)

    async def _applied(self, key: bytes, attempt: _Attempt, kv: KeyValue | None, deadline: float) -> bool:
        """Whether ``attempt``'s write is in the key's history, given the key now (``kv``). A compare-and-swap
        write can only be the first change after ``since`` (for a creation: any creation after it), so the
        changes after ``since`` up to the current one are looked through."""
        if kv is None:
            return False  # deleted since (only an operator deletes it): applied or not, the record starts afresh
        if _tag(kv.value) == attempt.write:
            return True
        if kv.mod_revision <= attempt.since:
            return False
        return await self._unavailable_retried(deadline, lambda: self._history(key, attempt, kv.mod_revision))

    async def _history(self, key: bytes, attempt: _Attempt, until: int) -> bool:
        try:
            with trio.fail_after(max(self.patience, 1.0)):
                async with self.client.watch(key, start_revision=attempt.since + 1) as events:
                    for _ in range(HISTORY_EVENTS):
                        event = await events.next()
                        if event.kind == "put" and _tag(event.kv.value) == attempt.write:
                            return True
                        if not attempt.creation or event.kv.mod_revision >= until:
                            return False
        except (Compacted, trio.TooSlowError):
            pass
        raise DeployStateError(
            f"cannot tell whether an update of {self.key} was applied: its changes since revision "
            f"{attempt.since} are compacted or too many; read it (etcdctl get {self.key}) and update again if needed"
        )


def _tag(value: bytes) -> str:
    """The write tag of a stored value, "" if it has none or does not parse."""
    try:
        return parse_record(value)[1]
    except InvalidDeployRecord:
        return ""


@attrs.define(eq=False)
class DeployWatch:
    """The record's successive values, each once, in order: first the current one, then one per change.

    ``next()`` returns a ``DeployRecord`` (the default after a delete) or an ``Unreadable``. The etcd watch under
    it resumes on another member from the next revision when its stream breaks; while no member takes it,
    ``next()`` keeps trying every ``retry_after`` (a warning logged once per outage); when etcd compacted the
    revisions it would resume from, the key is read again (a value already handed out is not repeated).
    Cancelling ``next()`` loses nothing: the next call carries on from where it was.
    """

    store: DeployStore
    _first: DeployRecord | Unreadable | None = None
    _events: Watch | None = None
    _exits: AsyncExitStack = attrs.field(factory=AsyncExitStack)
    _last: int = -1  # the mod_revision of what was handed out last (0: absent)
    _outage: bool = False
    _compacted: bool = False  # the watch's next revision is gone: read the key again first

    def __aiter__(self) -> DeployWatch:
        return self

    async def __anext__(self) -> DeployRecord | Unreadable:
        return await self.next()

    async def open(self) -> None:
        key = self.store.key.encode()
        answer = await self.store.client.get(key)
        self._first = self._item(answer.kv)
        self._events = await self._exits.enter_async_context(
            self.store.client.watch(key, start_revision=answer.revision + 1)
        )

    async def next(self) -> DeployRecord | Unreadable:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        assert self._events is not None, "open() first"
        while True:
            try:
                if self._compacted:
                    item = await self._reread()
                    if item is not None:
                        return item
                event = await self._events.next()
            except Compacted:
                self._compacted = True
                continue
            except EtcdUnavailable as exc:
                if not self._outage:
                    log.warning("watching %s: %s (trying every %g s)", self.store.key, exc, self.store.retry_after)
                self._outage = True
                await trio.sleep(self.store.retry_after)
                continue
            if self._outage:
                log.info("watching %s again", self.store.key)
                self._outage = False
            return self._item(event.kv if event.kind == "put" else None)

    async def _reread(self) -> DeployRecord | Unreadable | None:
        """After compaction: the key as it is now (None if it is what was handed out last), watched from there."""
        assert self._events is not None
        answer = await self.store.client.get(self.store.key.encode())
        self._events.next_revision, self._compacted = answer.revision + 1, False
        revision = answer.kv.mod_revision if answer.kv else 0
        if revision == self._last:
            return None
        return self._item(answer.kv)

    def _item(self, kv: KeyValue | None) -> DeployRecord | Unreadable:
        self._last = kv.mod_revision if kv else 0
        try:
            return _decode(kv, self.store.key).record
        except InvalidDeployRecord as exc:
            return Unreadable(exc, self._last)

    async def aclose(self) -> None:
        await self._exits.aclose()


# --- the election -----------------------------------------------------------------------------------------------------


@attrs.frozen
class Term:
    """Our hold of the deployer key: written for ``agent`` on etcd lease ``lease_id`` at ``revision``."""

    agent: str
    lease_id: int
    revision: int


def deployer_value(agent: str) -> bytes:
    return json.dumps({"agent": agent}, separators=(",", ":"), sort_keys=True).encode()


def parse_deployer(value: bytes) -> str:
    """The agent a deployer key names; "" for a value that does not parse: an unknown deployer, still one."""
    try:
        data = json.loads(value.decode("utf-8")) if len(value) <= 1024 else None
    except (ValueError, RecursionError):
        return ""
    agent = data.get("agent") if isinstance(data, dict) else None
    return agent if isinstance(agent, str) and agent and not _CONTROL.search(agent) else ""


@attrs.define(eq=False)
class Election:
    """One deployer per cluster: the agent whose campaign created ``/<cluster>/deployer`` on its etcd lease.

    An agent campaigns on the etcd lease it already holds for its groups' keys (never a second one): the key goes
    when that lease does, so a lost host's deployer is replaced within the lease's TTL, and an agent that lost
    its etcd lease has lost the election with it. ``wait_lost()`` returns when the key is deleted (our etcd lease
    expired or was revoked, we resigned, an operator deleted it) or names someone else.

    **Why two deployers at once do no harm.** An agent cut off from etcd, or frozen, may still believe it leads
    after its etcd lease expired and another agent won; it learns otherwise only when etcd answers again (or
    when its view of its etcd lease ends, which the agent must treat as lost leadership too). Until then both may
    decide. Their decisions meet only in ``/<cluster>/deploy``, and every write there is a compare-and-swap on
    the ``mod_revision`` read (``DeployStore.update``): of two writes made from the same record, one lands; the
    other is applied again to the newer record, where ``with_rollout`` refuses while the other's rollout is in
    progress and ``confirmed`` refuses a commit that is not the target. So two deployers cannot both start
    rollouts from one record, nor confirm a superseded one; the worst a stale deployer can do is what a current
    one could do from the same record (mark a commit that failed under it bad). What agents do follows the
    record (its ``target`` and ``serial``), never a deployer's say-so.
    """

    client: EtcdClient
    cluster: str = attrs.field(validator=lambda _, __, value: _cluster(value))
    retry_after: float = RETRY_AFTER
    term: Term | None = None  # ours, as far as we know: set by a won campaign, cleared by resign or a loss

    @property
    def key(self) -> str:
        return deployer_key(self.cluster)

    @property
    def leading(self) -> bool:
        return self.term is not None

    async def campaign(self, agent: str, lease_id: int) -> bool:
        """Whether ``agent`` leads now: it created the key on ``lease_id``, or had (an answer lost, or won
        before). False: someone else leads; campaign again once the key is deleted (a watch, or ``leader()`` is
        None). ``LeaseNotFound``: ``lease_id`` is gone; the agent campaigns on its next etcd lease.
        ``InvalidDeployer``: the key holds a value no campaign wrote, which only an operator can remove."""
        if not agent or _CONTROL.search(agent) or lease_id <= 0:
            raise ValueError(f"campaign with an agent name and an etcd lease id, not {agent!r:.40}, {lease_id}")
        acquired = await self.client.create_if_absent(self.key.encode(), deployer_value(agent), lease=lease_id)
        holder = acquired.holder
        if not acquired.mine:
            self.term = None
            if holder is not None and (holder.lease == 0 or not parse_deployer(holder.value)):
                raise InvalidDeployer(
                    f"etcd key {self.key} holds no deployer a campaign wrote ("
                    + ("it is attached to no etcd lease" if holder.lease == 0 else "it does not name an agent")
                    + f"): no agent can be elected while it is there: delete it (etcdctl del {self.key})"
                )
            return False
        revision = acquired.revision if acquired.created or holder is None else holder.mod_revision
        self.term = Term(agent, lease_id, revision)
        return True

    async def leader(self) -> str | None:
        """The agent that leads, None if nobody does ("" : the key holds a value that does not parse)."""
        kv = (await self.client.get(self.key.encode())).kv
        return None if kv is None else parse_deployer(kv.value)

    async def resign(self) -> None:
        """Delete the key if it is still the one our campaign wrote (at its ``mod_revision``); else nothing."""
        term, self.term = self.term, None
        if term is not None:
            await self.client.delete_if_unchanged(self.key.encode(), mod_revision=term.revision)

    async def wait_lost(self) -> str:
        """Return (a reason, one line) once the key is no longer ours; at once if we do not lead.

        Watches the key from our write on: a delete (our etcd lease expired or was revoked, an operator) or a
        value naming someone else ends the term. Keeps watching through an etcd without answers: the agent ends
        the term itself when its view of its etcd lease ends (cancel this, call ``lost()``)."""
        term = self.term
        if term is None:
            return "not the deployer"
        key = self.key.encode()
        async with self.client.watch(key, start_revision=term.revision + 1) as events:
            while True:
                try:
                    event = await events.next()
                except Compacted:
                    answer = await self.client.get(key)
                    if not self._still_ours(answer.kv, term):
                        return self.lost("the deployer key changed while etcd compacted its history")
                    events.next_revision = answer.revision + 1
                    continue
                except EtcdUnavailable:
                    await trio.sleep(self.retry_after)
                    continue
                if event.kind == "delete":
                    return self.lost("the deployer key was deleted (our etcd lease ended, or an operator)")
                if not self._still_ours(event.kv, term):
                    return self.lost(f"the deployer key names {parse_deployer(event.kv.value) or 'someone else'}")

    def lost(self, reason: str) -> str:
        """Leadership is over (the agent's etcd lease is gone, or its view of it ended): forget the term."""
        self.term = None
        return reason

    @staticmethod
    def _still_ours(kv: KeyValue | None, term: Term) -> bool:
        return kv is not None and kv.lease == term.lease_id and parse_deployer(kv.value) == term.agent
