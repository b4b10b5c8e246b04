"""Deploys across the hosts of a cluster (docs/protocol.md §19.7): one elected deployer, a rollout host by host.

Every agent campaigns for ``/<cluster>/deployer`` on its own etcd lease (``Election``); the one elected handles
the deploy requests (webhook, poll, ``POST /api/deploy``; the other hosts pass a webhook on to it) as one host
does (fetch, pick the target, skip what failed or is deployed), then starts a **rollout**: ``DeployRecord.target``
and ``serial`` set by compare-and-swap in ``/<cluster>/deploy``, and the order of the hosts at
``/<cluster>/rollout/<serial>/hosts`` (the deployer's own first, then the others by name).

Each agent follows the record (``_follow``) and rolls the commit out on its own host when every host before it in
the order said ``ok`` (or is gone: no presence key) — the same gate as on one host, group by group: a group held
here hands over to its candidate, a group held elsewhere gets a candidate that passes its health check and stands
by. It writes its result at ``/<cluster>/rollout/<serial>/result/<host>``. A failure marks the commit bad in the
record (its rollout ends); the hosts that had moved to it see it bad and go back to the last known good commit
through the same gate. The last host's ``ok`` confirms it: the record's ``last_known_good``. Every agent keeps its
core's ``is_sane`` and last known good, and its deployer's bad commits, as the record says; ``try_again`` on any
host clears them in the record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from typing import TYPE_CHECKING

import trio

from .._errors import UrbanRobotError
from ..cluster._deploy_state import DeployRecord, DeployStore, Election, UpdateRefused
from ..cluster._etcd import EtcdClient, EtcdError, Op
from ..logs import Throttled
from ._events import RollbackFinished, TryAgain

if TYPE_CHECKING:
    from ._cluster import ClusterLink
    from ._deploy import Deployer

log = logging.getLogger("urban_robot.cluster")

FOLLOW_EVERY = 0.25  # seconds between two reads of the deploy record and the rollout's results
KEPT_ROLLOUTS = 10  # rollouts whose /rollout/<serial>/ keys stay in etcd (older ones are deleted)
CAMPAIGN_EVERY = 1.0  # seconds between two campaigns while another agent leads (or nobody can)


class InvalidRolloutKey(UrbanRobotError):
    """A ``/<cluster>/rollout/...`` key that no agent wrote (by hand, or tampered with): one line, with the fix."""


def _hosts_of(value: bytes, key: str) -> list[str]:
    try:
        hosts = json.loads(value)
    except ValueError:
        hosts = None
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise InvalidRolloutKey(f"etcd key {key} holds no list of host names: delete it (etcdctl del {key})")
    return hosts


def _result_of(value: bytes, key: bytes) -> dict[str, object]:
    try:
        said = json.loads(value)
    except ValueError:
        said = None
    if not isinstance(said, dict) or not isinstance(said.get("ok"), bool):
        name = key.decode(errors="replace")
        raise InvalidRolloutKey(f"etcd key {name} holds no rollout result: delete it (etcdctl del {name})")
    return said


class ClusterDeploys:
    """The cluster's side of this host's deployer: ``await nursery.start(deploys.run)`` after the agent's link."""

    def __init__(self, link: ClusterLink) -> None:
        self.link = link
        self._deployer: Deployer | None = None  # known from ``run`` on
        self.leader: str | None = None  # the elected deployer's name, as last read
        self.record = DeployRecord()  # as last read
        self.quiet = Throttled(log)
        self._store: DeployStore | None = None
        self._election: Election | None = None
        self._done: set[int] = set()  # serials this host rolled out (or gave up on)
        self._moved_to: str | None = None  # the commit this host moved to in a rollout not confirmed yet
        self._try_again = False  # an operator said try_again here: the record is cleared at the next step
        self._forwards: list[dict[str, object]] = []  # deploy requests made here, for the deployer (``forward``)
        self._served: str | None = None  # the id of the last forwarded request this host, as deployer, served
        self._caught_up: set[str] = set()  # last known good commits this host tried to catch up with

    @property
    def me(self) -> str:
        return self.link.options.host

    @property
    def elected(self) -> bool:
        """This host leads: its campaign won on its current etcd lease, and its view of that lease still runs (cut
        off from etcd, it does not know whether another host leads by now, so it acts as if one did)."""
        election, agent = self._election, self.link.agent
        term = election.term if election is not None else None
        if term is None or term.lease_id != agent.lease_id:
            return False
        return trio.current_time() < agent.view_until

    def view(self) -> dict[str, object]:
        """The agent's view (``ClusterLink.view``) with the deployer and the deploy record as last read."""
        body = self.link.view(self.leader, self.elected)
        record = self.record
        body["deploy"] = {
            "is_sane": record.is_sane,
            "last_known_good": record.last_known_good,
            "target": record.target,
            "serial": record.serial,
            "bad": list(record.bad),
        }
        return body

    def _request_key(self) -> bytes:
        return f"/{self.link.options.name}/deploy-request".encode()

    async def _serve_forwarded(self, client: EtcdClient) -> None:
        """The deployer: a deploy request another host passed on, not served yet, becomes this host's request."""
        kv = (await client.get(self._request_key())).kv
        if kv is None:
            return
        try:
            asked = json.loads(kv.value)
            rid, commit, reason, source = asked["id"], asked.get("commit"), str(asked["reason"]), str(asked["from"])
        except (ValueError, KeyError, TypeError):
            self.quiet.log(logging.WARNING, "request", "ignoring an unreadable %s", self._request_key().decode())
            return
        if rid == self._served or not isinstance(rid, str):
            return
        self._served = rid
        valid = commit is None or (isinstance(commit, str) and len(commit) == 40)
        if valid:
            log.info("deploy requested on %s (%s): deploying for the cluster", source[:64], reason[:80])
            self.deployer.request(f"{reason[:80]} on {source[:64]}", commit if isinstance(commit, str) else None)

    def _key(self, *parts: object) -> bytes:
        return "/".join([f"/{self.link.options.name}", "rollout", *map(str, parts)]).encode()

    # -- running -----------------------------------------------------------------------------------------
    @property
    def deployer(self) -> Deployer:
        assert self._deployer is not None, "ClusterDeploys.run gives it"
        return self._deployer

    async def run(self, deployer: Deployer, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the cluster's deploys for ``deployer`` (this host's); campaign to be the cluster's deployer."""
        self._deployer = deployer
        client = self.link.client
        assert client is not None, "the agent's link runs first"
        self._store = DeployStore(client, self.link.options.name)
        self._election = Election(client, self.link.options.name)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._campaign)
            nursery.start_soon(self._follow, client)
            task_status.started()

    async def _campaign(self) -> None:
        election = self._election
        assert election is not None
        while True:
            lease = self.link.agent.lease_id
            try:
                term = election.term
                if term is not None and term.lease_id == lease:
                    self.leader = self.me
                else:  # a read first: another host leads most of the time, and a campaign is a write
                    self.leader = await election.leader()
                    if lease is not None and self.leader is None and await election.campaign(self.me, lease):
                        log.info("elected the cluster's deployer")
                        self.leader = self.me
            except (EtcdError, UrbanRobotError, ValueError) as exc:
                self.quiet.log(logging.WARNING, "campaign", "deployer election: %s", exc)
            await trio.sleep(CAMPAIGN_EVERY)

    # -- the elected deployer -------------------------------------------------------------------------------
    async def roll_out(self, target: str, timeout: float) -> tuple[str, str]:
        """Roll ``target`` out to every host (this host's deployer picked it); ("deployed" | "failed" | ..., detail)."""
        store, client = self._store, self.link.client
        assert store is not None and client is not None
        if not self.elected:
            leader = self.leader or "nobody yet"
            return "not the deployer", f"this host is not the cluster's deployer ({leader} is): ask it"
        try:
            record = await store.update(lambda r: r.with_rollout(target))
        except UpdateRefused as exc:
            return "refused", str(exc)
        except (EtcdError, UrbanRobotError) as exc:
            return "error", f"cannot start the rollout in etcd: {exc}"
        if record.target != target:
            return "up to date", f"{target[:12]} is the last known good already"
        hosts = [self.me, *sorted(await self.link.read_peers())]  # who is there now
        if record.serial > KEPT_ROLLOUTS:  # the keys of older rollouts go (each rollout's are a few hundred bytes)
            await client.delete(self._key(record.serial - KEPT_ROLLOUTS) + b"/", prefix=True)
        await client.put(self._key(record.serial, "hosts"), json.dumps(hosts).encode())
        log.info("rollout %d of %s across %s", record.serial, target[:12], ", ".join(hosts))
        with trio.move_on_after(timeout) as waited:
            while True:
                now, _ = await store.read()
                if now.target != target or now.serial != record.serial:
                    break
                await trio.sleep(FOLLOW_EVERY)
        if waited.cancelled_caught:
            await store.update(lambda r: r.with_bad(target) if r.target == target else r)
            return "failed", f"the rollout of {target[:12]} did not finish within {timeout:g} s"
        if now.last_known_good == target:
            return "deployed", f"every host runs {target[:12]}"
        found = await client.get(self._key(record.serial, "result") + b"/", prefix=True)
        failed = []
        for kv in found.kvs:
            with contextlib.suppress(ValueError, AttributeError):
                said = json.loads(kv.value)
                if not said.get("ok"):
                    failed.append(
                        f"{kv.key.rsplit(b'/', 1)[-1].decode(errors='replace')}: {str(said.get('detail'))[:200]}"
                    )
        where = "; ".join(failed) or "a host (see its log)"
        return "failed", f"{target[:12]} failed on {where}; the hosts that had moved went back"

    # -- every agent ----------------------------------------------------------------------------------------
    def forward(self, reason: str, commit: str | None) -> None:
        """A deploy request on a host that is not the deployer (a webhook, the API, try_again): it goes to
        ``/<cluster>/deploy-request``, which the deployer follows (the newest request; each served once)."""
        self._forwards.append({"id": secrets.token_hex(8), "commit": commit, "reason": reason, "from": self.me})

    def try_again(self) -> None:
        """An operator's try_again on this host: the cluster's record is sane again, its bad commits forgotten."""
        self._try_again = True

    async def _follow(self, client: EtcdClient) -> None:
        store = self._store
        assert store is not None
        while True:
            try:
                if self._try_again:
                    await store.update(lambda r: r.tried_again())
                    self._try_again = False
                while self._forwards:
                    await client.put(self._request_key(), json.dumps(self._forwards[0]).encode())
                    self._forwards.pop(0)
                if self.elected:
                    await self._serve_forwarded(client)
                record, _ = await store.read()
                await self._mirror(record)
                await self._take_turn(client, store, record)
            except (EtcdError, UrbanRobotError) as exc:
                self.quiet.log(logging.WARNING, "follow", "cluster deploy state: %s", exc)
            await trio.sleep(FOLLOW_EVERY)

    async def _mirror(self, record: DeployRecord) -> None:
        """This host's core and deployer as the record says: sanity, the last known good, the bad commits."""
        old, self.record = self.record, record
        robot = self.deployer.robot
        self.deployer.bad_commits = set(record.bad)
        snap = robot.snapshot()
        if record.is_sane and not snap.is_sane and not old.is_sane:
            await robot.submit(TryAgain(None))
        elif not record.is_sane and snap.is_sane:
            await robot.submit(RollbackFinished(False, record.reason or "the cluster's deploy state says so"))
        moved = self._moved_to
        if moved is not None and moved in record.bad:  # failed on another host: back to the last known good
            self._moved_to = None
            await self.deployer.return_here(moved, record.last_known_good)
        elif moved is not None and record.target != moved:  # confirmed (or the record was put by hand): it stays
            self._moved_to = None
            if record.last_known_good == moved:
                await self.deployer.confirmed_here(moved)
            snap = robot.snapshot()
        good = record.last_known_good
        if good is not None and good != snap.last_known_good and self._moved_to is None and record.target is None:
            if good not in self._caught_up:  # a host that was away (or joined later) catches up, through the gate
                self._caught_up.add(good)
                here = snap.last_known_good
                if here is not None and not await self._newer(good, here):
                    # A record older than what runs here (etcd restored from a snapshot, or replaced): never a
                    # downgrade by itself; an operator puts the right record (docs/deployment.md, "When etcd is down").
                    log.warning(
                        "the cluster's deploy record says %s, which is not newer than %s running here: not going back "
                        "to it; if etcd was restored or replaced, put the right last_known_good into /%s/deploy",
                        good[:12],
                        here[:12],
                        self.link.options.name,
                    )
                    return
                log.info("the cluster runs %s: this host catches up", good[:12])
                ok, detail = await self.deployer.deploy_here(good)
                if ok:
                    await self.deployer.confirmed_here(good)
                else:
                    log.error("cannot catch up with the cluster's %s here: %s", good[:12], detail)

    async def _newer(self, commit: str, than: str) -> bool:
        """Whether ``commit`` descends from ``than`` (fetched first: another host may have deployed it)."""
        git = self.deployer.git
        try:
            await git.fetch()
            return await git.is_ancestor(than, commit)
        except UrbanRobotError as exc:
            log.warning("cannot tell whether %s is newer than %s (%s): not catching up", commit[:12], than[:12], exc)
            return False

    async def _take_turn(self, client: EtcdClient, store: DeployStore, record: DeployRecord) -> None:
        target, serial = record.target, record.serial
        if target is None or serial in self._done:
            return
        found = await client.get(self._key(serial, "hosts"))
        if found.kv is None:
            return  # the deployer writes the order just after the record
        hosts = _hosts_of(found.kv.value, self._key(serial, "hosts").decode())
        if self.me not in hosts:
            self._done.add(serial)  # a rollout started before this host was there: it starts from the result
            return
        results = await client.get(self._key(serial, "result") + b"/", prefix=True)
        said = {kv.key.rsplit(b"/", 1)[-1].decode(errors="replace"): _result_of(kv.value, kv.key) for kv in results.kvs}
        for host in hosts[: hosts.index(self.me)]:
            if host in said and not said[host].get("ok"):
                self._done.add(serial)
                return  # failed there: the record says it bad in a moment
            if host not in said and host in self.link.peers:
                return  # its turn, still
        self._done.add(serial)
        self._moved_to = target
        ok, detail = await self.deployer.deploy_here(target)
        value = json.dumps({"ok": ok, "detail": detail[:500]}).encode()
        await client.txn([], [Op.put(self._key(serial, "result", self.me), value)])
        if not ok:
            self._moved_to = None  # its own rollback already put its groups back
            await store.update(lambda r: r.with_bad(target) if r.target == target else r)
            log.warning("rollout %d of %s failed on this host: %s", serial, target[:12], detail)
        elif hosts[-1] == self.me or all(h in said or h not in self.link.peers for h in hosts if h != self.me):
            await store.update(lambda r: r.confirmed(target) if r.target == target else r)
            log.info("rollout %d of %s: every host runs it", serial, target[:12])
