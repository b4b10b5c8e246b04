"""Secrets compared in constant time and never upset by what a peer sends; a peer's strings made safe to print.

Issue 13, finding 9 (the parts that are not the dashboard's cookie or the working directory's files).
"""

from __future__ import annotations

import logging
from typing import Any

from tests.supervisor.test_core import Driver
from urban_robot.cli import format_status
from urban_robot.logs import Redactor, TextFormatter, printable
from urban_robot.supervisor import Connected, Disconnected, Identified, Send

ESCAPES = "1.0\x1b]0;owned\x07\x1b[2J\nINFO urban_robot: forged line\u202ecod.exe"


def _hello(out: list[Any]) -> dict[str, Any]:
    return dict(next(a.data for a in out if isinstance(a, Send) and a.event == "hello"))


def test_a_lease_token_of_any_text_is_compared_without_upsetting_the_core() -> None:
    """The lease token is compared with hmac.compare_digest now; non-ASCII must be no TypeError (a crash)."""
    d = Driver()
    d.join("a")
    d.renew("a", 1)
    d.feed(Disconnected("a"), at=1)
    for n, guess in enumerate(["tökén-1", "token-2", "", "token-1 "]):
        d.feed(Connected(f"x{n}", identity="id-a"), at=2)
        assert (
            _hello(d.feed(Identified(f"x{n}", version="1.0", epoch=1, lease_token=guess)))["process_commands"] is False
        )
    d.feed(Connected("a2", identity="id-a"), at=2)
    assert _hello(d.feed(Identified("a2", version="1.0", epoch=1, lease_token="token-1")))["process_commands"] is True


def test_a_workers_version_reaches_status_without_its_escape_sequences() -> None:
    text = format_status({"workers": [{"identity": "child-1", "role": "running", "version": ESCAPES}]})
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b]0;owned" in text and "\\u202e" in text
    assert len(text.splitlines()) == 2 + 4  # header and one row, a blank line and three lines of state


def test_a_log_line_quoting_a_peer_stays_one_safe_line() -> None:
    record = logging.LogRecord("urban_robot", logging.INFO, __file__, 1, "worker %s: %s", ("child-1", ESCAPES), None)
    line = TextFormatter(Redactor([])).format(record)
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    assert line.endswith("worker child-1: " + printable(ESCAPES))
