"""Several hosts coordinated through etcd (issue 17): groundwork, no agent uses it yet (docs/cluster.md).

``EtcdClient`` speaks etcd's v3 JSON gateway on trio (``_etcd.py``); ``urban_robot.testing.etcd`` starts real
etcd members for tests. ``_lease.py`` is an agent's hold on its groups' lease keys, sans-IO: the safety chain of
docs/protocol.md §19 (../shared/DESIGN.md §8.2), property-tested against a model of etcd. ``_deploy_state.py`` is
the cluster's deploy record (``DeployStore``, compare-and-swap) and its deployer election (``Election``).
``_replica.py`` carries cache updates from a group's holder's agent to its standbys' agents (§19.8): signed records
over HTTP.
"""

from ._deploy_state import (
    DeployRecord as DeployRecord,
    DeployStateError as DeployStateError,
    DeployStore as DeployStore,
    DeployWatch as DeployWatch,
    Election as Election,
    InvalidDeployer as InvalidDeployer,
    InvalidDeployRecord as InvalidDeployRecord,
    Term as Term,
    Unreadable as Unreadable,
    UpdateContended as UpdateContended,
    UpdateRefused as UpdateRefused,
    deploy_key as deploy_key,
    deployer_key as deployer_key,
    deployer_value as deployer_value,
    one_line as one_line,
    parse_deployer as parse_deployer,
    parse_record as parse_record,
)
from ._etcd import (
    Acquired as Acquired,
    Answer as Answer,
    Compacted as Compacted,
    Compare as Compare,
    Deleted as Deleted,
    EtcdClient as EtcdClient,
    EtcdError as EtcdError,
    EtcdRefused as EtcdRefused,
    EtcdUnavailable as EtcdUnavailable,
    Grant as Grant,
    KeyValue as KeyValue,
    LeaseNotFound as LeaseNotFound,
    LeaseTTL as LeaseTTL,
    Op as Op,
    Range as Range,
    Status as Status,
    Txn as Txn,
    Watch as Watch,
    WatchEvent as WatchEvent,
    prefix_end as prefix_end,
)
from ._replica import (
    OK as OK,
    RESYNC as RESYNC,
    MalformedRecord as MalformedRecord,
    Record as Record,
    ReplicaAnswer as ReplicaAnswer,
    ReplicaRoute as ReplicaRoute,
    Replicator as Replicator,
    decode_record as decode_record,
    encode_record as encode_record,
    install_replica_route as install_replica_route,
    replica_body_limit as replica_body_limit,
)
