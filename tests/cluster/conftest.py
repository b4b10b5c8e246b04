"""One real etcd member for the whole session (``etcd``), a client of it per test, and a key prefix per test.

Raft timings are short (25 ms heartbeats, 250 ms elections) so that etcd grants 1-second leases: a lease's
expiry costs a test about a second. Tests that kill or freeze members start their own cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from urban_robot.cluster import EtcdClient
from urban_robot.testing.etcd import EtcdCluster, etcd_or_skip

ATTEMPT = 0.5  # the clients' attempt_timeout: leases of 1 s stay possible


@pytest.fixture(scope="session")
def etcd_binary() -> str:
    """The etcd binary; without one, the test is skipped (locally) or fails (under $CI)."""
    return etcd_or_skip()


@pytest.fixture(scope="session")
def etcd(etcd_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    root: Path = tmp_path_factory.mktemp("etcd")
    with EtcdCluster.start(root, binary=etcd_binary, heartbeat_ms=25, election_ms=250) as cluster:
        yield cluster


@pytest.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with EtcdClient.open(etcd.endpoints, attempt_timeout=ATTEMPT) as opened:
        yield opened


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> bytes:
    """Keys of this test only: the session's etcd is shared."""
    return f"/test/{request.node.name}/".encode()
