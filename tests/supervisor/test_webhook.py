"""GitHub push webhooks: signatures, the gate's decisions, and the HTTP route around it."""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any
from unittest.mock import ANY
from urllib.parse import quote

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from tests._helpers import start_server
from urban_robot.socketio import Server
from urban_robot.supervisor._webhook import (
    DEPLOY_TAG,
    Commit,
    Decision,
    Deploy,
    Ignored,
    Refused,
    WebhookConfig,
    WebhookGate,
    sign,
    verify_signature,
)
from urban_robot.supervisor._webhook_route import webhook_route
from urban_robot.web import Request, Response

SECRET = b"It's a Secret to Everybody"
SHA = "7b3e2f1c9a8d4e5f6a7b8c9d0e1f2a3b4c5d6e7f"
_ids = itertools.count()


def push(ref: str = "refs/heads/main", after: str = SHA, message: str | None = "fix the thing", **extra: Any) -> bytes:
    head = None if message is None else {"id": after, "message": message}
    return json.dumps({"ref": ref, "after": after, "head_commit": head, **extra}).encode()


def headers(body: bytes, event: str = "push", delivery: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or f"delivery-{next(_ids)}",
        "X-Hub-Signature-256": sign(SECRET, body),
        "Content-Type": "application/json",
        **extra,
    }


def decide(body: bytes, gate: WebhookGate | None = None, /, **kw: str) -> Decision:
    gate = gate or WebhookGate(WebhookConfig(secret=SECRET))
    return gate.decide(headers(body, **kw), body)


# ---------------------------------------------------------------------------- signatures
def test_signature_matches_githubs_documented_example() -> None:
    # The example from GitHub's "Validating webhook deliveries" page.
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert verify_signature(SECRET, b"Hello, World!", header)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha1=" + "0" * 40,
        "sha256=" + "0" * 64,  # well-formed, wrong
        "sha256=" + "g" * 64,
        "sha256=" + "ab " * 21 + "a",  # bytes.fromhex would accept the spaces
        "sha256=" + "٠" * 64,  # Arabic-Indic zeros are digits, not hex
        sign(SECRET, b"other body"),
        sign(SECRET, b"body") + "00",
        sign(b"other secret", b"body"),
    ],
)
def test_bad_signatures_are_false(header: str | None) -> None:
    assert not verify_signature(SECRET, b"body", header)


def test_uppercase_hex_is_the_same_signature() -> None:
    assert verify_signature(SECRET, b"body", "sha256=" + sign(SECRET, b"body")[7:].upper())


def test_an_empty_secret_verifies_nothing() -> None:
    assert not verify_signature(b"", b"body", sign(b"", b"body"))


# ---------------------------------------------------------------------------- refusals
def test_no_secret_configured_refuses_everything() -> None:
    for secret in (None, b""):
        decision = decide(push(), WebhookGate(WebhookConfig(secret=secret)))
        assert decision == Refused(403, "webhook secret not configured on this server")


def test_missing_or_bad_signature_is_401() -> None:
    body = push()
    gate = WebhookGate(WebhookConfig(secret=SECRET))
    missing = {k: v for k, v in headers(body).items() if k != "X-Hub-Signature-256"}
    tampered = body.replace(b"main", b"mail")
    for sent, received in [(missing, body), (headers(body), tampered)]:
        assert gate.decide(sent, received) == Refused(401, "missing or bad X-Hub-Signature-256")


def test_oversize_is_413_before_the_signature_is_computed() -> None:
    gate = WebhookGate(WebhookConfig(secret=SECRET, max_body=100))
    body = push(message="x" * 200)
    assert gate.decide({}, body) == Refused(413, "payload larger than 100 bytes")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"\xff\xfe\x00", "body is not valid JSON"),
        (b"[" * 100_000, "body is not valid JSON"),  # deep nesting: a RecursionError, mapped
        (b"[1, 2]", "body is not a JSON object"),
        (b"{}", "push payload without 'ref' and 'after' strings"),
        (json.dumps({"ref": "refs/heads/main", "after": 7}).encode(), "push payload without 'ref' and 'after' strings"),
        (push(after="not-a-sha"), "push payload's 'after' is not a commit id"),
    ],
)
def test_malformed_push_is_400(body: bytes, reason: str) -> None:
    assert decide(body) == Refused(400, reason)


def test_missing_delivery_id_is_400() -> None:
    body = push()
    gate = WebhookGate(WebhookConfig(secret=SECRET))
    assert gate.decide(headers(body, delivery="x" * 129), body).status == 400
    no_id = {k: v for k, v in headers(body).items() if k != "X-GitHub-Delivery"}
    assert gate.decide(no_id, body) == Refused(400, "missing or malformed X-GitHub-Delivery header")


# ---------------------------------------------------------------------------- ignored
def test_ping_is_answered_with_pong() -> None:
    assert decide(b'{"zen": "Keep it logically awesome."}', event="ping") == Ignored("pong")


def test_other_events_are_ignored() -> None:
    assert decide(b"{}", event="issues") == Ignored("event 'issues' is not a push")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (push(ref="refs/heads/dev"), "branch 'dev' is not 'main'"),
        (push(ref="refs/tags/v1.0"), "'refs/tags/v1.0' is not a branch"),
        (push(after="0" * 40, message=None, deleted=True), "branch 'main' was deleted"),
        (push(ref="refs/heads/main\nX-Injected: yes"), r"branch 'main\nX-Injected: yes' is not 'main'"),
    ],
)
def test_pushes_elsewhere_are_ignored(body: bytes, reason: str) -> None:
    assert decide(body) == Ignored(reason)


def test_the_branch_is_configurable() -> None:
    gate = WebhookGate(WebhookConfig(secret=SECRET, branch="release/2.x"))
    decision = decide(push(ref="refs/heads/release/2.x"), gate)
    assert isinstance(decision, Deploy)
    assert decision.commit == Commit(SHA, "release/2.x", "fix the thing")
    assert isinstance(decide(push(), gate), Ignored)


def test_a_redelivered_id_is_ignored_and_the_memory_is_bounded() -> None:
    gate = WebhookGate(WebhookConfig(secret=SECRET, remember=3))
    body = push()
    assert isinstance(gate.decide(headers(body, delivery="a"), body), Deploy)
    assert gate.decide(headers(body, delivery="a"), body) == Ignored("delivery 'a' already seen")
    for delivery in "bcd":
        assert isinstance(gate.decide(headers(body, delivery=delivery), body), Deploy)
    assert isinstance(gate.decide(headers(body, delivery="a"), body), Deploy)  # fell off the end


def test_a_redelivery_refreshes_its_place_in_the_memory() -> None:
    gate = WebhookGate(WebhookConfig(secret=SECRET, remember=2))
    body = push()
    for delivery in "aba":  # "a" seen again: now "b" is the oldest
        gate.decide(headers(body, delivery=delivery), body)
    gate.decide(headers(body, delivery="c"), body)
    assert isinstance(gate.decide(headers(body, delivery="a"), body), Ignored)
    assert isinstance(gate.decide(headers(body, delivery="b"), body), Deploy)


def test_an_unsigned_request_does_not_use_up_a_delivery_id() -> None:
    gate = WebhookGate(WebhookConfig(secret=SECRET))
    body = push()
    forged = {**headers(body, delivery="real"), "X-Hub-Signature-256": "sha256=" + "0" * 64}
    assert isinstance(gate.decide(forged, body), Refused)
    assert isinstance(gate.decide(headers(body, delivery="real"), body), Deploy)


# ---------------------------------------------------------------------------- the [DEPLOY] rule
@pytest.mark.parametrize(
    ("message", "deploys"),
    [
        (f"{DEPLOY_TAG} new cog", True),
        (f"{DEPLOY_TAG}\n\nbody", True),
        ("fix typo", False),
        (f"fix typo {DEPLOY_TAG}", False),
        ("[deploy] lower case", False),
        (None, False),  # no head commit
    ],
)
def test_deploy_tag_rule(message: str | None, deploys: bool) -> None:
    gate = WebhookGate(WebhookConfig(secret=SECRET, require_deploy_tag=True))
    decision = decide(push(message=message), gate)
    assert isinstance(decision, Deploy) is deploys
    if not deploys:
        assert decision == Ignored("head commit message does not start with [DEPLOY]")


def test_the_rule_reads_the_message_of_the_commit_deployed() -> None:
    """``head_commit`` naming another commit than ``after`` would let one commit's tag admit another."""
    gate = WebhookGate(WebhookConfig(secret=SECRET, require_deploy_tag=True))
    other = "0123456789abcdef0123456789abcdef01234567"
    body = json.dumps({"ref": "refs/heads/main", "after": SHA, "head_commit": {"id": other, "message": "[DEPLOY] x"}})
    assert decide(body.encode(), gate) == Refused(400, "push payload's head_commit is not its 'after' commit")
    same = json.dumps(
        {"ref": "refs/heads/main", "after": SHA, "head_commit": {"id": SHA.upper(), "message": "[DEPLOY]"}}
    )
    assert decide(same.encode(), gate) == Deploy(Commit(SHA, "main", "[DEPLOY]"), ANY)


def test_without_the_rule_any_message_deploys() -> None:
    decision = decide(push(message="fix typo"))
    assert isinstance(decision, Deploy)
    assert decision.commit == Commit(SHA, "main", "fix typo")


# ---------------------------------------------------------------------------- encodings and headers
def test_form_encoded_payload_is_read() -> None:
    body = b"payload=" + quote(push(message="from a form").decode()).encode()
    decision = decide(body, **{"Content-Type": "application/x-www-form-urlencoded"})
    assert isinstance(decision, Deploy)
    assert decision.commit.message == "from a form"


@pytest.mark.parametrize("body", [b"", b"&&", b"other=1", b"payload=%7B", b"\xff=1"])
def test_bad_form_encoded_payload_is_400(body: bytes) -> None:
    decision = decide(body, **{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    assert isinstance(decision, Refused)
    assert decision.status == 400


def test_header_names_are_case_insensitive() -> None:
    body = push()
    lowered = {k.lower(): v for k, v in headers(body).items()}
    upper = {k.upper(): v for k, v in headers(body).items()}
    gate = WebhookGate(WebhookConfig(secret=SECRET))
    assert isinstance(gate.decide(lowered, body), Deploy)
    assert isinstance(gate.decide(upper, body), Deploy)


def test_uppercase_sha_is_normalised() -> None:
    decision = decide(push(after=SHA.upper()))
    assert isinstance(decision, Deploy)
    assert decision.commit.sha == SHA


def test_secret_is_not_in_reprs() -> None:
    gate = WebhookGate(WebhookConfig(secret=SECRET))
    assert SECRET.decode() not in repr(gate)
    assert SECRET.decode() not in repr(gate.config)


# ---------------------------------------------------------------------------- never raises
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
push_like = st.fixed_dictionaries(
    {
        "ref": st.just("refs/heads/main") | st.sampled_from(["refs/heads/dev", "refs/tags/x"]) | json_values,
        "after": st.just(SHA) | st.sampled_from(["0" * 40, "f" * 64]) | st.text(alphabet="0123456789abcdefABCDEF"),
    },
    optional={
        "deleted": json_values,
        "head_commit": json_values
        | st.fixed_dictionaries({}, optional={"message": st.sampled_from([f"{DEPLOY_TAG} x", "x"]) | json_values}),
    },
)
header_names = st.sampled_from(
    ["X-GitHub-Event", "x-github-delivery", "X-Hub-Signature-256", "Content-Type", "X-Other"]
) | st.text(max_size=20)
header_values = st.sampled_from(["push", "ping", "application/x-www-form-urlencoded", "sha256="]) | st.text()


@pytest.mark.slow
@given(body=st.binary(max_size=300), raw_headers=st.dictionaries(header_names, header_values, max_size=6))
def test_arbitrary_requests_only_make_decisions(body: bytes, raw_headers: dict[str, str]) -> None:
    gate = WebhookGate(WebhookConfig(secret=SECRET, max_body=200))
    assert isinstance(gate.decide(raw_headers, body), Refused | Ignored | Deploy)


@pytest.mark.slow
@given(
    payload=st.one_of(push_like, json_values),
    event=st.just("push") | st.sampled_from(["ping", "issues"]) | st.text(),
    delivery=st.uuids().map(str) | st.text(max_size=140),  # 140: past the length limit too
    rule=st.booleans(),
    form=st.booleans(),
)
def test_arbitrary_signed_payloads_only_make_decisions(
    payload: object, event: str, delivery: str, rule: bool, form: bool
) -> None:
    body = json.dumps(payload).encode()
    content_type = "application/json"
    if form:
        body, content_type = b"payload=" + quote(body.decode()).encode(), "application/x-www-form-urlencoded"
    gate = WebhookGate(WebhookConfig(secret=SECRET, require_deploy_tag=rule))
    sent = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(SECRET, body),
        "Content-Type": content_type,
    }
    decision = gate.decide(sent, body)
    assert isinstance(decision, Refused | Ignored | Deploy)
    assert "\n" not in decision.reason
    if isinstance(decision, Deploy):
        assert decision.commit.branch == "main"
        assert not rule or decision.commit.message.startswith(DEPLOY_TAG)


# ---------------------------------------------------------------------------- the route
def request(body: bytes, method: str = "POST", **kw: Any) -> Request:
    sent = {k.lower(): v for k, v in headers(body, **kw).items()}
    return Request(method, "/webhook", "", sent, body, ("192.0.2.1", 4242))


async def test_route_deploys_and_answers_one_line() -> None:
    deployed: list[Commit] = []
    handle = webhook_route(WebhookGate(WebhookConfig(secret=SECRET)), deployed.append)
    response = await handle(request(push()))
    assert response == Response.text(202, f"deploying {SHA[:12]} from 'main'")
    assert deployed == [Commit(SHA, "main", "fix the thing")]


@pytest.mark.parametrize(
    ("body", "kw", "status", "text"),
    [
        (b"{}", {"event": "ping"}, 200, "pong"),
        (push(ref="refs/heads/dev"), {}, 200, "branch 'dev' is not 'main'"),
        (b"nope", {}, 400, "body is not valid JSON"),
    ],
)
async def test_route_answers_decisions(body: bytes, kw: dict[str, str], status: int, text: str) -> None:
    deployed: list[Commit] = []
    handle = webhook_route(WebhookGate(WebhookConfig(secret=SECRET)), deployed.append)
    assert await handle(request(body, **kw)) == Response.text(status, text)
    assert deployed == []


async def test_route_refuses_other_methods() -> None:
    handle = webhook_route(WebhookGate(WebhookConfig(secret=SECRET)), lambda commit: None)
    response = await handle(request(push(), method="GET"))
    assert response.status == 405


async def test_a_deploy_that_cannot_be_scheduled_can_be_redelivered() -> None:
    send, receive = trio.open_memory_channel[Commit](0)  # nobody waiting: send_nowait raises WouldBlock
    handle = webhook_route(WebhookGate(WebhookConfig(secret=SECRET)), send.send_nowait)
    first = request(push(), delivery="once")
    assert (await handle(first)).status == 503
    async with receive:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive.receive)
            await trio.testing.wait_all_tasks_blocked()
            assert (await handle(first)).status == 202  # not ignored as already seen


async def test_the_secret_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def explode(commit: Commit) -> None:
        raise RuntimeError("queue closed")

    for gate in (WebhookGate(WebhookConfig(secret=SECRET)), WebhookGate(WebhookConfig())):
        handle = webhook_route(gate, explode)
        for body, kw in [(push(), {}), (b"x", {}), (b"{}", {"event": "ping"})]:
            await handle(request(body, **kw))
    assert caplog.records
    assert SECRET.decode() not in caplog.text


async def test_route_on_a_real_server() -> None:
    deployed: list[Commit] = []
    server = Server()
    server.add_route("POST", "/hooks/github", webhook_route(WebhookGate(WebhookConfig(secret=SECRET)), deployed.append))
    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, server)
        body = push()
        async with httpx.AsyncClient() as http:
            ok = await http.post(url + "/hooks/github", content=body, headers=headers(body))
            forged = await http.post(url + "/hooks/github", content=body, headers={"X-GitHub-Event": "push"})
        assert (ok.status_code, ok.text) == (202, f"deploying {SHA[:12]} from 'main'")
        assert (forged.status_code, forged.text) == (401, "missing or bad X-Hub-Signature-256")
        assert deployed == [Commit(SHA, "main", "fix the thing")]
        nursery.cancel_scope.cancel()
