"""A worker-side client of the Urban Robot v1 protocol, on trio and trio-websocket.

worker = Worker(version="1.4.2", health_checks={"modules.utilities": utilities_ok},
                get_cache=bot.dump_cache, set_cache=bot.load_cache,
                on_hello=lambda hello: bot.login(hello.token),
                on_start_processing=bot.resume, on_stop_processing=bot.pause)
async with trio.open_nursery() as nursery:
    await nursery.start(worker.run)
    ...  # when Discord says READY:
    await worker.ready()
"""

from ._config import Backoff as Backoff, Endpoint as Endpoint, Timeouts as Timeouts
from ._connection import event_frames as event_frames
from ._errors import (
    AckTimeout as AckTimeout,
    AuthenticationFailed as AuthenticationFailed,
    ConfigError as ConfigError,
    ConnectionLost as ConnectionLost,
    MalformedMessage as MalformedMessage,
    MessageTooLarge as MessageTooLarge,
    OutboxFull as OutboxFull,
    WorkerError as WorkerError,
)
from ._health import health_report as health_report
from ._lease import LeaseView as LeaseView
from ._messages import (
    CacheSync as CacheSync,
    Coma as Coma,
    Custom as Custom,
    HealthReport as HealthReport,
    Heartbeat as Heartbeat,
    Hello as Hello,
    Identify as Identify,
    Ready as Ready,
    Shutdown as Shutdown,
)
from ._outbox import Delivery as Delivery
from ._worker import Worker as Worker

__all__ = [
    "AckTimeout",
    "AuthenticationFailed",
    "Backoff",
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
    "Shutdown",
    "Timeouts",
    "Worker",
    "WorkerError",
    "event_frames",
    "health_report",
]
