"""A local fake of Discord that real, unmodified discord.py 2.x talks to: REST, gateway and a control API.

    async with trio.open_nursery() as nursery:
        fake = FakeDiscord(heartbeat_interval=1.0)
        await nursery.start(fake.serve)
        # a bot process: URBAN_ROBOT_DISCORD_URL=fake.url, then configure_from_environment() before login
        message_id = fake.send_message("!ping")
        reply = await fake.wait_for_post(lambda post: post.reply_to == message_id)

``python -m urban_robot.testing.fake_discord --port 0 --print-port`` runs it as its own process, driven
through the HTTP control API (``/_fake/...``). docs/testing.md describes what it fakes and what it does not.
"""

from ._configure import (
    CLIENT_ENV as CLIENT_ENV,
    ENV as ENV,
    FakeDiscordURLError as FakeDiscordURLError,
    configure_from_environment as configure_from_environment,
    point_discord_py_at as point_discord_py_at,
)
from ._core import Interaction as Interaction
from ._fake import DEFAULT_TOKEN as DEFAULT_TOKEN, FakeDiscord as FakeDiscord
from ._gateway import CloseCode as CloseCode, Op as Op
from ._records import (
    GatewayConnection as GatewayConnection,
    GatewaySession as GatewaySession,
    IdentifyRecord as IdentifyRecord,
    InteractionCallback as InteractionCallback,
    PostedMessage as PostedMessage,
    SentEvent as SentEvent,
    UnknownRoute as UnknownRoute,
    to_json as to_json,
)
from ._world import Channel as Channel, Intents as Intents, User as User, World as World
