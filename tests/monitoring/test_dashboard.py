"""The Grafana dashboard and its provider, as a Grafana admin relies on them.

The PromQL is checked by the real ``promtool`` (Debian package ``prometheus``), not by a regex.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from portctl.monitoring.dashboard import (
    DASHBOARD_TITLE,
    DASHBOARD_UID,
    PanelTitle,
    grafana_dashboard,
    grafana_provider,
    panel_queries,
)
from tests.conftest import free_port

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (install the Debian package `prometheus`)"
)

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}

# The exporter's metric names, as listed in the metrics contract (METRICS.md).
CONTRACT_METRICS = frozenset(
    {
        "portctl_up",
        "portctl_build_info",
        "portctl_collector_up",
        "portctl_collector_duration_seconds",
        "portctl_collector_last_success_timestamp_seconds",
        "portctl_store_request_duration_seconds",
        "portctl_store_corrupt_keys",
        "portctl_service_instance_info",
        "portctl_service_instance_healthy",
        "portctl_service_instance_check_stale",
        "portctl_service_instance_status",
        "portctl_service_instance_last_check_timestamp_seconds",
        "portctl_service_check_duration_seconds",
        "portctl_allocation_info",
        "portctl_range_size_ports",
        "portctl_range_allocated_ports",
        "portctl_port_conflicts",
        "portctl_port_conflict_info",
        "portctl_bluegreen_live_color",
        "portctl_port_moves",
        "portctl_port_last_move_timestamp_seconds",
    }
)
HISTOGRAMS = frozenset({"portctl_store_request_duration_seconds"})
ALLOWED_METRICS = (
    CONTRACT_METRICS
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
    | {"up"}
)
METRIC_NAME = re.compile(r"portctl_[a-z_]+")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(grafana_dashboard())


def panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def panel_titled(dashboard: dict, title: str) -> dict:
    matches = [p for p in panels(dashboard) if p["title"] == title]
    assert len(matches) == 1, f"expected one panel titled {title!r}, found {len(matches)}"
    return matches[0]


def exprs(panel: dict) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


def mapped(panel: dict, raw: str, field_config: dict | None = None) -> dict:
    """The value mapping a panel applies to ``raw``: its text and colour."""
    mappings = (field_config or panel["fieldConfig"]["defaults"]).get("mappings", [])
    for mapping in mappings:
        if mapping["type"] == "value" and raw in mapping["options"]:
            return mapping["options"][raw]
    raise AssertionError(f"{panel['title']!r} has no mapping for {raw!r}")


def promtool_check(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rules = {
        "groups": [
            {
                "name": "portctl-dashboard",
                "rules": [{"record": f"portctl:panel_{n}", "expr": e} for n, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], check=False, capture_output=True, text=True, timeout=60
    )


# --- what Grafana's file provisioning needs -------------------------------------------------------


def test_the_dashboard_is_json_for_file_provisioning(dashboard):
    assert dashboard["uid"] == DASHBOARD_UID == "portctl-ports"
    assert dashboard["title"] == DASHBOARD_TITLE == "portctl: ports and services"
    assert dashboard["id"] is None
    assert dashboard["schemaVersion"] == 39
    assert "__inputs" not in dashboard
    assert "__requires" not in dashboard


def test_the_dashboard_is_stable_text():
    text = grafana_dashboard()
    assert text == grafana_dashboard()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert "__inputs" not in text


def test_the_datasource_is_a_variable_of_prometheus_sources(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_every_panel_and_target_uses_the_datasource_variable(dashboard):
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE_REF, variable["name"]


def test_no_data_source_uid_is_hard_coded(dashboard):
    uids = re.findall(r'"uid": "([^"]*)"', grafana_dashboard())
    assert set(uids) == {"${datasource}", DASHBOARD_UID}


def test_environment_and_host_are_multi_value_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("deploy_env", "host"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["includeAll"] is True
        assert variable["multi"] is True
        assert "portctl_allocation_info|portctl_service_instance_info" in variable["definition"]
        assert variable["definition"].endswith(f", {name})")


def test_panel_queries_filter_by_the_variables(dashboard):
    for title in (
        PanelTitle.HEALTH,
        PanelTitle.RANGE_UTILISATION,
        PanelTitle.CONFLICTS,
        PanelTitle.CHECK_LATENCY,
        PanelTitle.ALLOCATIONS,
    ):
        for expr in exprs(panel_titled(dashboard, title)):
            assert 'deploy_env=~"$deploy_env"' in expr, title
            assert 'host=~"$host"' in expr, title
    # Blue-green series carry no host label; filtering on it would hide every series once a host is picked.
    (bluegreen,) = exprs(panel_titled(dashboard, PanelTitle.BLUEGREEN))
    assert 'deploy_env=~"$deploy_env"' in bluegreen
    assert "host" not in bluegreen


# --- layout ---------------------------------------------------------------------------------------


def test_panel_ids_are_unique(dashboard):
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) for i in ids)


def test_panels_do_not_overlap_and_fit_the_grid(dashboard):
    rects = []
    for panel in panels(dashboard):
        g = panel["gridPos"]
        assert g["w"] > 0, panel["title"]
        assert g["h"] > 0, panel["title"]
        assert g["x"] >= 0, panel["title"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        assert g["y"] >= 0, panel["title"]
        rects.append((panel["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for (a, ax0, ay0, ax1, ay1), (b, bx0, by0, bx1, by1) in itertools.combinations(rects, 2):
        overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
        assert not overlap, f"{a!r} overlaps {b!r}"


def test_the_overlap_check_sees_an_overlap():
    # Two panels sharing a corner cell must count as overlapping, so the check above can fail.
    a = {"title": "a", "id": 1, "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}, "targets": []}
    b = {"title": "b", "id": 2, "gridPos": {"x": 11, "y": 7, "w": 4, "h": 4}, "targets": []}
    with pytest.raises(AssertionError, match="overlaps"):
        test_panels_do_not_overlap_and_fit_the_grid({"panels": [a, b]})


# --- the panels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "kinds", "metric"),
    [
        (PanelTitle.HEALTH, {"stat", "state-timeline", "table"}, "portctl_service_instance_healthy"),
        (PanelTitle.RANGE_UTILISATION, {"bargauge"}, "portctl_range_allocated_ports"),
        (PanelTitle.CONFLICTS, {"timeseries"}, "portctl_port_conflicts"),
        (PanelTitle.BLUEGREEN, {"stat", "table"}, "portctl_bluegreen_live_color"),
        (PanelTitle.CHECK_LATENCY, {"timeseries"}, "portctl_service_check_duration_seconds"),
        (PanelTitle.ALLOCATIONS, {"bargauge", "piechart"}, "portctl_allocation_info"),
        (PanelTitle.COLLECTORS, {"stat"}, "portctl_collector_up"),
        (PanelTitle.STORE_LATENCY, {"stat", "timeseries"}, "portctl_store_request_duration_seconds_bucket"),
        (PanelTitle.MOVES, {"timeseries"}, "portctl_port_moves"),
    ],
)
def test_each_panel_exists_with_its_query(dashboard, title, kinds, metric):
    panel = panel_titled(dashboard, title)
    assert panel["type"] in kinds
    assert any(metric in METRIC_NAME.findall(e) for e in exprs(panel))


def test_the_health_panel_shows_healthy_green_and_unhealthy_red(dashboard):
    panel = panel_titled(dashboard, PanelTitle.HEALTH)
    assert mapped(panel, "1")["text"] == "healthy"
    assert mapped(panel, "1")["color"] == "green"
    assert mapped(panel, "0")["text"] == "unhealthy"
    assert mapped(panel, "0")["color"] == "red"
    assert [t["legendFormat"] for t in panel["targets"]] == ["{{service_name}}/{{service_id}}"]


def test_the_collector_panel_shows_up_green_and_down_red(dashboard):
    panel = panel_titled(dashboard, PanelTitle.COLLECTORS)
    assert (mapped(panel, "1")["text"], mapped(panel, "1")["color"]) == ("up", "green")
    assert (mapped(panel, "0")["text"], mapped(panel, "0")["color"]) == ("down", "red")
    assert [t["legendFormat"] for t in panel["targets"]] == ["{{collector}} ({{instance}})"]


def test_range_utilisation_is_a_share_of_the_range(dashboard):
    panel = panel_titled(dashboard, PanelTitle.RANGE_UTILISATION)
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "percentunit"
    assert (defaults["min"], defaults["max"]) == (0, 1)
    steps = defaults["thresholds"]["steps"]
    assert [s["color"] for s in steps] == ["green", "orange", "red"]
    (expr,) = exprs(panel)
    assert "/ on (service_type) group_left () max by (service_type) (portctl_range_size_ports)" in expr


def test_the_bluegreen_panel_shows_the_live_colour(dashboard):
    panel = panel_titled(dashboard, PanelTitle.BLUEGREEN)
    (target,) = panel["targets"]
    assert target["expr"].endswith("== 1")
    assert target["format"] == "table"
    assert target["instant"] is True
    (organize,) = [t for t in panel["transformations"] if t["id"] == "organize"]
    assert organize["options"]["renameByName"]["color"] == "colour"
    assert not organize["options"]["excludeByName"].get("color")
    (override,) = [o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == "colour"]
    (mappings,) = [p["value"] for p in override["properties"] if p["id"] == "mappings"]
    for colour in ("blue", "green"):
        assert mapped(panel, colour, {"mappings": mappings})["color"] == colour


def test_latencies_are_in_seconds(dashboard):
    for title in (PanelTitle.CHECK_LATENCY, PanelTitle.STORE_LATENCY):
        assert panel_titled(dashboard, title)["fieldConfig"]["defaults"]["unit"] == "s"
    (store,) = exprs(panel_titled(dashboard, PanelTitle.STORE_LATENCY))
    assert store == (
        "histogram_quantile(0.99, sum by (le) (rate(portctl_store_request_duration_seconds_bucket[5m])))"
    )


# --- the queries ----------------------------------------------------------------------------------


def test_panel_queries_lists_every_target_with_variables_replaced(dashboard):
    queries = panel_queries(dashboard)
    assert len(queries) == sum(len(p["targets"]) for p in panels(dashboard))
    assert not any("$" in q for q in queries)
    assert (
        'max without (instance, job) (portctl_service_instance_healthy{deploy_env=~".*", host=~".*"})'
        in queries
    )


def test_panel_queries_replaces_each_spelling_of_a_variable():
    dashboard = {
        "templating": {"list": [{"name": "host"}, {"name": "hostgroup"}]},
        "panels": [
            {
                "type": "row",
                "panels": [
                    {"targets": [{"expr": 'up{host=~"$host", g=~"$hostgroup"}'}]},
                    {"targets": [{"expr": 'up{host=~"${host}", a=~"${host:regex}", b=~"[[host]]"}'}]},
                ],
            }
        ],
    }
    assert panel_queries(dashboard) == [
        'up{host=~".*", g=~".*"}',
        'up{host=~".*", a=~".*", b=~".*"}',
    ]


def test_every_query_uses_only_contract_metrics(dashboard):
    for query in panel_queries(dashboard):
        names = set(METRIC_NAME.findall(query)) | set(re.findall(r"(?<![\w:])up(?=\{|\s*$)", query))
        assert names, query
        assert names <= ALLOWED_METRICS, f"{query}: not in the contract: {names - ALLOWED_METRICS}"


def test_the_metrics_queried_are_those_the_exporter_serves_and_the_readme_lists(tmp_path, monkeypatch):
    from prometheus_client.parser import text_string_to_metric_families

    from portctl.backends.file import JsonFileStore
    from portctl.config.settings import Settings
    from portctl.monitoring.metrics import exposition
    from portctl.monitoring.snapshot import Monitor

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with JsonFileStore(str(tmp_path / "store.json")) as store:
        monitor = Monitor(store, Settings(host="h1"))
        monitor.scan()
        body, _ = exposition(monitor.snapshot(5))
    served = {family.name for family in text_string_to_metric_families(body.decode())}
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = set(re.findall(r"^\| `(portctl_[a-z_]+)` \|", readme, flags=re.MULTILINE))
    assert served == CONTRACT_METRICS
    assert documented == CONTRACT_METRICS


@needs_promtool
def test_every_query_is_valid_promql(dashboard, tmp_path):
    queries = panel_queries(dashboard)
    result = promtool_check(queries, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


@needs_promtool
def test_the_promql_check_fails_on_an_invalid_query(dashboard, tmp_path):
    broken = 'sum by (kind (portctl_port_conflicts{deploy_env=~".*"})'
    result = promtool_check([*panel_queries(dashboard), broken], tmp_path)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


# --- the provider ---------------------------------------------------------------------------------


def test_the_provider_points_grafana_at_the_directory(tmp_path):
    directory = str(tmp_path / "dashboards" / "portctl")
    provider = yaml.safe_load(grafana_provider(directory))
    assert provider["apiVersion"] == 1
    (entry,) = provider["providers"]
    assert entry["name"] == "portctl"
    assert entry["type"] == "file"
    assert entry["options"] == {"path": directory, "foldersFromFilesStructure": False}
    assert entry["disableDeletion"] is False
    assert entry["updateIntervalSeconds"] == 30


def test_the_provider_keeps_an_awkward_path_intact():
    directory = "/srv/grafana dashboards/port: ctl #1"
    provider = yaml.safe_load(grafana_provider(directory))
    assert provider["providers"][0]["options"]["path"] == directory


# --- the queries against a real Prometheus --------------------------------------------------------

PROMETHEUS = shutil.which("prometheus")
HOST = "h1"


@pytest.fixture(scope="module")
def exporter(tmp_path_factory) -> Iterator[str]:
    """A real ``portctl serve`` (in process) of a real store: two api instances (one failing,
    checked by the agent), allocations in two environments, one port held by a stranger, and a
    blue-green service live on green. Docker is made absent, so its source is down."""
    from portctl.backends.file import JsonFileStore
    from portctl.config.settings import Settings
    from portctl.keys import pointer_key
    from portctl.monitoring.server import StatusServer, parse_listen
    from portctl.monitoring.snapshot import Monitor
    from portctl.ports.allocator import PortAllocator
    from portctl.records import CheckSpec, LivePointer
    from portctl.registry.agent import Agent
    from portctl.registry.entries import Registry

    docker_host = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    opened: list[socket.socket] = []

    def listening(port: int = 0) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(8)
        opened.append(s)
        return s

    work = tmp_path_factory.mktemp("exporter")
    store = JsonFileStore(str(work / "store.json"))
    settings = Settings(host=HOST)
    registry = Registry(store, settings)
    up = listening()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down_port = closed.getsockname()[1]
    registry.register("api", port=up.getsockname()[1], instance_id="api-1", check=CheckSpec("tcp"))
    registry.register("api", port=down_port, instance_id="api-2", check=CheckSpec("tcp"))
    Agent(registry).run_once()
    allocator = PortAllocator(store, settings)
    allocator.allocate("api")
    allocator.allocate("worker", type="api")
    allocator.allocate("postgres", environment="staging")
    taken = allocator.allocate("cache_b", type="dynamic").allocation.port
    listening(taken)  # a stranger on cache_b's port
    store.create(
        pointer_key("production", "api"), LivePointer("api", "production", "green", "blue").to_json()
    )
    monitor = Monitor(store, settings)
    monitor.scan()
    server = StatusServer(monitor, parse_listen("127.0.0.1:0"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        store.close()
        for s in opened:
            s.close()
        if docker_host is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = docker_host


def _query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - a fixed http:// URL to our own Prometheus
        body = json.load(answer)
    assert body["status"] == "success", body
    return body["data"]["result"]


def _wait_for(predicate, what: str, timeout: float = 60.0):
    """Poll ``predicate`` until it returns something truthy (Prometheus offers no event to await)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = predicate()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, exporter) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.skip("prometheus not on PATH (install the Debian package `prometheus`)")
    work = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            # Two exporters of one store, as two jobs: every panel must show each series once.
            {"job_name": "portctl", "static_configs": [{"targets": [exporter.removeprefix("http://")]}]},
            {"job_name": "portctl-2", "static_configs": [{"targets": [exporter.removeprefix("http://")]}]},
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port(start=29000)
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        # Three scrapes, so rate() over the store's read latency has reads to show.
        _wait_for(lambda: _query(base, "count_over_time(portctl_up[1m]) >= 3"), "three scrapes")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def _panel_results(prometheus: str, dashboard: dict, title: str) -> list[dict]:
    panel = panel_titled(dashboard, title)
    (expr,) = panel_queries({"templating": dashboard["templating"], "panels": [panel]})
    return _query(prometheus, expr)


def _by(results: list[dict], label: str) -> dict[str, float]:
    return {r["metric"][label]: float(r["value"][1]) for r in results}


def test_prometheus_shows_each_instance_healthy_or_not(prometheus, dashboard):
    results = _panel_results(prometheus, dashboard, PanelTitle.HEALTH)
    assert _by(results, "service_id") == {"api-1": 1.0, "api-2": 0.0}


def test_prometheus_shows_range_utilisation_as_a_share(prometheus, dashboard):
    results = _panel_results(prometheus, dashboard, PanelTitle.RANGE_UTILISATION)
    found = {(r["metric"]["service_type"], r["metric"]["host"]): float(r["value"][1]) for r in results}
    assert found == {("api", HOST): 2 / 1000, ("database", HOST): 1 / 1000, ("dynamic", HOST): 1 / 55536}


def test_prometheus_shows_conflicts_by_kind(prometheus, dashboard):
    results = _panel_results(prometheus, dashboard, PanelTitle.CONFLICTS)
    assert _by(results, "kind") == {"process": 1.0, "container": 0.0}


def test_prometheus_shows_only_the_live_colour(prometheus, dashboard):
    results = _panel_results(prometheus, dashboard, PanelTitle.BLUEGREEN)
    assert [(r["metric"]["service_name"], r["metric"]["color"]) for r in results] == [("api", "green")]


def test_prometheus_shows_allocations_per_environment(prometheus, dashboard):
    results = _panel_results(prometheus, dashboard, PanelTitle.ALLOCATIONS)
    assert _by(results, "deploy_env") == {"production": 3.0, "staging": 1.0}


def test_prometheus_shows_sources_and_latencies(prometheus, dashboard):
    assert _by(_panel_results(prometheus, dashboard, PanelTitle.COLLECTORS), "collector") == {
        "store": 1.0,
        "host": 1.0,
        "docker": 0.0,
    }
    checks = _by(_panel_results(prometheus, dashboard, PanelTitle.CHECK_LATENCY), "service_id")
    assert set(checks) == {"api-1", "api-2"}
    assert all(0 < seconds < 5 for seconds in checks.values())  # the agent timed its checks
    (store,) = _panel_results(prometheus, dashboard, PanelTitle.STORE_LATENCY)
    assert 0 < float(store["value"][1]) <= 10  # every scrape read the store


def test_prometheus_offers_every_environment_and_host_allocated_or_registered(prometheus, dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    offered = {}
    for name in ("deploy_env", "host"):
        found = re.fullmatch(r"label_values\((\{.*\}), (\w+)\)", variables[name]["definition"])
        assert found, variables[name]["definition"]
        selector = found.group(1).replace("$deploy_env", ".*")
        url = f"{prometheus}/api/v1/label/{found.group(2)}/values?" + urllib.parse.urlencode(
            {"match[]": selector}
        )
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - our own Prometheus
            offered[name] = set(json.load(answer)["data"])
    # staging has an allocation and no registration; production has both
    assert offered == {"deploy_env": {"production", "staging"}, "host": {HOST}}
