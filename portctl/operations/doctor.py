"""``portctl doctor``: the plan's troubleshooting list, run as checks.

Each check takes one :class:`~portctl.operations._doctoring.DoctorContext` (gathered once: the
targets, one scan of the host's listeners and containers) and returns a verdict per finding,
each with the fix to run:

* ``in use`` - "Address already in use": who else holds each port (``lsof -i :PORT``), telling
  the stack's own old containers from foreign ones;
* ``refused`` - "Connection refused": a service that should be serving but nothing listens on
  its port, it listens on another port, on 127.0.0.1 only while containers are its clients, or
  on IPv6 only (:mod:`portctl.operations._doctor_refused`);
* ``bind`` - "Cannot bind to port": a port below ``ip_unprivileged_port_start`` without the
  privilege to bind it, a port in the ephemeral range or reserved;
* ``mapping`` - Docker's ``HOST:CONTAINER``: a reversed mapping, a host port published twice, a
  published port the allocation has moved but nothing moves in the compose files.

Library code: nothing is printed; bad input raises :class:`~portctl.errors.PortctlError`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from portctl import _validate
from portctl.compose.check import Finding, Target, check_ports, targets
from portctl.errors import PortctlError, StoreError
from portctl.host.holders import HostPorts, PortHolder
from portctl.operations._doctor_extra import container_port_verdicts, firewall_verdicts, store_verdicts
from portctl.operations._doctor_refused import refused_verdicts
from portctl.operations._doctoring import DoctorContext, Verdict, VerdictStatus

if TYPE_CHECKING:
    from portctl.compose.project import ComposeProject, PortMapping
    from portctl.compose.stack import StackPort
    from portctl.ports.allocator import Allocation, PortAllocator
    from portctl.registry.entries import Registry

__all__ = ["CHECKS", "Check", "DoctorReport", "Verdict", "VerdictStatus", "doctor"]

Check = Callable[[DoctorContext], list[Verdict]]

OK, WARN, FAIL = VerdictStatus.OK, VerdictStatus.WARN, VerdictStatus.FAIL


@dataclass
class DoctorReport:
    verdicts: list[Verdict] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    asked_ports: tuple[int, ...] = ()

    @property
    def needs_fixing(self) -> bool:
        return any(v.needs_fixing for v in self.verdicts)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(v.status == s for v in self.verdicts) for s in VerdictStatus}

    def to_dict(self) -> dict[str, Any]:
        return {
            "needs_fixing": self.needs_fixing,
            "counts": self.counts(),
            "verdicts": [v.to_dict() for v in self.verdicts],
            "notices": self.notices,
            "targets": [t.to_dict() for t in self.targets],
            "asked_ports": list(self.asked_ports),
        }


# --- gathering -----------------------------------------------------------------------------------


def doctor(
    allocator: PortAllocator,
    registry: Registry,
    *,
    names: Sequence[str] = (),
    project: ComposeProject | None = None,
    environment: str | None = None,
    host: HostPorts | None = None,
    checks: Sequence[Check] | None = None,
) -> DoctorReport:
    """Run ``checks`` (default :data:`CHECKS`) on the ports ``names`` stand for: digits are
    ports (an allocated one stands for its service, another is examined as it is), other names
    are services; none given: every allocated and compose-published port of the environment."""
    env = allocator.policy.environment(environment)
    ports, services = _split_names(names)
    try:
        everything = targets(allocator, env, project, refuse_reversed=False)
    except StoreError as e:
        if services:
            raise  # a service's ports are in the store: nothing to examine without it
        return _without_store(allocator, registry, env, ports, project, host, checks, e)
    chosen = targets(allocator, env, project, services, refuse_reversed=False) if services else []
    asked: list[int] = []
    for port in ports:
        matching = [t for t in everything if t.port == port]
        chosen += matching
        asked += [] if matching else [port]
    if not names:
        chosen = everything
    ctx = DoctorContext(
        allocator,
        registry,
        env,
        _unique(chosen),
        host or HostPorts(),
        project,
        time.time(),
        tuple(dict.fromkeys(asked)),
    )
    report = DoctorReport(targets=ctx.targets, asked_ports=ctx.asked_ports)
    for check in CHECKS if checks is None else checks:
        report.verdicts += check(ctx)
    report.notices = _notices(ctx)
    return report


def _without_store(
    allocator: PortAllocator,
    registry: Registry,
    env: str,
    ports: list[int],
    project: ComposeProject | None,
    host: HostPorts | None,
    checks: Sequence[Check] | None,
    error: StoreError,
) -> DoctorReport:
    """The store does not answer: the PORT arguments are examined on this host all the same,
    and the store check says what is wrong with the store."""
    ctx = DoctorContext(
        allocator, registry, env, [], host or HostPorts(), project, time.time(), tuple(ports), error
    )
    report = DoctorReport(targets=[], asked_ports=ctx.asked_ports)
    for check in CHECKS if checks is None else checks:
        report.verdicts += check(ctx)
    report.notices = _notices(ctx)
    return report


def _split_names(names: Sequence[str]) -> tuple[list[int], list[str]]:
    """PORT arguments (ASCII digits, validated: 0 or 70000 is bad input) and service names."""
    ports = [_validate.port(n, "PORT") for n in names if n.isascii() and n.isdigit()]
    services = [n for n in names if not (n.isascii() and n.isdigit())]
    return ports, list(dict.fromkeys(services))


def _unique(chosen: Iterable[Target]) -> list[Target]:
    return list({(t.service, t.port, t.protocol): t for t in chosen}.values())


def _notices(ctx: DoctorContext) -> list[str]:
    found = list(ctx.host.notices)
    if os.geteuid() != 0:
        found.append(
            "not root: other users' processes and the firewall may not be visible; "
            "sudo portctl doctor sees everything"
        )
    if not ctx.targets and not ctx.asked_ports and ctx.store_error is None:
        found.append(
            f"nothing allocated in {ctx.environment} and no compose file given: "
            "allocate first (portctl allocate --all) or name the compose file (-f)"
        )
    return found


def subject(target: Target) -> str:
    return f"{target.service} {target.port}/{target.protocol}"


def _verdict(
    check: str, target: Target, status: VerdictStatus, finding: str, fix: str = "", **details: Any
) -> Verdict:
    return Verdict(
        check, subject(target), status, finding, fix, target.service, target.port, target.protocol, details
    )


# --- "Address already in use" ---------------------------------------------------------------------


def in_use_verdicts(ctx: DoctorContext) -> list[Verdict]:
    """Who else holds each port: a verdict per holder, with the command that frees it."""
    out: list[Verdict] = []
    for finding in check_ports(ctx.targets, ctx.host).findings:
        out += _in_use_of(finding)
    for port in ctx.asked_ports:
        out += _in_use_of_port(ctx, port)
    return out


def _in_use_of(finding: Finding) -> list[Verdict]:
    target = finding.target
    out = [_held(target, h, FAIL) for h in finding.conflicts]
    out += [_held(target, h, WARN) for h in finding.warnings]
    if not out:
        held = "; ".join(f"held by the service itself: {h.describe()}" for h in finding.own)
        out.append(_verdict("in use", target, OK, held or "free: nothing else holds it"))
    return out


def _held(target: Target, holder: PortHolder, status: VerdictStatus) -> Verdict:
    whose = _whose(holder, target)
    verb = "held by" if holder.blocking else "claimed by"
    fix = _free_step(holder)
    if status == FAIL and target.files:
        fix += f"; or move {target.service}: portctl deploy " + " ".join(f"-f {f}" for f in target.files)
    elif status == FAIL:
        where = f"--service {target.service} --env {target.environment}"
        fix += f"; or move {target.service}: portctl release {where} && portctl allocate {where}"
    return _verdict(
        "in use",
        target,
        status,
        f"{verb} {whose}: {holder.describe()}",
        fix,
        holder=holder.to_dict(),
        owner=_owner_kind(holder, target),
    )


def _free_step(holder: PortHolder) -> str:
    """How to free the port from ``holder``: for a process, ``portctl free``, which stops every
    process sharing its socket (a pre-fork server's workers too) and proves the port free,
    with the plain command beside it."""
    step = holder.next_step()
    if holder.container is None and holder.process is not None and step.startswith(("kill ", "systemctl ")):
        return f"portctl free {holder.port} (it stops every process holding it; or {step})"
    return step


def _owner_kind(holder: PortHolder, target: Target) -> str:
    """``own stack``: a container of the target's own compose project (an old or stopped one,
    or another service of it); ``foreign container``; ``process``."""
    if holder.container is None:
        return "process"
    own = target.project is not None and holder.container.project == target.project
    return "own stack" if own else "foreign container"


def _whose(holder: PortHolder, target: Target) -> str:
    kind = _owner_kind(holder, target)
    c = holder.container
    if kind == "own stack" and c is not None:
        other = (
            f"service {c.service}"
            if c.service != (target.compose_service or target.service)
            else "an old container"
        )
        return f"the stack's own {other} (compose project {c.project})"
    if kind == "foreign container" and c is not None:
        of = f"of compose project {c.project}/{c.service}" if c.project else "not started by compose"
        return f"a foreign container {of}"
    return "another process"


def _in_use_of_port(ctx: DoctorContext, port: int) -> list[Verdict]:
    out = []
    for holder in ctx.host.holders(port):
        status = FAIL if holder.blocking else WARN
        verb = "held by" if holder.blocking else "claimed by"
        out.append(
            _port_verdict(
                "in use",
                port,
                status,
                f"{verb} {holder.describe()} (not allocated to any service in {ctx.environment})",
                _free_step(holder),
                holder=holder.to_dict(),
            )
        )
    return out or [_port_verdict("in use", port, OK, "free: nothing holds it")]


def _port_verdict(
    check: str, port: int, status: VerdictStatus, finding: str, fix: str = "", **details: Any
) -> Verdict:
    return Verdict(check, f"{port}/tcp", status, finding, fix, None, port, "tcp", details)


# --- "Cannot bind to port" ------------------------------------------------------------------------


def bind_verdicts(ctx: DoctorContext) -> list[Verdict]:
    """Ports this user may not bind (below ``ip_unprivileged_port_start``), ports outgoing
    connections may take (the ephemeral range), ports reserved for someone else."""
    out: list[Verdict] = []
    for target in ctx.targets:
        out += _bind_of(ctx, target.port, target.protocol, target, _bound_by_docker(ctx, target))
    for port in ctx.asked_ports:
        out += _bind_of(ctx, port, "tcp", None, False)
    return out


def _bound_by_docker(ctx: DoctorContext, target: Target) -> bool:
    """A port a compose file publishes is bound by the Docker daemon (root), not by this user."""
    return target.source.startswith("compose") or any(
        h.container is not None for h in ctx.host.holders(target.port, target.protocol, target.address)
    )


def _bind_of(
    ctx: DoctorContext, port: int, protocol: str, target: Target | None, docker: bool
) -> list[Verdict]:
    kernel = ctx.allocator.kernel

    def make(status: VerdictStatus, finding: str, fix: str = "") -> Verdict:
        if target is not None:
            return _verdict("bind", target, status, finding, fix)
        return _port_verdict("bind", port, status, finding, fix)

    out = []
    if port < kernel.unprivileged_start:
        out.append(_privileged(make, ctx, port, target, docker))
    if kernel.is_ephemeral(port) and port not in kernel.reserved:
        out.append(
            make(
                WARN,
                f"{port} is in the ephemeral range {kernel.ephemeral_low}-{kernel.ephemeral_high} "
                "(net.ipv4.ip_local_port_range): an outgoing connection may take it while the "
                "service is down",
                f"{_move(target, port)}, or reserve it (the ports reserved now, and it): "
                f"sudo sysctl -w net.ipv4.ip_local_reserved_ports={_port_list(kernel.reserved | {port})}",
            )
        )
    elif port in kernel.reserved:
        out.append(
            make(
                WARN,
                f"{port} is in net.ipv4.ip_local_reserved_ports: kept for a server an administrator named, "
                "and portctl does not choose it",
                f"if it is not kept for this service: {_move(target, port)}",
            )
        )
    return out or [make(OK, f"{port} may be bound: not privileged, not ephemeral, not reserved")]


def _port_list(ports: Iterable[int]) -> str:
    """``ip_local_reserved_ports`` syntax for ``ports``: ``8080,9000-9005``."""
    runs: list[list[int]] = []
    for p in sorted(ports):
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _privileged(
    make: Callable[..., Verdict], ctx: DoctorContext, port: int, target: Target | None, docker: bool
) -> Verdict:
    kernel = ctx.allocator.kernel
    below = f"{port} is below net.ipv4.ip_unprivileged_port_start={kernel.unprivileged_start}"
    if docker:
        return make(OK, f"{below}; Docker publishes it, and its daemon binds as root")
    if kernel.may_bind_privileged:
        return make(
            OK, f"{below}; this user may bind it (root or CAP_NET_BIND_SERVICE): run the service so too"
        )
    if target is not None and any(
        h.blocking for h in ctx.host.holders(target.port, target.protocol, target.address)
    ):
        return make(OK, f"{below}; it is bound already")
    import pwd

    user = pwd.getpwuid(os.geteuid()).pw_name if _known_uid() else str(os.geteuid())
    return make(
        FAIL,
        f"{below}, and user {user} has neither root nor CAP_NET_BIND_SERVICE: the bind fails "
        "(Permission denied)",
        f"{_move(target, port)} (a port >= {kernel.unprivileged_start}); or "
        "sudo setcap cap_net_bind_service=+ep /path/to/the/server; or "
        f"sudo sysctl -w net.ipv4.ip_unprivileged_port_start={port}",
    )


def _known_uid() -> bool:
    import pwd

    try:
        pwd.getpwuid(os.geteuid())
    except KeyError:
        return False
    return True


def _move(target: Target | None, port: int) -> str:
    if target is None:
        return f"use another port than {port}"
    where = f"--service {target.service} --env {target.environment}"
    return f"move it: portctl release {where} && portctl allocate {where}"


# --- Docker's HOST:CONTAINER ----------------------------------------------------------------------


def mapping_verdicts(ctx: DoctorContext) -> list[Verdict]:
    """Mistakes in the compose files' ``ports:`` (only with ``-f``): a reversed
    ``HOST:CONTAINER``, a host port published twice, a published port the allocation moved."""
    if ctx.project is None:
        return []
    from portctl.compose.stack import find_reversed, stack_ports

    ports = stack_ports(ctx.project)
    allocations = {a.service: a for a in ctx.allocator.allocations(ctx.environment)}
    out: list[Verdict] = []
    for found in find_reversed(ports, allocations):
        m = found.port.mapping
        out.append(
            _mapping_verdict(
                found.port,
                FAIL,
                f"{found.field} is {m.source}: {found.expected()}",
                f"write {found.corrected} in {_files(ctx.project)} ({found.field})",
            )
        )
    reversed_names = {r.port.name for r in find_reversed(ports, allocations)}
    out += _published_twice(ctx.project, ports)
    out += _moved(ctx.project, [sp for sp in ports if sp.name not in reversed_names], allocations)
    return out


def _shown(path: str) -> str:
    """A compose file as a person would type it here: relative when it is below this folder."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _files(project: ComposeProject) -> str:
    return ", ".join(_shown(f) for f in project.files)


def _flags(project: ComposeProject) -> str:
    return " ".join(f"-f {_shown(f)}" for f in project.files)


def _deploy(project: ComposeProject) -> str:
    return f"portctl deploy {_flags(project)}"


def _override(project: ComposeProject) -> str:
    return f"portctl override {_flags(project)} > docker-compose.override.yml"


def _mapping_verdict(
    sp: StackPort, status: VerdictStatus, finding: str, fix: str = "", **details: Any
) -> Verdict:
    m = sp.mapping
    return Verdict(
        "mapping",
        f"{sp.name} {sp.declared}/{m.protocol}",
        status,
        finding,
        fix,
        sp.name,
        sp.declared,
        m.protocol,
        {"compose_service": m.service, "source": m.source, "index": m.index, **details},
    )


def _overlap(a: str, b: str) -> bool:
    """Whether two ``host_ip`` values bind a common host address ("" is every address)."""
    if "" in (a, b) or a == b:
        return True
    family = {x: ":" in x for x in (a, b)}
    wild = [x for x in (a, b) if x in ("0.0.0.0", "::")]
    return any(family[w] == family[o] for w in wild for o in (a, b) if o != w)


def _published_twice(project: ComposeProject, ports: Sequence[StackPort]) -> list[Verdict]:
    out: list[Verdict] = []
    for i, sp in enumerate(ports):
        earlier = [
            o
            for o in ports[:i]
            if (o.declared, o.mapping.protocol) == (sp.declared, sp.mapping.protocol)
            and _overlap(o.mapping.host_ip, sp.mapping.host_ip)
        ]
        if not earlier:
            continue
        first = earlier[0]
        out.append(
            _mapping_verdict(
                sp,
                FAIL,
                f"host port {sp.declared}/{sp.mapping.protocol} is published twice: "
                f"by {_where(first.mapping)} and by {_where(sp.mapping)}; the second container "
                "fails to start (address already in use)",
                f"give one of them another host port in {_files(project)}, or {_deploy(project)} "
                "(allocates each its own port)",
                also=first.name,
            )
        )
    return out


def _where(m: PortMapping) -> str:
    return f"{m.service} ({m.source})"


def _moved(
    project: ComposeProject, ports: Sequence[StackPort], allocations: dict[str, Allocation]
) -> list[Verdict]:
    out: list[Verdict] = []
    moved_by_override = _override_ports(project)
    for sp in ports:
        alloc = allocations.get(sp.name)
        m = sp.mapping
        if alloc is None:
            out.append(
                _mapping_verdict(
                    sp,
                    WARN,
                    f"{sp.declared}/{m.protocol} of {m.service} is published but not allocated: "
                    "portctl does not keep other services off it",
                    _deploy(project) + " (allocates it)",
                )
            )
        elif alloc.port == sp.declared:
            out.append(_mapping_verdict(sp, OK, f"published at its allocated port {alloc.port}"))
        elif m.variable:
            out.append(
                _mapping_verdict(
                    sp,
                    WARN,
                    f"{m.service} publishes {sp.declared}, the allocation says {alloc.port}: "
                    f"${{{m.variable}}} moves it when set ({m.variable}={alloc.port})",
                    "portctl env > .env.ports and docker compose --env-file .env.ports up -d, "
                    f"or {_deploy(project)}",
                )
            )
        elif moved_by_override.get((m.service, m.index, m.target)) == alloc.port:
            out.append(
                _mapping_verdict(
                    sp,
                    WARN,
                    f"{m.service} publishes {sp.declared}; docker-compose.override.yml moves it to "
                    f"{alloc.port}, but these -f files leave the override out",
                    f"add -f docker-compose.override.yml, or {_deploy(project)}",
                )
            )
        else:
            out.append(
                _mapping_verdict(
                    sp,
                    FAIL,
                    f"{m.service} publishes {sp.declared} ({m.source}) but the allocation says "
                    f"{alloc.port}, and no override or variable moves it",
                    f"{_override(project)}, or {_deploy(project)}",
                    allocated=alloc.port,
                )
            )
    return out


def _override_ports(project: ComposeProject) -> dict[tuple[str, int, int], int | None]:
    """The ports ``docker-compose.override.yml`` beside the files sets, when the ``-f`` files
    leave it out (Compose reads it by itself only without ``-f``)."""
    path = os.path.join(project.directory, "docker-compose.override.yml")
    if not os.path.isfile(path) or os.path.abspath(path) in project.files:
        return {}
    from portctl.compose.project import load_compose

    try:
        merged = load_compose([*project.files, path])
    except PortctlError:
        return {}  # an override that does not parse moves nothing
    return {(m.service, m.index, m.target): m.published for m in merged.mappings()}


# The checks, in the order their verdicts are shown. Each is ``(ctx) -> list[Verdict]``; add one
# by appending it here.
CHECKS: tuple[Check, ...] = (
    in_use_verdicts,  # "Address already in use"
    refused_verdicts,  # "Connection refused"
    bind_verdicts,  # "Cannot bind to port"
    mapping_verdicts,  # Docker port mapping: HOST:CONTAINER
    container_port_verdicts,  # nothing listens inside a container on a published container port
    firewall_verdicts,  # firewall rules (iptables -L -n | grep PORT)
    store_verdicts,  # the store answers; claims and records agree; zombies; long-critical
)
