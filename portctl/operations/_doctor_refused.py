"""Doctor's "Connection refused" check: a service that should be serving, and why clients
cannot reach it (what ``nc -zv localhost PORT`` and ``ss -ltnp`` would tell).

A service should be serving when the registry has it on this host, or its compose container
is running. Then:

* nothing listens on its port: its process (the registered pid or its children, or a process
  named like the service) listening elsewhere is named with both ports;
* it listens on 127.0.0.1 only while containers are its clients: they reach this host at the
  Docker bridge's gateway (docker0, 172.17.0.1), and a connect there is refused;
* it listens on IPv6 only (``::1``, or ``::`` with IPV6_V6ONLY) and a connect to 127.0.0.1 is
  refused: IPv4 clients cannot reach it.

A container's port is probed through docker-proxy to the container (:func:`tcp_answer`); a
container with nothing listening inside is the ``container port`` check's finding, not this one's.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from portctl.compose.check import Target, check_ports
from portctl.errors import StoreError
from portctl.host.listeners import Listener
from portctl.host.probe import tcp_answer
from portctl.operations._doctoring import DoctorContext, Verdict, VerdictStatus

if TYPE_CHECKING:
    from portctl.host.containers import Container
    from portctl.records import ServiceEntry

__all__ = ["refused_verdicts"]

PROBE_TIMEOUT = 1.0
OK, WARN, FAIL = VerdictStatus.OK, VerdictStatus.WARN, VerdictStatus.FAIL
LOOPBACK_FIX = "bind 0.0.0.0 (listen on every address), or the bridge gateway's address, not 127.0.0.1"
IPV6_FIX = "listen on 0.0.0.0 too, or clear IPV6_V6ONLY on the socket / sudo sysctl -w net.ipv6.bindv6only=0"
# A socket bound to one IPv6 address (::1) takes no IPv4 whatever its options: bind IPv4 too.
IPV6_ADDRESS_FIX = "listen on 127.0.0.1 too (or on 0.0.0.0 and ::, every address)"


@dataclass(frozen=True)
class _Expected:
    """Why a target should be serving: its registrations here, its running containers."""

    entries: tuple[ServiceEntry, ...]
    containers: tuple[Container, ...]

    def __bool__(self) -> bool:
        return bool(self.entries or self.containers)

    def why(self) -> str:
        parts = [f"registered here (instance {e.id}, port {e.port})" for e in self.entries[:1]]
        parts += [f"its container {c.name} is running" for c in self.containers[:1]]
        return " and ".join(parts)


def refused_verdicts(ctx: DoctorContext) -> list[Verdict]:
    out: list[Verdict] = []
    registered = _registered(ctx)
    conflicted = {_key(f.target) for f in check_ports(ctx.targets, ctx.host).findings if f.conflicts}
    for target in ctx.targets:
        if target.protocol != "tcp" or _key(target) in conflicted:
            continue  # UDP has no connect to refuse; a foreign holder is the "in use" finding
        expected = _Expected(_entries_of(registered, target), _containers_of(ctx, target))
        out += _refused(ctx, target, expected)
    return out


def _key(target: Target) -> tuple[str, int, str]:
    return target.service, target.port, target.protocol


def _verdict(target: Target, status: VerdictStatus, finding: str, fix: str = "", **details: Any) -> Verdict:
    return Verdict(
        "refused",
        f"{target.service} {target.port}/{target.protocol}",
        status,
        finding,
        fix,
        target.service,
        target.port,
        target.protocol,
        details,
    )


def _registered(ctx: DoctorContext) -> list[ServiceEntry]:
    try:
        instances = ctx.registry.instances(environment=ctx.environment)
    except StoreError:
        return []  # the store check says why; nothing counts as registered meanwhile
    return [i.entry for i in instances if i.entry.host == ctx.allocator.host]


def _entries_of(entries: Iterable[ServiceEntry], target: Target) -> tuple[ServiceEntry, ...]:
    def names(e: ServiceEntry) -> set[str]:
        color = e.meta.get("color")
        return {e.service, f"{e.service}_{color}"} if color in ("blue", "green") else {e.service}

    return tuple(e for e in entries if target.service in names(e))


def _containers_of(ctx: DoctorContext, target: Target) -> tuple[Container, ...]:
    if target.project is None:
        return ()
    service = target.compose_service or target.service
    return tuple(
        c
        for c in ctx.host.docker.containers
        if c.running and (c.project, c.service) == (target.project, service)
    )


def _refused(ctx: DoctorContext, target: Target, expected: _Expected) -> list[Verdict]:
    if not expected:
        return [
            _verdict(target, OK, "not expected to answer: not registered on this host, no running container")
        ]
    if expected.containers:
        return _container_refused(target, expected)
    listeners = ctx.host.listeners.on_port(target.port, "tcp")
    if not listeners:
        return [_nothing_listens(ctx, target, expected)]
    return _reachable(ctx, target, listeners)


# --- a container ---------------------------------------------------------------------------------


def _container_refused(target: Target, expected: _Expected) -> list[Verdict]:
    container = expected.containers[0]
    if not container.publishes(target.port, "tcp"):
        published = sorted({p.port for p in container.published if p.protocol == "tcp"})
        shown = ", ".join(map(str, published)) or "no port"
        return [
            _verdict(
                target,
                FAIL,
                f"container {container.name} is running but publishes {shown}, not the allocated "
                f"{target.port}: clients of {target.port} are refused",
                _recreate(target),
                published=published,
            )
        ]
    answer = tcp_answer("127.0.0.1", target.port, PROBE_TIMEOUT)
    if answer.ok or "docker-proxy accepted" in answer.detail:
        # Nothing listening inside the container is the container port check's verdict.
        return [_verdict(target, OK, f"{answer.detail} (container {container.name})")]
    return [
        _verdict(
            target,
            FAIL,
            f"container {container.name} publishes {target.port} but {answer.detail}",
            f"docker logs {container.name}; docker port {container.name}",
        )
    ]


def _recreate(target: Target) -> str:
    files = " ".join(f"-f {f}" for f in target.files)
    return (
        f"portctl deploy {files}" if files else "portctl override -f COMPOSE_FILE, then docker compose up -d"
    )


# --- nothing listens on the port -----------------------------------------------------------------


def _nothing_listens(ctx: DoctorContext, target: Target, expected: _Expected) -> Verdict:
    elsewhere = _listening_elsewhere(ctx, target, expected.entries)
    if elsewhere:
        pid, name, ports = elsewhere
        shown = ", ".join(map(str, ports))
        where = f"--service {target.service} --env {target.environment}"
        return _verdict(
            target,
            FAIL,
            f"nothing listens on {target.port}, the allocated port; {name} (pid {pid}) listens on {shown}",
            f"start {name} on {target.port} (portctl env prints it), or allocate what it uses: "
            f"portctl release {where} && portctl allocate {where} --port {ports[0]}",
            pid=pid,
            listening=list(ports),
        )
    return _verdict(
        target,
        FAIL,
        f"nothing listens on {target.port} though {target.service} is {expected.why()}: "
        "connections are refused",
        f"start {target.service} listening on {target.port}, or deregister the instance that "
        f"is gone (portctl deregister {expected.entries[0].id})"
        if expected.entries
        else f"start {target.service} listening on {target.port}",
    )


def _listening_elsewhere(
    ctx: DoctorContext, target: Target, entries: Sequence[ServiceEntry]
) -> tuple[int, str, list[int]] | None:
    """The service's own process (a registered pid or a child of it, else a process named like
    the service) and the TCP ports it listens on, when it listens somewhere."""
    by_inode = {x.inode: x for x in ctx.host.listeners.listeners if x.protocol == "tcp"}
    for pid in _candidate_pids(target, entries):
        ports = sorted({by_inode[i].port for i in _socket_inodes(pid) if i in by_inode})
        if ports:
            return pid, _process_name(pid), ports
    return None


def _candidate_pids(target: Target, entries: Sequence[ServiceEntry]) -> list[int]:
    import psutil

    pids: list[int] = []
    for entry in entries:
        if entry.pid is None:
            continue
        try:
            parent = psutil.Process(entry.pid)
            pids += [parent.pid, *(c.pid for c in parent.children(recursive=True))]
        except psutil.Error:
            continue
    names = {target.service, target.compose_service or target.service}
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in names:
            pids.append(process.pid)
    return list(dict.fromkeys(pids))


def _socket_inodes(pid: int) -> set[int]:
    folder = f"/proc/{pid}/fd"
    found: set[int] = set()
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        try:
            link = os.readlink(os.path.join(folder, name))
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(int(link[8:-1]))
    return found


def _process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
            return f.read().strip() or f"pid {pid}"
    except OSError:
        return f"pid {pid}"


# --- it listens, but where -----------------------------------------------------------------------


def _reachable(ctx: DoctorContext, target: Target, listeners: Sequence[Listener]) -> list[Verdict]:
    addresses = sorted({x.address for x in listeners})
    ipv4 = [a for a in addresses if ":" not in a]
    details = {"addresses": addresses}
    if not ipv4:
        return [_ipv6_only(target, addresses, details)]
    if all(a.startswith("127.") for a in ipv4) and "::" not in addresses:
        return [_loopback_only(ctx, target, addresses, details)]
    local = "127.0.0.1" if "0.0.0.0" in ipv4 or any(a.startswith("127.") for a in ipv4) else ipv4[0]
    answer = tcp_answer(local, target.port, PROBE_TIMEOUT)
    status = OK if answer.ok else FAIL
    fix = "" if answer.ok else f"see what holds it: portctl who {target.port}"
    return [_verdict(target, status, f"listens on {', '.join(addresses)}; {answer.detail}", fix, **details)]


def _ipv6_only(target: Target, addresses: list[str], details: dict[str, Any]) -> Verdict:
    shown = ", ".join(f"[{a}]" for a in addresses)
    if "::" in addresses:
        answer = tcp_answer("127.0.0.1", target.port, PROBE_TIMEOUT)
        if answer.ok:
            return _verdict(target, OK, f"listens on {shown}, dual-stack: {answer.detail}", **details)
        return _verdict(
            target,
            FAIL,
            f"listens on {shown} with IPV6_V6ONLY (no IPv4 listener): {answer.detail}; "
            "IPv4 clients (127.0.0.1, containers) are refused",
            IPV6_FIX,
            **details,
        )
    return _verdict(
        target,
        FAIL,
        f"listens on {shown} only (no IPv4 listener): IPv4 clients (127.0.0.1, containers) are refused",
        IPV6_ADDRESS_FIX,
        **details,
    )


def _loopback_only(
    ctx: DoctorContext, target: Target, addresses: list[str], details: dict[str, Any]
) -> Verdict:
    running = [c for c in ctx.host.docker.containers if c.running]
    if not running and ctx.project is None:
        return _verdict(
            target, OK, f"listens on {', '.join(addresses)} only: reachable from this host", **details
        )
    gateways = bridge_gateways()
    tried = [(g, tcp_answer(g, target.port, PROBE_TIMEOUT)) for g in gateways[:1]]
    refused = "; ".join(a.detail for _, a in tried if not a.ok)
    via = f" ({refused})" if refused else ""
    where = gateways[0] if gateways else "the Docker bridge gateway"
    clients = (
        f"{len(running)} running container(s)"
        if running
        else f"compose project {ctx.project.name}"
        if ctx.project
        else ""
    )
    return _verdict(
        target,
        FAIL if running else WARN,
        f"listens on {', '.join(addresses)} only, while {clients} are its clients: containers reach "
        f"this host at {where}, and are refused{via}",
        LOOPBACK_FIX,
        gateways=gateways,
        **details,
    )


def bridge_gateways() -> list[str]:
    """This host's addresses on Docker bridges (docker0 first, then compose's br-*): where a
    container reaches the host."""
    import psutil

    found = []
    for name, addresses in sorted(psutil.net_if_addrs().items(), key=lambda kv: kv[0] != "docker0"):
        if name == "docker0" or name.startswith("br-"):
            found += [a.address for a in addresses if a.family == socket.AF_INET]
    return found
