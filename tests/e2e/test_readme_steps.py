"""The README's manual steps, run as written against a real Docker engine.

The commands come from README.md itself (the fenced bash block of "Quick start" that begins
with ``portctl allocate --service postgres --port 5433``), so the README cannot drift from what
works. The host is the README's: containers of an older compose project hold the standard
ports of postgres, redis and grafana; the new stack publishes the standard ports of seven
services."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
FIRST_LINE = "portctl allocate --service postgres --port 5433"
BIN = os.path.dirname(sys.executable)

OLD_PROJECT = "orchestra-main-2"
OLD = {"db": 5432, "redis": 6379, "grafana": 3001}  # the older project's, on standard ports
# The new stack as the README's quick start has it: service -> standard port.
STACK = {
    "postgres": 5432,
    "redis": 6379,
    "weaviate": 8080,
    "api": 8000,
    "admin_ui": 3000,
    "grafana": 3001,
    "prometheus": 9090,
}
# Where each service answers after the README's steps: each on the port allocated by hand.
EXPECTED = {
    "postgres": 5433,
    "redis": 6380,
    "weaviate": 8081,
    "api": 8010,
    "admin_ui": 3002,
    "grafana": 3003,
    "prometheus": 9091,
}
# Moved by hand in the partial flow: what the older project holds; the rest stay as declared.
PARTIAL = {**STACK, "postgres": 5433, "redis": 6380, "grafana": 3003}


def readme_steps() -> str:
    """The README's bash block that starts with FIRST_LINE, exactly as written."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    found = [block for block in blocks if block.startswith(FIRST_LINE)]
    assert len(found) == 1, f"README.md has {len(found)} bash blocks starting with {FIRST_LINE!r}"
    return found[0]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _compose_file(image: str, services: dict[str, int], name: str | None = None) -> str:
    """Busybox services, each answering HTTP with its own name on its standard port."""
    out = [f"name: {name}"] if name else []
    out.append("services:")
    for service, port in services.items():
        serve = f"mkdir -p /w && echo {service} > /w/index.html && exec /bin/busybox httpd -f -p {port} -h /w"
        out.append(
            textwrap.indent(
                f'{service}:\n  image: {image}\n  command: ["/bin/busybox", "sh", "-c", "{serve}"]\n'
                f'  ports:\n    - "{port}:{port}"',
                "  ",
            )
        )
    return "\n".join(out) + "\n"


def _compose_plugin(config: Path, compose_bin: tuple[str, ...]) -> None:
    """Install Docker Compose v2 as the docker CLI's plugin, so `docker compose` works."""
    plugins = config / "cli-plugins"
    plugins.mkdir(parents=True)
    binary = shutil.which(compose_bin[0]) if len(compose_bin) == 1 else None
    if binary is None:  # `docker compose` is already a plugin on this host
        return
    (plugins / "docker-compose").symlink_to(binary)


@pytest.fixture
def host(tmp_path, docker, docker_host, busybox_image, compose_bin):
    busy = [
        p for p in {*OLD.values(), *STACK.values(), *EXPECTED.values(), *PARTIAL.values()} if not _free(p)
    ]
    if busy:
        pytest.skip(f"ports {sorted(busy)} are in use on this machine; the README's ports must be free")
    config = tmp_path / "docker-config"
    _compose_plugin(config, compose_bin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCTL_")}
    env.update(
        {
            "DOCKER_HOST": docker_host,
            "DOCKER_CONFIG": str(config),
            "PORTCTL_STORE": str(tmp_path / "store.json"),
            "PORTCTL_HOST": "web-1",
            "PATH": os.pathsep.join([BIN, env.get("PATH", "")]),
        }
    )
    old = tmp_path / "old" / "docker-compose.yml"
    old.parent.mkdir()
    old.write_text(_compose_file(busybox_image, OLD, OLD_PROJECT))
    app = tmp_path / "app"
    app.mkdir()
    (app / "docker-compose.production.yml").write_text(_compose_file(busybox_image, STACK))
    compose = ["docker", "compose"]
    subprocess.run([*compose, "-f", str(old), "up", "-d"], env=env, check=True, capture_output=True)
    yield {"env": env, "dir": app}
    for folder, name in ((app, "docker-compose.production.yml"), (old.parent, old.name)):
        subprocess.run(
            [*compose, "-f", name, "down", "-t", "1"], cwd=folder, env=env, capture_output=True, check=False
        )


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        return response.read().decode().strip()


def _run_steps(host, script: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=host["dir"],
        env=host["env"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr
    return done


def _documented(app: Path) -> dict[str, int]:
    config = json.loads((app / "port_config.json").read_text())
    return {a["service"]: a["port"] for a in config["allocations"]}


def test_the_readme_manual_steps_work_as_written(host):
    done = _run_steps(host, readme_steps())
    app = host["dir"]
    env_ports = (app / ".env.ports").read_text()
    assert "POSTGRES_PORT=5433" in env_ports
    assert "GRAFANA_PORT=3003" in env_ports
    override = (app / "docker-compose.override.yml").read_text()
    assert '"5433:5432"' in override
    assert '"3003:3001"' in override
    for service, port in EXPECTED.items():  # every container of the new stack answers, on its port
        assert _get(port) == service
    assert "CONFLICT" not in done.stdout  # the check passed (under bash -e its exit 1 stops the steps too)
    assert _documented(app) == EXPECTED


PARTIAL_STEPS = """\
portctl allocate --service postgres --port 5433
portctl allocate --service redis --port 6380
portctl allocate --service grafana --port 3003
portctl override -f docker-compose.production.yml > docker-compose.override.yml
docker compose -f docker-compose.production.yml -f docker-compose.override.yml up -d
portctl allocate --all -f docker-compose.production.yml
portctl check -f docker-compose.production.yml
portctl export -o port_config.json
"""


def test_a_partial_set_then_allocate_all_records_the_ports_the_stack_runs_on(host):
    """The README's other path: move only what conflicts, bring the stack up, then record the
    rest at the ports their own containers hold - not moved off them."""
    done = _run_steps(host, PARTIAL_STEPS)
    assert "not allocated, left as declared: weaviate (8080), api (8000)" in done.stderr
    for service, port in PARTIAL.items():
        assert _get(port) == service
    assert "CONFLICT" not in done.stdout
    assert _documented(host["dir"]) == PARTIAL
