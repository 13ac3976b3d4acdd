"""The etcd store on a real etcd: the shared contract, then what only etcd can get wrong."""

from __future__ import annotations

import pytest

from portctl.testing import StoreContract


class TestEtcdStore(StoreContract):
    ttl = 2.0  # etcd's minimum lease is about 1.5 s with the test cluster's timings
    ttl_wait = 2.0

    @pytest.fixture
    def store_url(self, etcd_url):
        return etcd_url
