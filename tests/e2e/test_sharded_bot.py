"""examples/discord_bot as an ``AutoShardedBot`` (its one change) under the real supervisor, sharded: 4 shards in
2 groups, against the fake Discord enforcing ``max_concurrency`` as Discord does (an IDENTIFY too soon for its
rate limit key is answered op 9). Issue 16: each group has its own running worker and standby, each worker
runs its group's shards, every IDENTIFY of every worker waits for a slot, and the bot answers exactly once."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from ._harness import EXAMPLE, EXAMPLE_PROFILE, Stack, running_stack

pytest.importorskip("discord")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SHARDS = {"URBAN_ROBOT_SHARD_COUNT": "4", "URBAN_ROBOT_SHARDS_PER_WORKER": "2"}
MAX_CONCURRENCY = 2  # keys 0 and 1: shards 0 and 2 share key 0, shards 1 and 3 key 1


def sharded_example(tmp: Path) -> Path:
    """examples/discord_bot with ``commands.AutoShardedBot`` for ``commands.Bot``: what a sharded bot's author does."""
    source = tmp / "sharded-source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__"))
    main = source / "main.py"
    text = main.read_text()
    assert "class Helium(commands.Bot):" in text
    main.write_text(text.replace("class Helium(commands.Bot):", "class Helium(commands.AutoShardedBot):"))
    return source


async def groups_ready(stack: Stack, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Both groups processing with a standby each, and all 8 shard sessions (4 workers x 2 shards) logged in."""
    with trio.fail_after(timeout):
        while True:
            status = await stack.status()
            groups = (status or {}).get("groups") or []
            if len(groups) == 2 and all(g["running"] and g["standbys"] >= 1 for g in groups):
                if stack.logged_in() >= 8:
                    return groups
            await stack.fake.changed()


async def test_each_group_runs_its_shards_and_every_identify_waits_for_its_slot(tmp_path: Path) -> None:
    sharding = {"max_concurrency": MAX_CONCURRENCY, "shards": 4}
    async with running_stack(tmp_path, source=sharded_example(tmp_path), env=SHARDS, sharding=sharding) as stack:
        groups = await groups_ready(stack)
        assert [g["name"] for g in groups] == ["shards 0-1", "shards 2-3"]
        identifies = stack.fake.identifies
        # No IDENTIFY was refused: every worker waited for the supervisor's slot, holders and standbys alike.
        assert [i for i in identifies if i.outcome != "ready"] == []
        # Each worker identified exactly its group's shards, with the bot's shard count.
        by_client: dict[str, set[tuple[int, int] | None]] = {}
        for record in identifies:
            by_client.setdefault(record.client, set()).add(record.shard)
        assert sorted(map(sorted, by_client.values())) == [[(0, 4), (1, 4)]] * 2 + [[(2, 4), (3, 4)]] * 2
        # One IDENTIFY per rate limit key per 5 s, across every worker (the fake would have said op 9 otherwise;
        # this checks the records themselves).
        for key in range(MAX_CONCURRENCY):
            times = sorted(i.at for i in identifies if i.shard is not None and i.shard[0] % MAX_CONCURRENCY == key)
            assert all(b - a >= 5.0 for a, b in itertools.pairwise(times)), times

        # Traffic: answered once, by the holder of the group whose shard owns the guild.
        traffic = stack.traffic(EXAMPLE_PROFILE)
        await traffic.run(4.0)
        verdict = await stack.settle(traffic.items, EXAMPLE_PROFILE)
        assert verdict.doubles == [], verdict.doubles[:5]
        assert verdict.unexplained == [], verdict.unexplained[:10]

        # A holder killed: its group fails over, the other group's holder is untouched.
        status = await stack.status()
        assert status is not None
        victim_group = status["groups"][1]
        pids = {w["identity"]: w["pid"] for w in status["workers"]}
        os.kill(pids[victim_group["running"]], signal.SIGKILL)
        with trio.fail_after(30):
            while True:
                after = await stack.status()
                moved = (after or {}).get("groups") or []
                if len(moved) == 2 and moved[1]["running"] not in (None, victim_group["running"]):
                    break
                await trio.sleep(0.1)  # the supervisor's status, polled (it is another process)
        assert moved[0]["running"] == status["groups"][0]["running"]
        assert moved[0]["epoch"] == status["groups"][0]["epoch"]
        assert moved[1]["epoch"] > victim_group["epoch"]
