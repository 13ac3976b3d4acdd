"""The Grafana dashboard for the exporter's series, and its file-provisioning provider.

Both are built as Python data and dumped, so a Grafana admin can drop the two files into
``provisioning/dashboards`` and have them load as they are: the dashboard carries a fixed ``uid``,
``"id": null`` and no ``__inputs``/``__requires`` (those are for the UI's import dialog only). The
Prometheus data source is a ``datasource`` variable, so the file names no data source uid.

``panel_queries`` lists every PromQL expression with the template variables replaced by ``.*``,
so the queries can be checked outside Grafana (``promtool check rules``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

__all__ = [
    "DASHBOARD_TITLE",
    "DASHBOARD_UID",
    "PanelTitle",
    "grafana_dashboard",
    "grafana_dashboard_data",
    "grafana_provider",
    "panel_queries",
]

DASHBOARD_UID = "portctl-ports"
DASHBOARD_TITLE = "portctl: ports and services"
SCHEMA_VERSION = 39
GRID_WIDTH = 24

JSON = dict[str, Any]

DATASOURCE: JSON = {"type": "prometheus", "uid": "${datasource}"}
# Label filters for the series that carry them (the contract's label sets differ per metric).
# Exporters that read one store serve the same store series: each is shown once, whichever
# exporter (scrape instance) it came from.
ONCE = "max without (instance, job)"
# Environments and hosts are offered where something is allocated or registered.
EITHER = '__name__=~"portctl_allocation_info|portctl_service_instance_info"'
ENV_HOST = 'deploy_env=~"$deploy_env", host=~"$host"'
ENV = 'deploy_env=~"$deploy_env"'


class PanelTitle:
    """The panel titles, for people and for tests that look panels up."""

    HEALTH = "Instance health"
    RANGE_UTILISATION = "Port range utilisation per service type"
    CONFLICTS = "Port conflicts over time"
    BLUEGREEN = "Blue-green live colour"
    CHECK_LATENCY = "Health check latency"
    ALLOCATIONS = "Allocations per environment"
    COLLECTORS = "Exporter sources"
    STORE_LATENCY = "Store read latency (p99)"
    MOVES = "Ports moved by conflict resolution"


def _target(expr: str, legend: str, *, table: bool = False, ref_id: str = "A") -> JSON:
    """A Prometheus query; ``table`` makes it an instant query whose labels become columns."""
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": "table" if table else "time_series",
        "instant": table,
        "legendFormat": legend,
        "range": not table,
        "refId": ref_id,
    }


def _thresholds(*steps: tuple[float | None, str]) -> JSON:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def _value_mapping(options: dict[str, tuple[str, str]]) -> JSON:
    """A Grafana value mapping: raw value -> (shown text, colour)."""
    return {
        "type": "value",
        "options": {
            raw: {"color": color, "index": index, "text": text}
            for index, (raw, (text, color)) in enumerate(options.items())
        },
    }


def _panel(
    panel_id: int,
    kind: str,
    title: str,
    grid: tuple[int, int, int, int],
    targets: list[JSON],
    *,
    description: str,
    defaults: JSON | None = None,
    options: JSON | None = None,
) -> JSON:
    x, y, w, h = grid
    panel: JSON = {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": defaults or {}, "overrides": []},
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "id": panel_id,
        "options": options or {},
        "targets": targets,
        "title": title,
        "type": kind,
    }
    return panel


def _stat_options(text_mode: str = "value_and_name") -> JSON:
    return {
        "colorMode": "background",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": text_mode,
        "wideLayout": True,
    }


def _bargauge_options() -> JSON:
    return {
        "displayMode": "gradient",
        "minVizHeight": 16,
        "minVizWidth": 8,
        "namePlacement": "auto",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
        "sizing": "auto",
        "valueMode": "color",
    }


def _timeseries_options() -> JSON:
    return {
        "legend": {"calcs": ["lastNotNull", "max"], "displayMode": "table", "placement": "bottom"},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _health_panel() -> JSON:
    return _panel(
        1,
        "stat",
        PanelTitle.HEALTH,
        (0, 0, 16, 8),
        [
            _target(
                f"{ONCE} (portctl_service_instance_healthy{{{ENV_HOST}}})", "{{service_name}}/{{service_id}}"
            )
        ],
        description="Every registered instance: healthy while its check passes; a stale tcp/http check "
        "counts as unhealthy.",
        defaults={
            "color": {"mode": "thresholds"},
            "mappings": [_value_mapping({"1": ("healthy", "green"), "0": ("unhealthy", "red")})],
            "thresholds": _thresholds((None, "red"), (1, "green")),
            "unit": "none",
        },
        options=_stat_options(),
    )


def _collectors_panel() -> JSON:
    return _panel(
        2,
        "stat",
        PanelTitle.COLLECTORS,
        (16, 0, 8, 4),
        [_target("portctl_collector_up", "{{collector}} ({{instance}})")],
        description="Whether each source (store, host port scan, Docker) answered on its last try. "
        "While the store is down its series keep their last known values.",
        defaults={
            "color": {"mode": "thresholds"},
            "mappings": [_value_mapping({"1": ("up", "green"), "0": ("down", "red")})],
            "thresholds": _thresholds((None, "red"), (1, "green")),
            "unit": "none",
        },
        options=_stat_options(),
    )


def _store_latency_panel() -> JSON:
    expr = "histogram_quantile(0.99, sum by (le) (rate(portctl_store_request_duration_seconds_bucket[5m])))"
    return _panel(
        3,
        "stat",
        PanelTitle.STORE_LATENCY,
        (16, 4, 8, 4),
        [_target(expr, "p99 read")],
        description="99th percentile of the exporter's store reads over 5 minutes.",
        defaults={
            "color": {"mode": "thresholds"},
            "thresholds": _thresholds((None, "green"), (0.5, "orange"), (2, "red")),
            "unit": "s",
        },
        options={**_stat_options("value"), "graphMode": "area"},
    )


def _range_utilisation_panel() -> JSON:
    expr = (
        # Per host (each host allocates from its own ports); max first, so exporters that
        # share one store and serve the same series do not count them twice.
        "sum by (service_type, host) (max by (service_type, deploy_env, host)"
        f" (portctl_range_allocated_ports{{{ENV_HOST}}}))"
        " / on (service_type) group_left () max by (service_type) (portctl_range_size_ports)"
    )
    return _panel(
        4,
        "bargauge",
        PanelTitle.RANGE_UTILISATION,
        (0, 8, 12, 8),
        [_target(expr, "{{host}} {{service_type}}")],
        description="Allocated ports (selected environments and hosts) as a share of each service "
        "type's port range.",
        defaults={
            "color": {"mode": "thresholds"},
            "max": 1,
            "min": 0,
            "thresholds": _thresholds((None, "green"), (0.8, "orange"), (0.95, "red")),
            "unit": "percentunit",
        },
        options=_bargauge_options(),
    )


def _allocations_panel() -> JSON:
    return _panel(
        5,
        "bargauge",
        PanelTitle.ALLOCATIONS,
        (12, 8, 12, 8),
        [
            _target(
                f"count by (deploy_env) ({ONCE} (portctl_allocation_info{{{ENV_HOST}}}))", "{{deploy_env}}"
            )
        ],
        description="Port allocations per deployment environment.",
        defaults={
            "color": {"mode": "palette-classic"},
            "min": 0,
            "thresholds": _thresholds((None, "blue")),
            "unit": "short",
        },
        options=_bargauge_options(),
    )


def _conflicts_panel() -> JSON:
    return _panel(
        6,
        "timeseries",
        PanelTitle.CONFLICTS,
        (0, 16, 12, 8),
        [_target(f"sum by (kind) ({ONCE} (portctl_port_conflicts{{{ENV_HOST}}}))", "{{kind}}")],
        description="Allocated ports held by something else right now: a process or a container.",
        defaults={
            "color": {"mode": "palette-classic"},
            "custom": {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1, "showPoints": "never"},
            "decimals": 0,
            "min": 0,
            "thresholds": _thresholds((None, "green"), (1, "red")),
            "unit": "short",
        },
        options=_timeseries_options(),
    )


def _bluegreen_panel() -> JSON:
    panel = _panel(
        7,
        "table",
        PanelTitle.BLUEGREEN,
        (12, 16, 12, 8),
        [_target(f"{ONCE} (portctl_bluegreen_live_color{{{ENV}}}) == 1", "", table=True)],
        description="The live colour of each blue-green service. A service with no live colour is "
        "not listed.",
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
        options={
            "cellHeight": "sm",
            "showHeader": True,
            "sortBy": [{"desc": False, "displayName": "service"}],
        },
    )
    colours = _value_mapping({"blue": ("blue", "blue"), "green": ("green", "green")})
    panel["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byName", "options": "colour"},
            "properties": [
                {"id": "mappings", "value": [colours]},
                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
            ],
        }
    ]
    panel["transformations"] = [
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True, "Value": True, "__name__": True},
                "indexByName": {"service_name": 0, "deploy_env": 1, "color": 2},
                "renameByName": {"color": "colour", "deploy_env": "environment", "service_name": "service"},
            },
        }
    ]
    return panel


def _check_latency_panel() -> JSON:
    return _panel(
        8,
        "timeseries",
        PanelTitle.CHECK_LATENCY,
        (0, 24, 24, 8),
        [
            _target(
                f"{ONCE} (portctl_service_check_duration_seconds{{{ENV_HOST}}})",
                "{{service_name}}/{{service_id}} on {{host}}",
            )
        ],
        description="How long each instance's last health check took (instances whose checks are timed).",
        defaults={
            "color": {"mode": "palette-classic"},
            "custom": {"drawStyle": "line", "fillOpacity": 0, "lineWidth": 1, "showPoints": "never"},
            "min": 0,
            "thresholds": _thresholds((None, "green")),
            "unit": "s",
        },
        options=_timeseries_options(),
    )


def _moves_panel() -> JSON:
    return _panel(
        9,
        "timeseries",
        PanelTitle.MOVES,
        (0, 32, 24, 8),
        [
            _target(
                f"{ONCE} (portctl_port_moves{{{ENV_HOST}}})",
                "{{service_name}} ({{deploy_env}}) on {{host}}",
            )
        ],
        description="Ports moved off foreign holders by portctl resolve or agent --resolve, as the "
        "event log keeps them; a step is a move (portctl events says from where to where, and why).",
        defaults={
            "color": {"mode": "palette-classic"},
            "custom": {"drawStyle": "line", "fillOpacity": 0, "lineWidth": 1, "showPoints": "never"},
            "decimals": 0,
            "min": 0,
            "thresholds": _thresholds((None, "green")),
            "unit": "short",
        },
        options=_timeseries_options(),
    )


def _query_variable(name: str, label: str, query: str) -> JSON:
    return {
        "allValue": ".*",
        "current": {},
        "datasource": DATASOURCE,
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def _templating() -> JSON:
    datasource = {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }
    deploy_env = _query_variable("deploy_env", "Environment", f"label_values({{{EITHER}}}, deploy_env)")
    host = _query_variable("host", "Host", f"label_values({{{EITHER}, {ENV}}}, host)")
    return {"list": [datasource, deploy_env, host]}


def grafana_dashboard_data() -> JSON:
    """The dashboard as Python data (what ``grafana_dashboard`` dumps)."""
    panels = [
        _health_panel(),
        _collectors_panel(),
        _store_latency_panel(),
        _range_utilisation_panel(),
        _allocations_panel(),
        _conflicts_panel(),
        _bluegreen_panel(),
        _check_latency_panel(),
        _moves_panel(),
    ]
    return {
        "annotations": {"list": []},
        "description": "Service health, port allocations, conflicts and blue-green state from "
        "portctl's exporter.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["portctl"],
        "templating": _templating(),
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": DASHBOARD_TITLE,
        "uid": DASHBOARD_UID,
        "version": 1,
        "weekStart": "",
    }


def grafana_dashboard() -> str:
    """The dashboard JSON, ready for Grafana's file provisioning (fixed uid, no ``__inputs``)."""
    return json.dumps(grafana_dashboard_data(), indent=2, sort_keys=True) + "\n"


def _all_panels(panels: list[JSON]) -> list[JSON]:
    """Panels in order, including those folded inside rows."""
    found: list[JSON] = []
    for panel in panels:
        found.append(panel)
        found.extend(_all_panels(panel.get("panels", [])))
    return found


def _variable_pattern(names: list[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    # $name, ${name} and ${name:format}; [[name]] is Grafana's old spelling.
    return re.compile(
        rf"\$\{{(?:{alternatives})(?::[^}}]*)?\}}|\$(?:{alternatives})\b|\[\[(?:{alternatives})\]\]"
    )


def panel_queries(dashboard: JSON) -> list[str]:
    """Every target ``expr`` of ``dashboard``, template variables replaced by ``.*``."""
    names = [variable["name"] for variable in dashboard.get("templating", {}).get("list", [])]
    pattern = _variable_pattern(names) if names else None
    queries: list[str] = []
    for panel in _all_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if isinstance(expr, str):
                queries.append(pattern.sub(".*", expr) if pattern else expr)
    return queries


def grafana_provider(dashboards_dir: str) -> str:
    """The provider YAML that makes Grafana load the dashboards in ``dashboards_dir``."""
    provider = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "portctl",
                "orgId": 1,
                "folder": "",
                "type": "file",
                "disableDeletion": False,
                "updateIntervalSeconds": 30,
                "allowUiUpdates": False,
                "options": {"path": dashboards_dir, "foldersFromFilesStructure": False},
            }
        ],
    }
    return yaml.safe_dump(provider, sort_keys=False)
