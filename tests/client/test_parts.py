"""The worker client's sans-IO parts: messages, lease view, health report, back-off, config, outbox."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import trio

import urban_robot.client as client
from urban_robot.client import (
    Backoff,
    ConfigError,
    Custom,
    Endpoint,
    HealthReport,
    Identify,
    LeaseView,
    MalformedMessage,
    OutboxFull,
    event_frames,
    health_report,
)
from urban_robot.client._outbox import Outbox
from urban_robot.protocol import Renewal, Stop, parse_push


def test_exports() -> None:
    module = type(client)
    public = {n for n, v in vars(client).items() if n.isidentifier() and n[0] != "_" and not isinstance(v, module)}
    assert sorted(client.__all__) == sorted(public)


def test_outbound_messages_are_validated_when_built() -> None:
    with pytest.raises(MalformedMessage):
        Identify("x" * 129)
    with pytest.raises(MalformedMessage):
        Identify("1.0", pid=True)
    with pytest.raises(MalformedMessage):
        HealthReport(OK=True, percent=math.nan)
    with pytest.raises(MalformedMessage):
        Custom("disconnect")
    assert "tok" not in repr(Identify("1.0", epoch=1, lease_token="tok"))


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("hello", {"protocol": 1, "token": "t", "process_commands": False, "interval": 0, "lease": 1, "epoch": 0}),
        ("cmd", {"t": "process_commands", "d": {"epoch": 1.0, "lease": 1, "lease_token": "x"}}),
        ("cmd", {"t": "shutdown", "d": {"reason": 5}}),
        ("cmd", {"d": {}}),
        ("cache_sync", []),
    ],
)
def test_malformed_pushes_are_refused_with_tokens_redacted(event: str, data: Any) -> None:
    with pytest.raises(MalformedMessage) as info:
        parse_push(event, data)
    assert "'token': 't'" not in str(info.value) and "'lease_token': 'x'" not in str(info.value)


def test_pushes_ignore_unknown_keys_and_names() -> None:
    stop = parse_push("cmd", {"t": "coma", "d": {"reason": "r", "cache_sync": True, "shutdown": True, "new": 1}})
    assert stop == Stop(shutdown=False, reason="r", cache_sync=True)
    assert parse_push("whatever", {}) is None


def test_lease_is_counted_from_the_sending_and_only_for_the_same_grant() -> None:
    view = LeaseView()
    view.take(3, "tok")
    sent = view.sent(100.0)
    assert not view.processing(100.0)
    assert view.answer(sent, Renewal(3, 45), 100.5) == "renewed"
    assert view.until == 145.0 and view.processing(144.9) and not view.processing(145.0)
    assert view.answer(view.sent(150.0), Renewal(3, 45), 196.0) == "late"
    old = view.sent(160.0)
    view.take(4, "tok2")
    assert view.answer(old, Renewal(3, 45), 160.1) == "ignored"
    assert view.answer(view.sent(161.0), Renewal(4, 0), 161.1) == "fenced"
    assert view.grant is None and not view.processing(161.2)


async def test_health_report_from_user_checks(autojump_clock: Any) -> None:
    async def slow() -> bool:
        await trio.sleep(100)
        return True

    def boom() -> bool:
        raise RuntimeError

    report = await health_report(
        {"modules.utilities": lambda: True, "modules.music": boom, "modules.slow": slow},
        {"database": lambda: 1},  # type: ignore[dict-item, return-value]  # not True: failing
        timeout=1,
    )
    assert report.payload() == {
        "OK": False,
        "percent": 25.0,
        "cogs": {"modules.utilities": True, "modules.music": False, "modules.slow": False},
    }
    assert (await health_report({}, {}, timeout=1)).payload() == {"OK": True, "percent": 100.0, "cogs": {}}


def test_backoff_is_capped_exponential_with_jitter() -> None:
    backoff, rng = Backoff(initial=1, cap=8, factor=2, jitter=0.5), random.Random(1)
    delays = [backoff.delay(n, rng) for n in range(10)]
    for n, delay in enumerate(delays):
        base = min(8, 2**n)
        assert base / 2 <= delay <= base
    assert len(set(delays)) == len(delays)


def test_endpoint_from_the_environment() -> None:
    env = {"URBAN_ROBOT_URL": "http://h:1/", "URBAN_ROBOT_SECRET": "s", "URBAN_ROBOT_GENERATION": "7"}
    endpoint = Endpoint.resolve(None, None, None, env)
    assert endpoint.generation == 7 and endpoint.ws_url == "ws://h:1/socket.io/?EIO=4&transport=websocket"
    assert "'s'" not in repr(endpoint)
    for missing in ("URBAN_ROBOT_URL", "URBAN_ROBOT_SECRET"):
        with pytest.raises(ConfigError, match=missing):
            Endpoint.resolve(None, None, None, {k: v for k, v in env.items() if k != missing})
    with pytest.raises(ConfigError, match="integer"):
        Endpoint.resolve(None, None, None, {**env, "URBAN_ROBOT_GENERATION": "x"})


def test_outbox_is_bounded_and_refuses_when_full() -> None:
    box = Outbox(2)
    box.put(Custom("a"))
    box.put(Custom("b"))
    with pytest.raises(OutboxFull):
        box.put(Custom("c"))
    assert len(box) == 2


def test_event_frames() -> None:
    assert event_frames("heartbeat", {"epoch": 1}, 7) == ['427["heartbeat",{"epoch":1}]']
    assert event_frames("cache_sync", {"cache": b"\x01"}, 8) == [
        '451-8["cache_sync",{"cache":{"_placeholder":true,"num":0}}]',
        b"\x01",
    ]
