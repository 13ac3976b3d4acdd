"""Consul for tests: the emulator in a thread, or a real Consul named by ``CONSUL_HTTP_ADDR``.

``consul_url`` yields the HTTP address of a Consul (``http://127.0.0.1:PORT``). Without
``CONSUL_HTTP_ADDR`` it is a fresh :class:`tests.support.consul_emulator.ConsulEmulator` per test, on a
free loopback port, with ``session_ttl_min`` lowered to 1s (a real Consul option) so TTL tests
take seconds. When ``CONSUL_HTTP_ADDR`` is set (e.g. ``127.0.0.1:8500`` after
``docker compose -f docker-compose.test.yml up -d``), the same tests run against that real
Consul instead, with ``CONSUL_HTTP_TOKEN`` if it needs one; each test then works under its own
KV prefix and removes its keys and services afterwards. Tests that need the emulator's
controls (an index reset, a lost leader, ACLs switched on) use ``consul_emulator`` and skip,
saying why, on a real Consul.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.consul_emulator import ConsulEmulator

EMULATOR_SESSION_TTL_MIN = 1.0


def real_consul() -> str | None:
    """The real Consul's URL when ``CONSUL_HTTP_ADDR`` names one, else None."""
    addr = os.environ.get("CONSUL_HTTP_ADDR", "")
    if not addr:
        return None
    return addr if "://" in addr else f"http://{addr}"


@pytest.fixture
def consul_server() -> Iterator[ConsulEmulator | None]:
    """The emulator serving this test, or None when a real Consul is used."""
    if real_consul():
        yield None
        return
    with ConsulEmulator(("127.0.0.1", 0), session_ttl_min=EMULATOR_SESSION_TTL_MIN) as server:
        yield server


@pytest.fixture
def consul_url(consul_server: ConsulEmulator | None) -> str:
    """``http://host:port`` of the Consul this test talks to."""
    return real_consul() or consul_server.url  # type: ignore[union-attr]


@pytest.fixture
def consul_emulator(consul_server: ConsulEmulator | None) -> ConsulEmulator:
    if consul_server is None:
        pytest.skip("needs the emulator's controls; CONSUL_HTTP_ADDR points at a real Consul")
    return consul_server


@pytest.fixture
def consul_prefix(consul_url: str) -> Iterator[str]:
    """A KV prefix of this test's own; on a real Consul its keys and services go afterwards."""
    prefix = f"portctl-test-{secrets.token_hex(4)}/"
    yield prefix
    if real_consul():
        _clean(consul_url, prefix)


@pytest.fixture
def consul_store_url(consul_url: str, consul_prefix: str) -> str:
    """The portctl store URL for this test's Consul and prefix."""
    parts = urlsplit(consul_url)
    scheme = "consul+https" if parts.scheme == "https" else "consul"
    return f"{scheme}://{parts.netloc}/{consul_prefix}"


def _clean(url: str, prefix: str) -> None:
    headers = (
        {"X-Consul-Token": os.environ["CONSUL_HTTP_TOKEN"]} if os.environ.get("CONSUL_HTTP_TOKEN") else {}
    )

    def call(method: str, path: str) -> bytes:
        request = urllib.request.Request(url + path, method=method, headers=headers)  # noqa: S310 - our Consul
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the test's own Consul
            return response.read()

    services = json.loads(call("GET", "/v1/agent/services"))
    for service_id, service in services.items():
        if (service.get("Meta") or {}).get("portctl-prefix") == prefix:
            call("PUT", f"/v1/agent/service/deregister/{service_id}")
    call("DELETE", f"/v1/kv/{prefix}?recurse")
