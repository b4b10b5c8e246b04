"""GitHub push webhooks: verify, filter, decide. Sans-IO: bytes and headers in, a decision out.

``WebhookGate.decide(headers, body)`` answers every request with one value:

    Refused(status, reason)   403 no secret configured, 413 too large, 401 bad or missing signature,
                              400 missing headers, malformed JSON or a push without a ref/commit
    Ignored(reason)           200: ping ("pong"), other events, tags, other branches, deleted
                              branches, a delivery seen before, no ``[DEPLOY]`` tag when required
    Deploy(commit, delivery)  202: deploy ``commit`` (``after``, the pushed head: exactly this commit is deployed)

Checks run cheapest and least trusting first: size, then the signature, and only then is anything
in the body looked at. The signature covers the body, not the headers, so the delivery-id memory
is a de-duplication of GitHub's redeliveries, not a replay defence; replaying a signed body can at
worst ask again for a deploy of a commit that was once the branch's head, which the deployer ignores
when it is older than the deployed one (and refuses when it is no longer on the branch).

The ``[DEPLOY]`` rule reads ``head_commit.message``; with the rule on, a ``head_commit`` whose ``id`` is not
``after`` is refused, so the message checked is always that of the commit deployed.

The HTTP side, ``webhook_route(gate, on_deploy)``, lives in ``_webhook_route.py``: this module stays
sans-IO (``tests/test_sans_io.py``). The secret is never logged and never in a repr; reasons quote payload
strings with ``repr`` so they stay one line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import string
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import attrs

DEPLOY_TAG = "[DEPLOY]"
SIGNATURE_PREFIX = "sha256="
MAX_DELIVERY_ID = 128  # GitHub's are GUIDs (36 characters); the bound keeps the memory bounded too
_HEX = frozenset(string.hexdigits)
_NULL_SHAS = frozenset({"0" * 40, "0" * 64})  # what ``after`` is when a branch is deleted


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` (``X-Hub-Signature-256``) is ``sha256=<hex HMAC-SHA256 of body under secret>``."""
    if not secret or header is None or not header.startswith(SIGNATURE_PREFIX):
        return False
    given = header[len(SIGNATURE_PREFIX) :]
    # bytes.fromhex would accept spaces, so check the alphabet ourselves.
    if len(given) != 64 or not _HEX.issuperset(given):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).digest()
    return hmac.compare_digest(expected, bytes.fromhex(given))


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub would send for ``body`` (for tests and tools)."""
    return SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


@attrs.frozen
class Commit:
    sha: str
    branch: str
    message: str


@attrs.frozen
class Refused:
    status: int
    reason: str


@attrs.frozen
class Ignored:
    reason: str
    status: int = 200


@attrs.frozen
class Deploy:
    commit: Commit
    delivery: str

    @property
    def status(self) -> int:
        return 202

    @property
    def reason(self) -> str:
        return f"deploying {self.commit.sha[:12]} from {self.commit.branch!r}"


Decision = Refused | Ignored | Deploy


@attrs.frozen
class WebhookConfig:
    secret: bytes | None = attrs.field(default=None, repr=False)
    branch: str = "main"
    require_deploy_tag: bool = False  # the original bot's rule: deploy only "[DEPLOY] ..." head commits
    max_body: int = 1_000_000
    remember: int = 1000  # delivery ids kept to ignore redeliveries


class _BadPayload(Exception):
    """The signed body is not a push payload we can read; the message is the 400's reason."""


@attrs.define(eq=False)
class WebhookGate:
    config: WebhookConfig
    _seen: OrderedDict[str, None] = attrs.field(factory=OrderedDict, init=False, repr=False)

    def decide(self, headers: Mapping[str, str], body: bytes) -> Decision:
        """The answer to one webhook request; never raises for anything a peer can send."""
        headers = {name.lower(): value for name, value in headers.items()}
        refusal = self._refusal(headers, body)
        if refusal is not None:
            return refusal
        delivery = headers.get("x-github-delivery", "")
        if not delivery or len(delivery) > MAX_DELIVERY_ID:
            return Refused(400, "missing or malformed X-GitHub-Delivery header")
        if not self._remember(delivery):
            return Ignored(f"delivery {delivery!r} already seen")
        event = headers.get("x-github-event", "")
        if event == "ping":
            return Ignored("pong")
        if event != "push":
            return Ignored(f"event {_short(event)!r} is not a push")
        try:
            return self._push(_payload(headers, body), delivery)
        except _BadPayload as exc:
            return Refused(400, str(exc))

    def forget(self, delivery: str) -> None:
        """Let a redelivery of ``delivery`` through again (its deploy could not be scheduled)."""
        self._seen.pop(delivery, None)

    def _refusal(self, headers: Mapping[str, str], body: bytes) -> Refused | None:
        if not self.config.secret:
            return Refused(403, "webhook secret not configured on this server")
        if len(body) > self.config.max_body:
            return Refused(413, f"payload larger than {self.config.max_body} bytes")
        if not verify_signature(self.config.secret, body, headers.get("x-hub-signature-256")):
            return Refused(401, "missing or bad X-Hub-Signature-256")
        return None

    def _remember(self, delivery: str) -> bool:
        """Record ``delivery``; False if it was already there (an LRU: old ids fall off)."""
        if delivery in self._seen:
            self._seen.move_to_end(delivery)
            return False
        self._seen[delivery] = None
        while len(self._seen) > self.config.remember:
            self._seen.popitem(last=False)
        return True

    def _push(self, payload: dict[str, Any], delivery: str) -> Decision:
        ref, after = payload.get("ref"), payload.get("after")
        if not isinstance(ref, str) or not isinstance(after, str):
            raise _BadPayload("push payload without 'ref' and 'after' strings")
        if not ref.startswith("refs/heads/"):
            return Ignored(f"{_short(ref)!r} is not a branch")
        branch = ref.removeprefix("refs/heads/")
        if branch != self.config.branch:
            return Ignored(f"branch {_short(branch)!r} is not {self.config.branch!r}")
        if payload.get("deleted") is True or after in _NULL_SHAS:
            return Ignored(f"branch {branch!r} was deleted")
        if len(after) not in (40, 64) or not _HEX.issuperset(after):
            raise _BadPayload("push payload's 'after' is not a commit id")
        message = _head_message(payload)
        if self.config.require_deploy_tag and _head_id(payload) not in (None, after.lower()):
            raise _BadPayload("push payload's head_commit is not its 'after' commit")
        if self.config.require_deploy_tag and not message.startswith(DEPLOY_TAG):
            return Ignored(f"head commit message does not start with {DEPLOY_TAG}")
        return Deploy(Commit(after.lower(), branch, message), delivery)


def _payload(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The push payload: JSON, or GitHub's form encoding (``payload=<json>``) if so configured."""
    data = body
    if headers.get("content-type", "").split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            data = parse_qs(body.decode("ascii"), strict_parsing=True)["payload"][0].encode()
        except (UnicodeDecodeError, ValueError, KeyError) as exc:
            raise _BadPayload("form-encoded body without a 'payload' field") from exc
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _BadPayload("body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise _BadPayload("body is not a JSON object")
    return payload


def _head_message(payload: dict[str, Any]) -> str:
    # ``head_commit`` is null when a push brings no new commit; then there is no message to match.
    head = payload.get("head_commit")
    message = head.get("message") if isinstance(head, dict) else None
    return message if isinstance(message, str) else ""


def _head_id(payload: dict[str, Any]) -> str | None:
    head = payload.get("head_commit")
    commit = head.get("id") if isinstance(head, dict) else None
    return commit.lower() if isinstance(commit, str) else None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
