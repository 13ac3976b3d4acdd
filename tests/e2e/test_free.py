"""The plan's option 2 with real Docker: an older compose stack's container holds the port the
new one needs. `portctl free PORT --yes` stops that container through the Engine API (never
its docker-proxy), names its compose project and service, and the port binds afterwards; the
stopped container then holds nothing and is left alone; with Docker out of reach, a proxied
port is not touched at all."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cli.conftest import free_port, port_is_free

BIN = os.path.dirname(sys.executable)
PORTCTL = os.path.join(BIN, "portctl")
PROJECT = "free-old"
CONTAINER = f"{PROJECT}-api-1"


def _compose(image: str, port: int) -> str:
    serve = "mkdir -p /w && echo old > /w/index.html && exec /bin/busybox httpd -f -p 80 -h /w"
    return textwrap.dedent(f"""\
        name: {PROJECT}
        services:
          api:
            image: {image}
            command: ["/bin/busybox", "sh", "-c", "{serve}"]
            ports:
              - "{port}:80"
    """)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture
def old_stack(tmp_path: Path, docker, docker_host, busybox_image, compose_bin):
    """The old stack's api container publishing a free port; its environment for portctl."""
    port = free_port(range(7600, 7700))
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(_compose(busybox_image, port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCTL_")}
    env.update(
        {
            "DOCKER_HOST": docker_host,
            "PORTCTL_STORE": str(tmp_path / "store.json"),
            "PORTCTL_HOST": "free-host",
            "NO_COLOR": "1",
        }
    )
    up = [*compose_bin, "-f", str(compose_file), "up", "-d", "--wait"]
    subprocess.run(up, check=True, env=env, capture_output=True, timeout=300)
    assert not port_is_free(port)
    yield {"port": port, "env": env, "dir": tmp_path}
    down = [*compose_bin, "-f", str(compose_file), "down", "-t", "0"]
    subprocess.run(down, env=env, capture_output=True, check=False, timeout=300)


def _portctl(stack, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PORTCTL, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=env or stack["env"],
        cwd=stack["dir"],
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def _proxies(port: int) -> list[str]:
    """The docker-proxy processes forwarding ``port`` (other tests' proxies may come and go)."""
    found = subprocess.run(["pgrep", "-a", "-x", "docker-proxy"], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if f"-host-port {port} " in f"{line} "]


def _state(docker) -> str:
    return docker("inspect", "-f", "{{.State.Status}}", CONTAINER).strip()


def test_free_stops_the_old_container_through_the_engine_api(old_stack, docker) -> None:
    port = old_stack["port"]
    if os.geteuid() == 0:
        assert _proxies(port) != []  # the port is held through docker-proxy, the plan's case
    result = _portctl(old_stack, "free", port, "--yes", "--grace", "1s")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        f"stopped container {CONTAINER} (compose {PROJECT}/api) through the Docker Engine API: "
    )
    assert lines[-1] == f"{port}/tcp is free now (bind test)"
    assert _state(docker) == "exited"
    assert port_is_free(port)
    assert not _answers(port)
    assert _proxies(port) == []  # they ended with their container


def test_the_json_report_names_the_container_and_its_compose_service(old_stack, docker) -> None:
    port = old_stack["port"]
    result = _portctl(old_stack, "free", port, "--yes", "--grace", "1s", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    [stopped] = data["stopped"]
    assert stopped["action"] == "stop container"
    assert stopped["signal"] in ("SIGTERM", "SIGKILL")  # busybox httpd as PID 1 may ignore SIGTERM
    container = stopped["container"]
    assert (container["name"], container["project"], container["service"]) == (CONTAINER, PROJECT, "api")
    assert container["id"] == docker("inspect", "-f", "{{.Id}}", CONTAINER).strip()
    assert data["free"] is True
    assert data["proof"] == "bind test"


def test_a_stopped_container_is_left_alone(old_stack, docker) -> None:
    port = old_stack["port"]
    docker("stop", "-t", "0", CONTAINER)
    result = _portctl(old_stack, "free", port, "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"container {CONTAINER} (compose {PROJECT}/api) is exited and holds nothing now; "
        f"it takes the port back when started (docker rm {CONTAINER})",
        f"{port}/tcp is free now (bind test)",
    ]
    assert _state(docker) == "exited"


def test_dry_run_stops_nothing(old_stack, docker) -> None:
    port = old_stack["port"]
    result = _portctl(old_stack, "free", port, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert (
        f"would stop container {CONTAINER} (compose {PROJECT}/api) through the Docker Engine API"
        in result.stdout
    )
    assert _state(docker) == "running"
    assert _answers(port)


def test_a_proxied_port_is_not_touched_when_docker_is_out_of_reach(old_stack, docker, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root sees that docker-proxy holds the port")
    port = old_stack["port"]
    gone = {**old_stack["env"], "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = _portctl(old_stack, "free", port, "--yes", env=gone)
    assert result.returncode == 3, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("portctl: error: ")]
    [error] = errors
    assert error.startswith(
        f"portctl: error: Docker at unix://{tmp_path}/no-docker.sock: Docker is not running there"
    )
    assert "docker-proxy pid " in error
    assert error.endswith(
        f"holds {port}/tcp for a container, which only Docker can stop; nothing was stopped"
    )
    assert _state(docker) == "running"
    assert _answers(port)
