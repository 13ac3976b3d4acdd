"""Refusals name the holder and the next step, with a real container holding the port: an
allocation of that port names the container (compose project/service) and the docker command
that frees it, the command works, and `check` ends with the next step to take."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import free_port

PORTCTL = os.path.join(os.path.dirname(sys.executable), "portctl")


@pytest.fixture
def old_db(tmp_path, docker_host, busybox_image, compose_bin):
    """The compose project ``nc-old`` whose ``db`` container (``nc-old-db``) publishes a port."""
    port = free_port(start=25400)
    compose = tmp_path / "old.yml"
    compose.write_text(
        textwrap.dedent(f"""\
            name: nc-old
            services:
              db:
                image: {busybox_image}
                container_name: nc-old-db
                command: ["/bin/busybox", "httpd", "-f", "-p", "80"]
                ports:
                  - "{port}:80"
        """)
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PORTCTL_")},
        "DOCKER_HOST": docker_host,
        "PORTCTL_STORE": str(tmp_path / "store.json"),
        "PORTCTL_HOST": "e2e-host",
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
    }
    subprocess.run([*compose_bin, "-f", str(compose), "up", "-d"], check=True, env=env, capture_output=True)
    yield {"port": port, "env": env, "dir": tmp_path, "compose": compose_bin}
    subprocess.run(
        [*compose_bin, "-p", "nc-old", "down", "-t", "0"], env=env, capture_output=True, check=False
    )


def _run(ctx, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, env=ctx["env"], cwd=ctx["dir"], timeout=300, check=False
    )


def test_allocating_a_containers_port_names_it_and_the_command_that_frees_it(old_db):
    port = str(old_db["port"])
    result = _run(old_db, PORTCTL, "allocate", "--service", "grafana", "--port", port)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert (
        "held by container nc-old-db (compose nc-old/db, image portctl-busybox:test) via docker-proxy pid"
        in line
    )
    assert "free it with: docker stop nc-old-db (or docker compose -p nc-old down), or omit --port" in line
    assert "release it first" not in line
    assert "::: container" not in line
    # The advice works.
    assert _run(old_db, *old_db["compose"], "-p", "nc-old", "down", "-t", "0").returncode == 0
    assert _run(old_db, PORTCTL, "allocate", "--service", "grafana", "--port", port).returncode == 0


def test_check_ends_with_the_next_step(old_db, busybox_image):
    app = old_db["dir"] / "docker-compose.yml"
    app.write_text(
        textwrap.dedent(f"""\
            name: shop
            services:
              grafana:
                image: {busybox_image}
                ports:
                  - "{old_db["port"]}:3000"
        """)
    )
    result = _run(old_db, PORTCTL, "check", "-f", str(app))
    assert result.returncode == 1
    assert "held by container nc-old-db (compose nc-old/db" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == (
        f"next: portctl deploy -f {app} (moves the conflicting services to free ports), "
        "or free the ports: docker stop nc-old-db (or docker compose -p nc-old down)"
    )
    data = json.loads(_run(old_db, PORTCTL, "check", "-f", str(app), "--json").stdout)["data"]
    assert data["next_step"].startswith(f"portctl deploy -f {app} ")
