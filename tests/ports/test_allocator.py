"""Allocation as a user sees it: which port a service gets, and why others were passed over."""

from __future__ import annotations

import json
import os
import socket

import pytest

from portctl.config.policy import ServiceSpec, ServiceType, default_policy
from portctl.config.settings import Settings
from portctl.errors import InvalidInput, PortConflict, RangeExhausted, ServiceNotFound
from portctl.host.kernel import KernelPorts
from portctl.ports.allocator import Allocation, PortAllocator, allocation_key, claim_key
from tests.conftest import free_port, free_ports


def _settings(*specs: ServiceSpec, types=()) -> Settings:
    return Settings(policy=default_policy().with_additions(types=types, services=specs), host="test-host")


@pytest.fixture
def ports():
    """Three free ports for a test service: standard, alternative, and a one-port range."""
    return free_ports(4, start=21000)


@pytest.fixture
def allocator(store, ports):
    standard, alternative, low, high = ports
    spec = ServiceSpec("svc", "svcrange", standard, {"development": alternative}, (alternative,))
    settings = _settings(spec, types=[ServiceType("svcrange", low, high)])
    return PortAllocator(store, settings)


def _store_bytes(store):
    with open(store.path, "rb") as f:
        return f.read()


def test_allocation_is_idempotent(allocator, ports):
    first = allocator.allocate("svc")
    again = allocator.allocate("svc")
    assert first.allocation.port == again.allocation.port == ports[0]
    assert (first.changed, again.changed) == (True, False)
    assert first.reason == "standard port"


def test_standard_port_in_use_falls_back_to_alternative_then_range(allocator, ports, listener):
    standard, alternative, low, _ = ports
    listener(standard)
    result = allocator.allocate("svc")
    assert (result.allocation.port, result.reason) == (alternative, "alternative port")
    assert any(s.startswith(f"{standard}: in use on this host") for s in result.skipped)
    listener(alternative)
    other = allocator.allocate("svc", environment="staging")
    assert other.allocation.port == low
    assert other.reason.startswith("first free port of the svcrange range")


def test_each_environment_has_its_own_allocation(allocator, ports):
    prod = allocator.allocate("svc", environment="production")
    dev = allocator.allocate("svc", environment="development")
    assert (prod.allocation.port, dev.allocation.port) == (ports[0], ports[1])
    assert allocator.get("svc", "development").port == ports[1]
    assert [a.environment for a in allocator.allocations()] == ["development", "production"]


def test_two_services_never_get_one_port(allocator, ports, store):
    allocator.allocate("svc")
    other = allocator.allocate("other", port=None, type="svcrange")
    assert other.allocation.port != ports[0]
    with pytest.raises(PortConflict, match=r"not available: allocated to svc \(production\)"):
        allocator.allocate("third", port=ports[0])


def test_requested_port_held_by_a_process_is_refused_and_store_untouched(allocator, ports, listener, store):
    allocator.allocate("svc")
    before = _store_bytes(store)
    listener(ports[3])
    with pytest.raises(PortConflict, match=f"port {ports[3]}/tcp .*in use on this host"):
        allocator.allocate("web", port=ports[3])
    assert _store_bytes(store) == before


def test_requested_port_moves_an_allocation_and_frees_the_old_one(allocator, ports, store):
    allocator.allocate("svc")
    moved = allocator.allocate("svc", port=ports[3])
    assert (moved.allocation.port, moved.previous_port) == (ports[3], ports[0])
    assert store.get(claim_key("test-host", "tcp", ports[0])) is None
    assert allocator.allocate("web", port=ports[0]).allocation.port == ports[0]


def test_ipv6_only_listener_counts_as_busy(allocator, ports, listener):
    listener(ports[0], host="::")
    assert allocator.allocate("svc").allocation.port == ports[1]


def test_loopback_listener_blocks_a_wildcard_allocation(allocator, ports, listener):
    listener(ports[0], host="127.0.0.1")
    assert allocator.allocate("svc").allocation.port == ports[1]


def test_time_wait_does_not_make_a_port_busy(allocator, ports):
    server = socket.create_server(("127.0.0.1", ports[0]))
    client = socket.create_connection(("127.0.0.1", ports[0]))
    conn, _ = server.accept()
    conn.close()  # the server side closes first and holds TIME_WAIT
    client.close()
    server.close()
    assert allocator.allocate("svc").allocation.port == ports[0]


def test_udp_holder_blocks_udp_but_not_tcp(store, listener):
    port = free_port("udp", start=22000)
    listener(port, protocol="udp")
    settings = _settings(
        ServiceSpec("dns", "custom", port, protocol="udp"), ServiceSpec("web", "custom", port)
    )
    allocator = PortAllocator(store, settings)
    assert allocator.allocate("dns").allocation.port != port
    tcp = allocator.allocate("web")
    assert (tcp.allocation.port, tcp.allocation.protocol) == (port, "tcp")


def test_release_frees_the_port(allocator, ports, store):
    allocator.allocate("svc")
    gone = allocator.release("svc")
    assert gone.port == ports[0]
    assert store.list("") == []
    assert allocator.allocate("web", port=ports[0]).allocation.port == ports[0]


def test_release_of_unallocated_service_names_what_is_known(allocator):
    allocator.allocate("svc")
    with pytest.raises(ServiceNotFound, match="'redis' is not allocated in production.*known: svc"):
        allocator.release("redis")


def test_stale_claim_without_record_is_taken_over(allocator, ports, store):
    store.create(
        claim_key("test-host", "tcp", ports[0]), json.dumps({"service": "ghost", "environment": "production"})
    )
    assert allocator.allocate("svc").allocation.port == ports[0]


def test_exhausted_range_names_the_range(store):
    [port] = free_ports(1, start=23000)
    settings = _settings(types=[ServiceType("tiny", port, port)])
    allocator = PortAllocator(store, settings)
    allocator.allocate("one", type="tiny")
    with pytest.raises(RangeExhausted, match=rf"tiny range {port}-{port}"):
        allocator.allocate("two", type="tiny")


def _kernel(**changes) -> KernelPorts:
    base = {
        "ephemeral_low": 32768,
        "ephemeral_high": 60999,
        "reserved": frozenset(),
        "unprivileged_start": 1024,
        "may_bind_privileged": True,
    }
    return KernelPorts(**{**base, **changes})


def test_dynamic_picks_skip_the_ephemeral_range_and_reserved_ports(store):
    low = free_port(start=24000)
    reserved = free_port(start=low + 6)
    settings = _settings(types=[ServiceType("scan", low, reserved + 40)])
    kernel = _kernel(ephemeral_low=low, ephemeral_high=reserved - 1, reserved=frozenset({reserved}))
    result = PortAllocator(store, settings, kernel=kernel).allocate("svc", type="scan")
    assert result.allocation.port > reserved


def test_privileged_port_refused_when_the_process_may_not_bind_it(store):
    allocator = PortAllocator(store, _settings(), kernel=_kernel(may_bind_privileged=False))
    with pytest.raises(InvalidInput, match="below 1024 need root or CAP_NET_BIND_SERVICE"):
        allocator.allocate("web", port=80)
    with pytest.raises(RangeExhausted, match="system range 1-1023"):
        allocator.allocate("nginx_http")
    assert store.list("") == []


def test_import_is_all_or_nothing(allocator, ports, store):
    allocator.allocate("svc")
    before = _store_bytes(store)
    records = [
        Allocation("web", "production", "test-host", ports[3], "tcp", "custom", "2026-01-01T00:00:00Z"),
        Allocation("db", "production", "test-host", ports[0], "tcp", "database", "2026-01-01T00:00:00Z"),
    ]
    with pytest.raises(PortConflict, match=r"svc \(production\)"):
        allocator.import_allocations(records)
    assert _store_bytes(store) == before
    results = allocator.import_allocations(records[:1])
    assert [r.allocation.port for r in results] == [ports[3]]
    assert allocator.import_allocations(records[:1])[0].changed is False


def test_allocation_records_are_documented_json(allocator, store):
    allocator.allocate("svc")
    raw = json.loads(store.get(allocation_key("test-host", "production", "svc")).value)
    assert set(raw) == {"service", "environment", "host", "port", "protocol", "type", "allocated_at"}


def test_unknown_environment_and_type_are_refused(allocator):
    with pytest.raises(InvalidInput, match="env: 'qa'.*production, development, staging"):
        allocator.allocate("svc", environment="qa")
    with pytest.raises(InvalidInput, match="type: 'huge'"):
        allocator.allocate("svc", type="huge")


# Refusals name the holder and the next step ---------------------------------------------------


def test_requested_port_held_by_a_process_names_it_and_how_to_free_it(store, listener):
    port = free_port(start=21500)
    listener(port)
    with pytest.raises(PortConflict) as err:
        PortAllocator(store, _settings()).allocate("grafana", port=port)
    text = str(err.value)
    assert f"held by process {_comm()} pid {os.getpid()} user " in text
    assert f"free it with: kill {os.getpid()}, or omit --port to let portctl choose" in text
    assert "release it first" not in text


def test_requested_port_allocated_to_another_service_names_the_release_command(store):
    port = free_port(start=21600)
    allocator = PortAllocator(store, _settings())
    allocator.allocate("postgres", port=port, environment="staging")
    with pytest.raises(PortConflict) as err:
        allocator.allocate("grafana", port=port)
    text = str(err.value)
    assert "allocated to postgres (staging)" in text
    assert "free it with: portctl release --service postgres --env staging, or omit --port" in text


def test_import_refusal_names_the_release_command(store):
    port = free_port(start=21700)
    allocator = PortAllocator(store, _settings())
    allocator.allocate("postgres", port=port)
    with pytest.raises(PortConflict) as err:
        allocator.import_allocations(
            [Allocation("redis", "production", "test-host", port, "tcp", "cache", "x")]
        )
    assert "nothing was imported; free it with: portctl release --service postgres --env production" in str(
        err.value
    )


def _comm() -> str:
    with open("/proc/self/comm") as f:
        return f.read().strip()
