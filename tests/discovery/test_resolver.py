"""ServiceDiscovery as an app sees it: URLs from registrations and allocations, following the
store as it changes, and the last known good answers while the store is broken."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import threading
import time

import pytest

from portctl.backends.file import JsonFileStore
from portctl.config.settings import Settings
from portctl.discovery import ServiceDiscovery, get_service_url, set_default
from portctl.errors import InvalidInput, ServiceNotFound, StoreError, StoreUnavailable
from portctl.ports.allocator import PortAllocator
from portctl.registry.entries import CheckSpec, Registry, Status
from tests.conftest import free_port, free_ports

SETTINGS = Settings(host="test-host")
HEALTHY = CheckSpec("none")  # registers as passing


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # default cache files land here
    for name in list(os.environ):
        if name in ("SERVICE_HOST", "PORTCTL_ENV") or (name.startswith("PORTCTL_") and name.endswith("_URL")):
            monkeypatch.delenv(name)


@pytest.fixture
def registry(store):
    return Registry(store, SETTINGS)


@pytest.fixture
def allocator(store):
    return PortAllocator(store, SETTINGS)


@pytest.fixture
def cache_file(tmp_path):
    return str(tmp_path / "cache" / "discovery.json")


@pytest.fixture
def discovery(store, cache_file):
    """Make resolvers on the test store; each is closed at the end of the test."""
    made: list[ServiceDiscovery] = []

    def make(**options) -> ServiceDiscovery:
        options.setdefault("settings", SETTINGS)
        options.setdefault("cache_file", cache_file)
        found = ServiceDiscovery(options.pop("store", store), **options)
        made.append(found)
        return found

    yield make
    for found in made:
        found.close()


def wait_for(read, until, timeout: float = 5.0):
    """Poll ``read()`` until ``until(value)`` holds or the timeout passes; the last value."""
    deadline = time.monotonic() + timeout
    value = read()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(0.01)
        value = read()
    return value


def raises(call, error):
    """Whether ``call()`` raises ``error`` (for polling until it does)."""
    try:
        call()
    except error:
        return True
    return False


def corrupt(store: JsonFileStore) -> bytes:
    with open(store.path, "rb") as f:
        good = f.read()
    with open(store.path, "wb") as f:
        f.write(b"{ this is not json")
    return good


def restore(store: JsonFileStore, good: bytes) -> None:
    with open(store.path, "wb") as f:
        f.write(good)


# Answers from the store ---------------------------------------------------------------------


def test_url_and_address_from_a_registration(registry, discovery):
    port = free_port(start=25000)
    registry.register("api", port=port, check=HEALTHY)
    resolver = discovery()
    assert resolver.get_service_url("api") == f"http://127.0.0.1:{port}"
    assert resolver.get_service_address("api") == ("127.0.0.1", port)
    assert resolver.stale is None


def test_scheme_argument_then_meta_then_service_default_then_http(registry, discovery):
    pg, redis, api, web = free_ports(4, start=25010)
    registry.register("postgres", port=pg, check=HEALTHY)
    registry.register("redis", port=redis, check=HEALTHY)
    registry.register("api", port=api, check=HEALTHY, meta={"scheme": "https"})
    registry.register("web", port=web, check=HEALTHY)
    resolver = discovery()
    assert resolver.get_service_url("postgres") == f"postgresql://127.0.0.1:{pg}"
    assert resolver.get_service_url("redis") == f"redis://127.0.0.1:{redis}"
    assert resolver.get_service_url("api") == f"https://127.0.0.1:{api}"
    assert resolver.get_service_url("web") == f"http://127.0.0.1:{web}"
    assert resolver.get_service_url("api", scheme="grpc") == f"grpc://127.0.0.1:{api}"
    assert resolver.get_service_url("postgres", scheme="postgres") == f"postgres://127.0.0.1:{pg}"
    with pytest.raises(InvalidInput, match="scheme"):
        resolver.get_service_url("api", scheme="not a scheme")


def test_ipv6_addresses_are_bracketed(registry, discovery, monkeypatch):
    port = free_port(start=25020)
    # "::1" would do, but portctl._validate.host refuses IPv6 literals that start with ':'
    registry.register("api", port=port, address="fd00::1", check=HEALTHY)
    resolver = discovery()
    assert resolver.get_service_url("api") == f"http://[fd00::1]:{port}"
    assert resolver.get_service_address("api") == ("fd00::1", port)
    monkeypatch.setenv("SERVICE_HOST", "[::1]")
    resolver.refresh()  # environment variables are read when the answers are rebuilt
    assert resolver.get_service_url("api") == f"http://[::1]:{port}"
    assert resolver.get_service_address("api") == ("::1", port)


def test_a_malformed_service_host_is_refused(discovery, monkeypatch):
    monkeypatch.setenv("SERVICE_HOST", "not a host")
    with pytest.raises(InvalidInput, match="SERVICE_HOST"):
        discovery()


def test_a_wildcard_address_means_loopback_on_this_host(registry, discovery):
    port = free_port(start=25025)
    registry.register("api", port=port, address="0.0.0.0", check=HEALTHY)
    assert discovery().get_service_url("api") == f"http://127.0.0.1:{port}"


def test_service_host_replaces_every_address(registry, allocator, discovery, monkeypatch):
    api, svc = free_ports(2, start=25030)
    registry.register("api", port=api, check=HEALTHY)
    allocator.allocate("svc", port=svc)
    monkeypatch.setenv("SERVICE_HOST", "app.internal")
    resolver = discovery()
    assert resolver.get_service_url("api") == f"http://app.internal:{api}"
    assert resolver.get_service_url("svc") == f"http://app.internal:{svc}"
    assert resolver.get_service_address("svc") == ("app.internal", svc)


def test_a_url_variable_wins_verbatim(registry, discovery, monkeypatch):
    port = free_port(start=25040)
    registry.register("admin_ui", port=port, check=HEALTHY)
    monkeypatch.setenv("PORTCTL_ADMIN_UI_URL", "https://admin.example.com:8443/console")
    monkeypatch.setenv("PORTCTL_BILLING_URL", "postgresql://db.example.com/billing")
    resolver = discovery()
    assert resolver.get_service_url("admin_ui") == "https://admin.example.com:8443/console"
    assert resolver.get_service_url("admin_ui", scheme="http") == "https://admin.example.com:8443/console"
    assert resolver.get_service_address("admin_ui") == ("admin.example.com", 8443)
    # a name the store does not know, and a URL without a port (the scheme's own is used)
    assert resolver.get_service_url("billing") == "postgresql://db.example.com/billing"
    assert resolver.get_service_address("billing") == ("db.example.com", 5432)
    assert resolver.get_all_services()["billing"] == "postgresql://db.example.com/billing"


def test_a_url_variable_set_later_is_read_for_names_not_in_the_snapshot(discovery, monkeypatch):
    resolver = discovery()
    monkeypatch.setenv("PORTCTL_MCP_TOOLS_URL", "http://tools:8006")
    assert resolver.get_service_url("mcp-tools") == "http://tools:8006"


def test_a_malformed_url_variable_is_refused_naming_it(discovery, monkeypatch):
    monkeypatch.setenv("PORTCTL_API_URL", "not a url")
    resolver = discovery()
    with pytest.raises(InvalidInput, match="PORTCTL_API_URL"):
        resolver.get_service_url("api")


def test_unhealthy_instances_are_skipped(registry, discovery):
    bad, good, degraded = free_ports(3, start=25050)
    down = registry.register("api", port=bad, instance_id="api-a", check=HEALTHY)
    registry.record_result(down, Status.CRITICAL, "connection refused")
    registry.register("api", port=good, instance_id="api-b", check=HEALTHY)
    slow = registry.register("api", port=degraded, instance_id="api-c", check=HEALTHY)
    registry.record_result(slow, Status.WARNING, "slow")
    resolver = discovery()
    assert resolver.get_service_url("api") == f"http://127.0.0.1:{good}"  # passing before warning
    assert resolver.get_service_url("api", healthy_only=False) == f"http://127.0.0.1:{good}"


def test_warning_counts_as_healthy(registry, discovery):
    bad, degraded = free_ports(2, start=25060)
    down = registry.register("api", port=bad, instance_id="api-a", check=HEALTHY)
    registry.record_result(down, Status.CRITICAL, "connection refused")
    slow = registry.register("api", port=degraded, instance_id="api-b", check=HEALTHY)
    registry.record_result(slow, Status.WARNING, "slow")
    assert discovery().get_service_url("api") == f"http://127.0.0.1:{degraded}"


def test_among_healthy_instances_the_lowest_id_is_chosen(registry, discovery):
    first, second = free_ports(2, start=25070)
    registry.register("api", port=second, instance_id="api-2", check=HEALTHY)
    registry.register("api", port=first, instance_id="api-1", check=HEALTHY)
    resolver = discovery()
    assert {resolver.get_service_url("api") for _ in range(10)} == {f"http://127.0.0.1:{first}"}


def test_all_instances_critical_is_an_error_saying_so(registry, allocator, discovery):
    a, b, allocated = free_ports(3, start=25080)
    allocator.allocate("api", port=allocated)  # not used: the service has registrations
    for instance_id, port in (("api-a", a), ("api-b", b)):
        instance = registry.register("api", port=port, instance_id=instance_id, check=HEALTHY)
        registry.record_result(instance, Status.CRITICAL, "connection refused")
    resolver = discovery()
    with pytest.raises(
        ServiceNotFound, match=r"healthy in production \(2 instances registered, all critical\)"
    ):
        resolver.get_service_url("api")
    assert resolver.get_service_url("api", healthy_only=False) == f"http://127.0.0.1:{a}"
    assert "api" not in resolver.get_all_services()
    assert resolver.get_all_services(healthy_only=False)["api"] == f"http://127.0.0.1:{a}"


def test_a_service_without_registrations_resolves_to_its_allocation(allocator, discovery):
    pg, svc = free_ports(2, start=25090)
    allocator.allocate("postgres", port=pg)
    allocator.allocate("svc", port=svc)
    allocator.allocate("svc", port=free_port(start=25095), environment="staging")
    resolver = discovery()
    assert resolver.get_service_url("postgres") == f"postgresql://127.0.0.1:{pg}"
    assert resolver.get_service_url("svc") == f"http://127.0.0.1:{svc}"
    assert resolver.get_all_services() == {
        "postgres": f"postgresql://127.0.0.1:{pg}",
        "svc": f"http://127.0.0.1:{svc}",
    }


def test_allocations_of_other_hosts_do_not_count(store, discovery):
    PortAllocator(store, Settings(host="other-host")).allocate("svc", port=free_port(start=25100))
    with pytest.raises(ServiceNotFound, match="registered or allocated in production on test-host"):
        discovery().get_service_url("svc")


def test_environment_argument_then_portctl_env(allocator, discovery, monkeypatch, tmp_path):
    prod, staging = free_ports(2, start=25110)
    allocator.allocate("svc", port=prod)
    allocator.allocate("svc", port=staging, environment="staging")
    assert discovery().get_service_url("svc") == f"http://127.0.0.1:{prod}"
    assert discovery(environment="staging").get_service_url("svc") == f"http://127.0.0.1:{staging}"
    monkeypatch.setenv("PORTCTL_ENV", "staging")
    resolver = discovery(cache_file=None)
    assert resolver.environment == "staging"
    assert resolver.cache_file.startswith(str(tmp_path / "xdg-cache" / "portctl" / "discovery-"))
    assert resolver.get_service_url("svc") == f"http://127.0.0.1:{staging}"
    with pytest.raises(InvalidInput, match="environment"):
        discovery(environment="nowhere")


def test_allocate_missing_allocates_and_answers(store, discovery):
    resolver = discovery(allocate_missing=True)
    url = resolver.get_service_url("newsvc")
    allocation = PortAllocator(store, SETTINGS).get("newsvc")
    assert allocation is not None
    assert url == f"http://127.0.0.1:{allocation.port}"
    assert resolver.get_service_url("newsvc") == url  # from the snapshot now, no new allocation


def test_unknown_names_list_what_is_known(registry, allocator, discovery):
    api, svc = free_ports(2, start=25120)
    registry.register("api", port=api, check=HEALTHY)
    allocator.allocate("svc", port=svc)
    resolver = discovery()
    with pytest.raises(ServiceNotFound) as caught:
        resolver.get_service_url("nosuch")
    assert caught.value.known == ["api", "svc"]
    assert "known: api, svc" in str(caught.value)
    assert "production on test-host" in str(caught.value)


def test_invalid_names_are_invalid_input(discovery):
    resolver = discovery()
    for bad in ("Bad Name", "", "-x", "a" * 70):
        with pytest.raises(InvalidInput, match="service"):
            resolver.get_service_url(bad)


def test_bad_max_stale_is_refused(discovery):
    with pytest.raises(InvalidInput, match="max_stale"):
        discovery(max_stale=0)


# Following the store ------------------------------------------------------------------------


def test_follows_a_reallocation_without_restarting(allocator, discovery):
    first, second = free_ports(2, start=25130)
    allocator.allocate("svc", port=first)
    resolver = discovery()
    assert resolver.get_service_url("svc") == f"http://127.0.0.1:{first}"
    allocator.allocate("svc", port=second)
    url = wait_for(lambda: resolver.get_service_url("svc"), lambda u: u.endswith(f":{second}"))
    assert url == f"http://127.0.0.1:{second}"


def test_follows_a_reregistration_without_restarting(registry, discovery):
    first, second = free_ports(2, start=25140)
    registry.register("api", port=first, instance_id="api-1", check=HEALTHY)
    resolver = discovery()
    assert resolver.get_service_url("api") == f"http://127.0.0.1:{first}"
    registry.register("api", port=second, instance_id="api-1", check=HEALTHY)
    url = wait_for(lambda: resolver.get_service_url("api"), lambda u: u.endswith(f":{second}"))
    assert url == f"http://127.0.0.1:{second}"


def test_follows_health_changes(registry, discovery):
    port = free_port(start=25150)
    instance = registry.register("api", port=port, check=HEALTHY)
    resolver = discovery()
    assert resolver.get_service_url("api") == f"http://127.0.0.1:{port}"
    registry.record_result(instance, Status.CRITICAL, "connection refused")
    assert wait_for(lambda: raises(lambda: resolver.get_service_url("api"), ServiceNotFound), bool)
    registry.record_result(instance, Status.PASSING, "ok")
    url = wait_for(lambda: raises(lambda: resolver.get_service_url("api"), ServiceNotFound), lambda r: not r)
    assert not url
    registry.deregister(instance.entry.id)
    assert wait_for(lambda: raises(lambda: resolver.get_service_url("api"), ServiceNotFound), bool)


def test_an_expired_ttl_turns_the_answer_unhealthy_without_a_store_change(registry, discovery):
    port = free_port(start=25160)
    instance = registry.register("api", port=port, check=CheckSpec("ttl", ttl=0.5))
    registry.ttl(instance.entry.id, Status.PASSING)
    resolver = discovery(watch=False)  # no thread: the lookup itself notices the expiry
    assert resolver.get_service_url("api") == f"http://127.0.0.1:{port}"
    assert wait_for(lambda: raises(lambda: resolver.get_service_url("api"), ServiceNotFound), bool)


def test_without_watch_only_refresh_rereads(allocator, discovery):
    first, second = free_ports(2, start=25170)
    allocator.allocate("svc", port=first)
    resolver = discovery(watch=False)
    allocator.allocate("svc", port=second)
    time.sleep(0.2)
    assert resolver.get_service_url("svc") == f"http://127.0.0.1:{first}"
    resolver.refresh()
    assert resolver.get_service_url("svc") == f"http://127.0.0.1:{second}"


def test_a_warm_lookup_does_not_touch_the_store(allocator, store, discovery):
    port = free_port(start=25175)
    allocator.allocate("svc", port=port)
    resolver = discovery(watch=False)
    corrupt(store)  # any read would now fail
    assert resolver.get_service_url("svc") == f"http://127.0.0.1:{port}"
    assert resolver.get_service_address("svc") == ("127.0.0.1", port)
    assert resolver.stale is None


def test_many_threads_resolve_while_the_port_moves(allocator, discovery):
    ports = free_ports(3, start=25180)
    allocator.allocate("svc", port=ports[0])
    resolver = discovery()
    valid = {f"http://127.0.0.1:{p}" for p in ports}
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[BaseException] = []

    def resolve() -> None:
        try:
            while not stop.is_set():
                for _ in range(200):
                    url = resolver.get_service_url("svc")
                    if url not in valid:
                        raise AssertionError(url)
                    seen.add(url)
                time.sleep(0.0005)  # let the writer and the watch thread have the GIL now and then
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            allocator.allocate("svc", port=ports[(i + 1) % len(ports)])
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(seen) > 1  # the readers saw the port move


# The last known good answers ----------------------------------------------------------------


def test_a_corrupt_store_serves_the_last_known_good_marked_stale(allocator, store, discovery, cache_file):
    first, second = free_ports(2, start=25190)
    allocator.allocate("svc", port=first)
    resolver = discovery()
    assert stat.S_IMODE(os.stat(cache_file).st_mode) == 0o600
    good = corrupt(store)
    assert wait_for(lambda: resolver.stale, lambda age: age is not None) is not None
    time.sleep(0.05)
    assert resolver.stale > 0
    assert resolver.get_service_url("svc") == f"http://127.0.0.1:{first}"
    assert resolver.get_all_services() == {"svc": f"http://127.0.0.1:{first}"}
    restore(store, good)
    assert wait_for(lambda: resolver.stale, lambda age: age is None) is None
    allocator.allocate("svc", port=second)
    url = wait_for(lambda: resolver.get_service_url("svc"), lambda u: u.endswith(f":{second}"))
    assert url == f"http://127.0.0.1:{second}"


def test_a_folder_in_place_of_the_store_file_is_unreachable_too(allocator, store, discovery):
    port = free_port(start=25200)
    allocator.allocate("svc", port=port)
    resolver = discovery()
    os.rename(store.path, store.path + ".moved")
    os.mkdir(store.path)
    assert wait_for(lambda: resolver.stale, lambda age: age is not None) is not None
    assert resolver.get_service_url("svc") == f"http://127.0.0.1:{port}"
    os.rmdir(store.path)
    os.rename(store.path + ".moved", store.path)
    assert wait_for(lambda: resolver.stale, lambda age: age is None) is None


def test_a_resolver_started_while_the_store_is_corrupt_answers_from_the_cache_file(
    allocator, store, discovery, cache_file
):
    port = free_port(start=25210)
    allocator.allocate("svc", port=port)
    discovery(watch=False).close()  # leaves its snapshot in the cache file
    with open(cache_file) as f:
        assert json.load(f)["format"] == "portctl-discovery-cache"
    good = corrupt(store)
    time.sleep(0.05)
    late = discovery()
    assert late.stale is not None
    assert late.stale > 0
    assert late.get_service_url("svc") == f"http://127.0.0.1:{port}"
    restore(store, good)
    assert wait_for(lambda: late.stale, lambda age: age is None) is None


def test_past_max_stale_a_lookup_raises_store_unavailable(allocator, store, discovery):
    allocator.allocate("svc", port=free_port(start=25220))
    resolver = discovery(max_stale=0.3)
    corrupt(store)
    assert wait_for(lambda: resolver.stale, lambda age: age is not None) is not None
    with pytest.raises(StoreUnavailable, match=r"old, over max_stale \(0.3s\).*unusable") as caught:
        wait_for(lambda: resolver.get_service_url("svc"), lambda _: False, timeout=1.0)
    assert store.path in str(caught.value)
    with pytest.raises(StoreUnavailable):
        resolver.get_all_services()


def test_refresh_on_a_broken_store_raises_and_keeps_serving(allocator, store, discovery):
    port = free_port(start=25230)
    allocator.allocate("svc", port=port)
    resolver = discovery(watch=False)
    corrupt(store)
    with pytest.raises(StoreError, match="unusable"):  # StoreCorrupt
        resolver.refresh()
    assert resolver.stale is not None
    assert resolver.get_service_url("svc") == f"http://127.0.0.1:{port}"


def test_no_store_and_no_cache_file_fails_at_start(store, discovery):
    store.create("a", "1")
    corrupt(store)
    with pytest.raises(StoreUnavailable, match="no last known good answer"):
        discovery()


# Lifetime and the module-level call ---------------------------------------------------------


def test_close_stops_the_thread_and_is_idempotent(discovery):
    before = set(threading.enumerate())
    resolver = discovery()
    started = [t for t in threading.enumerate() if t not in before and t.name == "portctl-discovery"]
    assert len(started) == 1
    resolver.close()
    assert not started[0].is_alive()
    resolver.close()


def test_a_context_manager_closes(store, cache_file):
    before = set(threading.enumerate())
    with ServiceDiscovery(store, settings=SETTINGS, cache_file=cache_file) as resolver:
        started = [t for t in threading.enumerate() if t not in before]
        assert resolver.get_all_services() == {}
    assert started
    assert not any(t.is_alive() for t in started)


def test_a_store_url_is_opened_and_closed_by_the_resolver(allocator, store, cache_file):
    port = free_port(start=25240)
    allocator.allocate("svc", port=port)
    with ServiceDiscovery(store.url, settings=SETTINGS, cache_file=cache_file) as resolver:
        assert resolver.get_service_url("svc") == f"http://127.0.0.1:{port}"


def test_module_level_get_service_url_uses_the_default_instance(allocator, discovery):
    port = free_port(start=25250)
    allocator.allocate("redis", port=port)
    try:
        set_default(discovery())
        assert get_service_url("redis") == f"redis://127.0.0.1:{port}"
        assert get_service_url("redis", scheme="rediss") == f"rediss://127.0.0.1:{port}"
    finally:
        set_default(None)


def test_the_default_instance_is_made_like_the_cli(tmp_path, monkeypatch):
    path = tmp_path / "store.json"
    port = free_port(start=25260)
    with JsonFileStore(str(path)) as store:
        PortAllocator(store, Settings(host="test-host")).allocate("svc", port=port, environment="staging")
    monkeypatch.chdir(tmp_path)  # no portctl.toml found from here
    monkeypatch.delenv("PORTCTL_CONFIG", raising=False)
    monkeypatch.setenv("PORTCTL_STORE", str(path))
    monkeypatch.setenv("PORTCTL_HOST", "test-host")
    monkeypatch.setenv("PORTCTL_ENV", "staging")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    set_default(None)
    before = set(threading.enumerate())
    try:
        assert get_service_url("svc") == f"http://127.0.0.1:{port}"
        cached = list((tmp_path / "xdg" / "portctl").iterdir())
        assert len(cached) == 1
        assert cached[0].name.startswith("discovery-")
    finally:
        set_default(None)  # closes the instance it made
    assert not any(t.is_alive() for t in set(threading.enumerate()) - before)


def test_a_store_file_gone_serves_the_last_known_good_marked_stale(allocator, store, discovery):
    port = free_port(start=25210)
    allocator.allocate("svc", port=port)
    resolver = discovery()
    os.rename(store.path, store.path + ".away")
    assert wait_for(lambda: resolver.stale, lambda age: age is not None) is not None
    assert resolver.get_service_url("svc") == f"http://127.0.0.1:{port}"
    os.rename(store.path + ".away", store.path)
    assert wait_for(lambda: resolver.stale, lambda age: age is None) is None


def test_a_locked_store_does_not_stop_resolvers(allocator, store, discovery):
    port = free_port(start=25220)
    allocator.allocate("svc", port=port)
    resolver = discovery()
    fd = os.open(store.lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer stuck holding the lock
        resolver.refresh()  # readers take no lock: a fresh read, not a stale answer
        assert resolver.stale is None
        assert resolver.get_service_url("svc") == f"http://127.0.0.1:{port}"
    finally:
        os.close(fd)


def test_a_deeply_nested_allocation_record_leaves_only_that_service_unknown(allocator, store, discovery):
    good, bad = free_ports(2, start=25270)
    allocator.allocate("good", port=good)
    allocator.allocate("bad", port=bad)
    key = next(e.key for e in store.list("allocations/") if e.key.endswith("/bad"))
    store.compare_and_set(key, "[" * 100_000, store.get(key).version)
    resolver = discovery()
    assert resolver.get_service_url("good") == f"http://127.0.0.1:{good}"
    with pytest.raises(ServiceNotFound, match="'bad'"):
        resolver.get_service_url("bad")
