"""``portctl agent``: runs the health checks for stores that do not run their own.

One pass (:meth:`Agent.run_once`) looks at every instance registered from this host
(``entry.host == registry.host``) and

1. removes **zombies**: an instance whose port no longer listens, or whose registering process
   (``entry.pid``) is gone, for ``zombie_grace`` seconds in a row. Instances with a TTL check may
   not listen at all, so only their process is checked;
2. runs each **due** TCP or HTTP check (every ``check.interval`` seconds, all of them on the first
   pass) and records the result with flap damping (:meth:`Registry.record_result`);
3. persists **expired TTLs**: an expired TTL already reads as critical, but the stored record is
   rewritten as critical so that change feeds and watchers see the change;
4. removes instances critical for longer than ``check.deregister_after``;
5. keeps **leased** entries alive (``register --lease``): each lease is renewed every third of
   its length, and an entry whose lease ran out while the agent could not renew it (the agent
   was paused or the store unreachable for longer than the lease) is written again on a new
   lease. An entry that vanished while its lease was being renewed was deregistered on purpose
   and is let go.

What the agent remembers between passes (when each check last ran, since when each zombie has
been one) lives in memory: a restarted agent runs every check at once and starts every zombie's
grace period again. Times come from ``clock``, which must count seconds since the epoch like
:func:`time.time`, since they are compared with the times in health records.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from portctl.errors import StoreUnavailable, VersionConflict
from portctl.host.listeners import ListenerScan
from portctl.host.probe import is_local_address, is_loopback
from portctl.registry.entries import (
    HealthRecord,
    Instance,
    Registry,
    ServiceEntry,
    Status,
)
from portctl.registry.health import RUNNABLE, run_check
from portctl.registry.leases import LeaseKeeper

__all__ = ["Agent", "AgentReport", "critical_too_long", "listens_in", "zombie_signs"]

# Instances are remembered by where they live and when they were registered, so that a
# re-registration starts afresh (checks due at once, no zombie time carried over).
_Key = tuple[str, str, str, float]


@dataclass
class AgentReport:
    """What one pass did, for the CLI and tests."""

    checked: list[tuple[str, Status]] = field(default_factory=list)  # (id, status after damping)
    deregistered: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    rewritten: list[str] = field(default_factory=list)  # ids written again after their lease ran out


class Agent:
    """Runs the checks of this host's instances; one agent thread per registry is enough."""

    def __init__(
        self,
        registry: Registry,
        *,
        environment: str | None = None,
        all_environments: bool = True,
        zombie_grace: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.environment = environment
        # An explicit environment narrows the agent to it; otherwise it covers every one.
        self.all_environments = all_environments and environment is None
        self.zombie_grace = zombie_grace
        self.clock = clock
        self._last_run: dict[_Key, float] = {}
        self._zombie_since: dict[_Key, float] = {}
        self._leases = LeaseKeeper(registry)
        self._lock = threading.Lock()

    # One pass ------------------------------------------------------------------------------

    def run_once(self) -> AgentReport:
        """One pass over this host's instances (see the module's description)."""
        with self._lock:
            report = AgentReport()
            now = self.clock()
            found = self.registry.instances(
                environment=self.environment, all_environments=self.all_environments
            )
            mine = [i for i in found if i.entry.host == self.registry.host]
            self._forget_all_but({_key(i.entry) for i in mine})
            report.rewritten += [i.entry.id for i in self._leases.renew_all(mine)]
            scan = _LazyScan()
            for instance in mine:
                self._pass(instance, now, scan, report)
            return report

    def run(
        self,
        stop: threading.Event,
        tick: float = 0.5,
        *,
        on_report: Callable[[AgentReport], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        """Run passes every ``tick`` seconds until ``stop`` is set.

        ``on_report`` gets each pass's report. A store that is unavailable or keeps changing
        during a pass ends the loop with that error, unless ``on_error`` takes it: then the
        loop goes on and the next pass tries again. Other errors always end the loop."""
        while not stop.is_set():
            try:
                report = self.run_once()
            except (StoreUnavailable, VersionConflict) as e:
                if on_error is None:
                    raise
                on_error(e)
            else:
                if on_report is not None:
                    on_report(report)
            stop.wait(tick)

    def _pass(self, instance: Instance, now: float, scan: _LazyScan, report: AgentReport) -> None:
        entry = instance.entry
        zombie = self._zombie_reason(entry, now, scan)
        if zombie is not None:
            if self._deregister(entry):
                report.deregistered.append((entry.id, zombie))
            return
        health: HealthRecord | None = instance.health
        if entry.check.kind in RUNNABLE and self._due(entry, now):
            started = time.monotonic()
            status, output = run_check(entry)
            health = self.registry.record_result(instance, status, output, time.monotonic() - started)
            if health is not None:
                report.checked.append((entry.id, health.effective(now)))
        elif entry.check.kind == "ttl" and _expired_at(instance.health, now) is not None:
            health, written = self._persist_expiry(entry, now)
            if written:
                report.checked.append((entry.id, Status.CRITICAL))
        if health is None:  # deregistered meanwhile
            return
        reason = _overdue(entry, health, now)
        if reason is not None and self._deregister(entry):
            report.deregistered.append((entry.id, reason))

    # Checks ------------------------------------------------------------------------------

    def _due(self, entry: ServiceEntry, now: float) -> bool:
        key = _key(entry)
        last = self._last_run.get(key)
        if last is not None and now < last + entry.check.interval:
            return False
        self._last_run[key] = now
        return True

    def _persist_expiry(self, entry: ServiceEntry, now: float) -> tuple[HealthRecord | None, bool]:
        """The health after writing an expired TTL as critical (None if the entry is gone), and
        whether this call wrote it."""
        return self.registry.mark_expired(entry, now)

    # Zombies -----------------------------------------------------------------------------

    def _zombie_reason(self, entry: ServiceEntry, now: float, scan: _LazyScan) -> str | None:
        """Why ``entry`` is to be removed as a zombie now; None while it is not one, or not for
        ``zombie_grace`` seconds yet."""
        key = _key(entry)
        silent, orphan = zombie_signs(entry, scan.listens)
        if not (silent or orphan):
            self._zombie_since.pop(key, None)
            return None
        since = self._zombie_since.setdefault(key, now)
        if now - since < self.zombie_grace:
            return None
        reasons = []
        if silent:
            reasons.append(f"port {entry.port} no longer listens for {now - since:.0f}s")
        if orphan:
            reasons.append(f"owner pid {entry.pid} is gone")
        return "; ".join(reasons)

    # Removing ----------------------------------------------------------------------------

    def _deregister(self, entry: ServiceEntry) -> bool:
        """Remove ``entry`` if it is still the registration judged; False if it changed or went.

        The entry key is deleted on its version, so a service that re-registered meanwhile
        stays registered."""
        if not self.registry.deregister_unchanged(entry):
            return False
        self._forget(_key(entry))
        return True

    def _forget(self, key: _Key) -> None:
        self._last_run.pop(key, None)
        self._zombie_since.pop(key, None)

    def _forget_all_but(self, keep: set[_Key]) -> None:
        for key in [k for k in (*self._last_run, *self._zombie_since) if k not in keep]:
            self._forget(key)


def zombie_signs(entry: ServiceEntry, listens: Callable[[int, str], bool]) -> tuple[bool, bool]:
    """``(silent, orphan)``: whether ``entry`` should listen on this host and does not
    (``listens(port, address)``, e.g. :func:`listens_in`), and whether its registering process
    is gone. Either makes it a zombie (the agent removes it after its grace period)."""
    # Only a TCP or HTTP service on this host's own addresses is expected to listen here:
    # a TTL or unchecked entry, or one at a remote address, is judged by its owner alone.
    local = entry.check.kind in RUNNABLE and is_local_address(entry.address)
    silent = local and not listens(entry.port, entry.address)
    orphan = entry.pid is not None and not _process_exists(entry.pid)
    return silent, orphan


def listens_in(scan: ListenerScan, port: int, address: str) -> bool:
    """Whether something in ``scan`` listens where a registration at ``address``:``port``
    answers (a host name counts as any address). For a loopback address, loopback of either
    family counts: a service on ::1 only, registered at 127.0.0.1, is running (refused to IPv4
    clients, which its check reports), not a zombie to remove."""
    if is_loopback(address):
        return any(scan.blocking(port, "tcp", a) for a in ("127.0.0.1", "::1"))
    return bool(scan.blocking(port, "tcp", address if _is_ip(address) else "*"))


class _LazyScan:
    """The host's listeners, scanned once per pass and only if some entry asks."""

    def __init__(self) -> None:
        self._scan: ListenerScan | None = None

    def listens(self, port: int, address: str) -> bool:
        if self._scan is None:
            self._scan = ListenerScan(("tcp",))
        return listens_in(self._scan, port, address)


def _key(entry: ServiceEntry) -> _Key:
    return (entry.environment, entry.service, entry.id, entry.registered_at)


def _expired_at(record: HealthRecord, now: float) -> float | None:
    """When ``record``'s TTL expired, or None if it has none or it has not expired yet."""
    if record.expires_at is not None and now >= record.expires_at:
        return record.expires_at
    return None


def _overdue(entry: ServiceEntry, health: HealthRecord, now: float) -> str | None:
    """Why ``entry`` is to be removed for staying critical too long, or None."""
    return critical_too_long(entry, health, now, entry.check.deregister_after)


def critical_too_long(
    entry: ServiceEntry, health: HealthRecord, now: float, limit: float | None
) -> str | None:
    """``critical for 412s (deregister after 300s)`` when ``entry`` has been critical (or its
    TTL expired) for longer than ``limit`` seconds; None otherwise, or with no limit."""
    if limit is None:
        return None
    expired_at = _expired_at(health, now)
    if health.status == Status.CRITICAL:
        since = health.critical_since if health.critical_since is not None else health.updated_at
    elif expired_at is not None:
        since = expired_at
    else:
        return None
    if now - since <= limit:
        return None
    return f"critical for {now - since:.0f}s (deregister after {limit:g}s)"


def _process_exists(pid: int) -> bool:
    """Whether ``pid`` is a live process; an unreaped (zombie) process counts as gone."""
    if pid <= 0:  # kill(0) and kill(-n) address process groups: never a registration's owner
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[:1]
        return state not in ([b"Z"], [b"X"])
    return True


def _is_ip(address: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, address.removeprefix("[").removesuffix("]"))
        except OSError:
            continue
        return True
    return False
