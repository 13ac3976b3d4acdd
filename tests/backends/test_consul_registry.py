"""Registrations on Consul as a user sees them: real agent services with checks Consul runs,
health from Consul, resolvers following blocking queries, migration, and bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import consul
import pytest

from portctl.backends import open_store
from portctl.backends.consul import ConsulStore
from portctl.backends.file import JsonFileStore
from portctl.config.settings import Settings
from portctl.discovery import ServiceDiscovery
from portctl.errors import InvalidInput, StoreCorrupt, StoreDenied, StoreTimeout, StoreUnavailable
from portctl.operations.migrate import migrate
from portctl.ports.allocator import PortAllocator
from portctl.registry.entries import CheckSpec, Registry, Status
from tests.support.consul_emulator import ConsulEmulator

SETTINGS = Settings(host="test-host")
PORTCTL = os.path.join(os.path.dirname(sys.executable), "portctl")


def wait_for(read, until, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    value = read()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def raw_client(url: str, token: str | None = None) -> consul.Consul:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return consul.Consul(host=host, port=int(port), token=token, connections_timeout=10)


def run_cli(*args: object, store: str, tmp_path, env: dict[str, str] | None = None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PORTCTL_", "CONSUL_"))}
    environ.update(
        {"PORTCTL_STORE": store, "PORTCTL_HOST": "test-host", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    )
    environ.update(env or {})
    return subprocess.run(
        [PORTCTL, *(str(a) for a in args)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def store(consul_store_url):
    with open_store(consul_store_url) as s:
        yield s


@pytest.fixture
def registry(store):
    return Registry(store, SETTINGS)


@pytest.fixture
def listening():
    s = socket.create_server(("127.0.0.1", 0))
    yield s
    s.close()


# Registrations are Consul services ---------------------------------------------------------


def test_a_registration_is_a_consul_service_with_its_health(registry, store, consul_url, listening):
    port = listening.getsockname()[1]
    registry.register("api", port=port, tags=["blue"], meta={"scheme": "http"}, check=CheckSpec("tcp"))
    raw = raw_client(consul_url)
    _, names = raw.catalog.services()
    assert names["api"] == ["blue"]
    found = wait_for(lambda: raw.health.service("api", passing=True)[1], lambda nodes: len(nodes) == 1)
    service = found[0]["Service"]
    assert (service["ID"], service["Port"], service["Tags"]) == (f"api-test-host-{port}", port, ["blue"])
    assert service["Meta"]["scheme"] == "http"
    assert service["Meta"]["portctl-env"] == "production"
    check = next(c for c in found[0]["Checks"] if c["ServiceID"])
    assert check["Definition"]["TCP"] == f"127.0.0.1:{port}"
    (instance,) = registry.instances("api")
    assert instance.status == Status.PASSING


def test_an_entry_reads_back_as_written_and_deregistering_removes_the_service(registry, store, consul_url):
    registry.register("web", port=18080, check=CheckSpec("none"))
    (instance,) = registry.instances("web")
    stored = store.get(f"registry/production/web/{instance.entry.id}/entry")
    assert json.loads(stored.value) == instance.entry.to_dict()
    raw = raw_client(consul_url)
    assert "web" in raw.catalog.services()[1]
    registry.deregister(instance.entry.id)
    assert "web" not in raw.catalog.services()[1]
    assert store.list("registry/") == []


def test_a_consul_run_tcp_check_turns_critical_when_the_backend_stops(registry, listening):
    port = listening.getsockname()[1]
    registry.register("db", port=port, check=CheckSpec("tcp", interval=0.2, timeout=0.5))
    assert (
        wait_for(lambda: registry.instances("db")[0].status, lambda s: s == Status.PASSING) == Status.PASSING
    )
    listening.close()
    found = wait_for(lambda: registry.instances("db")[0], lambda i: i.status == Status.CRITICAL)
    assert found.status == Status.CRITICAL
    assert f"127.0.0.1:{port}" in found.health.output


def test_a_consul_run_http_check_maps_status_codes(registry, http_server):
    port = http_server.server_address[1]
    check = CheckSpec("http", url=f"http://127.0.0.1:{port}/health", interval=0.2, timeout=1.0)
    registry.register("web", port=port, check=check)
    assert (
        wait_for(lambda: registry.instances("web")[0].status, lambda s: s == Status.PASSING) == Status.PASSING
    )
    http_server.behaviour.code = 429
    assert (
        wait_for(lambda: registry.instances("web")[0].status, lambda s: s == Status.WARNING) == Status.WARNING
    )
    http_server.behaviour.code = 503
    found = wait_for(lambda: registry.instances("web")[0], lambda i: i.status == Status.CRITICAL)
    assert found.status == Status.CRITICAL
    assert "503" in found.health.output


def test_a_ttl_check_is_passed_with_portctl_ttl_and_expires(consul_store_url, tmp_path, consul_url):
    register = run_cli(
        "register",
        "worker",
        "--port",
        17001,
        "--check",
        "ttl:2s",
        "--json",
        store=consul_store_url,
        tmp_path=tmp_path,
    )
    assert register.returncode == 0, register.stderr
    instance = json.loads(register.stdout)["data"]
    assert instance["status"] == "critical"
    passed = run_cli("ttl", "pass", instance["id"], "--json", store=consul_store_url, tmp_path=tmp_path)
    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout)["data"]["status"] == "passing"
    raw = raw_client(consul_url)
    assert [n["Service"]["ID"] for n in raw.health.service("worker", passing=True)[1]] == [instance["id"]]
    with open_store(consul_store_url) as store:
        registry = Registry(store, SETTINGS)
        found = wait_for(lambda: registry.instances("worker")[0], lambda i: i.status == Status.CRITICAL)
    assert found.status == Status.CRITICAL
    assert "TTL expired" in found.health.output


# Discovery through blocking queries ---------------------------------------------------------


@pytest.fixture
def discovery(store, tmp_path):
    made: list[ServiceDiscovery] = []

    def make(**options) -> ServiceDiscovery:
        found = ServiceDiscovery(store, settings=SETTINGS, cache_file=str(tmp_path / "cache.json"), **options)
        made.append(found)
        return found

    yield make
    for found in made:
        found.close()


def test_discovery_follows_a_reregistration(registry, discovery):
    registry.register("api", port=18001, instance_id="api-1", check=CheckSpec("none"))
    resolver = discovery()
    assert resolver.get_service_url("api") == "http://127.0.0.1:18001"
    registry.register("api", port=18002, instance_id="api-1", check=CheckSpec("none"))
    assert (
        wait_for(lambda: resolver.get_service_url("api"), lambda u: u.endswith(":18002"))
        == "http://127.0.0.1:18002"
    )


def test_discovery_follows_health_that_consul_measures(registry, discovery, listening):
    port = listening.getsockname()[1]
    registry.register("db", port=port, check=CheckSpec("tcp", interval=0.2, timeout=0.5))
    resolver = discovery()
    assert wait_for(resolver.get_all_services, lambda s: "db" in s)["db"].endswith(f":{port}")
    listening.close()
    assert "db" not in wait_for(resolver.get_all_services, lambda s: "db" not in s)


def test_an_index_that_goes_backwards_resets_the_watch_and_discovery_keeps_following(
    registry, store, discovery, consul_emulator
):
    registry.register("api", port=18001, instance_id="api-1", check=CheckSpec("none"))
    resolver = discovery()
    position = store.position()
    assert store.watch("", position, timeout=0.5).changes == ()
    consul_emulator.state.reset_index(1)
    batch = wait_for(lambda: store.watch("", position, timeout=0.5), lambda b: b.reset)
    assert batch.reset
    registry.register("api", port=18003, instance_id="api-1", check=CheckSpec("none"))
    assert wait_for(lambda: resolver.get_service_url("api"), lambda u: u.endswith(":18003")).endswith(
        ":18003"
    )


def test_reads_fall_back_to_stale_without_a_leader(registry, store, discovery, consul_emulator):
    registry.register("api", port=18001, instance_id="api-1", check=CheckSpec("none"))
    resolver = discovery()
    consul_emulator.state.set_leader(False)
    assert [i.entry.id for i in registry.instances("api")] == ["api-1"]
    assert store.stale_reads > 0
    with pytest.raises(StoreUnavailable, match="No cluster leader"):
        store.create("color/api", "blue")
    assert resolver.get_service_url("api") == "http://127.0.0.1:18001"
    assert resolver.stale is None  # stale reads still answer: the resolver is not cut off
    consul_emulator.state.set_leader(True)
    store.create("color/api", "blue")


# Migration to and from Consul ----------------------------------------------------------------


def test_migrate_a_json_store_to_consul_and_back(tmp_path, consul_store_url, consul_url):
    with JsonFileStore(str(tmp_path / "a.json")) as source:
        PortAllocator(source, SETTINGS).allocate("redis", port=16380)
        Registry(source, SETTINGS).register("redis", check=CheckSpec("tcp"), instance_id="redis-1")
        source.create("bluegreen/production/api/active", json.dumps({"color": "blue"}))
        with open_store(consul_store_url) as target:
            report = migrate(source, target)
            assert report.by_kind["registry"] == 2
            nodes = raw_client(consul_url).health.service("redis")[1]
            assert [n["Service"]["ID"] for n in nodes] == ["redis-1"]
            assert nodes[0]["Service"]["Port"] == 16380
            back = JsonFileStore(str(tmp_path / "b.json"))
            migrate(target, back)
            assert {e.key: e.value for e in back.list("") if not e.key.endswith("/health")} == {
                e.key: e.value for e in source.list("") if not e.key.endswith("/health")
            }


# Bad input ---------------------------------------------------------------------------------


def test_a_refused_token_is_store_denied_naming_the_variable_and_never_shown(tmp_path):
    secret = "8f1c2e-wrong-secret-token"  # noqa: S105 - a test token
    with ConsulEmulator(acl_token="the-right-token") as server:  # noqa: S106 - a test token
        url = f"consul://{server.address}/"
        with pytest.raises(StoreDenied, match="CONSUL_HTTP_TOKEN") as denied:
            ConsulStore.from_url(url).list("")
        assert "no token was sent" in str(denied.value)
        result = run_cli("services", store=url, tmp_path=tmp_path, env={"CONSUL_HTTP_TOKEN": secret})
        assert result.returncode == 3
        assert "CONSUL_HTTP_TOKEN" in result.stderr
        assert secret not in result.stderr + result.stdout
        good = run_cli("services", store=url, tmp_path=tmp_path, env={"CONSUL_HTTP_TOKEN": "the-right-token"})
        assert good.returncode == 0, good.stderr


def test_a_token_in_the_url_is_refused_without_showing_it():
    with pytest.raises(InvalidInput) as refused:
        ConsulStore.from_url("consul://127.0.0.1:8500/?token=very-secret")
    assert "very-secret" not in str(refused.value)
    assert "CONSUL_HTTP_TOKEN" in str(refused.value)


def test_no_agent_is_store_unavailable_quickly(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(StoreUnavailable, match="unreachable"):
        ConsulStore.from_url(f"consul://127.0.0.1:{port}").get("a")
    result = run_cli("services", store=f"consul://127.0.0.1:{port}", tmp_path=tmp_path)
    assert result.returncode == 3
    assert f"127.0.0.1:{port}" in result.stderr


def test_an_agent_that_never_answers_times_out_within_the_bound():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        with pytest.raises(StoreTimeout, match="did not answer within 0.5s"):
            ConsulStore.from_url(f"consul://127.0.0.1:{port}?timeout=0.5").get("a")


def test_a_service_name_consul_rejects_is_refused_before_anything_is_written(store, consul_url):
    entry = {
        "id": "x-1",
        "service": "Web.API",
        "environment": "production",
        "host": "h",
        "address": "127.0.0.1",
        "port": 8000,
    }
    key = "registry/production/Web.API/x-1/entry"
    with pytest.raises(InvalidInput, match="Web.API"):
        store.create(key, json.dumps(entry))
    assert store.list("") == []
    assert "Web.API" not in raw_client(consul_url).catalog.services()[1]


def test_meta_consul_reserves_is_refused_by_the_cli(consul_store_url, tmp_path, consul_url):
    result = run_cli(
        "register", "api", "--port", 18001, "--meta", "consul-x=1", store=consul_store_url, tmp_path=tmp_path
    )
    assert result.returncode == 2
    assert "consul-x" in result.stderr
    assert "api" not in raw_client(consul_url).catalog.services()[1]


def test_a_value_someone_else_wrote_under_the_prefix_is_never_overwritten(store, consul_url, consul_prefix):
    key = "allocations/test-host/production/api"
    raw_client(consul_url).kv.put(consul_prefix + key, "written by hand")
    found = store.get(key)
    assert found.value == "written by hand"
    for attempt in (
        lambda: store.compare_and_set(key, "{}", found.version),
        lambda: store.delete(key),
        lambda: store.delete(key, found.version),
    ):
        with pytest.raises(StoreCorrupt, match=consul_prefix + key):
            attempt()
    assert raw_client(consul_url).kv.get(consul_prefix + key)[1]["Value"] == b"written by hand"
