"""Red team, issue 17: examples/discord_bot as an AutoShardedBot run by three hosts' agents (real etcd, three real
supervisor processes, real discord.py workers, one fake Discord enforcing max_concurrency). Every interaction is
answered exactly once across hosts, before and through a host's loss; no IDENTIFY is refused anywhere."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import trio

from tests.e2e._harness import EXAMPLE_PROFILE, Fault
from tests.e2e.test_sharded_bot import sharded_example

from ._cluster_stack import groups_status, processors, three_hosts

pytest.importorskip("discord")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SHARDS = {"URBAN_ROBOT_SHARD_COUNT": "2", "URBAN_ROBOT_SHARDS_PER_WORKER": "1"}
MAX_CONCURRENCY = 2  # shard 0 is key 0, shard 1 key 1: each group's three workers (one per host) share a key


async def test_three_hosts_answer_every_interaction_once_and_through_a_host_loss(tmp_path: Path) -> None:
    sharding = {"max_concurrency": MAX_CONCURRENCY, "shards": 2}
    async with three_hosts(tmp_path, source=sharded_example(tmp_path), env=SHARDS, sharding=sharding) as (
        fake,
        stacks,
        _etcd,
    ):
        # Both groups processed on exactly one host, and all six workers (2 groups x 3 hosts) logged in.
        with trio.fail_after(150):
            while True:
                statuses = await groups_status(stacks)
                if all(len(processors(statuses, g)) == 1 for g in (0, 1)) and stacks[0].logged_in() >= 6:
                    break
                await trio.sleep(0.2)  # three other processes' status, polled
        identifies = fake.identifies
        assert [(i.client, i.shard, i.outcome) for i in identifies if i.outcome != "ready"] == []
        for key in range(MAX_CONCURRENCY):
            times = sorted(i.at for i in identifies if i.shard is not None and i.shard[0] % MAX_CONCURRENCY == key)
            assert all(b - a >= 5.0 for a, b in itertools.pairwise(times)), times

        stack = stacks[0]
        traffic = stack.traffic(EXAMPLE_PROFILE)
        await traffic.run(4.0)
        verdict = await stack.settle(traffic.items, EXAMPLE_PROFILE, timeout=10)
        assert verdict.doubles == [], verdict.doubles[:5]
        assert verdict.unexplained == [], verdict.unexplained[:10]

        # The host holding group 0 lost (supervisor and its workers SIGKILLed) in the middle of traffic.
        statuses = await groups_status(stacks)
        [(victim_index, _)] = processors(statuses, 0)
        victim = stacks[int(victim_index)]
        survivors = [s for s in stacks if s is not victim]
        traffic = stack.traffic(EXAMPLE_PROFILE) if victim is not stack else survivors[0].traffic(EXAMPLE_PROFILE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic.run)
            await trio.sleep(3.0)  # the traffic's schedule
            fault = Fault("host lost", time.time())
            for s in stacks:
                s.faults.append(fault)
            victim.kill_everything()
            with trio.fail_after(40):
                while True:
                    now = await groups_status(survivors)
                    if all(len(processors(now, g)) == 1 for g in (0, 1)):
                        break
                    await trio.sleep(0.2)
            fault.end = time.time()
            await trio.sleep(4.0)  # traffic after the take-over
            traffic.stop()
        judge = survivors[0]
        verdict = await judge.settle(traffic.items, EXAMPLE_PROFILE, timeout=15)
        assert verdict.doubles == [], verdict.doubles[:5]
        assert verdict.unexplained == [], verdict.unexplained[:10]
        refused = [(i.client, i.shard, i.outcome) for i in fake.identifies if i.outcome != "ready"]
        assert refused == []
