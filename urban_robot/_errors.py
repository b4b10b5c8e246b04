"""The errors Urban Robot raises, in one tree.

    UrbanRobotError            base of everything raised on purpose
     ├─ ProtocolError          a peer sent bytes that break Engine.IO v4 / Socket.IO v5
     │                         (malformed packet, bad JSON, lying attachment count, ...)
     ├─ ConfigError            the configuration has problems, one line each (config.py)
     ├─ StateError             the state directory cannot be used (supervisor/_store.py)
     ├─ GitError               a git command failed or timed out (supervisor/_git.py)
     ├─ NotifyError            Discord refused or could not take a message (supervisor/_notify.py)
     ├─ EtcdError              something about etcd, one line naming the endpoint (cluster/_etcd.py)
     │   ├─ EtcdUnavailable    no endpoint answered: down, refusing, too slow, or without a leader
     │   └─ EtcdRefused        a member answered with an error (``code``: gRPC's)
     │       ├─ LeaseNotFound  the etcd lease expired or was revoked
     │       └─ Compacted      a watch asked for revisions etcd no longer keeps
     ├─ DeployStateError       the cluster's deploy record in etcd (cluster/_deploy_state.py)
     │   ├─ InvalidDeployRecord  the key holds no valid record (tampered, hand-written): fix it with etcdctl
     │   ├─ InvalidDeployer    the deployer key holds what no campaign wrote: delete it with etcdctl
     │   ├─ UpdateRefused      the change does not apply to the current record (a rollout in progress, ...)
     │   └─ UpdateContended    other writers won every compare-and-swap attempt
     ├─ MalformedRecord        bytes that are not a cache replication record (also a ValueError;
     │                         cluster/_replica.py)
     └─ Disconnected           Server.call's client left before acknowledging (socketio/_server.py)

A codec never lets anything else escape for bad input: ``ValueError``,
``UnicodeDecodeError``, ``RecursionError`` and friends are mapped to
``ProtocolError`` at the boundary (``raise ProtocolError(...) from exc``).
The server answers a ``ProtocolError`` by closing that one session, with the
message in the log; other sessions carry on.
"""

from __future__ import annotations


class UrbanRobotError(Exception):
    """Base class of every error Urban Robot raises on purpose."""


class ProtocolError(UrbanRobotError, ValueError):
    """The remote peer sent something that is not valid Engine.IO / Socket.IO.

    It is the peer's fault, never ours: the answer is to close the session
    (``Server`` does) and log the message, which is safe to log (it never
    contains the payload's secrets, only its shape).
    """
