"""Allocation under a race: 1, 2 and 8 processes allocating on ONE JSON-file store at once.

Each worker process opens the store itself, waits for a common start signal, then allocates
``--per-worker`` distinct dynamic services (``svc-w<worker>-<i>``, production) on host
``bench-host``. After each row the store is read once and checked: no port given to two
services, no service with two records, and one record per allocation (no lost updates).
Each row uses a fresh store in a temporary folder. The bind tests bind real ports on this
machine, as allocation does; the dynamic range scan skips the kernel's ephemeral range.
Target: at least 300 allocations/s in total with 8 processes. Exit code 1 only when
duplicates or lost updates are found; timing is reported, never asserted.

    python bench/allocate_race.py [--per-worker 25,60] [--processes 1,2,8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event

from portctl.backends import open_store
from portctl.config.settings import Settings
from portctl.ports.allocator import Allocation, PortAllocator

HOST = "bench-host"
ENVIRONMENT = "production"
TARGET_PROCESSES = 8
TARGET_RATE = 300.0  # allocations per second, in total
START_TIMEOUT = 60.0  # seconds for every worker to import portctl and open the store


@dataclass(frozen=True)
class WorkerResult:
    worker: int
    allocated: int
    seconds: float  # this worker's own time, start signal to its last allocation
    finished: float  # time.monotonic() at its last allocation (system-wide clock on Linux)
    error: str = ""


@dataclass(frozen=True)
class Check:
    records: int
    duplicate_ports: int  # (host, protocol, port) slots given to more than one service
    duplicate_services: int  # (host, environment, service) with more than one record


@dataclass(frozen=True)
class Row:
    processes: int
    allocations: int  # asked for: processes x per-worker
    allocated: int  # what the workers report they allocated
    seconds: float  # wall time, start signal to the last worker's finish
    check: Check
    errors: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.allocated / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return self.allocations - self.check.records

    @property
    def sound(self) -> bool:
        return not (self.check.duplicate_ports or self.check.duplicate_services or self.lost)


def service_name(worker: int, i: int) -> str:
    return f"svc-w{worker}-{i}"


def worker(
    index: int, url: str, count: int, ready: Barrier, start: Event, results: Queue[WorkerResult]
) -> None:
    """One racing process: open the store, wait for the start signal, allocate ``count``."""
    allocator = PortAllocator(open_store(url), Settings(host=HOST))
    ready.wait(START_TIMEOUT)
    start.wait(START_TIMEOUT)
    begun = time.monotonic()
    done, error = 0, ""
    try:
        for i in range(count):
            allocator.allocate(service_name(index, i), type="dynamic", environment=ENVIRONMENT)
            done += 1
    except Exception as e:  # reported in the table's notes; the check counts it as lost
        error = f"worker {index}: {type(e).__name__}: {e}"
    finished = time.monotonic()
    results.put(WorkerResult(index, done, finished - begun, finished, error))


def race(url: str, processes: int, per_worker: int) -> tuple[float, list[WorkerResult], list[str]]:
    """Start ``processes`` workers together: the wall time, their reports, workers that died."""
    ctx = multiprocessing.get_context("spawn")
    ready, start, results = ctx.Barrier(processes + 1), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(i, url, per_worker, ready, start, results)) for i in range(processes)
    ]
    for p in procs:
        p.start()
    ready.wait(START_TIMEOUT)  # every worker has imported portctl and opened the store
    begun = time.monotonic()
    start.set()
    reports = collect(results, procs)
    for p in procs:
        p.join()
    seconds = max((r.finished for r in reports), default=begun) - begun
    return seconds, reports, silent(procs, reports)


def collect(results: Queue[WorkerResult], procs: Sequence[BaseProcess]) -> list[WorkerResult]:
    """Every report, or as many as arrive before the last worker is gone."""
    reports: list[WorkerResult] = []
    while len(reports) < len(procs):
        try:
            reports.append(results.get(timeout=1.0))
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                break  # a worker was killed: what it did not record shows as lost
    return reports


def silent(procs: Sequence[BaseProcess], reports: list[WorkerResult]) -> list[str]:
    reported = {r.worker for r in reports}
    return [
        f"worker {i}: exited with code {p.exitcode} without reporting"
        for i, p in enumerate(procs)
        if i not in reported
    ]


def check_store(url: str) -> Check:
    """Read the store once and count what must never happen."""
    records = [Allocation.from_dict(json.loads(e.value), e.key) for e in open_store(url).list("allocations/")]
    ports = Counter((a.host, a.protocol, a.port) for a in records)
    services = Counter((a.host, a.environment, a.service) for a in records)
    return Check(len(records), _excess(ports.values()), _excess(services.values()))


def _excess(counts: Iterable[int]) -> int:
    return sum(1 for n in counts if n > 1)


def run_row(processes: int, per_worker: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="portctl-race-") as tmp:
        url = "file://" + os.path.join(tmp, "store.json")
        seconds, reports, died = race(url, processes, per_worker)
        check = check_store(url)
    errors = [r.error for r in sorted(reports, key=lambda r: r.worker) if r.error]
    done = sum(r.allocated for r in reports)
    return Row(processes, processes * per_worker, done, seconds, check, (*errors, *died))


COLUMNS = (
    ("processes", 9),
    ("allocations", 11),
    ("seconds", 8),
    ("alloc/s", 8),
    ("duplicate ports", 15),
    ("duplicate services", 18),
    ("lost", 5),
)


def print_header() -> None:
    print(" | ".join(f"{name:>{width}}" for name, width in COLUMNS))
    print("-+-".join("-" * width for _, width in COLUMNS))


def print_row(row: Row) -> None:
    cells = (
        row.processes,
        row.allocations,
        f"{row.seconds:.2f}",
        f"{row.rate:.0f}",
        row.check.duplicate_ports,
        row.check.duplicate_services,
        row.lost,
    )
    print(" | ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, COLUMNS, strict=True)))
    for error in row.errors:
        print(f"  ! {error}")


def print_verdict(rows: list[Row]) -> None:
    target = f"at least {TARGET_RATE:.0f} allocations/s in total with {TARGET_PROCESSES} processes"
    row = next((r for r in rows if r.processes == TARGET_PROCESSES), None)
    if row is None:
        print(f"\ntarget: {target} -> not measured (no {TARGET_PROCESSES}-process row)")
        return
    verdict = "met" if row.rate >= TARGET_RATE else "MISSED"
    print(f"\ntarget: {target} -> {verdict} ({row.rate:.0f} allocations/s)")


def process_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more counts of at least 1")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--per-worker",
        type=process_counts,
        default=[25, 60],
        help="allocations per process, one table each (default 25,60: a store of 200 and of 480 "
        "allocations at 8 processes; the whole file is re-read and rewritten on each write)",
    )
    parser.add_argument("--processes", type=process_counts, default=[1, 2, 8], help="e.g. 1,2,8 (default)")
    args = parser.parse_args()
    unsound = []
    for per_worker in args.per_worker:
        print(f"\nstore: JSON file, fresh per row; {per_worker} allocations per process\n")
        print_header()
        rows = []
        for processes in args.processes:
            rows.append(run_row(processes, per_worker))
            print_row(rows[-1])
        print_verdict(rows)
        unsound += [r.processes for r in rows if not r.sound]
    if unsound:
        print(f"\nFAILED: duplicates or lost updates with {', '.join(map(str, unsound))} processes")
    return 1 if unsound else 0


if __name__ == "__main__":
    sys.exit(main())
