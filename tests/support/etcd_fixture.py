"""Real etcd servers for the tests: one shared member, and three-member clusters on loopback.

``etcd_endpoint`` (session) starts one ``etcd`` (Debian's ``etcd-server``) on free loopback
ports with its data under a temp dir; ``etcd_url`` gives each test its own key prefix on it, so
tests never see each other's keys. ``etcd_cluster`` starts three members for fault tests. Without
the ``etcd`` binary the tests that need it skip and say so; ``scripts/test`` installs it as root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ETCD = shutil.which("etcd")
SKIP_REASON = "etcd is not installed (Debian package etcd-server; scripts/test installs it as root)"


_handed_out: set[int] = set()


def _free_port() -> int:
    """A port free now and never handed out before in this run: the kernel may give the same
    free port to two binds in a row, and a member's client and peer ports must differ."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class EtcdMember:
    name: str
    data_dir: Path
    client_port: int = field(default_factory=_free_port)
    peer_port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, state: str = "new") -> None:
        assert ETCD is not None
        log = open(self.data_dir.with_suffix(".log"), "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [
                ETCD,
                "--name",
                self.name,
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                f"http://{self.endpoint}",
                "--advertise-client-urls",
                f"http://{self.endpoint}",
                "--listen-peer-urls",
                self.peer_url,
                "--initial-advertise-peer-urls",
                self.peer_url,
                "--initial-cluster",
                initial_cluster,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                f"portctl-test-{self.data_dir.parent.name}",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                *self.extra,
            ],
            stdout=log,
            stderr=log,
        )
        log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.process = None

    def status(self) -> dict[str, object] | None:
        try:
            return _post(self.endpoint, "/v3/maintenance/status", {}, timeout=1)
        except OSError:
            return None


def _post(endpoint: str, path: str, body: dict[str, object], timeout: float = 5) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://{endpoint}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback http
        result: dict[str, object] = json.loads(response.read())
        return result


def wait_ready(member: EtcdMember, deadline: float) -> None:
    while time.monotonic() < deadline:
        if member.process is not None and member.process.poll() is not None:
            log = member.data_dir.with_suffix(".log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"etcd {member.name} exited: {log}")
        status = member.status()
        if status is not None and status.get("leader") not in (None, "0"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"etcd {member.name} did not become ready")


@dataclass
class EtcdCluster:
    members: list[EtcdMember]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def url(self, prefix: str = "") -> str:
        return f"etcd://{self.endpoints}/{prefix or 't-' + uuid.uuid4().hex[:12]}"

    def start(self) -> None:
        try:
            for member in self.members:
                member.start(self.initial_cluster)
            deadline = time.monotonic() + 60
            for member in self.members:
                wait_ready(member, deadline)
        except BaseException:
            self.stop()  # a cluster that did not come up leaves no member running
            raise

    def leader(self) -> EtcdMember:
        for _ in range(200):
            for member in self.members:
                status = member.status()
                if status and status.get("leader") == status.get("header", {}).get("member_id"):  # type: ignore[union-attr]
                    return member
            time.sleep(0.05)
        raise RuntimeError("the cluster has no leader")

    def restart(self, member: EtcdMember) -> None:
        member.start(self.initial_cluster, state="existing")
        wait_ready(member, time.monotonic() + 60)

    def stop(self) -> None:
        for member in self.members:
            member.kill()


def start_single(base: Path, *extra: str) -> EtcdMember:
    base.mkdir(parents=True, exist_ok=True)
    member = EtcdMember("solo", base / "solo", extra=extra)
    member.start(f"solo={member.peer_url}")
    wait_ready(member, time.monotonic() + 60)
    return member


def start_cluster(base: Path, size: int = 3) -> EtcdCluster:
    base.mkdir(parents=True, exist_ok=True)
    cluster = EtcdCluster([EtcdMember(f"m{i}", base / f"m{i}") for i in range(size)])
    cluster.start()
    return cluster


def etcdctl(endpoint: str, *args: str, env: dict[str, str] | None = None) -> str:
    tool = shutil.which("etcdctl")
    if tool is None:
        pytest.skip("etcdctl is not installed (Debian package etcd-client)")
    done = subprocess.run(
        [tool, "--endpoints", endpoint, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ETCDCTL_API": "3", **(env or {})},
        timeout=30,
    )
    return done.stdout


@pytest.fixture(scope="session")
def etcd_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """``127.0.0.1:PORT`` of one real etcd shared by the whole test session."""
    if ETCD is None:
        pytest.skip(SKIP_REASON)
    member = start_single(tmp_path_factory.mktemp("etcd"))
    yield member.endpoint
    member.kill(signal.SIGTERM)


@pytest.fixture
def etcd_url(etcd_endpoint: str) -> str:
    """An ``etcd://`` store URL with a key prefix of its own, on the shared etcd."""
    return f"etcd://{etcd_endpoint}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def etcd_store(etcd_url: str):
    """An opened store on ``etcd_url``, closed after the test."""
    from portctl.backends import open_store

    with open_store(etcd_url) as store:
        yield store


@pytest.fixture
def own_etcd(tmp_path: Path):
    """One etcd member of this test's own, which the test may stop or pause."""
    if ETCD is None:
        pytest.skip(SKIP_REASON)
    member = start_single(tmp_path / "own-etcd")
    yield member
    if member.process is not None:
        member.process.send_signal(signal.SIGCONT)  # a paused member must be able to die
    member.kill()


@pytest.fixture
def etcd_cluster(tmp_path: Path):
    """Three etcd members on loopback, for leader-kill tests; stopped after the test."""
    if ETCD is None:
        pytest.skip(SKIP_REASON)
    cluster = start_cluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()
