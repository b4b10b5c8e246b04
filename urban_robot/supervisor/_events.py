"""What the supervisor core takes in (events) and gives back (actions). Plain frozen values.

Events carry the worker's id ``sid``: one id per authenticated connection,
chosen by the shell. Time is never read by the core: ``Supervisor.handle``
receives ``now``.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..protocol import CacheChange, CacheImage, CacheSync as CacheSyncMessage


# -- events ---------------------------------------------------------------------
@attrs.frozen
class Connected:
    sid: str
    identity: str  # who the secret says this is (stable across reconnects of one process)
    admin: bool = False
    # The deploy generation the process manager spawned this identity with (None: not a child it knows).
    # It outranks whatever the worker claims in ``identify``: a child cannot promote itself past a deploy.
    generation: int | None = None
    # What the process manager started it from, for the reasons people read ("deploy 747c50f12ab3"); None: unknown.
    release: str | None = None
    # The shard group (index in the plan, docs/protocol.md §18) the process manager spawned it for; 0 unsharded.
    group: int = 0


@attrs.frozen
class Identified:
    sid: str
    version: str
    pid: int | None = None
    generation: int | None = None  # deploy generation, for children the supervisor spawned
    epoch: int | None = None  # the lease epoch a reconnecting holder claims ...
    lease_token: str | None = attrs.field(default=None, repr=False)  # ... and the token that came with it


@attrs.frozen
class Heartbeat:
    sid: str
    epoch: int | None = None
    gateway: bool | None = None  # the worker's Discord Gateway: up, down, or not reported


@attrs.frozen
class Ready:
    sid: str


@attrs.frozen
class HealthReport:
    sid: str
    report: Any  # validated by the core: {"OK": bool, "percent": number, "cogs": {name: bool}}


@attrs.frozen
class CacheSync:
    """One part of a cache sync (§5.5), its entries still bytes."""

    sid: str
    part: CacheSyncMessage


@attrs.frozen
class ComaAck:
    sid: str
    reason: str = ""


@attrs.frozen
class ShutdownAck:
    sid: str
    reason: str = ""


@attrs.frozen
class WorkerFailed:
    """The worker cannot work (Discord refused its login for good): it stopped processing and exits, as a crash."""

    sid: str
    reason: str
    hint: str = ""


@attrs.frozen
class Disconnected:
    sid: str


@attrs.frozen
class Spoke:
    """``sid`` sent an event the shell could not parse: answered with the error, and still a sign of life."""

    sid: str


@attrs.frozen
class Frozen:
    """The kernel reports the process of ``identity`` stopped (SIGSTOP, a debugger): it runs no code at all.

    The process manager's answer to ``CheckFrozen`` (``seen`` None), or what its watch saw unasked: the
    process stopped by a signal (state ``T``, not a debugger's ``t``) at ``seen`` (core time). Only a
    process it spawned (or adopted) is ever reported.
    """

    identity: str
    seen: float | None = None
    group: int = 0  # the shard group it was spawned for


@attrs.frozen
class ProcessExited:
    """The process of ``identity`` was seen to exit: proof it processes nothing any more."""

    identity: str
    returncode: int | None = None
    # A newer generation than the one confirmed (a deploy's or dev mode's candidate) that exited: the
    # deploy failed, and the deployer rolls back. No loss of the running code: not counted, not replaced.
    candidate: bool = False
    uptime: float | None = None  # seconds it lived (None: unknown, e.g. adopted)
    tail: tuple[str, ...] = ()  # the last lines of its output, secrets redacted, control characters escaped
    group: int = 0  # the shard group it was spawned for (its replacement is that group's)


@attrs.frozen
class TimerFired:
    """``now`` reached ``Supervisor.next_deadline()``."""


@attrs.frozen
class TryAgain:
    sid: str | None  # an admin connection, or None when the HTTP API checked the credential


@attrs.frozen
class DeployConfirmed:
    """The deployer saw the new commit's worker promoted: it is the last known good code now."""

    commit: str


@attrs.frozen
class RetireOlder:
    """Generation ``generation`` runs now: shut down (and replace) standbys of older code."""

    generation: int
    group: int | None = None  # in this shard group only (a rolling deploy); None: every group


@attrs.frozen
class RollbackFinished:
    ok: bool
    detail: str = ""


@attrs.frozen
class CandidateStarted:
    """The deployer (or dev mode) spawned child ``identity`` at ``generation`` to put new code through the gate.

    Submitted right after the spawn, before the child can connect. From then on the core watches that
    candidate and gives exactly one ``Verdict`` on it: promoted, or why not (a failed health check, its
    exit or fencing before promotion, no verdict within ``timeout`` seconds, the supervisor stopping).
    There is one candidate at a time: a newer one replaces an older, which gets its verdict ("replaced") at once.
    """

    identity: str
    generation: int
    timeout: float  # seconds from now (core time) until "no verdict in time"
    group: int = 0  # the shard group it was spawned for (a rolling deploy goes group by group)


@attrs.frozen
class Stopping:
    """The supervisor stops (a signal, the admin API, Ctrl+C in dev mode): every worker is asked to shut down.

    From then on the core promotes nobody and asks for no spawn, whatever happens next.
    """

    reason: str


@attrs.frozen
class IdentifyAsked:
    """A sharded worker asks for a slot to IDENTIFY ``shard_id`` (docs/protocol.md §18.3)."""

    sid: str
    shard_id: int


@attrs.frozen
class IdentifyLimit:
    """Discord's session start limit, learnt (GET /gateway/bot) after the start: IDENTIFY slots follow it."""

    limit: Any  # protocol.SessionStartLimit


@attrs.frozen
class ClusterGrant:
    """Several hosts (docs/protocol.md §19): this host's agent holds the group's lease key in etcd for ``identity``
    at ``epoch`` (an etcd revision) and may renew its workers up to ``until`` (core time), no later."""

    group: int
    epoch: int
    identity: str
    until: float


@attrs.frozen
class ClusterStop:
    """Several hosts: no renewal for the group's workers from now on (the key is gone, or the view ran out)."""

    group: int
    reason: str


@attrs.frozen
class CacheReplicated:
    """Several hosts: the group's holder on another host (``origin``) sent its cache ``seq`` (a change on its ``base``,
    or the whole cache when ``base`` is 0); this host keeps it for the day it takes the group over (§19.7)."""

    group: int
    origin: str
    epoch: int
    seq: int
    base: int
    change: CacheChange = attrs.field(repr=False)


Event = (
    Connected
    | Identified
    | Heartbeat
    | Ready
    | HealthReport
    | CacheSync
    | ComaAck
    | ShutdownAck
    | WorkerFailed
    | Disconnected
    | Spoke
    | Frozen
    | ProcessExited
    | TimerFired
    | TryAgain
    | DeployConfirmed
    | RetireOlder
    | RollbackFinished
    | CandidateStarted
    | Stopping
    | IdentifyAsked
    | IdentifyLimit
    | ClusterGrant
    | ClusterStop
    | CacheReplicated
)


# -- actions ----------------------------------------------------------------------
@attrs.frozen
class Reply:
    """The ack for the event being handled (Socket.IO ack)."""

    data: Any


@attrs.frozen
class Send:
    """Emit ``event`` with ``data`` to worker ``sid`` (``hello``, ``cmd``, ``cache_sync``)."""

    sid: str
    event: str
    data: Any
    identity: str | None = None  # the worker's, for observers (None: not known, e.g. the shell's own sends)


@attrs.frozen
class Close:
    sid: str
    reason: str
    identity: str | None = None
    # Alive but unresponsive: the process manager kills its process (SIGKILL) at once; the lease it may
    # hold is released only by the ``ProcessExited`` that follows (or by its expiry), never by this close.
    hung: bool = False


@attrs.frozen
class Kill:
    """SIGKILL the process of child ``identity`` now; its connection, if any, ends with it (not closed first).

    For a holder whose process is stopped or whose connection is gone: the lease it may hold is released only
    by the ``ProcessExited`` that follows (or by its expiry), never by this action.
    """

    identity: str
    reason: str


@attrs.frozen
class CheckFrozen:
    """Ask the process manager whether the process of child ``identity`` is stopped (answer: ``Frozen``)."""

    sid: str
    identity: str


@attrs.frozen
class Persist:
    """Write ``state`` atomically before carrying out any later action."""

    state: dict[str, Any]


@attrs.frozen
class PersistCache:
    """Keep ``image`` (cache number ``seq``) on disk: ``change`` applied to number ``base`` made it, so a
    writer holding ``base`` may append the change instead of writing the whole image."""

    image: CacheImage = attrs.field(repr=False)
    change: CacheChange = attrs.field(repr=False)
    base: int
    seq: int
    cache_age: float  # the ``now`` at which it was accepted
    # A hand-over's final cache is acknowledged at once: it also goes to the successor before it processes.
    # Any other accepted cache is acknowledged only once it is on disk (or writing it failed, loudly).
    final: bool = False
    group: int = 0  # whose cache: each shard group keeps its own
    # Several hosts (docs/protocol.md §19.8): the holder's cache (at its ``epoch``) goes to the other hosts too, and
    # is acknowledged once one of them has it on disk; a replica taken from another host (0) goes nowhere.
    epoch: int = 0


@attrs.frozen
class Spawn:
    reason: str
    group: int = 0  # the shard group the new worker is for


@attrs.frozen
class TopUp:
    """Bring the workers back to their count (one running plus the standbys) at once, the restart back-off reset.

    ``try_again``'s answer to a crash loop: how many that is, is the process manager's count, not the core's.
    """

    reason: str
    group: int | None = None  # that shard group's workers only; None: every group's


@attrs.frozen
class RollBack:
    """Ask the deployer to return to the last known good code: a newer worker that is no deploy candidate (a
    replacement spawned at a newer generation, say) failed its health check. A candidate's failure is its
    ``Verdict`` instead, never a ``RollBack`` too."""

    reason: str
    version: str | None = None
    generation: int | None = None
    detail: str = ""  # what failed, for people: "failing: modules.music; 50% healthy, 100% needed"
    group: int = 0


@attrs.frozen
class Notify:
    level: str  # "info" | "warning" | "critical"
    message: str


@attrs.frozen
class Verdict:
    """The core's one answer on a deploy candidate (``CandidateStarted``), for the deployer.

    ``outcome`` is one of ``"promoted"`` (the lease was granted to it), ``"failed health check"``, ``"exited"`` (its
    process exited before it was promoted), ``"fenced"`` (hung or stopped: killed before it was promoted), ``"timed
    out"`` (no verdict in time), ``"replaced"`` (a newer candidate started) or ``"stopping"`` (the supervisor
    stops); with several hosts (docs/protocol.md §19) also ``"standing by"``: it passed its health check while
    another host holds its group (it is that group's standby here). ``detail`` says it for people ("health check:
    vital_cog_failed (failing: modules.utilities)", "exited with 1 before it was promoted"); for a promotion, its
    reason. ``times`` says when (core time) it reached each step it reached: ``spawned`` (the ``CandidateStarted``),
    ``checking`` (ready, its health check asked), ``passed`` and ``running``.
    """

    identity: str
    generation: int
    outcome: str
    detail: str = ""
    times: tuple[tuple[str, float], ...] = ()
    group: int = 0  # the candidate's shard group

    @property
    def promoted(self) -> bool:
        """It passed: the lease was granted to it, or (several hosts) it stands by where another host holds."""
        return self.outcome in ("promoted", "standing by")


@attrs.frozen
class RoleChanged:
    """For observers (logs, dashboard timeline, dev mode)."""

    sid: str
    identity: str  # whose connection ``sid`` is: no observer needs the core's table to tell
    old: str
    new: str
    epoch: int | None = None
    reason: str = ""
    group: int = 0  # the worker's shard group (0: the only one, unsharded)


@attrs.frozen
class Claim:
    """Several hosts: the core would promote ``identity`` (an approved standby of the group) and needs the group's
    lease key for it, written anew: not the write at ``used`` (the etcd revision it last promoted under, 0 for none)
    (the agent acquires the key, or rewrites its own)."""

    group: int
    identity: str
    used: int


@attrs.frozen
class Yield:
    """Several hosts: nobody of the group runs here, and nobody here can: the agent gives the key up (or stops
    trying to take it), so that another host's standby takes the group over at once."""

    group: int


Action = (
    Reply
    | Send
    | Close
    | Kill
    | CheckFrozen
    | Persist
    | PersistCache
    | Spawn
    | TopUp
    | RollBack
    | Verdict
    | Notify
    | RoleChanged
    | Claim
    | Yield
)
