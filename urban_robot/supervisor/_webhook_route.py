"""The webhook's HTTP route: ``WebhookGate.decide`` (``_webhook.py``, sans-IO) behind ``Server.add_route``.

``on_deploy`` may answer what will really happen instead of the gate's 202: ``(200, "already running <sha12>")``
for a commit the deployer would skip (already running, known bad, deploying stopped), ``(202, ...)`` when it
queued one. A deploy that cannot be scheduled is answered 503 and forgotten by the gate, so GitHub's
"redeliver" tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..logs import Throttled
from ..web import Request, Response, RouteHandler
from ._webhook import Commit, Deploy, WebhookGate

log = logging.getLogger("urban_robot.webhook")

OnDeploy = Callable[[Commit], object]  # (status, text) answers instead of the gate; anything else: the 202


def webhook_route(gate: WebhookGate, on_deploy: OnDeploy) -> RouteHandler:
    """A ``Server.add_route("POST", path, ...)`` handler; ``on_deploy`` must not block (queue the deploy)."""
    quiet = Throttled(log)  # anyone can POST: at most a line per kind of refusal per 10 s, with counts

    async def handle(request: Request) -> Response:
        if request.method != "POST":
            return Response.text(405, "webhooks are POSTed", headers=(("Allow", "POST"),))
        decision = gate.decide(request.headers, request.body)
        if isinstance(decision, Deploy):
            return _schedule(gate, decision, on_deploy)
        # Refusals are INFO, not WARNING: anyone can send garbage, and the Discord log bridge
        # must not turn a stranger's requests into a flood of alerts.
        host = request.client[0] if request.client else "?"
        quiet.info(f"refused-{decision.status}", "webhook from %s: %d %s", host, decision.status, decision.reason)
        return Response.text(decision.status, decision.reason)

    return handle


def _schedule(gate: WebhookGate, decision: Deploy, on_deploy: OnDeploy) -> Response:
    try:
        answer = on_deploy(decision.commit)
    except Exception:
        # Not scheduled: let GitHub's "redeliver" try again instead of being ignored as seen.
        gate.forget(decision.delivery)
        log.exception("webhook deploy of %s could not be scheduled", decision.commit.sha)
        return Response.text(503, "deploy could not be scheduled; redeliver later")
    status, reason = answer if isinstance(answer, tuple) else (decision.status, decision.reason)
    log.info("webhook: %s", reason)
    return Response.text(status, reason)
