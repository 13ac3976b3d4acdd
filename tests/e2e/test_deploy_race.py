"""A port taken between deploy's allocation and Compose's start, for real: a foreign container
started the moment deploy hands over to Compose (its ``up`` progress step), or a container of
the stack itself that binds a port on the host network before the service publishing it
starts. Deploy moves that service alone and starts the stack once more; a second failure is
an error of one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from portctl.compose.deploy import DeployFailed, DeployStep, deploy
from portctl.compose.project import load_compose
from portctl.config.settings import Settings
from portctl.ports.allocator import PortAllocator
from tests.conftest import free_port

PORTCTL = os.path.join(os.path.dirname(sys.executable), "portctl")


def _served(image: str, text: str, port: int, extra: str = "") -> str:
    """A busybox httpd answering ``text`` on container port 80, published on ``port``."""
    return textwrap.dedent(f"""\
        image: {image}
        command: ["/bin/sh", "-c", "echo {text} > /www/index.html && exec /bin/busybox httpd -f -p 80 -h /www"]
        ports:
          - "{port}:80"
    """) + textwrap.dedent(extra)


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return response.read().decode().strip()


@pytest.fixture
def stack(tmp_path, docker_host, busybox_image, compose_bin, monkeypatch, request):
    """A compose project of two services, web and side, on free ports; taken down afterwards."""
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    web, side = free_port(start=27100), free_port(start=27200)
    name = f"race-{request.node.name[5:30].replace('_', '-').strip('-')}"
    folder = tmp_path / "app"
    folder.mkdir()
    file = folder / "compose.yml"
    services = {"web": _served(busybox_image, "web", web), "side": _served(busybox_image, "side", side)}
    body = "".join(f"  {s}:\n" + textwrap.indent(text, "    ") for s, text in services.items())
    file.write_text(f"name: {name}\nservices:\n{body}")
    yield {"file": file, "folder": folder, "name": name, "web": web, "side": side}
    subprocess.run(
        [*compose_bin, "-p", name, "-f", str(file), "down", "-t", "0"],
        capture_output=True,
        check=False,
        cwd=folder,
    )


@pytest.fixture
def foreign(docker, busybox_image):
    """Start foreign containers publishing a port; each is removed at the end."""
    started: list[str] = []

    def run(port: int) -> str:
        name = f"race-foreign-{port}"
        serve = "echo foreign > /www/index.html && exec /bin/busybox httpd -f -p 80 -h /www"
        docker("run", "-d", "--name", name, "-p", f"{port}:80", busybox_image, "/bin/sh", "-c", serve)
        started.append(name)
        return name

    yield run
    if started:
        docker("rm", "-f", *started, check=False)


def _starts(action):
    """A progress callback calling ``action(n)`` as Compose's ``n``-th start begins (the step
    that gives the command; the later ``up`` steps are Compose's output lines)."""
    count = [0]

    def progress(step: DeployStep) -> None:
        if step.stage == "up" and step.text.endswith(" up -d"):
            count[0] += 1
            action(count[0])

    return progress


def _container_state(docker, name: str) -> tuple[str, str, str]:
    raw = docker("inspect", "--format", "{{.Id}} {{.State.Status}} {{.State.StartedAt}}", name)
    ident, status, started = raw.split()
    return ident, status, started


def test_a_port_taken_before_compose_starts_is_moved_and_the_stack_started_again(
    tmp_path, stack, foreign, docker
):
    allocator = _allocator(tmp_path)
    taken = stack["web"]
    names: list[str] = []
    progress = _starts(lambda n: names.append(foreign(taken)) if n == 1 else None)

    report = deploy(allocator, load_compose([str(stack["file"])]), wait=30, progress=progress)

    assert report.ok, report.probes
    [moved] = report.moved
    new = moved.new_port
    assert (moved.name, moved.service, moved.old_port) == ("web", "web", taken)
    assert new != taken
    assert moved.holder.startswith(f"by container {names[0]} (image portctl-busybox:test)")
    assert f"Bind for 0.0.0.0:{taken} failed: port is already allocated" in moved.error
    assert (
        f"web's port {taken} was taken between allocation and start (by container {names[0]} "
    ) in moved.notice
    assert moved.notice.endswith(f"; moved it to {new} and ran compose up again")
    assert moved.notice in report.notices
    ports = {sp.name: r.allocation.port for sp, r in report.allocations}
    assert ports == {"web": new, "side": stack["side"]}  # side did not move
    assert allocator.get("web").port == new
    assert _get(new) == "web"
    assert _get(stack["side"]) == "side"
    assert f"WEB_PORT={new}\n" in Path(report.env_file).read_text()
    assert report.override_file is not None
    override = Path(report.override_file).read_text()
    assert f'"{new}:80"' in override
    assert "side" not in override
    # The foreign container runs on, untouched: the same container, never restarted.
    before = _container_state(docker, names[0])
    assert before[1] == "running"
    assert _get(taken) == "foreign"
    assert _container_state(docker, names[0]) == before
    assert docker("inspect", "--format", "{{.RestartCount}}", names[0]).strip() == "0"


def test_the_second_start_failing_too_is_an_error_of_one_line(tmp_path, stack, foreign):
    allocator = _allocator(tmp_path)
    env_ports = stack["folder"] / ".env.ports"

    def take(n: int) -> None:
        # First start: web's allocated port. Second: the port deploy moved web to.
        port = stack["web"] if n == 1 else _env_port(env_ports, "WEB_PORT")
        foreign(port)

    with pytest.raises(DeployFailed) as failed:
        deploy(allocator, load_compose([str(stack["file"])]), wait=5, progress=_starts(take))

    new = _env_port(env_ports, "WEB_PORT")
    message = failed.value.message
    assert "\n" not in message
    assert f"Bind for 0.0.0.0:{new} failed: port is already allocated" in message
    assert message.endswith(f"(the second start, after a taken port moved: web {stack['web']} -> {new})")


def _env_port(path: Path, name: str) -> int:
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return int(values[name])


def _allocator(tmp_path: Path) -> PortAllocator:
    from portctl.backends.file import JsonFileStore

    return PortAllocator(JsonFileStore(str(tmp_path / "store.json")), Settings(host="race-host"))


# Through the CLI: a container of the stack itself takes the port on the host network.

SQUATTER = """\
  squatter:
    image: {image}
    network_mode: host
    command: ["/bin/sh", "-c", "{serve}exec /bin/busybox sleep 3600"]
    healthcheck:
      test: ["CMD", "/bin/sh", "-c", "{check}"]
      interval: 1s
      retries: 60
"""


def _squatted(image: str, name: str, ports: list[int]) -> str:
    """``app`` publishes ``ports``; ``squatter``, started (and healthy) first, holds them all
    on the host network, so docker-proxy cannot bind them when ``app`` starts."""
    serve = "echo squatter > /www/index.html; "
    serve += "".join(f"/bin/busybox httpd -p {p} -h /www; " for p in ports)  # each forks to the background
    check = " && ".join(f"/bin/busybox wget -q -O /dev/null http://127.0.0.1:{p}/" for p in ports)
    app = textwrap.dedent(f"""\
        app:
          image: {image}
          command: ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"]
          depends_on:
            squatter:
              condition: service_healthy
          ports:
    """)
    app += "".join(f'    - "{p}:{80 + i}"\n' for i, p in enumerate(ports))
    app = textwrap.indent(app, "  ")
    return f"name: {name}\nservices:\n" + SQUATTER.format(image=image, serve=serve, check=check) + app


@pytest.fixture
def squatted(tmp_path, docker_host, busybox_image, compose_bin, request):
    def make(count: int) -> dict:
        ports = [free_port(start=27300 + 100 * i) for i in range(count)]
        name = f"race-squat-{count}"
        folder = tmp_path / "app"
        folder.mkdir()
        file = folder / "compose.yml"
        file.write_text(_squatted(busybox_image, name, ports))
        env = {**os.environ, "DOCKER_HOST": docker_host, "PORTCTL_STORE": str(tmp_path / "store.json")}
        env["PORTCTL_HOST"] = "race-host"
        env.pop("PORTCTL_CONFIG", None)
        made.append((name, file))
        return {"file": file, "folder": folder, "ports": ports, "env": env}

    made: list[tuple[str, Path]] = []
    yield make
    for name, file in made:
        subprocess.run(
            [*compose_bin, "-p", name, "-f", str(file), "down", "-t", "0"],
            capture_output=True,
            check=False,
            env={**os.environ, "DOCKER_HOST": docker_host},
        )


def _deploy(case: dict, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PORTCTL, "deploy", "-f", str(case["file"]), "--wait", "30s", *args],
        capture_output=True,
        text=True,
        env=case["env"],
        cwd=case["folder"],
        timeout=300,
        check=False,
    )


def test_the_cli_says_which_port_was_taken_and_where_it_went(squatted):
    case = squatted(1)
    [taken] = case["ports"]
    result = _deploy(case, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)["data"]
    [moved] = data["moved"]
    new = moved["new_port"]
    assert (moved["name"], moved["service"], moved["old_port"]) == ("app", "app", taken)
    # The squatter runs on the host's network: its own process holds the port, named as its container.
    assert moved["holder"].startswith("by container race-squat-1-squatter-1 (compose race-squat-1/squatter")
    assert f"listen tcp4 0.0.0.0:{taken}: bind: address already in use" in moved["error"]
    assert f"note: {moved['notice']}" in result.stderr
    assert {a["service"]: a["port"] for a in data["allocations"]} == {"app": new}
    assert all(p["answered"] for p in data["probes"])


def test_the_cli_table_shows_the_port_moved_at_start(squatted):
    case = squatted(1)
    [taken] = case["ports"]
    result = _deploy(case)
    assert result.returncode == 0, result.stdout + result.stderr
    allocations = result.stdout.split("\n\n")[0]  # the first table: NAME SERVICE DECLARED PORT MOVE
    [row] = [line.split(None, 4) for line in allocations.splitlines() if line.startswith("app ")]
    assert row[:3] == ["app", "app", str(taken)]
    assert row[4] == f"moved ({taken} was taken at start)"
    assert (
        f"note: app's port {taken} was taken between allocation and start (by container "
        "race-squat-1-squatter-1" in result.stderr
    )
    assert f"moved it to {row[3]} and ran compose up again" in result.stderr


def test_the_cli_fails_in_one_line_when_the_second_start_fails_too(squatted):
    case = squatted(2)
    result = _deploy(case)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "bind: address already in use" in line
    assert "(the second start, after a taken port moved: app" in line


def test_a_failure_that_is_no_ports_is_not_retried(tmp_path, docker_host, compose_bin, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    port = free_port(start=27500)
    file = tmp_path / "compose.yml"
    file.write_text(
        "name: race-absent\nservices:\n  web:\n    image: portctl-race-absent:none\n"
        f'    pull_policy: never\n    ports:\n      - "{port}:80"\n'
    )
    starts: list[int] = []
    try:
        with pytest.raises(DeployFailed) as failed:
            deploy(_allocator(tmp_path), load_compose([str(file)]), wait=5, progress=_starts(starts.append))
    finally:
        subprocess.run(
            [*compose_bin, "-p", "race-absent", "down", "-t", "0"], capture_output=True, check=False
        )
    message = failed.value.message
    assert starts == [1]
    assert "\n" not in message
    assert message.endswith("Error response from daemon: No such image: portctl-race-absent:none")
    assert "retried" not in message
