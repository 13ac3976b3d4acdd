"""The etcd store against raw calls to the same etcd, and how soon 50 resolvers follow a
re-registration through etcd watches.

    python bench/etcd.py [--calls 200] [--moves 20] [--resolvers 50] [--filled 100]

One throwaway etcd member (the ``etcd`` binary on PATH) is started on loopback ports with its
data in a temp dir, as the tests start it, and removed at the end. The raw peer is the fastest
client available here: keep-alive HTTP to etcd's JSON gateway (``/v3/...``) over a plain
``requests.Session`` (no gRPC client is installed). For each portctl operation it makes the
fewest raw calls that get the same result:

* ``allocate(port=)``: a range read of the service's allocation key, then one txn creating the
  port claim and the record (``create_revision == 0`` compares);
* ``compare_and_set``: one txn with a ``mod_revision`` compare;
* resolve, cold: a new HTTP session and one range read of the service's registration keys,
  against a new ``ServiceDiscovery`` and its first ``get_service_url``.

portctl and raw calls alternate, so both see the same machine load. The etcd requests each
operation makes are counted from etcd's own ``/metrics``. Targets: each portctl operation's p50
within 1.5x of the raw calls' p50; a re-registration seen by all 50 resolvers with p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import base64
import json
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
# Run as a script, this file's folder comes first on sys.path, where this very file would
# shadow any module named ``etcd``; the project root is added for tests/.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import requests  # noqa: E402 - after the path fix above

from bench._common import free_ports, percentile  # noqa: E402 - after the path fix above
from portctl.backends.base import Entry, Operation  # noqa: E402
from portctl.backends.etcd import EtcdStore, parse_url  # noqa: E402
from portctl.config.settings import Settings  # noqa: E402
from portctl.discovery import ServiceDiscovery  # noqa: E402
from portctl.host.kernel import BindResult  # noqa: E402
from portctl.ports.allocator import PortAllocator  # noqa: E402
from portctl.registry.entries import CheckSpec, Registry  # noqa: E402
from tests.support.etcd_fixture import EtcdMember, wait_ready  # noqa: E402

SETTINGS = Settings(host="bench-host")
ENV = "production"
GIVE_UP = 10.0  # seconds for every resolver to follow one move
TARGET_RATIO = 1.5
TARGET_P99_MS = 50.0


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


def always_free(_port: int, _protocol: str) -> BindResult:
    return BindResult(True)


# etcd ------------------------------------------------------------------------------------------


@contextmanager
def throwaway_etcd() -> Iterator[str]:
    """``127.0.0.1:PORT`` of one etcd member with its data in a temp dir; stopped and removed
    on the way out, whatever happened."""
    if shutil.which("etcd") is None:
        raise SystemExit("bench/etcd.py needs the etcd binary on PATH (Debian package etcd-server)")
    with tempfile.TemporaryDirectory(prefix="portctl-bench-etcd-") as tmp:
        member = EtcdMember("bench", pathlib.Path(tmp) / "bench")
        try:
            member.start(f"bench={member.peer_url}")
            wait_ready(member, time.monotonic() + 60)
            yield member.endpoint
        finally:
            member.kill(signal.SIGTERM)


class Raw:
    """The raw peer: JSON to etcd's gateway over one keep-alive HTTP session."""

    def __init__(self, endpoint: str) -> None:
        self.base = f"http://{endpoint}/v3"
        self.session = requests.Session()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.session.post(self.base + path, json=body, timeout=5)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def delete(self, *keys: str) -> None:
        self.post("/kv/txn", {"success": [{"request_delete_range": {"key": b64(k)}} for k in keys]})

    def close(self) -> None:
        self.session.close()


def requests_served(endpoint: str) -> Counter[str]:
    """etcd's count of gRPC calls started, by method (the gateway makes one per request)."""
    text = requests.get(f"http://{endpoint}/metrics", timeout=5).text
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("grpc_server_started_total{"):
            labels, value = line.rsplit(" ", 1)
            method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
            counts[method] += int(float(value))
    return counts


def etcd_version(endpoint: str) -> str:
    return str(requests.get(f"http://{endpoint}/version", timeout=5).json().get("etcdserver", "?"))


# Timing ----------------------------------------------------------------------------------------

Op = Callable[[int], object]


@dataclass
class Row:
    label: str
    ours: list[float]
    theirs: list[float]
    ours_requests: str = ""
    theirs_requests: str = ""


def alternating(
    ours: Op, theirs: Op, runs: int, after: Callable[[], None]
) -> tuple[list[float], list[float]]:
    """ms per call of each, taking turns at going first; ``after`` (not timed) undoes both."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(runs):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for side in order:
            call = (ours, theirs)[side]
            start = time.perf_counter()
            call(i)
            times[side].append((time.perf_counter() - start) * 1000)
        after()
    return times


def requests_per_call(endpoint: str, call: Op, after: Callable[[], None], runs: int = 3) -> str:
    """The etcd requests one call makes, by method, as etcd counted them."""
    total: Counter[str] = Counter()
    for i in range(runs):
        before = requests_served(endpoint)
        call(i)
        time.sleep(0.05)  # a watch a resolver starts in its thread is counted too
        total += requests_served(endpoint) - before
        after()
    return ", ".join(f"{method} {count / runs:g}" for method, count in sorted(total.items())) or "none"


def measure(
    endpoint: str, label: str, ours: Op, theirs: Op, runs: int, after: Callable[[], None] = lambda: None
) -> Row:
    """Count each side's etcd requests (which warms both up), then time them alternating."""
    ours_requests = requests_per_call(endpoint, ours, after)
    theirs_requests = requests_per_call(endpoint, theirs, after)
    return Row(label, *alternating(ours, theirs, runs, after), ours_requests, theirs_requests)


# The operations ------------------------------------------------------------------------------


def allocation_values(service: str, host: str, port: int) -> tuple[str, str]:
    record = {
        "allocated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": ENV,
        "host": host,
        "port": port,
        "protocol": "tcp",
        "service": service,
        "type": "custom",
    }
    claim = {"service": service, "environment": ENV}
    return json.dumps(record, sort_keys=True), json.dumps(claim)


def allocate_row(
    endpoint: str, store: EtcdStore, raw: Raw, label: str, host: str, port: int, runs: int, *, bind: bool
) -> Row:
    """portctl's allocate(port=) of one service against a range read of its allocation key and
    one txn creating the claim and the record; both are deleted again after each call."""
    settings = Settings(host=host)
    allocator = PortAllocator(store, settings) if bind else PortAllocator(store, settings, bind=always_free)
    service = "bench-api"
    record_key, claim_key = f"/raw/allocations/{host}/{ENV}/{service}", f"/raw/ports/{host}/tcp/{port}"

    def ours(_: int) -> None:
        allocator.allocate(service, port=port)

    def theirs(_: int) -> None:
        found = raw.post("/kv/range", {"key": b64(record_key)})
        assert not found.get("kvs")
        record, claim = allocation_values(service, host, port)
        answer = raw.post(
            "/kv/txn",
            {
                "compare": [
                    {"key": b64(claim_key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
                    {"key": b64(record_key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
                ],
                "success": [
                    {"request_put": {"key": b64(claim_key), "value": b64(claim)}},
                    {"request_put": {"key": b64(record_key), "value": b64(record)}},
                ],
            },
        )
        assert answer.get("succeeded")

    def undo() -> None:
        raw.delete(
            f"{store.prefix}allocations/{host}/{ENV}/{service}",
            f"{store.prefix}ports/{host}/tcp/{port}",
            record_key,
            claim_key,
        )

    return measure(endpoint, label, ours, theirs, runs, undo)


def cas_row(endpoint: str, store: EtcdStore, raw: Raw, runs: int) -> Row:
    """store.compare_and_set on the version it returned last against one txn comparing the
    key's mod_revision with the revision the last txn returned."""
    key, raw_key = "bluegreen/production/api/active", "/raw/bluegreen/active"
    ours_version = [store.create(key, "blue").version]
    put = raw.post("/kv/put", {"key": b64(raw_key), "value": b64("blue")})
    theirs_revision = [str(put["header"]["revision"])]

    def ours(i: int) -> None:
        ours_version[0] = store.compare_and_set(key, "green" if i % 2 else "blue", ours_version[0]).version

    def theirs(i: int) -> None:
        answer = raw.post(
            "/kv/txn",
            {
                "compare": [
                    {
                        "key": b64(raw_key),
                        "target": "MOD",
                        "result": "EQUAL",
                        "mod_revision": theirs_revision[0],
                    }
                ],
                "success": [
                    {"request_put": {"key": b64(raw_key), "value": b64("green" if i % 2 else "blue")}}
                ],
            },
        )
        assert answer.get("succeeded")
        theirs_revision[0] = str(answer["header"]["revision"])

    return measure(endpoint, "compare_and_set", ours, theirs, runs)


def raw_resolve(raw: Raw, prefix: str, service: str) -> str:
    """A service's URL the way a hand-written client finds it: its registration keys in one
    range read, the first instance whose health is passing."""
    full = f"{prefix}registry/{ENV}/{service}/"
    answer = raw.post("/kv/range", {"key": b64(full), "range_end": prefix_end(full)})
    entries: dict[str, dict[str, object]] = {}
    passing: set[str] = set()
    for kv in answer.get("kvs") or []:
        base, _, leaf = base64.b64decode(kv["key"]).decode().rpartition("/")
        value = json.loads(base64.b64decode(kv["value"]))
        if leaf == "entry":
            entries[base] = value
        elif leaf == "health" and value["status"] == "passing":
            passing.add(base)
    entry = entries[min(passing & entries.keys())]
    return f"http://{entry['address']}:{entry['port']}"


def cold_row(
    endpoint: str, url: str, prefix: str, cache: str, runs: int, *, watch: bool
) -> tuple[Row, list[ServiceDiscovery]]:
    """A new ServiceDiscovery and its first answer against a new HTTP session and one range
    read of the service's registration keys. Resolvers that watch are returned, not closed:
    closing one waits for its held watch request to end."""
    opened: list[ServiceDiscovery] = []
    sessions: list[Raw] = []
    expected = "http://127.0.0.1:31000"

    def ours(_: int) -> None:
        resolver = ServiceDiscovery(url, settings=SETTINGS, cache_file=cache, watch=watch)
        opened.append(resolver)
        assert resolver.get_service_url("svc0") == expected

    def theirs(_: int) -> None:
        raw = Raw(endpoint)
        sessions.append(raw)
        assert raw_resolve(raw, prefix, "svc0") == expected

    def undo() -> None:
        while sessions:
            sessions.pop().close()
        while opened and not watch:
            opened.pop().close()

    label = f"resolve cold, watch={watch}" + (f" ({runs} calls)" if watch else "")
    return measure(endpoint, label, ours, theirs, runs, undo), opened


def close_all(resolvers: list[ServiceDiscovery]) -> None:
    """Close resolvers side by side: each waits for its held watch request to end."""
    threads = [threading.Thread(target=r.close) for r in resolvers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def populate(store: EtcdStore) -> None:
    """Four registered services and four allocated ones, for the resolvers to read."""
    registry = Registry(store, SETTINGS)
    for i in range(4):
        registry.register(f"svc{i}", port=31000 + i, instance_id=f"svc{i}-1", check=CheckSpec("none"))
    allocator = PortAllocator(store, SETTINGS, bind=always_free)
    for i in range(4, 8):
        allocator.allocate(f"svc{i}", port=32000 + i)


def fill(store: EtcdStore, host: str, count: int) -> None:
    allocator = PortAllocator(store, Settings(host=host), bind=always_free)
    for i in range(count):
        allocator.allocate(f"fill{i}", port=40000 + i)


# Propagation -----------------------------------------------------------------------------------


class WriteTimedStore(EtcdStore):
    """The etcd store, noting when its last transaction returned: the moment a writer knows
    its re-registration is committed, inside register() (which reads the instance back after)."""

    committed = 0.0

    def transact(self, operations: Sequence[Operation]) -> dict[str, Entry]:
        written = super().transact(operations)
        self.committed = time.perf_counter()
        return written


def first_seen(resolvers: list[ServiceDiscovery], suffix: str, seen: dict[int, float]) -> None:
    """Ask every resolver, again and again, until each answers with the new URL; note when each
    first did. Runs beside the writer, as an application thread would."""
    deadline = time.perf_counter() + GIVE_UP
    while len(seen) < len(resolvers) and time.perf_counter() < deadline:
        for i, resolver in enumerate(resolvers):
            if i not in seen and resolver.get_service_url("svc0").endswith(suffix):
                seen[i] = time.perf_counter()
        time.sleep(0.0002)


def propagation(endpoint: str, count: int, moves: int, folder: str) -> dict[str, list[float]]:
    """Per re-registration of svc0 on a new port: ms until each of ``count`` watching resolvers
    (each with its own connection, as separate app processes would have) answers with it,
    counted from the write's transaction returning and from just before register() was called."""
    url = f"etcd://{endpoint}/moves"
    store = WriteTimedStore(parse_url(url))
    registry = Registry(store, SETTINGS)
    for i in range(4):
        registry.register(f"svc{i}", port=31000 + i, instance_id=f"svc{i}-1", check=CheckSpec("none"))
    resolvers = [
        ServiceDiscovery(url, settings=SETTINGS, cache_file=f"{folder}/moves-{i}.json") for i in range(count)
    ]
    times: dict[str, list[float]] = {k: [] for k in ("all_write", "all_start", "each_write", "each_start")}
    times["call"] = []
    try:
        time.sleep(0.5)  # every resolver's watch is open
        for move in range(moves):
            port = 33000 + move
            time.sleep(0.05 + 0.01 * (move % 5))  # land at different points of the watches
            seen: dict[int, float] = {}
            poller = threading.Thread(target=first_seen, args=(resolvers, f":{port}", seen))
            poller.start()
            start = time.perf_counter()
            registry.register("svc0", port=port, instance_id="svc0-1", check=CheckSpec("none"))
            times["call"].append((time.perf_counter() - start) * 1000)
            poller.join()
            if len(seen) < count:
                raise SystemExit(f"{count - len(seen)} resolvers did not follow svc0 in {GIVE_UP:g}s")
            for reference, since in (("write", store.committed), ("start", start)):
                delays = [(t - since) * 1000 for t in seen.values()]
                times[f"each_{reference}"] += delays
                times[f"all_{reference}"].append(max(delays))
    finally:
        close_all(resolvers)
        store.close()
    return times


# The table -------------------------------------------------------------------------------------


def ratio_line(row: Row) -> str:
    ours, theirs = percentile(row.ours, 0.5), percentile(row.theirs, 0.5)
    ratio = ours / theirs
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    return (
        f"{row.label:<48}{ours:>9.2f}{percentile(row.ours, 0.99):>9.2f}"
        f"{theirs:>9.2f}{percentile(row.theirs, 0.99):>9.2f}{ratio:>8.2f}x  {verdict}"
    )


def spread_line(label: str, values: list[float], target: bool = True) -> str:
    p99 = percentile(values, 0.99)
    verdict = ("met" if p99 <= TARGET_P99_MS else "MISSED") if target else ""
    return (
        f"{label:<48}{percentile(values, 0.5):>9.1f}{p99:>9.1f}{max(values):>9.1f}{len(values):>7}  {verdict}"
    )


def operation_rows(endpoint: str, url: str, calls: int, filled: int, folder: str) -> list[Row]:
    """Every portctl operation beside its raw peer, on one store prefix of the etcd."""
    raw = Raw(endpoint)
    store = EtcdStore.from_url(url)
    watching: list[ServiceDiscovery] = []
    try:
        populate(store)
        fill(store, "bench-full", filled)
        port = free_ports(1)[0]
        cases = [
            ("allocate(port=)", "bench-empty", True),
            ("allocate(port=), bind test left out", "bench-nobind", False),
            (f"allocate(port=), {filled} others on the host", "bench-full", True),
        ]
        rows = [
            allocate_row(endpoint, store, raw, label, host, port, calls, bind=bind)
            for label, host, bind in cases
        ]
        rows.append(cas_row(endpoint, store, raw, calls))
        cache = f"{folder}/cold.json"
        rows.append(cold_row(endpoint, url, store.prefix, cache, calls, watch=False)[0])
        row, watching = cold_row(endpoint, url, store.prefix, cache, max(10, calls // 10), watch=True)
        rows.append(row)
    finally:
        close_all(watching)
        store.close()
        raw.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--resolvers", type=int, default=50)
    parser.add_argument("--filled", type=int, default=100, help="other allocations on the host of one row")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop etcd on the way out
    with throwaway_etcd() as endpoint, tempfile.TemporaryDirectory(prefix="portctl-bench-") as tmp:
        version = etcd_version(endpoint)
        url = f"etcd://{endpoint}/bench"
        rows = operation_rows(endpoint, url, args.calls, args.filled, tmp)
        moves = propagation(endpoint, args.resolvers, args.moves, tmp)
    print(
        f"etcd {version}, one member on loopback, data in a temp dir. Raw peer: keep-alive HTTP/1.1 to "
        "etcd's JSON gateway\nover one requests.Session (no gRPC client is installed). ms per operation; "
        "portctl and raw calls alternate."
    )
    print(f"{'operation':<48}{'portctl':>9}{'':>9}{'raw':>9}{'':>9}{'ratio':>8}  target")
    print(f"{'':<48}{'p50':>9}{'p99':>9}{'p50':>9}{'p99':>9}{'of p50':>8}  {TARGET_RATIO:g}x")
    for row in rows:
        print(ratio_line(row))
    print("\netcd requests per operation (etcd's /metrics)")
    for row in rows:
        print(f"{row.label:<48}portctl: {row.ours_requests:<32}raw: {row.theirs_requests}")
    print(
        f"\nre-registration (Registry.register, same instance id, new port) -> {args.resolvers} watching "
        "ServiceDiscovery in this\nprocess (one interpreter, so they take turns on its lock), each with its "
        "own connection; a thread\nasks every resolver in turn while register() runs. The write's txn is "
        f"the Store.transact inside\nregister(). {args.moves} moves"
        + (", so the p99 of the 'all' rows is their max" if args.moves < 100 else "")
        + "; ms"
    )
    print(f"{'':<48}{'p50':>9}{'p99':>9}{'max':>9}{'n':>7}  target p99 <= {TARGET_P99_MS:g} ms")
    print(spread_line(f"all {args.resolvers} answer, from the write's txn returning", moves["all_write"]))
    print(spread_line(f"all {args.resolvers} answer, from just before register()", moves["all_start"]))
    print(spread_line("each resolver, from the write's txn returning", moves["each_write"]))
    print(spread_line("each resolver, from just before register()", moves["each_start"]))
    print(spread_line("the register() call itself", moves["call"], target=False))


if __name__ == "__main__":
    main()
