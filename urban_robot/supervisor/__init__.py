"""Urban Robot itself: the sans-IO decision core and the trio services around it."""

from ._auth import Credentials as Credentials
from ._auth import Identity as Identity
from ._core import (
    Lease as Lease,
)
from ._core import (
    Settings as Settings,
)
from ._core import (
    Supervisor as Supervisor,
)
from ._core import (
    Worker as Worker,
)
from ._core import (
    version_key as version_key,
)
from ._events import *  # noqa: F403 - the event and action types are the core's vocabulary
from ._roles import TRANSITIONS as TRANSITIONS
from ._roles import Role as Role
from ._roles import RoleError as RoleError
from ._roles import Trigger as Trigger
from ._service import UrbanRobot as UrbanRobot
from ._store import StateError as StateError
from ._store import StateStore as StateStore
from ._children import ChildPolicy as ChildPolicy, Children as Children
from ._deploy import Deployer as Deployer
from ._git import Git as Git, GitError as GitError
from ._notify import (
    DiscordLogHandler as DiscordLogHandler,
    Notifier as Notifier,
    NotifyError as NotifyError,
    discord_send as discord_send,
)
from ._webhook import WebhookConfig as WebhookConfig, WebhookGate as WebhookGate, webhook_route as webhook_route
