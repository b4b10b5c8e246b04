"""The Urban Robot v1 messages as values, validated when built (outbound) and when parsed (inbound).

Outbound classes know their wire ``event`` name and ``payload()``. Inbound ones are made with
``parse_*`` functions, which raise :class:`MalformedMessage` whose text is the message minus its
tokens (``redact``), so it can go straight to a log.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs

from ._errors import MalformedMessage

RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
_SECRET_KEYS = frozenset({"token", "lease_token", "secret"})


def redact(value: Any) -> Any:
    """``value`` with every token or secret replaced, for logs."""
    if isinstance(value, dict):
        return {k: "<redacted>" if k in _SECRET_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _optional_int(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not _is_int(value):
        raise MalformedMessage(f"{attribute.name} must be an integer or None")


def _int(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _is_int(value):
        raise MalformedMessage(f"{attribute.name} must be an integer")


def _number(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _is_number(value) or value < 0:
        raise MalformedMessage(f"{attribute.name} must be a finite number >= 0")


def _string(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise MalformedMessage(f"{attribute.name} must be a string")


def _optional_string(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise MalformedMessage(f"{attribute.name} must be a string or None")


def _bool(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not bool:
        raise MalformedMessage(f"{attribute.name} must be a bool")


# -- worker → supervisor ---------------------------------------------------------------------------
class Outbound:
    event: ClassVar[str]

    def payload(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)  # type: ignore[arg-type]


def _version(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > 128:
        raise MalformedMessage("version must be a non-empty string of at most 128 characters")


@attrs.frozen
class Identify(Outbound):
    event: ClassVar[str] = "identify"
    version: str = attrs.field(validator=_version)
    pid: int | None = attrs.field(default=None, validator=_optional_int)
    generation: int | None = attrs.field(default=None, validator=_optional_int)
    epoch: int | None = attrs.field(default=None, validator=_optional_int)
    lease_token: str | None = attrs.field(default=None, validator=_optional_string, repr=False)


@attrs.frozen
class Heartbeat(Outbound):
    event: ClassVar[str] = "heartbeat"
    epoch: int | None = attrs.field(default=None, validator=_optional_int)


@attrs.frozen
class Ready(Outbound):
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


@attrs.frozen
class CacheSync(Outbound):
    event: ClassVar[str] = "cache_sync"
    cache: Any = None


@attrs.frozen
class Coma(Outbound):
    event: ClassVar[str] = "coma"
    reason: str = attrs.field(default="", validator=_string)


@attrs.frozen
class Shutdown(Outbound):
    event: ClassVar[str] = "shutdown"
    reason: str = attrs.field(default="", validator=_string)


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
            raise MalformedMessage("an event payload must be a JSON object")

    @property
    def event(self) -> str:
        return self.name

    def payload(self) -> dict[str, Any]:
        return self.data


Message = Outbound | Custom


# -- supervisor → worker ---------------------------------------------------------------------------
@attrs.frozen
class Hello:
    protocol: int = attrs.field(validator=_int)
    token: str = attrs.field(validator=_string, repr=False)
    process_commands: bool = attrs.field(validator=_bool)
    interval: float = attrs.field(validator=_number)
    lease: float = attrs.field(validator=_number)
    epoch: int = attrs.field(validator=_int)

    @interval.validator
    def _positive(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value <= 0:
            raise MalformedMessage("interval must be > 0")


@attrs.frozen
class Renewal:
    """A heartbeat's answer: ``lease > 0`` renews ``epoch``; ``lease == 0`` refuses."""

    epoch: int = attrs.field(validator=_int)
    lease: float = attrs.field(validator=_number)


@attrs.frozen
class Ok:
    pass


@attrs.frozen
class HealthCheck:
    pass


@attrs.frozen
class ProcessCommands:
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


@attrs.frozen
class UnknownCommand:
    name: str


@attrs.frozen
class CachePush:
    cache: Any


Command = Ok | HealthCheck | ProcessCommands | Stop | UnknownCommand
Push = Hello | CachePush | Command


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Only the keys ``cls`` knows (a v1 peer ignores the others)."""
    names = {a.name for a in attrs.fields(cls)}
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
            if not isinstance(data, dict) or "cache" not in data:
                raise MalformedMessage("cache_sync needs {cache: ...}")
            return CachePush(data["cache"])
    except MalformedMessage as exc:
        raise MalformedMessage(f"malformed {event!r} {redact(data)!r}: {exc}") from None
    return None
