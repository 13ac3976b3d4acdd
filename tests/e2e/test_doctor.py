"""``portctl doctor`` with the real Docker engine: a foreign container on an allocated port is
named with its compose project and service, the stack's own old container is told apart from
it, and a host service on 127.0.0.1 only is refused to containers at the bridge gateway.

The containers carry the labels Docker Compose gives its own (project, service), so Docker
reports them exactly as it reports a compose stack's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import free_port

PORTCTL = os.path.join(os.path.dirname(sys.executable), "portctl")
APP = "doctor-app"
LEGACY = "doctor-legacy"


@pytest.fixture
def containers(docker, busybox_image) -> Iterator:
    """Start a labelled busybox container publishing a port: ``start(name, project, service, port)``."""
    started: list[str] = []

    def start(name: str, project: str, service: str, port: int) -> None:
        docker(
            "run", "-d", "--name", name,
            "--label", f"com.docker.compose.project={project}",
            "--label", f"com.docker.compose.service={service}",
            "-p", f"{port}:80", busybox_image,
            "/bin/busybox", "httpd", "-f", "-p", "80",
        )  # fmt: skip
        started.append(name)

    yield start
    for name in started:
        docker("rm", "-f", name, check=False)


@pytest.fixture
def portctl(tmp_path, docker_host):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCTL_")}
    env.update(
        {
            "DOCKER_HOST": docker_host,
            "PORTCTL_STORE": str(tmp_path / "store.json"),
            "PORTCTL_HOST": "doctor-host",
        }
    )

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PORTCTL, *map(str, args)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def _compose(tmp_path, services: dict[str, int]) -> str:
    body = "".join(f"  {s}:\n    image: busybox\n    ports: ['{p}:80']\n" for s, p in services.items())
    (tmp_path / "compose.yml").write_text(f"name: {APP}\nservices:\n{body}")
    return "compose.yml"


def _verdicts(result, check: str) -> list[dict]:
    data = json.loads(result.stdout)["data"]
    return [v for v in data["verdicts"] if v["check"] == check]


def test_a_foreign_container_is_named_with_its_compose_project_and_service(portctl, containers, tmp_path):
    port = free_port(start=27400)
    containers(f"{LEGACY}-db-1", LEGACY, "db", port)
    result = portctl("doctor", "--json", "-f", _compose(tmp_path, {"db": port}))
    assert result.returncode == 1, result.stdout
    [verdict] = [v for v in _verdicts(result, "in use") if v["status"] == "fail"]
    assert verdict["subject"] == f"db {port}/tcp"
    assert verdict["finding"].startswith(
        f"held by a foreign container of compose project {LEGACY}/db: container {LEGACY}-db-1 (compose {LEGACY}/db"
    )
    assert verdict["details"]["owner"] == "foreign container"
    assert verdict["fix"].startswith(f"docker stop {LEGACY}-db-1 (or docker compose -p {LEGACY} down)")


def test_the_stacks_own_old_container_is_told_from_a_foreign_one(portctl, containers, tmp_path):
    own_port, foreign_port = free_port(start=27450), free_port(start=27500)
    containers(f"{APP}-worker-1", APP, "worker", own_port)  # the stack's own, of a service since renamed
    containers(f"{LEGACY}-web-1", LEGACY, "web", foreign_port)
    result = portctl("doctor", "--json", "-f", _compose(tmp_path, {"web": own_port, "api": foreign_port}))
    assert result.returncode == 1
    fails = {v["service"]: v for v in _verdicts(result, "in use") if v["status"] == "fail"}
    assert fails["web"]["details"]["owner"] == "own stack"
    assert fails["web"]["finding"].startswith(
        f"held by the stack's own service worker (compose project {APP})"
    )
    assert fails["api"]["details"]["owner"] == "foreign container"
    assert fails["api"]["finding"].startswith(f"held by a foreign container of compose project {LEGACY}/web")
    table = portctl("doctor", "-f", "compose.yml")
    assert f"the stack's own service worker (compose project {APP})" in table.stdout


def test_the_services_own_container_is_ok_and_answers(portctl, containers, tmp_path):
    port = free_port(start=27550)
    containers(f"{APP}-web-1", APP, "web", port)
    result = portctl("doctor", "--json", "-f", _compose(tmp_path, {"web": port}), "web")
    [in_use] = _verdicts(result, "in use")
    assert in_use["status"] == "ok"
    assert in_use["finding"].startswith(f"held by the service itself: container {APP}-web-1")
    [refused] = _verdicts(result, "refused")
    assert refused["status"] == "ok"
    assert f"(container {APP}-web-1)" in refused["finding"]


def test_loopback_only_while_containers_run_is_refused_at_the_gateway(portctl, containers, tmp_path):
    port, other = free_port(start=27600), free_port(start=27650)
    containers(f"{APP}-web-1", APP, "web", other)  # a running container: a client of the host
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert portctl("allocate", "--service", "api", "--port", port).returncode != 0  # held: refused
        (tmp_path / "ports.json").write_text(_export(port))
        assert portctl("import", "ports.json").returncode == 0
        _register_this_process(tmp_path / "store.json", port)
        result = portctl("doctor", "--json", "api")
    [refused] = _verdicts(result, "refused")
    assert refused["status"] == "fail", refused
    assert "listens on 127.0.0.1 only, while 1 running container(s) are its clients" in refused["finding"]
    assert "connection refused" in refused["finding"]
    assert refused["fix"].startswith("bind 0.0.0.0")
    assert result.returncode == 1


def _register_this_process(store_path, port: int) -> None:
    """This test process is the registered api (its socket is the service's own)."""
    from portctl.backends.file import JsonFileStore
    from portctl.config.settings import Settings
    from portctl.records import CheckSpec
    from portctl.registry.entries import Registry

    with JsonFileStore(str(store_path)) as store:
        Registry(store, Settings(host="doctor-host")).register(
            "api", port=port, check=CheckSpec("none"), pid=os.getpid()
        )


def _export(port: int) -> str:
    return json.dumps(
        {
            "format": "portctl-ports",
            "schema": 1,
            "generated_at": "2026-11-27T12:00:00Z",
            "allocations": [
                {
                    "service": "api",
                    "environment": "production",
                    "host": "doctor-host",
                    "port": port,
                    "protocol": "tcp",
                    "type": "custom",
                    "allocated_at": "2026-11-27T11:58:02Z",
                }
            ],
        }
    )


def test_doctor_finds_nothing_listening_on_the_container_port(
    tmp_path, docker_host, busybox_image, compose_bin
):
    """A stack whose mapping names container port 8080 while its server listens on 80: the
    host port is held (docker-proxy), yet every connection fails; doctor reads the container's
    own socket table and says so, with the mapping to write."""
    port = free_port(start=27800)
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "name: doctor-mapped\nservices:\n  web:\n"
        f"    image: {busybox_image}\n"
        '    command: ["/bin/busybox", "httpd", "-f", "-p", "80"]\n'
        f'    ports: ["{port}:8080"]\n'
    )
    env = {
        **os.environ,
        "DOCKER_HOST": docker_host,
        "PORTCTL_STORE": str(tmp_path / "store.json"),
        "PORTCTL_HOST": "doctor-host",
    }
    up = [*compose_bin, "-f", str(compose), "up", "-d"]
    subprocess.run(up, env=env, check=True, capture_output=True, cwd=tmp_path)
    try:
        done = subprocess.run(
            [PORTCTL, "doctor", "-f", str(compose), "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=False,
        )
        assert done.returncode == 1, done.stderr
        verdicts = json.loads(done.stdout)["data"]["verdicts"]
        (inside,) = [v for v in verdicts if v["check"] == "container port"]
        assert inside["status"] == "fail"
        assert (
            f"publishes {port} -> container port 8080, but nothing listens on 8080 inside it (it listens on 80)"
            in inside["finding"]
        )
        assert f"{port}:80" in inside["fix"]
    finally:
        down = [*compose_bin, "-f", str(compose), "down", "-t", "0"]
        subprocess.run(down, env=env, check=False, capture_output=True, cwd=tmp_path)
