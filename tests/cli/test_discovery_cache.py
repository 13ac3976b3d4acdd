"""``portctl url`` and the discovery cache: a one-shot lookup leaves no file behind, and no
cache folder (or an unusable one) never breaks it."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import Run, error_line


def test_url_leaves_no_cache_file(run: Run, seeded_store: bytes, seed_port: int, tmp_path: Path) -> None:
    result = run("url", "seed")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"http://127.0.0.1:{seed_port}"
    assert not (tmp_path / "cache").exists()


def test_url_with_a_home_that_does_not_exist(
    run: Run, seeded_store: bytes, seed_port: int, tmp_path: Path
) -> None:
    env = {"XDG_CACHE_HOME": None, "HOME": str(tmp_path / "gone" / "home")}
    result = run("url", "seed", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"http://127.0.0.1:{seed_port}"
    assert not (tmp_path / "gone").exists()


def test_url_with_a_broken_store_and_no_cache_folder_is_one_line(
    run: Run, store_path: Path, seeded_store: bytes, tmp_path: Path
) -> None:
    store_path.write_text("{ not json")
    env = {"XDG_CACHE_HOME": None, "HOME": str(tmp_path / "gone")}
    result = run("url", "seed", env=env)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "no cache of last known good answers is kept" in error_line(result)
    assert store_path.read_text() == "{ not json"


def test_url_with_a_file_as_cache_folder(
    run: Run, seeded_store: bytes, seed_port: int, tmp_path: Path
) -> None:
    (tmp_path / "xdg").write_text("not a folder")
    result = run("url", "seed", env={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"http://127.0.0.1:{seed_port}"
