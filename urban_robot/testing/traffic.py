"""Steady user traffic against the fake Discord, and a verdict on how a supervised bot answered it.

Each item a :class:`Traffic` sends has an id of its own and a send time; :func:`classify` then reads the
fake's records and says, item by item, whether the bot answered it **once**, **twice** (or more: some
process ran its handler a second time) or not at all:

- a message (``!ping``): the bot's messages that reply to it (``message_reference``; ``ctx.reply``); or,
  sent as a DM from a user of its own (``Profile.ping_dm``, for a bot that answers with ``ctx.send``), the
  bot's messages in that DM channel;
- an interaction (slash command, button, select, modal submit): its callbacks. One ``ok`` is once; a
  second callback, accepted or refused with 40060 ("already acknowledged"), means a second process ran
  the handler: twice. A modal is opened first (a slash command answered with the modal, callback type 9);
  the item is the submission that follows;
- a member join: the bot's messages that mention the new member (``<@id>``) or name them.

An unanswered item is *explained* when it lies in a **gap**: a maximal run of unanswered items (all kinds,
in send order) between two answered ones, so a gap stands for a stretch of time in which no process
answered anything (measured from the send time of the last answered item before it to that of the first
answered item after it), *and* that gap meets a fault window the caller names (widened by ``in_flight``
seconds before the fault: an item the holder had received but not yet answered when it died). A lost
item amid answered ones, or any lost item with no fault near, is unexplained: the checker reports it.

``tasks.loop`` posts (``Profile.loop``) are checked separately: the processes they come from form runs in
time order; every switch from one process to another must come with a lease hand-over (the caller counts
those), or two processes ran the loop in the same stretch of time.

Everything works on the records as JSON (``GET /_fake/records``, or :func:`records_of` in process), so
the same code drives a fake in this process (:class:`InProcess`) or one in another (:class:`OverHTTP`).
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
import trio

from .fake_discord import FakeDiscord, to_json

JSON = dict[str, Any]
KINDS = ("ping", "slash", "button", "select", "modal", "join")
MODAL_OPEN_TIMEOUT = 10.0  # seconds the bot has to answer the slash command with its modal
MODAL = 9  # the interaction callback type that shows a modal


@attrs.frozen
class Profile:
    """What to send a bot and how it answers: the names its entry points use. ``None`` = not sent."""

    ping: str | None = "!ping"  # a prefix command, answered with a reply to the message
    ping_dm: bool = False  # send each ping as a DM from a user of its own: any bot message in that DM answers it
    slash: tuple[str, JSON] | None = None  # (command name, options), answered with a message
    button: str | None = None  # custom_id of a button on a persistent view
    select: tuple[str, tuple[str, ...]] | None = None  # (custom_id, values) of a persistent select
    modal: tuple[str, str] | None = None  # (slash command that opens a modal, text typed into each of its inputs)
    join: bool = False  # members are welcomed by a message that mentions or names them
    loop: str | None = None  # a tasks.loop posts messages starting with this text
    channel: str = "general"

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind in KINDS if getattr(self, kind))


@attrs.define
class Item:
    kind: str
    id: int  # the message's, the interaction's or the new member's id; 0 while a modal's opening is pending
    sent_at: float  # time.time(), as the fake's records
    name: str = ""  # the member's username (joins)
    opened: int | None = None  # the interaction that opened a modal
    channel: int = 0  # the DM channel of a ping sent as a DM


class Driver(Protocol):
    """What the traffic needs of a fake Discord, wherever it runs. Ids come back as ints."""

    async def send_message(self, content: str, channel: str) -> int: ...
    async def run_command(self, name: str, options: JSON, channel: str) -> int: ...
    async def click(self, custom_id: str, channel: str) -> int: ...
    async def select(self, custom_id: str, values: list[str], channel: str) -> int: ...
    async def submit_modal(self, custom_id: str, values: JSON, channel: str) -> int: ...
    async def member_join(self, username: str) -> int: ...
    async def dm_from_new_user(self, content: str, username: str) -> tuple[int, int]: ...
    async def shown_modal(self, interaction: int, timeout: float) -> JSON | None: ...
    async def records(self, after: int = -1, wait: float = 0.0) -> JSON: ...


def records_of(fake: FakeDiscord) -> JSON:
    """The fake's records as the control API serves them."""
    return {
        "version": fake.version,
        "posted": [to_json(r) for r in fake.posted],
        "callbacks": [to_json(r) for r in fake.callbacks],
        "events": [to_json(r) for r in fake.events],
        "sessions": [to_json(r) for r in fake.sessions],
        "connections": [to_json(r) for r in fake.connections],
    }


class InProcess:
    """A :class:`Driver` over a :class:`FakeDiscord` served by this process."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake

    async def send_message(self, content: str, channel: str) -> int:
        return self.fake.send_message(content, channel=channel)

    async def run_command(self, name: str, options: JSON, channel: str) -> int:
        return self.fake.run_command(name, options, channel=channel).id

    async def click(self, custom_id: str, channel: str) -> int:
        return self.fake.click(custom_id, channel=channel).id

    async def select(self, custom_id: str, values: list[str], channel: str) -> int:
        return self.fake.select(custom_id, values, channel=channel).id

    async def submit_modal(self, custom_id: str, values: JSON, channel: str) -> int:
        return self.fake.submit_modal(custom_id, values, channel=channel).id

    async def member_join(self, username: str) -> int:
        return self.fake.member_join(username).id

    async def dm_from_new_user(self, content: str, username: str) -> tuple[int, int]:
        """A DM from a user who is no member of any guild (so no join is announced); (message id, channel id)."""
        user = self.fake.world.add_user(username, time.time())
        message = self.fake.send_dm(content, author=user)
        return message, self.fake.world.dm_channel(user, time.time()).id

    async def shown_modal(self, interaction: int, timeout: float) -> JSON | None:
        def shown() -> JSON | None:
            for c in reversed(self.fake.callbacks):
                if c.interaction_id == interaction and c.type == MODAL and c.outcome == "ok":
                    return c.data or {"components": []}
            return None

        with trio.move_on_after(timeout):
            return await self.fake.wait_for(shown, timeout=math.inf)
        return None

    async def records(self, after: int = -1, wait: float = 0.0) -> JSON:
        with trio.move_on_after(wait):
            while self.fake.version <= after:
                await self.fake.changed()
        return records_of(self.fake)


class OverHTTP:
    """A :class:`Driver` over the control API of a fake in another process (``python -m ...fake_discord``)."""

    def __init__(self, http: Any, url: str) -> None:  # an httpx.AsyncClient
        self.http = http
        self.url = url

    async def _post(self, route: str, body: JSON) -> int:
        response = await self.http.post(f"{self.url}/_fake/{route}", json=body)
        response.raise_for_status()
        return int(response.json()["id"])

    async def send_message(self, content: str, channel: str) -> int:
        return await self._post("messages", {"content": content, "channel": channel})

    async def run_command(self, name: str, options: JSON, channel: str) -> int:
        return await self._post("commands", {"name": name, "options": options, "channel": channel})

    async def click(self, custom_id: str, channel: str) -> int:
        return await self._post("clicks", {"custom_id": custom_id, "channel": channel})

    async def select(self, custom_id: str, values: list[str], channel: str) -> int:
        return await self._post("selects", {"custom_id": custom_id, "values": values, "channel": channel})

    async def submit_modal(self, custom_id: str, values: JSON, channel: str) -> int:
        return await self._post("modals", {"custom_id": custom_id, "values": values, "channel": channel})

    async def member_join(self, username: str) -> int:
        return await self._post("members", {"username": username})

    async def dm_from_new_user(self, content: str, username: str) -> tuple[int, int]:
        raise NotImplementedError("the control API makes users only by a member join: use ping_dm=False")

    async def shown_modal(self, interaction: int, timeout: float) -> JSON | None:
        version = -1
        with trio.move_on_after(timeout):
            while True:
                records = await self.records(version, wait=min(timeout, 10.0))
                version = records["version"]
                for c in records["callbacks"]:
                    if c["interaction_id"] == interaction and c["type"] == MODAL and c["outcome"] == "ok":
                        return c["data"]  # type: ignore[no-any-return]
        return None

    async def records(self, after: int = -1, wait: float = 0.0) -> JSON:
        response = await self.http.get(f"{self.url}/_fake/records", params={"after": after, "wait": wait})
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]


class Traffic:
    """Sends ``rate`` items a second, the profile's kinds in turn, and keeps every one it sent."""

    def __init__(self, driver: Driver, profile: Profile, *, rate: float = 20.0, prefix: str = "m") -> None:
        self.driver = driver
        self.profile = profile
        self.rate = rate
        self.prefix = prefix  # member names are <prefix><n>: unique within one fake
        self.items: list[Item] = []
        self._kinds = itertools.cycle(profile.kinds)
        self._count = itertools.count(1)
        self._stopped = trio.Event()

    async def run(self, seconds: float = math.inf) -> None:
        """Send for ``seconds`` or until :meth:`stop`, on a fixed schedule (a late send does not shift the
        ones after it); return once every item sent has its id (a modal's opening waited for)."""
        start = trio.current_time()
        self._stopped = trio.Event()
        async with trio.open_nursery() as nursery:
            for n in itertools.count():
                at = start + n / self.rate
                if at >= start + seconds:
                    break
                with trio.move_on_at(at):
                    await self._stopped.wait()
                if self._stopped.is_set():
                    break
                nursery.start_soon(self.send_one, next(self._kinds))

    def stop(self) -> None:
        """No more items; those being sent are finished."""
        self._stopped.set()

    async def send_one(self, kind: str) -> Item:
        p, channel = self.profile, self.profile.channel
        item = Item(kind, 0, time.time())
        self.items.append(item)
        if kind == "ping" and p.ping_dm:
            assert p.ping is not None
            item.name = f"{self.prefix}dm{next(self._count)}"
            item.id, item.channel = await self.driver.dm_from_new_user(p.ping, item.name)
        elif kind == "ping":
            assert p.ping is not None
            item.id = await self.driver.send_message(p.ping, channel)
        elif kind == "slash":
            assert p.slash is not None
            item.id = await self.driver.run_command(p.slash[0], dict(p.slash[1]), channel)
        elif kind == "button":
            assert p.button is not None
            item.id = await self.driver.click(p.button, channel)
        elif kind == "select":
            assert p.select is not None
            item.id = await self.driver.select(p.select[0], list(p.select[1]), channel)
        elif kind == "join":
            item.name = f"{self.prefix}{next(self._count)}"
            item.id = await self.driver.member_join(item.name)
        elif kind == "modal":
            await self._modal(item)
        return item

    async def _modal(self, item: Item) -> None:
        """Run the slash command that opens a modal; once it is shown (callback type 9), fill it in and submit it.

        The modal's custom_id and its inputs are read from the bot's callback: discord.py keeps one open modal
        per custom_id, so a bot gives each modal it shows an id of its own (discord.py's default).
        """
        assert self.profile.modal is not None
        command, text = self.profile.modal
        item.opened = await self.driver.run_command(command, {}, self.profile.channel)
        modal = await self.driver.shown_modal(item.opened, MODAL_OPEN_TIMEOUT)
        if modal is None:
            return  # never shown: the item stays unanswered (id 0), sent when its opening was
        rows = modal.get("components", [])
        inputs = {field["custom_id"]: text for row in rows for field in row["components"]}
        item.sent_at = time.time()  # the item is the submission: it is sent now
        item.id = await self.driver.submit_modal(modal["custom_id"], inputs, self.profile.channel)


# -- the verdict ----------------------------------------------------------------------------------------------
@attrs.frozen
class Answer:
    client: str  # the process, as it named itself to the fake
    at: float
    ok: bool  # False: a callback refused (40060) — the handler ran all the same


@attrs.frozen
class Gap:
    start: float  # send time of the last answered item before it (or of its first item)
    end: float  # send time of the first answered item after it (or of its last item)
    items: int
    explained: bool

    @property
    def seconds(self) -> float:
        return self.end - self.start


@attrs.frozen
class Verdict:
    sent: dict[str, int]
    once: dict[str, int]
    twice: dict[str, int]
    unanswered: dict[str, int]
    gaps: list[Gap]
    unexplained: list[str]  # unanswered items outside every explained gap, described
    doubles: list[str]  # items answered more than once, described
    loop_posts: int = 0
    loop_switches: int = 0  # changes of process between consecutive loop posts

    @property
    def longest_gap(self) -> float:
        return max((gap.seconds for gap in self.gaps), default=0.0)

    def figures(self) -> JSON:
        total = {name: sum(getattr(self, name).values()) for name in ("sent", "once", "twice", "unanswered")}
        return {
            **total,
            "sent_by_kind": dict(self.sent),
            "unexplained": len(self.unexplained),
            "gaps": len(self.gaps),
            "longest_gap_s": round(self.longest_gap, 3),
            "loop_posts": self.loop_posts,
            "loop_switches": self.loop_switches,
        }

    def line(self, label: str) -> str:
        kinds = " ".join(f"{kind}={n}" for kind, n in self.sent.items())
        f = self.figures()
        return (
            f"{label}: sent {f['sent']} ({kinds}); once {f['once']}, twice {f['twice']}, unanswered {f['unanswered']}"
            f" ({f['unexplained']} outside gaps); longest gap {f['longest_gap_s']:.2f} s over {f['gaps']} gaps;"
            f" loop posts {f['loop_posts']}, process switches {f['loop_switches']}"
        )


def answers(items: Iterable[Item], records: JSON, profile: Profile) -> dict[int, list[Answer]]:
    """Every answer in the records, keyed by the id of the item it answers."""
    ids = {item.id for item in items if item.id} | {item.opened for item in items if item.opened}
    found: dict[int, list[Answer]] = {i: [] for i in ids}
    for c in records["callbacks"]:
        if c["interaction_id"] in found and c["outcome"] in ("ok", "already_acknowledged"):
            found[c["interaction_id"]].append(Answer(c["client"], c["at"], c["outcome"] == "ok"))
    joins = {item.id: item.name for item in items if item.kind == "join" and item.id}
    dms = {item.channel: item.id for item in items if item.channel and item.id}
    for post in records["posted"]:
        if post["reply_to"] in found:
            found[post["reply_to"]].append(Answer(post["client"], post["at"], True))
        elif post.get("channel_id") in dms:
            found[dms[post["channel_id"]]].append(Answer(post["client"], post["at"], True))
        if joins and post["route"] == "channel":
            for member in _mentioned(post["content"], joins):
                found[member].append(Answer(post["client"], post["at"], True))
    return found


def _mentioned(content: str, joins: dict[int, str]) -> list[int]:
    ids = {int(m) for m in re.findall(r"<@!?(\d+)>", content)} & joins.keys()
    names = {member for member, name in joins.items() if re.search(rf"\b{re.escape(name)}\b", content)}
    return sorted(ids | names)


def classify(
    items: list[Item],
    records: JSON,
    profile: Profile,
    *,
    faults: Iterable[tuple[float, float]] = (),
    in_flight: float = 1.0,
) -> Verdict:
    """The verdict on ``items`` given the fake's ``records``; ``faults`` are (start, end) times of faults."""
    found = answers(items, records, profile)
    sent: Counter[str] = Counter()
    once: Counter[str] = Counter()
    twice: Counter[str] = Counter()
    unanswered: Counter[str] = Counter()
    doubles = []
    ordered = sorted(items, key=lambda item: item.sent_at)
    answered = []
    for item in ordered:
        sent[item.kind] += 1
        got = found.get(item.id, []) if item.id else []
        if item.opened:  # a modal: its opening is answered once (the modal shown); more is a second run
            got = got + found.get(item.opened, [])[1:]
        answered.append(bool(got))
        if not got:
            unanswered[item.kind] += 1
        elif len(got) == 1:
            once[item.kind] += 1
        else:
            twice[item.kind] += 1
            who = ", ".join(f"{a.client}{'' if a.ok else ' (40060)'} at {a.at:.3f}" for a in got)
            doubles.append(f"{item.kind} {item.id} sent at {item.sent_at:.3f}: answered by {who}")
    windows = [(start - in_flight, end) for start, end in faults]
    gaps, unexplained = _gaps(ordered, answered, windows)
    posts, switches = _loop(records, profile)
    kinds = profile.kinds
    return Verdict(
        sent={k: sent[k] for k in kinds},
        once={k: once[k] for k in kinds},
        twice={k: twice[k] for k in kinds},
        unanswered={k: unanswered[k] for k in kinds},
        gaps=gaps,
        unexplained=unexplained,
        doubles=doubles,
        loop_posts=posts,
        loop_switches=switches,
    )


def _gaps(ordered: list[Item], answered: list[bool], windows: list[tuple[float, float]]) -> tuple[list[Gap], list[str]]:
    gaps: list[Gap] = []
    unexplained: list[str] = []
    i = 0
    while i < len(ordered):
        if answered[i]:
            i += 1
            continue
        j = i
        while j < len(ordered) and not answered[j]:
            j += 1
        start = ordered[i - 1].sent_at if i > 0 else ordered[i].sent_at
        end = ordered[j].sent_at if j < len(ordered) else ordered[j - 1].sent_at
        explained = any(w_start <= end and start <= w_end for w_start, w_end in windows)
        gaps.append(Gap(start, end, j - i, explained))
        if not explained:
            unexplained += [f"{item.kind} {item.id} sent at {item.sent_at:.3f}" for item in ordered[i:j]]
        i = j
    return gaps, unexplained


def _loop(records: JSON, profile: Profile) -> tuple[int, int]:
    if not profile.loop:
        return 0, 0
    posts = sorted(
        (p for p in records["posted"] if p["content"].startswith(profile.loop) and p["route"] == "channel"),
        key=lambda p: p["at"],
    )
    switches = sum(1 for a, b in itertools.pairwise(posts) if a["client"] != b["client"])
    return len(posts), switches
