from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from urban_robot.logs import REDACTED, LogFormat, configure_logging

TOKEN = "MTIz.discord-bot-token.xyz"
ADMIN = "admin-token-42"
WEBHOOK = b"webhook-secret"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def setup(fmt: LogFormat) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(logging.INFO, fmt, [TOKEN, ADMIN, WEBHOOK, None, ""], stream=stream)
    return stream


def fail_with_token() -> None:
    try:
        raise RuntimeError(f"401 for token {TOKEN}")
    except RuntimeError:
        logging.getLogger("urban_robot.notify").exception("cannot post with %s", ADMIN)


def test_json_lines_parse_and_carry_extras() -> None:
    stream = setup("json")
    log = logging.getLogger("urban_robot.children")
    log.info("spawned %s", "w1", extra={"worker": "w1", "epoch": 3})
    log.debug("not shown")
    log.warning("plain")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["level"] == "INFO"
    assert first["logger"] == "urban_robot.children"
    assert first["message"] == "spawned w1"
    assert (first["worker"], first["epoch"]) == ("w1", 3)
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert set(second) == {"ts", "level", "logger", "message"}


def test_json_secrets_redacted_including_the_exception() -> None:
    stream = setup("json")
    fail_with_token()
    logging.getLogger("x").info("hook", extra={"secret": WEBHOOK.decode(), "obj": object()})
    text = stream.getvalue()
    assert TOKEN not in text and ADMIN not in text and WEBHOOK.decode() not in text
    entry, hook = map(json.loads, text.splitlines())
    assert entry["message"] == f"cannot post with {REDACTED}"
    assert f"401 for token {REDACTED}" in entry["exception"]
    assert "Traceback" in entry["exception"]
    assert hook["secret"] == REDACTED
    assert hook["obj"].startswith("<object")  # not JSON: carried as its str()


def test_text_format_and_redaction() -> None:
    stream = setup("text")
    logging.getLogger("urban_robot").info("deploying %s", "abc123", extra={"worker": "w2"})
    fail_with_token()
    text = stream.getvalue()
    first = text.splitlines()[0]
    assert " INFO urban_robot: deploying abc123 worker=w2" in first
    assert TOKEN not in text and ADMIN not in text
    assert f"cannot post with {REDACTED}" in text
    assert f"RuntimeError: 401 for token {REDACTED}" in text


def test_later_handlers_see_the_redacted_record() -> None:
    setup("text")
    seen: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    logging.getLogger().addHandler(Capture())  # e.g. the Discord log handler, added after configure_logging
    logging.getLogger("urban_robot").warning("token is %s", TOKEN)
    assert seen == [f"token is {REDACTED}"]


def test_configure_twice_replaces_its_own_handler_only() -> None:
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    first = setup("text")
    second = setup("json")
    logging.getLogger("urban_robot").info("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "once"
    assert other in logging.getLogger().handlers


def test_unknown_format_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging(logging.INFO, "xml")  # type: ignore[arg-type]


def test_the_already_notified_marker_is_not_shown() -> None:
    """The Discord bridge's internal marker is no field for the operator (it read ``already_notified=True``)."""
    from urban_robot.supervisor._notify import ALREADY_NOTIFIED

    stream = io.StringIO()
    handler = configure_logging(logging.INFO, "text", [], stream=stream)
    try:
        logging.getLogger("urban_robot.supervisor").info("child-1 is running, epoch 1", extra=ALREADY_NOTIFIED)
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue().rstrip().endswith("child-1 is running, epoch 1")


def test_httpx_request_lines_stay_out_of_the_log_unless_debugging() -> None:
    """Several hosts call etcd and their peers a few times a second: httpx's INFO line per request would fill the
    journal. Its warnings still show; at DEBUG everything does."""
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1:2379/v3/kv/range")
    logging.getLogger("httpx").warning("something httpx warns about")
    assert "HTTP Request" not in stream.getvalue() and "something httpx warns about" in stream.getvalue()
    configure_logging("DEBUG", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1:2379/v3/lease/keepalive")
    assert "lease/keepalive" in stream.getvalue()
    configure_logging("INFO", stream=io.StringIO())
