"""What a Prometheus scrape of ``portctl serve`` costs as the registry grows, beside a plain read
of the same registrations from the same store.

    python bench/scrape.py [--sizes 10,1000,10000] [--runs 200] [--stores file,etcd] [--quick]

For each store (the JSON file store, and one throwaway etcd member on loopback with its data in
a temp dir, started as bench/etcd.py starts it) and each size, that many instances are written
straight into the registry's key layout (entry and health keys, 10 instances per service, one in
ten warning and one in ten critical), in batched transactions (64 keys each: etcd allows 128
operations per txn by default). Then, taking turns so all see the same machine load:

* plain: ``Registry(store, settings).instances(all_environments=True)``, the read a CLI listing
  makes (the peer);
* /metrics in process: ``monitor.snapshot()`` + ``exposition()``, the server's work for a scrape;
* / in process: ``monitor.snapshot()`` + ``status_html()``;
* GET /metrics and GET / over loopback against a real ``StatusServer``: from the request to
  the last byte of the body read, a new connection each (the server speaks HTTP/1.0).

Peak memory is tracemalloc's peak over one call (all threads), measured apart from the timings.
Targets: a /metrics scrape of 1,000 instances within 50 ms server time (in-process p50) and
within 2x of the plain read's p50; per-instance cost of /metrics at 10,000 no more than 1.5x
the one at 1,000 (linear growth).
"""

from __future__ import annotations

import argparse
import http.client
import json
import pathlib
import signal
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

HERE = pathlib.Path(__file__).resolve().parent
# As in bench/etcd.py: this folder must not shadow the ``etcd`` module; the root is added for
# tests/ and for bench/etcd.py's throwaway member.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from bench._common import percentile  # noqa: E402 - after the path fix above
from bench.etcd import etcd_version, throwaway_etcd  # noqa: E402
from portctl.backends import Store  # noqa: E402
from portctl.backends.base import Create, Operation  # noqa: E402
from portctl.backends.etcd import EtcdStore  # noqa: E402
from portctl.backends.file import JsonFileStore  # noqa: E402
from portctl.config.settings import Settings  # noqa: E402
from portctl.keys import entry_key, health_key  # noqa: E402
from portctl.monitoring.metrics import exposition  # noqa: E402
from portctl.monitoring.page import status_html  # noqa: E402
from portctl.monitoring.server import StatusServer, parse_listen  # noqa: E402
from portctl.monitoring.snapshot import Monitor  # noqa: E402
from portctl.records import CheckSpec, HealthRecord, ServiceEntry, Status  # noqa: E402
from portctl.registry.entries import Registry  # noqa: E402

SETTINGS = Settings(host="bench-host")
ENV = "production"
PER_SERVICE = 10
BATCH = 64  # keys per transaction, as portctl migrate writes them
SIZES = (10, 1_000, 10_000)
TARGET_MS = 50.0  # /metrics server time at 1,000 instances
TARGET_RATIO = 2.0  # /metrics over the plain read, at 1,000 instances
TARGET_GROWTH = 1.5  # per-instance cost at 10,000 over the one at 1,000

# Populating ----------------------------------------------------------------------------------


def registration(i: int, now: float) -> tuple[ServiceEntry, HealthRecord]:
    service, n = f"svc{i // PER_SERVICE:04d}", i % PER_SERVICE
    check = CheckSpec("http", f"http://10.0.{i // 250 % 250}.{i % 250}:{20000 + n}/health")
    if n % 3 == 1:
        check = CheckSpec("tcp")
    entry = ServiceEntry(
        f"{service}-{n}",
        service,
        ENV,
        f"host-{i % 20:02d}",
        f"10.0.{i // 250 % 250}.{i % 250}",
        20000 + n,
        ("api", "v2") if n % 2 else (),
        {"team": f"team{i % 7}"},
        check,
        now - 3600,
        4000 + n,
    )
    status = Status.CRITICAL if n == 9 else Status.WARNING if n == 8 else Status.PASSING
    health = HealthRecord(
        status,
        "HTTP 200 OK" if status == Status.PASSING else "connection refused",
        now - 5,
        critical_since=now - 60 if status == Status.CRITICAL else None,
        duration=0.003,
    )
    return entry, health


def populate(store: Store, count: int, batch: int) -> None:
    """``count`` instances written as Registry.register would store them, ``batch`` keys per
    transaction."""
    now = time.time()
    ops: list[Operation] = []
    for i in range(count):
        entry, health = registration(i, now)
        ops.append(
            Create(entry_key(ENV, entry.service, entry.id), json.dumps(entry.to_dict(), sort_keys=True))
        )
        ops.append(
            Create(health_key(ENV, entry.service, entry.id), json.dumps(health.to_dict(), sort_keys=True))
        )
        if len(ops) >= batch:
            store.transact(ops)
            ops = []
    if ops:
        store.transact(ops)


# Measuring -----------------------------------------------------------------------------------


def get(url: str, path: str) -> bytes:
    """One GET, a new connection, the whole body read."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"GET {path} answered {response.status}: {body[:200]!r}")
        return body
    finally:
        connection.close()


@dataclass
class Size:
    """Every timing (ms) and peak (bytes) of one store at one size."""

    instances: int
    times: dict[str, list[float]] = field(default_factory=dict)
    peaks: dict[str, int] = field(default_factory=dict)
    metrics_bytes: int = 0
    page_bytes: int = 0

    def p(self, name: str, q: float = 0.5) -> float:
        return percentile(self.times[name], q)


def peak_bytes(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(store: Store, count: int, runs: int) -> Size:
    registry = Registry(store, SETTINGS)
    monitor = Monitor(store, SETTINGS, scan_ports=False)
    server = StatusServer(monitor, parse_listen("127.0.0.1:0"))
    server.start()
    calls: dict[str, Callable[[], object]] = {
        "plain": lambda: registry.instances(all_environments=True),
        "snapshot": monitor.snapshot,
        "metrics": lambda: exposition(monitor.snapshot()),
        "page": lambda: status_html(monitor.snapshot()),
        "GET /metrics": lambda: get(server.url, "/metrics"),
        "GET /": lambda: get(server.url, "/"),
    }
    size = Size(count, {name: [] for name in calls})
    try:
        found = len(registry.instances(all_environments=True))
        if found != count:
            raise SystemExit(f"{store.describe()} holds {found} instances, not {count}")
        size.metrics_bytes, size.page_bytes = len(get(server.url, "/metrics")), len(get(server.url, "/"))
        names = list(calls)
        for i in range(runs):
            shift = i % len(names)  # each takes its turn at going first
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                calls[name]()
                size.times[name].append((time.perf_counter() - start) * 1000)
        for name in ("plain", "metrics", "page"):
            size.peaks[name] = peak_bytes(calls[name])
    finally:
        server.stop()
    return size


# The stores ----------------------------------------------------------------------------------


@contextmanager
def stores(make: Callable[[int], Store]) -> Iterator[Callable[[int], Store]]:
    """``make(count)`` opens a fresh store for ``count`` instances; all are closed at the end."""
    opened: list[Store] = []

    def open_one(count: int) -> Store:
        store = make(count)
        opened.append(store)
        return store

    try:
        yield open_one
    finally:
        for store in opened:
            store.close()


def file_stores(folder: str) -> AbstractContextManager[Callable[[int], Store]]:
    return stores(lambda count: JsonFileStore(f"{folder}/store-{count}.json"))


def etcd_stores(endpoint: str) -> AbstractContextManager[Callable[[int], Store]]:
    return stores(lambda count: EtcdStore.from_url(f"etcd://{endpoint}/scrape{count}"))


def runs_for(count: int, runs: int) -> int:
    """Fewer repetitions for the large sizes: all of them up to 100 instances, half up to 1,000,
    a tenth above."""
    return max(5, runs if count <= 100 else runs // 2 if count <= 1_000 else runs // 10)


def run_store(opener: Callable[[int], Store], sizes: list[int], runs: int) -> list[Size]:
    out = []
    for count in sizes:
        store = opener(count)
        start = time.perf_counter()
        # The file store rewrites its whole file per transaction: one for all keys.
        populate(store, count, BATCH if isinstance(store, EtcdStore) else 2 * count)
        filled = time.perf_counter() - start
        print(f"  {count:,} instances written in {filled:.1f}s; measuring...", file=sys.stderr, flush=True)
        out.append(measure(store, count, runs_for(count, runs)))
    return out


# The table -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_table(title: str, sizes: list[Size]) -> None:
    print(f"\n{title}")
    print(
        f"{'instances':>10}{'runs':>6}{'plain':>9}{'/metrics in process':>20}{'GET /metrics':>18}"
        f"{'/ in process':>18}{'GET /':>18}{'ratio':>8}{'peak MiB':>20}{'body KiB':>16}"
    )
    print(
        f"{'':>10}{'':>6}{'p50':>9}{'p50':>10}{'p99':>10}{'p50':>9}{'p99':>9}{'p50':>9}{'p99':>9}"
        f"{'p50':>9}{'p99':>9}{'metrics':>8}{'plain':>7}{'metrics':>8}{'/':>5}{'metrics':>9}{'/':>7}"
    )
    for s in sizes:
        mib = {k: v / 2**20 for k, v in s.peaks.items()}
        print(
            f"{s.instances:>10,}{len(s.times['plain']):>6}{s.p('plain'):>9.2f}"
            f"{s.p('metrics'):>10.2f}{s.p('metrics', 0.99):>10.2f}"
            f"{s.p('GET /metrics'):>9.2f}{s.p('GET /metrics', 0.99):>9.2f}"
            f"{s.p('page'):>9.2f}{s.p('page', 0.99):>9.2f}{s.p('GET /'):>9.2f}{s.p('GET /', 0.99):>9.2f}"
            f"{s.p('metrics') / s.p('plain'):>7.2f}x{mib['plain']:>7.1f}{mib['metrics']:>8.1f}"
            f"{mib['page']:>5.1f}{s.metrics_bytes / 1024:>9.0f}{s.page_bytes / 1024:>7.0f}"
        )
    print("ms; ratio = /metrics in process p50 over plain p50. Per instance, microseconds (p50):")
    for s in sizes:
        cells = "  ".join(
            f"{label} {s.p(name) * 1000 / s.instances:.1f}"
            for label, name in (
                ("plain", "plain"),
                ("snapshot() alone", "snapshot"),
                ("/metrics", "metrics"),
                ("/", "page"),
            )
        )
        print(f"{s.instances:>10,}  {cells}")
    print_targets(sizes)


def print_targets(sizes: list[Size]) -> None:
    by = {s.instances: s for s in sizes}
    one = by.get(1_000)
    if one is None:
        print("targets: not judged (no 1,000-instance run)")
        return
    m, http_m, plain = one.p("metrics"), one.p("GET /metrics"), one.p("plain")
    print(
        f"target: /metrics of 1,000 within {TARGET_MS:g} ms server time -> {verdict(m <= TARGET_MS)} "
        f"({m:.1f} ms in process; {http_m:.1f} ms over loopback: {verdict(http_m <= TARGET_MS)})"
    )
    print(
        f"target: /metrics of 1,000 within {TARGET_RATIO:g}x of the plain read -> "
        f"{verdict(m / plain <= TARGET_RATIO)} ({m:.1f} / {plain:.1f} ms = {m / plain:.2f}x)"
    )
    ten = by.get(10_000)
    if ten is None:
        print("target: linear growth: not judged (no 10,000-instance run)")
        return
    for label, name in (
        ("/metrics", "metrics"),
        ("GET /metrics", "GET /metrics"),
        ("/", "page"),
        ("plain", "plain"),
    ):
        growth = (ten.p(name) / 10_000) / (one.p(name) / 1_000)
        judged = f" -> {verdict(growth <= TARGET_GROWTH)}" if name == "metrics" else " (not a target)"
        print(
            f"{'target' if name == 'metrics' else 'beside'}: {label} per instance at 10,000 over 1,000 "
            f"<= {TARGET_GROWTH:g}x{judged} ({growth:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="instance counts, comma-separated")
    parser.add_argument("--runs", type=int, default=200, help="repetitions at 100 instances or fewer")
    parser.add_argument("--stores", default="file,etcd")
    parser.add_argument("--quick", action="store_true", help="20 repetitions: a smoke run")
    args = parser.parse_args()
    runs = 20 if args.quick else args.runs
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]
    stores = args.stores.split(",")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop etcd on the way out
    results: list[tuple[str, list[Size]]] = []
    with tempfile.TemporaryDirectory(prefix="portctl-bench-scrape-") as tmp:
        if "file" in stores:
            print("JSON file store", file=sys.stderr, flush=True)
            with file_stores(tmp) as opener:
                results.append(("JSON file store (a temp dir)", run_store(opener, sizes, runs)))
        if "etcd" in stores:
            print("etcd", file=sys.stderr, flush=True)
            with throwaway_etcd() as endpoint, etcd_stores(endpoint) as opener:
                title = f"etcd {etcd_version(endpoint)}, one member on loopback, data in a temp dir"
                results.append((title, run_store(opener, sizes, runs)))
    print(
        f"{PER_SERVICE} instances per service, one environment; {sys.version.split()[0]}. Plain: "
        "Registry.instances(all_environments=True).\n/metrics, / in process: monitor.snapshot() + "
        "exposition() / status_html(). GET: a StatusServer on loopback, request to last body byte."
    )
    for title, sizes_done in results:
        print_table(title, sizes_done)


if __name__ == "__main__":
    main()
