"""The contract every store keeps. Subclass and provide a ``store_url`` fixture."""

from __future__ import annotations

import collections
import multiprocessing
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from portctl.backends import Capability, Create, Delete, Expect, Put, Store, open_store
from portctl.errors import InvalidInput, KeyExists, NotFound, VersionConflict
from portctl.keys import allocations_prefix, claims_prefix
from portctl.testing import _workers

RACERS = 6


def _race(target: Callable[..., Any], args_for: Callable[[int], tuple[Any, ...]], n: int) -> list[Any]:
    """Run ``n`` processes that start at one signal; their return values, in worker order."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(n) as pool:
            pending = [pool.apply_async(target, (*args_for(i), start)) for i in range(n)]
            time.sleep(0.5)  # let every worker open its store and wait at the line
            start.set()
            return [p.get(timeout=240) for p in pending]


class StoreContract:
    """Behaviour every portctl store must show. ``ttl`` may be raised for engines with a
    minimum lease; ``ttl_wait`` is how long past expiry to wait before checking."""

    ttl: float = 1.0
    ttl_wait: float = 1.5

    @pytest.fixture
    def store_url(self) -> Iterator[str]:
        raise NotImplementedError("a StoreContract subclass must provide a store_url fixture")

    @pytest.fixture
    def store(self, store_url: str) -> Iterator[Store]:
        store = open_store(store_url)
        yield store
        store.close()

    # Reading and writing -------------------------------------------------------------

    def test_missing_key_reads_as_none(self, store: Store) -> None:
        assert store.get("contract/missing") is None

    def test_create_then_get_returns_value_and_version(self, store: Store) -> None:
        made = store.create("contract/a", "one")
        got = store.get("contract/a")
        assert got is not None
        assert (got.value, got.version) == ("one", made.version)

    def test_create_if_absent_refuses_existing_key_and_keeps_value(self, store: Store) -> None:
        store.create("contract/a", "one")
        with pytest.raises(KeyExists):
            store.create("contract/a", "two")
        got = store.get("contract/a")
        assert got is not None
        assert got.value == "one"

    def test_compare_and_set_with_current_version_writes_new_version(self, store: Store) -> None:
        first = store.create("contract/a", "one")
        second = store.compare_and_set("contract/a", "two", first.version)
        assert second.version != first.version
        got = store.get("contract/a")
        assert got is not None
        assert (got.value, got.version) == ("two", second.version)

    def test_compare_and_set_with_stale_version_conflicts(self, store: Store) -> None:
        first = store.create("contract/a", "one")
        store.compare_and_set("contract/a", "two", first.version)
        with pytest.raises(VersionConflict):
            store.compare_and_set("contract/a", "three", first.version)
        got = store.get("contract/a")
        assert got is not None
        assert got.value == "two"

    def test_compare_and_set_on_missing_key_conflicts(self, store: Store) -> None:
        with pytest.raises(VersionConflict):
            store.compare_and_set("contract/none", "x", "1")
        assert store.get("contract/none") is None

    def test_delete_if_version(self, store: Store) -> None:
        first = store.create("contract/a", "one")
        second = store.compare_and_set("contract/a", "two", first.version)
        with pytest.raises(VersionConflict):
            store.delete("contract/a", first.version)
        assert store.get("contract/a") is not None
        store.delete("contract/a", second.version)
        assert store.get("contract/a") is None

    def test_unconditional_delete_of_missing_key_is_quiet(self, store: Store) -> None:
        store.delete("contract/never")
        assert store.get("contract/never") is None

    def test_list_by_prefix_is_sorted_and_bounded(self, store: Store) -> None:
        for key in ("contract/b/2", "contract/b/1", "contract/bc/1", "contract/c"):
            store.create(key, key)
        assert [e.key for e in store.list("contract/b/")] == ["contract/b/1", "contract/b/2"]
        assert [e.key for e in store.list("contract/")] == [
            "contract/b/1",
            "contract/b/2",
            "contract/bc/1",
            "contract/c",
        ]

    def test_invalid_keys_are_refused(self, store: Store) -> None:
        for bad in ("", "/abs", "a//b", "a/../b", "../x", "a/./b", "a b", "trailing/"):
            with pytest.raises(InvalidInput):
                store.create(bad, "x")
        assert store.list("") == []

    # Transactions ----------------------------------------------------------------------

    def test_transaction_applies_all(self, store: Store) -> None:
        a = store.create("contract/a", "1")
        written = store.transact(
            [Put("contract/a", "2", a.version), Create("contract/b", "1"), Delete("contract/x")]
        )
        assert set(written) == {"contract/a", "contract/b"}
        assert [(e.key, e.value) for e in store.list("contract/")] == [
            ("contract/a", "2"),
            ("contract/b", "1"),
        ]

    def test_transaction_is_all_or_nothing(self, store: Store) -> None:
        a = store.create("contract/a", "1")
        store.create("contract/taken", "x")
        with pytest.raises(KeyExists):
            store.transact([Put("contract/a", "2", a.version), Create("contract/taken", "y")])
        got = store.get("contract/a")
        assert got is not None
        assert (got.value, got.version) == ("1", a.version)

    def test_check_operation_guards_a_transaction(self, store: Store) -> None:
        guard = store.create("contract/guard", "g")
        store.transact([Expect("contract/guard", guard.version), Create("contract/a", "1")])
        store.compare_and_set("contract/guard", "h", guard.version)
        with pytest.raises(VersionConflict):
            store.transact([Expect("contract/guard", guard.version), Create("contract/b", "1")])
        with pytest.raises(VersionConflict):
            store.transact([Expect("contract/absent-no-more", None), Expect("contract/guard", None)])
        assert store.get("contract/b") is None

    # TTL -------------------------------------------------------------------------------

    def test_entry_with_ttl_expires(self, store: Store) -> None:
        if Capability.TTL not in store.capabilities:
            pytest.skip("this store declares no TTL support")
        store.create("contract/short", "x", ttl=self.ttl)
        store.create("contract/long", "y")
        time.sleep(self.ttl + self.ttl_wait)
        assert store.get("contract/short") is None
        assert [e.key for e in store.list("contract/")] == ["contract/long"]
        store.create("contract/short", "again")  # the key is free once expired

    def test_refresh_keeps_an_entry_alive(self, store: Store) -> None:
        if Capability.TTL not in store.capabilities:
            pytest.skip("this store declares no TTL support")
        store.create("contract/kept", "x", ttl=self.ttl * 2)
        deadline = time.monotonic() + self.ttl * 2 + self.ttl_wait
        while time.monotonic() < deadline:
            store.refresh("contract/kept")
            time.sleep(self.ttl / 2)
        assert store.get("contract/kept") is not None
        with pytest.raises(NotFound):
            store.refresh("contract/never-made")

    def test_compare_and_set_without_ttl_keeps_the_ttl(self, store: Store) -> None:
        if Capability.TTL not in store.capabilities:
            pytest.skip("this store declares no TTL support")
        first = store.create("contract/leased", "x", ttl=self.ttl)
        store.compare_and_set("contract/leased", "y", first.version)
        got = store.get("contract/leased")
        assert got is not None
        assert got.value == "y"
        time.sleep(self.ttl + self.ttl_wait)
        assert store.get("contract/leased") is None

    def test_compare_and_set_can_drop_the_ttl(self, store: Store) -> None:
        if Capability.TTL not in store.capabilities:
            pytest.skip("this store declares no TTL support")
        first = store.create("contract/leased", "x", ttl=self.ttl)
        store.transact([Put("contract/leased", "y", first.version, keep_ttl=False)])
        time.sleep(self.ttl + self.ttl_wait)
        got = store.get("contract/leased")
        assert got is not None
        assert got.value == "y"

    # Change feed -----------------------------------------------------------------------

    def test_watch_reports_puts_and_deletes_after_a_position(self, store: Store) -> None:
        """A feed may answer with state rather than a history (Consul's blocking queries): a key
        created and deleted after the position may not show at all, or show as put then
        delete. A key that existed at the position and is deleted after it must show."""
        if Capability.WATCH not in store.capabilities:
            pytest.skip("this store declares no change feed")
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
        while not {("delete", "contract/w/gone"), ("put", "contract/w/b")} <= set(seen):
            assert time.monotonic() < deadline, f"saw only {seen}"
            batch = store.watch("contract/w/", position, timeout=2)
            assert not batch.reset
            seen += [(c.kind, c.key) for c in batch.changes]
            position = batch.position
        assert ("put", "contract/w/a") not in seen or ("delete", "contract/w/a") in seen
        assert all(key.startswith("contract/w/") for _, key in seen)

    def test_snapshot_then_watch_sees_only_later_changes(self, store: Store) -> None:
        if Capability.WATCH not in store.capabilities:
            pytest.skip("this store declares no change feed")
        store.create("contract/s/a", "1")
        entries, position = store.snapshot("contract/s/")
        assert [(e.key, e.value) for e in entries] == [("contract/s/a", "1")]
        store.create("contract/s/b", "2")
        batch = store.watch("contract/s/", position, timeout=5)
        assert [(c.kind, c.key) for c in batch.changes] == [("put", "contract/s/b")]

    def test_watch_times_out_with_no_changes(self, store: Store) -> None:
        if Capability.WATCH not in store.capabilities:
            pytest.skip("this store declares no change feed")
        position = store.position()
        batch = store.watch("contract/", position, timeout=0.3)
        assert batch.changes == ()
        assert not batch.reset

    # Races between processes -------------------------------------------------------------

    def test_processes_racing_on_create_if_absent_have_one_winner(self, store_url: str, store: Store) -> None:
        wins = _race(_workers.create_once, lambda i: (store_url, "contract/race", i), RACERS)
        assert wins.count(True) == 1
        got = store.get("contract/race")
        assert got is not None
        assert f'"worker": {wins.index(True)}' in got.value

    def test_processes_racing_on_compare_and_set_lose_no_update(self, store_url: str, store: Store) -> None:
        store.create("contract/counter", "0")
        per_worker = 25
        written = _race(_workers.increment, lambda i: (store_url, "contract/counter", per_worker), RACERS)
        values = [v for worker in written for v in worker]
        got = store.get("contract/counter")
        assert got is not None
        assert int(got.value) == RACERS * per_worker  # no lost update
        assert sorted(values) == list(range(1, RACERS * per_worker + 1))  # no doubled update

    def test_allocators_racing_never_share_a_port(self, store_url: str, store: Store) -> None:
        per_worker = 30
        ports = _race(_workers.allocate_many, lambda i: (store_url, i, per_worker, "contract-host"), RACERS)
        flat = [p for worker in ports for p in worker]
        doubled = [p for p, n in collections.Counter(flat).items() if n > 1]
        assert doubled == []
        records = store.list(allocations_prefix("contract-host", "production"))
        claims = store.list(claims_prefix("contract-host", "tcp"))
        assert len(records) == len(claims) == RACERS * per_worker

    def test_allocators_racing_for_the_same_services_agree_on_their_ports(
        self, store_url: str, store: Store
    ) -> None:
        count = 20
        told = _race(_workers.allocate_same, lambda i: (store_url, count, "contract-host"), RACERS)
        for n in range(count):
            assert len({worker[n] for worker in told}) == 1, f"callers disagree on shared-{n}"
        records = store.list(allocations_prefix("contract-host", "production"))
        claims = store.list(claims_prefix("contract-host", "tcp"))
        assert sorted(c.key.rsplit("/", 1)[1] for c in claims) == sorted(str(p) for p in told[0])
        assert len(records) == count
