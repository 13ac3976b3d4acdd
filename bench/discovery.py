"""Service discovery: a warm lookup beside a plain dict lookup, a cold start on the JSON store,
and how soon a running resolver follows a re-allocation. Targets: warm p50 <= 2 us and
p99 <= 20 us; a move seen within 100 ms.

    python bench/discovery.py [--calls 1000000] [--runs 30] [--moves 30]

Per-call figures time each call with two perf_counter_ns() reads, so they include the timer's
own cost (shown on its own row); the batch mean times one loop of all calls and includes the
loop's cost instead.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from _common import free_ports  # bench/, first on sys.path when run as a script

from portctl.backends.file import JsonFileStore
from portctl.config.settings import Settings
from portctl.discovery import ServiceDiscovery
from portctl.ports.allocator import PortAllocator
from portctl.registry.entries import CheckSpec, Registry

SETTINGS = Settings(host="bench-host")
SERVICES = [f"svc{i}" for i in range(12)]
REGISTERED = SERVICES[:4]  # resolve to their registrations; the rest to their allocations
MOVED = SERVICES[-1]  # allocated only, so a re-allocation moves its URL
GIVE_UP = 5.0  # seconds to wait for a resolver to follow one move


def per_call_ns(call: Callable[[str], object], arg: str, calls: int) -> list[int]:
    ns = time.perf_counter_ns
    out = [0] * calls
    for i in range(calls):
        start = ns()
        call(arg)
        out[i] = ns() - start
    return out


def timer_alone_ns(calls: int) -> list[int]:
    ns = time.perf_counter_ns
    out = [0] * calls
    for i in range(calls):
        start = ns()
        out[i] = ns() - start
    return out


def batch_mean_ns(call: Callable[[str], object], arg: str, calls: int) -> float:
    ns = time.perf_counter_ns
    start = ns()
    for _ in range(calls):
        call(arg)
    return (ns() - start) / calls


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def populate(store: JsonFileStore, ports: list[int]) -> None:
    allocator = PortAllocator(store, SETTINGS)
    registry = Registry(store, SETTINGS)
    for name, port in zip(SERVICES, ports, strict=False):
        allocator.allocate(name, port=port)
    for name in REGISTERED:
        registry.register(name, check=CheckSpec("none"))


def warm_rows(resolver: ServiceDiscovery, calls: int) -> list[tuple[str, list[int], float]]:
    name = "svc3"
    table = dict(resolver.get_all_services())
    resolver.get_service_url(name)
    rows = []
    for label, call in (
        ("dict.get (peer)", table.get),
        ("get_service_url", resolver.get_service_url),
        ("get_service_url scheme=", functools.partial(resolver.get_service_url, scheme="grpc")),
        ("get_service_address", resolver.get_service_address),
    ):
        samples = sorted(per_call_ns(call, name, calls))
        rows.append((label, samples, batch_mean_ns(call, name, calls)))
    rows.insert(0, ("timer alone", sorted(timer_alone_ns(calls)), 0.0))
    return rows


def store_read_row(store: JsonFileStore, calls: int) -> tuple[str, list[int], float]:
    key = "allocations/bench-host/production/svc3"
    samples = sorted(per_call_ns(store.get, key, calls))
    return "JsonFileStore.get (uncached)", samples, batch_mean_ns(store.get, key, calls)


def cold_ms(url: str, cache_file: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        resolver = ServiceDiscovery(url, settings=SETTINGS, cache_file=cache_file)
        resolver.get_service_url("svc3")
        times.append((time.perf_counter() - start) * 1000)
        resolver.close()
    return times


def move_ms(
    store: JsonFileStore, resolver: ServiceDiscovery, ports: list[int], moves: int
) -> dict[str, list[float]]:
    """Per move: the allocate() call itself, and the time until the resolver answers with the
    new port counted from the call's start (an upper bound) and from its return (the write is
    committed a little before it returns, so this can undercount)."""
    allocator = PortAllocator(store, SETTINGS)
    times: dict[str, list[float]] = {"call": [], "start": [], "return": []}
    for i in range(moves):
        port = ports[i % len(ports)]
        time.sleep(0.005 * (i % 5))  # land at different points of the store's poll cycle
        start = time.perf_counter()
        allocator.allocate(MOVED, port=port)
        returned = time.perf_counter()
        suffix = f":{port}"
        while not resolver.get_service_url(MOVED).endswith(suffix):
            if time.perf_counter() - start > GIVE_UP:
                raise SystemExit(f"the resolver did not follow {MOVED} to port {port} in {GIVE_UP:g}s")
            time.sleep(0.0002)
        seen = time.perf_counter()
        times["call"].append((returned - start) * 1000)
        times["start"].append((seen - start) * 1000)
        times["return"].append((seen - returned) * 1000)
    return times


def print_warm(rows: list[tuple[str, list[int], float]], calls: int) -> None:
    print(f"warm lookups, {calls:,} calls each (ns)")
    print(f"{'call':<30}{'p50':>8}{'p99':>8}{'p99.9':>8}{'max':>10}{'batch mean':>12}")
    for label, samples, mean in rows:
        cells = "".join(f"{percentile(samples, q):>8.0f}" for q in (0.5, 0.99, 0.999))
        shown = f"{mean:>12.0f}" if mean else f"{'-':>12}"
        print(f"{label:<30}{cells}{samples[-1]:>10}{shown}")


def print_times(title: str, times: list[float]) -> None:
    ordered = sorted(times)
    print(
        f"{title:<44}{statistics.median(ordered):>9.2f}{percentile(ordered, 0.9):>9.2f}"
        f"{ordered[-1]:>9.2f}{len(ordered):>6}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--moves", type=int, default=30)
    args = parser.parse_args()
    ports = free_ports(len(SERVICES) + 2)
    with tempfile.TemporaryDirectory() as tmp:
        path, cache_file = os.path.join(tmp, "store.json"), os.path.join(tmp, "cache.json")
        with JsonFileStore(path) as store:
            populate(store, ports)
            with ServiceDiscovery(store, settings=SETTINGS, cache_file=cache_file) as resolver:
                rows = warm_rows(resolver, args.calls)
                rows.append(store_read_row(store, min(args.calls, 100_000)))
                moves = move_ms(store, resolver, [ports[-2], ports[-1], ports[len(SERVICES) - 1]], args.moves)
            cold = cold_ms(store.url, cache_file, args.runs)
    print_warm(rows, args.calls)
    print(f"\n{'':<44}{'median':>9}{'p90':>9}{'max':>9}{'runs':>6}")
    print_times("cold: new ServiceDiscovery + first call (ms)", cold)
    print_times("PortAllocator.allocate(port=) call (ms)", moves["call"])
    print_times("move seen, from the allocate() call (ms)", moves["start"])
    print_times("move seen, from allocate() returning (ms)", moves["return"])
    p50, p99 = (percentile(rows[2][1], q) / 1000 for q in (0.5, 0.99))
    print(
        f"\ntargets: warm p50 <= 2 us -> {'met' if p50 <= 2 else 'MISSED'} ({p50:.2f} us); "
        f"p99 <= 20 us -> {'met' if p99 <= 20 else 'MISSED'} ({p99:.2f} us); "
        f"move <= 100 ms -> {'met' if statistics.median(moves['start']) <= 100 else 'MISSED'} "
        f"({statistics.median(moves['start']):.1f} ms median from the call)"
    )


if __name__ == "__main__":
    main()
