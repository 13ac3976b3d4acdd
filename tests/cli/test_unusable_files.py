"""Files in the store's place that portctl cannot use: refused in one line, left as found."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.cli.conftest import Run, error_line
from tests.cli.test_bad_input import assert_bad_input


@pytest.mark.parametrize(
    "args", [("status",), ("allocate", "--service", "redis"), ("export",)], ids=lambda a: a[0]
)
def test_a_deeply_nested_store_file_is_unusable_and_untouched(
    run: Run, store_path: Path, args: tuple[str, ...]
) -> None:
    store_path.write_text("[" * 100_000)
    result = run(*args)
    assert result.returncode == 3, (result.stdout, result.stderr)
    line = error_line(result)
    assert f"store {store_path} is unusable" in line
    assert "nests JSON deeper" in line
    assert "left untouched" in line
    assert store_path.read_text() == "[" * 100_000


def test_importing_a_deeply_nested_file_is_refused_naming_it(
    run: Run, store_path: Path, seeded_store: bytes, tmp_path: Path
) -> None:
    (tmp_path / "deep.json").write_text("[" * 200_000)
    assert_bad_input(run("import", "deep.json"), "deep.json", "nested too deeply", "port_config.json")
    assert store_path.read_bytes() == seeded_store


def _make_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


@pytest.mark.parametrize(
    ("kind", "make"),
    [("a folder", Path.mkdir), ("a named pipe", os.mkfifo), ("a socket", _make_socket)],
    ids=["folder", "fifo", "socket"],
)
def test_a_lock_path_that_is_not_a_file_is_named_as_the_problem(
    run: Run, store_path: Path, seeded_store: bytes, kind: str, make: object
) -> None:
    lock = Path(f"{store_path}.lock")
    lock.unlink()
    make(lock)  # type: ignore[operator]
    result = run("allocate", "--service", "redis")
    assert result.returncode == 3, (result.stdout, result.stderr)
    line = error_line(result)
    assert f"lock file {lock} is {kind}, not a regular file" in line
    assert f"remove {lock} (portctl makes a new one)" in line
    assert store_path.read_bytes() == seeded_store
    assert run("status").returncode == 0  # readers take no lock


def test_a_named_pipe_as_the_store_is_refused_without_hanging(run: Run, store_path: Path) -> None:
    os.mkfifo(store_path)
    for args in (("status",), ("allocate", "--service", "redis")):
        result = run(*args)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "a file path, not a named pipe" in error_line(result)


def test_a_folder_in_the_backups_place_is_named_as_the_problem(
    run: Run, store_path: Path, seeded_store: bytes
) -> None:
    backup = Path(f"{store_path}.bak")
    backup.mkdir()
    result = run("allocate", "--service", "redis")
    assert result.returncode == 3, (result.stdout, result.stderr)
    line = error_line(result)
    assert f"backup {backup} is a folder, not a regular file" in line
    assert f"move {backup} aside" in line
    assert store_path.read_bytes() == seeded_store
