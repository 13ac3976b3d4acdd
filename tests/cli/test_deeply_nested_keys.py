"""A store key whose value is JSON nested deeper than Python's parser goes (``[[[[...``) is a
corrupt key like any other: no traceback; lookups of the other services still answer, and the
commands that read every key name it."""

from __future__ import annotations

import pytest

from portctl.backends import open_store
from tests.cli.conftest import error_line, free_port

DEEP = "[" * 100_000


def _write(store_path, key: str, value: str) -> None:
    with open_store(f"file://{store_path}") as store:
        store.create(key, value)


@pytest.mark.parametrize("part", ["entry", "health"])
def test_a_deeply_nested_registry_key_only_affects_its_own_service(run, store_path, part: str) -> None:
    port = free_port()
    assert run("register", "redis", "--port", port, "--check", "none").returncode == 0
    assert run("register", "deep", "--port", free_port(exclude=[port]), "--check", "none").returncode == 0
    with open_store(f"file://{store_path}") as store:
        found = next(e for e in store.list("registry/production/deep/") if e.key.endswith(f"/{part}"))
        key = found.key
        store.compare_and_set(key, DEEP, found.version)
    assert DEEP in store_path.read_text()  # the real JSON store file holds it

    listed = run("services")
    assert listed.returncode == 3, (listed.stdout, listed.stderr)
    assert "Traceback" not in listed.stderr
    assert f"key {key} is unusable:" in error_line(listed)
    assert "not valid (JSON nested too deeply)" in error_line(listed)
    assert run("url", "redis").stdout.strip() == f"redis://127.0.0.1:{port}"
    bad = run("url", "deep")
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
    assert "'deep' is not" in error_line(bad)  # its unreadable key is skipped, as a resolver does


def test_a_deeply_nested_blue_green_pointer_only_affects_its_own_service(run, store_path) -> None:
    port = free_port()
    assert run("register", "redis", "--port", port, "--check", "none").returncode == 0
    _write(store_path, "bluegreen/production/deep/live", DEEP)

    status = run("bluegreen", "status", "deep")
    assert status.returncode == 3, (status.stdout, status.stderr)
    assert "Traceback" not in status.stderr
    line = error_line(status)
    assert "bluegreen/production/deep/live is unusable: the blue-green pointer is not valid" in line
    assert "delete or rewrite that key" in line
    listed = run("services")
    assert listed.returncode == 0, listed.stderr
    assert "redis" in listed.stdout
    assert run("url", "redis").stdout.strip() == f"redis://127.0.0.1:{port}"
