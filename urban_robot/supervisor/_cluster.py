"""This host's agent in a cluster of hosts (docs/protocol.md §19): the sans-IO ``Agent`` carried on trio and etcd.

One supervisor per host is its **agent**. ``ClusterLink`` holds the agent's etcd lease (grant, keep-alives),
the groups' lease keys (txns), watches them, and keeps this host's presence key; it feeds the core what etcd
grants and hears what the core asks::

    core ─ Claim(group, identity, used) ⇢ ClusterLink ─ Agent.want / switch ─▶ Acquire / Rewrite txn ─▶ etcd
    core ─ Yield(group) ⇢ ClusterLink ─ Agent.release / unwant ─▶ Release txn ─▶ etcd
    etcd ─ answers, watch events, reads ─▶ Agent ─ Granting / StopGranting ─▶ core: ClusterGrant / ClusterStop

The core promotes a worker only under a ``ClusterGrant`` naming it, at its epoch (the etcd revision of the write
naming it), and renews it never past the grant's ``until`` (the agent's view of its etcd lease, §19.3); the
``Agent`` decides every txn and every grant, this shell only carries. Without a ``[cluster]`` section none of
this exists: the supervisor promotes on its own (§1–§18).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import trio

from .. import __version__
from ..cluster._etcd import Compare, EtcdClient, EtcdError, LeaseNotFound, Op, Range, WatchEvent, prefix_end
from ..cluster._lease import (
    Acquire,
    Agent,
    Applied,
    Decision,
    Granting,
    GrantLease,
    Holder,
    KeepAlive,
    Refused,
    Release,
    Rewrite,
    State,
    StopGranting,
    Timing,
    TxnResult,
    Unknown,
    holder_value,
    lease_key,
    parse_holder,
)
from ..cluster._replica import Record, ReplicaAnswer, Replicator, install_replica_route
from ..logs import Throttled
from ._events import CacheReplicated, Claim, ClusterGrant, ClusterStop, Event, PersistCache, Yield
from ._service import UrbanRobot

log = logging.getLogger("urban_robot.cluster")

IDENTIFY_TTL = 6  # seconds an IDENTIFY bucket stays taken across hosts: Discord's 5 s window, and etcd's rounding
REREAD_EVERY = 2.0  # seconds: the groups' keys and the hosts are read again (a watch event late or lost is a hint)
WATCH_RETRY = 1.0  # seconds between attempts to open the watch again


@attrs.frozen
class ClusterOptions:
    """The ``[cluster]`` section: which etcd, which cluster, which host this is, how peers reach it."""

    name: str  # the cluster's name: every key lives under /<name>/
    host: str  # this host's name, unique in the cluster
    etcd: tuple[str, ...]  # etcd's client URLs
    advertise: str | None = None  # how other agents reach this one (default: http://<host>:<port>)
    secret: bytes = attrs.field(default=b"", repr=False)  # authenticates agent-to-agent connections
    timing: Timing = attrs.field(factory=Timing)


def host_key(cluster: str, host: str) -> str:
    return f"/{cluster}/hosts/{host}"


class ClusterLink:
    """This host's agent: ``await nursery.start(link.run, url)``; the core's Claim/Yield reach it on the bus
    (``on_claim``, ``on_yield``: subscribed by the assembly)."""

    def __init__(self, options: ClusterOptions, groups: Callable[[], list[str]]) -> None:
        self.options = options
        self.robot: UrbanRobot | None = None  # known from ``run`` on: caches replicate to and from other hosts (§19.8)
        self.replicator: Replicator | None = None
        self.agent = Agent(options.host, options.timing)
        self._groups = groups  # the plan's group names, by index
        self.client: EtcdClient | None = None
        self.url = ""
        self.peers: dict[str, str] = {}  # other agents' names -> their URLs (presence keys)
        self.quiet = Throttled(log)
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._to_core, self._core_inbox = trio.open_memory_channel[Event](math.inf)
        self._presence_lease: int | None = None
        self.identify_ttl = IDENTIFY_TTL
        self._claims = 0  # Claims heard: a yield waiting for the caches is void once one came after it

    # -- running ---------------------------------------------------------------------------------------
    async def run(
        self,
        url: str,
        robot: UrbanRobot | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the agent for ``robot`` (reached at ``url``): its etcd lease, its groups' keys, presence, replicas."""
        self.url, self.robot = self.options.advertise or url, robot
        timing = self.options.timing
        # One call (every endpoint once) must end well within the view, so a keep-alive that fails is known to
        # have failed while the view still runs: each endpoint gets at most a third of the keep-alive period.
        attempt = min(1.0, max(0.25, timing.keepalive_every / 3))
        async with (
            EtcdClient.open(self.options.etcd, attempt_timeout=attempt) as client,
            httpx.AsyncClient(trust_env=False) as peers_http,
            trio.open_nursery() as n,
        ):
            self.client, self._nursery = client, n
            if self.robot is not None:
                self.replicator = Replicator(peers_http, self.options.host, self.options.secret)
                await n.start(self.replicator.run)
                self.replicator.set_peers(self.peers)
            n.start_soon(self._forward)
            n.start_soon(self._timer)
            n.start_soon(self._watch)
            n.start_soon(self._watch_hosts)
            n.start_soon(self._reread)
            task_status.started()

    async def leave(self, *, every_worker_stopped: bool) -> None:
        """Stopping: with every worker of this host known stopped, revoke the etcd lease (its keys go with it at
        once, so other hosts take the groups over now instead of after the TTL)."""
        lease, client = self.agent.lease_id, self.client
        if lease is None or client is None or not every_worker_stopped:
            return
        with trio.move_on_after(client.call_timeout + 0.5):
            try:
                await client.lease_revoke(lease)
                log.info("left the cluster: etcd lease %x revoked, its groups are free for the other hosts", lease)
            except EtcdError as exc:
                log.warning("cannot revoke the etcd lease on leaving (%s): other hosts wait for its TTL", exc)

    async def identify_slot(self, key: int) -> None:
        """Return once this host may send one IDENTIFY of Discord's rate limit key ``key`` (shard id modulo
        max_concurrency): no other host has for ``IDENTIFY_TTL`` seconds (docs/protocol.md §19.9). Each host's
        own slots (§18.3) space its IDENTIFYs; this spaces them across hosts, with a key per bucket on a short
        etcd lease of its own."""
        client = self.client
        assert client is not None
        bucket = f"/{self.options.name}/identify/{key}".encode()
        lease = 0
        while True:
            try:
                # The bucket's key lives on an etcd lease of its own, refreshed (or granted) just before the attempt:
                # whenever the key is created, it lives a whole ``identify_ttl`` from then on.
                if lease:
                    try:
                        await client.lease_keepalive_once(lease)
                    except LeaseNotFound:
                        lease = 0
                if not lease:
                    lease = (await client.lease_grant(self.identify_ttl)).id
                taken = await client.create_if_absent(bucket, self.options.host.encode(), lease=lease)
                if taken.created:
                    return
                if taken.holder is not None and taken.holder.lease == 0:
                    self.quiet.log(
                        logging.WARNING,
                        f"identify-{key}",
                        "etcd key %s is on no etcd lease (written by hand?): no host may IDENTIFY a shard of rate "
                        "limit key %d while it is there: delete it (etcdctl del %s)",
                        bucket.decode(),
                        key,
                        bucket.decode(),
                    )
            except EtcdError as exc:
                self.quiet.log(logging.WARNING, "identify", "etcd: cannot take an IDENTIFY slot (%s)", exc)
                lease = 0
            await trio.sleep(0.25)

    def view(self, deployer: str | None = None, elected: bool = False) -> dict[str, Any]:
        """``GET /api/status``'s ``cluster``: this host, its etcd lease and view, the groups it holds, the peers."""
        agent, now = self.agent, trio.current_time()
        groups = {}
        for name in self._groups():
            g = agent.groups.get(name)
            held = g is not None and g.state is State.HELD
            groups[name] = {
                "state": g.state.value if g is not None else "idle",
                "held_here": held,
                "granting": held and agent.cap(name, now) is not None,
                "epoch": g.epoch if held and g is not None else None,
            }
        return {
            "name": self.options.name,
            "host": self.options.host,
            "url": self.url,
            "etcd": list(self.options.etcd),
            "etcd_lease": None if agent.lease_id is None else f"{agent.lease_id:x}",
            "view_left": max(0.0, agent.view_until - now) if agent.lease_id is not None else None,
            "ttl": self.options.timing.ttl,
            "peers": dict(sorted(self.peers.items())),
            "deployer": deployer,
            "elected": elected,
            "groups": groups,
        }

    # -- caches across hosts (§19.8) ----------------------------------------------------------------------
    def install_replica_route(self, robot: UrbanRobot) -> None:
        """Serve the other hosts' replicas on ``robot``'s port (taken once ``run`` knows the robot)."""
        install_replica_route(
            robot.server,
            self._receive,
            me=self.options.host,
            secret=self.options.secret,
            cache_max=robot.settings.cache_max,
        )

    async def replicate(self, group: int, writes: list[PersistCache]) -> bool:
        """The holder's cache ``writes`` of ``group`` (on this host's disk already) to another host's: acknowledged?"""
        replicator, names = self.replicator, self._groups()
        if replicator is None or not 0 <= group < len(names):
            return True  # not running yet (a test's link without peers): nothing to wait for
        name, me, newest = names[group], self.options.host, writes[-1]
        if len(writes) == 1:
            record = Record.update(name, me, newest.epoch, newest.seq, newest.base, newest.change, newest.image)
        else:  # several changes written together: the peers get the image they made
            record = Record.of_image(name, me, newest.epoch, newest.seq, newest.image)
        whole = Record.of_image(name, me, newest.epoch, newest.seq, newest.image)  # for a peer missing the base
        # Every peer that is reachable, at least one: whichever host takes the group over next has what was
        # acknowledged (one that is failing is not waited for; it is sent the whole cache when it is back).
        need = max(1, len(replicator.reachable(name)))
        try:
            acked = await replicator.replicate(record, lambda: whole, need=need)
        except RuntimeError:  # the replicator has stopped: this host is going down (its last caches stay on disk)
            return False
        if not acked:
            self.quiet.log(
                logging.WARNING,
                "unreplicated",
                "%s: no other host acknowledged its cache within %g s: kept on this host only",
                name,
                replicator.timeout,
            )
        return bool(acked)

    def _bring_up_to_date(self, joined: set[str]) -> None:
        """Hosts that joined (or came back) get the caches of the groups held here now, not at the next write."""
        robot, replicator, nursery = self.robot, self.replicator, self._nursery
        if robot is None or replicator is None or nursery is None:
            return
        names = self._groups()
        for index, core in enumerate(robot.fleet.groups):
            lease, image = core.lease, core.cache
            if lease is None or image is None or core.cache_seq == 0 or index >= len(names):
                continue
            whole = Record.of_image(names[index], self.options.host, lease.epoch, core.cache_seq, image)
            nursery.start_soon(self._send_whole, replicator, whole, joined)

    @staticmethod
    async def _send_whole(replicator: Replicator, whole: Record, to: set[str]) -> None:
        await replicator.replicate(whole, lambda: whole, to=to)

    async def _receive(self, record: Record) -> ReplicaAnswer:
        robot, index = self.robot, self.index(record.group)
        if robot is None:
            return ReplicaAnswer.refused("this host's agent is starting: send it again")
        if index is None:
            return ReplicaAnswer.refused(f"{record.group!r} is not a shard group of this host's plan")
        event = CacheReplicated(index, record.origin, record.epoch, record.seq, record.base, record.change)
        slot = await robot._submit(event)
        if slot.write is not None:
            await robot.cache_written(slot.write)  # "ok" once it is on this host's disk
        return ReplicaAnswer.of(slot.value if isinstance(slot.value, dict) else {"refused": "no answer"})

    def index(self, group: str) -> int | None:
        names = self._groups()
        return names.index(group) if group in names else None

    # -- the core's asks ---------------------------------------------------------------------------------
    def on_claim(self, claim: Claim) -> None:
        self._claims += 1  # a yield still waiting for the caches to be written is void now
        names = self._groups()
        if not 0 <= claim.group < len(names):
            return
        name, now = names[claim.group], trio.current_time()
        g = self.agent.groups.get(name)
        if g is not None and g.state is State.HELD:
            cap = self.agent.cap(name, now)
            if g.identity == claim.identity and g.epoch != claim.used and cap is not None:
                self._to_core.send_nowait(ClusterGrant(claim.group, g.epoch, g.identity, cap))  # as announced
                return
            self._do(self.agent.switch(name, claim.identity, now))  # a fresh epoch for this identity
            return
        self._do(self.agent.want(name, claim.identity, now))

    def on_yield(self, y: Yield) -> None:
        names = self._groups()
        if not 0 <= y.group < len(names):
            return
        robot, nursery = self.robot, self._nursery
        if robot is not None and nursery is not None and robot.caches_pending():
            # The holder's last cache (its final one, on a hand-over) is still on its way to disk and to another
            # host: the group goes once it is there, or the next holder, elsewhere, would start from an older one.
            nursery.start_soon(self._yield_once_written, names[y.group], self._claims)
            return
        self._yield(names[y.group])

    async def _yield_once_written(self, name: str, claims: int) -> None:
        assert self.robot is not None
        await self.robot.caches_written()
        if self._claims == claims:  # nobody here was claimed for it since
            self._yield(name)

    def _yield(self, name: str) -> None:
        now = trio.current_time()
        g = self.agent.groups.get(name)
        if g is not None and g.state is State.HELD:
            self._do(self.agent.release(name, now))
        elif g is not None:
            self.agent.unwant(name)  # an acquisition under way gives the key back once it lands

    # -- carrying the agent's decisions ------------------------------------------------------------------
    def _do(self, decisions: list[Decision]) -> None:
        nursery = self._nursery
        for d in decisions:
            if isinstance(d, Granting | StopGranting):
                index = self.index(d.group)
                if index is None:
                    continue
                if isinstance(d, Granting):
                    self._to_core.send_nowait(ClusterGrant(index, d.epoch, d.identity, d.until))
                else:
                    log.info("%s: no longer granted here (%s)", d.group, d.reason)
                    self._to_core.send_nowait(ClusterStop(index, d.reason))
                    # The replicator goes on with what it was sending (a final cache, a retry to a lagging host): a
                    # receiving host keeps the newest epoch's cache, so this one's never undoes the next holder's.
            elif nursery is not None:
                if isinstance(d, GrantLease):
                    nursery.start_soon(self._grant, d)
                elif isinstance(d, KeepAlive):
                    nursery.start_soon(self._keepalive, d)
                else:
                    nursery.start_soon(self._txn, d)
        self._wake.set()

    async def _forward(self) -> None:
        """Grants and stops reach the core in the order the agent decided them."""
        async for event in self._core_inbox:
            if self.robot is not None:
                await self.robot.submit(event)

    async def _timer(self) -> None:
        while True:
            deadline = self.agent.next_deadline()
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            self._do(self.agent.poll(trio.current_time()))

    async def _grant(self, op: GrantLease) -> None:
        assert self.client is not None
        try:
            grant = await self.client.lease_grant(op.ttl)
        except EtcdError as exc:
            self.quiet.log(logging.WARNING, "grant", "etcd: cannot get an etcd lease (%s); trying again", exc)
            return
        now = trio.current_time()
        if self.agent.lease_id is None:
            log.info("etcd lease %x granted (TTL %d s): this host may hold groups", grant.id, grant.ttl)
        self._do(self.agent.lease_granted(op, grant.id, grant.ttl, now))
        if self.agent.lease_id == grant.id:
            await self._announce_presence(grant.id)

    async def _announce_presence(self, lease: int) -> None:
        assert self.client is not None
        value = json.dumps({"url": self.url, "version": __version__}, sort_keys=True).encode()
        try:
            await self.client.put(host_key(self.options.name, self.options.host).encode(), value, lease=lease)
            self._presence_lease = lease
        except EtcdError as exc:
            self.quiet.log(logging.WARNING, "presence", "etcd: cannot write this host's presence (%s)", exc)

    async def _keepalive(self, op: KeepAlive) -> None:
        assert self.client is not None
        try:
            answer = await self.client.lease_keepalive_once(op.lease_id)
            ttl = answer.ttl
        except LeaseNotFound:
            ttl = 0
            log.warning("etcd lease %x expired: every group it held is free; asking for a new one", op.lease_id)
        except EtcdError as exc:
            self.quiet.log(logging.WARNING, "keepalive", "etcd: keep-alive not answered (%s)", exc)
            return
        self._do(self.agent.keepalive_answered(op, ttl, trio.current_time()))

    async def _txn(self, op: Acquire | Rewrite | Release) -> None:
        assert self.client is not None
        key = lease_key(self.options.name, op.group).encode()
        if isinstance(op, Acquire):
            compare, success = Compare.absent(key), Op.put(key, holder_value(self.agent.name, op.identity), op.lease_id)
        elif isinstance(op, Rewrite):
            compare = Compare.mod_revision(key, op.expect)
            success = Op.put(key, holder_value(self.agent.name, op.identity), op.lease_id)
        else:
            compare, success = Compare.mod_revision(key, op.expect), Op.delete(key)
        result: TxnResult
        try:
            txn = await self.client.txn([compare], [success], [Op.get(key)])
        except EtcdError as exc:
            result = Unknown(str(exc))
        else:
            if txn.succeeded:
                result = Applied(txn.revision)
            else:
                found = txn.responses[0] if txn.responses else None
                kv = found.kv if isinstance(found, Range) else None
                result = Refused(None if kv is None else parse_holder(kv.value, kv.lease, kv.mod_revision))
        self._do(self.agent.txn_answered(op, result, trio.current_time()))

    # -- hints: the watch and the periodic read ----------------------------------------------------------
    def _groups_prefix(self) -> bytes:
        return f"/{self.options.name}/groups/".encode()

    def _group_of_key(self, key: bytes) -> str | None:
        prefix, suffix = self._groups_prefix(), b"/lease"
        if not key.startswith(prefix) or not key.endswith(suffix):
            return None
        name = key[len(prefix) : -len(suffix)].decode(errors="replace")
        return name if name in self._groups() else None

    def _observe(self, group: str, holder: Holder | None, revision: int) -> None:
        if holder is not None and holder.lease_id == 0:
            key = lease_key(self.options.name, group)
            self.quiet.log(
                logging.WARNING,
                f"unleased-{group}",
                "etcd key %s is on no etcd lease (written by hand?): no host may take %s while it is there; delete "
                "it (etcdctl del '%s')",
                key,
                group,
                key,
            )
        self._do(self.agent.observed(group, holder, revision, trio.current_time()))

    async def _watch(self) -> None:
        assert self.client is not None
        start = 0
        while True:
            try:
                async with self.client.watch(self._groups_prefix(), prefix=True, start_revision=start) as events:
                    async for event in events:
                        start = events.next_revision
                        self._on_watch_event(event)
            except EtcdError as exc:
                start = 0  # compacted or unreachable: the periodic read covers what was missed
                self.quiet.log(logging.WARNING, "watch", "etcd: the watch of the groups' keys broke (%s)", exc)
            await trio.sleep(WATCH_RETRY)

    async def _watch_hosts(self) -> None:
        """Peers come and go with their presence keys: each change is read at once (the periodic read is the
        fallback), so a host that joins is replicated to, and one that left is not waited for."""
        assert self.client is not None
        prefix, start = f"/{self.options.name}/hosts/".encode(), 0
        while True:
            try:
                async with self.client.watch(prefix, prefix=True, start_revision=start) as events:
                    async for event in events:
                        start = events.next_revision
                        self._check_namesake(event)
                        await self.read_peers()
            except EtcdError as exc:
                start = 0
                self.quiet.log(logging.WARNING, "watch-hosts", "etcd: the watch of the hosts broke (%s)", exc)
            await trio.sleep(WATCH_RETRY)

    def _check_namesake(self, event: WatchEvent) -> None:
        """Our presence key written on another etcd lease: another agent runs with this host's name."""
        mine = host_key(self.options.name, self.options.host).encode()
        lease = self.agent.lease_id
        if event.kind == "put" and event.kv.key == mine and lease is not None and event.kv.lease != lease:
            self.quiet.log(
                logging.CRITICAL,
                "namesake",
                "another agent is already in the cluster as host %r (etcd key %s was written on another etcd "
                "lease): give each host its own cluster.host; until then the other hosts cannot tell the two apart",
                self.options.host,
                mine.decode(),
            )
            self._presence_lease = None  # ours again at the next read

    def _on_watch_event(self, event: WatchEvent) -> None:
        group = self._group_of_key(event.kv.key)
        if group is None:
            return
        if event.kind == "delete":
            self._observe(group, None, event.kv.mod_revision)
        else:
            kv = event.kv
            self._observe(group, parse_holder(kv.value, kv.lease, kv.mod_revision), kv.mod_revision)

    async def _reread(self) -> None:
        assert self.client is not None
        while True:
            try:
                keys = await self.client.get(self._groups_prefix(), prefix=True)
                found = {self._group_of_key(kv.key): kv for kv in keys.kvs}
                for name in self._groups():
                    kv = found.get(name)
                    holder = None if kv is None else parse_holder(kv.value, kv.lease, kv.mod_revision)
                    self._observe(name, holder, keys.revision)
                await self.read_peers()
                mine = (await self.client.get(host_key(self.options.name, self.options.host).encode())).kv
                lease = self.agent.lease_id
                if lease is not None and (self._presence_lease != lease or mine is None or mine.lease != lease):
                    await self._announce_presence(lease)  # never written, gone, or overwritten by a namesake
            except EtcdError as exc:
                self.quiet.log(logging.WARNING, "read", "etcd: cannot read the cluster's keys (%s)", exc)
            await trio.sleep(REREAD_EVERY)

    async def read_peers(self) -> dict[str, str]:
        """The other hosts present in the cluster now (their presence keys), by name: their URLs."""
        assert self.client is not None
        prefix = f"/{self.options.name}/hosts/".encode()
        self._learn_peers(await self.client.get(prefix, prefix=True), prefix)
        return dict(self.peers)

    def _learn_peers(self, found: Range, prefix: bytes) -> None:
        peers: dict[str, str] = {}
        for kv in found.kvs:
            name = kv.key[len(prefix) :].decode(errors="replace")
            if name == self.options.host or not kv.key.startswith(prefix) or prefix_end(prefix) <= kv.key:
                continue
            try:
                url = json.loads(kv.value)["url"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                peers[name] = url
        if peers != self.peers:
            log.info("cluster peers: %s", ", ".join(f"{n} at {u}" for n, u in sorted(peers.items())) or "none")
            joined = set(peers) - set(self.peers)
            self.peers = peers
            if self.replicator is not None:
                self.replicator.set_peers(peers)
                if joined:
                    self._bring_up_to_date(joined)
