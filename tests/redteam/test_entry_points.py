"""A bot using many discord.py 2.7 entry points, two workers (holder + standby) under the real supervisor.

Each probe asserts the CORRECT behaviour; the ones that find a bug are xfail(strict) with the bug as reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ._harness import Fake, Supervisor, client_of, supervised, wait_until

pytest.importorskip("discord")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BOT = """
class Probe(commands.Bot):
    async def setup_hook(self):
        await self.load_extension("modules.utilities")
        await self.add_cog(Hooks())
        once.start()
        ticker.start()

    async def on_ready(self):
        await post(f"on_ready ran in {os.getpid()}")


class Hooks(commands.Cog):
    @commands.Cog.listener()
    async def on_message(self, message):
        if message.content == "!coglisten":
            await post("cog listened")

    async def cog_unload(self):
        await post(f"cog_unload ran in {os.getpid()}")


@tasks.loop(count=1)
async def once():
    await post("once ran")


@tasks.loop(seconds=1)
async def ticker():
    pass


@ticker.before_loop
async def before_ticker():
    await post(f"before_loop ran in {os.getpid()}")


bot = Probe(command_prefix="!", intents=intents, guild_ready_timeout=0.1)
attachment = attach(bot, version=VERSION)


@bot.hybrid_command()
async def hyb(ctx):
    await ctx.send("hybrid answered")


@bot.listen("on_message")
async def heard(message):
    if message.content == "!listen":
        await post("listened")


@bot.event
async def on_raw_reaction_add(payload):
    await post(f"raw reaction {payload.emoji}")


@bot.command()
async def ask(ctx):
    await ctx.send("say yes")
    await bot.wait_for("message", check=lambda m: m.content == "yes", timeout=20)
    await ctx.send("got yes")


attachment.run_forever()
"""


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fake, Supervisor, dict, dict]]:
    tmp = tmp_path_factory.mktemp("entry")
    with supervised(tmp, BOT) as (fake, supervisor):
        holder, standby = supervisor.two_up()
        time.sleep(3)  # let start-up side effects (on_ready, loops) happen
        yield fake, supervisor, holder, standby


def _count(fake: Fake, text: str) -> list[str]:
    return [p["client"] for p in fake.posts(prefix=text)]


def test_prefix_hybrid_listeners_reactions_and_wait_for_run_once_on_the_holder(bot) -> None:
    """What held up: every one of these ran exactly once, on the holder."""
    fake, _supervisor, holder, _ = bot
    ids = {
        text: fake.do("messages", content=text, author="bob")["id"]
        for text in ("!ping", "!hyb", "!listen", "!coglisten")
    }
    fake.do("commands", name="hyb")
    fake.do("reactions", message_id=ids["!ping"], emoji="👍")
    ask = fake.do("messages", content="!ask", author="bob")["id"]
    wait_until(lambda: fake.posts(prefix="say yes"), 20, "the question")
    fake.do("messages", content="yes", author="bob")
    wait_until(lambda: fake.posts(prefix="got yes"), 20, "the answer to wait_for")
    time.sleep(1.5)
    me = client_of(holder)
    assert _count(fake, "Pong!") == [me]
    assert _count(fake, "hybrid answered") == [me, me]  # once as !hyb, once as /hyb
    assert _count(fake, "listened") == [me]
    assert _count(fake, "cog listened") == [me]
    assert _count(fake, "raw reaction") == [me]
    assert _count(fake, "got yes") == [me] and ask


def test_on_ready_runs_once_on_the_first_holder(bot) -> None:
    fake, *_ = bot
    assert len(_count(fake, "on_ready ran")) == 1


def test_a_one_shot_loop_started_in_setup_hook_runs_once(bot) -> None:
    fake, *_ = bot
    assert len(_count(fake, "once ran")) == 1


def test_before_loop_runs_only_where_the_lease_is_held(bot) -> None:
    fake, *_ = bot
    assert len(_count(fake, "before_loop ran")) <= 1


def test_cog_unload_at_stop_is_not_run_by_the_standby(bot) -> None:
    fake, supervisor, _, standby = bot
    supervisor.stop()
    wait_until(lambda: supervisor.process.poll() is not None, 30, "the supervisor to stop")
    time.sleep(0.5)
    assert client_of(standby) not in _count(fake, "cog_unload ran")
