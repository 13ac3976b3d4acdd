"""The plan's situation with real Docker: an older compose project and a stray process hold
standard ports; `portctl check` names every holder, `portctl deploy` brings the new stack up
on conflict-free ports with every container answering, `check` is then clean, and a second
`deploy` changes nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

BIN = os.path.dirname(sys.executable)
PORTCTL = os.path.join(BIN, "portctl")

# The older project holds four standard ports, a stray Python process a fifth.
OLD_PROJECT = "orchestra-main-2"
OLD = {"db": 5432, "redis": 6379, "grafana": 3001, "prometheus": 9090}
STRAY = 8080
# The new stack: service -> (host port written in the file, container port).
NEW = {
    "postgres": ("5432", 5432),
    "redis": ("${REDIS_PORT:-6379}", 6379),
    "weaviate": ("8080", 8080),
    "api": ("8000", 8000),
    "admin_ui": ("3000", 3000),
    "grafana": ("3001", 3001),
    "prometheus": ("9090", 9090),
}
EXPECTED = {
    "postgres": 5433,
    "redis": 6380,
    "weaviate": 8081,
    "api": 8000,
    "admin_ui": 3000,
    "grafana": 3003,
    "prometheus": 9091,
}


def _free(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _service(image: str, name: str, host: str, target: int) -> str:
    """A container that answers HTTP on ``target`` with its own service name."""
    serve = f"mkdir -p /w && echo {name} > /w/index.html && exec /bin/busybox httpd -f -p {target} -h /w"
    return textwrap.dedent(f"""\
        image: {image}
        command: ["/bin/busybox", "sh", "-c", "{serve}"]
        ports:
          - "{host}:{target}"
    """)


def _compose(image: str, services: dict[str, tuple[str, int]], name: str) -> str:
    body = "".join(
        f"  {svc}:\n" + textwrap.indent(_service(image, svc, host, target), "    ")
        for svc, (host, target) in services.items()
    )
    return f"name: {name}\nservices:\n{body}"


@pytest.fixture
def plan_host(tmp_path, docker, docker_host, busybox_image, compose_bin):
    """Containers of an older compose project on four standard ports, a stray process on 8080."""
    needed = [*OLD.values(), STRAY, *EXPECTED.values()]
    busy = [p for p in needed if not _free(p)]
    if busy:
        pytest.skip(f"ports {busy} are already in use on this machine; the plan's ports must be free")
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old_file = old_dir / "docker-compose.yml"
    old_file.write_text(_compose(busybox_image, {s: (str(p), p) for s, p in OLD.items()}, OLD_PROJECT))
    env = {**os.environ, "DOCKER_HOST": docker_host}
    subprocess.run([*compose_bin, "-f", str(old_file), "up", "-d"], check=True, env=env, capture_output=True)
    stray = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(STRAY), "--bind", "0.0.0.0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(STRAY)
    new_dir = tmp_path / "app"
    new_dir.mkdir()
    base = new_dir / "docker-compose.production.yml"
    base.write_text(_compose(busybox_image, NEW, "orchestra"))
    env.update(
        {
            "PORTCTL_STORE": str(tmp_path / "store.json"),
            "PORTCTL_HOST": "plan-host",
            "PATH": os.pathsep.join([BIN, os.environ.get("PATH", "")]),
        }
    )
    env.pop("PORTCTL_CONFIG", None)
    yield {"env": env, "dir": new_dir, "base": base, "stray_pid": stray.pid, "old_file": old_file}
    stray.terminate()
    stray.wait()
    subprocess.run(
        [*compose_bin, "-f", str(old_file), "down", "-t", "0"], env=env, capture_output=True, check=False
    )
    subprocess.run(
        [*compose_bin, "-p", "orchestra", "-f", str(base), "down", "-t", "0"],
        env=env,
        capture_output=True,
        check=False,
        cwd=new_dir,
    )


def _wait_listening(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            subprocess.run(["sleep", "0.1"], check=False)
    raise AssertionError(f"nothing listens on {port}")


def _portctl(plan, *args):
    return subprocess.run(
        [PORTCTL, *args],
        capture_output=True,
        text=True,
        env=plan["env"],
        cwd=plan["dir"],
        timeout=300,
        check=False,
    )


def _json(result):
    return json.loads(result.stdout)["data"]


def test_check_names_every_holder(plan_host):
    result = _portctl(plan_host, "check", "-f", str(plan_host["base"]), "--json")
    assert result.returncode == 1, result.stderr
    findings = {f["service"]: f for f in _json(result)["findings"]}
    for new_service, old_service in (
        ("postgres", "db"),
        ("redis", "redis"),
        ("grafana", "grafana"),
        ("prometheus", "prometheus"),
    ):
        [holder] = findings[new_service]["conflicts"]
        assert holder["kind"] == "container"
        assert holder["container"]["name"] == f"{OLD_PROJECT}-{old_service}-1"
        assert (holder["container"]["project"], holder["container"]["service"]) == (OLD_PROJECT, old_service)
        assert holder["container"]["image"] == "portctl-busybox:test"
    [stray] = findings["weaviate"]["conflicts"]
    assert stray["kind"] == "process"
    assert stray["process"]["pid"] == plan_host["stray_pid"]
    assert "http.server 8080" in stray["process"]["cmdline"]
    assert findings["api"]["conflicts"] == []
    assert findings["admin_ui"]["conflicts"] == []
    human = _portctl(plan_host, "check", "-f", str(plan_host["base"]))
    assert f"container {OLD_PROJECT}-db-1 (compose {OLD_PROJECT}/db" in human.stdout
    assert "5 conflict(s) in 7 port(s)" in human.stdout


def test_who_names_the_container_and_the_process(plan_host):
    result = _portctl(plan_host, "who", "5432")
    assert result.returncode == 1
    assert (
        f"container {OLD_PROJECT}-db-1 (compose {OLD_PROJECT}/db, image portctl-busybox:test)"
        in result.stdout
    )
    assert "via docker-proxy" in result.stdout
    result = _portctl(plan_host, "who", str(STRAY))
    comm = Path(sys.executable).name[:15]  # the kernel's process name: the executable's, cut at 15
    assert f"process {comm} pid {plan_host['stray_pid']} user root (" in result.stdout
    assert "-m http.server 8080" in result.stdout
    free = _portctl(plan_host, "who", "8000")
    assert (free.returncode, free.stdout.strip()) == (0, "8000/tcp is free")


def test_deploy_moves_the_conflicts_and_every_port_answers(plan_host, docker):
    first = _portctl(plan_host, "deploy", "-f", str(plan_host["base"]), "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    data = _json(first)
    ports = {a["service"]: a["port"] for a in data["allocations"]}
    assert ports == EXPECTED
    assert all(p["answered"] for p in data["probes"])
    for service, port in EXPECTED.items():  # each container of the new stack serves on its new port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.read().decode().strip() == service
    env_file = plan_host["dir"] / ".env.ports"
    assert "REDIS_PORT=6380" in env_file.read_text()
    assert "POSTGRES_PORT=5433" in env_file.read_text()
    override = (plan_host["dir"] / "docker-compose.override.yml").read_text()
    assert "ports: !override" in override
    assert '"5433:5432"' in override
    assert "redis" not in override  # moved through its ${REDIS_PORT} variable, no override needed

    clean = _portctl(plan_host, "check", "-f", str(plan_host["base"]))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 conflict(s) in 7 port(s)" in clean.stdout

    ids = docker("ps", "-q", "--filter", "label=com.docker.compose.project=orchestra").split()
    stamps = {p: p.stat().st_mtime_ns for p in plan_host["dir"].iterdir()}
    second = _portctl(plan_host, "deploy", "-f", str(plan_host["base"]), "--json")
    assert second.returncode == 0, second.stdout + second.stderr
    again = _json(second)
    assert not any(a["changed"] for a in again["allocations"])
    assert (again["env_file"]["changed"], again["override_file"]["changed"]) == (False, False)
    assert {p: p.stat().st_mtime_ns for p in plan_host["dir"].iterdir()} == stamps
    assert docker("ps", "-q", "--filter", "label=com.docker.compose.project=orchestra").split() == ids


def test_stopped_container_is_a_warning_not_a_conflict(plan_host, docker):
    """`check` warns; `who` exits 1, as the port is not free to take (allocate refuses it)."""
    docker("stop", "-t", "0", f"{OLD_PROJECT}-grafana-1")
    result = _portctl(plan_host, "who", "3001")
    assert result.returncode == 1
    assert f"container {OLD_PROJECT}-grafana-1" in result.stdout
    assert "publishes it again when started" in result.stdout
    check = _portctl(plan_host, "check", "-f", str(plan_host["base"]), "--service", "grafana", "--json")
    [finding] = _json(check)["findings"]
    assert finding["conflicts"] == []
    assert finding["warnings"][0]["container"]["name"] == f"{OLD_PROJECT}-grafana-1"
