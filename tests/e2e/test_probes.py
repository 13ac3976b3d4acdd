"""A published port whose container has nothing listening does not answer, whoever asks.

With Docker's userland proxy on, docker-proxy holds the host port and accepts every connection
before it dials the container: a bare connect "succeeds" while `curl` gets a reset. With it off,
iptables forwards the port and the container's kernel refuses. Either way, `register --check
tcp`, the agent, `verify`, `deploy`'s wait and blue-green's gate must report the truth."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import IMAGE, _docker

PORTCTL = os.path.join(os.path.dirname(sys.executable), "portctl")
SLEEPER = "orchestra-api-1"  # publishes a port, listens on nothing
SERVER = "orchestra-web-1"  # busybox httpd: answers
INNER = 8005  # the container port nothing listens on


@dataclass
class Host:
    endpoint: str
    proxy: bool
    sleeper_port: int
    server_port: int


def _run_container(endpoint: str, name: str, port: int, target: int, *command: str) -> None:
    _docker(endpoint, "rm", "-f", name, check=False)
    labels = ["--label", "com.docker.compose.project=orchestra"]
    labels += ["--label", f"com.docker.compose.service={name.split('-')[1]}"]
    _docker(endpoint, "run", "-d", "--name", name, *labels, "-p", f"{port}:{target}", IMAGE, *command)


@pytest.fixture(scope="module", params=[True, False], ids=["userland-proxy", "iptables-only"])
def host(request, engine, busybox_rootfs) -> Iterator[Host]:
    """One container that publishes a port with nothing behind it, one that serves HTTP."""
    if engine is None:
        if not request.param:
            pytest.skip("PORTCTL_TEST_DOCKER_HOST is given, so the tests cannot restart its daemon")
        endpoint = os.environ["PORTCTL_TEST_DOCKER_HOST"]
    else:
        endpoint = engine.ensure(userland_proxy=request.param)
    if IMAGE not in _docker(endpoint, "images", "--format", "{{.Repository}}:{{.Tag}}"):
        _docker(endpoint, "import", str(busybox_rootfs), IMAGE)
    sleeper_port = free_port(start=24600)
    server_port = free_port(start=sleeper_port + 1)
    _run_container(endpoint, SLEEPER, sleeper_port, INNER, "/bin/busybox", "sleep", "300")
    _run_container(endpoint, SERVER, server_port, 80, "/bin/busybox", "httpd", "-f", "-p", "80")
    _wait_answering(server_port)
    yield Host(endpoint, request.param, sleeper_port, server_port)
    _docker(endpoint, "rm", "-f", SLEEPER, SERVER, check=False)


def _wait_answering(port: int) -> None:
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                return
        except OSError as e:
            if "404" in str(e):  # httpd answers (there is no index page)
                return
            subprocess.run(["sleep", "0.1"], check=False)
    raise AssertionError(f"nothing answers on {port}")


@pytest.fixture
def env(host: Host, tmp_path: Path) -> dict[str, str]:
    return _environ(host.endpoint, tmp_path)


def _environ(endpoint: str, tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PORTCTL_")}
    environ.update(
        {
            "DOCKER_HOST": endpoint,
            "PORTCTL_STORE": str(tmp_path / "store.json"),
            "PORTCTL_HOST": "probe-host",
            "PORTCTL_ENV": "production",
            "NO_COLOR": "1",
        }
    )
    return environ


def _portctl(env: dict[str, str], *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PORTCTL, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def _why_not(host: Host) -> str:
    """What the check must say about the sleeper's port."""
    target = f"tcp connect to 127.0.0.1:{host.sleeper_port}"
    if host.proxy:
        return f"{target}: docker-proxy accepted but container {SLEEPER} has nothing listening on {INNER}"
    return f"{target} failed: connection refused"


def test_a_bare_connect_is_accepted_only_through_the_proxy(host: Host) -> None:
    """The defect itself: with docker-proxy the kernel completes the connect."""
    try:
        socket.create_connection(("127.0.0.1", host.sleeper_port), timeout=2).close()
        accepted = True
    except ConnectionRefusedError:
        accepted = False
    assert accepted == host.proxy


def test_register_tcp_check_is_critical_and_says_why(host: Host, env: dict[str, str]) -> None:
    result = _portctl(env, "register", "api", "--port", host.sleeper_port, "--check", "tcp", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    assert (data["status"], data["output"]) == ("critical", _why_not(host))
    served = _portctl(env, "register", "web", "--port", host.server_port, "--check", "tcp", "--json")
    assert json.loads(served.stdout)["data"]["status"] == "passing", served.stdout


def test_verify_and_the_agent_report_it_critical(host: Host, env: dict[str, str]) -> None:
    _portctl(env, "register", "web", "--port", host.server_port, "--check", "tcp")
    _portctl(env, "register", "api", "--port", host.sleeper_port, "--check", "tcp")
    verify = _portctl(env, "verify")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert _why_not(host) in verify.stdout
    assert "1 of 2 healthy" in verify.stdout
    agent = _portctl(env, "agent", "--once", "--json")
    assert agent.returncode in (0, 1), agent.stderr
    health = _portctl(env, "health", "api", "--json")
    [instance] = json.loads(health.stdout)["data"]
    assert (instance["status"], instance["output"]) == ("critical", _why_not(host))


def test_bluegreen_refuses_a_cutover_to_a_color_that_does_not_answer(host: Host, env: dict[str, str]) -> None:
    blue = _portctl(env, "bluegreen", "deploy", "api", "--color", "blue", "--port", host.server_port)
    assert blue.returncode == 0, blue.stderr
    green = _portctl(env, "bluegreen", "deploy", "api", "--color", "green", "--port", host.sleeper_port)
    assert green.returncode == 0, green.stderr
    cutover = _portctl(env, "bluegreen", "cutover", "api", "--to", "green", "--min-healthy", "1s", "--yes")
    assert cutover.returncode == 1, cutover.stdout + cutover.stderr
    assert _why_not(host) in cutover.stderr + cutover.stdout
    status = _portctl(env, "bluegreen", "status", "api", "--json")
    assert json.loads(status.stdout)["data"]["live"] == "blue"


def test_bluegreen_refuses_a_rollback_to_a_color_that_does_not_answer(
    host: Host, env: dict[str, str]
) -> None:
    blue = _portctl(env, "bluegreen", "deploy", "api", "--color", "blue", "--port", host.sleeper_port)
    assert blue.returncode == 0, blue.stderr  # the first color goes live at once
    _portctl(env, "bluegreen", "deploy", "api", "--color", "green", "--port", host.server_port)
    cutover = _portctl(
        env, "bluegreen", "cutover", "api", "--to", "green", "--min-healthy", "1s", "--drain", "0s", "--yes"
    )
    assert cutover.returncode == 0, cutover.stdout + cutover.stderr
    rollback = _portctl(env, "bluegreen", "rollback", "api", "--drain", "0s", "--yes")
    assert rollback.returncode == 1, rollback.stdout + rollback.stderr
    assert "rollback of api to blue refused" in rollback.stderr
    assert _why_not(host) in rollback.stderr + rollback.stdout


def _stack(directory: Path, name: str, services: dict[str, tuple[str, int, str]]) -> Path:
    """A compose.yaml: service -> (host port as written, container port, command)."""
    lines = [f"name: {name}", "services:"]
    for svc, (published, target, command) in services.items():
        lines += [f"  {svc}:", f"    image: {IMAGE}", f"    command: {json.dumps(shlex.split(command))}"]
        lines += [f'    ports: ["{published}:{target}"]']
    path = directory / "compose.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _down(compose_bin: list[str], project: str, env: dict[str, str], directory: Path) -> None:
    subprocess.run(
        [*compose_bin, "-p", project, "down", "-t", "0"],
        env=env,
        cwd=directory,
        capture_output=True,
        check=False,
    )


def test_deploy_wait_reports_the_port_whose_container_listens_on_nothing(
    host: Host, env: dict[str, str], tmp_path: Path, compose_bin: list[str]
) -> None:
    port = free_port(start=24700)
    _stack(tmp_path, "waitcheck", {"api": (str(port), INNER, "/bin/busybox sleep 300")})
    try:
        result = _portctl(env, "deploy", "--wait", "2s", "--json", cwd=tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        [probe] = json.loads(result.stdout)["data"]["probes"]
        assert probe["answered"] is False
        if host.proxy:
            assert probe["detail"] == (
                f"tcp connect to 127.0.0.1:{port}: docker-proxy accepted but container "
                f"waitcheck-api-1 has nothing listening on {INNER}"
            )
        else:
            assert probe["detail"] == f"tcp connect to 127.0.0.1:{port} failed: connection refused"
        human = _portctl(env, "deploy", "--wait", "0s", cwd=tmp_path)
        assert human.returncode == 1
        assert "NO ANSWER" in human.stdout
        assert "\x1b" not in human.stderr  # no progress animation when stderr is not a terminal
    finally:
        _down(compose_bin, "waitcheck", env, tmp_path)


def test_deploy_prints_the_command_that_keeps_the_moved_ports(
    docker_host: str, busybox_image: str, tmp_path: Path, compose_bin: list[str]
) -> None:
    """Found without -f, as Compose finds it; the printed command, run again from a clean
    shell, changes nothing (the override and .env.ports are in it)."""
    env = _environ(docker_host, tmp_path)
    fixed, variable = free_port(start=24800), free_port(start=24900)
    holders = [socket.create_server(("0.0.0.0", p)) for p in (fixed, variable)]
    serve = "/bin/busybox httpd -f -p 80"
    _stack(
        tmp_path, "reuse", {"one": (str(fixed), 80, serve), "two": (f"${{TWO_PORT:-{variable}}}", 80, serve)}
    )
    try:
        result = _portctl(env, "deploy", "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        data = json.loads(result.stdout)["data"]
        moved = {a["service"]: a["port"] for a in data["allocations"]}
        assert moved["one"] != fixed
        assert moved["two"] != variable
        command = shlex.split(data["compose_command"])
        assert command[-2:] == ["up", "-d"]
        assert command[command.index("-f") : command.index("-f") + 2] == ["-f", "compose.yaml"]
        assert "docker-compose.override.yml" in command
        assert command[command.index("--env-file") + 1] == ".env.ports"
        human = _portctl(env, "deploy", cwd=tmp_path)
        assert f"ran: {data['compose_command']}" in human.stdout
        ids = _docker(docker_host, "ps", "-q", "--filter", "label=com.docker.compose.project=reuse").split()
        clean = {k: v for k, v in env.items() if k != "TWO_PORT"}
        again = subprocess.run(command, cwd=tmp_path, env=clean, capture_output=True, text=True, check=False)
        assert again.returncode == 0, again.stderr
        assert (
            _docker(docker_host, "ps", "-q", "--filter", "label=com.docker.compose.project=reuse").split()
            == ids
        )
        for service in ("one", "two"):
            shown = _docker(docker_host, "port", f"reuse-{service}-1", "80/tcp")
            assert f":{moved[service]}" in shown
    finally:
        for s in holders:
            s.close()
        _down(compose_bin, "reuse", env, tmp_path)


def test_deploy_shows_its_progress_on_a_terminal(
    docker_host: str, busybox_image: str, tmp_path: Path, compose_bin: list[str]
) -> None:
    """stderr on a pseudo-terminal: Compose's lines and the ports being waited for are shown,
    without color under NO_COLOR; stdout keeps the plain report."""
    import pty

    env = _environ(docker_host, tmp_path)
    port = free_port(start=24750)
    _stack(tmp_path, "shown", {"api": (str(port), INNER, "/bin/busybox sleep 300")})
    main, secondary = pty.openpty()
    try:
        child = subprocess.Popen(
            [PORTCTL, "deploy", "--wait", "2s"],
            cwd=tmp_path,
            env={**env, "TERM": "xterm-256color", "COLUMNS": "120"},
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
        )
        os.close(secondary)
        shown = _read_all(main)
        stdout, _ = child.communicate(timeout=300)
    finally:
        os.close(main)
        _down(compose_bin, "shown", env, tmp_path)
    assert child.returncode == 1
    assert "NO ANSWER" in stdout
    assert "compose:" in shown
    assert f"waiting for api on {port}" in shown
    assert "\x1b[3" not in shown  # NO_COLOR: no foreground colors


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")
