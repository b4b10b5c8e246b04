"""Urban Robot itself: the sans-IO decision core and the trio services around it."""

from ._core import Lease as Lease, Settings as Settings, Supervisor as Supervisor, Worker as Worker, version_key as version_key
from ._events import *  # noqa: F403 - the event and action types are the core's vocabulary
from ._roles import Role as Role, RoleError as RoleError, TRANSITIONS as TRANSITIONS, Trigger as Trigger
