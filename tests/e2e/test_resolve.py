"""Automatic conflict resolution with a real Docker engine and Compose: while a stack is down,
a foreign container takes its allocated port; `portctl agent --resolve --redeploy` moves the
service, rewrites its files, starts it on the new port, and records the move."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.e2e.test_quick_fix import _compose, _free

BIN = os.path.dirname(sys.executable)
PORTCTL = os.path.join(BIN, "portctl")
PROJECT = "resolve-app"
INTRUDER = "resolve-intruder"


@pytest.fixture
def stack(tmp_path, docker, docker_host, busybox_image, compose_bin):
    port = next((p for p in range(7800, 7900) if _free(p)), None)
    if port is None:
        pytest.skip("no free port in 7800-7899")
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(_compose(busybox_image, {"web": (str(port), 80)}, PROJECT))
    env = {
        **os.environ,
        "DOCKER_HOST": docker_host,
        "PORTCTL_STORE": str(tmp_path / "store.json"),
        "PORTCTL_HOST": "resolve-host",
        "PATH": os.pathsep.join([BIN, os.environ.get("PATH", "")]),
    }
    env.pop("PORTCTL_CONFIG", None)
    yield {"env": env, "dir": tmp_path, "compose": compose, "port": port, "image": busybox_image}
    docker("rm", "-f", INTRUDER, check=False)
    subprocess.run(
        [*compose_bin, "-p", PROJECT, "-f", str(compose), "down", "-t", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )


def portctl(stack, *args, timeout=300):
    return subprocess.run(
        [PORTCTL, *map(str, args)],
        capture_output=True,
        text=True,
        env=stack["env"],
        cwd=stack["dir"],
        timeout=timeout,
        check=False,
    )


def moved_events(stack):
    done = portctl(stack, "--json", "events")
    assert done.returncode == 0, done.stderr
    return [e for e in json.loads(done.stdout)["data"] if e["kind"] == "moved"]


@pytest.mark.parametrize("stopped_by", ["down", "stop"])  # containers removed, or kept stopped
def test_the_agent_moves_a_stopped_service_off_a_port_a_foreign_container_took(
    stack, docker, compose_bin, stopped_by
):
    port = stack["port"]
    deployed = portctl(stack, "deploy", "-f", stack["compose"], "--env", "development")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    down = [*compose_bin, "-p", PROJECT, "-f", str(stack["compose"]), stopped_by, "-t", "0"]
    subprocess.run(down, env=stack["env"], cwd=stack["dir"], check=True, capture_output=True)
    docker(
        "run",
        "-d",
        "--name",
        INTRUDER,
        "-p",
        f"{port}:80",
        stack["image"],
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "80",
    )

    agent = subprocess.Popen(
        [
            PORTCTL,
            "agent",
            "--resolve",
            "--redeploy",
            "-f",
            str(stack["compose"]),
            "--env",
            "development",
            "--resolve-every",
            "500ms",
        ],
        env=stack["env"],
        cwd=stack["dir"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not moved_events(stack):
            assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
            assert time.monotonic() < deadline, "the agent did not move the service"
            time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    (event,) = moved_events(stack)
    new = event["new_port"]
    assert (event["service"], event["old_port"], event["actor"]) == ("web", port, "portctl agent --resolve")
    assert f"container {INTRUDER}" in event["holder"]
    assert f"redeployed (answers on {new})" in event["detail"]
    assert f"resolve: moved web (development) {port} -> {new}/tcp" in err

    assert f"WEB_PORT={new}" in (stack["dir"] / ".env.ports").read_text()
    assert f"{new}:80" in (stack["dir"] / "docker-compose.override.yml").read_text()
    with urllib.request.urlopen(f"http://127.0.0.1:{new}/", timeout=10) as answer:
        assert answer.read().decode().strip() == "web"  # the stack's own container, on its new port
    assert docker("inspect", "-f", "{{.State.Running}}", INTRUDER).strip() == "true"  # never stopped
    shown = portctl(stack, "events")
    assert f"{port} -> {new}" in shown.stdout
    assert "web (development)" in shown.stdout


def test_a_running_service_on_the_hosts_network_is_its_own_container_not_a_foreign_process(
    stack, docker, compose_bin
):
    """``network_mode: host``: the container's own process listens on the host, with no
    docker-proxy; it is told as the stack's container (by its cgroup), and nothing moves."""
    port = stack["port"]
    stack["compose"].write_text(
        f"name: {PROJECT}\nservices:\n  web:\n    image: {stack['image']}\n    network_mode: host\n"
        f'    command: ["/bin/busybox", "httpd", "-f", "-p", "{port}"]\n'
    )
    assert (
        portctl(stack, "allocate", "--service", "web", "--port", port, "--env", "development").returncode == 0
    )
    up = [*compose_bin, "-p", PROJECT, "-f", str(stack["compose"]), "up", "-d"]
    subprocess.run(up, env=stack["env"], cwd=stack["dir"], check=True, capture_output=True)
    for _ in range(100):
        if not _free(port):
            break
        time.sleep(0.1)
    who = portctl(stack, "who", port)
    assert f"container {PROJECT}-web-1 (compose {PROJECT}/web" in who.stdout
    # Allocated by hand, not from the compose file (which publishes no port): nothing says the
    # container is not the service, so nothing moves, and resolve says why.
    done = portctl(stack, "resolve", "-f", stack["compose"], "--env", "development")
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        f"not moved: web (development) {port}: cannot tell whether container {PROJECT}-web-1" in done.stdout
    )
    assert moved_events(stack) == []
    assert portctl(stack, "--json", "status", "--env", "development").stdout.count(f'"port": {port}') == 1
