"""The worker protocol's errors, on both sides (part of the tree drawn in ``urban_robot._errors``).

UrbanRobotError             (urban_robot._errors)
 └─ WorkerError             base of what the worker protocol and its SDKs raise on purpose
     ├─ ConfigError         URL, secret or generation missing or malformed (one-line message)
     ├─ AuthenticationFailed  the supervisor refused the secret (CONNECT_ERROR): not retried
     ├─ OutboxFull          the outbound queue is full: the message was NOT queued
     ├─ MessageTooLarge     a frame would exceed the supervisor's maxPayload: not sent
     ├─ MalformedMessage    a message that breaks docs/protocol.md (also a ValueError); the supervisor
     │                      answers a worker's with the text as its error (§7)
     └─ ConnectionLost      the connection is gone or hung; the worker drops it and reconnects
         └─ AckTimeout      no ack within the ack time-out
ShardError                  a shard plan that cannot be built, a misused identify scheduler, or a
                            malformed ``GET /gateway/bot`` answer (also a ValueError; one line that
                            says what to do; ``_shards.py``)
"""

from __future__ import annotations

from .._errors import UrbanRobotError


class WorkerError(UrbanRobotError):
    """Base class of the worker protocol's errors."""


class ConfigError(WorkerError):
    """The worker's configuration is missing or malformed."""


class AuthenticationFailed(WorkerError):
    """The supervisor answered CONNECT with ``authentication failed``: a configuration error."""


class OutboxFull(WorkerError):
    """The outbound queue holds ``outbox_size`` messages already; this one was not queued."""


class MessageTooLarge(WorkerError):
    """A frame is larger than the ``maxPayload`` the supervisor announced."""


class MalformedMessage(WorkerError, ValueError):
    """A message that does not follow the protocol. Its text never contains a token."""


class ConnectionLost(WorkerError):
    """The current connection closed, broke or stopped answering."""


class AckTimeout(ConnectionLost):
    """An event's ack did not come in time: the connection is considered hung."""


class ShardError(UrbanRobotError, ValueError):
    """A shard plan or identify slot request that breaks the rules, or Discord's ``/gateway/bot`` answer
    malformed. Its text is one line and says what to do; it never contains a token."""
