"""Urban Robot itself: the sans-IO decision core and the trio services around it.

Start here: ``serve(Options(...))`` runs a whole supervisor (see docs/deploying.md).
"""

from ._app import App as App, Options as Options, serve as serve
from ._auth import Credentials as Credentials, Identity as Identity
from ._children import ChildPolicy as ChildPolicy, Children as Children
from ._core import (
    Lease as Lease,
    Settings as Settings,
    Supervisor as Supervisor,
    Worker as Worker,
    version_key as version_key,
)
from ._deploy import Deployer as Deployer
from ._events import *  # noqa: F403 - the event and action types are the core's vocabulary
from ._git import Git as Git, GitError as GitError
from ._notify import (
    DiscordLogHandler as DiscordLogHandler,
    DiscordWebhook as DiscordWebhook,
    Notifier as Notifier,
    NotifyError as NotifyError,
    discord_send as discord_send,
    webhook_send as webhook_send,
)
from ._roles import TRANSITIONS as TRANSITIONS, Role as Role, RoleError as RoleError, Trigger as Trigger
from ._service import UrbanRobot as UrbanRobot
from ._store import StateError as StateError, StateStore as StateStore
from ._webhook import WebhookConfig as WebhookConfig, WebhookGate as WebhookGate
from ._webhook_route import webhook_route as webhook_route
