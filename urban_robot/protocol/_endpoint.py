"""Where a worker connects, with what, how long it waits, how it backs off: values, read from the environment once."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping

import attrs

from ._errors import ConfigError


@attrs.frozen
class Endpoint:
    url: str
    secret: str = attrs.field(repr=False)
    generation: int | None = None

    @property
    def ws_url(self) -> str:
        base = self.url.rstrip("/")
        for http, ws in (("https://", "wss://"), ("http://", "ws://")):
            if base.startswith(http):
                base = ws + base[len(http) :]
        return base + "/socket.io/?EIO=4&transport=websocket"

    @classmethod
    def resolve(
        cls, url: str | None, secret: str | None, generation: int | None, env: Mapping[str, str] = os.environ
    ) -> Endpoint:
        """Arguments first, then ``URBAN_ROBOT_URL``/``_SECRET``/``_GENERATION`` (generation optional)."""
        url = url or env.get("URBAN_ROBOT_URL")
        secret = secret or env.get("URBAN_ROBOT_SECRET")
        if not url:
            raise ConfigError("no supervisor URL: pass url= or set URBAN_ROBOT_URL")
        if not url.startswith(("http://", "https://", "ws://", "wss://")):
            raise ConfigError(f"URBAN_ROBOT_URL must start with http:// or https://, got {url!r}")
        if not secret:
            raise ConfigError("no secret: pass secret= or set URBAN_ROBOT_SECRET")
        if generation is None and env.get("URBAN_ROBOT_GENERATION"):
            try:
                generation = int(env["URBAN_ROBOT_GENERATION"])
            except ValueError:
                raise ConfigError("URBAN_ROBOT_GENERATION must be an integer") from None
        return cls(url, secret, generation)


@attrs.frozen
class Timeouts:
    """Every wait is bounded: past one of these the connection counts as hung and is redone."""

    connect: float = 10.0  # TCP + WebSocket handshake
    handshake: float = 10.0  # Engine.IO OPEN, then the Socket.IO CONNECT ack
    ack: float = 10.0  # each event's ack (hello included)
    health: float = 20.0  # each health check (the supervisor allows 30 s for the whole report)
    close: float = 2.0  # closing the WebSocket politely


@attrs.frozen
class Backoff:
    """Capped exponential back-off with jitter: attempt n waits ``min(cap, initial·factor^n)·U(1-jitter, 1)``.

    The supervisor is local: a refused connect costs microseconds, and every second waited past its
    restart is a second of the holder's lease gone before it is adopted (docs/reliability.md). Hence a
    short cap, not the 30 s a remote service would get.
    """

    initial: float = 0.1
    cap: float = 1.0
    factor: float = 2.0
    jitter: float = 0.5
    # While the worker holds a lease, every moment it does not see its restarted supervisor is a moment of its
    # lease gone before it is adopted (the chaos soak: a holder back 2.3 s after a restart, its 3 s lease out).
    holder_cap: float = 0.2

    def delay(self, attempt: int, rng: random.Random, *, holding: bool = False) -> float:
        """The wait before reconnect ``attempt`` (0: the first); ``holding`` a lease caps it at ``holder_cap``."""
        cap = min(self.cap, self.holder_cap) if holding else self.cap
        base = min(cap, self.initial * self.factor ** min(attempt, 64))
        return base * (1 - self.jitter * rng.random())
