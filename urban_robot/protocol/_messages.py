"""The Urban Robot v1 vocabulary (docs/protocol.md §5–§6): every message of both directions, once.

Each message is a frozen value, validated when it is built, whoever builds it: the worker SDKs when
they send, the supervisor when it parses what a worker sent (:func:`parse_request`), the worker
SDKs when they parse what the supervisor pushed (:func:`parse_push`, :func:`parse_hello`,
:func:`parse_renewal`). A value that breaks the protocol raises :class:`MalformedMessage`, whose text
is what the supervisor answers (docs/protocol.md §7) and never contains a token (``redact``).

Worker → supervisor messages know their wire ``event`` name and ``payload()``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs

from ..socketio import (
    RESERVED_EVENTS as RESERVED_EVENTS,  # Socket.IO's own names: emitting one closes the connection (§2.1)
)
from ._errors import MalformedMessage

MAX_VERSION_LENGTH = 128  # identify.version
MAX_REASON_LENGTH = 200  # coma/shutdown/failed reasons are cut to this for logs
MAX_SECRET_LENGTH = 512  # CONNECT auth.secret
PROTOCOL_VERSION = 1
_SECRET_KEYS = frozenset({"token", "lease_token", "secret"})


def redact(value: Any) -> Any:
    """``value`` with every token or secret replaced, for logs."""
    if isinstance(value, dict):
        return {k: "<redacted>" if k in _SECRET_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def is_int(value: Any) -> bool:
    """A JSON integer: not a bool, not a float."""
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _optional_int(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not is_int(value):
        raise MalformedMessage(f"{attribute.name} must be an integer")


def _int(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not is_int(value):
        raise MalformedMessage(f"{attribute.name} must be an integer")


def _number(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _is_number(value) or value < 0:
        raise MalformedMessage(f"{attribute.name} must be a finite number >= 0")


def _string(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise MalformedMessage(f"{attribute.name} must be a string")


def _optional_string(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise MalformedMessage(f"{attribute.name} must be a string")


def _optional_bool(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and type(value) is not bool:
        raise MalformedMessage(f"{attribute.name} must be a bool")


def _bool(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not bool:
        raise MalformedMessage(f"{attribute.name} must be a bool")


def _reason(value: Any) -> str:
    """A free-text reason as the supervisor keeps it: a string, cut for logs."""
    return str(value if value is not None else "")[:MAX_REASON_LENGTH]


# -- worker → supervisor ---------------------------------------------------------------------------
class Outbound:
    event: ClassVar[str]

    def payload(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)  # type: ignore[arg-type]


def _version(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_VERSION_LENGTH:
        raise MalformedMessage("identify needs a version string")


@attrs.frozen
class Identify(Outbound):
    """§5.1: who the worker is, and the grant it claims after a reconnection (§8.5)."""

    event: ClassVar[str] = "identify"
    version: str = attrs.field(validator=_version)
    pid: int | None = attrs.field(default=None, validator=_optional_int)
    generation: int | None = attrs.field(default=None, validator=_optional_int)
    epoch: int | None = attrs.field(default=None, validator=_optional_int)
    lease_token: str | None = attrs.field(default=None, validator=_optional_string, repr=False)


@attrs.frozen
class Heartbeat(Outbound):
    """§5.2: ``epoch`` of the grant held (None: none); ``gateway``: is the bot's Discord Gateway up (None: unknown)."""

    event: ClassVar[str] = "heartbeat"
    epoch: int | None = attrs.field(default=None, validator=_optional_int)
    gateway: bool | None = attrs.field(default=None, validator=_optional_bool)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"epoch": self.epoch}
        if self.gateway is not None:
            body["gateway"] = self.gateway
        return body


@attrs.frozen
class Ready(Outbound):
    """§5.3: logged in to Discord."""

    event: ClassVar[str] = "ready"


def _percent(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _is_number(value) or not 0 <= value <= 100:
        raise MalformedMessage("percent must be a number in [0, 100]")


def _cogs(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and type(v) is bool for k, v in value.items()):
        raise MalformedMessage("cogs must map names to bools")


@attrs.frozen
class HealthReport(Outbound):
    """§9: ``{OK, percent, cogs}``."""

    event: ClassVar[str] = "health_check"
    OK: bool = attrs.field(validator=_bool)
    percent: float = attrs.field(default=100, validator=_percent)
    cogs: dict[str, bool] = attrs.field(factory=dict, validator=_cogs)


MAX_CACHE_KEY_LENGTH = 512  # characters of one cache entry's key
MAX_CACHE_PARTS = 1 << 20  # parts of one cache sync


def cache_key_ok(key: Any) -> bool:
    """A key the cache can hold: a string of at most 512 characters that is valid Unicode (JSON may carry a lone
    surrogate such as ``"\\ud800"``; it has no UTF-8 form, so cache.bin could not write it)."""
    if not isinstance(key, str) or len(key) > MAX_CACHE_KEY_LENGTH:
        return False
    if key.isascii():
        return True
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True


_KEY_RULE = f"cache keys must be valid Unicode strings of at most {MAX_CACHE_KEY_LENGTH} characters"


def _cache_entries(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, dict):
        raise MalformedMessage("cache_sync set must map keys to bytes")
    for key, data in value.items():
        if not cache_key_ok(key):
            raise MalformedMessage(_KEY_RULE)
        if type(data) is not bytes:
            raise MalformedMessage(
                f"cache entry {key[:80]!r} must be bytes (a binary attachment), not {type(data).__name__}"
            )


def _keys(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _entries_repr(value: dict[str, bytes]) -> str:
    return f"<{len(value)} entries>"


def _cache_deletes(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple):
        raise MalformedMessage("cache_sync delete must be a list of keys")
    if not all(cache_key_ok(k) for k in value):
        raise MalformedMessage(f"cache_sync delete: {_KEY_RULE}")


@attrs.frozen
class CacheSync(Outbound):
    """§5.5 / §6.2: one part of a cache sync, both directions; entries are bytes the supervisor never decodes.

    A sync is ``parts`` messages with the same ``sync`` number, ``part`` 0, 1, … in order. ``full``: the
    entries replace the whole cache; otherwise a delta: ``set`` entries replace theirs, ``delete`` keys go.
    A key in several parts of one sync has its bytes concatenated (a value larger than a part).
    """

    event: ClassVar[str] = "cache_sync"
    sync: int = attrs.field(validator=_int)
    part: int = attrs.field(validator=_int)
    parts: int = attrs.field(validator=_int)
    full: bool = attrs.field(validator=_bool)
    set: dict[str, bytes] = attrs.field(factory=dict, validator=_cache_entries, repr=_entries_repr)
    delete: tuple[str, ...] = attrs.field(default=(), converter=_keys, validator=_cache_deletes)

    def __attrs_post_init__(self) -> None:
        if self.sync < 1 or not 1 <= self.parts <= MAX_CACHE_PARTS or not 0 <= self.part < self.parts:
            raise MalformedMessage("cache_sync needs sync >= 1 and 0 <= part < parts")
        if self.full and self.delete:
            raise MalformedMessage("a full cache_sync has no delete list")

    @property
    def last(self) -> bool:
        return self.part == self.parts - 1

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.set.values())

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "sync": self.sync,
            "part": self.part,
            "parts": self.parts,
            "full": self.full,
            "set": self.set,
        }
        if self.delete:
            body["delete"] = list(self.delete)
        return body


def parse_cache_sync(data: Any) -> CacheSync:
    """One part of a cache sync, from either side; the v0 form ``{cache: value}`` is refused with what to do."""
    if not isinstance(data, dict):
        raise MalformedMessage("the payload must be an object")
    if "cache" in data and "sync" not in data:
        raise MalformedMessage(
            "cache_sync {cache: value} is no longer accepted: the cache travels as bytes in parts "
            "{sync, part, parts, full, set} (docs/protocol.md §5.5); update the worker's SDK"
        )
    sync: CacheSync = _build(CacheSync, data)
    return sync


@attrs.frozen
class Coma(Outbound):
    """§5.6: stopped processing (asked, or by itself)."""

    event: ClassVar[str] = "coma"
    reason: str = attrs.field(default="", validator=_string)


@attrs.frozen
class Shutdown(Outbound):
    """§5.7: stopped processing and leaving (no crash; replaced unless the supervisor asked for it)."""

    event: ClassVar[str] = "shutdown"
    reason: str = attrs.field(default="", validator=_string)


@attrs.frozen
class Failed(Outbound):
    """§5.9: the worker cannot work (Discord refused its login for good) and exits as a crash.

    ``hint`` tells the operator what to do ("enable the Message Content intent…").
    """

    event: ClassVar[str] = "failed"
    reason: str = attrs.field(validator=_string)
    hint: str = attrs.field(default="", validator=_string)


@attrs.frozen
class TryAgain(Outbound):
    """§5.8: an operator says the cause of ``is_sane = false`` is fixed (admin connections only)."""

    event: ClassVar[str] = "try_again"


def _event_name(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value or value in RESERVED_EVENTS:
        raise MalformedMessage(f"{value!r} cannot be emitted (empty, not a string, or reserved by Socket.IO)")


@attrs.frozen
class Custom:
    """Any other event: the name is checked (never a reserved one, §2.1), the payload must be an object."""

    name: str = attrs.field(validator=_event_name)
    data: dict[str, Any] = attrs.field(factory=dict)

    @data.validator
    def _check(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, dict):
            raise MalformedMessage("the payload must be an object")

    @property
    def event(self) -> str:
        return self.name

    def payload(self) -> dict[str, Any]:
        return self.data


@attrs.frozen
class IdentifySlot(Outbound):
    """§18.3: a sharded worker asks for a slot to IDENTIFY ``shard_id`` with Discord (answered by ``cmd identify``)."""

    event: ClassVar[str] = "identify_slot"
    shard_id: int = attrs.field(validator=_int)


Message = Outbound | Custom
Request = Identify | Heartbeat | Ready | HealthReport | CacheSync | Coma | Shutdown | Failed | TryAgain | IdentifySlot


# -- supervisor → worker ---------------------------------------------------------------------------
def _shard_ids(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value or not all(is_int(i) for i in value):
        raise MalformedMessage("shards must be a non-empty list of shard ids (integers)")
    return tuple(value)


@attrs.frozen
class Hello:
    """§6.1: the answer to ``identify`` (its ack, and a push)."""

    event: ClassVar[str] = "hello"
    protocol: int = attrs.field(validator=_int)
    token: str = attrs.field(validator=_string, repr=False)
    process_commands: bool = attrs.field(validator=_bool)
    interval: float = attrs.field(validator=_number)
    lease: float = attrs.field(validator=_number)
    epoch: int = attrs.field(validator=_int)
    # §18.3, sharded bots only (absent otherwise, as in v1): the shard ids this worker runs, and the bot's count.
    shards: tuple[int, ...] | None = attrs.field(default=None, converter=_shard_ids)
    shard_count: int | None = attrs.field(default=None, validator=_optional_int)

    @interval.validator
    def _positive(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value <= 0:
            raise MalformedMessage("interval must be > 0")

    @shard_count.validator
    def _sharded(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if (value is None) != (self.shards is None):
            raise MalformedMessage("hello needs both shards and shard_count, or neither")
        if value is not None and self.shards is not None and not all(0 <= i < value for i in self.shards):
            raise MalformedMessage("hello's shards must be ids from 0 to shard_count - 1")

    def payload(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        if self.shards is None:
            del data["shards"], data["shard_count"]
        else:
            data["shards"] = list(self.shards)
        return data


@attrs.frozen
class Renewal:
    """A heartbeat's answer: ``lease > 0`` renews ``epoch``; ``lease == 0`` refuses."""

    epoch: int = attrs.field(validator=_int)
    lease: float = attrs.field(validator=_number)


@attrs.frozen
class Ok:
    name: ClassVar[str] = "ok"


@attrs.frozen
class HealthCheck:
    name: ClassVar[str] = "health_check"


@attrs.frozen
class ProcessCommands:
    name: ClassVar[str] = "process_commands"
    epoch: int = attrs.field(validator=_int)
    lease: float = attrs.field(validator=_number)
    lease_token: str = attrs.field(validator=_string, repr=False)
    reason: str = attrs.field(default="", validator=_string)


@attrs.frozen
class Stop:
    """``cmd coma`` (``shutdown`` False) or ``cmd shutdown``."""

    shutdown: bool = attrs.field(validator=_bool)
    reason: str = attrs.field(default="", validator=_string)
    cache_sync: bool = attrs.field(default=False, validator=_bool)

    @property
    def name(self) -> str:
        return "shutdown" if self.shutdown else "coma"


@attrs.frozen
class MayIdentify:
    """``cmd identify`` (§18.3): the slot asked for with ``identify_slot``: IDENTIFY ``shard_id`` now."""

    name: ClassVar[str] = "identify"
    shard_id: int = attrs.field(validator=_int)


@attrs.frozen
class UnknownCommand:
    name: str


Command = Ok | HealthCheck | ProcessCommands | Stop | MayIdentify | UnknownCommand
Push = Hello | CacheSync | Command


def command_payload(command: Ok | HealthCheck | ProcessCommands | Stop | MayIdentify) -> dict[str, Any]:
    """The ``cmd`` event's payload ``{"t": name, "d": data}`` for ``command``."""
    data = attrs.asdict(command)
    data.pop("shutdown", None)
    return {"t": command.name, "d": data}


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Only the keys ``cls`` knows (a v1 peer ignores the others)."""
    names = {a.name for a in attrs.fields(cls) if a.init}
    return {k: v for k, v in data.items() if k in names}


def _build(cls: type, data: Any, **extra: Any) -> Any:
    if not isinstance(data, dict):
        raise MalformedMessage(f"{cls.__name__} needs an object, got {redact(data)!r}")
    try:
        return cls(**{**_known(cls, data), **extra})
    except TypeError as exc:  # a missing key
        raise MalformedMessage(f"{cls.__name__}: {exc}") from None


def parse_hello(data: Any) -> Hello:
    hello: Hello = _build(Hello, data)
    return hello


def parse_renewal(data: Any) -> Renewal:
    renewal: Renewal = _build(Renewal, data)
    return renewal


def parse_command(data: Any) -> Command:
    if not isinstance(data, dict) or not isinstance(data.get("t"), str):
        raise MalformedMessage("cmd needs {t: name, d: object}")
    name, body = data["t"], data.get("d") or {}
    if name == "ok":
        return Ok()
    if name == "health_check":
        return HealthCheck()
    if name == "process_commands":
        command: Command = _build(ProcessCommands, body)
        return command
    if name == "identify":
        grant: Command = _build(MayIdentify, body)
        return grant
    if name in ("coma", "shutdown"):
        stop: Stop = _build(Stop, body, shutdown=name == "shutdown")
        return stop
    return UnknownCommand(name)


def parse_push(event: str, data: Any) -> Push | None:
    """A supervisor → worker event; None for an event name v1 does not define (ignored)."""
    try:
        if event == "hello":
            return parse_hello(data)
        if event == "cmd":
            return parse_command(data)
        if event == "cache_sync":
            return parse_cache_sync(data)
    except MalformedMessage as exc:
        raise MalformedMessage(f"malformed {event!r} {redact(data)!r}: {exc}") from None
    return None


# -- the supervisor's side: parsing what a worker sent ----------------------------------------------
def _identify(d: dict[str, Any]) -> Identify:
    version: Any = d.get("version")  # checked by Identify's validator
    return Identify(version, d.get("pid"), d.get("generation"), d.get("epoch"), d.get("lease_token"))


_PARSERS: dict[str, Any] = {
    "identify": _identify,
    "heartbeat": lambda d: Heartbeat(d.get("epoch"), d.get("gateway")),
    "ready": lambda d: Ready(),
    "cache_sync": parse_cache_sync,
    "coma": lambda d: Coma(_reason(d.get("reason"))),
    "shutdown": lambda d: Shutdown(_reason(d.get("reason"))),
    "failed": lambda d: Failed(_reason(d.get("reason")), str(d.get("hint") or "")[: MAX_REASON_LENGTH * 2]),
    "try_again": lambda d: TryAgain(),
    "identify_slot": lambda d: IdentifySlot(d.get("shard_id")),
}
#: Every event a worker (or an admin) may send: the names of §5.
REQUEST_EVENTS = frozenset({*_PARSERS, "health_check"})


def parse_request(event: str, data: Any) -> Request | dict[str, Any]:
    """What a worker sent, as a value; for ``health_check`` the report object itself (the core judges it, §9).

    Raises :class:`MalformedMessage` with the answer the worker gets (docs/protocol.md §7).
    """
    if data is None:
        data = {}
    if event == "health_check":
        if not isinstance(data, dict):
            raise MalformedMessage(
                'health_check needs the report object {"OK": bool, "percent": number, "cogs": {name: bool}}, '
                f"not {type(data).__name__} {redact(data)!r}"[:300]
            )
        return data
    parser = _PARSERS.get(event)
    if parser is None:
        raise MalformedMessage(f"unknown event {event[:80]!r}")
    if not isinstance(data, dict):
        raise MalformedMessage("the payload must be an object")
    request: Request = parser(data)
    return request
