"""Leased registrations on the JSON file and on etcd: renewal, re-writing after a lapse,
dropping a lease, and writes whose answer was lost."""

from __future__ import annotations

import time

import pytest

from portctl.backends import Create, Put, open_store
from portctl.config.settings import Settings
from portctl.operations.migrate import migrate
from portctl.registry.entries import CheckSpec, Registry
from tests.conftest import free_port

SETTINGS = Settings(host="lease-host")
ENTRY = "registry/production/api/{id}/entry"


@pytest.fixture(params=["file", "etcd"])
def store(request, tmp_path):
    url = f"file://{tmp_path}/store.json" if request.param == "file" else request.getfixturevalue("etcd_url")
    with open_store(url) as s:
        yield s


def test_re_registering_without_a_lease_drops_the_lease(store):
    registry = Registry(store, SETTINGS)
    port = free_port()
    first = registry.register("api", port=port, check=CheckSpec("none"), lease=2)
    registry.register("api", port=port, check=CheckSpec("none"))
    time.sleep(3.5)
    assert store.get(ENTRY.format(id=first.entry.id)) is not None
    assert [i.entry.lease for i in registry.instances("api")] == [None]


def test_keep_alive_renews_and_rewrites_only_when_told(store):
    registry = Registry(store, SETTINGS)
    instance = registry.register("api", port=free_port(), check=CheckSpec("none"), lease=2)
    key = ENTRY.format(id=instance.entry.id)
    for _ in range(3):
        assert registry.keep_alive(instance) is False  # renewed
        time.sleep(1)
    assert store.get(key) is not None  # 3 s after registering with a 2 s lease
    registry.deregister(instance.entry.id)
    assert registry.keep_alive(instance, rewrite=False) is None  # gone on purpose: let go
    assert store.get(key) is None
    assert registry.keep_alive(instance) is True  # a keeper that knows the lease lapsed
    assert store.get(key) is not None


def test_a_failed_migration_takes_back_what_it_wrote(store, tmp_path):
    registry = Registry(store, SETTINGS)
    registry.register("api", port=free_port(), check=CheckSpec("none"))
    with open_store(f"file://{tmp_path}/target.json") as target:
        # Another writer puts a key the source also has into the target after migrate() found it
        # empty: the second batch cannot create it, so the migration fails and takes back the
        # first batch, leaving the target as the other writer left it.
        for i in range(70):
            store.create(f"zz/filler/{i:03d}", "x")
        with open_store(f"file://{tmp_path}/target.json") as other:
            other.create("zz/filler/069", "someone else's")
            with pytest.raises(Exception, match="taken back"):
                # the target is not empty now, so bypass the emptiness check the way a race would
                migrate_into_racing_target(store, target)
        assert [e.key for e in target.list("")] == ["zz/filler/069"]


def migrate_into_racing_target(source, target):
    """Run migrate() as if the conflicting key appeared after its emptiness check."""
    real_list = target.list
    calls = {"n": 0}

    def list_once_empty(prefix=""):
        calls["n"] += 1
        return [] if calls["n"] == 1 else real_list(prefix)

    target.list = list_once_empty
    try:
        return migrate(source, target)
    finally:
        del target.list


def test_a_write_whose_answer_was_lost_is_not_reported_as_a_conflict(etcd_url):
    """The txn lands but its answer never arrives; the retry then fails its own condition.
    The store must see that the write landed instead of reporting a conflict."""
    from portctl.errors import StoreTimeout

    with open_store(etcd_url) as store:
        connection = store._connection
        real_once = connection.once
        dropped: list[str] = []

        def lose_first_txn_answer(path, body):
            answer = real_once(path, body)
            if path == "/kv/txn" and not dropped:
                dropped.append(path)
                raise StoreTimeout("answer lost after the txn was applied")
            return answer

        connection.once = lose_first_txn_answer
        made = store.transact([Create("lost/a", "1", ttl=5)])
        assert made["lost/a"].value == "1"
        assert dropped == ["/kv/txn"]
        dropped.clear()
        moved = store.transact([Put("lost/a", "2", made["lost/a"].version)])
        assert moved["lost/a"].value == "2"
        assert dropped == ["/kv/txn"]
        time.sleep(1)
        got = store.get("lost/a")
        assert got is not None
        assert got.value == "2"  # and its lease was not revoked


def test_the_agent_keeps_trying_to_restore_a_lapsed_lease(store):
    """The agent finds a lease that ran out while it was away, but the store fails on the first
    try to restore it: the next pass must still restore it."""
    from portctl.errors import StoreUnavailable
    from portctl.registry.agent import Agent

    registry = Registry(store, SETTINGS)
    instance = registry.register("api", port=free_port(), check=CheckSpec("none"), lease=2)
    agent = Agent(registry, zombie_grace=3600)
    agent.run_once()  # renews, and remembers the entry
    time.sleep(3.5)  # the agent is away for longer than the lease
    assert store.get(ENTRY.format(id=instance.entry.id)) is None
    real_keep_alive = registry.keep_alive
    failures = []

    def failing_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise StoreUnavailable("the store is unreachable for a moment")
        return real_keep_alive(*args, **kwargs)

    registry.keep_alive = failing_once
    with pytest.raises(StoreUnavailable):
        agent.run_once()
    report = agent.run_once()
    assert report.rewritten == [instance.entry.id]
    assert store.get(ENTRY.format(id=instance.entry.id)) is not None
