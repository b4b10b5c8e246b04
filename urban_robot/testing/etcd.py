"""Real etcd members for tests: one, or a cluster of three, on 127.0.0.1 with free ports and temp data dirs.

    with EtcdCluster.start(tmp_path, size=3) as cluster:     # returns once every member says it is healthy
        cluster.endpoints                                     # ["http://127.0.0.1:41234", ...]
        leader = cluster.leader()                             # waits until the live members agree on one
        cluster.kill(leader)                                  # SIGKILL (``stop``: SIGTERM), ``restart`` later
        cluster.pause(member); cluster.resume(member)         # SIGSTOP / SIGCONT: a frozen member

Process control is synchronous (``subprocess``): it works in a session fixture and in a script. The waits
(``wait_healthy``, ``leader``) poll etcd's own endpoints every ``POLL`` seconds until a deadline; from trio,
run them with ``trio.to_thread.run_sync``. Each member logs to ``<root>/<name>.log``; an error quotes its end.

The binary is ``$URBAN_ROBOT_ETCD`` or ``etcd`` on PATH (Debian: ``apt-get install etcd-server``, which .ci/run
does); ``etcd_or_skip()`` skips a test without it locally and fails it when ``$CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
import httpx

ETCD = os.environ.get("URBAN_ROBOT_ETCD") or "etcd"
INSTALL = "Debian: apt-get install etcd-server; or set URBAN_ROBOT_ETCD to the binary"
POLL = 0.05  # seconds between two looks at a member while waiting for it
STOP_TIMEOUT = 10.0  # seconds a SIGTERM'd member has before SIGKILL


def etcd_binary() -> str | None:
    """``$URBAN_ROBOT_ETCD``, else ``etcd`` on PATH: its full path, or None."""
    return shutil.which(ETCD)


def etcd_or_skip() -> str:
    """The etcd binary's path; else skip the test (locally) or fail it (``$CI``: .ci/run installs etcd)."""
    found = etcd_binary()
    if found:
        return found
    import pytest  # only tests call this: the module itself works without pytest (scripts use it too)

    message = f"no etcd binary ({ETCD}) on PATH ({INSTALL})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A port nobody listens on now (another process may take it before etcd does; rare on loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define(eq=False)
class Member:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    member_id: int = 0  # etcd's, learnt once it answers

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def serving(self) -> bool:
        """Running and not paused: able to answer."""
        return self.running and not self.paused


@attrs.define(eq=False)
class EtcdCluster:
    root: Path
    members: list[Member]
    binary: str
    heartbeat_ms: int
    election_ms: int
    http: httpx.Client = attrs.field(factory=lambda: httpx.Client(trust_env=False, timeout=1.0))

    @classmethod
    def start(
        cls,
        root: Path,
        size: int = 1,
        *,
        binary: str | None = None,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
        timeout: float = 30.0,
    ) -> EtcdCluster:
        """``size`` members of a new cluster under ``root``, healthy, or an error quoting their logs.

        The Raft timings are etcd's defaults; shorter ones make leases shorter (etcd's minimum TTL is 1.5
        election timeouts, rounded up to whole seconds) and elections faster, at the price of spurious ones
        on a loaded machine.
        """
        members = [
            Member(
                name=f"m{index}",
                client_url=f"http://127.0.0.1:{free_port()}",
                peer_url=f"http://127.0.0.1:{free_port()}",
                data_dir=root / f"m{index}.etcd",
                log=root / f"m{index}.log",
            )
            for index in range(size)
        ]
        binary = binary or etcd_binary()
        if binary is None:
            raise FileNotFoundError(f"no etcd binary ({ETCD}) on PATH ({INSTALL})")
        cluster = cls(root, members, binary, heartbeat_ms, election_ms)
        try:
            for member in members:
                cluster._spawn(member, new=True)
            cluster.wait_healthy(timeout=timeout)
        except BaseException:
            cluster.close()
            raise
        return cluster

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def endpoints(self) -> list[str]:
        return [member.client_url for member in self.members]

    def member(self, member_id: int) -> Member:
        [found] = [member for member in self.members if member.member_id == member_id]
        return found

    # processes

    def _spawn(self, member: Member, *, new: bool) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        command = [
            self.binary,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-state={'new' if new else 'existing'}",
            f"--initial-cluster-token=urban-robot-{os.getpid()}-{id(self)}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            "--logger=zap",
        ]
        self.root.mkdir(parents=True, exist_ok=True)
        with member.log.open("ab") as log:
            member.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        member.paused = False

    def stop(self, member: Member) -> None:
        """SIGTERM (etcd steps down if it leads), SIGKILL after ``STOP_TIMEOUT``; wait for the exit."""
        self._end(member, signal.SIGTERM)

    def kill(self, member: Member) -> None:
        """SIGKILL: the host died."""
        self._end(member, signal.SIGKILL)

    def restart(self, member: Member, *, timeout: float = 30.0) -> None:
        """Start a stopped member again on its data dir and ports; wait until it is healthy."""
        assert not member.running, member.name
        self._spawn(member, new=False)
        self.wait_healthy([member], timeout=timeout)

    def pause(self, member: Member) -> None:
        """SIGSTOP: the member freezes; its connections stay open and nothing answers."""
        assert member.process is not None and member.running, member.name
        member.process.send_signal(signal.SIGSTOP)
        member.paused = True

    def resume(self, member: Member) -> None:
        assert member.process is not None, member.name
        member.process.send_signal(signal.SIGCONT)
        member.paused = False

    def _end(self, member: Member, how: signal.Signals) -> None:
        process = member.process
        if process is None or process.poll() is not None:
            return
        if member.paused:
            process.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
            member.paused = False
        process.send_signal(how)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Kill every member (their data dirs stay for a look after a failure) and the HTTP client."""
        with ExitStack() as stack:
            stack.callback(self.http.close)
            for member in self.members:
                stack.callback(self.kill, member)

    # waiting on etcd

    def wait_healthy(self, members: list[Member] | None = None, *, timeout: float = 30.0) -> None:
        """Until each of ``members`` (default: all) answers ``/health`` with true: it has a leader and serves."""
        waiting = list(self.members if members is None else members)
        deadline = time.monotonic() + timeout
        while waiting:
            for member in list(waiting):
                if not member.running:
                    raise RuntimeError(f"etcd member {member.name} exited ({self._tail(member)})")
                if self._healthy(member):
                    member.member_id = int(self._status(member)["header"]["member_id"])
                    waiting.remove(member)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(member.name for member in waiting)
                raise TimeoutError(f"etcd {names} not healthy after {timeout:g} s ({self._tail(waiting[0])})")
            if waiting:
                time.sleep(POLL)

    def leader(self, *, timeout: float = 30.0) -> Member:
        """The member every serving member takes for the leader, once they agree (after an election, say)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._agreed_leader()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd members did not agree on a leader within {timeout:g} s")
            time.sleep(POLL)

    def _agreed_leader(self) -> Member | None:
        serving = [member for member in self.members if member.serving]
        seen = set()
        for member in serving:
            try:
                seen.add(int(self._status(member).get("leader", 0)))
            except (httpx.HTTPError, ValueError, KeyError):
                return None
        if len(seen) != 1:
            return None
        [leader_id] = seen
        leaders = [member for member in serving if member.member_id == leader_id and leader_id]
        return leaders[0] if leaders else None

    def _healthy(self, member: Member) -> bool:
        try:
            response = self.http.get(f"{member.client_url}/health")
            return response.status_code == 200 and response.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def _status(self, member: Member) -> dict[str, Any]:
        response = self.http.post(f"{member.client_url}/v3/maintenance/status", json={})
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def _tail(self, member: Member, lines: int = 5) -> str:
        try:
            text = member.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return f"{member.log}: " + " | ".join(text[-lines:])
