"""The fake Discord's sans-IO parts, without sockets: the gateway's state machine and the REST routes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from urban_robot.testing import fake_discord
from urban_robot.testing.fake_discord import Intents, World
from urban_robot.testing.fake_discord._core import FakeCore
from urban_robot.testing.fake_discord._gateway import Close, Drop, Gateway, Send, Settings
from urban_robot.testing.fake_discord._rest import Rest, RestRequest

TOKEN = "t0ken"
NOW = 1_700_000_000.0


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.world = World.default(NOW)
        self.settings = Settings(tokens={TOKEN: "main"}, **settings)
        self.gateway = Gateway(self.world, self.settings, lambda client, sid: f"ws://fake/{client}/{sid}")
        self.core = FakeCore(self.world, self.settings, self.gateway)
        self.rest = Rest(self.core, lambda client: "ws://fake/gateway")

    def send(self, conn: int, op: int, d: Any = None, now: float = NOW) -> list[Any]:
        return self.gateway.receive(conn, json.dumps({"op": op, "d": d}), now)

    def login(self, conn: int = 1, intents: int = Intents.GUILDS | Intents.GUILD_MESSAGES) -> list[Any]:
        self.gateway.open(conn, "c", NOW)
        return self.send(conn, 2, {"token": TOKEN, "intents": intents, "properties": {}})

    def call(self, method: str, path: str, body: Any = None, token: str | None = TOKEN, query: str = "") -> Any:
        headers = {"authorization": f"Bot {token}"} if token else {}
        data = json.dumps(body).encode() if body is not None else b""
        headers["content-type"] = "application/json"
        return self.rest.handle(RestRequest(method, path, query, headers, data, "c"), NOW)


def names(actions: list[Any]) -> list[Any]:
    return [a.payload.get("t") or a.payload["op"] if isinstance(a, Send) else type(a).__name__ for a in actions]


def test_hello_then_identify_gives_ready_and_guild_create_in_sequence() -> None:
    h = Harness(heartbeat_interval=2.5)
    (hello,) = h.gateway.open(1, "c", NOW)
    assert hello.payload["op"] == 10 and hello.payload["d"]["heartbeat_interval"] == 2500
    actions = h.send(1, 2, {"token": TOKEN, "intents": Intents.GUILDS, "properties": {}})
    assert names(actions) == ["READY", "GUILD_CREATE"]
    assert [a.payload["s"] for a in actions] == [1, 2]
    ready = actions[0].payload["d"]
    assert ready["resume_gateway_url"] == f"ws://fake/c/{ready['session_id']}"
    assert ready["guilds"] == [{"id": str(h.world.guild.id), "unavailable": True}]
    members = actions[1].payload["d"]["members"]
    assert [m["user"]["id"] for m in members] == [str(h.world.bot.id)]  # without presences: only itself
    assert names(h.send(1, 1, 2)) == [11]


@pytest.mark.parametrize(
    ("identify", "code"),
    [
        ({"token": "wrong", "intents": 0}, 4004),
        ({"token": TOKEN, "intents": 1 << 30}, 4013),
        ({"token": TOKEN}, 4013),
        ({"token": TOKEN, "intents": 0, "shard": [2, 2]}, 4010),
        ({"token": TOKEN, "intents": Intents.MESSAGE_CONTENT}, 4014),
    ],
)
def test_bad_identify_closes_with_discords_code(identify: dict[str, Any], code: int) -> None:
    h = Harness(enabled_intents=Intents.GUILD_MEMBERS)
    h.gateway.open(1, "c", NOW)
    (close,) = h.send(1, 2, identify)
    assert isinstance(close, Close) and close.code == code
    assert h.gateway.connection_records[0].close_code == code


def test_sharding_required_and_out_of_order_opcodes() -> None:
    h = Harness(required_shards=2)
    h.gateway.open(1, "c", NOW)
    assert h.send(1, 2, {"token": TOKEN, "intents": 0, "shard": [0, 1]}) == [Close(1, 4011, "Sharding required.")]
    h.gateway.open(2, "c", NOW)
    assert h.send(2, 8, {})[0].code == 4003  # before login
    h.gateway.open(3, "c", NOW)
    assert h.gateway.receive(3, "{not json", NOW)[0].code == 4002
    h.gateway.open(4, "c", NOW)
    h.send(4, 2, {"token": TOKEN, "intents": 0, "shard": [1, 2]})
    assert h.send(4, 2, {"token": TOKEN, "intents": 0, "shard": [1, 2]})[0].code == 4005


def test_resume_replays_what_the_session_missed_then_resumed() -> None:
    h = Harness()
    ready = h.login()[0].payload
    session_id, seq = ready["d"]["session_id"], 2  # READY, GUILD_CREATE
    h.gateway.lost(1, NOW, code=1006, by="client")
    first, actions = h.core.user_message(h.world.channel_named("general"), h.world.user_named("bob"), "hi", NOW)
    assert actions == []  # nobody connected: kept for the RESUME
    h.gateway.open(2, "c", NOW)
    actions = h.send(2, 6, {"token": TOKEN, "session_id": session_id, "seq": seq})
    assert names(actions) == ["MESSAGE_CREATE", "RESUMED"]
    assert actions[0].payload["d"]["id"] == str(first) and actions[0].payload["d"]["content"] == ""  # no intent
    assert [a.payload["s"] for a in actions] == [3, 4]
    assert h.gateway.connection_records[1].replayed == 1


def test_a_session_closed_by_the_client_with_1000_or_expired_cannot_resume() -> None:
    h = Harness(resume_window=10)
    sid = h.login(1)[0].payload["d"]["session_id"]
    h.gateway.lost(1, NOW, code=1000, by="client")
    h.gateway.open(2, "c", NOW)
    assert h.send(2, 6, {"token": TOKEN, "session_id": sid, "seq": 2})[0].payload == {
        "op": 9,
        "d": False,
        "s": None,
        "t": None,
    }
    sid = h.login(3)[0].payload["d"]["session_id"]
    h.gateway.lost(3, NOW, code=None, by="dropped")
    h.gateway.open(4, "c", NOW + 11)
    assert h.send(4, 6, {"token": TOKEN, "session_id": sid, "seq": 2}, now=NOW + 11)[0].payload["op"] == 9
    assert h.gateway.session_records[1].end_reason == "not resumed in time"


def test_op7_stops_sending_until_the_resume_and_outage_refuses_connections() -> None:
    h = Harness()
    h.login(1)
    sessions = h.gateway.select()
    assert names(h.gateway.reconnect(sessions)) == [7]
    _, actions = h.core.user_message(h.world.channel_named("general"), h.world.user_named("bob"), "x", NOW)
    assert actions == []  # draining: buffered only
    assert h.gateway.outage(NOW + 5, None) == [Drop(1)]
    assert h.gateway.refuses(None, NOW + 4.9) and not h.gateway.refuses(None, NOW + 5)


def test_two_sessions_get_every_event_and_the_second_callback_is_refused() -> None:
    h = Harness()
    h.login(1)
    h.login(2)
    interaction, actions = h.core.slash_command("echo", {"n": 3}, h.world.channel_named("general"), h.world.bot, NOW)
    assert sorted(a.conn for a in actions) == [1, 2]
    data = actions[0].payload["d"]["data"]
    assert data["name"] == "echo" and data["options"] == [{"name": "n", "type": 4, "value": 3}]
    path = f"/interactions/{interaction.id}/{interaction.token}/callback"
    first = h.call("POST", path, {"type": 4, "data": {"content": "ok"}}, token=None)
    assert first.status == 200 and first.body["resource"]["message"]["content"] == "ok"
    second = h.call("POST", path, {"type": 4, "data": {"content": "ok"}}, token=None)
    assert (second.status, second.body) == (
        400,
        {"message": "Interaction has already been acknowledged.", "code": 40060},
    )
    assert [c.outcome for c in h.core.callbacks] == ["ok", "already_acknowledged"]
    assert h.call("POST", f"/interactions/{interaction.id}/wrong/callback", {"type": 4}).body["code"] == 10062


def test_a_channel_webhook_posts_without_a_bot_token_and_follow_ups_still_work() -> None:
    h = Harness()
    h.login(1)
    log = h.world.channel_named("bot-log")
    hook = h.core.create_webhook(log, "Urban Robot", NOW)
    path = f"/webhooks/{hook.id}/{hook.token}"
    posted = h.call("POST", path, {"content": "🚨 refused", "allowed_mentions": {"parse": []}}, None, "wait=true")
    assert posted.status == 200 and posted.body["webhook_id"] == str(hook.id)
    author = posted.body["author"]
    assert (author["id"], author["username"], author["bot"]) == (str(hook.id), "Urban Robot", True)
    assert names(posted.actions) == ["MESSAGE_CREATE"]  # the channel sees it
    quiet = h.call("POST", path, {"content": "no wait"}, token=None)
    assert (quiet.status, quiet.body) == (204, None)
    records = [(p.channel_id, p.content, p.route, p.webhook_id, p.token) for p in h.core.posted]
    assert records == [(log.id, "🚨 refused", "webhook", hook.id, ""), (log.id, "no wait", "webhook", hook.id, "")]
    wrong = h.call("POST", f"/webhooks/{hook.id}/x{hook.token}", {"content": "a"}, token=None)
    assert (wrong.status, wrong.body["code"]) == (401, 50027)  # Invalid Webhook Token
    assert h.call("POST", path, {"content": ""}, token=None).body["code"] == 50006
    assert h.call("POST", path, {"content": "x" * 2001}, token=None).body["code"] == 50035
    unknown = h.call("POST", f"/webhooks/{hook.id + 1}/{hook.token}", {"content": "a"}, token=None)
    assert (unknown.status, unknown.body["code"]) == (404, 10015)  # Unknown Webhook
    # An interaction's follow-up shares the route: the application id stands where a webhook id does.
    interaction, _ = h.core.slash_command("echo", {}, h.world.channel_named("general"), h.world.bot, NOW)
    h.call("POST", f"/interactions/{interaction.id}/{interaction.token}/callback", {"type": 5}, token=None)
    followup = h.call("POST", f"/webhooks/{h.world.application_id}/{interaction.token}", {"content": "later"}, None)
    assert followup.status == 200 and h.core.posted[-1].route == "followup" and h.core.posted[-1].webhook_id is None


def test_rest_checks_the_token_and_records_unknown_routes() -> None:
    h = Harness()
    assert h.call("GET", "/users/@me", token="nope").body == {"message": "401: Unauthorized", "code": 0}
    assert h.call("GET", "/users/@me").body["id"] == str(h.world.bot.id)
    gateway = h.call("GET", "/gateway/bot").body
    assert gateway["url"] == "ws://fake/gateway" and gateway["session_start_limit"]["max_concurrency"] == 1
    missing = h.call("DELETE", "/guilds/1")
    assert missing.status == 404 and [(r.method, r.path) for r in h.core.unknown_routes] == [("DELETE", "/guilds/1")]


def test_gateway_bot_says_the_configured_shards_and_session_start_limit() -> None:
    h = Harness(required_shards=2, shards=4, max_concurrency=16, session_total=2000, session_remaining=7)
    gateway = h.call("GET", "/gateway/bot").body
    assert gateway["shards"] == 4
    assert gateway["session_start_limit"] == {"total": 2000, "remaining": 7, "reset_after": 86_400_000,
                                              "max_concurrency": 16}  # fmt: skip


def identify(h: Harness, conn: int, shard: list[int], now: float) -> list[Any]:
    h.gateway.open(conn, "c", now)
    return h.send(conn, 2, {"token": TOKEN, "intents": 0, "shard": shard}, now)


def test_one_identify_per_rate_limit_key_per_5_s_and_op_9_beyond() -> None:
    h = Harness(max_concurrency=2, enforce_max_concurrency=True)
    assert names(identify(h, 1, [0, 4], NOW)) == ["READY"]
    assert names(identify(h, 2, [1, 4], NOW)) == ["READY"]  # another key: at once
    limited = identify(h, 3, [2, 4], NOW + 4.9)  # key 0 again within 5 s: Discord answers op 9, not resumable
    assert [(a.payload["op"], a.payload["d"]) for a in limited] == [(9, False)]
    assert names(identify(h, 4, [2, 4], NOW + 5.0)) == ["READY"]
    assert [(r.shard, round(r.at - NOW, 3), r.outcome) for r in h.gateway.identify_records] == [
        ((0, 4), 0.0, "ready"),
        ((1, 4), 0.0, "ready"),
        ((2, 4), 4.9, "rate limited"),
        ((2, 4), 5.0, "ready"),
    ]
    assert [s.shard for s in h.gateway.session_records] == [(0, 4), (1, 4), (2, 4)]  # op 9 started none


def test_identifies_are_not_limited_unless_asked_and_bad_ones_are_recorded() -> None:
    h = Harness()
    assert names(identify(h, 1, [0, 1], NOW)) == names(identify(h, 2, [0, 1], NOW)) == ["READY"]
    assert identify(h, 3, [4, 4], NOW) == [Close(3, 4010, "Invalid shard.")]
    assert [r.outcome for r in h.gateway.identify_records] == ["ready", "ready", "invalid shard"]


def test_guild_events_go_to_the_shard_that_owns_the_guild() -> None:
    h = Harness()
    guild = h.world.guild.id
    owner = (guild >> 22) % 4
    for conn, shard_id in enumerate(range(4), start=1):
        identify(h, conn, [shard_id, 4], NOW)
    sessions = {s.shard[0]: s.id for s in h.gateway.sessions.values()}
    targets, _ = h.gateway.dispatch("MESSAGE_CREATE", {}, fake_discord._gateway.Audience(guild_id=guild), NOW)
    assert targets == [sessions[owner]]


def test_faults_answer_5xx_and_429_as_discord_does() -> None:
    h = Harness()
    channel = h.world.channel_named("general").id
    h.core.faults.append(fake_discord._core.Fault("POST /channels/{channel_id}/messages", 1, 503))
    h.core.faults.append(fake_discord._core.Fault("*", 1, 429, retry_after=0.25))
    assert h.call("POST", f"/channels/{channel}/messages", {"content": "a"}).status == 503
    limited = h.call("GET", "/users/@me")
    assert limited.status == 429 and limited.body["retry_after"] == 0.25 and ("Via", "1.1 google") in limited.headers
    posted = h.call("POST", f"/channels/{channel}/messages", {"content": "a", "message_reference": {"message_id": "7"}})
    assert posted.status == 200 and [(p.content, p.reply_to) for p in h.core.posted] == [("a", 7)]


def test_exports() -> None:
    public = (name for name in dir(fake_discord) if name.isidentifier() and not name.startswith("_"))
    assert sorted(public) == [
        "CLIENT_ENV",
        "Channel",
        "CloseCode",
        "DEFAULT_TOKEN",
        "ENV",
        "FakeDiscord",
        "FakeDiscordURLError",
        "GatewayConnection",
        "GatewaySession",
        "IdentifyRecord",
        "Intents",
        "Interaction",
        "InteractionCallback",
        "Op",
        "PostedMessage",
        "SentEvent",
        "UnknownRoute",
        "User",
        "World",
        "configure_from_environment",
        "point_discord_py_at",
        "to_json",
    ]


def test_a_message_with_a_file_is_read_from_its_payload_json_part() -> None:
    h = Harness()
    channel = h.world.channel_named("general").id
    boundary = "xYzZY"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="payload_json"\r\n'
        "Content-Type: application/json\r\n\r\n"
        '{"content": "with a file"}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="files[0]"; filename="a.txt"\r\n'
        "Content-Type: text/plain\r\n\r\nhello\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    headers = {"authorization": f"Bot {TOKEN}", "content-type": f"multipart/form-data; boundary={boundary}"}
    result = h.rest.handle(RestRequest("POST", f"/channels/{channel}/messages", "", headers, body, "c"), NOW)
    assert result.status == 200 and h.core.posted[0].content == "with a file"
