"""The exporter's series, read as Prometheus reads them, from real stores and real sockets."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from portctl.backends import open_store
from portctl.backends.file import JsonFileStore
from portctl.config.settings import Settings
from portctl.keys import pointer_key
from portctl.monitoring.metrics import Families, SnapshotCollector, exposition, textfile
from portctl.monitoring.snapshot import Monitor
from portctl.ports.allocator import PortAllocator
from portctl.records import CheckSpec, LivePointer, Status
from portctl.registry.agent import Agent
from portctl.registry.entries import Registry

HOST = "test-host"
PROMTOOL = shutil.which("promtool")


def series(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: (name, labels) -> value, parsed as Prometheus would."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(labels), v) for (n, labels), v in series(text).items() if n == name]


def value(text: str, name: str, **labels: str) -> float | None:
    found = [v for got, v in samples(text, name) if labels.items() <= got.items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def scrape(monitor: Monitor, budget: float = 5.0) -> str:
    body, content_type = exposition(monitor.snapshot(budget))
    assert content_type.startswith("text/plain")
    return body.decode()


@pytest.fixture
def settings() -> Settings:
    return Settings(host=HOST)


@pytest.fixture
def json_store(tmp_path: Path) -> Iterator[JsonFileStore]:
    with JsonFileStore(str(tmp_path / "store.json")) as s:
        yield s


@pytest.fixture
def server() -> Iterator[socket.socket]:
    """A real TCP server on loopback: a tcp check of it passes."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s
    s.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_each_instance_has_its_health_as_healthy_and_one_hot_status(json_store, settings, server):
    registry = Registry(json_store, settings)
    up_port = server.getsockname()[1]
    registry.register("api", port=up_port, instance_id="api-1", check=CheckSpec("tcp"))
    registry.register("api", port=closed_port(), instance_id="api-2", check=CheckSpec("tcp"))
    Agent(registry).run_once()

    text = scrape(Monitor(json_store, settings, scan_ports=False))
    labels = {"service_name": "api", "deploy_env": "production", "service_type": "api", "host": HOST}
    assert value(text, "portctl_service_instance_healthy", service_id="api-1", **labels) == 1
    assert value(text, "portctl_service_instance_healthy", service_id="api-2", **labels) == 0
    for sid, status in (("api-1", "passing"), ("api-2", "critical")):
        hot = {
            got["status"]: v
            for got, v in samples(text, "portctl_service_instance_status")
            if got["service_id"] == sid
        }
        assert hot == {s.value: float(s.value == status) for s in Status}
    info = dict(samples(text, "portctl_service_instance_info")[0][0])
    assert {"address", "port", "check", "color"} <= info.keys()
    # The agent timed its checks: the latency series is there, a small positive number.
    latency = value(text, "portctl_service_check_duration_seconds", service_id="api-1")
    assert latency is not None
    assert 0 < latency < 2.0
    assert value(text, "portctl_up") == 1
    assert value(text, "portctl_collector_up", collector="store") == 1


def test_a_removed_instance_leaves_no_series(json_store, settings):
    registry = Registry(json_store, settings)
    registry.register("api", port=18001, instance_id="api-1")
    registry.register("api", port=18002, instance_id="api-2")
    monitor = Monitor(json_store, settings, scan_ports=False)
    assert {g["service_id"] for g, _ in samples(scrape(monitor), "portctl_service_instance_healthy")} == {
        "api-1",
        "api-2",
    }
    registry.deregister("api-2")
    text = scrape(monitor)
    assert {g["service_id"] for g, _ in samples(text, "portctl_service_instance_healthy")} == {"api-1"}
    assert not [g for (n, g), _ in series(text).items() if "api-2" in dict(g).values()]


def test_allocations_ranges_and_the_live_color(json_store, settings):
    allocator = PortAllocator(json_store, settings)
    allocator.allocate("api", port=18010)
    allocator.allocate("worker", port=18011, type="dynamic", environment="staging")
    json_store.create(
        pointer_key("production", "web"),
        LivePointer("web", "production", "green", "blue", time.time()).to_json(),
    )
    text = scrape(Monitor(json_store, settings, scan_ports=False))
    assert value(text, "portctl_allocation_info", service_name="api", port="18010", service_type="api") == 1
    # 18010 is outside the api range (8000-8999): allocated, but not counted in the range.
    assert value(text, "portctl_range_allocated_ports", service_type="api") is None
    assert value(text, "portctl_range_allocated_ports", service_type="dynamic", deploy_env="staging") == 1
    assert value(text, "portctl_range_size_ports", service_type="monitoring", range="9000-9999") == 1000
    assert value(text, "portctl_bluegreen_live_color", service_name="web", color="green") == 1
    assert value(text, "portctl_bluegreen_live_color", service_name="web", color="blue") == 0


def test_a_foreign_holder_of_an_allocated_port_is_a_conflict(json_store, settings, listener, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # no Docker: still scans
    port = closed_port()
    PortAllocator(json_store, settings).allocate("cache_b", port=port, type="dynamic")
    monitor = Monitor(json_store, settings)
    monitor.scan()
    assert value(scrape(monitor), "portctl_port_conflicts", kind="process", deploy_env="production") == 0

    listener(port)  # this test's own process takes the port: not the service
    monitor.scan()
    text = scrape(monitor)
    assert value(text, "portctl_port_conflicts", kind="process", deploy_env="production", host=HOST) == 1
    assert value(text, "portctl_port_conflicts", kind="container", deploy_env="production") == 0
    (detail, one) = samples(text, "portctl_port_conflict_info")[0]
    assert one == 1
    assert detail["service_name"] == "cache_b"
    assert detail["port"] == str(port)
    assert "pid" in detail["holder"]
    # Docker absent: its collector is down, the port scan is not.
    assert value(text, "portctl_collector_up", collector="docker") == 0
    assert value(text, "portctl_collector_up", collector="host") == 1
    assert value(text, "portctl_collector_last_success_timestamp_seconds", collector="host") is not None


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")
def test_promtool_accepts_the_exposition(json_store, settings, server, listener, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    registry = Registry(json_store, settings)
    registry.register("api", port=server.getsockname()[1], instance_id="api-1", check=CheckSpec("tcp"))
    Agent(registry).run_once()
    port = closed_port()
    PortAllocator(json_store, settings).allocate("api", port=port)
    listener(port)
    json_store.create(pointer_key("production", "api"), LivePointer("api", "production", "blue").to_json())
    monitor = Monitor(json_store, settings)
    monitor.scan()
    for text in (scrape(monitor), textfile(monitor.snapshot())):
        checked = subprocess.run(
            [PROMTOOL, "check", "metrics"], check=False, input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout + checked.stderr == ""  # no lint finding either
    assert value(textfile(monitor.snapshot()), "portctl_up") is None  # a file outlives its writer
    # The whole exposition of a real view, as prometheus-client itself would write it.
    snapshot = monitor.snapshot()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(Families(snapshot)))
    assert exposition(snapshot)[0] == generate_latest(registry)


def test_openmetrics_is_served_when_asked(json_store, settings):
    Registry(json_store, settings).register("api", port=18020, instance_id="api-1")
    body, content_type = exposition(
        Monitor(json_store, settings, scan_ports=False).snapshot(),
        "application/openmetrics-text; version=1.0.0",
    )
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


def test_a_store_that_stops_answering_keeps_the_last_values_marked(own_etcd, settings):
    with open_store(f"etcd://{own_etcd.endpoint}/mon?timeout=2") as store:
        Registry(store, settings).register("api", port=18030, instance_id="api-1")
        monitor = Monitor(store, settings, scan_ports=False)
        before = scrape(monitor)
        assert value(before, "portctl_collector_up", collector="store") == 1
        own_etcd.kill()
        after = scrape(monitor, budget=10)
        snapshot = monitor.snapshot(budget=10)
    assert value(after, "portctl_up") == 1
    assert value(after, "portctl_collector_up", collector="store") == 0
    # The registry as last read, not an empty one.
    assert value(after, "portctl_service_instance_healthy", service_id="api-1") is not None
    assert snapshot.sources["store"].down_since is not None
    assert own_etcd.endpoint in (snapshot.sources["store"].error or "")
    last = value(after, "portctl_collector_last_success_timestamp_seconds", collector="store")
    assert last == value(before, "portctl_collector_last_success_timestamp_seconds", collector="store")


def test_a_silent_store_costs_a_scrape_only_its_budget(settings):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
        with open_store(f"etcd://{endpoint}?timeout=20") as store:
            monitor = Monitor(store, settings, scan_ports=False)
            started = time.monotonic()
            text = scrape(monitor, budget=0.5)
            waited = time.monotonic() - started
            again = monitor.snapshot(budget=0.2)
    assert waited < 10  # the store's own timeout is 20 s: the scrape did not wait for it
    assert value(text, "portctl_collector_up", collector="store") == 0
    assert value(text, "portctl_up") == 1
    # The read under way is not started again: the next view waits for the same one, and says so.
    assert again.sources["store"].error == "no answer within 0.2s (the scrape's time budget)"
    assert not again.ready


def test_a_corrupt_key_is_counted_and_hides_nothing_else(json_store, settings):
    Registry(json_store, settings).register("api", port=18040, instance_id="api-1")
    json_store.create("registry/production/web/web-1/entry", "{not json")
    text = scrape(Monitor(json_store, settings, scan_ports=False))
    assert value(text, "portctl_store_corrupt_keys") == 1
    assert value(text, "portctl_service_instance_healthy", service_id="api-1") is not None


def test_health_nothing_has_checked_lately_is_not_called_healthy(json_store, settings, server):
    registry = Registry(json_store, settings)
    registry.register(
        "api", port=server.getsockname()[1], instance_id="api-1", check=CheckSpec("tcp", interval=5)
    )
    Agent(registry).run_once()
    fresh = scrape(Monitor(json_store, settings, scan_ports=False))
    assert value(fresh, "portctl_service_instance_healthy", service_id="api-1") == 1
    assert value(fresh, "portctl_service_instance_check_stale", service_id="api-1") == 0
    # A minute on, no agent has recorded anything: three 5 s intervals (at least 30 s) missed.
    later = Monitor(json_store, settings, scan_ports=False, clock=lambda: time.time() + 60)
    text = scrape(later)
    assert value(text, "portctl_service_instance_healthy", service_id="api-1") == 0
    assert value(text, "portctl_service_instance_check_stale", service_id="api-1") == 1
    assert value(text, "portctl_service_instance_status", service_id="api-1", status="passing") == 1


def test_ten_thousand_instances_are_all_served(json_store, settings):
    from portctl.backends import Create
    from portctl.keys import entry_key, health_key
    from portctl.monitoring.page import status_json
    from portctl.records import HealthRecord, ServiceEntry

    now = time.time()
    operations = []
    for i in range(10_000):
        entry = ServiceEntry(
            f"svc{i % 100}-{i}", f"svc{i % 100}", "production", HOST, "127.0.0.1", 20000 + i % 40000
        )
        status = Status.CRITICAL if i % 10 == 0 else Status.PASSING
        operations.append(
            Create(entry_key("production", entry.service, entry.id), json.dumps(entry.to_dict()))
        )
        operations.append(
            Create(
                health_key("production", entry.service, entry.id),
                json.dumps(HealthRecord(status, "", now).to_dict()),
            )
        )
    json_store.transact(operations)
    monitor = Monitor(json_store, settings, scan_ports=False)
    healthy = samples(scrape(monitor, budget=60), "portctl_service_instance_healthy")
    assert len(healthy) == 10_000
    assert sum(v for _, v in healthy) == 9_000
    summary = status_json(monitor.snapshot(60))["summary"]
    assert (summary["instances"], summary["passing"], summary["critical"]) == (10_000, 9_000, 1_000)


def test_a_released_port_is_no_conflict_even_before_the_next_scan(
    json_store, settings, listener, monkeypatch
):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    port = closed_port()
    allocator = PortAllocator(json_store, settings)
    allocator.allocate("cache_b", port=port, type="dynamic")
    listener(port)
    monitor = Monitor(json_store, settings)
    monitor.scan()
    assert value(scrape(monitor), "portctl_port_conflicts", kind="process", deploy_env="production") == 1
    allocator.release("cache_b")
    text = scrape(monitor)  # the same scan, a new read of the store
    assert samples(text, "portctl_port_conflict_info") == []
    assert value(text, "portctl_port_conflicts", kind="process", deploy_env="production") is None


def test_port_moves_come_from_the_event_log(json_store, settings):
    from portctl.ports.events import EventLog
    from portctl.records import Event

    log = EventLog(json_store, HOST)
    for at, (old, new) in ((100.0, (8000, 8001)), (200.0, (8001, 8002))):
        log.record(
            Event("moved", at, HOST, "portctl resolve", "production", "api", "tcp", old, new, "process x")
        )
    EventLog(json_store, "other-host").record(
        Event(
            "moved",
            50.0,
            "other-host",
            "portctl resolve",
            "staging",
            "redis",
            "tcp",
            6379,
            6380,
            "container y",
        )
    )
    text = scrape(Monitor(json_store, settings, scan_ports=False))
    assert value(text, "portctl_port_moves", service_name="api", deploy_env="production", host=HOST) == 2
    assert value(text, "portctl_port_moves", service_name="redis", host="other-host") == 1
    assert value(text, "portctl_port_last_move_timestamp_seconds", service_name="api") == 200.0
