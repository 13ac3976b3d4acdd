"""The registry contract (portctl.testing.RegistryContract) on every store portctl ships."""

from __future__ import annotations

import pytest

from portctl.testing import RegistryContract
from tests.support.consul_fixture import real_consul


class TestJsonFileRegistry(RegistryContract):
    @pytest.fixture
    def store_url(self, tmp_path):
        return f"file://{tmp_path}/store.json"


class TestEtcdRegistry(RegistryContract):
    ttl = 2.0  # etcd's minimum lease is about 1.5 s with the test cluster's timings
    ttl_wait = 2.0

    @pytest.fixture
    def store_url(self, etcd_url):
        return etcd_url


class TestConsulRegistry(RegistryContract):
    # A real Consul refuses session TTLs under 10s and expires a session at up to twice its TTL.
    ttl = 10.0 if real_consul() else 1.0
    ttl_wait = 12.0 if real_consul() else 1.5

    @pytest.fixture
    def store_url(self, consul_store_url):
        return consul_store_url
