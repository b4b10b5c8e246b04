"""Urban Robot itself: the sans-IO decision core and the trio services around it.

Start here: ``serve(Options(...))`` runs a whole supervisor (see docs/deploying.md); ``build(options, seams=...)``
makes one without running it (``_assembly``: every part and who hears what, in one file).
"""

from ._assembly import App as App, Options as Options, Seams as Seams, build as build, serve as serve
from ._auth import Credentials as Credentials, Identity as Identity
from ._bus import Bus as Bus, Handled as Handled, ViewsChanged as ViewsChanged
from ._children import (
    ChildPolicy as ChildPolicy,
    Children as Children,
    Launch as Launch,
    RunAsError as RunAsError,
    log_identity as log_identity,
)
from ._cluster import ClusterLink as ClusterLink, ClusterOptions as ClusterOptions
from ._core import (
    Lease as Lease,
    Settings as Settings,
    Supervisor as Supervisor,
    Worker as Worker,
    version_key as version_key,
)
from ._deploy import Deployer as Deployer, TreeOutcome as TreeOutcome

# The event and action types are the core's vocabulary; tests/supervisor/test_exports.py checks that
# every one of them is here.
from ._events import (
    Action as Action,
    CacheReplicated as CacheReplicated,
    CacheSync as CacheSync,
    CandidateStarted as CandidateStarted,
    CheckFrozen as CheckFrozen,
    Claim as Claim,
    Close as Close,
    ClusterGrant as ClusterGrant,
    ClusterStop as ClusterStop,
    ComaAck as ComaAck,
    Connected as Connected,
    DeployConfirmed as DeployConfirmed,
    Disconnected as Disconnected,
    Event as Event,
    Frozen as Frozen,
    HealthReport as HealthReport,
    Heartbeat as Heartbeat,
    Identified as Identified,
    IdentifyAsked as IdentifyAsked,
    IdentifyLimit as IdentifyLimit,
    Kill as Kill,
    Notify as Notify,
    Persist as Persist,
    PersistCache as PersistCache,
    ProcessExited as ProcessExited,
    Ready as Ready,
    Reply as Reply,
    RetireOlder as RetireOlder,
    RoleChanged as RoleChanged,
    RollBack as RollBack,
    RollbackFinished as RollbackFinished,
    Send as Send,
    ShutdownAck as ShutdownAck,
    Spawn as Spawn,
    Spoke as Spoke,
    Stopping as Stopping,
    TimerFired as TimerFired,
    TopUp as TopUp,
    TryAgain as TryAgain,
    Verdict as Verdict,
    WorkerFailed as WorkerFailed,
    Yield as Yield,
)
from ._git import Git as Git, GitError as GitError
from ._notify import (
    DISCORD_API as DISCORD_API,
    WEBHOOK_ENV as WEBHOOK_ENV,
    DiscordLogHandler as DiscordLogHandler,
    DiscordWebhook as DiscordWebhook,
    Notifier as Notifier,
    NotifyError as NotifyError,
    discord_send as discord_send,
    webhook_send as webhook_send,
)
from ._roles import TRANSITIONS as TRANSITIONS, Role as Role, RoleError as RoleError, Trigger as Trigger
from ._service import UrbanRobot as UrbanRobot
from ._snapshot import (
    FailureView as FailureView,
    GroupView as GroupView,
    LeaseView as LeaseView,
    Snapshot as Snapshot,
    WorkerView as WorkerView,
)
from ._store import (
    StateError as StateError,
    StateStore as StateStore,
    check_private as check_private,
    read_private as read_private,
)
from ._webhook import WebhookConfig as WebhookConfig, WebhookGate as WebhookGate
from ._webhook_route import webhook_route as webhook_route
