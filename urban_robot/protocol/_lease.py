"""The worker's own view of its lease (docs/protocol.md §8.1), sans-IO: time comes in as arguments.

A grant (epoch + lease token) is not permission. Permission is a renewal ``{epoch, lease > 0}``
answering a heartbeat for the *same* grant, and it lasts until ``sent_at + lease``, where
``sent_at`` was taken before the heartbeat was written. Each grant gets a serial number so that an
answer to a heartbeat sent under an older grant (since dropped or replaced) is never used.
"""

from __future__ import annotations

import math

import attrs

from ._messages import Renewal


@attrs.frozen
class Grant:
    epoch: int
    lease_token: str = attrs.field(repr=False)
    serial: int


@attrs.frozen
class HeartbeatSent:
    """What a heartbeat was sent under: its answer is judged against this."""

    grant: Grant | None
    at: float


@attrs.define
class LeaseView:
    grant: Grant | None = None
    until: float = -math.inf
    _serial: int = 0

    def processing(self, now: float) -> bool:
        return self.grant is not None and now < self.until

    def take(self, epoch: int, lease_token: str) -> Grant:
        """A new grant (``process_commands`` or an adopting hello); not yet permission."""
        self._serial += 1
        if self.grant is None or self.grant.epoch != epoch:
            self.until = -math.inf
        self.grant = Grant(epoch, lease_token, self._serial)
        return self.grant

    def drop(self) -> None:
        self.grant = None
        self.until = -math.inf

    def sent(self, now: float) -> HeartbeatSent:
        return HeartbeatSent(self.grant, now)

    def answer(self, sent: HeartbeatSent, renewal: Renewal, now: float) -> str:
        """Apply a heartbeat's answer: ``"renewed"``, ``"late"``, ``"fenced"`` or ``"ignored"``."""
        if sent.grant is None or sent.grant != self.grant:
            return "ignored"  # no grant then, or another one since
        if renewal.epoch != sent.grant.epoch or renewal.lease <= 0:
            self.drop()
            return "fenced"
        until = sent.at + renewal.lease
        if now >= until:
            return "late"
        self.until = max(self.until, until)
        return "renewed"
