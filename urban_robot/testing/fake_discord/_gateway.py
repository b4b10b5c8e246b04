"""The fake gateway's sans-IO core: connections, sessions, sequence numbers, replay on RESUME.

No sockets and no clock: the trio shell (``_fake.py``) reports what happened (a connection opened, a text
message arrived, the line went away) with the time, and carries out the actions returned (``Send``,
``Close``, ``Drop``). Everything that changes a connection's state goes through ``TRANSITIONS``; an
opcode missing from a state's row is the client's protocol error, answered with the close code Discord
uses.

    open ──HELLO──▶ waiting ──IDENTIFY/RESUME──▶ live ──op 7 / op 9 sent──▶ draining
                       │ bad login: close 4004/4010/4011/4013/4014       │ the client leaves
                       ▼                                                  ▼
                    closed ◀─────────────────────────────────────────── closed

IDENTIFYs are rate limited as Discord's docs say (Gateway, "Rate Limiting": "Apps also have a limit for
concurrent Identify requests allowed per 5 seconds. If you hit this limit, the Gateway will respond with an
Invalid Session (opcode 9)"; "Sharding" → "Max Concurrency": a shard's rate limit key is ``shard_id %
max_concurrency``): one IDENTIFY per key per ``IDENTIFY_WINDOW``; one more is answered op 9 (not resumable)
and starts no session (with ``Settings.enforce_max_concurrency``). Every IDENTIFY is recorded
(``identify_records``), whatever became of it.

A *session* (session id) outlives its connections: every dispatch meant for it gets the next sequence
number and is kept (up to ``max_buffer``), sent at once if the session has a live connection, and
replayed by a RESUME that names an older sequence number. A session without a connection stays
resumable for ``resume_window`` seconds.
"""

from __future__ import annotations

import collections
import enum
import json
import secrets
from collections.abc import Callable
from typing import Any

import attrs

from ._records import GatewayConnection, GatewaySession, IdentifyRecord
from ._world import JSON, Intents, World


class Op(enum.IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class CloseCode(enum.IntEnum):
    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    INVALID_SHARD = 4010
    SHARDING_REQUIRED = 4011
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013
    DISALLOWED_INTENTS = 4014


# After these codes (from either side) a session can still be resumed; after any other it is over.
RESUMABLE_CLOSES = frozenset({4000, 4001, 4002, 4003, 4005, 4008, 1006, 1011, 1012, None})


IDENTIFY_WINDOW = 5.0  # seconds: one IDENTIFY per rate limit key per window (Discord, "Max Concurrency")


class State(enum.Enum):
    WAITING = "waiting"  # HELLO sent; waiting for IDENTIFY or RESUME
    LIVE = "live"  # logged in: dispatches flow
    DRAINING = "draining"  # op 7 or op 9 sent: nothing more is sent; the client is expected to leave
    CLOSED = "closed"


S = State
LOGIN = S.LIVE  # the state a successful IDENTIFY/RESUME leads to; a failed one closes instead
TRANSITIONS: dict[State, dict[Op, State]] = {
    S.WAITING: {Op.HEARTBEAT: S.WAITING, Op.IDENTIFY: LOGIN, Op.RESUME: LOGIN},
    S.LIVE: {
        Op.HEARTBEAT: S.LIVE,
        Op.PRESENCE_UPDATE: S.LIVE,
        Op.VOICE_STATE_UPDATE: S.LIVE,
        Op.REQUEST_GUILD_MEMBERS: S.LIVE,
    },
    S.DRAINING: {
        Op.HEARTBEAT: S.DRAINING,
        Op.PRESENCE_UPDATE: S.DRAINING,
        Op.VOICE_STATE_UPDATE: S.DRAINING,
        Op.REQUEST_GUILD_MEMBERS: S.DRAINING,
    },
    S.CLOSED: {},
}


@attrs.frozen
class Send:
    conn: int
    payload: JSON


@attrs.frozen
class Close:
    conn: int
    code: int
    reason: str


@attrs.frozen
class Drop:
    """End the connection with no close frame, as a network failure would."""

    conn: int


Action = Send | Close | Drop


@attrs.define(eq=False)
class Settings:
    """The application's settings as Discord keeps them; tests change them between logins."""

    tokens: dict[str, str]  # token → label (the label is what records and logs show)
    enabled_intents: int = Intents.PRIVILEGED  # the privileged intents switched on in the developer portal
    heartbeat_interval: float = 41.25  # seconds, sent in HELLO
    resume_window: float = 60.0  # how long a session without a connection stays resumable
    required_shards: int = 1  # IDENTIFY with fewer shards closes 4011
    max_concurrency: int = 1  # reported by GET /gateway/bot
    # Enforce it (one IDENTIFY per rate limit key per 5 s, op 9 beyond): off unless asked, since workers of an
    # unsharded bot (a holder and its standbys) IDENTIFY shard 0 at once without slots (§18.3).
    enforce_max_concurrency: bool = False
    shards: int | None = None  # GET /gateway/bot's recommended count (None: required_shards)
    session_total: int = 1000  # GET /gateway/bot's session_start_limit.total
    session_remaining: int | None = None  # its remaining (None: total minus the sessions started so far)
    session_reset_after: int = 86_400_000  # its reset_after, in milliseconds
    max_buffer: int = 10_000  # dispatches kept per session for replay


@attrs.define(eq=False)
class _Connection:
    id: int
    client: str
    record: GatewayConnection
    state: State = State.WAITING
    session: _Session | None = None
    heartbeats: int = 0


@attrs.define(eq=False)
class _Session:
    id: str
    client: str
    token: str  # the label
    shard: tuple[int, int]
    intents: int
    record: GatewaySession
    seq: int = 0
    buffer: collections.deque[JSON] = attrs.Factory(collections.deque)
    connection: _Connection | None = None
    idle_since: float | None = None  # when it lost its connection
    ended: bool = False


@attrs.frozen
class Audience:
    """Who a dispatch is for: sessions whose shard holds ``guild_id`` and that asked for ``intent``."""

    guild_id: int | None = None  # None: a DM, shard 0
    intent: int = 0  # 0: every session (interactions need no intent)
    content_of: JSON | None = None  # a message: blank its content for sessions without MESSAGE_CONTENT


class Gateway:
    def __init__(self, world: World, settings: Settings, resume_url: Callable[[str, str], str]) -> None:
        self.world = world
        self.settings = settings
        self._resume_url = resume_url  # (client, session id) → the resume_gateway_url for READY
        self.connections: dict[int, _Connection] = {}
        self.sessions: dict[str, _Session] = {}
        self.connection_records: list[GatewayConnection] = []
        self.session_records: list[GatewaySession] = []
        self.identify_records: list[IdentifyRecord] = []
        self._last_identify: dict[int, float] = {}  # rate limit key → when its last accepted IDENTIFY came
        self.outage_until = 0.0
        self.session_outages: dict[str, float] = {}

    # ------------------------------------------------------------------ the shell reports
    def open(self, conn_id: int, client: str, now: float) -> list[Action]:
        record = GatewayConnection(conn_id, client, now)
        self.connection_records.append(record)
        self.connections[conn_id] = _Connection(conn_id, client, record)
        hello = {"heartbeat_interval": int(self.settings.heartbeat_interval * 1000), "_trace": ["fake-discord"]}
        return [Send(conn_id, {"op": Op.HELLO, "d": hello, "s": None, "t": None})]

    def receive(self, conn_id: int, text: str | bytes, now: float) -> list[Action]:
        conn = self.connections.get(conn_id)
        if conn is None or conn.state is State.CLOSED:
            return []
        try:
            message = json.loads(text)
            op = Op(message["op"])
        except (ValueError, TypeError, KeyError):
            return self._close(conn, CloseCode.DECODE_ERROR, "Error while decoding payload.", now)
        next_state = TRANSITIONS[conn.state].get(op)
        if next_state is None:
            return self._refuse(conn, op, now)
        before = conn.state
        handler = getattr(self, f"_on_{op.name.lower()}")
        actions: list[Action] = handler(conn, message.get("d"), now)
        if conn.state is before:  # a handler that refused the login moved the state itself
            conn.state = next_state
        return actions

    def lost(self, conn_id: int, now: float, *, code: int | None, by: str) -> None:
        """The connection ended: ``by`` is "client", "server" or "dropped"; ``code`` the close frame's."""
        conn = self.connections.pop(conn_id, None)
        if conn is None:
            return
        conn.state = State.CLOSED
        record = conn.record
        if record.closed_at is None:
            record.closed_at, record.close_code, record.closed_by = now, code, by
        session = conn.session
        if session is None or session.connection is not conn:
            return
        session.connection = None
        session.idle_since = now
        if by == "client" and code in (1000, 1001):
            self._end(session, now, f"the client closed with {code}")
        elif code not in RESUMABLE_CLOSES:
            self._end(session, now, f"closed with {code}")

    def timed_out(self, conn_id: int, now: float) -> list[Action]:
        """No heartbeat in time: Discord ends the session (4009)."""
        conn = self.connections.get(conn_id)
        if conn is None:
            return []
        return self._close(conn, CloseCode.SESSION_TIMED_OUT, "Session timed out.", now)

    def heartbeats(self, conn_id: int) -> int:
        conn = self.connections.get(conn_id)
        return conn.heartbeats if conn is not None else 0

    # ------------------------------------------------------------------ the client's opcodes
    def _on_heartbeat(self, conn: _Connection, data: Any, now: float) -> list[Action]:
        conn.heartbeats += 1
        return [Send(conn.id, {"op": Op.HEARTBEAT_ACK, "d": None, "s": None, "t": None})]

    def _on_presence_update(self, conn: _Connection, data: Any, now: float) -> list[Action]:
        return []

    _on_voice_state_update = _on_presence_update

    def _on_identify(self, conn: _Connection, data: Any, now: float) -> list[Action]:
        shard: Any = data.get("shard") or [0, 1] if isinstance(data, dict) else None
        valid = isinstance(shard, list) and len(shard) == 2 and all(type(x) is int for x in shard)
        sent = (shard[0], shard[1]) if valid else None
        outcome, actions = self._identify(conn, data, sent, now)
        self.identify_records.append(IdentifyRecord(conn.client, conn.id, sent, now, outcome))
        return actions

    def _identify(
        self, conn: _Connection, data: Any, shard: tuple[int, int] | None, now: float
    ) -> tuple[str, list[Action]]:
        if not isinstance(data, dict):
            return "decode error", self._close(conn, CloseCode.DECODE_ERROR, "Error while decoding payload.", now)
        label = self._token_label(data.get("token"))
        if label is None:
            return "authentication failed", self._close(
                conn, CloseCode.AUTHENTICATION_FAILED, "Authentication failed.", now
            )
        intents = data.get("intents")
        if not isinstance(intents, int) or intents < 0 or intents & ~Intents.DEFINED:
            return "invalid intents", self._close(conn, CloseCode.INVALID_INTENTS, "Invalid intent(s).", now)
        if shard is None or shard[1] < 1 or not 0 <= shard[0] < shard[1]:
            return "invalid shard", self._close(conn, CloseCode.INVALID_SHARD, "Invalid shard.", now)
        shard_id, count = shard
        if count < self.settings.required_shards:
            return "sharding required", self._close(conn, CloseCode.SHARDING_REQUIRED, "Sharding required.", now)
        if intents & Intents.PRIVILEGED & ~self.settings.enabled_intents:
            return "disallowed intents", self._close(conn, CloseCode.DISALLOWED_INTENTS, "Disallowed intent(s).", now)
        key = shard_id % self.settings.max_concurrency
        last = self._last_identify.get(key)
        if self.settings.enforce_max_concurrency and last is not None and now - last < IDENTIFY_WINDOW:  # op 9
            conn.state = State.DRAINING
            return "rate limited", [Send(conn.id, {"op": Op.INVALID_SESSION, "d": False, "s": None, "t": None})]
        self._last_identify[key] = now
        session_id = secrets.token_hex(16)
        record = GatewaySession(session_id, conn.client, label, (shard_id, count), intents, now)
        self.session_records.append(record)
        session = _Session(session_id, conn.client, label, (shard_id, count), intents, record)
        self.sessions[session_id] = session
        self._attach(conn, session, "identify")
        return "ready", self._ready(conn, session, now)

    def _ready(self, conn: _Connection, session: _Session, now: float) -> list[Action]:
        guilds = [g for g in self.world.guilds.values() if self._shard_of(g.id, session.shard[1]) == session.shard[0]]
        ready = {
            "v": 10,
            "user": self.world.bot.payload(),
            "user_settings": {},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self._resume_url(session.client, session.id),
            "shard": list(session.shard),
            "application": {"id": str(self.world.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ["fake-discord"],
        }
        actions = self._deliver(session, "READY", ready)
        if session.intents & Intents.GUILDS:
            everyone = session.intents & Intents.GUILD_PRESENCES  # without presences: only the bot itself
            for guild in guilds:
                members = list(guild.members) if everyone else [self.world.bot.id]
                actions += self._deliver(session, "GUILD_CREATE", guild.create_payload(now, members=members))
        return actions

    def _on_resume(self, conn: _Connection, data: Any, now: float) -> list[Action]:
        if not isinstance(data, dict):
            return self._close(conn, CloseCode.DECODE_ERROR, "Error while decoding payload.", now)
        self._expire(now)
        session = self.sessions.get(str(data.get("session_id")))
        label = self._token_label(data.get("token"))
        seq = data.get("seq")
        if label is None:
            return self._close(conn, CloseCode.AUTHENTICATION_FAILED, "Authentication failed.", now)
        if session is None or session.token != label or not isinstance(seq, int) or not self._can_replay(session, seq):
            conn.state = State.DRAINING
            return [Send(conn.id, {"op": Op.INVALID_SESSION, "d": False, "s": None, "t": None})]
        actions: list[Action] = []
        old = session.connection
        if old is not None and old is not conn:  # a second process resumed this session: the old line goes
            actions.append(Drop(old.id))
        self._attach(conn, session, "resume")
        replay = [event for event in session.buffer if event["s"] > seq]
        conn.record.replayed = len(replay)
        session.record.resumed_at.append(now)
        actions += [Send(conn.id, event) for event in replay]
        actions += self._deliver(session, "RESUMED", {"_trace": ["fake-discord"]})
        return actions

    def _on_request_guild_members(self, conn: _Connection, data: Any, now: float) -> list[Action]:
        session = conn.session
        if session is None or not isinstance(data, dict):
            return []
        guild = self.world.guilds.get(int(data.get("guild_id") or 0))
        if guild is None:
            return []
        query = str(data.get("query") or "").lower()
        wanted = {int(x) for x in data.get("user_ids") or []}
        found = [
            user_id
            for user_id, (user, _) in guild.members.items()
            if (user_id in wanted if wanted else user.username.lower().startswith(query))
        ]
        limit = int(data.get("limit") or 0)
        if limit:
            found = found[:limit]
        chunk: JSON = {
            "guild_id": str(guild.id),
            "members": [guild.member_payload(user_id) for user_id in found],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [str(x) for x in wanted - set(found)],
        }
        if "nonce" in data:
            chunk["nonce"] = data["nonce"]
        return self._deliver(session, "GUILD_MEMBERS_CHUNK", chunk)

    def _refuse(self, conn: _Connection, op: Op, now: float) -> list[Action]:
        if conn.state is State.WAITING:
            return self._close(conn, CloseCode.NOT_AUTHENTICATED, "Not authenticated.", now)
        if op in (Op.IDENTIFY, Op.RESUME):
            return self._close(conn, CloseCode.ALREADY_AUTHENTICATED, "Already authenticated.", now)
        return self._close(conn, CloseCode.UNKNOWN_OPCODE, "Unknown opcode.", now)

    # ------------------------------------------------------------------ dispatching
    def dispatch(self, name: str, data: JSON, audience: Audience, now: float) -> tuple[list[str], list[Action]]:
        """Queue a dispatch for every session in ``audience``; returns their ids and the actions."""
        self._expire(now)
        targets, actions = [], []
        for session in self.sessions.values():
            shard_id, count = session.shard
            if self._shard_of(audience.guild_id, count) != shard_id:
                continue
            if audience.intent and not session.intents & audience.intent:
                continue
            payload = data
            if audience.content_of is not None and not self._sees_content(session, audience.content_of):
                payload = {**data, "content": "", "embeds": [], "attachments": [], "components": []}
                payload.pop("poll", None)
            targets.append(session.id)
            actions += self._deliver(session, name, payload)
        return targets, actions

    def _sees_content(self, session: _Session, message: JSON) -> bool:
        """Discord's rule for the MESSAGE_CONTENT intent: without it, only DMs, mentions and the bot's own."""
        if session.intents & Intents.MESSAGE_CONTENT or "guild_id" not in message:
            return True
        bot = str(self.world.bot.id)
        return message["author"]["id"] == bot or any(user["id"] == bot for user in message.get("mentions", []))

    def _deliver(self, session: _Session, name: str, data: JSON) -> list[Action]:
        session.seq += 1
        event = {"op": Op.DISPATCH, "t": name, "s": session.seq, "d": data}
        session.buffer.append(event)
        while len(session.buffer) > self.settings.max_buffer:
            session.buffer.popleft()
        conn = session.connection
        if conn is None or conn.state is not State.LIVE:
            return []
        return [Send(conn.id, event)]

    @staticmethod
    def _shard_of(guild_id: int | None, count: int) -> int:
        return 0 if guild_id is None else (guild_id >> 22) % count

    # ------------------------------------------------------------------ on demand (tests, the control API)
    def select(self, session_id: str | None = None, client: str | None = None) -> list[_Session]:
        """Live sessions, all or those of one session id or one client (process)."""
        return [
            s
            for s in self.sessions.values()
            if (session_id is None or s.id == session_id) and (client is None or s.client == client)
        ]

    def reconnect(self, sessions: list[_Session]) -> list[Action]:
        """Op 7: ask each session's connection to reconnect and resume."""
        actions: list[Action] = []
        for conn in self._live(sessions):
            conn.state = State.DRAINING
            actions.append(Send(conn.id, {"op": Op.RECONNECT, "d": None, "s": None, "t": None}))
        return actions

    def invalidate(self, sessions: list[_Session], *, resumable: bool, now: float) -> list[Action]:
        """Op 9: the session is invalid; with ``resumable`` the client may still resume it."""
        actions: list[Action] = []
        for session in sessions:
            conn = session.connection
            if not resumable:
                self._end(session, now, "invalidated (op 9)")
            if conn is not None and conn.state is State.LIVE:
                conn.state = State.DRAINING
                actions.append(Send(conn.id, {"op": Op.INVALID_SESSION, "d": resumable, "s": None, "t": None}))
        return actions

    def close(self, sessions: list[_Session], code: int, now: float, reason: str = "") -> list[Action]:
        actions: list[Action] = []
        for session in sessions:
            if session.connection is not None:
                actions += self._close(session.connection, code, reason, now)
        return actions

    def drop(self, sessions: list[_Session] | None) -> list[Action]:
        """The line goes dead (no close frame); the sessions stay resumable."""
        if sessions is None:
            return [Drop(conn_id) for conn_id in self.connections]
        return [Drop(s.connection.id) for s in sessions if s.connection is not None]

    def outage(self, until: float, sessions: list[_Session] | None) -> list[Action]:
        """Drop connections and refuse new ones (all, or to these sessions' resume URLs) until ``until``."""
        if sessions is None:
            self.outage_until = max(self.outage_until, until)
        else:
            for session in sessions:
                self.session_outages[session.id] = max(self.session_outages.get(session.id, 0.0), until)
        return self.drop(sessions)

    def refuses(self, session_id: str | None, now: float) -> bool:
        """Whether a new connection (to a session's resume URL, if named) is refused by an outage."""
        return now < self.outage_until or (session_id is not None and now < self.session_outages.get(session_id, 0))

    # ------------------------------------------------------------------ helpers
    def _token_label(self, token: Any) -> str | None:
        if not isinstance(token, str):
            return None
        return self.settings.tokens.get(token.removeprefix("Bot "))

    def _attach(self, conn: _Connection, session: _Session, login: str) -> None:
        conn.session, conn.state = session, State.LIVE
        conn.record.session_id, conn.record.login = session.id, login
        session.connection, session.idle_since = conn, None

    def _can_replay(self, session: _Session, seq: int) -> bool:
        if session.ended or seq > session.seq:
            return False
        oldest = session.buffer[0]["s"] if session.buffer else session.seq + 1
        return seq >= oldest - 1

    def _close(self, conn: _Connection, code: int, reason: str, now: float) -> list[Action]:
        conn.state = State.CLOSED
        record = conn.record
        record.closed_at, record.close_code, record.closed_by = now, code, "server"
        return [Close(conn.id, code, reason)]

    def _live(self, sessions: list[_Session]) -> list[_Connection]:
        return [s.connection for s in sessions if s.connection is not None and s.connection.state is State.LIVE]

    def _end(self, session: _Session, now: float, reason: str) -> None:
        if session.ended:
            return
        session.ended = True
        session.record.ended_at, session.record.end_reason = now, reason
        self.sessions.pop(session.id, None)

    def _expire(self, now: float) -> None:
        for session in list(self.sessions.values()):
            if session.idle_since is not None and now - session.idle_since > self.settings.resume_window:
                self._end(session, now, "not resumed in time")
