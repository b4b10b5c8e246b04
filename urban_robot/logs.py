"""Logging set-up for the supervisor: text for a terminal, JSON lines for journald or a log shipper.

Every record goes through a redaction step that replaces each configured secret (the Discord token, the
admin token, the webhook secret) with ``[redacted]`` in the message, the exception text and the extra
fields, so a secret that slips into an error message or a traceback never reaches the log.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, TextIO

REDACTED = "[redacted]"
LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")

# The attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_HANDLER_MARK = "_urban_robot_handler"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}


class Redactor(logging.Filter):
    """Replace each secret with ``[redacted]`` in a record's message, exception text and extra fields.

    As a handler filter it rewrites the record in place (so later handlers see the redacted text too);
    :meth:`redact` is also applied to each formatter's final output, catching anything rendered late.
    """

    def __init__(self, secrets: Iterable[str | bytes | None]) -> None:
        super().__init__()
        found = {s.decode(errors="replace") if isinstance(s, bytes) else s for s in secrets if s}
        self.secrets = sorted(found, key=len, reverse=True)  # longest first: one secret may contain another

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


_UNSAFE = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in [
        *range(0x20),
        *range(0x7F, 0xA0),
        *range(0x200B, 0x2010),
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ]
}


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences, newlines) and bidirectional
    overrides escaped as ``\\x1b``/``\\u202e``. A worker's version or reason reaches ``status`` and the log;
    raw, it could rewrite the operator's screen or forge log lines."""
    return text.translate(_UNSAFE)


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00,123 INFO urban_robot: message key=value``: extra fields appended.

    The message is one line, safe for a terminal (``printable``): it may quote what a peer sent.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redactor = redactor

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if extras:
            first, newline, rest = text.partition("\n")
            fields = " ".join(f"{key}={value}" for key, value in extras.items())
            text = f"{first} {fields}{newline}{rest}"
        return self.redactor.redact(text)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, extras, ``exception``."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return self.redactor.redact(json.dumps(entry, default=str, ensure_ascii=False))


def configure_logging(
    level: int | str,
    fmt: LogFormat = "text",
    secrets: Iterable[str | bytes | None] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Log to ``stream`` (stderr) at ``level`` in ``fmt``, redacting ``secrets``; the handler installed.

    Replaces a handler installed by an earlier call (so it can run twice, e.g. in tests), and leaves other
    handlers alone. Secrets that are None or empty are ignored.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter(redactor) if fmt == "json" else TextFormatter(redactor))
    handler.addFilter(redactor)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx says every request at INFO: with several hosts, each etcd call and each cache replica (several a second
    # per host, tens of thousands of journal lines an hour). Their failures reach our own lines; DEBUG shows all.
    quiet = logging.WARNING if logging.getLogger().getEffectiveLevel() > logging.DEBUG else logging.NOTSET
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
    return handler


TAIL_LINES = 5  # lines of a worker's output quoted in crash, failed-deploy and crash-loop messages
_TAIL_BYTES = 16384
_TAIL_LINE_MAX = 300  # characters of one quoted line (a minified JSON dump must not fill a Discord message)


def escape_controls(text: str) -> str:
    """A worker's output line for a message: ``printable`` (escape sequences shown as ``\\x1b``, never obeyed:
    quoted output must not recolour, clear or rewrite the operator's terminal), tabs as spaces."""
    return printable(text.replace("\t", "    "))


def read_tail(
    path: str | os.PathLike[str] | None, lines: int = TAIL_LINES, secrets: Iterable[str | None] = ()
) -> list[str]:
    """The last ``lines`` non-blank lines of a log file, each redacted of ``secrets`` and escaped (empty: no file)."""
    if path is None:
        return []
    try:
        with open(path, "rb") as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - _TAIL_BYTES))
            text = file.read().decode(errors="replace")
    except OSError:
        return []
    redactor = Redactor(secrets)
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return [escape_controls(redactor.redact(line))[:_TAIL_LINE_MAX] for line in kept]


STRANGER_EVERY = 10.0  # seconds: at most one line of each kind a stranger can cause, per this


class Throttled:
    """Lines a stranger can cause (refused CONNECTs and webhooks, bad requests), at most one per kind per ``every``.

    Anyone who reaches the port can cause these; one line each would let one client write thousands of
    lines a second and push the supervisor's own failover and crash-loop lines out of a rate-limited journal.
    The first line of a kind is written; the next ``every`` seconds of that kind are only counted, and the
    next line written says how many were held back: ``… (and 7,884 more like it in the last 10 s)``.
    """

    def __init__(
        self, logger: logging.Logger, *, every: float = STRANGER_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # kind -> (when its last line was written, held back since)

    def log(self, level: int, kind: str, message: str, *args: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self.clock()
        written, held = self._windows.get(kind, (-math.inf, 0))
        if now - written < self.every:
            self._windows[kind] = (written, held + 1)
            return
        self._windows[kind] = (now, 0)
        if held:
            message += " (and %s more like it in the last %d s)"
            args = (*args, f"{held:,}", round(now - written))
        self.logger.log(level, message, *args)

    def info(self, kind: str, message: str, *args: object) -> None:
        self.log(logging.INFO, kind, message, *args)
