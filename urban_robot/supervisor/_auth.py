"""Who is connecting: children (secrets derived from the state key), external workers, the admin.

A child's secret is ``<identity>.<hmac>``: the identity says which process it
is, the HMAC-SHA256 of the identity under the state directory's key proves it,
and it stays valid across supervisor restarts (so running children are adopted).
Every comparison is constant-time. Secrets never appear in a repr or a log.
"""

from __future__ import annotations

import hashlib
import hmac
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
