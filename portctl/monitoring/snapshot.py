"""One view of everything portctl knows, gathered within a time budget.

Three sources feed it: the store (registrations with their health, allocations, blue-green
pointers), read afresh for every view; and the host's port scan and Docker, which cost more
(every process's sockets, every container) and so are scanned in the background every
``scan_interval`` seconds, a view taking the latest scan.

A source that fails, or does not answer within the budget, is marked down (with why and since
when), and the view keeps the values it last read from it: a page or a scrape during a store
outage shows the last known state, marked, never an empty registry. A read that outlives its
budget still lands when it ends, for the next view; reads never pile up (one at a time).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

from portctl.backends import Store
from portctl.compose.check import Finding, check_ports, targets
from portctl.config.policy import Policy
from portctl.config.settings import Settings
from portctl.errors import PortctlError, StoreCorrupt
from portctl.keys import (
    BLUEGREEN_PREFIX,
    EVENTS_PREFIX,
    allocations_prefix,
    parse_pointer_key,
    registry_prefix,
)
from portctl.ports.allocator import Allocation, PortAllocator, parse_allocation
from portctl.records import (
    Event,
    HealthRecord,
    LivePointer,
    ServiceEntry,
    Status,
    parse_entry,
    parse_event,
    parse_health,
)
from portctl.registry.entries import Instance
from portctl.routing.live import pointer_of

if TYPE_CHECKING:
    from portctl.backends import Entry

__all__ = ["SOURCES", "Latency", "Monitor", "ScanView", "Snapshot", "Source", "StoreView", "stale"]

SOURCES = ("store", "host", "docker")
T = TypeVar("T")


@dataclass(frozen=True)
class StoreView:
    """What the store held at ``read_at``."""

    instances: tuple[Instance, ...]
    allocations: tuple[Allocation, ...]
    pointers: dict[tuple[str, str], LivePointer]  # (environment, service) -> pointer
    corrupt: tuple[str, ...]  # one line per key skipped because it does not parse
    read_at: float
    events: tuple[Event, ...] = ()  # what portctl changed by itself (portctl.ports.events)

    @cached_property
    def _allocated_types(self) -> dict[tuple[str, str, str], str]:
        return {(a.host, a.environment, a.service): a.type for a in self.allocations}

    def service_type(self, entry: ServiceEntry, policy: Policy) -> str:
        """The type of a registered instance: its allocation's on its host, else the policy's."""
        found = self._allocated_types.get((entry.host, entry.environment, entry.service))
        return found or policy.spec(entry.service).type

    def in_ranges(self, policy: Policy) -> list[Allocation]:
        """The allocations whose port lies in their type's range (what a range counts as used)."""
        return [a for a in self.allocations if a.type in policy.types and a.port in policy.types[a.type]]


@dataclass(frozen=True)
class ScanView:
    """This host's allocated ports and what holds them, at ``scanned_at``."""

    findings: tuple[Finding, ...]
    notices: tuple[str, ...]
    scanned_at: float


@dataclass(frozen=True)
class Source:
    """How one source fared: up at its last try, and since when it is down."""

    name: str
    up: bool = False
    tried: bool = False  # False until the first try ends
    duration: float = 0.0  # seconds its last try took
    last_success: float | None = None
    down_since: float | None = None
    error: str | None = None  # why it is down, in one line

    def succeeded(self, now: float, duration: float) -> Source:
        return replace(
            self, up=True, tried=True, duration=duration, last_success=now, down_since=None, error=None
        )

    def failed(self, now: float, duration: float, error: str) -> Source:
        since = self.down_since if not self.up and self.down_since is not None else now
        return replace(self, up=False, tried=True, duration=duration, down_since=since, error=error)


# Seconds; Prometheus' client default buckets, for the store's read latency.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass
class Latency:
    """A cumulative histogram of the exporter's store reads (rendered as a Prometheus one)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, ``+Inf`` last, as the exposition format wants them."""
        out, running = [], 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(frozen=True)
class Snapshot:
    """One view; ``store`` and ``scan`` are None until their source first answered."""

    settings: Settings
    store_type: str
    store_url: str
    store: StoreView | None
    scan: ScanView | None
    sources: dict[str, Source]
    latency: Latency
    taken_at: float

    @property
    def ready(self) -> bool:
        """Whether the store has been read at least once (``/-/ready``)."""
        return self.store is not None

    @property
    def findings(self) -> list[Finding]:
        """The last scan's findings for the ports still allocated as the store now says: a
        port released (or moved) since the scan is no conflict of its service any more."""
        if self.scan is None:
            return []
        if self.store is None:
            return list(self.scan.findings)
        host = self.settings.host
        allocated = {
            (a.environment, a.service, a.port, a.protocol) for a in self.store.allocations if a.host == host
        }
        return [
            f
            for f in self.scan.findings
            if (f.target.environment, f.target.service, f.target.port, f.target.protocol) in allocated
        ]

    @property
    def conflicts(self) -> list[Finding]:
        return [f for f in self.findings if f.conflicts]


class Monitor:
    """Gathers :class:`Snapshot` views of one store and this host."""

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        scan_ports: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.scan_ports = scan_ports
        self.clock = clock
        self._lock = threading.Lock()
        self._sources = {name: Source(name) for name in SOURCES}
        self._store_view: StoreView | None = None
        self._scan_view: ScanView | None = None
        self._latency = Latency()
        self._reading: threading.Thread | None = None
        self._cache = ParseCache()  # used by one read at a time
        self._read_done = threading.Event()

    def prime(self) -> None:
        """Start a store read (unless one is under way) and return at once: a server primes at
        start, so it turns ready without waiting for a first scrape."""
        self._read_store()

    @property
    def ready(self) -> bool:
        """Whether the store has been read at least once."""
        with self._lock:
            return self._store_view is not None

    # Views ---------------------------------------------------------------------------------

    def snapshot(self, budget: float = 10.0) -> Snapshot:
        """A view with the store read afresh within ``budget`` seconds (else its last values,
        the store marked down) and the latest port scan."""
        started = time.monotonic()
        done = self._read_store()
        done.wait(max(0.0, budget))
        with self._lock:
            if not done.is_set():  # checked under the lock: a read that just landed is no failure
                waited = time.monotonic() - started
                self._sources["store"] = self._sources["store"].failed(
                    self.clock(), waited, f"no answer within {budget:g}s (the scrape's time budget)"
                )
            return Snapshot(
                self.settings,
                _store_type(self.store),
                self.store.url,
                self._store_view,
                self._scan_view,
                dict(self._sources),
                replace(self._latency, counts=list(self._latency.counts)),
                self.clock(),
            )

    def _read_store(self) -> threading.Event:
        """Start a store read unless one is under way; the event set when it ends."""
        with self._lock:
            if self._reading is None:
                self._read_done = threading.Event()
                self._reading = threading.Thread(
                    target=self._store_read, name="portctl-store-read", daemon=True
                )
                self._reading.start()
            return self._read_done

    def _store_read(self) -> None:
        started = time.monotonic()
        try:
            view = read_store(self.store, self.clock, self._cache)
        except PortctlError as e:
            self._finish("store", started, error=e.message)
        except Exception as e:  # noqa: BLE001 - a bug in one read must not stop the exporter
            self._finish("store", started, error=f"{type(e).__name__}: {e}")
        else:
            self._finish("store", started, store_view=view)
        finally:
            with self._lock:  # already so, unless recording the result failed
                self._reading = None
                self._read_done.set()

    def _finish(
        self,
        name: str,
        started: float,
        *,
        error: str | None = None,
        store_view: StoreView | None = None,
        scan_view: ScanView | None = None,
    ) -> None:
        duration = time.monotonic() - started
        with self._lock:
            source, now = self._sources[name], self.clock()
            self._sources[name] = (
                source.failed(now, duration, error) if error else source.succeeded(now, duration)
            )
            if name == "store":
                self._latency.observe(duration)
                self._store_view = store_view or self._store_view
                self._reading = None  # with the result, under one lock: a view sees both or neither
                self._read_done.set()
            if scan_view is not None:
                self._scan_view = scan_view

    # The port scan ---------------------------------------------------------------------------

    def scan(self) -> None:
        """One scan of this host's allocated ports and Docker's containers (blocking)."""
        if not self.scan_ports:
            return
        from portctl.host.containers import scan_containers
        from portctl.host.holders import HostPorts

        started = time.monotonic()
        docker = scan_containers()
        if docker.notice:
            self._finish("docker", started, error=docker.notice.removeprefix("containers not scanned: "))
        else:
            self._finish("docker", started)
        started = time.monotonic()
        try:
            allocator = PortAllocator(self.store, self.settings)
            to_check = [t for env in self.settings.policy.environments for t in targets(allocator, env)]
            report = check_ports(to_check, HostPorts(docker=docker))
        except PortctlError as e:
            self._finish("host", started, error=e.message)
            return
        notices = tuple(n for n in report.notices if n != docker.notice)
        view = ScanView(tuple(report.findings), notices, self.clock())
        self._finish("host", started, scan_view=view)

    def scan_every(self, interval: float, stop: threading.Event) -> threading.Thread:
        """Scan now and then every ``interval`` seconds until ``stop`` is set, in a thread."""

        def loop() -> None:
            while not stop.is_set():
                try:
                    self.scan()
                except Exception as e:  # noqa: BLE001 - the next scan tries again
                    self._finish("host", time.monotonic(), error=f"{type(e).__name__}: {e}")
                stop.wait(interval)

        thread = threading.Thread(target=loop, name="portctl-port-scan", daemon=True)
        thread.start()
        return thread


# Checks portctl runs (the agent) record a result every interval; missing this many in a row
# means nothing is checking (no agent runs on its host), and the last result is no longer news.
STALE_INTERVALS = 3
STALE_MINIMUM = 30.0  # seconds: short intervals get this much slack


def stale(instance: Instance, now: float) -> bool:
    """Whether the instance's recorded health is too old to be believed: a TCP or HTTP check
    that portctl runs, last recorded more than three intervals (at least 30 s) ago. Health a
    store measures itself (Consul's checks) has no recording time and is never stale here."""
    check = instance.entry.check
    recorded = instance.health.updated_at
    if check.kind not in ("tcp", "http") or not recorded:
        return False
    return now - recorded > max(STALE_MINIMUM, STALE_INTERVALS * check.interval + check.timeout)


class ParseCache:
    """Each key's last parsed record, kept while its value and version stay the same: a
    registration is validated like user input, and at a scrape every 15 s nearly all of them
    are unchanged since the last one. A key that went away leaves the cache at the next read."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[str, str, object]] = {}
        self._next: dict[str, tuple[str, str, object]] = {}

    def parsed(self, entry: Entry, parse: Callable[[Entry], T]) -> T:
        """``parse(entry)``, or its result for the same value and version (a :class:`StoreCorrupt`
        is kept and raised again, so a bad key costs one parse too)."""
        hit = self._records.get(entry.key)
        if hit is not None and hit[0] == entry.value and hit[1] == entry.version:
            result = hit[2]
        else:
            try:
                result = parse(entry)
            except StoreCorrupt as e:
                result = e
        self._next[entry.key] = (entry.value, entry.version, result)
        if isinstance(result, StoreCorrupt):
            raise result
        return result  # type: ignore[return-value]

    def done(self) -> None:
        """End one read: only the keys it saw stay."""
        self._records, self._next = self._next, {}


def read_store(
    store: Store, clock: Callable[[], float] = time.time, cache: ParseCache | None = None
) -> StoreView:
    """Registrations, allocations and live pointers, in one read of the store. A key that does
    not parse is skipped and named, so one bad key hides nothing else."""
    entries = store.list_many([registry_prefix(), allocations_prefix(), BLUEGREEN_PREFIX, EVENTS_PREFIX])
    now = clock()
    cache = cache or ParseCache()
    corrupt: list[StoreCorrupt] = []
    registered: dict[str, ServiceEntry] = {}
    health: dict[str, HealthRecord] = {}
    allocations: list[Allocation] = []
    pointers: dict[tuple[str, str], LivePointer] = {}
    events: list[Event] = []
    for entry in entries:
        key = entry.key
        try:
            if key.startswith(REGISTRY_PREFIX):
                base, _, leaf = key.rpartition("/")
                if leaf == "entry":
                    registered[base] = cache.parsed(entry, parse_entry)
                elif leaf == "health":
                    health[base] = cache.parsed(entry, parse_health)
            elif key.startswith(ALLOCATIONS):
                allocations.append(cache.parsed(entry, parse_allocation))
            elif (where := parse_pointer_key(key)) is not None:
                pointers[where] = cache.parsed(entry, pointer_of)
            elif key.startswith(EVENTS_PREFIX):
                events.append(cache.parsed(entry, parse_event))
        except StoreCorrupt as bad:
            corrupt.append(bad)
    cache.done()
    instances = []
    for base, e in registered.items():
        record = health.get(base, NO_HEALTH)
        instances.append(Instance(e, record, record.effective(now)))
    instances.sort(key=lambda i: (i.entry.environment, i.entry.service, i.entry.id))
    allocations.sort(key=lambda a: (a.host, a.environment, a.service))
    corrupt_keys = tuple(str(c) for c in corrupt)
    return StoreView(tuple(instances), tuple(allocations), pointers, corrupt_keys, now, tuple(events))


REGISTRY_PREFIX = registry_prefix()
ALLOCATIONS = allocations_prefix()
NO_HEALTH = HealthRecord(Status.CRITICAL, "no health recorded")  # as the registry reads it


def _store_type(store: Store) -> str:
    return store.url.split("://", 1)[0].split("+", 1)[0] if "://" in store.url else "file"
