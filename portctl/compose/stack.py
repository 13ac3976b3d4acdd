"""A compose stack's published ports, joined with the allocations that move them.

Each published port of a compose file becomes one allocation, named:

* after the ``${X_PORT}`` variable it is written with (``"${NGINX_HTTPS_PORT:-443}:443"`` ->
  ``nginx_https``), so ``portctl env`` prints exactly the variables the base file reads;
* otherwise after its compose service (``db`` -> ``db``; a second port of the same service
  ``db_<container port>``).

The port declared in the file is tried first, then the policy's ports for that name, then the
type's range; the type is the policy's for a known name, else the range the declared port falls
in. A port that a foreign container or process holds is avoided, and an allocation whose port
was taken since is moved off it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from portctl import _validate
from portctl.compose.project import ComposeProject, PortMapping
from portctl.config.policy import Policy
from portctl.errors import InvalidInput
from portctl.host.holders import HostPorts, PortHolder, own_holder
from portctl.ports.allocator import Allocation, AllocationResult, PortAllocator

__all__ = [
    "ReversedMapping",
    "StackPort",
    "allocate_stack",
    "allocate_stack_port",
    "find_reversed",
    "override_ports",
    "reversed_mappings",
    "stack_ports",
    "unallocated_ports",
]


@dataclass(frozen=True)
class StackPort:
    mapping: PortMapping
    name: str  # the allocation's service name
    declared: int  # the host port the compose file publishes


def _normal(name: str) -> str:
    text = re.sub(r"[^a-z0-9_-]", "_", name.lower()).strip("_-")[:63].rstrip("_-")
    if not text or not text[0].isalpha():
        text = ("svc_" + text)[:63].rstrip("_-")
    return text


def _name(mapping: PortMapping, first: bool) -> str:
    if mapping.variable and mapping.variable.endswith("_PORT"):
        candidate = mapping.variable.removesuffix("_PORT").lower()
        try:
            return _validate.service_name(candidate)
        except InvalidInput:
            pass
    base = _normal(mapping.service)
    return base if first else _normal(f"{base}_{mapping.target}")


def stack_ports(project: ComposeProject) -> list[StackPort]:
    """Every published port of the project, named; a name given twice is an error."""
    out: list[StackPort] = []
    names: dict[str, PortMapping] = {}
    for service, mappings in project.services.items():
        published = [(m, m.published) for m in mappings if m.published is not None]
        for i, (mapping, declared) in enumerate(published):
            name = _name(mapping, i == 0)
            if name in names:
                other = names[name]
                raise InvalidInput(
                    f"services.{service}.ports[{mapping.index}]",
                    mapping.source,
                    f"a port with its own name; {other.source} of service {other.service} is "
                    f"also named {name!r} (use distinct ${{NAME_PORT}} variables)",
                )
            names[name] = mapping
            out.append(StackPort(mapping, name, declared))
    return out


def _type_for(policy: Policy, name: str, port: int) -> str:
    known = policy.services.get(name)
    if known is not None:
        return known.type
    for stype in policy.types.values():
        if port in stype and stype.name != "dynamic":
            return stype.name
    return "dynamic"


def foreign_holders(host: HostPorts, sp: StackPort, project: ComposeProject, port: int) -> list[PortHolder]:
    address = sp.mapping.host_ip or "0.0.0.0"
    return [
        h
        for h in host.holders(port, sp.mapping.protocol, address)
        if not own_holder(
            h, project=project.name, service=sp.mapping.service, names=(sp.name, sp.mapping.service)
        )
    ]


def _held_only_by_itself(host: HostPorts, sp: StackPort, project: ComposeProject, port: int) -> bool:
    """Whether ``port`` is held, and only by the stack's own container of ``sp`` (the stack
    is running): then it is this service's port, not a conflict."""
    address = sp.mapping.host_ip or "0.0.0.0"
    blocking = [h for h in host.holders(port, sp.mapping.protocol, address) if h.blocking]
    # Only the stack's own container counts: a host process named like the service is not it.
    own = (project.name, sp.mapping.service)
    return bool(blocking) and all(
        h.container is not None and (h.container.project, h.container.service) == own for h in blocking
    )


def allocate_stack(
    allocator: PortAllocator, project: ComposeProject, environment: str | None, host: HostPorts
) -> list[tuple[StackPort, AllocationResult]]:
    env = allocator.policy.environment(environment)
    results = []
    for sp in stack_ports(project):
        current = allocator.get(sp.name, env)
        avoid = set()
        if current and any(h.blocking for h in foreign_holders(host, sp, project, current.port)):
            avoid.add(current.port)
        results.append((sp, allocate_stack_port(allocator, project, sp, env, host, avoid)))
    return results


def allocate_stack_port(
    allocator: PortAllocator,
    project: ComposeProject,
    sp: StackPort,
    environment: str,
    host: HostPorts,
    avoid: Collection[int] = (),
) -> AllocationResult:
    """One published port's allocation, tagged with its compose ``project/service``; a port
    in ``avoid`` is never chosen, and an allocation on one is moved off it."""
    return allocator.allocate(
        sp.name,
        type=_type_for(allocator.policy, sp.name, sp.declared),
        environment=environment,
        protocol=sp.mapping.protocol,
        prefer=[sp.declared],
        avoid=avoid,
        compose=f"{project.name}/{sp.mapping.service}",
        own=[p for p in (sp.declared,) if _held_only_by_itself(host, sp, project, p)],
    )


@dataclass(frozen=True)
class ReversedMapping:
    """``CONTAINER:HOST`` written where ``HOST:CONTAINER`` belongs: the allocated host port
    given as the container port, with another port published."""

    port: StackPort
    allocated: int  # the allocation's host port, written as the container port

    @property
    def field(self) -> str:
        return f"services.{self.port.mapping.service}.ports[{self.port.mapping.index}]"

    @property
    def corrected(self) -> str:
        """The entry as it should read: ``"5433:5432"``."""
        return f'"{self.allocated}:{self.port.mapping.published}"'

    def expected(self) -> str:
        m = self.port.mapping
        return (
            f"HOST:CONTAINER: {self.allocated} is {self.port.name}'s host port, so write "
            f"{self.corrected} if the container listens on {m.published}"
        )

    def error(self) -> InvalidInput:
        return InvalidInput(self.field, self.port.mapping.source, self.expected())


def find_reversed(ports: Sequence[StackPort], allocations: Mapping[str, Allocation]) -> list[ReversedMapping]:
    """Every mapping written ``CONTAINER:HOST`` (see :class:`ReversedMapping`), to report them all."""
    found = []
    for sp in ports:
        alloc = allocations.get(sp.name)
        m = sp.mapping
        if alloc and m.target == alloc.port and m.published not in (None, alloc.port):
            found.append(ReversedMapping(sp, alloc.port))
    return found


def reversed_mappings(ports: Sequence[StackPort], allocations: Mapping[str, Allocation]) -> None:
    """Refuse ``CONTAINER:HOST`` written where ``HOST:CONTAINER`` belongs: the allocated host
    port given as the container port, with another port published."""
    found = find_reversed(ports, allocations)
    if found:
        raise found[0].error()


def override_ports(
    project: ComposeProject, allocations: Mapping[str, Allocation]
) -> dict[str, list[PortMapping]]:
    """For each service with a moved port, its whole new ``ports:`` list. A port without an
    allocation stays as declared (see :func:`unallocated_ports`)."""
    named = _by_mapping(project)
    out: dict[str, list[PortMapping]] = {}
    for service, mappings in project.services.items():
        new, moved = [], False
        for m in mappings:
            sp = named.get((service, m.index, m.target))
            alloc = allocations.get(sp.name) if sp is not None else None
            if alloc is None or m.published is None:
                new.append(m)
                continue
            moved |= alloc.port != m.published
            new.append(replace(m, published=alloc.port))
        if moved:
            out[service] = new
    return out


def unallocated_ports(project: ComposeProject, allocations: Mapping[str, Allocation]) -> list[StackPort]:
    """The project's published ports that have no allocation: an override leaves them as declared."""
    return [sp for sp in stack_ports(project) if sp.name not in allocations]


def _by_mapping(project: ComposeProject) -> dict[tuple[str, int, int], StackPort]:
    return {(sp.mapping.service, sp.mapping.index, sp.mapping.target): sp for sp in stack_ports(project)}
