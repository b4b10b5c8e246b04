"""Who hears what: one small, synchronous message bus, subscribed to in one place (``_assembly.build``).

A message is any object; its *kind* is its class. ``publish(message)`` calls, in the order they subscribed,
the subscribers of each class in the message's MRO, most specific first. A union of classes subscribes to
each (``subscribe(Action, f)`` hears every action of the core: ``Action`` is the union of them).
Subscribers run inline, in the publisher's task: they must not block (start a task in a nursery of their
own if there is work to wait for). A subscriber's exception is the publisher's exception:
nothing is swallowed.

What is published, and by whom:

- each core event, as the core takes it (``UrbanRobot``);
- each core action, as it is carried out (``UrbanRobot``), in the core's order;
- ``Handled(event)`` once an event's actions are all carried out (``UrbanRobot``);
- ``DeployResult`` as each deploy ends (``Deployer``);
- ``ViewsChanged()`` when what the status views show may have changed (``StatusTracker``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

T = TypeVar("T")


@attrs.frozen
class Handled:
    """The core handled ``event`` and every action it returned has been carried out."""

    event: Any


@attrs.frozen
class ViewsChanged:
    """What ``/api/status``, ``/metrics`` and the dashboard show may have changed."""


class Bus:
    def __init__(self) -> None:
        self._subscribers: dict[type, list[Callable[[Any], object]]] = {}

    def subscribe(self, kind: type[T] | Any, subscriber: Callable[[T], object]) -> None:
        """Call ``subscriber(message)`` for each message published that is a ``kind`` (a class, or a union)."""
        union = isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
        for one in typing.get_args(kind) if union else (kind,):
            self._subscribers.setdefault(one, []).append(subscriber)

    def publish(self, message: object) -> None:
        for kind in type(message).__mro__:
            for subscriber in self._subscribers.get(kind, ()):
                subscriber(message)

    def subscriptions(self) -> list[tuple[str, str]]:
        """(kind, subscriber) pairs, in order: the graph, for a reader (``App.run`` logs it at DEBUG) or a test."""
        pairs = [(kind, fn) for kind, fns in self._subscribers.items() for fn in fns]
        return [(kind.__name__, getattr(fn, "__qualname__", repr(fn))) for kind, fn in pairs]
