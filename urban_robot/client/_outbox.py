"""The outbound queue that outlives connections.

Messages queued with :meth:`Outbox.put` are written in order, each once, on whatever connection is
up (after its ``hello``). A message leaves the queue only once its frames have been written: one
queued while disconnected, or not yet reached when a connection died, goes out after the next
reconnect. One that was written but not acknowledged when its connection died is *not* resent
(its :class:`Delivery` ends ``"lost"``): the supervisor may have handled it, and "once" beats
"at least once" for events that are not idempotent.

The queue is bounded. When it is full, ``put`` raises :class:`OutboxFull` and queues nothing:
nothing already queued is dropped behind the caller's back.
"""

from __future__ import annotations

import collections
from typing import Any

import attrs
import trio

from ..protocol import Message, OutboxFull


@attrs.define(eq=False)
class Delivery:
    """The fate of one queued message: ``"queued"`` → ``"sent"`` → ``"acked"`` or ``"lost"``."""

    message: Message
    state: str = "queued"
    answer: Any = None
    _done: trio.Event = attrs.field(factory=trio.Event)

    def settle(self, state: str, answer: Any = None) -> None:
        self.state, self.answer = state, answer
        self._done.set()

    async def wait(self) -> Any:
        """The ack's answer (None if the message was lost)."""
        await self._done.wait()
        return self.answer


@attrs.define(eq=False)
class Outbox:
    size: int = 1000
    _items: collections.deque[Delivery] = attrs.field(factory=collections.deque)
    _wake: trio.Event = attrs.field(factory=trio.Event)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Message) -> Delivery:
        if len(self._items) >= self.size:
            raise OutboxFull(f"outbound queue full ({self.size} messages): {message.event!r} not queued")
        delivery = Delivery(message)
        self._items.append(delivery)
        self._wake.set()
        return delivery

    async def next(self) -> Delivery:
        """The oldest message, left in the queue (``pop`` it once written)."""
        while not self._items:
            self._wake = trio.Event()
            await self._wake.wait()
        return self._items[0]

    def pop(self, delivery: Delivery) -> None:
        if self._items and self._items[0] is delivery:
            self._items.popleft()
            delivery.state = "sent"
