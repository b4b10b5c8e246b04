"""Deploys across three agents (issue 17, docs/protocol.md §19.7): one elected deployer, a rollout host by host,
the deploy state in etcd; real etcd, real git (each host its own clone), real worker processes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from tests._helpers import QUICK, git, worker_options
from tests.supervisor.test_rolling_deploy import Repository, overlaps, processing_spans
from urban_robot.cluster import EtcdClient
from urban_robot.cluster._deploy_state import DeployStore
from urban_robot.supervisor import ChildPolicy, ClusterOptions, build
from urban_robot.testing.etcd import EtcdCluster

from .test_agents import FAST, HOSTS, Host, cluster_name, running, settled, start, until

pytestmark = pytest.mark.slow


async def three_hosts(
    nursery: trio.Nursery, tmp_path: Path, etcd: EtcdCluster, cluster: str
) -> tuple[Repository, list[Host]]:
    repo = Repository(tmp_path)
    repo.commit('version = "1.0"\n')
    hosts = []
    for name in HOSTS:
        checkout = tmp_path / name / "helium"
        checkout.parent.mkdir()
        git(tmp_path, "clone", "-q", str(repo.upstream), str(checkout))
        options = ClusterOptions(cluster, name, tuple(etcd.endpoints), secret=b"s" * 32, timing=FAST)
        app = build(
            worker_options(
                tmp_path / name,
                QUICK,
                helium_path=checkout,
                standbys=0,
                cluster=options,
                deploy_timeout=30,
                admin_token="admin-token-" + name,
                policy=ChildPolicy(term_timeout=2, kill_timeout=2),
            )
        )
        hosts.append(await start(nursery, name, app))
    await settled(hosts)
    return repo, hosts


async def results(client: EtcdClient, cluster: str, serial: int) -> dict[str, bool]:
    """Each host's result in rollout ``serial``: passed or not."""
    found = await client.get(f"/{cluster}/rollout/{serial}/result/".encode(), prefix=True)
    return {kv.key.decode().rsplit("/", 1)[-1]: json.loads(kv.value)["ok"] for kv in found.kvs}


def versions(hosts: list[Host]) -> set[str | None]:
    return {w.version for h in hosts for w in h.app.robot.snapshot().workers}


def deployer_of(hosts: list[Host]) -> Host:
    [elected] = [h for h in hosts if h.app.cluster_deploys is not None and h.app.cluster_deploys.elected]
    return elected


async def test_a_good_commit_rolls_out_host_by_host_and_is_the_clusters_last_known_good(
    nursery: trio.Nursery,
    tmp_path: Path,
    etcd: EtcdCluster,
    client: EtcdClient,
    request: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = cluster_name(request)
    with trio.fail_after(120):
        repo, hosts = await three_hosts(nursery, tmp_path, etcd, cluster)
        await until(hosts, lambda: all(h.app.cluster_deploys and h.app.cluster_deploys.leader for h in hosts))
        deployer = deployer_of(hosts)
        # A deploy asked of a host that is not the deployer (its webhook, its API) goes on to the deployer.
        commit = repo.commit('version = "2.0"\n')
        other = next(h for h in hosts if h is not deployer)
        passed = await other.app.deployer.outcome_of(other.app.deployer.request("test"))
        assert passed.outcome == "not the deployer" and deployer.name in passed.detail
        store = DeployStore(client, cluster)
        while (record := (await store.read())[0]).last_known_good != commit:
            await trio.sleep(0.1)  # etcd's record, as the deployer's rollout leaves it
        assert record.target is None
        await deployer.app.deployer.wait_idle()
        assert [r.outcome for _, r in deployer.app.deployer.results] == ["deployed"]
        said = await results(client, cluster, record.serial)
        assert said == {name: True for name in HOSTS}, said  # every host took its turn, and passed
        await until(hosts, lambda: versions(hosts) == {"2.0"} and len(running(hosts)) == 1)
        await settled(hosts)
        # Every host's core follows the record (at its next read of it: a quarter of a second at most).
        await until(hosts, lambda: all(h.app.robot.snapshot().last_known_good == commit for h in hosts))
    # etcd restored from an old snapshot (the record names the first commit again): no host goes back by itself.
    first_commit = git(repo.work, "rev-parse", "HEAD~1")
    caplog.set_level(logging.WARNING, "urban_robot.cluster")
    store = DeployStore(client, cluster)
    await store.update(lambda r: attrs.evolve(r, last_known_good=first_commit))
    with trio.fail_after(30):
        while not any("not going back to it" in r.getMessage() for r in caplog.records):
            await trio.sleep(0.1)
    assert versions(hosts) == {"2.0"}
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for h in hosts:
        for group, held in processing_spans(h.app).items():
            spans.setdefault(group, []).extend(held)
    assert overlaps(spans) == []
    for h in hosts:
        h.app.stop("test over")


async def test_a_commit_failing_its_check_is_marked_bad_in_etcd_and_no_host_runs_it(
    nursery: trio.Nursery, tmp_path: Path, etcd: EtcdCluster, client: EtcdClient, request: Any
) -> None:
    cluster = cluster_name(request)
    with trio.fail_after(120):
        repo, hosts = await three_hosts(nursery, tmp_path, etcd, cluster)
        await until(hosts, lambda: any(h.app.cluster_deploys and h.app.cluster_deploys.elected for h in hosts))
        deployer = deployer_of(hosts)
        bad = repo.commit('version = "2.0-bad"\nfailing_cogs = ["modules.utilities"]\n')
        result = await deployer.app.deployer.outcome_of(deployer.app.deployer.request("test"))
        assert result.outcome == "failed", result
        assert f"failed on {deployer.name}: " in result.detail, result.detail  # where it failed, and why
        record, _ = await DeployStore(client, cluster).read()
        assert bad in record.bad and record.target is None and record.is_sane
        assert await results(client, cluster, record.serial) == {deployer.name: False}  # the first host stopped it
        await until(hosts, lambda: versions(hosts) == {"1.0"} and len(running(hosts)) == 1)
        for h in hosts:  # every host's deployer knows it bad: a webhook announcing it again does nothing
            await until(hosts, lambda h=h: bad in h.app.deployer.bad_commits)
    for h in hosts:
        for w in h.app.robot.snapshot().workers:
            assert w.version == "1.0"
    for h in hosts:
        h.app.stop("test over")
