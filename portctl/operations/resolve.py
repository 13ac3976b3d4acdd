"""Automatic conflict resolution: move a service off a port a foreign holder took.

A repair loop in the manner of Kubernetes' allocator repair: it acts only on what it has seen
several passes in a row, and when unsure it leaves things as they are (a port stays leaked)
rather than risk giving one port to two services. One :meth:`Resolver.run_once` is one pass:

1. **observe**: every allocated (and, with a compose project, declared) port of the
   environment is checked against what holds it on this host (:func:`portctl.compose.check.check_ports`).
   A conflict is a *foreign* holder - not the service's own container or process, not its
   registered instance - on the port of a service that is *not running* on it. A service that
   is running on its port is never moved, whatever else holds it too; a foreign holder is
   never stopped or signalled;
2. **confirm**: a conflict counts once it was seen, with the same holder, on ``confirmations``
   passes in a row; one pass without it starts its count again;
3. **move**: the allocation moves through the allocator (compare-and-set, so a racing writer
   makes the move fail, never double-allocate); the compose project's ``.env.ports`` and
   override are rewritten, the service's registrations on this host follow it to the new port,
   and the move is recorded in the event log (:mod:`portctl.ports.events`). With ``redeploy``
   the moved compose services are started again (``docker compose up -d SERVICE...``) and
   their ports probed.

Moves are rate limited (``max_moves`` per ``per`` seconds); a service whose range is full is
retried after a back-off that doubles up to :data:`MAX_BACKOFF`, and nothing is moved for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from portctl.compose.check import Finding, Target, check_ports, targets
from portctl.compose.project import ComposeProject
from portctl.errors import PortctlError, RangeExhausted, VersionConflict
from portctl.host.holders import PROXIES, HostPorts, PortHolder
from portctl.ports.allocator import PortAllocator
from portctl.ports.events import EventLog
from portctl.records import Event
from portctl.registry.entries import Registry, ServiceEntry

__all__ = ["MAX_BACKOFF", "Move", "Pending", "ResolveReport", "Resolver", "Skipped"]

FIRST_BACKOFF = 30.0
MAX_BACKOFF = 900.0


@dataclass(frozen=True)
class Sighting:
    """A conflict seen on one pass: a foreign holder on a service's port."""

    target: Target
    holders: tuple[PortHolder, ...]

    @property
    def key(self) -> tuple[str, str, int, str, tuple[str, ...]]:
        t = self.target
        return (t.environment, t.service, t.port, t.protocol, tuple(sorted(map(_holder_id, self.holders))))

    @property
    def holder_text(self) -> str:
        return "; ".join(h.describe() for h in self.holders)


def _holder_id(holder: PortHolder) -> str:
    if holder.container is not None:
        return f"container:{holder.container.id}"
    if holder.process is not None:
        return f"pid:{holder.process.pid}"
    return f"user:{holder.user}"


@dataclass(frozen=True)
class Pending:
    service: str
    environment: str
    port: int
    holder: str
    seen: int  # passes in a row
    needed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "environment": self.environment,
            "port": self.port,
            "holder": self.holder,
            "seen": self.seen,
            "needed": self.needed,
        }


@dataclass(frozen=True)
class Skipped:
    service: str
    environment: str
    port: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "environment": self.environment,
            "port": self.port,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Move:
    service: str
    environment: str
    protocol: str
    old_port: int
    new_port: int
    holder: str
    files: tuple[str, ...] = ()  # rewritten
    registrations: tuple[str, ...] = ()  # instance ids now at the new port
    done: bool = True  # False in a dry run: what would be done
    redeployed: str = ""  # the compose command run, with --redeploy
    answered: bool | None = None  # the redeployed port answers (None: not redeployed)
    detail: str = ""
    problems: tuple[str, ...] = ()  # what failed after the allocation moved

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "environment": self.environment,
            "protocol": self.protocol,
            "old_port": self.old_port,
            "new_port": self.new_port,
            "holder": self.holder,
            "files": list(self.files),
            "registrations": list(self.registrations),
            "done": self.done,
            "redeployed": self.redeployed,
            "answered": self.answered,
            "detail": self.detail,
            "problems": list(self.problems),
        }


@dataclass
class ResolveReport:
    moves: list[Move] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)  # seen, not yet on enough passes
    skipped: list[Skipped] = field(default_factory=list)  # seen and confirmed, not moved: why
    notices: list[str] = field(default_factory=list)

    @property
    def conflicts_left(self) -> bool:
        return bool(
            self.pending
            or self.skipped
            or any(not m.done or m.answered is False or m.problems for m in self.moves)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "moves": [m.to_dict() for m in self.moves],
            "pending": [p.to_dict() for p in self.pending],
            "skipped": [s.to_dict() for s in self.skipped],
            "notices": self.notices,
        }


@dataclass
class _Backoff:
    until: float
    delay: float


class Resolver:
    """Moves this host's services off ports foreign holders took (see the module's description)."""

    def __init__(
        self,
        allocator: PortAllocator,
        *,
        environment: str | None = None,
        project: ComposeProject | None = None,
        override_file: str | None = None,
        confirmations: int = 3,
        max_moves: int = 5,
        per: float = 60.0,
        dry_run: bool = False,
        redeploy: bool = False,
        actor: str = "portctl resolve",
        again: bool = False,
        scan: Callable[[], HostPorts] = HostPorts,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.allocator = allocator
        self.environment = allocator.policy.environment(environment)
        self.project = project
        self.override_file = override_file
        self.confirmations = confirmations
        self.max_moves = max_moves
        self.per = per
        self.dry_run = dry_run
        self.redeploy = redeploy
        self.actor = actor
        self.again = again  # it runs pass after pass (an agent): a full range is tried again later
        self.scan = scan
        self.clock = clock
        self.events = EventLog(allocator.store, allocator.host)
        self._streaks: dict[tuple[str, str, int, str, tuple[str, ...]], int] = {}
        self._moved_at: list[float] = []
        self._backoff: dict[tuple[str, str], _Backoff] = {}

    # One pass ----------------------------------------------------------------------------

    def run_once(self, host: HostPorts | None = None) -> ResolveReport:
        """One pass; ``host`` is this pass's scan when several resolvers share one."""
        report = ResolveReport()
        host = host or self.scan()
        report.notices += host.notices
        seen = self.observe(host)
        unsure = [x for x in seen if _doubt(x)]
        for x in unsure:
            t = x.target
            report.skipped.append(Skipped(t.service, t.environment, t.port, _doubt(x)))
        confirmed = self._count([x for x in seen if x not in unsure], report)
        for sighting in confirmed:
            self._act(sighting, report)
        return report

    def observe(self, host: HostPorts) -> list[Sighting]:
        """This pass's conflicts: foreign holders on the ports of services not running on them."""
        to_check = targets(self.allocator, self.environment, self.project)
        return [
            Sighting(f.target, f.conflicts)
            for f in check_ports(to_check, host).findings
            if _foreign_only(f) and self._allocated_here(f.target)
        ]

    def _allocated_here(self, target: Target) -> bool:
        current = self.allocator.get(target.service, target.environment)
        return current is not None and current.port == target.port

    def _count(self, seen: Sequence[Sighting], report: ResolveReport) -> list[Sighting]:
        streaks = {s.key: self._streaks.get(s.key, 0) + 1 for s in seen}
        self._streaks = streaks  # a conflict missing from this pass starts again from nothing
        confirmed = []
        for s in seen:
            count = streaks[s.key]
            if count >= self.confirmations:
                confirmed.append(s)
            else:
                t = s.target
                report.pending.append(
                    Pending(t.service, t.environment, t.port, s.holder_text, count, self.confirmations)
                )
        return confirmed

    # Acting ------------------------------------------------------------------------------

    def _act(self, sighting: Sighting, report: ResolveReport) -> None:
        t = sighting.target
        now = self.clock()
        why_not = self._held_back(t, now)
        if why_not:
            report.skipped.append(Skipped(t.service, t.environment, t.port, why_not))
            return
        try:
            move = self._move(sighting)
        except RangeExhausted as e:
            report.skipped.append(Skipped(t.service, t.environment, t.port, self._back_off(t, now, e)))
            return
        except VersionConflict as e:
            # Someone else changed the allocation meanwhile: look again next pass.
            report.skipped.append(
                Skipped(t.service, t.environment, t.port, f"changed meanwhile: {e.message}")
            )
            return
        self._backoff.pop((t.environment, t.service), None)
        self._streaks.pop(sighting.key, None)
        if move.done:
            self._moved_at.append(now)
        report.moves.append(move)

    def _held_back(self, target: Target, now: float) -> str:
        backoff = self._backoff.get((target.environment, target.service))
        if backoff is not None and now < backoff.until:
            return f"its range was full; trying again in {backoff.until - now:.0f}s"
        if self._recent_moves(now) >= self.max_moves:
            return f"rate limit: {self.max_moves} moves in {self.per:g}s already; it moves on a later pass"
        return ""

    def _recent_moves(self, now: float) -> int:
        """Moves on this host within ``per`` seconds, by any resolver (the event log is in the
        store, so one ``portctl resolve`` after another is limited too), or by this one."""
        self._moved_at = [at for at in self._moved_at if now - at < self.per]
        logged = [e for e in self.events.read(since=now - self.per).events if e.kind == "moved"]
        return max(len(logged), len(self._moved_at))

    def _back_off(self, target: Target, now: float, error: RangeExhausted) -> str:
        if not self.again:
            return error.message
        key = (target.environment, target.service)
        previous = self._backoff.get(key)
        delay = min(MAX_BACKOFF, previous.delay * 2) if previous else FIRST_BACKOFF
        self._backoff[key] = _Backoff(now + delay, delay)
        return f"{error.message}; trying again in {delay:g}s"

    def _move(self, sighting: Sighting) -> Move:
        t = sighting.target
        current = self.allocator.get(t.service, t.environment)
        if current is None or current.port != t.port:
            raise VersionConflict(t.service, "the allocation changed since it was observed")
        result = self.allocator.allocate(
            t.service,
            type=current.type,
            environment=t.environment,
            protocol=current.protocol,
            avoid={t.port},
            compose=current.compose,
            dry_run=self.dry_run,
        )
        if result.previous_port != t.port:  # another writer moved it between our read and write
            raise VersionConflict(t.service, f"the allocation is on {result.allocation.port} now")
        new = result.allocation
        move = Move(
            t.service,
            t.environment,
            t.protocol,
            t.port,
            new.port,
            sighting.holder_text,
            done=not self.dry_run,
        )
        if self.dry_run:
            return move
        # The allocation has moved: whatever fails from here on is reported with the move, and
        # the move is recorded all the same.
        move = self._rewrite_files(move)
        move = self._follow_registrations(t, move)
        if self.redeploy and t.compose_service:
            move = self._redeploy(move, t)
        self._record(move)
        return move

    # What follows a move -----------------------------------------------------------------

    def _rewrite_files(self, move: Move) -> Move:
        """The compose project's ``.env.ports`` and override, as ``portctl deploy`` writes them."""
        if self.project is None:
            return move
        from portctl.compose.rewrite import stack_files

        try:
            written = stack_files(self.allocator, self.project, self.environment, self.override_file).written
        except PortctlError as e:
            return replace(move, problems=(*move.problems, f"files not rewritten: {e.message}"))
        return replace(move, files=tuple(written))

    def _follow_registrations(self, target: Target, move: Move) -> Move:
        """Re-register this host's instances of the service that were on the old port at the
        new one: at the old port their checks would report the foreign holder's health."""
        registry = Registry(self.allocator.store, self.allocator.settings)
        ids, problems = [], []
        for entry in target.registered:
            try:
                ids.append(_reregister(registry, entry, move.new_port))
            except PortctlError as e:
                problems.append(f"registration {entry.id} left on {move.old_port}: {e.message}")
        return replace(move, registrations=tuple(ids), problems=(*move.problems, *problems))

    def _redeploy(self, move: Move, target: Target) -> Move:
        from portctl.compose.rewrite import restart_services

        project = self.project
        if project is None:  # a move is redeployed only for a compose project
            return move
        try:
            started = restart_services(
                self.allocator, project, self.environment, [target.service], self.override_file
            )
        except PortctlError as e:
            return replace(move, answered=False, problems=(*move.problems, f"not redeployed: {e.message}"))
        probe = next((p for p in started.probes if p.name == target.service), None)
        return replace(
            move,
            redeployed=started.command,
            answered=probe.answered if probe else None,
            detail=probe.detail if probe else "",
        )

    def _record(self, move: Move) -> None:
        detail = f"moved off {move.old_port}: a foreign holder took it while {move.service} was not on it"
        if move.redeployed:
            detail += f"; redeployed ({'answers' if move.answered else 'does not answer'} on {move.new_port})"
        if move.problems:
            detail += "; " + "; ".join(move.problems)
        self.events.record(
            Event(
                kind="moved",
                at=self.clock(),
                host=self.allocator.host,
                actor=self.actor,
                environment=move.environment,
                service=move.service,
                protocol=move.protocol,
                old_port=move.old_port,
                new_port=move.new_port,
                holder=move.holder,
                detail=detail,
                files=move.files,
            )
        )


def _doubt(sighting: Sighting) -> str:
    """Why it cannot be told that what holds the port is not the service itself ("" when it
    can). Only Docker gives a holder an identity to compare, and only a compose service has one
    to compare it with: it runs in its stack's container, so a host process, or another stack's
    container, is not it. Anything on the port of a service that is not a compose stack's may
    be the service (restarted with a new pid, or run in a container of its own): it is left
    alone; so is a port held by Docker's proxy for a container Docker did not name (Docker not
    reachable): the stack's own container may be the one it serves."""
    t = sighting.target
    compose = t.project is not None and t.compose_service is not None
    for h in sighting.holders:
        if h.process is not None and h.process.name in PROXIES and h.container is None:
            return (
                f"{t.port} is held by Docker's proxy ({h.describe()}) for a container Docker did not "
                "name (is Docker reachable?): it may be the service's own"
            )
        if not compose:
            return (
                f"cannot tell whether {h.describe()} is {t.service} itself (restarted with a new pid, "
                f"or run by hand): free the port (portctl free {t.port}) or move {t.service} by hand"
            )
    return ""


def _foreign_only(finding: Finding) -> bool:
    """A foreign holder, and the service itself not running on its port (its own stopped
    container, which holds nothing now, does not count as running)."""
    return bool(finding.conflicts) and not any(h.blocking for h in finding.own)


def _reregister(registry: Registry, entry: ServiceEntry, new_port: int) -> str:
    """``entry`` registered again at ``new_port`` (its id too, when it was the default one that
    names the port), and the old registration removed once the new one is written; the new
    id. A refusal is raised, and the old registration then stays as it was."""
    from portctl.registry.health import run_check

    default_id = entry.id.endswith(f"-{entry.port}")
    check = entry.check
    if check.url:
        check = replace(check, url=_moved_url(check.url, entry.port, new_port))
    found = registry.register(
        entry.service,
        port=new_port,
        address=entry.address,
        instance_id=None if default_id else entry.id,
        tags=entry.tags,
        meta=entry.meta,
        check=check,
        environment=entry.environment,
        probe=run_check,
        lease=entry.lease,
    )
    if found.entry.id != entry.id:
        registry.deregister(entry.id, entry.environment)
    return found.entry.id


def _moved_url(url: str, old: int, new: int) -> str:
    """``url`` with its port ``old`` (``http://127.0.0.1:8000/health``, ``http://h:8000``,
    ``http://h:8000?x=1``) made ``new``; any other URL as it is."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.port != old or parts.hostname is None:
        return url
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return urlunsplit(parts._replace(netloc=f"{host}:{new}"))


def resolve(
    resolver: Resolver,
    *,
    observations: int | None = None,
    interval: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ResolveReport:
    """What a person runs: ``observations`` looks (default: the resolver's confirmations) a
    second apart; a conflict seen on every one of them is acted on after the last."""
    count = observations or resolver.confirmations
    report = ResolveReport()
    for i in range(count):
        report = resolver.run_once()
        if i < count - 1 and report.pending:
            sleep(interval)
        elif not report.pending:
            break
    return report
