"""The Consul store: the shared contract on the emulator (or a real Consul)."""

from __future__ import annotations

import pytest

from portctl.testing import StoreContract
from tests.support.consul_fixture import real_consul


class TestConsulStore(StoreContract):
    # A real Consul refuses session TTLs under 10s and expires a session at up to twice its TTL.
    ttl = 10.0 if real_consul() else 1.0
    ttl_wait = 12.0 if real_consul() else 1.5

    @pytest.fixture
    def store_url(self, consul_store_url):
        return consul_store_url
