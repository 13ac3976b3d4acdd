"""Which Compose files are read when none is named: the lookup `docker compose` does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portctl.compose.files import find_compose_files
from portctl.errors import InvalidInput


def _touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("services: {}\n")


@pytest.mark.parametrize(
    ("present", "chosen"),
    [
        (["compose.yaml", "compose.yml", "docker-compose.yml"], "compose.yaml"),
        (["compose.yml", "docker-compose.yml"], "compose.yml"),
        (["docker-compose.yml", "docker-compose.yaml"], "docker-compose.yml"),  # .yml first, as Compose
        (["docker-compose.yaml"], "docker-compose.yaml"),
    ],
)
def test_default_names_in_compose_order(tmp_path: Path, present: list[str], chosen: str) -> None:
    _touch(*(tmp_path / name for name in present))
    found = find_compose_files(str(tmp_path), environ={})
    assert found.files == (str(tmp_path / chosen),)
    assert found.override is None


def test_an_override_beside_the_default_file_is_read_too(tmp_path: Path) -> None:
    _touch(tmp_path / "compose.yaml", tmp_path / "docker-compose.override.yml")
    found = find_compose_files(str(tmp_path), environ={})
    assert found.files == (str(tmp_path / "compose.yaml"), str(tmp_path / "docker-compose.override.yml"))
    assert found.override == str(tmp_path / "docker-compose.override.yml")


def test_parent_folders_are_searched(tmp_path: Path) -> None:
    _touch(tmp_path / "docker-compose.yml")
    (tmp_path / "src" / "app").mkdir(parents=True)
    found = find_compose_files(str(tmp_path / "src" / "app"), environ={})
    assert found.files == (str(tmp_path / "docker-compose.yml"),)


def test_compose_file_variable_wins_with_its_separator(tmp_path: Path) -> None:
    _touch(tmp_path / "compose.yaml", tmp_path / "a.yml", tmp_path / "b.yml")
    found = find_compose_files(str(tmp_path), environ={"COMPOSE_FILE": f"a.yml{os.pathsep}b.yml"})
    assert found.files == (str(tmp_path / "a.yml"), str(tmp_path / "b.yml"))
    assert found.source == "COMPOSE_FILE"
    other = find_compose_files(
        str(tmp_path), environ={"COMPOSE_FILE": "a.yml,b.yml", "COMPOSE_PATH_SEPARATOR": ","}
    )
    assert other.files == found.files


def test_compose_file_from_the_dotenv_file(tmp_path: Path) -> None:
    _touch(tmp_path / "compose.yaml", tmp_path / "prod.yml")
    (tmp_path / ".env").write_text("# settings\nCOMPOSE_FILE='prod.yml'\n")
    found = find_compose_files(str(tmp_path), environ={})
    assert found.files == (str(tmp_path / "prod.yml"),)
    assert found.source == f"COMPOSE_FILE in {tmp_path / '.env'}"


def test_nothing_found_names_every_name_looked_for(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        find_compose_files(str(tmp_path), environ={})
    text = str(caught.value)
    for name in ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml", "COMPOSE_FILE"):
        assert name in text
