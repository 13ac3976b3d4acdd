"""``portctl check``: every allocated or compose-declared port, and what else holds it.

A port held by the service itself - its own compose container, or a process named like the
service - is not a conflict. A stopped container that would take the port back when started is
a warning. Docker or process visibility problems are notices; the check goes on without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from portctl.allocation import PortAllocator
from portctl.errors import ServiceNotFound
from portctl.holders import HostPorts, PortHolder, own_holder

if TYPE_CHECKING:  # compose support (and PyYAML) is loaded only when a compose file is given
    from portctl.compose import ComposeProject

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

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.target.to_dict(),
            "conflicts": [h.to_dict() for h in self.conflicts],
            "warnings": [h.to_dict() for h in self.warnings],
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


def targets(
    allocator: PortAllocator,
    environment: str | None,
    project: ComposeProject | None = None,
    services: Sequence[str] = (),
) -> list[Target]:
    """What to check: the compose file's ports (at their allocated port when allocated), then
    every other allocation of the environment; only ``services`` when given."""
    env = allocator.policy.environment(environment)
    allocations = {a.service: a for a in allocator.allocations(env)}
    found: dict[str, Target] = {}
    if project is not None:
        from portctl.stack import reversed_mappings, stack_ports

        ports = stack_ports(project)
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
            ),
        )
    if services:
        missing = [s for s in services if s not in found]
        if missing:
            raise ServiceNotFound(missing[0], list(found), f"allocated in {env} nor in the compose files")
        return [found[s] for s in services]
    return sorted(found.values(), key=lambda t: (t.port, t.service))


def check_ports(to_check: Sequence[Target], host: HostPorts) -> CheckReport:
    report = CheckReport(notices=host.notices)
    for target in to_check:
        holders = [
            h
            for h in host.holders(target.port, target.protocol, target.address)
            if not own_holder(
                h,
                project=target.project,
                service=target.compose_service or target.service,
                names=(target.service, target.compose_service or target.service),
            )
        ]
        report.findings.append(
            Finding(
                target,
                tuple(h for h in holders if h.blocking),
                tuple(h for h in holders if not h.blocking),
            )
        )
    return report
