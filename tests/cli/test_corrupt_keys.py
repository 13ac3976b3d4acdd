"""One bad key in a shared store - hand-written, or written by an older or hostile tool - makes
only its own service unanswerable; it never takes down resolution or routing of the others, and
never reaches a router config."""

from __future__ import annotations

import json

from portctl.backends import open_store
from tests.cli.conftest import error_line, free_port


def _write(store_path, key: str, value: str) -> None:
    with open_store(f"file://{store_path}") as store:
        store.create(key, value)


def test_a_corrupt_blue_green_pointer_only_affects_its_own_service(run, store_path):
    redis_port = free_port()
    assert run("register", "redis", "--port", redis_port, "--check", "none").returncode == 0
    assert (
        run("register", "other", "--port", free_port(exclude=[redis_port]), "--check", "none").returncode == 0
    )
    _write(store_path, "bluegreen/production/other/live", json.dumps({"live": "red"}))

    good = run("url", "redis")
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == f"redis://127.0.0.1:{redis_port}"
    bad = run("url", "other")
    assert bad.returncode != 0
    assert "bluegreen/production/other/live" in error_line(bad)
    assert "delete or rewrite that key" in error_line(bad)


def test_an_entry_with_a_crafted_address_never_reaches_the_router_config(run, store_path):
    port = free_port()
    assert run("register", "api", "--port", port, "--check", "none").returncode == 0
    crafted = {
        "id": "evil-1",
        "service": "evil",
        "environment": "production",
        "host": "test-host",
        "address": "127.0.0.1:1;\n}\nserver { listen 80; location / { return 200 owned; } }\nupstream x {",
        "port": 8080,
    }
    _write(store_path, "registry/production/evil/evil-1/entry", json.dumps(crafted))
    _write(store_path, "registry/production/evil/evil-1/health", json.dumps({"status": "passing"}))

    rendered = run("render", "nginx")
    assert rendered.returncode == 0, rendered.stderr
    assert f"server 127.0.0.1:{port};" in rendered.stdout
    assert "owned" not in rendered.stdout
    assert "listen 80" not in rendered.stdout
    assert run("url", "api").stdout.strip() == f"http://127.0.0.1:{port}"
