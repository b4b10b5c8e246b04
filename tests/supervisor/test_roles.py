"""The role table (supervisor/_roles.py) against the normative one in docs/protocol.md §13, and its errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.supervisor.test_core import Driver
from urban_robot.supervisor import ComaAck, Connected, Identified, Ready, Reply, Role
from urban_robot.supervisor._roles import TRANSITIONS, RoleError, Trigger, next_role

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def documented_table() -> dict[tuple[Role, Trigger], Role | None]:
    """§13's transition table: (role, trigger) -> the next role, or None where it is an error ("—")."""
    section = PROTOCOL.read_text().split("## 13. Worker roles", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `") or line.startswith("| role \\")]
    header = next(line for line in rows if line.startswith("| role \\"))
    triggers = [Trigger(cell.strip("` ")) for cell in header.split("|")[2:-1]]
    table: dict[tuple[Role, Trigger], Role | None] = {}
    for line in rows:
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) != len(triggers) + 1 or line is header:
            continue  # the other tables of the section (roles, triggers)
        role = Role(cells[0].strip("`"))
        for trigger, cell in zip(triggers, cells[1:], strict=True):
            table[role, trigger] = None if cell == "—" else role if cell == "=" else Role(cell.strip("`"))
    return table


def test_the_documented_table_is_complete() -> None:
    table = documented_table()
    assert {role for role, _ in table} == set(Role)
    assert {trigger for _, trigger in table} == set(Trigger)
    assert len(table) == len(Role) * len(Trigger)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_every_move_of_a_role_is_the_documented_one(role: Role) -> None:
    table = documented_table()
    for trigger in Trigger:
        expected = table[role, trigger]
        if expected is None:
            with pytest.raises(RoleError):
                next_role(role, trigger)
        else:
            assert next_role(role, trigger) is expected, (role, trigger)
    assert set(TRANSITIONS[role]) == {t for t in Trigger if table[role, t] is not None}


def test_shutdown_is_allowed_in_every_role_but_gone() -> None:
    """A worker may always say it is leaving (§5.7): a role error there would keep it counted as a crash."""
    for role in Role:
        if role is not Role.GONE:
            assert next_role(role, Trigger.SHUTDOWN_ACK) in (Role.SHUTTING_DOWN, role)


@pytest.mark.parametrize(
    ("trigger", "role", "message"),
    [
        (Trigger.COMA_ACK, Role.CONNECTED, "'coma' is not allowed for a worker that is connected"),
        (Trigger.IDENTIFY, Role.IDENTIFIED, "'identify' is not allowed for a worker that is identified"),
        (Trigger.READY, Role.CONNECTED, "'ready' is not allowed for a worker that is connected"),
        (Trigger.PROMOTE, Role.CHECKING, "'promote' is not allowed for a worker that is checking"),
    ],
)
def test_errors_name_what_the_worker_sent(trigger: Trigger, role: Role, message: str) -> None:
    with pytest.raises(RoleError) as error:
        next_role(role, trigger)
    assert str(error.value) == message


def test_the_core_answers_an_event_out_of_order_with_the_wire_name() -> None:
    d = Driver()
    d.feed(Connected("a", identity="x"))
    assert d.feed(ComaAck("a", "early")) == [Reply({"error": "'coma' is not allowed for a worker that is connected"})]
    d.feed(Identified("a", version="1.0"))
    out = d.feed(Identified("a", version="1.0"))
    assert out == [Reply({"error": "'identify' is not allowed for a worker that is identified"})]
    assert d.core.clients["a"].role is Role.IDENTIFIED  # an error changes nothing
    assert d.cmds(d.feed(Ready("a")), "a") == ["health_check"]


def test_the_documented_diagram_matches_too() -> None:
    """Each arrow of §13's diagram (``a --> b: trigger ...``) is a move of the table."""
    section = PROTOCOL.read_text().split("## 13. Worker roles", 1)[1].split("\n## ", 1)[0]
    arrows = re.findall(r"^\s+(\w+) --> (\w+): (\w+)", section, flags=re.MULTILINE)
    assert len(arrows) >= 10
    for old, new, trigger in arrows:
        assert next_role(Role(old), Trigger(trigger)) is Role(new), (old, new, trigger)
