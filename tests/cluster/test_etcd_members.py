"""A three-member etcd cluster losing members: the client answers through the others, its watch goes on.

Each test starts its own cluster (etcd's default Raft timings: an election takes one to two seconds).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from urban_robot.cluster import EtcdClient, EtcdUnavailable
from urban_robot.testing.etcd import EtcdCluster, Member

ATTEMPT = 0.5


async def three_members(root: Path, binary: str) -> EtcdCluster:
    return await trio.to_thread.run_sync(lambda: EtcdCluster.start(root, size=3, binary=binary))


async def leader_of(cluster: EtcdCluster) -> Member:
    return await trio.to_thread.run_sync(lambda: cluster.leader())


@pytest.mark.slow
async def test_a_frozen_member_costs_one_attempt_then_another_member_answers(tmp_path: Path, etcd_binary: str) -> None:
    with await three_members(tmp_path, etcd_binary) as cluster:
        leader = await leader_of(cluster)
        frozen = next(member for member in cluster.members if member is not leader)
        endpoints = [frozen.client_url, *(m.client_url for m in cluster.members if m is not frozen)]
        async with EtcdClient.open(endpoints, attempt_timeout=ATTEMPT) as client:
            assert (await client.put(b"k", b"1")).member_id == frozen.member_id
            cluster.pause(frozen)
            try:
                start = trio.current_time()
                put = await client.put(b"k", b"2")
                took = trio.current_time() - start
                got = await client.get(b"k")
            finally:
                cluster.resume(frozen)
    assert put.member_id != frozen.member_id and ATTEMPT <= took < ATTEMPT + 1.0
    assert got.kv is not None and got.kv.value == b"2" and got.member_id == put.member_id  # the one that answered


@pytest.mark.slow
async def test_the_leader_dies_the_client_writes_and_reads_through_another_and_its_watch_goes_on(
    tmp_path: Path, etcd_binary: str
) -> None:
    with await three_members(tmp_path, etcd_binary) as cluster:
        leader = await leader_of(cluster)
        endpoints = [leader.client_url, *(m.client_url for m in cluster.members if m is not leader)]
        async with EtcdClient.open(endpoints, attempt_timeout=ATTEMPT) as client:
            first = await client.put(b"k", b"1")
            assert first.member_id == leader.member_id
            async with client.watch(b"k", start_revision=first.revision + 1) as watch:
                assert watch.endpoint == leader.client_url
                cluster.kill(leader)
                successor = await leader_of(cluster)
                assert successor is not leader

                second = await client.put(b"k", b"2")
                got = await client.get(b"k")
                with trio.fail_after(10):
                    event = await watch.next()
                assert watch.endpoint != leader.client_url

        await trio.to_thread.run_sync(lambda: cluster.restart(leader))  # on its data dir: it catches up
        async with EtcdClient.open([leader.client_url], attempt_timeout=ATTEMPT) as alone:
            again = await alone.get(b"k")
    assert second.member_id != leader.member_id and second.revision > first.revision
    assert got.kv is not None and got.kv.value == b"2"
    assert (event.kind, event.kv.value, event.kv.mod_revision) == ("put", b"2", second.revision)
    assert again.member_id == leader.member_id and again.kv is not None and again.kv.value == b"2"


@pytest.mark.slow
async def test_a_member_left_without_leader_ends_its_watches_instead_of_going_quiet(
    tmp_path: Path, etcd_binary: str
) -> None:
    """The client asks for a member with a leader: a watch on a member cut off from the others does not wait
    in silence for events that will never come (etcd ends it after about three election time-outs)."""
    with await three_members(tmp_path, etcd_binary) as cluster:
        leader = await leader_of(cluster)
        alone, other = [member for member in cluster.members if member is not leader]
        async with EtcdClient.open([alone.client_url], attempt_timeout=ATTEMPT) as client:
            async with client.watch(b"k") as watch:
                cluster.kill(leader)
                cluster.kill(other)
                with pytest.raises(EtcdUnavailable, match="etcdserver: no leader"), trio.fail_after(15):
                    await watch.next()
            with pytest.raises(EtcdUnavailable, match="etcdserver: no leader"):
                await client.put(b"k", b"v")  # at once, not after etcd's own 7 s time-out
