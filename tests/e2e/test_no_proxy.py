"""With Docker's userland proxy off, a published port is forwarded by iptables rules alone; no
docker-proxy runs (dockerd may keep a placeholder listener). portctl still names the container.
A stopped container's ports have no listener at all, yet come back when it starts: allocation
must refuse them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import IMAGE, _docker

PORTCTL = os.path.join(os.path.dirname(sys.executable), "portctl")


@pytest.fixture
def published(docker_host_no_proxy, busybox_rootfs, tmp_path):
    endpoint = docker_host_no_proxy
    if IMAGE not in _docker(endpoint, "images", "--format", "{{.Repository}}:{{.Tag}}"):
        _docker(endpoint, "import", str(busybox_rootfs), IMAGE)
    port = free_port(start=24500)
    _docker(
        endpoint,
        "run",
        "-d",
        "--name",
        "iptables-only",
        "--label",
        "com.docker.compose.project=legacy",
        "--label",
        "com.docker.compose.service=cache",
        "-p",
        f"{port}:80",
        IMAGE,
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "80",
    )
    env = {
        **os.environ,
        "DOCKER_HOST": endpoint,
        "PORTCTL_STORE": str(tmp_path / "store.json"),
        "PORTCTL_HOST": "no-proxy-host",
    }
    yield port, env
    _docker(endpoint, "rm", "-f", "iptables-only", check=False)


def _portctl(env, *args):
    return subprocess.run([PORTCTL, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_who_names_the_container_when_no_docker_proxy_runs(published):
    port, env = published
    proxies = subprocess.run(
        ["pgrep", "-af", f"docker-proxy.*-host-port {port}"], capture_output=True, text=True, check=False
    )
    assert proxies.stdout.strip() == ""
    result = _portctl(env, "who", str(port), "--json")
    assert result.returncode == 1, result.stderr
    [holder] = json.loads(result.stdout)["data"]["holders"]
    assert holder["kind"] == "container"
    assert holder["container"]["name"] == "iptables-only"
    assert (holder["container"]["project"], holder["container"]["service"]) == ("legacy", "cache")
    assert holder.get("process", {}).get("name", "dockerd") == "dockerd"


def test_allocation_refuses_the_port_of_a_stopped_container(published, docker_host_no_proxy):
    port, env = published
    _docker(docker_host_no_proxy, "stop", "-t", "0", "iptables-only")
    listeners = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False
    )
    assert listeners.stdout.strip() == ""  # nothing holds it now: a bind test would pass
    result = _portctl(env, "allocate", "--service", "web", "--port", str(port))
    assert result.returncode == 1
    assert f"port {port}/tcp is not available: published by container iptables-only" in result.stderr
    assert "publishes it again when started" in result.stderr
    assert not os.path.exists(env["PORTCTL_STORE"])
