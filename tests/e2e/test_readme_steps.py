"""The README's manual steps, run as written against a real Docker engine.

The commands come from README.md itself (the fenced bash block of "Quick start" that begins
with ``portctl allocate --service postgres --port 5433``), so the README cannot drift from what
works. The host is the plan's: containers of an older compose project hold postgres' and
redis' standard ports; the new stack publishes the standard ports of seven services."""

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
OLD = {"db": 5432, "redis": 6379}  # the older project's containers on the standard ports
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
# Where each service answers after the steps: the two moved by hand, the rest as declared.
EXPECTED = {**STACK, "postgres": 5433, "redis": 6380}


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
    busy = [p for p in {*OLD.values(), *EXPECTED.values()} if not _free(p)]
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


def test_the_readme_manual_steps_work_as_written(host):
    steps = readme_steps()
    done = subprocess.run(
        ["bash", "-e", "-c", steps],
        cwd=host["dir"],
        env=host["env"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr
    app = host["dir"]
    env_ports = (app / ".env.ports").read_text()
    assert "POSTGRES_PORT=5433" in env_ports
    assert "REDIS_PORT=6380" in env_ports
    override = (app / "docker-compose.override.yml").read_text()
    assert '"5433:5432"' in override
    assert '"6380:6379"' in override
    for service, port in EXPECTED.items():  # every container of the new stack answers, on its port
        assert _get(port) == service
    assert "not allocated, left as declared: weaviate (8080), api (8000)" in done.stderr
    config = json.loads((app / "port_config.json").read_text())
    documented = {a["service"]: a["port"] for a in config["allocations"]}
    assert set(documented) == set(EXPECTED)
    assert {s: documented[s] for s in ("postgres", "redis")} == {"postgres": 5433, "redis": 6380}
    assert documented == EXPECTED  # each service documented on the port its container runs on
    assert "CONFLICT" not in done.stdout  # the check passed (under bash -e its exit 1 stops the steps too)
