"""The Consul store: the shared contract on the emulator (or a real Consul)."""

from __future__ import annotations

import time

import pytest

from portctl.backends import Store
from portctl.testing import StoreContract
from tests.consul_fixture import real_consul


class TestConsulStore(StoreContract):
    # A real Consul refuses session TTLs under 10s and expires a session at up to twice its TTL.
    ttl = 10.0 if real_consul() else 1.0
    ttl_wait = 12.0 if real_consul() else 1.5

    @pytest.fixture
    def store_url(self, consul_store_url):
        return consul_store_url

    def test_watch_reports_puts_and_deletes_after_a_position(self, store: Store) -> None:
        """Consul's blocking queries answer with state, not a history of events: a key created
        and deleted between two answers was never visible, so it may not show at all. A key that
        existed at the position and is deleted after it must show as deleted."""
        store.create("contract/before", "old")
        gone = store.create("contract/w/gone", "0")
        position = store.position()
        a = store.create("contract/w/a", "1")
        store.create("other/ignored", "1")
        store.delete("contract/w/a", a.version)
        store.delete("contract/w/gone", gone.version)
        store.create("contract/w/b", "2")
        seen: list[tuple[str, str]] = []
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            batch = store.watch("contract/w/", position, timeout=2)
            assert not batch.reset
            seen += [(c.kind, c.key) for c in batch.changes]
            position = batch.position
        assert ("delete", "contract/w/gone") in seen
        assert ("put", "contract/w/b") in seen
        assert ("put", "contract/w/a") not in seen or ("delete", "contract/w/a") in seen
        assert all(key.startswith("contract/w/") for _, key in seen)
