"""How the everyday operations grow with the size of the registry, per store.

    python bench/scale.py [--quick] [--sizes 10,100,1000,10000] [--stores json,etcd] [--repeats N]

For the JSON file store and for etcd (one throwaway member the ``etcd`` binary on PATH runs on
loopback ports, its data in a temp dir, stopped at the end), with 10, 100, 1,000 and 10,000
entries. "N entries" is N allocations on the host (services ``scale-00000``... of type dynamic on
ports 10000 up, written with ``PortAllocator.import_allocations`` in batches) and N registered
instances in the environment (one per allocated service on its port, check ``none`` so it is
passing, written as the registry writes them: each instance's entry and health keys, in batched
store transactions; ``Registry.register`` lists the environment on every call, too slow to fill
10k). etcd gets the same keys by copy: they are written so into a scratch JSON file, then every
key of it is created in etcd, 120 per transaction (import_allocations makes two reads per row,
minutes at 10k). Besides them the store holds one blue-green service (two colors: two
allocations, two instances). The store is filled once per size, upwards, and every measured
operation leaves its size as it found it.

Per call, in rounds that take each operation in turn (so all see the same machine load):

* allocate: a new service's port (``PortAllocator(store).allocate(name, type="dynamic")``, its
  bind test on this host included), on the store the bench keeps open;
* release: ``PortAllocator(store).release(name)`` of that service;
* services: the ``portctl services`` command run in-process (``portctl.cli.run``, stdout to a
  buffer, so the plain table a pipe gets), which opens the store from its --store URL;
* render nginx: ``portctl render nginx`` run in-process the same way;
* get_service_url, cold: a new ``ServiceDiscovery(url, watch=False)`` (it opens its own store)
  and its first ``get_service_url``, what a one-shot script pays;
* cutover: ``BlueGreen(store).cutover(min_healthy=0, drain=0)`` to the other color, whose
  instance has an HTTP check that passes (a small HTTP server thread on loopback per color), so
  the health gate probes it, records the pass and flips the pointer.

One call of each is made first and not timed (imports, connections). Peak memory is the
tracemalloc peak in this process above its level at the start, over one more call made after
the timed ones (tracemalloc slows calls, so it is never on while timing); for etcd that is the
client's memory only. Growth is the median at one size over the median at the size before.

Targets: allocate's median at 10k within 1.5x of that at 10 on etcd, within 3x on the JSON file;
every other operation no worse than linear: MISSED when the median of one step grows by more
than 1.2x the step's size ratio (more than 12x from 10 to 100; the 1.2 is room for noise, so a
cost that is exactly linear, 10.0x to 10.7x here, is not flagged). The exit code is 0 whenever the
bench ran; a MISSED is printed, not returned.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import pathlib
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = pathlib.Path(__file__).resolve().parent
# Run as a script, this file's folder comes first on sys.path, where bench/etcd.py would shadow
# any module named ``etcd``; the project root is added for tests/.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from bench._common import percentile, positive  # noqa: E402 - after the path fix above
from portctl import BlueGreen, PortAllocator, ServiceDiscovery, Settings, open_store  # noqa: E402
from portctl.backends.base import Create, Operation, Store  # noqa: E402
from portctl.keys import allocations_prefix, entry_key, health_key, registry_prefix  # noqa: E402
from portctl.ports.allocator import Allocation  # noqa: E402
from portctl.records import CheckSpec, HealthRecord, ServiceEntry, Status  # noqa: E402

HOST = "bench-host"
ENV = "production"
SETTINGS = Settings(host=HOST)
FIRST_PORT = 10000  # the dynamic range starts here; filled services take it from the bottom up
BLUEGREEN = "scale-bg"
OPERATIONS = ("allocate", "release", "services", "render nginx", "get_service_url, cold", "cutover")
FULL_SIZES = (10, 100, 1000, 10000)
QUICK_SIZES = (10, 100, 1000)
FULL_REPEATS = 7
QUICK_REPEATS = 5
ALLOCATE_TARGETS = {"etcd": 1.5, "json": 3.0}
JSON_BATCH = 5000  # rows per import_allocations call, instances per transaction
COPY_BATCH = 120  # keys per transaction into etcd, which takes at most 128 operations in one
LINEAR_SLACK = 1.2  # a step may grow up to 1.2x its size ratio (noise) before it counts as worse


# The stores ------------------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway_etcd(folder: str) -> Iterator[str]:
    """The URL of one etcd member on loopback, started as the tests start it; stopped on the way
    out, whatever happened."""
    from tests.support.etcd_fixture import start_single

    member = start_single(pathlib.Path(folder) / "etcd")
    try:
        yield f"etcd://{member.endpoint}/scale"
    finally:
        member.kill(signal.SIGTERM)


def fill_allocations(store: Store, start: int, stop: int, batch: int) -> None:
    """Allocations ``scale-<start>`` .. ``scale-<stop - 1>`` on consecutive ports."""
    allocator = PortAllocator(store, SETTINGS)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for low in range(start, stop, batch):
        rows = [
            Allocation(f"scale-{i:05d}", ENV, HOST, FIRST_PORT + i, "tcp", "dynamic", now)
            for i in range(low, min(stop, low + batch))
        ]
        allocator.import_allocations(rows)


def instance_ops(i: int, now: float) -> list[Operation]:
    """The entry and health keys of one passing instance of ``scale-<i>``, as the registry
    writes them."""
    service, port = f"scale-{i:05d}", FIRST_PORT + i
    instance = f"{service}-{HOST}-{port}"
    entry = ServiceEntry(
        instance, service, ENV, HOST, "127.0.0.1", port, check=CheckSpec("none"), registered_at=now
    )
    health = HealthRecord(Status.PASSING, "no check", now)
    return [
        Create(entry_key(ENV, service, instance), json.dumps(entry.to_dict(), sort_keys=True)),
        Create(health_key(ENV, service, instance), json.dumps(health.to_dict(), sort_keys=True)),
    ]


def fill_instances(store: Store, start: int, stop: int, batch: int) -> None:
    now = time.time()
    for low in range(start, stop, batch):
        store.transact([op for i in range(low, min(stop, low + batch)) for op in instance_ops(i, now)])


def fill_json(store: Store, start: int, stop: int) -> None:
    fill_allocations(store, start, stop, JSON_BATCH)
    fill_instances(store, start, stop, JSON_BATCH)


def fill_by_copy(store: Store, start: int, stop: int, folder: str) -> None:
    """Fill a scratch JSON file as :func:`fill_json` does, then copy every key it holds into
    ``store``, ``COPY_BATCH`` keys per transaction: import_allocations reads each row's record
    and claim first, two round trips per row, which on etcd would take longer than the bench."""
    with open_store(f"file://{folder}/fill-{start}-{stop}.json") as scratch:
        fill_json(scratch, start, stop)
        entries = scratch.list("")
    for low in range(0, len(entries), COPY_BATCH):
        store.transact([Create(e.key, e.value) for e in entries[low : low + COPY_BATCH]])


def fill(store: Store, name: str, start: int, stop: int, folder: str) -> float:
    """Fill the store from ``start`` to ``stop`` entries; the seconds it took."""
    began = time.perf_counter()
    if name == "json":
        fill_json(store, start, stop)
    else:
        fill_by_copy(store, start, stop, folder)
    allocations = len(store.list(allocations_prefix(HOST)))
    keys = len(store.list(registry_prefix(ENV)))
    if allocations != stop + 2 or keys != 2 * (stop + 2):  # + the two blue-green colors
        raise SystemExit(f"{name}: filled {allocations} allocations and {keys} registry keys for {stop}")
    return time.perf_counter() - began


# Blue-green: a passing HTTP check per color ---------------------------------------------------


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def healthy_servers(count: int) -> Iterator[list[int]]:
    """The ports of ``count`` HTTP servers on loopback answering 200 to every GET."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Healthy) for _ in range(count)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for s, t in zip(servers, threads, strict=True):
        s.daemon_threads = True
        t.start()
    try:
        yield [int(s.server_address[1]) for s in servers]
    finally:
        for s, t in zip(servers, threads, strict=True):
            s.shutdown()
            s.server_close()
            t.join(5)


def deploy_colors(store: Store, ports: list[int]) -> None:
    bg = BlueGreen(store, SETTINGS)
    for color, port in zip(("blue", "green"), ports, strict=True):
        bg.deploy(BLUEGREEN, color, port=port, check=CheckSpec("http", url=f"http://127.0.0.1:{port}/health"))


# The operations ------------------------------------------------------------------------------


def cli(*argv: str) -> str:
    """One portctl command line run in this process; what it printed."""
    from portctl.cli import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(list(argv))
    if code != 0:
        raise SystemExit(f"portctl {' '.join(argv)} exited {code}: {err.getvalue().strip()}")
    return out.getvalue()


class Operations:
    """Each measured operation as a call without arguments, on one filled store."""

    def __init__(self, store: Store, url: str, size: int) -> None:
        self.store, self.url = store, url
        self.probe = f"scale-{size // 2:05d}"  # a filled service, to resolve
        self.expected = f":{FIRST_PORT + size // 2}"
        self.count = 0
        self.pending: list[str] = []  # allocated, not yet released

    def calls(self) -> dict[str, Callable[[], object]]:
        return dict(
            zip(
                OPERATIONS,
                (self.allocate, self.release, self.services, self.render, self.resolve, self.cutover),
                strict=True,
            )
        )

    def allocate(self) -> None:
        self.count += 1
        name = f"scale-new-{self.count}"
        PortAllocator(self.store, SETTINGS).allocate(name, type="dynamic")
        self.pending.append(name)

    def release(self) -> None:
        PortAllocator(self.store, SETTINGS).release(self.pending.pop())

    def services(self) -> None:
        if self.probe not in cli("services", "--store", self.url):
            raise SystemExit(f"portctl services did not list {self.probe}")

    def render(self) -> None:
        if f"127.0.0.1{self.expected}" not in cli("render", "nginx", "--store", self.url):
            raise SystemExit(f"portctl render nginx left out {self.probe}")

    def resolve(self) -> None:
        with ServiceDiscovery(self.url, environment=ENV, settings=SETTINGS, watch=False) as found:
            url = found.get_service_url(self.probe)
        if not url.endswith(self.expected):
            raise SystemExit(f"get_service_url({self.probe!r}) gave {url}")

    def cutover(self) -> None:
        BlueGreen(self.store, SETTINGS).cutover(BLUEGREEN, min_healthy=0, drain=0)


@dataclass
class Cell:
    times: list[float] = field(default_factory=list)  # ms per call
    peak: float = 0.0  # KiB

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def peak_kib(call: Callable[[], object]) -> float:
    """The tracemalloc peak of one call above the level before it, KiB."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        call()
        return (tracemalloc.get_traced_memory()[1] - before) / 1024
    finally:
        tracemalloc.stop()


def measure(ops: Operations, repeats: int) -> dict[str, Cell]:
    calls = ops.calls()
    cells = {name: Cell() for name in calls}
    for call in calls.values():  # warm up: imports, connections, the file's first parse
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            cells[name].times.append((time.perf_counter() - start) * 1000)
    for name, call in calls.items():
        cells[name].peak = peak_kib(call)
    return cells


# One store through every size -----------------------------------------------------------------


@dataclass
class StoreRun:
    name: str
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    filled: dict[int, float] = field(default_factory=dict)  # size -> seconds to fill up to it


def run_store(name: str, url: str, sizes: list[int], repeats: int, ports: list[int], folder: str) -> StoreRun:
    result = StoreRun(name)
    store = open_store(url)
    try:
        deploy_colors(store, ports)
        have = 0
        for size in sizes:
            result.filled[size] = fill(store, name, have, size, folder)
            have = size
            for op, cell in measure(Operations(store, url, size), repeats).items():
                result.cells[op, size] = cell
            print(f"  {name}: {size} entries measured", file=sys.stderr, flush=True)
    finally:
        store.close()
    return result


# The table -------------------------------------------------------------------------------------


def growth(run: StoreRun, op: str, sizes: list[int]) -> list[float]:
    return [run.cells[op, b].median / run.cells[op, a].median for a, b in itertools.pairwise(sizes)]


def table_lines(runs: list[StoreRun], sizes: list[int]) -> list[str]:
    lines = [
        f"{'store':<6}{'operation':<24}{'entries':>8}{'median':>10}{'p99':>10}{'peak KiB':>11}{'growth':>9}",
    ]
    for run in runs:
        for op in OPERATIONS:
            steps = [None, *growth(run, op, sizes)]
            for size, step in zip(sizes, steps, strict=True):
                cell = run.cells[op, size]
                lines.append(
                    f"{run.name:<6}{op:<24}{size:>8}{cell.median:>10.2f}{percentile(cell.times, 0.99):>10.2f}"
                    f"{cell.peak:>11.0f}{'' if step is None else f'{step:.2f}x':>9}"
                )
        fills = ", ".join(f"{size} in {seconds:.1f}s" for size, seconds in run.filled.items())
        lines.append(f"{run.name:<6}filled up to: {fills}")
    return lines


def verdict_lines(runs: list[StoreRun], sizes: list[int]) -> list[str]:
    low, high = sizes[0], sizes[-1]
    lines = []
    for run in runs:
        target = ALLOCATE_TARGETS[run.name]
        ratio = run.cells["allocate", high].median / run.cells["allocate", low].median
        verdict = "met" if ratio <= target else "MISSED"
        label = f"allocate, {run.name}: median at {high} entries / at {low}"
        lines.append(f"{label:<58}{ratio:>19.2f}x  target <= {target:g}x  {verdict}")
    for run in runs:
        for op in OPERATIONS[1:]:
            steps = growth(run, op, sizes)
            worse = [
                f"{a}->{b}"
                for (a, b), g in zip(itertools.pairwise(sizes), steps, strict=True)
                if g > LINEAR_SLACK * b / a
            ]
            shown = " ".join(f"{g:.2f}x" for g in steps)
            verdict = "met" if not worse else f"MISSED ({', '.join(worse)})"
            lines.append(
                f"{f'{op}, {run.name}: growth per step':<58}{shown:>20}  linear or better  {verdict}"
            )
    return lines


# Running ------------------------------------------------------------------------------------


def sizes_arg(text: str) -> list[int]:
    try:
        sizes = [positive(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of counts like 10,100,1000") from None
    if sizes != sorted(set(sizes)):
        raise argparse.ArgumentTypeError(f"{text!r}: give the sizes in increasing order, each once")
    if sizes[-1] > 40000:
        raise argparse.ArgumentTypeError(f"{text!r}: at most 40000 entries (ports from {FIRST_PORT} up)")
    return sizes


def stores_arg(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",")]
    unknown = [n for n in names if n not in ALLOCATE_TARGETS]
    if unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of stores from json, etcd (each once)")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="sizes 10,100,1000 and fewer repeats")
    parser.add_argument("--sizes", type=sizes_arg, help="entries per step, e.g. 10,100,1000,10000")
    parser.add_argument("--stores", type=stores_arg, default=["json", "etcd"], help="json,etcd")
    parser.add_argument("--repeats", type=positive, help="timed calls per operation and size")
    args = parser.parse_args(argv)
    args.sizes = args.sizes or list(QUICK_SIZES if args.quick else FULL_SIZES)
    args.repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    return args


@contextlib.contextmanager
def quiet_settings(folder: str) -> Iterator[None]:
    """The in-process commands read an empty config file, name this host ``bench-host`` and
    keep discovery caches in ``folder``, whatever the caller's environment says."""
    config = os.path.join(folder, "portctl.toml")
    pathlib.Path(config).write_text("")
    names = ("PORTCTL_CONFIG", "PORTCTL_HOST", "PORTCTL_ENV", "PORTCTL_STORE", "XDG_CACHE_HOME")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({"PORTCTL_CONFIG": config, "PORTCTL_HOST": HOST, "XDG_CACHE_HOME": folder})
    for n in ("PORTCTL_ENV", "PORTCTL_STORE"):
        os.environ.pop(n, None)
    try:
        yield
    finally:
        for n, value in saved.items():
            if value is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop etcd on the way out
    runs: list[StoreRun] = []
    skipped: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="portctl-bench-scale-") as tmp,
        quiet_settings(tmp),
        healthy_servers(2) as ports,
    ):
        for name in args.stores:
            if name == "json":
                runs.append(run_store(name, f"file://{tmp}/store.json", args.sizes, args.repeats, ports, tmp))
            elif shutil.which("etcd") is None:
                skipped.append("etcd: skipped (no etcd binary on PATH; Debian package etcd-server)")
            else:
                with throwaway_etcd(tmp) as url:
                    runs.append(run_store(name, url, args.sizes, args.repeats, ports, tmp))
    print(
        f"ms per call, {args.repeats} timed calls per operation and size (p99 is nearest rank: with fewer "
        "than 100 calls, the slowest);\npeak KiB: tracemalloc peak in this process above its start, over "
        "one more call; growth: median / median at the size before"
    )
    for line in [*table_lines(runs, args.sizes), *skipped]:
        print(line)
    if runs and len(args.sizes) > 1:
        print(
            f"\ntargets (worse than linear: one step's median grows by more than {LINEAR_SLACK:g}x the "
            f"step's size ratio, e.g. > {LINEAR_SLACK * 10:g}x from 10 to 100)"
        )
        for line in verdict_lines(runs, args.sizes):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
