"""``portctl check``: every allocated or compose-declared port, and what else holds it.

A port held by the service itself is not a conflict: its own compose container, a process
named like the service, or the instance the registry has on this host and port (``api_green``
is the green color of ``api``; a registration that recorded its process must be that process
or its parent). A stopped container that would take the port back when started is a warning.
Docker or process visibility problems are notices; the check goes on without them. The report
ends with the next step to take (:meth:`CheckReport.next_step`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from portctl import _validate
from portctl.errors import ServiceNotFound, StoreCorrupt
from portctl.host.holders import HostPorts, PortHolder, own_holder
from portctl.host.probe import is_loopback
from portctl.ports.allocator import PortAllocator
from portctl.registry.entries import Registry, ServiceEntry

if TYPE_CHECKING:  # compose support (and PyYAML) is loaded only when a compose file is given
    from portctl.compose.project import ComposeProject

__all__ = ["CheckReport", "Finding", "Target", "check_ports", "targets"]


@dataclass(frozen=True)
class Target:
    service: str
    environment: str
    port: int
    protocol: str
    address: str  # where the service binds: "0.0.0.0" for every address
    source: str  # "allocation" or "compose: FILE"
    compose_service: str | None = None
    project: str | None = None
    files: tuple[str, ...] = ()  # the compose files that publish it
    registered: tuple[ServiceEntry, ...] = ()  # this service's registry instances on this host and port

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "environment": self.environment,
            "port": self.port,
            "protocol": self.protocol,
            "address": self.address,
            "source": self.source,
        }


@dataclass(frozen=True)
class Finding:
    target: Target
    conflicts: tuple[PortHolder, ...] = ()
    warnings: tuple[PortHolder, ...] = ()
    own: tuple[PortHolder, ...] = ()  # the service itself holding its port

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.target.to_dict(),
            "conflicts": [h.to_dict() for h in self.conflicts],
            "warnings": [h.to_dict() for h in self.warnings],
            "own": [h.to_dict() for h in self.own],
        }


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def conflicts(self) -> list[Finding]:
        return [f for f in self.findings if f.conflicts]

    @property
    def ok(self) -> bool:
        return not self.conflicts

    def next_step(self) -> str | None:
        """One line: what to do next, or None when there is nothing to do."""
        if self.conflicts:
            frees = _free_steps(h for f in self.conflicts for h in f.conflicts)
            files = list(dict.fromkeys(p for f in self.conflicts for p in f.target.files))
            if files:
                deploy = "portctl deploy " + " ".join(f"-f {p}" for p in files)
                return f"{deploy} (moves the conflicting services to free ports), or free the ports: {frees}"
            moves = "; ".join(_move_step(f.target) for f in self.conflicts)
            return f"free the ports: {frees}; or move the services: {moves}"
        warned = [h for f in self.findings for h in f.warnings]
        if warned:
            return f"remove what would take ports back when started: {_free_steps(warned)}"
        return None


def _free_steps(holders: Iterable[PortHolder]) -> str:
    return "; ".join(dict.fromkeys(h.next_step() for h in holders))


def _move_step(target: Target) -> str:
    where = f"--service {target.service} --env {target.environment}"
    return f"portctl release {where} && portctl allocate {where}"


def targets(
    allocator: PortAllocator,
    environment: str | None,
    project: ComposeProject | None = None,
    services: Sequence[str] = (),
    *,
    refuse_reversed: bool = True,
) -> list[Target]:
    """What to check: the compose file's ports (at their allocated port when allocated), then
    every other allocation of the environment; only ``services`` when given. A mapping written
    ``CONTAINER:HOST`` is refused unless ``refuse_reversed`` is off (``doctor`` reports it)."""
    env = allocator.policy.environment(environment)
    allocations = {a.service: a for a in allocator.allocations(env)}
    registered = _registrations(allocator, env)
    found: dict[str, Target] = {}
    if project is not None:
        from portctl.compose.stack import reversed_mappings, stack_ports

        ports = stack_ports(project)
        if refuse_reversed:
            reversed_mappings(ports, allocations)
        for sp in ports:
            alloc = allocations.get(sp.name)
            port = alloc.port if alloc else sp.declared
            found[sp.name] = Target(
                sp.name,
                env,
                port,
                sp.mapping.protocol,
                sp.mapping.host_ip or "0.0.0.0",
                f"compose: {', '.join(project.files)}",
                sp.mapping.service,
                project.name,
                tuple(project.files),
                registered.get((sp.name, port), ()),
            )
    for alloc in allocations.values():
        # An allocation made for a compose stack knows its own container: project and service.
        project_name, _, compose_service = (alloc.compose or "").partition("/")
        found.setdefault(
            alloc.service,
            Target(
                alloc.service,
                env,
                alloc.port,
                alloc.protocol,
                "0.0.0.0",
                "allocation",
                compose_service or None,
                project_name or None,
                registered=registered.get((alloc.service, alloc.port), ()),
            ),
        )
    if services:
        for name in services:
            _validate.service_name(name)  # a malformed name is bad input, not a missing service
        missing = [s for s in services if s not in found]
        if missing:
            raise ServiceNotFound(missing[0], list(found), f"allocated in {env} nor in the compose files")
        return [found[s] for s in services]
    return sorted(found.values(), key=lambda t: (t.port, t.service))


def _registrations(allocator: PortAllocator, env: str) -> dict[tuple[str, int], tuple[ServiceEntry, ...]]:
    """This host's registry instances by (allocation name, port): ``api`` and, for a color of
    a blue-green service, ``api_green`` (the allocation that holds the color's port)."""
    try:
        instances = Registry(allocator.store, allocator.settings).instances(environment=env)
    except StoreCorrupt:
        return {}  # then nothing counts as registered: holders stay conflicts, never hidden
    found: dict[tuple[str, int], tuple[ServiceEntry, ...]] = {}
    for instance in instances:
        e = instance.entry
        if e.host != allocator.host:
            continue
        for name in _allocation_names(e):
            found[(name, e.port)] = (*found.get((name, e.port), ()), e)
    return found


def _allocation_names(entry: ServiceEntry) -> list[str]:
    color = entry.meta.get("color")
    # Blue-green keeps a color's port in the allocation SERVICE_COLOR (portctl.routing.bluegreen).
    return [entry.service, f"{entry.service}_{color}"] if color in ("blue", "green") else [entry.service]


def check_ports(to_check: Sequence[Target], host: HostPorts) -> CheckReport:
    report = CheckReport(notices=host.notices)
    for target in to_check:
        holders = host.holders(target.port, target.protocol, target.address)
        own = [h for h in holders if _is_itself(h, target)]
        others = [h for h in holders if h not in own]
        report.findings.append(
            Finding(
                target,
                tuple(h for h in others if h.blocking),
                tuple(h for h in others if not h.blocking),
                tuple(own),
            )
        )
    return report


def _is_itself(holder: PortHolder, target: Target) -> bool:
    service = target.compose_service or target.service
    named = own_holder(holder, project=target.project, service=service, names=(target.service, service))
    return named or any(_serves(holder, e) for e in target.registered)


def _serves(holder: PortHolder, entry: ServiceEntry) -> bool:
    """Whether ``holder`` is the registered instance ``entry``: it listens where the entry
    answers, and is the process the entry recorded (what listened there when it was
    registered, or the registering process) or one of its children; with none recorded, a
    process started after the registration (the instance, started once registered). A process
    that was already there, and not recorded, is someone else's."""
    if not holder.blocking or holder.process is None:  # a stopped container: still a warning
        return False
    if not (_wildcard(holder.addresses) or _answers_at(entry.address, holder.addresses)):
        return False
    if entry.pid is None:
        return _started_at(holder.process.pid) >= entry.registered_at - _START_TIME_SLACK
    return entry.pid in _lineage(holder.process.pid)


# A process's start time is known to within a second (the kernel's boot time is whole seconds).
_START_TIME_SLACK = 1.0


def _started_at(pid: int) -> float:
    """When process ``pid`` started (0 when unknown: then it cannot be told to be newer)."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _answers_at(address: str, addresses: Sequence[str]) -> bool:
    """Whether a listener on ``addresses`` is where ``address`` points: the same address, or
    loopback for loopback (an instance registered at 127.0.0.1 that listens on ::1 is still that
    instance, reachable on this host; doctor says IPv4 clients are refused)."""
    return address in addresses or (is_loopback(address) and any(is_loopback(a) for a in addresses))


def _wildcard(addresses: Sequence[str]) -> bool:
    return not addresses or any(a in ("0.0.0.0", "::") for a in addresses)


def _lineage(pid: int) -> set[int]:
    """``pid`` and its ancestors."""
    import psutil  # only for a registration that recorded its process

    try:
        return {pid, *(p.pid for p in psutil.Process(pid).parents())}
    except psutil.Error:
        return {pid}
