"""The Consul store against raw py-consul calls, on the Consul HTTP API emulator (tests/), and
how soon 50 resolvers follow a re-registration through blocking queries.

    python bench/consul_store.py [--calls 200] [--moves 20] [--resolvers 50]

Every figure is measured on the emulator, in this process, over loopback: it shows portctl's
overhead over the same HTTP round trips, not what a Consul cluster costs. Targets: each portctl
operation within 1.5x of the raw calls doing the same work; propagation p99 reported.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

HERE = pathlib.Path(__file__).resolve().parent
# The project root, for the emulator in tests/.
sys.path.insert(0, str(HERE.parent))

import consul  # noqa: E402 - after the path fix above

from bench._common import free_ports, percentile  # noqa: E402 - after the path fix above
from portctl.backends.consul import ConsulStore  # noqa: E402
from portctl.config.settings import Settings  # noqa: E402
from portctl.discovery import ServiceDiscovery  # noqa: E402
from portctl.ports.allocator import PortAllocator  # noqa: E402 - after the path for tests/
from portctl.registry.entries import CheckSpec, Registry  # noqa: E402
from tests.support.consul_emulator import ConsulEmulator  # noqa: E402

SETTINGS = Settings(host="bench-host")
PREFIX = "bench/"
GIVE_UP = 10.0


def timed(call: Callable[[int], object], runs: int) -> list[float]:
    out = []
    for i in range(runs):
        start = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def allocate_rows(store: ConsulStore, raw: consul.Consul, runs: int) -> tuple[list[float], list[float]]:
    """portctl's allocate(port=) against the raw reads and the one transaction it needs: the
    host's allocations and claims, then create-if-absent of the record and the claim."""
    allocator = PortAllocator(store, SETTINGS)
    ports = free_ports(runs)
    ours = timed(lambda i: allocator.allocate(f"a{i}", port=ports[i], type="dynamic"), runs)

    def raw_allocate(i: int) -> None:
        raw.kv.get("raw/allocations/bench-host/", recurse=True)
        raw.kv.get("raw/ports/bench-host/tcp/", recurse=True)
        record = json.dumps({"service": f"a{i}", "port": 41000 + i})
        raw.txn.put(
            [
                {
                    "KV": {
                        "Verb": "cas",
                        "Index": 0,
                        "Key": f"raw/allocations/bench-host/production/a{i}",
                        "Value": b64(record),
                    }
                },
                {
                    "KV": {
                        "Verb": "cas",
                        "Index": 0,
                        "Key": f"raw/ports/bench-host/tcp/{41000 + i}",
                        "Value": b64(record),
                    }
                },
            ]
        )

    return ours, timed(raw_allocate, runs)


def cas_rows(store: ConsulStore, raw: consul.Consul, runs: int) -> tuple[list[float], list[float]]:
    """Read then compare-and-set one key: Store.get + compare_and_set against kv.get + kv.put(cas=)."""
    store.create("bluegreen/production/api/active", "blue")
    raw.kv.put("raw/bluegreen/active", "blue")

    def ours(i: int) -> None:
        entry = store.get("bluegreen/production/api/active")
        assert entry is not None
        store.compare_and_set(entry.key, "green" if i % 2 else "blue", entry.version)

    def theirs(i: int) -> None:
        _, item = raw.kv.get("raw/bluegreen/active")
        assert raw.kv.put("raw/bluegreen/active", "green" if i % 2 else "blue", cas=item["ModifyIndex"])

    return timed(ours, runs), timed(theirs, runs)


def cold_rows(
    store: ConsulStore, raw: consul.Consul, runs: int, cache: str
) -> tuple[list[float], list[float]]:
    """A new resolver's first answer against the raw reads a resolver needs: the environment's
    registrations, this host's allocations, and each registered service's health."""

    def ours(_: int) -> None:
        resolver = ServiceDiscovery(store, settings=SETTINGS, cache_file=cache, watch=False)
        resolver.get_service_url("svc0")
        resolver.close()

    def theirs(_: int) -> None:
        _, entries = raw.kv.get(PREFIX + "registry/production/", recurse=True)
        raw.kv.get(PREFIX + "allocations/bench-host/production/", recurse=True)
        names = {e["Key"].split("/")[3] for e in entries or [] if e["Key"].endswith("/entry")}
        for name in sorted(names):
            raw.health.service(name, passing=True)

    return timed(ours, runs), timed(theirs, runs)


def propagation(
    url: str, registry: Registry, count: int, moves: int, cache_dir: str
) -> tuple[list[float], list[float]]:
    """ms from a re-registration's start until each of ``count`` resolvers (each with its own
    store connection, as separate app processes would have) answers with the new port; and how
    long the register() call itself took."""
    stores = [ConsulStore.from_url(url) for _ in range(count)]
    resolvers = [
        ServiceDiscovery(s, settings=SETTINGS, cache_file=f"{cache_dir}/r{i}.json")
        for i, s in enumerate(stores)
    ]
    times: list[float] = []
    returned: list[float] = []
    try:
        for move in range(moves):
            port = 30000 + move
            time.sleep(0.05)
            start = time.perf_counter()
            registry.register("svc0", port=port, instance_id="svc0-1", check=CheckSpec("none"))
            returned.append((time.perf_counter() - start) * 1000)
            waiting = set(range(count))
            suffix = f":{port}"
            while waiting:
                for i in list(waiting):
                    if resolvers[i].get_service_url("svc0").endswith(suffix):
                        times.append((time.perf_counter() - start) * 1000)
                        waiting.discard(i)
                if time.perf_counter() - start > GIVE_UP:
                    raise SystemExit(f"{len(waiting)} resolvers did not follow svc0 in {GIVE_UP:g}s")
                time.sleep(0.0005)
    finally:
        for resolver in resolvers:
            resolver.close()
        for s in stores:
            s.close()
    return times, returned


@contextlib.contextmanager
def separate_emulator() -> Iterator[str]:
    """The emulator in a process of its own (``python -m tests.support.consul_emulator``), so serving
    100 blocking queries does not share this process's interpreter with 50 resolvers."""
    port = free_ports(1, start=27000)[0]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.consul_emulator", "--port", str(port)],
        cwd=HERE.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # it prints its address once it listens
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def row(label: str, ours: list[float], theirs: list[float]) -> str:
    ratio = statistics.median(ours) / statistics.median(theirs)
    verdict = "met" if ratio <= 1.5 else "MISSED"
    return (
        f"{label:<26}{statistics.median(ours):>10.2f}{percentile(ours, 0.99):>9.2f}"
        f"{statistics.median(theirs):>10.2f}{percentile(theirs, 0.99):>9.2f}{ratio:>8.2f}x  {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--resolvers", type=int, default=50)
    args = parser.parse_args()
    with ConsulEmulator(("127.0.0.1", 0)) as server, tempfile.TemporaryDirectory() as tmp:
        url = f"consul://{server.address}/{PREFIX}"
        host, port = server.address.rsplit(":", 1)
        raw = consul.Consul(host=host, port=int(port), connections_timeout=10)
        with ConsulStore.from_url(url) as store:
            registry = Registry(store, SETTINGS)
            for i in range(4):
                registry.register(f"svc{i}", port=31000 + i, instance_id=f"svc{i}-1", check=CheckSpec("none"))
            alloc = allocate_rows(store, raw, args.calls)
            cas = cas_rows(store, raw, args.calls)
            cold = cold_rows(store, raw, max(10, args.calls // 4), f"{tmp}/cold.json")
        with separate_emulator() as address:
            moves_url = f"consul://{address}/moves/"
            with ConsulStore.from_url(moves_url) as moves_store:
                moves_registry = Registry(moves_store, SETTINGS)
                for i in range(4):
                    moves_registry.register(
                        f"svc{i}", port=31000 + i, instance_id=f"svc{i}-1", check=CheckSpec("none")
                    )
                moves, calls = propagation(moves_url, moves_registry, args.resolvers, args.moves, tmp)
    print("Consul store on the emulator (tests/support/consul_emulator), loopback; ms per operation")
    print(f"{'operation':<26}{'portctl p50':>10}{'p99':>9}{'raw p50':>10}{'p99':>9}{'ratio':>8}  target 1.5x")
    print(row("allocate(port=)", *alloc))
    print(row("get + compare_and_set", *cas))
    print(row("resolve, cold", *cold))
    print(
        f"\nre-registration seen by {args.resolvers} resolvers "
        "(emulator in its own process, blocking queries), "
        f"{args.moves} moves: p50 {percentile(moves, 0.5):.1f} ms, p99 {percentile(moves, 0.99):.1f} ms, "
        f"max {max(moves):.1f} ms (counted from the register() call's start; the call itself: "
        f"p50 {percentile(calls, 0.5):.1f} ms)"
    )


if __name__ == "__main__":
    main()
