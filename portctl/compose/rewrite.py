"""After a port moved: rewrite a stack's files, and start the moved services again.

``portctl deploy`` writes ``.env.ports`` and the override before it starts a stack; conflict
resolution (:mod:`portctl.operations.resolve`) writes the same files, the same way, after it
moved an allocation, so the next ``docker compose up`` - by a person or by ``--redeploy`` -
starts the service on its new port.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from portctl.compose.deploy import (
    OVERRIDE_MARK,
    OVERRIDE_NAME,
    Probe,
    _up,
    compose_command,
    compose_environment,
    find_compose,
    plan_override,
    probe_ports,
    require_compose,
    write_if_changed,
)
from portctl.compose.project import ComposeProject
from portctl.compose.stack import stack_ports
from portctl.host.containers import require_docker
from portctl.ports.allocator import Allocation, PortAllocator
from portctl.ports.documents import render_env

__all__ = ["Restarted", "StackFiles", "restart_services", "stack_files"]


@dataclass(frozen=True)
class StackFiles:
    env_file: str
    override_file: str | None  # None when no port moves off the base file's
    written: list[str] = field(default_factory=list)  # those that changed now
    allocations: dict[str, Allocation] = field(default_factory=dict)

    def compose_files(self, project: ComposeProject) -> list[str]:
        return [*project.files, *([self.override_file] if self.override_file else [])]


def stack_files(
    allocator: PortAllocator, project: ComposeProject, environment: str, override_file: str | None = None
) -> StackFiles:
    """Write the project's ``.env.ports`` and override from its allocations (when they changed)."""
    allocations = {
        sp.name: alloc
        for sp in stack_ports(project)
        if (alloc := allocator.get(sp.name, environment)) is not None
    }
    env_file = os.path.join(project.directory, ".env.ports")
    written = []
    if write_if_changed(env_file, render_env(list(allocations.values()), environment, allocator.host)):
        written.append(env_file)
    plan = plan_override(project, allocations, find_compose())
    override = None
    if plan.needed:
        override = override_file or os.path.join(project.directory, OVERRIDE_NAME)
        if write_if_changed(override, plan.text, owned_mark=OVERRIDE_MARK):
            written.append(override)
    return StackFiles(env_file, override, written, allocations)


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
    files = stack_files(allocator, project, environment, override_file)
    ports = [sp for sp in stack_ports(project) if sp.name in services]
    variables = compose_environment(files.allocations)
    argv = compose_command(tool, project, files.compose_files(project), files.env_file, variables)
    argv += sorted({sp.mapping.service for sp in ports})
    output = _up(argv, variables, lambda step: None)
    return Restarted(shlex.join(argv), output, probe_ports(ports, files.allocations, wait))
