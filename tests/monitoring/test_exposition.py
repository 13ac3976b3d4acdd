"""portctl's text encoder writes byte for byte what prometheus-client writes for the same series."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from portctl.monitoring.metrics import Family, SnapshotCollector, text

LABEL = st.sampled_from(["service_name", "service_id", "deploy_env", "host", "holder", "a", "zz"])
VALUE = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**12).map(float)


def reference(families: list[Family]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(families))
    return generate_latest(registry).decode()


@st.composite
def gauges(draw) -> Family:
    labels = tuple(draw(st.lists(LABEL, unique=True, max_size=5)))
    samples = draw(st.lists(st.tuples(st.tuples(*[st.text(max_size=12) for _ in labels]), VALUE), max_size=6))
    documentation = draw(st.text(max_size=30))
    return Family("portctl_x", documentation, "gauge", labels, samples)


@settings(max_examples=300, deadline=2000)
@given(st.lists(gauges(), max_size=3))
def test_gauges_are_written_as_prometheus_client_writes_them(families):
    assert text(families) == reference(families)


@settings(max_examples=100, deadline=2000)
@given(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=6),
    st.floats(0, 1e6),
    st.text(max_size=10),
)
def test_a_histogram_is_written_as_prometheus_client_writes_it(counts, total, operation):
    cumulative, running = [], 0
    for i, n in enumerate(counts):
        running += n
        bound = "+Inf" if i == len(counts) - 1 else str(0.005 * (i + 1))
        cumulative.append((bound, running))
    family = Family(
        "portctl_h_seconds",
        "help",
        "histogram",
        ("operation",),
        [((operation,), 0.0)],
        (tuple(cumulative), total),
    )
    assert text([family]) == reference([family])


def test_the_awkward_values_are_escaped_alike():
    family = Family(
        "portctl_conflict",
        'held by "x"\\ and\na newline',
        "gauge",
        ("holder", "service_name"),
        [(('python3 -c "print(\\"hi\\")"\n', "api"), math.inf), (("", "web"), -0.0)],
    )
    written = text([family])
    assert written == reference([family])
    assert '\\"' in written
    assert "\\n" in written


@st.composite
def instance_families(draw) -> list[Family]:
    """Families sharing label values, as an instance's do: the same labels, the same labels in
    another order, and one more label that sorts last (like ``status``)."""
    labels = tuple(draw(st.lists(LABEL, unique=True, min_size=1, max_size=4)))
    rows = draw(st.lists(st.tuples(*[st.text(max_size=8) for _ in labels]), min_size=1, max_size=4))
    extra = draw(st.lists(st.text(max_size=6), min_size=1, max_size=3))
    value = draw(VALUE)
    reordered = labels[::-1]
    return [
        Family("portctl_a", "a", "gauge", labels, [(row, value) for row in rows]),
        Family("portctl_b", "b", "gauge", reordered, [(row[::-1], value) for row in rows]),
        Family(
            "portctl_c",
            "c",
            "gauge",
            (*labels, "zzz_state"),
            [((*row, x), value) for row in rows for x in extra],
        ),
        Family(
            "portctl_d",
            "d",
            "gauge",
            ("zzz_state", *labels),
            [((x, *row), value) for row in rows for x in extra],
        ),
    ]


@settings(max_examples=300, deadline=2000)
@given(instance_families())
def test_label_sets_shared_between_families_are_written_as_prometheus_client_writes_them(families):
    assert text(families) == reference(families)
