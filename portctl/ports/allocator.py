"""Port allocation: never one (host, port, protocol) for two services, even under races.

Two kinds of key live in the store for each allocation, written together in one transaction:

* ``allocations/<host>/<environment>/<service>`` - the allocation record (JSON),
* ``ports/<host>/<protocol>/<port>`` - the claim on the port, naming its service.

Creating a claim is create-if-absent, so of two allocators racing for one port exactly one
wins; the loser moves on to its next candidate. A claim whose allocation record no longer
points at it (a crash between steps of an older tool, a hand-edited store) is stale and is taken
over with compare-and-set on its version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from portctl import _validate
from portctl.backends.base import Capability, Create, Delete, Entry, Expect, Operation, Put, Store
from portctl.config.policy import ServiceSpec
from portctl.config.settings import Settings
from portctl.errors import (
    InvalidInput,
    Kind,
    PortConflict,
    RangeExhausted,
    ServiceNotFound,
    StoreCorrupt,
    VersionConflict,
)
from portctl.host.kernel import BindResult, KernelPorts, bind_test, kernel_ports
from portctl.keys import allocation_key, allocations_prefix, claim_key, claims_prefix

if TYPE_CHECKING:  # the host scan is imported only to describe a refused port's holder
    from portctl.host.holders import PortHolder

__all__ = ["Allocation", "AllocationResult", "PortAllocator", "parse_allocation"]

REQUIRED = Capability.CAS | Capability.TXN
# Lost races before giving up. Each loss means another allocator made progress, so this
# bounds only pathological cases (thousands of allocators hammering one store).
_ATTEMPTS = 1000
_SPREAD = 8  # after k lost races, pick among the first min(k, _SPREAD) + 1 free range ports


@dataclass(frozen=True)
class Allocation:
    service: str
    environment: str
    host: str
    port: int
    protocol: str
    type: str
    allocated_at: str
    compose: str | None = None  # "project/service" when allocated for a compose stack

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        if self.compose is None:
            del out["compose"]
        return out

    @classmethod
    def from_dict(cls, raw: object, where: str = "allocation") -> Allocation:
        if not isinstance(raw, dict):
            raise InvalidInput(where, raw, "an object with service, environment, host, port, protocol, type")
        try:
            return cls(
                service=_validate.service_name(raw["service"], f"{where}.service"),
                environment=_validate.service_name(raw["environment"], f"{where}.environment"),
                host=_validate.host(raw["host"], f"{where}.host"),
                port=_validate.port(raw["port"], f"{where}.port"),
                protocol=_validate.protocol(raw.get("protocol", "tcp"), f"{where}.protocol"),
                type=_validate.service_name(raw.get("type", "custom"), f"{where}.type"),
                allocated_at=str(raw.get("allocated_at") or _now()),
                compose=_compose_owner(raw.get("compose"), f"{where}.compose"),
            )
        except KeyError as e:
            raise InvalidInput(f"{where}.{e.args[0]}", None, "a value (the field is required)") from None


@dataclass(frozen=True)
class AllocationResult:
    allocation: Allocation
    changed: bool  # False: it was already so (allocation is idempotent)
    reason: str  # how the port was chosen
    skipped: tuple[str, ...] = ()  # candidates passed over, and why
    previous_port: int | None = None  # set when an allocation moved


@dataclass
class _Candidate:
    port: int
    reason: str
    requested: bool = False
    scanned: bool = False  # from the type's range, not the service's own ports


@dataclass
class _View:
    """One read of this host's claims and records, to judge candidates without more I/O."""

    claims: dict[int, Entry] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)  # allocation key -> its entry
    records: dict[str, Allocation] = field(default_factory=dict)  # allocation key -> record
    taken: dict[int, tuple[str, str]] = field(default_factory=dict)  # port -> live (service, env)


@dataclass(frozen=True)
class _Request:
    spec: ServiceSpec
    env: str
    port: int | None  # asked for explicitly: this one or an error
    prefer: tuple[int, ...] = ()
    avoid: frozenset[int] = frozenset()
    compose: str | None = None
    own: frozenset[int] = frozenset()  # held by the service's own running container
    dry_run: bool = False  # choose, write nothing

    def satisfied_by(self, current: Allocation) -> bool:
        """Whether the service's current allocation already answers this request."""
        if current.protocol != self.spec.protocol:
            return False
        if self.port is not None:
            return current.port == self.port
        return current.port not in self.avoid


class _LostRace(Exception):
    """Another allocator wrote first; re-read and try again."""


def _compose_owner(value: object, field_name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.count("/") != 1 or not all(value.split("/")):
        raise InvalidInput(field_name, value, "PROJECT/SERVICE of a compose stack")
    return value


def _random_below(n: int) -> int:
    import random  # only after a lost race; not imported on every command

    return random.randrange(n)  # noqa: S311 - spreading allocators, not security


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class PortAllocator:
    """Allocates, lists and releases ports for one host in one store.

    ``bind`` and ``kernel`` are the host probes; a test may pass its own to simulate a host.
    ``published`` names a container that publishes a port without any listener a bind test
    would meet (Docker's userland proxy off, or a stopped container that takes the port back
    when started); see :func:`portctl.host.containers.publisher`. ``holders`` describes what holds
    a refused port (default: a scan of this host, :class:`portctl.host.holders.HostPorts`).
    """

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        bind: Callable[[int, str], BindResult] = bind_test,
        kernel: KernelPorts | None = None,
        published: Callable[[int, str], str | None] | None = None,
        holders: Callable[[int, str], list[PortHolder]] | None = None,
    ) -> None:
        store.require(REQUIRED)
        self.store = store
        self.settings = settings or Settings()
        self.policy = self.settings.policy
        self.host = self.settings.host
        self._bind = bind
        self._kernel = kernel
        self._published = published
        self._holders = holders
        self._records_cache: dict[str, tuple[str, Allocation]] = {}
        self._owners_cache: dict[str, tuple[str, tuple[str, str]]] = {}

    @property
    def kernel(self) -> KernelPorts:
        if self._kernel is None:
            self._kernel = kernel_ports()
        return self._kernel

    # Reading -------------------------------------------------------------------------

    def get(self, service: str, environment: str | None = None) -> Allocation | None:
        env = self.policy.environment(environment)
        entry = self.store.get(allocation_key(self.host, env, _validate.service_name(service)))
        return parse_allocation(entry) if entry else None

    def allocations(self, environment: str | None = None, *, all_hosts: bool = False) -> list[Allocation]:
        env = None if environment is None else self.policy.environment(environment)  # '' refused
        prefix = allocations_prefix() if all_hosts else allocations_prefix(self.host)
        found = [parse_allocation(e) for e in self.store.list(prefix)]
        found = [a for a in found if env is None or a.environment == env]
        return sorted(found, key=lambda a: (a.host, a.environment, a.service))

    # Allocating ------------------------------------------------------------------------

    def allocate(
        self,
        service: str,
        *,
        port: int | None = None,
        type: str | None = None,
        environment: str | None = None,
        protocol: str | None = None,
        prefer: Sequence[int] = (),
        avoid: Collection[int] = (),
        compose: str | None = None,
        own: Collection[int] = (),
        dry_run: bool = False,
    ) -> AllocationResult:
        """The port of ``service`` in ``environment``: the one it has, the one asked for, or a
        free one chosen by the policy (environment port, standard, alternatives, type range).

        ``prefer`` ports are tried before the policy's (a compose file's published port);
        ``avoid`` ports are never chosen, and a service holding one is moved off it (a port a
        foreign container or process took since it was allocated). ``compose`` records the
        compose ``project/service`` the port is published by, so checks know its own container.
        ``own`` ports are held by the service itself (its compose container, already running):
        they pass the host's checks, but never another service's allocation. With ``dry_run``
        the port is chosen as it would be, and nothing is written.
        """
        env = self.policy.environment(environment)
        spec = self.policy.spec(service, type, protocol)
        if port is not None:
            port = _validate.port(port)
            self._check_privilege(port)
        preferred = tuple(_validate.port(p) for p in prefer)
        request = _Request(spec, env, port, preferred, frozenset(avoid), compose, frozenset(own), dry_run)
        key = allocation_key(self.host, env, spec.name)
        for losses in range(_ATTEMPTS):
            try:
                return self._attempt(request, key, spread=min(losses, _SPREAD))
            except _LostRace:
                continue  # another allocator changed the store between our read and write
        raise VersionConflict(key, f"gave up allocating {spec.name!r} after {_ATTEMPTS} lost races")

    def _attempt(self, request: _Request, key: str, spread: int) -> AllocationResult:
        spec, env, compose = request.spec, request.env, request.compose
        view = self._read_view(spec.protocol)
        current = view.records.get(key)
        _refuse_variable_clash(spec.name, env, view)
        if current and compose is not None and current.compose not in (None, compose):
            raise PortConflict(
                current.port,
                current.protocol,
                f"{spec.name} ({env}) is allocated to compose stack {current.compose}",
                "give this stack's port its own ${NAME_PORT} variable, or use another --env",
            )
        if current and request.satisfied_by(current):
            if compose is not None and current.compose is None:
                current = self._tag(view.entries[key], current, compose)
            return AllocationResult(current, False, "already allocated")
        return self._claim_first(request, view, spread)

    def _claim_first(self, request: _Request, view: _View, spread: int) -> AllocationResult:
        spec = request.spec
        skipped: list[str] = []
        # Racing allocators all reach for the lowest free port; one that lost a race spreads
        # out over the next few free ones, so they stop colliding on every step.
        skip = _random_below(spread + 1) if spread else 0
        for cand in self._candidates(request, view):
            why_not = self._why_not(cand, request, view)
            if why_not is None and cand.scanned and skip:
                skip -= 1
                continue
            if why_not is None:
                return self._write(request, cand, view, tuple(skipped))
            if cand.requested:
                raise self._refusal(cand.port, spec.protocol, why_not, view)
            if not cand.scanned:
                skipped.append(f"{cand.port}: {why_not}")
        stype = self.policy.service_type(spec.type)
        raise RangeExhausted(spec.name, f"the {stype.name} range {stype.range_text}", skipped)

    def _candidates(self, request: _Request, view: _View) -> Iterator[_Candidate]:
        if request.port is not None:
            yield _Candidate(request.port, "requested", requested=True)
            return
        spec = request.spec
        named = [
            *((p, "declared port") for p in request.prefer),
            *(
                (p, "standard port" if i == 0 else "alternative port")
                for i, p in enumerate(spec.preferred(request.env))
            ),
        ]
        seen: set[int] = set(request.avoid)
        for p, reason in named:
            if p not in seen:
                seen.add(p)
                yield _Candidate(p, reason)
        stype = self.policy.service_type(spec.type)
        skip = self._standard_ports_of_others(spec.name) | seen | view.taken.keys()
        allowed = self.kernel.dynamic_pick_allowed
        reason = f"first free port of the {stype.name} range {stype.range_text}"
        for p in range(stype.low, stype.high + 1):
            if p not in skip and allowed(p):
                yield _Candidate(p, reason, scanned=True)

    def _standard_ports_of_others(self, name: str) -> set[int]:
        """Range scans leave other known services' standard ports for them."""
        return {
            p
            for s in self.policy.services.values()
            if s.name != name
            for p in s.preferred(self.policy.default_environment)
        } | {p for s in self.policy.services.values() if s.name != name for p in s.ports.values()}

    def _why_not(self, cand: _Candidate, request: _Request, view: _View) -> str | None:
        spec = request.spec
        owner = view.taken.get(cand.port)
        if owner is not None and owner != (spec.name, request.env):
            return f"allocated to {owner[0]} ({owner[1]})"
        if self.kernel.needs_privilege(cand.port):
            return _privilege_text(self.kernel)
        if cand.port in request.own:
            return None
        result = self._bind(cand.port, spec.protocol)
        if not result.free:
            return f"in use on this host ({result.reason})"
        holder = self._published(cand.port, spec.protocol) if self._published else None
        if holder:
            return f"published by {holder}"
        return None

    def _refusal(self, port: int, protocol: str, why_not: str, view: _View) -> PortConflict:
        """The refusal of a requested port: who holds it, and the command that frees it."""
        choose = "or omit --port to let portctl choose"
        owner = view.taken.get(port)
        if owner is not None:
            return PortConflict(port, protocol, why_not, f"free it with: {_release_step(*owner)}, {choose}")
        holders = self._host_holders(port, protocol)
        if not holders:
            return PortConflict(port, protocol, why_not, f"free it, {choose}")
        held = "; ".join(h.describe() for h in holders)
        published = why_not.startswith("published by")
        holder = f"published by {held}" if published else f"{why_not}, held by {held}"
        steps = "; ".join(dict.fromkeys(h.next_step() for h in holders))
        return PortConflict(port, protocol, holder, f"free it with: {steps}, {choose}")

    def _host_holders(self, port: int, protocol: str) -> list[PortHolder]:
        """What holds ``port`` on this host; nothing when the host is simulated (a test's
        ``bind``), since a scan would describe the real one."""
        if self._holders is not None:
            return self._holders(port, protocol)
        if self._bind is not bind_test:
            return []
        from portctl.host.holders import HostPorts  # only for a refusal

        return HostPorts().holders(port, protocol)

    def _tag(self, entry: Entry, current: Allocation, compose: str) -> Allocation:
        """Note the compose stack on an allocation made before it was known; the port stays."""
        tagged = replace(current, compose=compose)
        try:
            self.store.compare_and_set(entry.key, _dump(tagged), entry.version)
        except VersionConflict:
            raise _LostRace from None
        return tagged

    def _write(
        self, request: _Request, cand: _Candidate, view: _View, skipped: tuple[str, ...]
    ) -> AllocationResult:
        spec, env = request.spec, request.env
        key = allocation_key(self.host, env, spec.name)
        record = Allocation(
            spec.name, env, self.host, cand.port, spec.protocol, spec.type, _now(), request.compose
        )
        # The record as read with the view: if another allocator wrote it since, the condition
        # fails and the caller re-reads, so two racing calls for one service agree on its port.
        current = view.entries.get(key)
        previous = parse_allocation(current).port if current else None
        if request.dry_run:
            return AllocationResult(record, True, cand.reason, skipped, previous)
        ops = self._claim_ops(record, view.claims.get(cand.port))
        if current is None:
            ops.append(Create(key, _dump(record)))
        else:
            ops.append(Put(key, _dump(record), current.version))
            ops.extend(_release_claim_ops(self.host, parse_allocation(current), self.store))
        try:
            self.store.transact(ops)
        except VersionConflict as e:
            raise _LostRace from e
        return AllocationResult(record, True, cand.reason, skipped, previous)

    def _check_privilege(self, port: int) -> None:
        if self.kernel.needs_privilege(port):
            raise InvalidInput(
                Kind("port"), port, f"a port this process may bind: {_privilege_text(self.kernel)}"
            )

    def _read_view(self, protocol: str) -> _View:
        view = _View()
        claims = claims_prefix(self.host, protocol)
        found = self.store.list_many([allocations_prefix(self.host), claims])
        for entry in found:
            if entry.key.startswith(claims):
                continue
            view.entries[entry.key] = entry
            view.records[entry.key] = self._parsed(entry)
        for entry in (e for e in found if e.key.startswith(claims)):
            port = int(entry.key.rsplit("/", 1)[1])
            view.claims[port] = entry
            owner = self._owner(entry)
            record = view.records.get(allocation_key(self.host, owner[1], owner[0]))
            if record is not None and record.port == port and record.protocol == protocol:
                view.taken[port] = owner  # a claim its record no longer points at is stale
        return view

    def _claim_ops(self, record: Allocation, existing: Entry | None) -> list[Operation]:
        """Claim ``record``'s port: create the claim, or take over a stale one.

        A claim is stale when its owner's record does not point at it. That judgement must still
        hold when the transaction commits, so the owner's record is read once more and the
        transaction is made conditional on it (an Expect); otherwise an allocator that read the
        claim just before its record was written would steal a live port.
        """
        key = claim_key(record.host, record.protocol, record.port)
        value = json.dumps({"service": record.service, "environment": record.environment})
        if existing is None:
            return [Create(key, value)]
        ops: list[Operation] = [Put(key, value, existing.version)]
        service, env = self._owner(existing)
        owner_key = allocation_key(record.host, env, service)
        if owner_key != allocation_key(record.host, record.environment, record.service):
            owner = self.store.get(owner_key)
            if owner is not None and self._parsed(owner).port == record.port:
                raise _LostRace  # the claim came alive since the view was read
            ops.append(Expect(owner_key, owner.version if owner else None))
        return ops

    def _parsed(self, entry: Entry) -> Allocation:
        """Records parsed once per version: a view is read on every attempt."""
        cached = self._records_cache.get(entry.key)
        if cached is None or cached[0] != entry.version:
            cached = (entry.version, parse_allocation(entry))
            self._records_cache[entry.key] = cached
        return cached[1]

    def _owner(self, claim: Entry) -> tuple[str, str]:
        cached = self._owners_cache.get(claim.key)
        if cached is None or cached[0] != claim.version:
            cached = (claim.version, _claim_owner(claim))
            self._owners_cache[claim.key] = cached
        return cached[1]

    # Releasing -----------------------------------------------------------------------

    def release(self, service: str, environment: str | None = None) -> Allocation:
        env = self.policy.environment(environment)
        key = allocation_key(self.host, env, _validate.service_name(service))
        for _ in range(_ATTEMPTS):
            entry = self.store.get(key)
            if entry is None:
                known = [a.service for a in self.allocations(env)]
                raise ServiceNotFound(service, known, f"allocated in {env} on {self.host}")
            record = parse_allocation(entry)
            try:
                self.store.transact(
                    [Delete(key, entry.version), *_release_claim_ops(self.host, record, self.store)]
                )
            except VersionConflict:
                continue
            return record
        raise VersionConflict(key, f"gave up releasing {service!r} after {_ATTEMPTS} lost races")

    # Importing -----------------------------------------------------------------------

    def import_allocations(self, allocations: Sequence[Allocation]) -> list[AllocationResult]:
        """Record documented allocations as they are, all or none, without bind tests (the
        services may already be running on them). A port held by another service refuses all."""
        for alloc in allocations:
            self.policy.environment(alloc.environment, "environment")
        _refuse_duplicates(allocations)
        ops: list[Operation] = []
        results: list[AllocationResult] = []
        for alloc in allocations:
            try:
                result, alloc_ops = self._import_ops(alloc)
            except _LostRace:
                raise VersionConflict(
                    claim_key(alloc.host, alloc.protocol, alloc.port),
                    f"port {alloc.port} was allocated while importing; nothing was imported, retry",
                ) from None
            ops.extend(alloc_ops)
            results.append(result)
        if ops:
            self.store.transact(ops)
        return results

    def _import_ops(self, alloc: Allocation) -> tuple[AllocationResult, list[Operation]]:
        key = allocation_key(alloc.host, alloc.environment, alloc.service)
        current = self.store.get(key)
        if (
            current
            and parse_allocation(current).port == alloc.port
            and parse_allocation(current).protocol == alloc.protocol
        ):
            return AllocationResult(parse_allocation(current), False, "already allocated"), []
        claim = self.store.get(claim_key(alloc.host, alloc.protocol, alloc.port))
        if claim is not None:
            owner = _claim_owner(claim)
            owner_rec = self.store.get(allocation_key(alloc.host, owner[1], owner[0]))
            if (
                owner != (alloc.service, alloc.environment)
                and owner_rec
                and parse_allocation(owner_rec).port == alloc.port
            ):
                raise PortConflict(
                    alloc.port,
                    alloc.protocol,
                    f"allocated to {owner[0]} ({owner[1]}) on {alloc.host}",
                    f"nothing was imported; free it with: {_release_step(*owner)}, or change the file",
                )
        ops = self._claim_ops(alloc, claim)
        if current is None:
            ops.append(Create(key, _dump(alloc)))
        else:
            ops.append(Put(key, _dump(alloc), current.version))
            ops.extend(_release_claim_ops(alloc.host, parse_allocation(current), self.store))
        previous = parse_allocation(current).port if current else None
        return AllocationResult(alloc, True, "imported", (), previous), ops


def _release_step(service: str, environment: str) -> str:
    return f"portctl release --service {service} --env {environment}"


def _refuse_variable_clash(service: str, env: str, view: _View) -> None:
    """Two names that make one variable (``api-gw``, ``api_gw``) would fight in .env.ports."""
    variable = _validate.port_variable(service)
    for other in view.records.values():
        if (
            other.environment == env
            and other.service != service
            and _validate.port_variable(other.service) == variable
        ):
            raise InvalidInput(
                "service",
                service,
                f"a name whose variable {variable} no other service uses ({other.service} has it)",
            )


def _refuse_duplicates(allocations: Sequence[Allocation]) -> None:
    seen: dict[tuple[str, str, int], str] = {}
    for a in allocations:
        slot = (a.host, a.protocol, a.port)
        if slot in seen and seen[slot] != f"{a.service} ({a.environment})":
            raise PortConflict(
                a.port,
                a.protocol,
                seen[slot],
                f"the file also gives it to {a.service} ({a.environment}); nothing was imported",
            )
        seen[slot] = f"{a.service} ({a.environment})"


def _release_claim_ops(host: str, record: Allocation, store: Store) -> list[Operation]:
    claim = store.get(claim_key(host, record.protocol, record.port))
    if claim is not None and _claim_owner(claim) == (record.service, record.environment):
        return [Delete(claim.key, claim.version)]
    return []


def _claim_owner(claim: Entry) -> tuple[str, str]:
    try:
        raw = json.loads(claim.value)
        return str(raw["service"]), str(raw["environment"])
    except (ValueError, KeyError, TypeError) as e:
        raise StoreCorrupt(claim.key, "the port claim is not the JSON portctl writes") from e


def parse_allocation(entry: Entry) -> Allocation:
    """The allocation a store entry holds; :class:`StoreCorrupt` if it is not one portctl wrote."""
    try:
        return Allocation.from_dict(json.loads(entry.value), entry.key)
    except ValueError as e:  # InvalidInput is a ValueError too
        raise StoreCorrupt(entry.key, f"the allocation record is not valid ({e})") from e


def _dump(record: Allocation) -> str:
    return json.dumps(record.to_dict(), sort_keys=True)


def _privilege_text(kernel: KernelPorts) -> str:
    return (
        f"ports below {kernel.unprivileged_start} need root or CAP_NET_BIND_SERVICE, which this process lacks"
    )
