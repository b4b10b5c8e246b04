"""Worker roles: the one table that says how a worker's role may change.

Everything that changes a worker's role goes through ``next_role``; a trigger
missing from a role's row *is* the protocol error (the worker, or our own
bookkeeping, asked for something out of order). This file does not know why
a trigger happens: the core (``_core.py``) decides that.

    connected ──identify──▶ identified ──ready──▶ standby ◀──pass── checking
                                                   │  ▲  └──check──▶   │ fail
                                          promote  │  │ coma_ack        ▼
                                                   ▼  │            shutting_down ──stopped──▶ gone
                                                 running ──stop──▶ stopping

    any role but gone ──failed──▶ failed ──lost──▶ gone   (it cannot work and exits: a crash, not a leave)
"""

from __future__ import annotations

import enum


class Role(enum.Enum):
    CONNECTED = "connected"  # authenticated, has not identified yet
    IDENTIFIED = "identified"  # has its hello (token), logging in to Discord
    STANDBY = "standby"  # ready, in coma: not processing, cache warm
    CHECKING = "checking"  # asked for a health check, answer pending
    RUNNING = "running"  # holds the processing lease (or is being given it)
    STOPPING = "stopping"  # asked to stop processing (coma/shutdown), ack pending
    SHUTTING_DOWN = "shutting_down"  # asked to shut down, not processing
    FAILED = "failed"  # said it cannot work (Discord refused its login for good), not processing, exiting
    GONE = "gone"  # disconnected, dead or shut down


class Trigger(enum.Enum):
    IDENTIFY = "identify"
    ADOPT = "adopt"  # a reconnecting lease holder takes its lease back
    READY = "ready"
    CHECK = "check"
    PASS = "pass"
    FAIL = "fail"
    PROMOTE = "promote"
    STOP = "stop"  # coma or shutdown requested from the running worker
    COMA_ACK = "coma_ack"
    SHUTDOWN = "shutdown"  # shutdown requested from a worker that is not running
    SHUTDOWN_ACK = "shutdown_ack"
    FAILED = "failed"  # the worker sends ``failed``: it stopped processing and exits, as a crash
    LOST = "lost"  # disconnected, silent past the limit, or its process exited


class RoleError(Exception):
    """A trigger that the worker's current role does not allow."""


R, T = Role, Trigger

TRANSITIONS: dict[Role, dict[Trigger, Role]] = {
    R.CONNECTED: {
        T.IDENTIFY: R.IDENTIFIED,
        T.SHUTDOWN: R.SHUTTING_DOWN,
        T.SHUTDOWN_ACK: R.SHUTTING_DOWN,
        T.FAILED: R.FAILED,
        T.LOST: R.GONE,
    },
    R.IDENTIFIED: {
        T.READY: R.STANDBY,
        T.ADOPT: R.RUNNING,
        T.SHUTDOWN: R.SHUTTING_DOWN,
        T.SHUTDOWN_ACK: R.SHUTTING_DOWN,
        T.COMA_ACK: R.IDENTIFIED,
        T.FAILED: R.FAILED,
        T.LOST: R.GONE,
    },
    R.STANDBY: {
        T.READY: R.STANDBY,
        T.CHECK: R.CHECKING,
        T.PROMOTE: R.RUNNING,
        T.COMA_ACK: R.STANDBY,
        T.SHUTDOWN: R.SHUTTING_DOWN,
        T.SHUTDOWN_ACK: R.SHUTTING_DOWN,
        T.FAILED: R.FAILED,
        T.LOST: R.GONE,
    },
    R.CHECKING: {
        T.READY: R.CHECKING,
        T.PASS: R.STANDBY,
        T.FAIL: R.SHUTTING_DOWN,
        T.COMA_ACK: R.CHECKING,
        T.SHUTDOWN: R.SHUTTING_DOWN,
        T.SHUTDOWN_ACK: R.SHUTTING_DOWN,
        T.FAILED: R.FAILED,
        T.LOST: R.GONE,
    },
    R.RUNNING: {
        T.READY: R.RUNNING,
        T.STOP: R.STOPPING,
        T.COMA_ACK: R.STANDBY,  # it stopped by itself: proof enough
        T.SHUTDOWN_ACK: R.SHUTTING_DOWN,
        T.FAILED: R.FAILED,
        T.LOST: R.GONE,
    },
    R.STOPPING: {
        T.READY: R.STOPPING,
        T.COMA_ACK: R.STANDBY,
        T.SHUTDOWN_ACK: R.SHUTTING_DOWN,
        T.FAILED: R.FAILED,
        T.LOST: R.GONE,
    },
    R.SHUTTING_DOWN: {
        T.READY: R.SHUTTING_DOWN,
        T.COMA_ACK: R.SHUTTING_DOWN,
        T.SHUTDOWN: R.SHUTTING_DOWN,
        T.SHUTDOWN_ACK: R.SHUTTING_DOWN,
        T.FAILED: R.FAILED,
        T.LOST: R.GONE,
    },
    R.FAILED: {
        T.READY: R.FAILED,
        T.COMA_ACK: R.FAILED,
        T.SHUTDOWN_ACK: R.FAILED,  # still a crash: it said it cannot work
        T.FAILED: R.FAILED,
        T.LOST: R.GONE,
    },
    R.GONE: {},
}


# What a worker sent, for error messages: the wire's names, not ours.
WIRE_NAMES = {
    T.IDENTIFY: "identify",
    T.READY: "ready",
    T.COMA_ACK: "coma",
    T.SHUTDOWN_ACK: "shutdown",
    T.FAILED: "failed",
}


def next_role(role: Role, trigger: Trigger) -> Role:
    """The role after ``trigger``; ``RoleError`` if the table has no such move."""
    try:
        return TRANSITIONS[role][trigger]
    except KeyError:
        name = WIRE_NAMES.get(trigger, trigger.value)
        raise RoleError(f"{name!r} is not allowed for a worker that is {role.value}") from None
