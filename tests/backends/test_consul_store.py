"""The Consul store under lost replies, leases and close(), as a user of the store sees it."""

from __future__ import annotations

import json
import time

import consul
import pytest

from portctl.backends import open_store
from portctl.backends.base import Create
from portctl.backends.consul import ConsulStore
from portctl.config.settings import Settings
from portctl.discovery import ServiceDiscovery
from portctl.errors import StoreUnavailable, VersionConflict
from portctl.registry.entries import CheckSpec, Registry
from tests.support.consul_fixture import real_consul

SETTINGS = Settings(host="test-host")
# The shortest session TTL accepted (the emulator's is lowered); Consul expires a session at up
# to twice its TTL.
LEASE = 10.0 if real_consul() else 1.0


def wait_for(read, until, timeout: float = LEASE * 3 + 10):
    deadline = time.monotonic() + timeout
    value = read()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def raw_client(url: str) -> consul.Consul:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return consul.Consul(host=host, port=int(port), connections_timeout=10)


@pytest.fixture
def store(consul_store_url):
    with open_store(consul_store_url) as s:
        yield s


@pytest.fixture
def registry(store):
    return Registry(store, SETTINGS)


def entry_json(instance: str, port: int, lease: float | None = None) -> str:
    entry = {
        "id": instance,
        "service": "api",
        "environment": "production",
        "host": "test-host",
        "address": "127.0.0.1",
        "port": port,
        "check": {"kind": "none"},
        "lease": lease,
    }
    return json.dumps(entry)


# A write whose reply was lost --------------------------------------------------------------


def test_a_cutover_whose_reply_was_lost_is_reported_as_won(store, consul_emulator):
    key = "bluegreen/production/api/active"
    consul_emulator.drop_next_reply("/v1/txn")
    created = store.create(key, json.dumps({"color": "blue"}))
    assert json.loads(created.value) == {"color": "blue"}
    consul_emulator.drop_next_reply("/v1/txn")
    flipped = store.compare_and_set(key, json.dumps({"color": "green"}), created.version)
    assert json.loads(flipped.value) == {"color": "green"}
    assert store.get(key) == flipped


def test_a_lost_reply_still_loses_to_a_real_conflict(store, consul_emulator):
    key = "bluegreen/production/api/active"
    first = store.create(key, json.dumps({"color": "blue"}))
    store.compare_and_set(key, json.dumps({"color": "green"}), first.version)
    consul_emulator.drop_next_reply("/v1/txn")
    with pytest.raises(VersionConflict, match=key):
        store.compare_and_set(key, json.dumps({"color": "red"}), first.version)
    assert json.loads(store.get(key).value) == {"color": "green"}


def test_a_leased_registration_whose_reply_was_lost_keeps_its_lease_and_service(
    store, consul_emulator, consul_url
):
    ekey, hkey = "registry/production/api/api-1/entry", "registry/production/api/api-1/health"
    health = json.dumps({"status": "passing", "output": "no check"})
    consul_emulator.drop_next_reply("/v1/txn")
    written = store.transact(
        [Create(ekey, entry_json("api-1", 18001, 30.0), ttl=30.0), Create(hkey, health, ttl=30.0)]
    )
    assert set(written) == {ekey, hkey}
    assert store.get(ekey).ttl == 30.0
    store.refresh(ekey)  # its session was kept: the lease can be renewed
    assert "api-1" in raw_client(consul_url).agent.services()


def test_a_write_whose_outcome_stays_unknown_keeps_its_lease(store, consul_emulator, consul_url):
    ekey = "registry/production/api/api-1/entry"
    consul_emulator.drop_next_reply("/v1/txn")
    consul_emulator.drop_next_reply("/v1/txn")  # the retry's answer is lost too
    with pytest.raises(StoreUnavailable):
        store.create(ekey, entry_json("api-1", 18001, 30.0), ttl=30.0)
    # It landed: nothing was taken back behind the caller's back.
    landed = store.get(ekey)
    assert (json.loads(landed.value)["id"], landed.ttl) == ("api-1", 30.0)
    store.refresh(ekey)
    assert "api-1" in raw_client(consul_url).agent.services()


# Leases ---------------------------------------------------------------------------------


def test_reregistering_without_a_lease_drops_it(registry, store, consul_url):
    registry.register("api", port=18001, instance_id="api-1", check=CheckSpec("none"), lease=LEASE)
    registry.register("api", port=18001, instance_id="api-1", check=CheckSpec("none"))
    assert store.get("registry/production/api/api-1/entry").ttl is None
    assert "portctl-lease:api-1" not in raw_client(consul_url).agent.checks()
    time.sleep(LEASE * 2 + 1)  # past the old lease, had it been kept
    (instance,) = registry.instances("api")
    assert (instance.entry.id, instance.entry.lease, instance.status.value) == ("api-1", None, "passing")


def test_a_lease_that_ran_out_turns_the_consul_service_critical(registry, store, consul_url, tmp_path):
    registry.register("api", port=18001, instance_id="api-1", check=CheckSpec("none"), lease=LEASE)
    raw = raw_client(consul_url)
    lease_check = raw.agent.checks()["portctl-lease:api-1"]
    assert (lease_check["Status"], lease_check["ServiceID"]) == ("passing", "api-1")
    resolver = ServiceDiscovery(store, settings=SETTINGS, cache_file=str(tmp_path / "cache.json"))
    try:
        assert resolver.get_service_url("api") == "http://127.0.0.1:18001"

        def health_of_api_1():
            nodes = raw.health.service("api")[1]
            return {c["CheckID"]: c for c in nodes[0]["Checks"]} if nodes else {}

        # Nobody renews the lease: Consul itself marks the instance critical, and keeps it
        # registered until its reaper removes it after DeregisterCriticalServiceAfter.
        checks = wait_for(health_of_api_1, lambda c: c["portctl-lease:api-1"]["Status"] != "passing")
        assert checks["portctl-lease:api-1"]["Status"] == "critical"
        assert "TTL expired" in checks["portctl-lease:api-1"]["Output"]
        assert raw.health.service("api", passing=True)[1] == []
        assert "api" not in wait_for(resolver.get_all_services, lambda s: "api" not in s)
    finally:
        resolver.close()


def test_renewing_a_lease_keeps_the_consul_service_passing(registry, consul_url):
    instance = registry.register("api", port=18001, instance_id="api-1", check=CheckSpec("none"), lease=LEASE)
    raw = raw_client(consul_url)
    for _ in range(8):  # two and a half leases
        time.sleep(LEASE / 3)
        assert registry.keep_alive(instance, rewrite=False) is False
    assert [n["Service"]["ID"] for n in raw.health.service("api", passing=True)[1]] == ["api-1"]


def test_a_keeper_that_finds_its_lease_gone_deregisters_the_consul_service(registry, store, consul_url):
    instance = registry.register("api", port=18001, instance_id="api-1", check=CheckSpec("none"), lease=LEASE)
    raw = raw_client(consul_url)
    assert wait_for(lambda: store.get("registry/production/api/api-1/entry"), lambda e: e is None) is None
    assert "api-1" in raw.agent.services()  # Consul would keep it until its reaper runs
    assert registry.keep_alive(instance, rewrite=False) is None
    assert "api-1" not in raw.agent.services()
    assert raw.health.service("api")[1] == []


def test_a_lapsed_lease_rewritten_by_its_keeper_is_passing_again(registry, store, consul_url):
    instance = registry.register("api", port=18001, instance_id="api-1", check=CheckSpec("none"), lease=LEASE)
    raw = raw_client(consul_url)
    assert wait_for(lambda: store.get("registry/production/api/api-1/entry"), lambda e: e is None) is None
    assert registry.keep_alive(instance, rewrite=True) is True
    assert [n["Service"]["ID"] for n in raw.health.service("api", passing=True)[1]] == ["api-1"]
    assert raw.agent.checks()["portctl-lease:api-1"]["Status"] == "passing"


# close() -------------------------------------------------------------------------------------


def test_close_leaves_no_connection_to_consul_open(consul_store_url, consul_emulator, tmp_path):
    store = ConsulStore.from_url(consul_store_url)
    Registry(store, SETTINGS).register("api", port=18001, check=CheckSpec("none"))
    resolver = ServiceDiscovery(store, settings=SETTINGS, cache_file=str(tmp_path / "cache.json"))
    assert resolver.get_service_url("api") == "http://127.0.0.1:18001"
    store.watch("", store.position(), timeout=0.2)  # the change feed is running
    assert len(consul_emulator.connections()) >= 3  # reads, and the feed's two blocking queries
    resolver.close()
    store.close()
    # A blocking query in flight ends within its wait; then nothing of this store stays open.
    assert wait_for(consul_emulator.connections, lambda c: c == [], timeout=20) == []
    with pytest.raises(StoreUnavailable, match="closed"):
        store.watch("", store.position(), timeout=0.2)
