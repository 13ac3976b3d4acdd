"""The Prometheus alerting rules for portctl's exporter (``portctl render prometheus-rules``).

:func:`prometheus_rules` returns one rules file with one group, ``portctl``, built against the
series of the exporter (see its metrics contract) and the ``up`` series of its scrape job.

Several exporters reading one store serve the same store-derived series (instances, ranges,
allocations), told apart only by their target labels; the rules on those series take one value
per portctl label set, so one instance or range gives one alert however many exporters see it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from portctl.errors import InvalidInput

__all__ = ["DEFAULT_JOB", "prometheus_rules"]

DEFAULT_JOB = "portctl"
RANGE_FULL_RATIO = 0.9
SCAN_STALE_SECONDS = 600

# Prometheus' own duration form (model.ParseDuration): units largest first, each at most once,
# ASCII digits only; "0" alone is also a duration.
_DURATION = re.compile(
    r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?"
)
_UNIT_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)
_LONGEST_MS = (2**63 - 1) // 1_000_000  # Prometheus holds a duration in int64 nanoseconds
_DURATION_EXPECTED = "a Prometheus duration such as 5m"

# The labels that name one registered instance, and one range's allocations, in the contract.
_INSTANCE_LABELS = "service_name, service_id, deploy_env, service_type, host"
_ALLOCATED_LABELS = "host, service_type, deploy_env"


def prometheus_rules(critical_for: str = "5m", job: str = DEFAULT_JOB) -> str:
    """The alerting rules file, as YAML text.

    ``critical_for`` is how long an instance stays critical before it alerts (a Prometheus
    duration: ``30s``, ``5m``, ``1h30m``). ``job`` is the name of the scrape job of the
    exporters in Prometheus' config: the exporter-down alert watches ``up{job="<job>"}`` and
    also fires when that job has no target at all (a job of another name is not watched)."""
    document = {"groups": [{"name": "portctl", "rules": _alerts(_duration(critical_for), _job(job))}]}
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000)


def _duration(value: object) -> str:
    """``value`` when Prometheus reads it as a duration; otherwise :class:`InvalidInput`."""
    if value == "0":
        return value
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None or not any(match.groups()):
        raise InvalidInput("critical_for", value, _DURATION_EXPECTED)
    total = sum(int(n) * unit for n, unit in zip(match.groups(), _UNIT_MS, strict=True) if n)
    if total > _LONGEST_MS:
        raise InvalidInput("critical_for", value, _DURATION_EXPECTED, problem=f"{value} is too long")
    return match.string


def _job(value: object) -> str:
    """``value`` as a PromQL string literal, once it is a job name."""
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise InvalidInput("job", value, "the name of the exporters' scrape job, such as portctl")
    return json.dumps(value, ensure_ascii=False)


def _alerts(critical_for: str, job: str) -> list[dict[str, Any]]:
    return [
        _port_conflict(),
        _instance_critical(critical_for),
        _instance_not_checked(),
        _range_nearly_full(),
        _store_unreachable(),
        _exporter_down(job),
        _host_scan_stale(),
        _host_scan_failing(),
        _store_corrupt_keys(),
    ]


def _alert(name: str, expr: str, wait: str, severity: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": wait,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


def _port_conflict() -> dict[str, Any]:
    return _alert(
        "PortctlPortConflict",
        "portctl_port_conflict_info == 1",
        "1m",
        "warning",
        "Port {{ $labels.port }}/{{ $labels.protocol }} of {{ $labels.service_name }}"
        " on {{ $labels.host }} is held by something else",
        "{{ $labels.service_name }} ({{ $labels.deploy_env }}) is allocated port"
        " {{ $labels.port }}/{{ $labels.protocol }} on {{ $labels.host }}, but a {{ $labels.kind }}"
        " holds it: {{ $labels.holder }}. Run portctl who {{ $labels.port }} on that host.",
    )


def _instance_critical(critical_for: str) -> dict[str, Any]:
    return _alert(
        "PortctlInstanceCritical",
        'max without (instance, job) (portctl_service_instance_status{status="critical"}) == 1',
        critical_for,
        "critical",
        "{{ $labels.service_name }} instance {{ $labels.service_id }} on {{ $labels.host }} is critical",
        "The health check of {{ $labels.service_id }} ({{ $labels.service_name }},"
        " {{ $labels.deploy_env }}) on {{ $labels.host }} has been critical for more than "
        f"{critical_for}.",
    )


def _instance_not_checked() -> dict[str, Any]:
    return _alert(
        "PortctlInstanceNotChecked",
        "max without (instance, job) (portctl_service_instance_check_stale) == 1",
        "5m",
        "warning",
        "Nothing is checking {{ $labels.service_name }} instance {{ $labels.service_id }}"
        " on {{ $labels.host }}",
        "The health of {{ $labels.service_id }} ({{ $labels.service_name }}, {{ $labels.deploy_env }}) has"
        " not been recorded for three check intervals: its last status is not believed (healthy is 0)."
        " Is portctl agent running on {{ $labels.host }}?",
    )


def _range_nearly_full() -> dict[str, Any]:
    allocated = f"sum by (host, service_type) (max by ({_ALLOCATED_LABELS}) (portctl_range_allocated_ports))"
    size = "max by (service_type) (portctl_range_size_ports)"
    return _alert(
        "PortctlRangeNearlyFull",
        f"{allocated} / on (service_type) group_left () {size} > {RANGE_FULL_RATIO}",
        "15m",
        "warning",
        "The {{ $labels.service_type }} port range on {{ $labels.host }} is"
        " {{ $value | humanizePercentage }} allocated",
        "{{ $value | humanizePercentage }} of the {{ $labels.service_type }} range's ports on"
        f" {{{{ $labels.host }}}} are allocated (over {RANGE_FULL_RATIO:.0%} for 15m): new"
        " {{ $labels.service_type }} allocations there will soon find no free port."
        " Release unused allocations or widen the range.",
    )


def _store_unreachable() -> dict[str, Any]:
    return _alert(
        "PortctlStoreUnreachable",
        'portctl_collector_up{collector="store"} == 0',
        "2m",
        "critical",
        "portctl exporter {{ $labels.instance }} cannot reach its store",
        "The exporter {{ $labels.instance }} has failed to read the portctl store for more than 2m:"
        " the registry, allocation and health series it serves are its last known values, not"
        " current ones.",
    )


def _exporter_down(job: str) -> dict[str, Any]:
    return _alert(
        "PortctlExporterDown",
        f"up{{job={job}}} == 0 or absent(up{{job={job}}})",
        "5m",
        "critical",
        "{{ if $labels.instance }}portctl exporter {{ $labels.instance }} is down"
        "{{ else }}No portctl exporter is scraped{{ end }}",
        "{{ if $labels.instance }}Prometheus has failed to scrape {{ $labels.instance }}"
        " (job {{ $labels.job }}) for more than 5m"
        "{{ else }}Prometheus has had no target in scrape job {{ $labels.job }} for more than 5m"
        " (the job that scrapes the exporters must have that name){{ end }}:"
        " the other portctl alerts cannot fire for what it serves.",
    )


def _host_scan_stale() -> dict[str, Any]:
    return _alert(
        "PortctlHostScanStale",
        'time() - portctl_collector_last_success_timestamp_seconds{collector="host"}'
        f" > {SCAN_STALE_SECONDS}",
        "0s",
        "warning",
        f"No successful port scan by {{{{ $labels.instance }}}} for more than {SCAN_STALE_SECONDS // 60}m",
        "The exporter {{ $labels.instance }} last scanned its host's ports"
        " {{ $value | humanizeDuration }} ago: port conflicts on that host go unseen until a scan"
        " succeeds.",
    )


def _host_scan_failing() -> dict[str, Any]:
    return _alert(
        "PortctlHostScanFailing",
        'portctl_collector_up{collector="host"} == 0',
        "10m",
        "warning",
        "The port scan of {{ $labels.instance }} has been failing for 10m",
        "The exporter {{ $labels.instance }} cannot scan its host's allocated ports (it may never"
        " have): port conflicts on that host go unseen. Its page says why.",
    )


def _store_corrupt_keys() -> dict[str, Any]:
    return _alert(
        "PortctlStoreCorruptKeys",
        "max without (instance, job) (portctl_store_corrupt_keys) > 0",
        "5m",
        "warning",
        "{{ $value }} portctl store key(s) cannot be read",
        "{{ $value }} key(s) of the portctl store do not parse, so the services, allocations or"
        " colours they hold are missing from every portctl answer. The status page names them.",
    )
