"""Files portctl writes on a nearly full filesystem: complete and durable, or not at all.

A real tmpfs of 64 KiB is filled to one or two free pages, so a write of the ~16 KiB store
file gets a short count from ``write(2)`` and then ENOSPC, as on a real disk that fills up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import HOST, Run, error_line

PAGE = 4096
SEEDED = 40  # allocations, so the store file is ~16 KiB: several pages


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a filesystem that fills up for real."""
    folder = tmp_path / "small"
    folder.mkdir()
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    tried = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {tried.stderr.strip()}")
    try:
        yield folder
    finally:
        umount = shutil.which("umount") or "umount"
        if subprocess.run([umount, str(folder)], capture_output=True, check=False).returncode != 0:
            subprocess.run([umount, "-l", str(folder)], capture_output=True, check=False)


def fill(folder: Path, free_pages: int) -> None:
    """Leave exactly ``free_pages`` pages free on the filesystem of ``folder``."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    assert free >= (free_pages + 1) * PAGE, "the test store took the whole filesystem"
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * (free - free_pages * PAGE))
    st = os.statvfs(folder)
    assert st.f_bavail * st.f_frsize == free_pages * PAGE


def seed_document(count: int, first_port: int = 7500) -> str:
    allocations = [
        {"service": f"svc{i}", "environment": "production", "host": HOST, "port": first_port + i}
        for i in range(count)
    ]
    return json.dumps({"format": "portctl-ports", "schema": 1, "allocations": allocations})


@pytest.fixture
def full_store(run: Run, small_fs: Path, tmp_path: Path) -> Path:
    """A store of SEEDED allocations, written twice (so a backup exists), on the small tmpfs."""
    store = small_fs / "store.json"
    (tmp_path / "seed.json").write_text(seed_document(SEEDED))
    for document in (seed_document(SEEDED - 1), seed_document(SEEDED)):
        (tmp_path / "seed.json").write_text(document)
        result = run("import", "seed.json", env={"PORTCTL_STORE": str(store)})
        assert result.returncode == 0, result.stderr
    assert store.stat().st_size > 4 * PAGE
    return store


def assert_disk_full(result: subprocess.CompletedProcess[str], *mentions: str) -> str:
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    line = error_line(result)
    assert "No space left on device" in line, line
    for text in mentions:
        assert text in line, (text, line)
    return line


@pytest.mark.parametrize("free_pages", [1, 2])
def test_a_store_write_on_a_full_disk_fails_and_keeps_the_store(
    run: Run, full_store: Path, free_pages: int
) -> None:
    env = {"PORTCTL_STORE": str(full_store)}
    before = full_store.read_bytes()
    backup = (full_store.parent / "store.json.bak").read_bytes()
    fill(full_store.parent, free_pages)

    result = run("allocate", "--service", "extra", "--port", "7599", env=env)
    assert_disk_full(result, f"cannot write store {full_store}", "left as it was")
    assert "extra" not in result.stdout
    assert full_store.read_bytes() == before
    assert (full_store.parent / "store.json.bak").read_bytes() == backup
    assert sorted(os.listdir(full_store.parent)) == [
        "filler",
        "store.json",
        "store.json.bak",
        "store.json.lock",
    ]

    # Every later command still works, and the refused allocation was never made.
    for args in (("status",), ("export",), ("env",)):
        later = run(*args, env=env)
        assert later.returncode == 0, (args, later.stderr)
        assert "extra" not in later.stdout.lower()
        assert "svc39" in later.stdout.lower()

    # Once there is room again, the same command succeeds.
    (full_store.parent / "filler").unlink()
    again = run("allocate", "--service", "extra", "--port", "7599", env=env)
    assert again.returncode == 0, again.stderr
    assert "EXTRA_PORT=7599" in run("env", env=env).stdout


@pytest.mark.parametrize(("command", "free_pages"), [("export", 1), ("env", 0)])
def test_an_output_file_on_a_full_disk_is_exit_3_and_keeps_the_old_file(
    run: Run, small_fs: Path, tmp_path: Path, command: str, free_pages: int
) -> None:
    (tmp_path / "seed.json").write_text(seed_document(SEEDED))
    assert run("import", "seed.json").returncode == 0
    target = small_fs / "out.txt"
    target.write_text("the previous output\n")
    fill(small_fs, free_pages)

    result = run(command, "-o", target)
    assert_disk_full(result, str(target), "left as it was")
    assert result.stdout == ""
    assert target.read_text() == "the previous output\n"
    assert sorted(os.listdir(small_fs)) == ["filler", "out.txt"]


def test_an_output_file_on_a_full_disk_in_json_mode(run: Run, small_fs: Path, tmp_path: Path) -> None:
    (tmp_path / "seed.json").write_text(seed_document(SEEDED))
    assert run("import", "seed.json").returncode == 0
    fill(small_fs, 1)
    result = run("export", "-o", small_fs / "port_config.json", "--json")
    assert result.returncode == 3
    envelope = json.loads(result.stdout)
    assert envelope["ok"] is False
    assert envelope["error"]["code"] == "output_unavailable"
    assert not (small_fs / "port_config.json").exists()


def test_an_output_file_in_a_read_only_place_is_exit_3(run: Run, seeded_store: bytes, small_fs: Path) -> None:
    target = small_fs / "port_config.json"
    target.write_text("{}\n")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    result = run("export", "-o", target)
    assert result.returncode == 3, (result.stdout, result.stderr)
    line = error_line(result)
    assert f"cannot write {target}: Read-only file system" in line
    assert "mounted read-only" in line
    assert "free space" not in line  # space is not what would fix it
    assert target.read_text() == "{}\n"
