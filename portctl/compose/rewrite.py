"""After a port moved: rewrite a stack's files, and start the moved services again.

``portctl deploy`` writes ``.env.ports`` and the override before it starts a stack; conflict
resolution (:mod:`portctl.operations.resolve`) writes the same files, with the same function
(:func:`portctl.compose.deploy.write_stack_files`), after it moved an allocation, so the next
``docker compose up`` - by a person or by ``--redeploy`` - starts the service on its new port.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from portctl.compose.deploy import (
    Probe,
    StackFiles,
    _up,
    compose_command,
    compose_environment,
    find_compose,
    probe_ports,
    require_compose,
    write_stack_files,
)
from portctl.compose.project import ComposeProject
from portctl.compose.stack import stack_ports
from portctl.host.containers import require_docker
from portctl.ports.allocator import Allocation, PortAllocator

__all__ = ["Restarted", "restart_services", "stack_files"]


def _allocations(
    allocator: PortAllocator, project: ComposeProject, environment: str
) -> dict[str, Allocation]:
    found = {sp.name: allocator.get(sp.name, environment) for sp in stack_ports(project)}
    return {name: alloc for name, alloc in found.items() if alloc is not None}


def stack_files(
    allocator: PortAllocator, project: ComposeProject, environment: str, override_file: str | None = None
) -> StackFiles:
    """Write the project's ``.env.ports`` and override from its allocations (when they changed)."""
    allocations = _allocations(allocator, project, environment)
    return write_stack_files(
        project, allocations, environment, allocator.host, find_compose(), override_file=override_file
    )


@dataclass(frozen=True)
class Restarted:
    command: str
    output: str
    probes: list[Probe]


def restart_services(
    allocator: PortAllocator,
    project: ComposeProject,
    environment: str,
    services: Sequence[str],
    override_file: str | None = None,
    wait: float = 60.0,
) -> Restarted:
    """``docker compose up -d`` for the compose services of the allocations ``services``, then
    probe their ports until they answer or ``wait`` seconds have passed."""
    tool = require_compose()
    require_docker()
    allocations = _allocations(allocator, project, environment)  # read once: files and probes
    files = write_stack_files(
        project, allocations, environment, allocator.host, tool, override_file=override_file
    )
    ports = [sp for sp in stack_ports(project) if sp.name in services]
    variables = compose_environment(allocations)
    argv = compose_command(tool, project, files.compose_files(project), files.env_file, variables)
    argv += sorted({sp.mapping.service for sp in ports})
    output = _up(argv, variables, lambda step: None)
    return Restarted(shlex.join(argv), output, probe_ports(ports, allocations, wait))
