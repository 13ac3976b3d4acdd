"""Prometheus series of a :class:`~portctl.monitoring.snapshot.Snapshot`.

Every series is built afresh from one view on each scrape (a removed service's series are
gone with it), as :class:`Family` records. The text format (what Prometheus asks for by
default, and the textfile) is written here: prometheus-client's encoder re-validates every
label name of every sample, about 12 us each, which at 10,000 instances (80,000 samples) is a
second per scrape. The names here are constants, valid once for all; the encoder is tested to
write byte for byte what prometheus-client writes for the same series. OpenMetrics goes through
prometheus-client (:class:`SnapshotCollector`).

Names follow Prometheus' naming guide: the ``portctl_`` prefix, base units, ``_info`` for
metadata, one-hot state gauges, and labels that do not clash with the
target labels a scrape adds (``job``, ``instance``) or that users commonly relabel into
(``service``, ``environment``): ``service_name``, ``service_id``, ``deploy_env``...
The table of every metric is in the README ("Metrics").
"""

from __future__ import annotations

import math
import platform
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.utils import floatToGoString

from portctl._version import __version__
from portctl.monitoring.snapshot import SOURCES, Snapshot, StoreView, stale
from portctl.ports.events import KEEP
from portctl.records import COLORS, Status
from portctl.routing.live import color_of

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["CONFLICT_KINDS", "Families", "Family", "SnapshotCollector", "exposition", "text", "textfile"]

# A value as prometheus-client spells it (``1.0``, ``+Inf``, ``1.5e+09``).
_library_float: Callable[[float], str] = floatToGoString


def _go_float(value: float) -> str:
    """:func:`floatToGoString`, with the values most samples have (1 and 0) spelled at once."""
    if value == 1.0:
        return "1.0"
    if value == 0.0 and math.copysign(1.0, value) > 0:
        return "0.0"
    return _library_float(value)


CONFLICT_KINDS = ("process", "container")
INSTANCE_LABELS = ["service_name", "service_id", "deploy_env", "service_type", "host"]


@dataclass(frozen=True)
class Family:
    """One metric family: its samples as (label values in ``labels`` order, value)."""

    name: str
    documentation: str
    type: str  # "gauge" or "histogram"
    labels: tuple[str, ...]
    samples: Sequence[tuple[Sequence[str], float]]
    histogram: tuple[tuple[tuple[str, int], ...], float] | None = None  # ((le, count), ...), sum


class Families:
    """The families of one view, in exposition order."""

    def __init__(self, snapshot: Snapshot, *, served: bool = True) -> None:
        self.snapshot = snapshot
        self.served = served  # False for a textfile: no portctl_up, which would outlive the writer

    def __iter__(self) -> Iterator[Family]:
        s = self.snapshot
        if self.served:
            yield _gauge("portctl_up", "1 while the portctl exporter answers.", [], [((), 1.0)])
        yield _gauge(
            "portctl_build_info",
            "The portctl version, Python version and store type; always 1.",
            ["version", "python_version", "store_type"],
            [((__version__, platform.python_version(), s.store_type), 1.0)],
        )
        yield from self._sources()
        buckets = tuple(s.latency.cumulative())
        yield Family(
            "portctl_store_request_duration_seconds",
            "How long the exporter's reads of the store took.",
            "histogram",
            ("operation",),
            [(("read",), 0.0)],
            (buckets, s.latency.total),
        )
        if s.store is not None:
            yield _gauge(
                "portctl_store_corrupt_keys",
                "Store keys skipped at the last read because they do not parse.",
                [],
                [((), float(len(s.store.corrupt)))],
            )
            yield from self._instances(s.store)
            yield from self._allocations(s.store)
            yield from self._bluegreen(s.store)
            yield from self._moves(s.store)
        yield from self._ranges()
        if s.scan is not None:
            yield from self._conflicts()

    def _sources(self) -> Iterator[Family]:
        sources = [self.snapshot.sources[name] for name in SOURCES]
        yield _gauge(
            "portctl_collector_up",
            "1 when the source's last try succeeded (the store: within the scrape's timeout).",
            ["collector"],
            [((x.name,), float(x.up)) for x in sources if x.tried],  # not scanned (yet): no claim
        )
        yield _gauge(
            "portctl_collector_duration_seconds",
            "How long the source's last try took.",
            ["collector"],
            [((x.name,), x.duration) for x in sources if x.tried],
        )
        yield _gauge(
            "portctl_collector_last_success_timestamp_seconds",
            "When the source last succeeded (host: the last complete port scan), as Unix time.",
            ["collector"],
            [((x.name,), x.last_success) for x in sources if x.last_success is not None],
        )

    def _instances(self, store: StoreView) -> Iterator[Family]:
        policy = self.snapshot.settings.policy
        info: list[tuple[tuple[str, ...], float]] = []
        healthy: list[tuple[tuple[str, ...], float]] = []
        status: list[tuple[tuple[str, ...], float]] = []
        checked: list[tuple[tuple[str, ...], float]] = []
        duration: list[tuple[tuple[str, ...], float]] = []
        stale_flags: list[tuple[tuple[str, ...], float]] = []
        now = self.snapshot.taken_at
        for instance in store.instances:
            e = instance.entry
            labels = (e.service, e.id, e.environment, store.service_type(e, policy), e.host)
            color = color_of(e) or ""
            info.append(((*labels, e.address, str(e.port), e.check.kind, color), 1.0))
            old = stale(instance, now)
            healthy.append((labels, float(instance.status == Status.PASSING and not old)))
            stale_flags.append((labels, float(old)))
            status.extend(((*labels, st.value), float(instance.status == st)) for st in Status)
            if instance.health.updated_at:
                checked.append((labels, instance.health.updated_at))
            if instance.health.duration is not None:
                duration.append((labels, instance.health.duration))
        yield _gauge(
            "portctl_service_instance_info",
            "One registered service instance: where it answers, its check and its color; always 1.",
            [*INSTANCE_LABELS, "address", "port", "check", "color"],
            info,
        )
        yield _gauge(
            "portctl_service_instance_healthy",
            "1 when the instance's health is passing and current, 0 when warning, critical or stale.",
            INSTANCE_LABELS,
            healthy,
        )
        yield _gauge(
            "portctl_service_instance_check_stale",
            "1 when the instance's TCP or HTTP check has not been recorded for three intervals "
            "(at least 30s): nothing is checking it, so its last status is not believed.",
            INSTANCE_LABELS,
            stale_flags,
        )
        yield _gauge(
            "portctl_service_instance_status",
            "The instance's health, one-hot: 1 on its status (passing, warning or critical).",
            [*INSTANCE_LABELS, "status"],
            status,
        )
        yield _gauge(
            "portctl_service_instance_last_check_timestamp_seconds",
            "When the instance's health was last recorded, as Unix time.",
            INSTANCE_LABELS,
            checked,
        )
        yield _gauge(
            "portctl_service_check_duration_seconds",
            "How long the instance's last health check took (checks portctl runs).",
            INSTANCE_LABELS,
            duration,
        )

    def _allocations(self, store: StoreView) -> Iterator[Family]:
        allocations = store.allocations
        yield _gauge(
            "portctl_allocation_info",
            "One allocated port; always 1.",
            ["service_name", "deploy_env", "service_type", "host", "port", "protocol"],
            [((a.service, a.environment, a.type, a.host, str(a.port), a.protocol), 1.0) for a in allocations],
        )

    def _ranges(self) -> Iterator[Family]:
        types = self.snapshot.settings.policy.types.values()
        yield _gauge(
            "portctl_range_size_ports",
            "Ports in a service type's range.",
            ["service_type", "range"],
            [((t.name, t.range_text), float(t.high - t.low + 1)) for t in types],
        )
        if self.snapshot.store is None:
            return
        policy = self.snapshot.settings.policy
        counts = Counter((a.type, a.environment, a.host) for a in self.snapshot.store.in_ranges(policy))
        yield _gauge(
            "portctl_range_allocated_ports",
            "Allocated ports within a service type's range, by environment and host.",
            ["service_type", "deploy_env", "host"],
            [(key, float(n)) for key, n in sorted(counts.items())],
        )

    def _conflicts(self) -> Iterator[Family]:
        host = self.snapshot.settings.host
        findings = self.snapshot.findings
        counts = Counter({(f.target.environment, kind): 0 for f in findings for kind in CONFLICT_KINDS})
        details = []
        for finding in (f for f in findings if f.conflicts):
            t = finding.target
            for holder in finding.conflicts:
                kind = holder.kind if holder.kind in CONFLICT_KINDS else "process"
                counts[(t.environment, kind)] += 1
                labels = (t.service, t.environment, host, str(t.port), t.protocol, kind, holder.describe())
                details.append((labels, 1.0))
        yield _gauge(
            "portctl_port_conflicts",
            "Allocated ports on this host held by something other than their service, at the last scan.",
            ["deploy_env", "host", "kind"],
            [((env, host, kind), float(n)) for (env, kind), n in sorted(counts.items())],
        )
        yield _gauge(
            "portctl_port_conflict_info",
            "One conflict at the last scan: the allocated port and what holds it; always 1.",
            ["service_name", "deploy_env", "host", "port", "protocol", "kind", "holder"],
            details,
        )

    def _bluegreen(self, store: StoreView) -> Iterator[Family]:
        samples: list[tuple[tuple[str, ...], float]] = []
        for (env, service), pointer in sorted(store.pointers.items()):
            samples.extend(((service, env, c), float(pointer.live == c)) for c in COLORS)
        yield _gauge(
            "portctl_bluegreen_live_color",
            "A blue-green service's live color, one-hot (both 0 while no color is live).",
            ["service_name", "deploy_env", "color"],
            samples,
        )

    def _moves(self, store: StoreView) -> Iterator[Family]:
        counts: dict[tuple[str, str, str], int] = {}
        last: dict[tuple[str, str, str], float] = {}
        for e in store.events:
            if e.kind == "moved" and e.service and e.environment:
                key = (e.service, e.environment, e.host)
                counts[key] = counts.get(key, 0) + 1
                last[key] = max(last.get(key, 0.0), e.at)
        labels = ["service_name", "deploy_env", "host"]
        yield _gauge(
            "portctl_port_moves",
            f"Ports moved off foreign holders by conflict resolution, as the event log keeps them "
            f"(its newest {KEEP} events per host; portctl events lists them).",
            labels,
            [(k, float(n)) for k, n in sorted(counts.items())],
        )
        yield _gauge(
            "portctl_port_last_move_timestamp_seconds",
            "When conflict resolution last moved the service's port, as Unix time.",
            labels,
            [(k, at) for k, at in sorted(last.items())],
        )


Samples = Sequence[tuple[Sequence[str], float]]


def _gauge(name: str, documentation: str, labels: list[str], samples: Samples) -> Family:
    return Family(name, documentation, "gauge", tuple(labels), samples)


# The text format -----------------------------------------------------------------------------


def text(families: Iterable[Family]) -> str:
    """The Prometheus text format (0.0.4) of ``families``: what prometheus-client's
    ``generate_latest`` writes for them (labels sorted by name, its float spelling)."""
    out: list[str] = []
    rendered: dict[tuple[tuple[str, ...], Sequence[str]], str] = {}  # (labels, values): "{...}"
    for f in families:
        help_text = f.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {f.name} {help_text}\n# TYPE {f.name} {f.type}\n")
        order = sorted(range(len(f.labels)), key=f.labels.__getitem__)
        names = [f.labels[i] for i in order]
        if f.histogram is not None:
            ((values, _),) = f.samples
            pairs = [(n, values[i]) for n, i in zip(names, order, strict=True)]
            buckets, total = f.histogram
            for le, count in buckets:
                labels = _labels(sorted([*pairs, ("le", le)]))
                out.append(f"{f.name}_bucket{labels} {_go_float(count)}\n")
            labels = _labels(pairs)
            out.append(f"{f.name}_count{labels} {_go_float(buckets[-1][1])}\n")
            out.append(f"{f.name}_sum{labels} {_go_float(total)}\n")
            continue
        if not names:
            out.extend(f"{f.name} {_go_float(value)}\n" for _, value in f.samples)
            continue
        # The families of one instance share its label values: each set is written once, and a
        # family with one more label that sorts last (status) extends the set written before.
        key, base = f.labels, f.labels[:-1]
        last = f.labels[-1]
        extends = bool(base) and all(last > n for n in base)
        for values, value in f.samples:
            found = rendered.get((key, values))
            if found is None:
                head = rendered.get((base, tuple(values[:-1]))) if extends else None
                if head is not None:
                    found = f'{head[:-1]},{last}="{_escaped(values[-1])}"}}'
                else:
                    inner = ",".join(
                        f'{n}="{_escaped(values[i])}"' for n, i in zip(names, order, strict=True)
                    )
                    found = "{" + inner + "}"
                rendered[(key, values)] = found
            out.append(f"{f.name}{found} {_go_float(value)}\n")
    return "".join(out)


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{n}="{_escaped(v)}"' for n, v in pairs) + "}" if pairs else ""


def _escaped(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


# prometheus-client: OpenMetrics, and the reference for the text format ----------------------


class SnapshotCollector:
    """A prometheus-client collector of one view's families."""

    def __init__(self, families: Iterable[Family]) -> None:
        self.families = list(families)

    def describe(self) -> list[Metric]:
        return []  # series exist only per scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        for f in self.families:
            if f.histogram is not None:
                histogram = HistogramMetricFamily(f.name, f.documentation, labels=list(f.labels))
                ((values, _),) = f.samples
                buckets, total = f.histogram
                histogram.add_metric(list(values), list(buckets), total)
                yield histogram
                continue
            gauge = GaugeMetricFamily(f.name, f.documentation, labels=list(f.labels))
            for values, value in f.samples:
                gauge.add_metric(list(values), value)
            yield gauge


OPENMETRICS = "application/openmetrics-text"
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exposition(snapshot: Snapshot, accept: str | None = None, *, served: bool = True) -> tuple[bytes, str]:
    """The exposition of ``snapshot`` in the format ``accept`` asks for (OpenMetrics or the
    text format), and its content type."""
    families = Families(snapshot, served=served)
    if OPENMETRICS not in (accept or ""):
        return text(families).encode(), TEXT_TYPE
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(families))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def textfile(snapshot: Snapshot) -> str:
    """The text exposition, for node_exporter's textfile collector (no ``portctl_up``: there
    the file's freshness is node_exporter's ``node_textfile_mtime_seconds``)."""
    return text(Families(snapshot, served=False))
