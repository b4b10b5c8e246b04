"""A slow but healthy discord.py bot: a command that blocks its event loop (``time.sleep``) for 3 s and for 5 s.

examples/discord_bot plus one command, ``!block N`` (``time.sleep(N)`` in a coroutine: the whole event loop
stops, heartbeats to the supervisor included; the process is *sleeping*, not stopped), under the real
supervisor at its shipped default timings (interval 1 s, grace 9 s, margin 2 s; ``frozen_limit`` 2.5 s,
``hang_limit`` 8 s) against the fake Discord.

What the defaults promise for it (docs/configuration.md, docs/protocol.md §4): past ``frozen_limit`` the
supervisor asks the kernel, which says the process is not stopped, so it is left alone; a silence of up to
``hang_limit`` (8 s) is tolerated, and the worker's 10 s lease outlives the block. So: not killed, no crash
counted, no failover, the same lease (epoch) before and after, and the command answered by the same process.
The figures are printed (``pytest -s``) so docs can quote them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import trio

from ._harness import EXAMPLE, running_stack

pytest.importorskip("discord")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

BLOCK_COMMAND = '''
@bot.command()
async def block(ctx: commands.Context[Helium], seconds: float) -> None:
    """A slow but healthy bot: a blocking call in a coroutine stops the whole event loop."""
    import time

    time.sleep(seconds)
    await ctx.send(f"Unblocked after {seconds:g} s.")


if __name__ == "__main__":'''


def blocking_bot(tmp: Path) -> Path:
    """examples/discord_bot with ``!block N`` added."""
    source = tmp / "blocking_bot"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__"))
    main = source / "main.py"
    text = main.read_text()
    assert text.count('\n\nif __name__ == "__main__":') == 1
    main.write_text(text.replace('\n\nif __name__ == "__main__":', BLOCK_COMMAND))
    return source


@pytest.mark.parametrize("seconds", [3, 5])
async def test_a_bot_that_blocks_its_event_loop_is_not_killed_and_answers(tmp_path: Path, seconds: int) -> None:
    async with running_stack(tmp_path, source=blocking_bot(tmp_path), timings={}) as stack:
        before = await stack.steady()
        holder, pid = stack.holder()
        status = await stack.status()
        assert status is not None
        failovers, promotions = status["failovers"], status["promotions"]
        silences: list[float] = []

        async def watch_the_holder_s_silence() -> None:  # sampled, as the dashboard would show it
            while True:
                status = await stack.status()
                ages = [w["heartbeat_age"] for w in (status or {}).get("workers", []) if w["identity"] == holder]
                silences.extend(age for age in ages if age is not None)
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_the_holder_s_silence)
            asked_at = time.time()
            asked = stack.fake.send_message(f"!block {seconds}", author="bob")
            answer = await stack.fake.wait_for_post(lambda post: "Unblocked" in post.content, timeout=30)
            answered_at = time.time()
            # One heartbeat interval more: a lease change or a kill decided at the end of the block shows by then.
            await stack.until(lambda s: s if s.at > answered_at + 2.0 else None, 10, "two more seconds of status")
            nursery.cancel_scope.cancel()
        after = await stack.status()
        checked_at = time.time()
        log = stack.tail(400)

    assert after is not None
    assert answer.client == f"pid{pid}"  # answered, by the process that blocked
    assert answer.content == f"Unblocked after {seconds} s." and asked > 0
    seen = [s for s in stack.timeline if asked_at <= s.at <= checked_at]
    assert all(s.holder in (holder, None) and s.epoch == before.epoch for s in seen), "the lease moved"
    assert all(pid in s.pids.values() for s in seen)  # never killed, never replaced
    assert after["failovers"] == failovers and after["promotions"] == promotions
    assert not any(entry["kind"] == "worker" and "exited" in entry["text"] for entry in after["timeline"])
    assert "hung" not in log and "killing" not in log and "exited" not in log, log
    print(
        f"\nevent loop blocked {seconds} s at the default timings: answered {answered_at - asked_at:.2f} s after"
        f" the command by the same process (pid {pid}); longest silence the supervisor saw {max(silences):.2f} s;"
        f" epoch {before.epoch} kept, failovers {after['failovers'] - failovers}, no kill"
    )
