"""Urban Robot itself: the sans-IO decision core and the trio services around it."""

from ._auth import Credentials as Credentials
from ._auth import Identity as Identity
from ._children import ChildPolicy as ChildPolicy
from ._children import Children as Children
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
from ._deploy import Deployer as Deployer
from ._events import *  # noqa: F403 - the event and action types are the core's vocabulary
from ._git import Git as Git
from ._git import GitError as GitError
from ._notify import (
    DiscordLogHandler as DiscordLogHandler,
)
from ._notify import (
    Notifier as Notifier,
)
from ._notify import (
    NotifyError as NotifyError,
)
from ._notify import (
    discord_send as discord_send,
)
from ._roles import TRANSITIONS as TRANSITIONS
from ._roles import Role as Role
from ._roles import RoleError as RoleError
from ._roles import Trigger as Trigger
from ._service import UrbanRobot as UrbanRobot
from ._store import StateError as StateError
from ._store import StateStore as StateStore
from ._webhook import WebhookConfig as WebhookConfig
from ._webhook import WebhookGate as WebhookGate
from ._webhook import webhook_route as webhook_route
