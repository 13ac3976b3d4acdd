"""The status page and its JSON, from a real store: what a person (or a script) reads there."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from portctl.backends.file import JsonFileStore
from portctl.config.settings import Settings
from portctl.monitoring.page import status_html, status_json
from portctl.monitoring.snapshot import Monitor
from portctl.ports.allocator import PortAllocator
from portctl.records import CheckSpec, Status
from portctl.registry.agent import Agent
from portctl.registry.entries import Registry
from tests.conftest import free_port

HOST = "test-host"


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parsed(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JsonFileStore]:
    with JsonFileStore(str(tmp_path / "store.json")) as s:
        yield s


@pytest.fixture
def registry(store) -> Registry:
    return Registry(store, Settings(host=HOST))


def view(store, *, scan: bool = False):
    monitor = Monitor(store, Settings(host=HOST), scan_ports=scan)
    if scan:
        monitor.scan()
    return monitor.snapshot(5)


def test_every_instance_shows_its_health_as_a_colour(registry, store):
    registry.register("api", port=18201, instance_id="api-1", check=CheckSpec("ttl", ttl=60))
    registry.register("api", port=18202, instance_id="api-2", check=CheckSpec("ttl", ttl=60))
    registry.ttl("api-1", Status.PASSING, "ok")
    registry.ttl("api-2", Status.WARNING, "slow")
    tags = parsed(status_html(view(store)))
    rows = {a["data-instance"]: a["data-status"] for t, a in tags.tags if t == "tr" and "data-instance" in a}
    assert rows == {"api-1": "passing", "api-2": "warning"}
    pills = [a["class"] for t, a in tags.tags if t == "span" and "pill" in (a.get("class") or "")]
    assert "pill passing" in pills
    assert "pill warning" in pills
    assert "Not healthy: api (production, warning)." in "".join(tags.text)


def test_what_a_check_said_is_shown_as_text_never_run(registry, store):
    registry.register("web", port=18203, instance_id="web-1", check=CheckSpec("ttl", ttl=60))
    registry.ttl("web-1", Status.CRITICAL, "<script>alert(1)</script><img src=x onerror=alert(2)>")
    page = status_html(view(store))
    tags = parsed(page)
    assert not [t for t, _ in tags.tags if t in ("script", "img")]
    assert "<script>alert(1)</script>" in "".join(tags.text)  # shown, as text


def test_the_page_is_self_contained_and_reloads_itself(registry, store):
    registry.register("api", port=18204, instance_id="api-1")
    page = status_html(view(store), refresh=3)
    tags = parsed(page)
    assert ("meta", {"http-equiv": "refresh", "content": "3"}) in tags.tags
    fetched = [a for _, a in tags.tags for k in ("src", "href") if a.get(k)]
    assert fetched == []  # no script, style sheet, image or font from anywhere
    assert not [t for t, _ in tags.tags if t in ("script", "link", "iframe")]
    assert "@import" not in page
    assert not re.search(r"url\(", page)


def test_each_environment_is_listed_and_an_empty_one_says_so(registry, store):
    registry.register("api", port=18205, instance_id="api-1", environment="staging")
    data = status_json(view(store))
    envs = {e["name"]: [s["name"] for s in e["services"]] for e in data["environments"]}
    assert envs == {"production": [], "development": [], "staging": ["api"]}
    text = "".join(parsed(status_html(view(store))).text)
    assert "No service registered." in text


def test_ranges_count_this_hosts_allocations_against_their_size(store):
    allocator = PortAllocator(store, Settings(host=HOST))
    allocator.allocate("api", port=8101)
    allocator.allocate("api", port=8102, environment="staging")
    PortAllocator(store, Settings(host="other-host")).allocate("api", port=8103)
    data = status_json(view(store))
    ranges = {(r["host"], r["type"]): r for r in data["ranges"]}
    here = ranges[(HOST, "api")]
    assert (here["allocated"], here["size"], here["by_environment"]) == (
        2,
        1000,
        {"production": 1, "staging": 1},
    )
    assert ranges[("other-host", "api")]["allocated"] == 1
    assert ("other-host", "cache") not in ranges  # other hosts: only where they allocate
    assert (HOST, "cache") in ranges


def test_conflicts_name_their_holder(store, listener, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    port = free_port(start=21000)
    PortAllocator(store, Settings(host=HOST)).allocate("cache_b", port=port, type="dynamic")
    listener(port)  # then something else takes it
    snapshot = view(store, scan=True)
    data = status_json(snapshot)
    assert [(c["service"], c["port"]) for c in data["conflicts"]] == [("cache_b", port)]
    assert "pid" in data["conflicts"][0]["holders"][0]
    assert data["sources"]["docker"]["up"] is False
    assert "Docker" in (data["sources"]["docker"]["error"] or "") or "docker" in (
        data["sources"]["docker"]["error"] or ""
    )
    tags = parsed(status_html(snapshot))
    assert ("tr", {"class": "conflict", "data-service": "cache_b"}) in tags.tags


def test_before_the_first_scan_no_conflict_is_claimed(registry, store):
    registry.register("api", port=18206, instance_id="api-1", check=CheckSpec("none"))
    text = "".join(parsed(status_html(view(store))).text)
    assert "no conflicts" not in text
    assert "The port scan has not finished yet." in text


def test_health_nothing_has_checked_lately_is_shown_stale_not_green(registry, store, tmp_path):
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        registry.register("api", port=server.getsockname()[1], instance_id="api-1", check=CheckSpec("tcp"))
        Agent(registry).run_once()  # passing, recorded now
    assert status_json(view(store))["summary"]["passing"] == 1
    monitor = Monitor(store, Settings(host=HOST), scan_ports=False, clock=lambda: time.time() + 120)
    snapshot = monitor.snapshot(5)
    tags = parsed(status_html(snapshot))
    rows = {a["data-instance"]: a["data-status"] for t, a in tags.tags if t == "tr" and "data-instance" in a}
    assert rows == {"api-1": "stale"}
    text = "".join(tags.text)
    assert "is portctl agent running on test-host?" in text
    assert status_json(snapshot)["summary"]["passing"] == 0


def test_a_key_that_cannot_be_read_is_named_not_hidden_behind_green(registry, store):
    registry.register("api", port=18207, instance_id="api-1", check=CheckSpec("none"))
    store.create("registry/production/web/web-1/entry", "not json")
    tags = parsed(status_html(view(store, scan=True)))
    text = "".join(tags.text)
    assert "All services healthy" not in text
    assert "1 store key(s) could not be read" in text
    assert "registry/production/web/web-1/entry" in text


def test_a_critical_instance_nothing_checks_stays_critical(registry, store):
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    registry.register("api", port=port, instance_id="api-1", check=CheckSpec("tcp"))  # critical now
    monitor = Monitor(store, Settings(host=HOST), scan_ports=False, clock=lambda: time.time() + 120)
    data = status_json(monitor.snapshot(5))
    (instance,) = data["environments"][0]["services"][0]["instances"]
    assert instance["shown"] == "critical"
    assert data["summary"]["critical"] == 1


def test_recent_changes_show_the_newest_moves_and_frees_first(store):
    from portctl.ports.events import EventLog
    from portctl.records import Event

    assert "portctl has moved or freed no port" in "".join(parsed(status_html(view(store))).text)
    log = EventLog(store, HOST)
    log.record(
        Event("moved", 100.0, HOST, "portctl resolve", "production", "api", "tcp", 8000, 8001, "process x")
    )
    log.record(
        Event("freed", 200.0, HOST, "portctl free", protocol="tcp", old_port=5432, holder="container <y>")
    )
    page = status_html(view(store))
    tags = parsed(page)
    kinds = [a["data-kind"] for t, a in tags.tags if t == "tr" and "data-kind" in a]
    assert kinds == ["freed", "moved"]
    text = "".join(tags.text)
    assert "8000 → 8001" in text
    assert "api (production)" in text
    assert "container <y>" in text
    assert "<y>" not in page
    events = status_json(view(store))["events"]
    assert [(e["kind"], e["at"]) for e in events] == [("freed", 200.0), ("moved", 100.0)]
