"""A worker-side client of the Urban Robot v1 protocol, on trio and trio-websocket.

worker = Worker(version="1.4.2", health_checks={"modules.utilities": utilities_ok},
                get_cache=bot.dump_cache, set_cache=bot.load_cache,
                on_hello=lambda hello: bot.login(hello.token),
                on_start_processing=bot.resume, on_stop_processing=bot.pause)
async with trio.open_nursery() as nursery:
    await nursery.start(worker.run)
    ...  # when Discord says READY:
    await worker.ready()

A sharded bot (``worker.shards`` of ``worker.shard_count``, from ``hello``) awaits ``worker.identify_slot(shard_id)``
right before each shard's IDENTIFY (never before a RESUME) and sends it as soon as that returns.
"""

from ..protocol import (
    AckTimeout as AckTimeout,
    AuthenticationFailed as AuthenticationFailed,
    Backoff as Backoff,
    CacheMap as CacheMap,
    CacheSync as CacheSync,
    Coma as Coma,
    ConfigError as ConfigError,
    ConnectionLost as ConnectionLost,
    Custom as Custom,
    Endpoint as Endpoint,
    HealthReport as HealthReport,
    Heartbeat as Heartbeat,
    Hello as Hello,
    Identify as Identify,
    LeaseView as LeaseView,
    MalformedMessage as MalformedMessage,
    MessageTooLarge as MessageTooLarge,
    OutboxFull as OutboxFull,
    Ready as Ready,
    ShardError as ShardError,
    Shutdown as Shutdown,
    Timeouts as Timeouts,
    WorkerError as WorkerError,
)
from ._connection import event_frames as event_frames
from ._health import health_report as health_report
from ._outbox import Delivery as Delivery
from ._worker import Worker as Worker

__all__ = [
    "AckTimeout",
    "AuthenticationFailed",
    "Backoff",
    "CacheMap",
    "CacheSync",
    "Coma",
    "ConfigError",
    "ConnectionLost",
    "Custom",
    "Delivery",
    "Endpoint",
    "HealthReport",
    "Heartbeat",
    "Hello",
    "Identify",
    "LeaseView",
    "MalformedMessage",
    "MessageTooLarge",
    "OutboxFull",
    "Ready",
    "ShardError",
    "Shutdown",
    "Timeouts",
    "Worker",
    "WorkerError",
    "event_frames",
    "health_report",
]
