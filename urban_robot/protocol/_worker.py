"""The worker's side of protocol v1 as a state machine, sans-IO, in h11's manner.

Inputs are method calls carrying ``now`` (a monotonic clock of the shell's choosing); each returns
the *effects* the shell must carry out, in order. The shell calls :meth:`WorkerProtocol.timer` when
``now`` reaches :meth:`WorkerProtocol.next_deadline`. Nothing here reads a clock, touches a socket or
calls user code, so every decision — when a lease ends, when a worker fences itself, when a
connection counts as hung, how long to back off — is made once, here, for the trio client and the
asyncio discord.py integration alike, and is tested on a fake clock.

The connection, as this machine sees it::

    DISCONNECTED ──connected()──▶ IDENTIFYING ──hello──▶ SERVING ──disconnected()──▶ DISCONNECTED
          ▲  └──refused()──▶ FINISHED                        │                          (Reconnect after back-off)
          └──────────────────────────────────────────────────┘
    any ──(shutdown acknowledged, or failed)──▶ FINISHED

Processing (docs/protocol.md §8.1) is a property of the lease view, not of the connection: it holds
while a grant has been renewed and the renewal's ``sent_at + lease`` has not passed, connected or not.
``cmd coma``/``cmd shutdown`` drop the grant at once; the :class:`StopProcessing` effect (drain the
user's work in flight) is carried out *before* the final cache and the acknowledgement are sent, so
the acknowledgement is the supervisor's proof that the worker stopped (§8.1 rule 5). A drain is
bounded by the lease: the effect carries the instant this worker's own view of the lease ends (taken
before the grant was dropped), and no work in flight outlives it (§8.1 rule 3) — the supervisor may
promote another worker when its own, later, view ends, acknowledgement or not.

A sharded worker (``hello`` carries ``shards`` and ``shard_count``, §18.3) IDENTIFYs each shard only with a slot:
:meth:`WorkerProtocol.ask_identify` sends ``identify_slot``; ``cmd identify`` becomes :class:`SlotGranted`; the
shell calls :meth:`WorkerProtocol.use_identify_grant` just before the IDENTIFY goes, which throws away a grant
older than ``identify_margin`` (ask again). A RESUME needs no slot. Asks the supervisor forgot with a lost
connection go again after the next hello; a grant nobody asked for is ignored.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from typing import Any

import attrs

from ._cache import Assembly, CacheChange, CacheMap, plain_change, plain_value
from ._endpoint import Backoff, Timeouts
from ._errors import MalformedMessage, ShardError
from ._lease import HeartbeatSent, LeaseView
from ._messages import (
    CacheSync,
    Coma,
    Failed,
    HealthCheck,
    HealthReport,
    Heartbeat,
    Hello,
    Identify,
    IdentifySlot,
    MayIdentify,
    Message,
    Ok,
    ProcessCommands,
    Ready,
    Shutdown,
    Stop,
    UnknownCommand,
    parse_hello,
    parse_push,
    parse_renewal,
    redact,
)
from ._shards import IDENTIFY_MARGIN


class Link(enum.Enum):
    DISCONNECTED = "disconnected"
    IDENTIFYING = "identifying"
    SERVING = "serving"
    FINISHED = "finished"


# -- effects: what the shell must do -------------------------------------------------------------
@attrs.frozen
class Outgoing:
    """One message sent with an ack id; the shell feeds its answer to :meth:`WorkerProtocol.answered`."""

    id: int
    message: Message
    session: int  # the connection it belongs to: never written on another one
    sent_at: float  # taken before the write: a heartbeat's lease counts from here (§8.1)
    deadline: float  # no answer by then: the connection is hung
    beat: HeartbeatSent | None = None  # for heartbeats: the grant it was sent under


@attrs.frozen
class Send:
    request: Outgoing


@attrs.frozen
class Login:
    """The first ``hello``: log the bot in to Discord with ``token`` (never log it). A sharded bot runs exactly
    ``shards`` of ``shard_count`` (both None: unsharded, as in v1) and IDENTIFYs each only with a slot (§18.3)."""

    token: str = attrs.field(repr=False)
    shards: tuple[int, ...] | None = None
    shard_count: int | None = None


@attrs.frozen
class SlotGranted:
    """§18.3: the IDENTIFY slot asked for ``shard_id`` came (or was held already). The shell wakes what waits
    for it, which calls :meth:`WorkerProtocol.use_identify_grant` just before sending the IDENTIFY."""

    shard_id: int


@attrs.frozen
class SlotRefused:
    """§18.3: the supervisor refused the slot asked for ``shard_id`` (not this worker's shard): do not IDENTIFY."""

    shard_id: int
    reason: str


@attrs.frozen
class StartProcessing:
    epoch: int


@attrs.frozen
class StopProcessing:
    """Stop acting for users, before the next effect. ``drain``: let work in flight finish, but never past
    ``lease_ends`` — the instant this worker's own view of the lease ends (§8.1 rule 3) — nor past the
    shell's drain time-out; then cancel it. Not ``drain``: cancel it at once."""

    reason: str
    drain: bool
    lease_ends: float = -math.inf

    def drain_until(self, now: float, timeout: float) -> float:
        """When work in flight must be over: ``min(now + timeout, lease_ends)`` for a drain, ``now`` otherwise."""
        return min(now + timeout, self.lease_ends) if self.drain else now


@attrs.frozen
class CollectCache:
    """Call the bot's ``get_cache`` and feed the value to :meth:`WorkerProtocol.cache_collected`."""


@attrs.frozen
class ApplyCache:
    """Give ``cache`` (a push from the supervisor, decoded) to the bot's ``set_cache``: the plain value, or
    for a :class:`CacheMap` bot the map itself, already updated."""

    cache: Any = attrs.field(repr=False)


@attrs.frozen
class RunHealthCheck:
    """Run the health checks and feed the report to :meth:`WorkerProtocol.health_collected`."""


@attrs.frozen
class DropConnection:
    """The connection is broken or hung: close it (``disconnected`` follows)."""

    reason: str


@attrs.frozen
class Reconnect:
    delay: float


@attrs.frozen
class Finish:
    """End the worker. ``error`` set: it ends as a failure (the supervisor refused it, or Discord did)."""

    reason: str
    error: str | None = None


@attrs.frozen
class Log:
    level: int
    message: str


Effect = (
    Send
    | Login
    | SlotGranted
    | SlotRefused
    | StartProcessing
    | StopProcessing
    | CollectCache
    | ApplyCache
    | RunHealthCheck
    | DropConnection
    | Reconnect
    | Finish
    | Log
)


def _error_of(answer: Any) -> str | None:
    return answer["error"] if isinstance(answer, dict) and isinstance(answer.get("error"), str) else None


@attrs.define(eq=False)
class WorkerProtocol:
    """One worker's protocol state, for the whole life of the process (connections come and go)."""

    identity: Identify
    timeouts: Timeouts = attrs.Factory(Timeouts)
    backoff: Backoff = attrs.Factory(Backoff)
    rng: random.Random = attrs.Factory(random.Random)
    lease: LeaseView = attrs.Factory(LeaseView)
    link: Link = Link.DISCONNECTED
    hello: Hello | None = None
    session: int = 0  # connections that got as far as connected()
    sessions_served: int = 0  # connections that got a hello
    discord_ready: bool = False
    gateway: bool | None = None  # the bot's Discord Gateway: up, down, or not reported
    interval: float = 30.0
    _announced: bool = False  # StartProcessing said, StopProcessing not yet
    _logged_in: bool = False
    _attempt: int = 0
    _hello_this_session: bool = False
    _next_beat: float = float("inf")
    _pending: dict[int, Outgoing] = attrs.Factory(dict)
    _ids: int = 0
    # A coma/shutdown/failed waiting for the final cache: what to send once the cache is answered, and
    # whether to finish after that.
    _after_cache: tuple[Message, Finish | None] | None = None
    _final_cache_request: int | None = None
    _finishing: Finish | None = None  # finish once request _finish_after is answered (or the connection goes)
    _finish_after: int | None = None
    # The cache (docs/protocol.md §11): a CacheMap bot's own map (``mapped``: deltas, no CollectCache), or
    # for a plain cache the values pushed to us. ``_cache_in_step``: the supervisor holds what we hold (on
    # this connection), so a delta applies.
    cache: CacheMap = attrs.Factory(CacheMap)
    mapped: bool = False
    _cache_in_step: bool = False
    _syncs: int = 0
    # A plain cache: the fingerprint of what the supervisor holds, and of each sync in flight (an unchanged
    # cache is sent as an empty delta: a hand-over then moves nothing the standbys do not have).
    _plain_kept: bytes | None = None
    _plain_sent: dict[int, bytes] = attrs.Factory(dict)
    _incoming: Assembly = attrs.Factory(lambda: Assembly(limit=1 << 62))
    # Identify slots (§18.3): a grant is used within ``identify_margin`` of its arrival or thrown away. Each
    # shard waiting for one: the id of its ``identify_slot`` on this connection (None: to be sent after the next
    # hello — the supervisor forgets a worker's asks with its connection). Each grant not yet used: when it came.
    identify_margin: float = IDENTIFY_MARGIN
    _slot_asks: dict[int, int | None] = attrs.Factory(dict)
    _slot_grants: dict[int, float] = attrs.Factory(dict)

    # -- what the shell asks ------------------------------------------------------------------------
    def processing(self, now: float) -> bool:
        """May the bot act for users now? A renewed grant whose view has not ended (§8.1)."""
        return self.link is not Link.FINISHED and self.lease.processing(now)

    @property
    def finished(self) -> bool:
        return self.link is Link.FINISHED

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shard ids this worker runs, from ``hello`` (None: unsharded, or no hello yet)."""
        return self.hello.shards if self.hello is not None else None

    @property
    def shard_count(self) -> int | None:
        """The bot's shard count, from ``hello`` (None: unsharded, or no hello yet)."""
        return self.hello.shard_count if self.hello is not None else None

    @property
    def slot_asks(self) -> frozenset[int]:
        """The shards waiting for an identify slot."""
        return frozenset(self._slot_asks)

    def next_deadline(self) -> float | None:
        """When to call :meth:`timer` next (None: nothing is timed)."""
        deadlines = [r.deadline for r in self._pending.values()]
        if self.link is Link.SERVING:
            deadlines.append(self._next_beat)
        if self._announced:
            deadlines.append(self.lease.until)
        finite = [d for d in deadlines if d != float("inf")]
        return min(finite) if finite else None

    # -- the connection -------------------------------------------------------------------------------
    def connected(self, now: float) -> list[Effect]:
        """The Socket.IO CONNECT was acknowledged: identify, with a claim on the grant held (§8.5)."""
        if self.link is Link.FINISHED:
            return [DropConnection("the worker has finished")]
        self.session += 1
        self.link = Link.IDENTIFYING
        self._hello_this_session = False
        self._cache_in_step = False  # a new connection: the supervisor checks anew what we hold
        self._plain_kept = None
        self._incoming.reset()
        grant = self.lease.grant
        claim = {"epoch": grant.epoch, "lease_token": grant.lease_token} if grant is not None else {}
        identify = Identify(**{**self.identity.payload(), **claim})
        return [self._send(identify, now)]

    def refused(self, now: float, message: str) -> list[Effect]:
        """CONNECT_ERROR: the secret was refused. A configuration error: not retried."""
        self.link = Link.FINISHED
        error = f"the supervisor refused this worker's secret ({message}): check URBAN_ROBOT_SECRET"
        return [*self._stop("refused by the supervisor", drain=False), Finish("refused", error)]

    def disconnected(self, now: float, why: str = "connection lost") -> list[Effect]:
        """The connection ended (or could not be made). Processing goes on until the lease view ends (§8.1 rule 3)."""
        self._pending.clear()  # their answers will never come: no renewal from them
        self._next_beat = float("inf")
        self._slot_asks = dict.fromkeys(self._slot_asks)  # forgotten by the supervisor: asked again after hello
        if self.link is Link.FINISHED:
            return []
        if self._finishing is not None:  # a shutdown in progress: the supervisor knows, or will see the exit
            finish, self._finishing = self._finishing, None
            self.link = Link.FINISHED
            return [*self._stop(finish.reason, drain=False), finish]
        if self._after_cache is not None and self._after_cache[1] is not None:  # leaving, the cache not yet sent
            finish = self._after_cache[1]
            self._after_cache, self.link = None, Link.FINISHED
            return [*self._stop(finish.reason, drain=False), finish]
        self._after_cache, self._final_cache_request = None, None
        self.link = Link.DISCONNECTED
        if self._hello_this_session:
            self._attempt = 0
        self._hello_this_session = False
        delay = self.backoff.delay(self._attempt, self.rng, holding=self.lease.grant is not None)
        self._attempt += 1
        return [Log(logging.WARNING, f"connection to the supervisor lost ({why}); reconnecting in {delay:.2f} s"),
                Reconnect(delay)]  # fmt: skip

    # -- what comes in --------------------------------------------------------------------------------
    def answered(self, request_id: int, answer: Any, now: float) -> list[Effect]:
        """The ack of a request we sent (None: an empty ack)."""
        request = self._pending.pop(request_id, None)
        if request is None or request.session != self.session:
            return []  # from a connection since gone, or timed out already
        out: list[Effect] = []
        message = request.message
        if isinstance(message, Identify):
            return self._on_identify_answer(answer, now)
        if isinstance(message, Heartbeat):
            self._on_renewal(request, answer, now, out)
        elif isinstance(message, CacheSync):
            self._on_cache_answer(request_id, message, answer, now, out)
        elif isinstance(message, IdentifySlot):
            self._on_slot_answer(request_id, message.shard_id, answer, out)
        elif (error := _error_of(answer)) is not None:
            out.append(Log(logging.ERROR, f"the supervisor refused {message.event!r}: {error}"))
        if request_id == self._final_cache_request and self._after_cache is not None:
            (final, finish), self._after_cache, self._final_cache_request = self._after_cache, None, None
            out.append(self._send_final(final, finish, now))
        if self._finish_after == request_id and self._finishing is not None:
            finish, self._finishing = self._finishing, None
            self.link = Link.FINISHED
            out.append(finish)
        return out

    def pushed(self, event: str, data: Any, now: float) -> list[Effect]:
        """A push from the supervisor: ``hello``, ``cmd`` or ``cache_sync``, in arrival order."""
        try:
            push = parse_push(event, data)
        except MalformedMessage as exc:
            return [Log(logging.ERROR, f"ignored a malformed message from the supervisor: {exc}")]
        if push is None:
            return [Log(logging.INFO, f"ignored unknown event {event[:80]!r} from the supervisor")]
        out: list[Effect] = []
        if isinstance(push, Hello):
            if self.link is Link.IDENTIFYING:  # the push twin came before the ack: act on the first (§5.1)
                self._drop_pending(Identify)
                self._on_hello(push, now, out)
        elif isinstance(push, CacheSync):
            self._on_cache_push(push, out)
        elif isinstance(push, HealthCheck):
            out.append(RunHealthCheck())
        elif isinstance(push, ProcessCommands):
            out.append(Log(logging.INFO, f"granted epoch {push.epoch} ({push.reason})"))
            self.lease.take(push.epoch, push.lease_token)
            out.append(self._beat(now))  # the grant means nothing until renewed (§8.1 rule 1)
        elif isinstance(push, Stop):
            self._on_stop(push, now, out)
        elif isinstance(push, MayIdentify):
            self._on_slot(push.shard_id, now, out)
        elif isinstance(push, UnknownCommand):
            out.append(Log(logging.INFO, f"ignored unknown cmd {push.name[:80]!r}"))
        elif not isinstance(push, Ok):  # ok grants nothing (§6)
            out.append(Log(logging.WARNING, f"unexpected {push!r}"))
        return out

    def timer(self, now: float) -> list[Effect]:
        """``now`` reached :meth:`next_deadline`."""
        out: list[Effect] = []
        late = [r for r in self._pending.values() if r.deadline <= now]
        if late:
            first = min(late, key=lambda r: r.deadline)
            self._pending.clear()
            out.append(
                DropConnection(f"no answer to {first.message.event!r} within {first.deadline - first.sent_at:g} s")
            )
        if self._announced and not self.lease.processing(now):
            out.append(Log(logging.WARNING, "the lease ran out without a renewal: stopped processing"))
            out.extend(self._stop("lease ran out", drain=False))
        if self.link is Link.SERVING and now >= self._next_beat and not late:
            out.append(self._beat(now))
        return out

    # -- what the bot says ----------------------------------------------------------------------------
    def discord_is_ready(self, now: float) -> list[Effect]:
        """The bot is logged in to Discord (READY): tell the supervisor, now and after every reconnection."""
        self.discord_ready = True
        self.gateway = True if self.gateway is None else self.gateway
        return [self._send(Ready(), now)] if self.link is Link.SERVING else []

    def gateway_changed(self, up: bool, now: float) -> list[Effect]:
        """The bot's Gateway connection went up or down: a heartbeat says so at once (a holder may be replaced)."""
        if self.gateway is up:
            return []
        self.gateway = up
        return [self._beat(now)] if self.link is Link.SERVING else []

    def health_collected(self, report: HealthReport, now: float) -> list[Effect]:
        return [self._send(report, now)] if self.link is Link.SERVING else []

    def cache_collected(self, cache: Any, now: float) -> list[Effect]:
        """The bot's cache, asked for by :class:`CollectCache` (the final cache of a coma/shutdown)."""
        if self._after_cache is None or self.link is not Link.SERVING:
            return []
        sends = self.sync_cache(cache, now)
        self._final_cache_request = sends[-1].request.id if sends else None
        return list(sends)

    def sync_cache(self, cache: Any, now: float) -> list[Send]:
        """A sync of the bot's cache, in parts (§5.5): a plain ``cache`` whole; a :class:`CacheMap` bot's
        changed keys (``cache`` ignored), or all of them while the supervisor may not hold the rest.
        Nothing while not connected. The last part's answer is the sync's."""
        if self.link is not Link.SERVING:
            if self.mapped:
                self.cache.mark_all()  # whoever we talk to next needs all of it
            return []
        self._syncs += 1
        if self.mapped:
            change = self.cache.take(full=not self._cache_in_step)
        else:
            change = plain_change(cache)
            digest = self._plain_sent[self._syncs] = change.digest()
            if self._cache_in_step and digest == self._plain_kept:
                change = CacheChange(False)  # unchanged since the supervisor kept it: nothing to move
        return [self._send(part, now) for part in change.parts(self._syncs)]

    def send(self, message: Message, now: float) -> list[Effect]:
        """A message the bot sends by itself (a cache update, a custom event): sent now if connected."""
        return [self._send(message, now)] if self.link is Link.SERVING else []

    def ask_identify(self, shard_id: int, now: float) -> list[Effect]:
        """A shard is about to IDENTIFY (its Gateway connection is open, Discord's HELLO came): ask for a slot
        (§18.3). :class:`SlotGranted` follows when the supervisor grants it — at once if a grant still fresh is
        held. Asking again while waiting sends nothing; while not connected, the ask goes after the next hello.
        A shard this worker does not run (or an unsharded worker) raises :class:`ShardError`: it never asks."""
        shards = self.shards
        if shards is None or shard_id not in shards:
            ours = "this worker is not sharded" if shards is None else f"this worker runs shards {list(shards)}"
            raise ShardError(f"no identify slot for shard {shard_id!r}: {ours}; IDENTIFY only the shards hello gave")
        if self._fresh_grant(shard_id, now):
            return [SlotGranted(shard_id)]
        if shard_id in self._slot_asks:
            return []
        self._slot_asks[shard_id] = None
        return self._send_ask(shard_id, now)

    def use_identify_grant(self, shard_id: int, now: float) -> bool:
        """Just before sending ``shard_id``'s IDENTIFY: True uses the grant (it came at most ``identify_margin``
        seconds ago). False: none, or one too old, now thrown away — ask again (:meth:`ask_identify`)."""
        came = self._slot_grants.pop(shard_id, None)
        return came is not None and now - came <= self.identify_margin

    def withdraw_identify(self, shard_id: int) -> None:
        """The shard no longer waits (its connection attempt was given up): a grant that comes is ignored. The
        supervisor keeps the ask's place until then; asking again before the grant keeps it."""
        self._slot_asks.pop(shard_id, None)
        self._slot_grants.pop(shard_id, None)

    def beat(self, now: float) -> list[Effect]:
        """A heartbeat now, for the grant held (also what the timer does every ``interval``)."""
        return [self._beat(now)] if self.link is Link.SERVING else []

    def coma(self, reason: str, now: float) -> list[Effect]:
        """Stop processing by ourselves, then tell the supervisor (releases the lease)."""
        out = self._drop_and_drain("coma")
        if self.link is Link.SERVING:  # unasked: no final cache (§5.6)
            out.append(self._send(Coma(reason), now))
        return out

    def shutdown(self, reason: str, now: float) -> list[Effect]:
        """Stop processing; the final cache if we held the lease; ``shutdown``; then finish."""
        return self._leave(Shutdown(reason), Finish(reason), now)

    def fail(self, reason: str, hint: str, now: float) -> list[Effect]:
        """The bot cannot work (Discord refused its login for good): say why (§5.9), then end as a failure."""
        error = f"{reason}: {hint}" if hint else reason
        return self._leave(Failed(reason, hint), Finish(reason, error), now)

    # -- inside -----------------------------------------------------------------------------------------
    def _send(self, message: Message, now: float) -> Send:
        self._ids += 1
        beat = self.lease.sent(now) if isinstance(message, Heartbeat) else None
        timeout = self.timeouts.health if isinstance(message, HealthReport) else self.timeouts.ack
        request = Outgoing(self._ids, message, self.session, now, now + timeout, beat)
        self._pending[request.id] = request
        return Send(request)

    def _beat(self, now: float) -> Send:
        self._next_beat = now + self.interval
        grant = self.lease.grant
        return self._send(Heartbeat(grant.epoch if grant is not None else None, self.gateway), now)

    def _drop_pending(self, kind: type) -> None:
        for request_id in [i for i, r in self._pending.items() if isinstance(r.message, kind)]:
            del self._pending[request_id]

    def _on_identify_answer(self, answer: Any, now: float) -> list[Effect]:
        if self.link is not Link.IDENTIFYING:
            return []
        try:
            hello = parse_hello(answer)
        except MalformedMessage as exc:
            return [DropConnection(f"identify answered with {redact(answer)!r}: {exc}")]
        out: list[Effect] = []
        self._on_hello(hello, now, out)
        return out

    def _on_hello(self, hello: Hello, now: float, out: list[Effect]) -> None:
        moved = self.hello is not None and (self.hello.shards, self.hello.shard_count) != (
            hello.shards,
            hello.shard_count,
        )
        self.hello, self.link, self.interval = hello, Link.SERVING, hello.interval
        if moved:  # a running bot cannot change its shards: end, the supervisor starts one with the new ones
            hint = "the supervisor gave this worker other shards than at its start; a new worker must run them"
            out.extend(self.fail("shards changed", hint, now))
            return
        self._hello_this_session = True
        self.sessions_served += 1
        out.append(Log(logging.INFO, f"hello: protocol {hello.protocol}, interval {hello.interval:g} s, "
                                     f"lease {hello.lease:g} s, epoch {hello.epoch}"))  # fmt: skip
        grant = self.lease.grant
        beat_now = False
        if grant is not None and hello.process_commands and hello.epoch == grant.epoch:
            beat_now = True  # adopted: renew at once (§8.5)
        elif grant is not None:
            out.append(Log(logging.WARNING, f"the supervisor did not adopt epoch {grant.epoch}: dropping it"))
            self.lease.drop()
            out.extend(self._stop("grant not adopted", drain=False))
        if not self._logged_in:
            self._logged_in = True
            out.append(Login(hello.token, hello.shards, hello.shard_count))
        if beat_now:
            out.append(self._beat(now))
        else:
            self._next_beat = now + self.interval
        if self.discord_ready:
            out.append(self._send(Ready(), now))  # again after each reconnection (§5.3)
        self._resume_asks(hello, now, out)

    def _send_ask(self, shard_id: int, now: float) -> list[Effect]:
        if self.link is not Link.SERVING:
            return []
        send = self._send(IdentifySlot(shard_id), now)
        self._slot_asks[shard_id] = send.request.id
        return [send]

    def _fresh_grant(self, shard_id: int, now: float) -> bool:
        came = self._slot_grants.get(shard_id)
        if came is not None and now - came > self.identify_margin:
            del self._slot_grants[shard_id]  # too old to use: Discord may count it in this key's window already
            return False
        return came is not None

    def _on_slot(self, shard_id: int, now: float, out: list[Effect]) -> None:
        if self._slot_asks.get(shard_id) is None:  # not asked for, or not on this connection
            out.append(Log(logging.INFO, f"ignored an identify slot for shard {shard_id}: not asked for"))
            return
        del self._slot_asks[shard_id]
        self._slot_grants[shard_id] = now
        out.append(SlotGranted(shard_id))

    def _on_slot_answer(self, request_id: int, shard_id: int, answer: Any, out: list[Effect]) -> None:
        error = _error_of(answer)
        if error is None or self._slot_asks.get(shard_id) != request_id:
            return  # queued: the grant comes as cmd identify
        del self._slot_asks[shard_id]
        out.append(Log(logging.ERROR, f"the supervisor refused an identify slot for shard {shard_id}: {error}"))
        out.append(SlotRefused(shard_id, error))

    def _resume_asks(self, hello: Hello, now: float, out: list[Effect]) -> None:
        """After a hello: the asks the supervisor forgot with the last connection go again."""
        for shard_id in [s for s, sent in self._slot_asks.items() if sent is None]:
            if hello.shards is not None and shard_id in hello.shards:
                out.extend(self._send_ask(shard_id, now))
            else:
                del self._slot_asks[shard_id]
                out.append(SlotRefused(shard_id, "no longer one of this worker's shards"))

    def _on_renewal(self, request: Outgoing, answer: Any, now: float, out: list[Effect]) -> None:
        sent = request.beat
        assert sent is not None
        try:
            renewal = parse_renewal(answer)
        except MalformedMessage:
            if sent.grant is not None:
                out.append(
                    Log(logging.WARNING, f"heartbeat for epoch {sent.grant.epoch} not renewed: {redact(answer)!r}")
                )
            return
        outcome = self.lease.answer(sent, renewal, now)
        if outcome == "renewed" and not self._announced:
            grant = self.lease.grant
            assert grant is not None
            self._announced = True
            out.append(Log(logging.INFO, f"processing under epoch {grant.epoch}"))
            out.append(StartProcessing(grant.epoch))
        elif outcome == "fenced":
            out.append(Log(logging.WARNING, f"fenced off: the supervisor answered {renewal!r}"))
            out.extend(self._stop("fenced off", drain=False))
        elif outcome == "late":
            out.append(Log(logging.WARNING, "a renewal came after the lease it granted had ended"))

    def _on_stop(self, stop: Stop, now: float, out: list[Effect]) -> None:
        out.append(Log(logging.INFO, f"asked for {stop.name}: {stop.reason}"))
        out.extend(self._drop_and_drain(stop.name))  # carried out before anything below is sent (§8.1 rule 5)
        final: Coma | Shutdown = Shutdown(stop.reason) if stop.shutdown else Coma(stop.reason)
        finish = Finish(stop.reason) if stop.shutdown else None
        if stop.cache_sync:
            self._after_cache = (final, finish)
            self._collect(now, out)
        else:
            out.append(self._send_final(final, finish, now))

    def _collect(self, now: float, out: list[Effect]) -> None:
        """The final cache: a CacheMap bot's changes go at once; a plain cache is asked of the bot first."""
        if not self.mapped:
            out.append(CollectCache())
            return
        sends = self.sync_cache(None, now)
        self._final_cache_request = sends[-1].request.id
        out.extend(sends)

    def _on_cache_answer(self, request_id: int, part: CacheSync, answer: Any, now: float, out: list[Effect]) -> None:
        error = _error_of(answer)
        kept = self._plain_sent.pop(part.sync, None) if part.last else None
        if error is None:
            if part.last:
                self._cache_in_step, self._plain_kept = True, kept
            return
        self._cache_in_step, self._plain_kept = False, None
        if self.mapped:
            self.cache.mark_all()
        if not part.last:
            return  # the supervisor refuses the rest of the sync alike: said once, for its last part
        if isinstance(answer, dict) and answer.get("resync") is True and self.mapped and self.link is Link.SERVING:
            out.append(Log(logging.INFO, f"the supervisor asked for the whole cache ({error})"))
            sends = self.sync_cache(None, now)
            if request_id == self._final_cache_request:
                self._final_cache_request = sends[-1].request.id
            out.extend(sends)
            return
        out.append(Log(logging.ERROR, f"the supervisor refused 'cache_sync': {error}"))

    def _on_cache_push(self, push: CacheSync, out: list[Effect]) -> None:
        try:
            change = self._incoming.add(push)
            if change is None:
                return
            self.cache.apply(change)
            spread = self.mapped and self.cache.spread_plain()  # a plain bot's cache, deployed to a CacheMap bot
            self._plain_kept = None if self.mapped or not change.full else change.digest()
        except MalformedMessage as exc:
            out.append(Log(logging.ERROR, f"ignored a cache push from the supervisor: {exc}"))
            return
        self._cache_in_step = not spread  # spread: the supervisor holds the '' form, the next sync is whole
        out.append(ApplyCache(self.cache if self.mapped else plain_value(self.cache)))

    def _send_final(self, message: Message, finish: Finish | None, now: float) -> Send:
        send = self._send(message, now)
        if finish is not None:
            self._finishing, self._finish_after = finish, send.request.id
        return send

    def _leave(self, message: Shutdown | Failed, finish: Finish, now: float) -> list[Effect]:
        held = self.lease.grant is not None
        out = self._drop_and_drain(message.reason)
        if self.link is not Link.SERVING:
            self.link = Link.FINISHED
            return [*out, finish]
        if held:  # our cache is the newest there is: hand it over first
            self._after_cache = (message, finish)
            self._collect(now, out)
        else:
            out.append(self._send_final(message, finish, now))
        return out

    def _drop_and_drain(self, reason: str) -> list[Effect]:
        """Drop the grant (no new work from this instant) and drain the work in flight until the lease view ends."""
        ends = self.lease.until  # before the drop forgets it
        self.lease.drop()
        return self._stop(reason, drain=True, lease_ends=ends)

    def _stop(self, reason: str, *, drain: bool, lease_ends: float = -math.inf) -> list[Effect]:
        """The edge of processing: said once, and only when it was said to have started."""
        if not self._announced:
            return []
        self._announced = False
        return [StopProcessing(reason, drain, lease_ends)]
