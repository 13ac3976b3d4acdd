"""What the library refuses whoever calls it (the CLI, the blue-green layer, a script): an empty
environment, reserved or multi-line meta, an HTTP check aimed at another host. Each refusal
leaves the JSON store byte for byte as it was."""

from __future__ import annotations

import pytest

from portctl.backends.file import JsonFileStore
from portctl.config.policy import default_policy
from portctl.config.settings import Settings
from portctl.errors import InvalidInput
from portctl.ports.allocator import PortAllocator
from portctl.registry.entries import CheckSpec, Registry
from portctl.routing.bluegreen import BlueGreen
from tests.conftest import free_port

SETTINGS = Settings(host="test-host")


def _bytes(store: JsonFileStore) -> bytes | None:
    try:
        with open(store.path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def test_an_empty_environment_is_not_the_default() -> None:
    policy = default_policy()
    assert policy.environment(None) == "production"
    with pytest.raises(InvalidInput, match=r"^env: '' is not valid; expected one of production"):
        policy.environment("")
    with pytest.raises(InvalidInput, match=r"^environment: '' is not valid"):
        policy.with_additions(default_environment="")


def test_register_refuses_an_empty_environment(store: JsonFileStore) -> None:
    before = _bytes(store)
    with pytest.raises(InvalidInput, match=r"^env: ''"):
        Registry(store, SETTINGS).register("web", port=7401, check=CheckSpec("none"), environment="")
    assert _bytes(store) == before


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"portctl-env": "staging"}, "not starting with 'portctl-'"),
        ({"PORTCTL-key": "x"}, "not starting with 'portctl-'"),
        ({"consul-version": "1"}, "'consul-' \\(reserved by Consul\\)"),
        ({"owner": "ops\nteam"}, "on one line"),
        ({"owner": "ops\u2029"}, "on one line"),
        ({"": "x"}, "a key of 1-128 ASCII"),
        ({f"k{i}": "v" for i in range(61)}, "at most 60 pairs"),
    ],
    ids=["portctl", "portctl-any-case", "consul", "newline", "paragraph-separator", "empty-key", "61-pairs"],
)
def test_register_refuses_bad_meta_on_the_json_store(store: JsonFileStore, meta: dict, match: str) -> None:
    before = _bytes(store)
    with pytest.raises(InvalidInput, match=match):
        Registry(store, SETTINGS).register("web", port=7402, check=CheckSpec("none"), meta=meta)
    assert _bytes(store) == before


@pytest.mark.parametrize(
    ("address", "url"),
    [
        (None, "http://evil.example:{port}/health"),
        (None, "http://10.0.0.5:{port}/health"),
        ("192.0.2.10", "http://127.0.0.1:{port}/health"),
        ("192.0.2.10", "http://192.0.2.11:{port}/health"),
        ("db.internal", "http://localhost:{port}/health"),
    ],
)
def test_register_refuses_an_http_check_on_another_host(
    store: JsonFileStore, address: str | None, url: str
) -> None:
    before = _bytes(store)
    check = CheckSpec("http", url=url.format(port=7403))
    with pytest.raises(InvalidInput, match="the instance's own address"):
        Registry(store, SETTINGS).register("web", port=7403, address=address, check=check)
    assert _bytes(store) == before


@pytest.mark.parametrize(
    ("address", "host"),
    [
        (None, "localhost"),
        (None, "127.0.0.2"),
        (None, "[::1]"),
        ("::1", "[0:0:0:0:0:0:0:1]"),
        ("::1", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("[::]", "localhost"),
        ("192.0.2.10", "192.0.2.10"),
        ("DB.internal", "db.internal"),
    ],
)
def test_register_takes_an_http_check_on_the_instance(
    store: JsonFileStore, address: str | None, host: str
) -> None:
    url = f"http://{host}:7404/health"
    found = Registry(store, SETTINGS).register(
        "web", port=7404, address=address, check=CheckSpec("http", url=url, timeout=0.2)
    )
    assert found.entry.check.url == url


def test_a_color_with_an_http_check_on_another_host_leaves_nothing_behind(store: JsonFileStore) -> None:
    port = free_port(start=7410)
    bg = BlueGreen(store, SETTINGS)
    with pytest.raises(InvalidInput, match="the instance's own address 127.0.0.1"):
        bg.deploy("api", "blue", port=port, check=CheckSpec("http", url="http://evil.example:{port}/health"))
    assert Registry(store, SETTINGS).instances() == []
    assert PortAllocator(store, SETTINGS).allocations() == []
