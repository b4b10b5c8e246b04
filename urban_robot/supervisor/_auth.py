"""Who is connecting: children (secrets derived from the state key), external workers, the admin.

A child's secret is ``<identity>.<hmac>``: the identity says which process it
is, the HMAC-SHA256 of the identity under the state directory's key proves it,
and it stays valid across supervisor restarts (so running children are adopted).
Every comparison is constant-time. Secrets never appear in a repr or a log.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Mapping

import attrs

from ..protocol import MAX_SECRET_LENGTH

ADMIN = "admin"


@attrs.frozen
class Identity:
    name: str
    admin: bool = False


@attrs.frozen
class Credentials:
    key: bytes = attrs.field(repr=False)
    admin_token: str | None = attrs.field(default=None, repr=False)
    worker_secrets: Mapping[str, str] = attrs.field(factory=dict, repr=False)  # name -> secret

    def child_secret(self, identity: str) -> str:
        digest = hmac.new(self.key, identity.encode(), hashlib.sha256).hexdigest()
        return f"{identity}.{digest}"

    def verify(self, auth: object) -> Identity | None:
        """The identity behind a CONNECT ``auth`` payload, or None."""
        if not isinstance(auth, dict):
            return None
        secret = auth.get("secret")
        if not isinstance(secret, str) or not secret or len(secret) > MAX_SECRET_LENGTH:
            return None
        if self.admin_token and hmac.compare_digest(secret.encode(), self.admin_token.encode()):
            return Identity(ADMIN, admin=True)
        for name, expected in self.worker_secrets.items():
            if hmac.compare_digest(secret.encode(), expected.encode()):
                return Identity(f"worker:{name}")
        identity, _, _ = secret.rpartition(".")
        if identity.startswith("child-") and hmac.compare_digest(secret.encode(), self.child_secret(identity).encode()):
            return Identity(identity)
        return None


@attrs.define(eq=False)
class LoginThrottle:
    """Failed admin logins per peer address: after ``free`` failures, each next try waits twice as long.

    Sans-IO (``now`` comes in). A peer that failed ``n > free`` times may try an admin login again only
    ``base * 2 ** (n - free - 1)`` seconds (at most ``cap``) after its last failure; until then its admin
    logins are refused unchecked (HTTP 429 with ``Retry-After``), so guessing the admin token from one
    address runs at about one try a minute. Worker secrets (256-bit HMACs, never guessed) are not held
    up: a stranger hammering from 127.0.0.1 must not keep the supervisor's own children out. A peer is
    forgotten ``forget_after`` seconds after its last failure; at most ``max_peers`` are remembered.
    """

    free: int = 3
    base: float = 0.5
    cap: float = 60.0
    forget_after: float = 600.0
    max_peers: int = 10_000
    _peers: OrderedDict[str, tuple[int, float]] = attrs.field(factory=OrderedDict, init=False, repr=False)

    def wait(self, peer: str, now: float) -> float:
        """Seconds before ``peer`` may try an admin login (0: now)."""
        failures, last = self._peers.get(peer, (0, -math.inf))
        if now - last >= self.forget_after:
            self._peers.pop(peer, None)
            return 0.0
        if failures <= self.free:
            return 0.0
        delay = min(self.cap, self.base * 2.0 ** (failures - self.free - 1))
        return max(0.0, last + delay - now)

    def failed(self, peer: str, now: float) -> None:
        failures, last = self._peers.pop(peer, (0, -math.inf))
        if now - last >= self.forget_after:
            failures = 0
        self._peers[peer] = (failures + 1, now)
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)

    def clear(self) -> None:
        """Forget every failure (an operator who locked themselves out, or a test)."""
        self._peers.clear()
