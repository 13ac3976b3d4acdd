"""`portctl check` as a CI gate: the README's blue-green flow with real HTTP servers on the
colors' ports passes (each color's server is the instance registered there, not a conflict),
a foreign process on an allocated port is still a conflict, and the output ends with the next
step to take."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from .conftest import Run, Serve, free_port, parse_env


def test_check_passes_after_the_readme_blue_green_flow(run: Run, serve: Serve) -> None:
    blue = free_port()
    serve(blue)
    check = "http://127.0.0.1:{port}/"
    deployed = run("bluegreen", "deploy", "api", "--color", "blue", "--port", blue, "--check", check)
    assert deployed.returncode == 0, deployed.stderr
    deployed = run("bluegreen", "deploy", "api", "--color", "green", "--check", check)
    assert deployed.returncode == 0, deployed.stderr
    green = parse_env(run("env").stdout)["API_GREEN_PORT"]
    serve(green)  # start green on its port
    cutover = run(
        "bluegreen", "cutover", "api", "--to", "green", "--min-healthy", "0s", "--drain", "0s", "--yes"
    )
    assert cutover.returncode == 0, cutover.stderr

    result = run("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CONFLICT" not in result.stdout
    assert "0 conflict(s) in 2 port(s)" in result.stdout
    assert "next:" not in result.stdout  # nothing to do
    findings = json.loads(run("check", "--json").stdout)["data"]["findings"]
    assert {f["service"]: len(f["own"]) for f in findings} == {"api_blue": 1, "api_green": 1}


def test_a_foreign_process_on_an_allocated_port_is_still_a_conflict(run: Run, serve: Serve) -> None:
    port = free_port()
    assert run("allocate", "--service", "web", "--port", port).returncode == 0
    foreign = serve(port)
    result = run("check")
    assert result.returncode == 1
    assert "CONFLICT" in result.stdout
    assert "held by process python" in result.stdout
    assert f"pid {foreign.pid} user root (" in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("next: free the ports: ")
    assert f"kill {foreign.pid}" in last
    assert "portctl release --service web --env production && portctl allocate --service web" in last


def test_a_process_that_took_a_registered_port_later_is_a_conflict(run: Run, serve: Serve) -> None:
    """The instance's server listened when it was registered (its process is recorded); a
    different process holding the port later is someone else, not the instance."""
    port = free_port()
    assert run("allocate", "api", "--port", port).returncode == 0
    first = serve(port)
    registered = run("register", "api", "--check", "tcp")
    assert registered.returncode == 0, registered.stderr
    assert run("check").returncode == 0  # the registered instance's own server
    first.terminate()
    first.wait(10)
    serve(port)  # another process takes the port
    result = run("check")
    assert result.returncode == 1, result.stdout
    assert "CONFLICT" in result.stdout


def test_a_host_process_named_like_a_compose_service_is_not_its_container(
    run: Run, tmp_path, serve_as
) -> None:
    """allocate --all -f keeps a port held by the stack's own container only: a host process
    that is merely named like the service is foreign, so the service moves."""
    port = free_port()
    serve_as("postgres", port)
    (tmp_path / "compose.yml").write_text(
        f'services:\n  postgres:\n    image: postgres\n    ports: ["{port}:5432"]\n'
    )
    result = run("--json", "allocate", "--all", "-f", "compose.yml")
    allocated = {a["service"]: a["port"] for a in json.loads(result.stdout)["data"]}
    assert allocated["postgres"] != port, result.stdout


@pytest.fixture
def serve_as(tmp_path) -> Iterator[Callable[[str, int], subprocess.Popen[bytes]]]:
    """``serve_as(name, port)``: a listening process whose program is called ``name``."""
    started: list[subprocess.Popen[bytes]] = []

    def _serve(name: str, port: int) -> subprocess.Popen[bytes]:
        program = tmp_path / name
        program.symlink_to(sys.executable)
        code = (
            "import socket, time; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "  # past TIME_WAIT, as servers do
            f"s.bind(('0.0.0.0', {port})); s.listen(); time.sleep(300)"
        )
        process = subprocess.Popen([str(program), "-c", code])
        started.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return process
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"{name} did not listen on {port}")

    yield _serve
    for process in started:
        process.kill()
        process.wait(10)
