"""Who is connecting: children (secrets derived from the state key), external workers, the admin.

A child's secret is ``<identity>.<hmac>``: the identity says which process it
is, and the HMAC-SHA256 under the state directory's key of the identity *and a
nonce drawn for that one spawn* proves it. The secret is valid only while the
supervisor has that spawn bound (``bind`` when it starts the process or adopts
it, ``revoke`` when it exits): the nonce is kept with the child in the children
registry, so a child still running is adopted after a supervisor restart and
the secret of one that exited is refused for good, however many restarts later.
Every comparison is constant-time. Secrets and nonces never appear in a repr or a log.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections import OrderedDict
from collections.abc import Mapping

import attrs

from ..protocol import MAX_SECRET_LENGTH

ADMIN = "admin"


@attrs.frozen
class Identity:
    name: str
    admin: bool = False
    generation: int | None = None  # a child's: the generation its spawn was bound with (it outranks its own claim)
    release: str | None = None  # a child's: what it runs ("deploy 747c50f12ab3"), for reasons
    group: int = 0  # a child's: the shard group it was spawned for (0: the only one, unsharded)


@attrs.define(eq=False)
class Credentials:
    key: bytes = attrs.field(repr=False)
    admin_token: str | None = attrs.field(default=None, repr=False)
    worker_secrets: Mapping[str, str] = attrs.field(factory=dict, repr=False)  # name -> secret
    # identity -> nonce of each child spawn the supervisor has now (started or adopted): only these get in
    _spawns: dict[str, str] = attrs.field(factory=dict, init=False, repr=False)
    # identity -> (generation, release) of that spawn: a verified child's Identity carries them
    _spawned_as: dict[str, tuple[int | None, str | None, int]] = attrs.field(factory=dict, init=False, repr=False)

    def bind(
        self,
        identity: str,
        nonce: str | None = None,
        *,
        generation: int | None = None,
        release: str | None = None,
        group: int = 0,
    ) -> str:
        """Make ``identity``'s spawn (with ``nonce``: an adopted one's, from the registry; else a fresh one) the one
        whose secret is valid, and return that secret. Any earlier secret of ``identity`` is refused from now on.
        ``generation`` and ``release`` are what the process manager spawned it as: its verified Identity says so."""
        self._spawns[identity] = nonce if nonce is not None else secrets.token_hex(16)
        self._spawned_as[identity] = (generation, release, group)
        return self.child_secret(identity)

    def revoke(self, identity: str) -> None:
        """``identity``'s process is gone: its secret is refused from now on."""
        self._spawns.pop(identity, None)
        self._spawned_as.pop(identity, None)

    def nonce(self, identity: str) -> str | None:
        """The nonce ``identity``'s current spawn is bound with (kept in the children registry), or None."""
        return self._spawns.get(identity)

    def child_secret(self, identity: str) -> str:
        """The secret of ``identity``'s current spawn (KeyError if none is bound)."""
        return self.secret_for(identity, self._spawns[identity])

    def secret_for(self, identity: str, nonce: str) -> str:
        """The secret of ``identity`` spawned with ``nonce``, bound or not (what that process was started with)."""
        message = b"%d:%s:%s" % (len(identity.encode()), identity.encode(), nonce.encode())  # unambiguous
        return f"{identity}.{hmac.new(self.key, message, hashlib.sha256).hexdigest()}"

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
        nonce = self._spawns.get(identity) if identity.startswith("child-") else None
        if nonce is None:
            return None  # not a child the supervisor has now: exited, never spawned, or not adopted
        if hmac.compare_digest(secret.encode(), self.secret_for(identity, nonce).encode()):
            generation, release, group = self._spawned_as.get(identity, (None, None, 0))
            return Identity(identity, generation=generation, release=release, group=group)
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
        # The exponent is bounded: past ~1,030 failures 2.0 ** n overflows (a wrong-secret flood did it, and every
        # admin request from that address then failed with an internal error instead of a 429).
        delay = min(self.cap, self.base * 2.0 ** min(failures - self.free - 1, 64))
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
