"""A two-sided state flag whose both edges can be awaited."""

from __future__ import annotations

import attrs
import trio


@attrs.define(eq=False)
class Flag:
    """``on`` is set while the flag is up and ``off`` while it is down; each is renewed on the other edge.

    So ``await flag.on.wait()`` returns at once if the flag is up, else at the next rise.
    """

    on: trio.Event = attrs.field(factory=trio.Event)
    off: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self.off.set()

    def __bool__(self) -> bool:
        return self.on.is_set()

    def set(self, value: bool) -> bool:
        """Move to ``value``; True if that was a change."""
        if value == bool(self):
            return False
        if value:
            self.on.set()
            self.off = trio.Event()
        else:
            self.off.set()
            self.on = trio.Event()
        return True
