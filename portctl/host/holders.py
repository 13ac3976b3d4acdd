"""Who holds a port: processes and containers, in one answer.

:class:`HostPorts` joins the kernel's listener table (:mod:`portctl.host.listeners`) with Docker's view
(:mod:`portctl.host.containers`): a ``docker-proxy`` listener is reported as the container it serves;
a container that publishes a port without a proxy (userland proxy off: iptables rules, and
at most a placeholder listener held by dockerd) is still reported as the container; a stopped
container whose bindings return on restart is a warning.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from portctl.host.containers import Container, DockerScan, scan_containers
from portctl.host.listeners import (
    Listener,
    ListenerScan,
    ProcessInfo,
    blocks,
    hidden_process,
    unattributed_notice,
)

__all__ = ["HostPorts", "PortHolder"]

# Processes that hold a published port for a container: docker-proxy, or dockerd itself, which
# keeps a placeholder listener on the port when the userland proxy is off.
PROXIES = ("docker-proxy", "dockerd")


@dataclass(frozen=True)
class PortHolder:
    kind: str  # "process", "container" or "stopped container"
    port: int
    protocol: str
    addresses: tuple[str, ...] = ()
    process: ProcessInfo | None = None
    user: str | None = None  # the socket's owner when its process could not be read
    container: Container | None = None

    @property
    def blocking(self) -> bool:
        """A stopped container holds nothing now; it is a warning, not a conflict."""
        return self.kind != "stopped container"

    def describe(self) -> str:
        """Who, then where: ``container X (compose P/S, image I) via docker-proxy pid N, on
        0.0.0.0 and ::`` or ``process python3 pid 7 user root (python3 -m http.server), on
        0.0.0.0``."""
        return f"{self._who()}, on {_and(self.addresses) or 'every address'}"

    def _who(self) -> str:
        if self.container is not None:
            c = self.container
            details = [f"compose {c.project}/{c.service}"] if c.project and c.service else []
            details.append(f"image {c.image}")
            if not self.blocking:
                details.append(f"{c.state}: publishes it again when started")
            text = f"container {c.name} ({', '.join(details)})"
            if self.process is not None:
                text += f" via {self.process.name} pid {self.process.pid}"
            return text
        if self.process is not None:
            p = self.process
            return f"process {p.name} pid {p.pid} user {p.user} ({p.cmdline or 'command line not readable'})"
        return f"a socket of user {self.user} ({hidden_process(f'sudo portctl who {self.port}')})"

    def next_step(self) -> str:
        """The command that frees the port from this holder."""
        if self.container is not None:
            c = self.container
            step = f"docker {'stop' if self.blocking else 'rm'} {c.name}"
            return step + (f" (or docker compose -p {c.project} down)" if c.project else "")
        if self.process is not None and self.process.name in PROXIES:
            # Docker's own process, for a container Docker did not name: stop the container.
            return f"docker ps --filter publish={self.port} (then docker stop the container)"
        if self.process is not None and _namespace_init(self.process.pid):
            # Killing PID 1 of a namespace ends everything in it: stop what runs it instead.
            pid = self.process.pid
            return f"stop the container or sandbox whose init is pid {pid} (PID 1 of its own PID namespace)"
        if self.process is not None:
            unit = _systemd_unit(self.process.pid)
            kill = f"kill {self.process.pid}"
            return f"systemctl stop {unit} (or {kill})" if unit else kill
        if os.geteuid() == 0:
            return "stop it from where its process runs (another PID namespace, or hidden by /proc hidepid)"
        return f"find its process as root: sudo portctl who {self.port}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "port": self.port,
            "protocol": self.protocol,
            "addresses": list(self.addresses),
            "description": self.describe(),
            "next_step": self.next_step(),
        }
        if self.process is not None:
            p = self.process
            out["process"] = {"pid": p.pid, "name": p.name, "user": p.user, "cmdline": p.cmdline}
        if self.user is not None:
            out["user"] = self.user
        if self.container is not None:
            c = self.container
            out["container"] = {
                "id": c.id,
                "name": c.name,
                "image": c.image,
                "state": c.state,
                "project": c.project,
                "service": c.service,
            }
        return out


@dataclass
class HostPorts:
    """What holds which port on this host; scans lazily, once."""

    listeners: ListenerScan = field(default_factory=ListenerScan)
    docker: DockerScan = field(default_factory=scan_containers)

    @property
    def notices(self) -> list[str]:
        found = [self.docker.notice] if self.docker.notice else []
        if not self.listeners.complete_attribution:
            found.append(unattributed_notice())
        return found

    def holders(self, port: int, protocol: str = "tcp", address: str = "0.0.0.0") -> list[PortHolder]:
        found = self._from_listeners(self.listeners.blocking(port, protocol, address), port, protocol)
        seen = {h.container.id for h in found if h.container is not None}
        for container in self.docker.publishing(port, protocol):
            if container.id in seen:
                continue
            addresses = _published_addresses(container, port, protocol)
            if not any(blocks(_as_listener(a, port, protocol), address) for a in addresses or ("0.0.0.0",)):
                continue
            kind = "container" if container.running else "stopped container"
            found.append(PortHolder(kind, port, protocol, addresses, container=container))
        return found

    def _from_listeners(self, listeners: list[Listener], port: int, protocol: str) -> list[PortHolder]:
        owners = self.listeners.owners(listeners)
        groups: dict[object, list[Listener]] = {}
        for listener in listeners:
            owner = owners.get(listener.inode)
            groups.setdefault(owner.pid if owner else ("uid", listener.uid), []).append(listener)
        holders = []
        for group in groups.values():
            owner = owners.get(group[0].inode)
            addresses = tuple(dict.fromkeys(listener.address for listener in group))
            if owner is None:
                holders.append(PortHolder("process", port, protocol, addresses, user=_user(group[0].uid)))
                continue
            container = self._proxied(owner, port, protocol)
            kind = "container" if container else "process"
            holders.append(PortHolder(kind, port, protocol, addresses, owner, container=container))
        return _merge_containers(holders)

    def _proxied(self, owner: ProcessInfo, port: int, protocol: str) -> Container | None:
        if owner.name not in PROXIES:
            return self._running_in(owner.pid)
        args = _proxy_args(owner.cmdline)
        container = self.docker.by_address(args.get("-container-ip", ""))
        if container is None:
            running = [c for c in self.docker.publishing(port, protocol) if c.running]
            container = running[0] if running else None
        return container

    def _running_in(self, pid: int) -> Container | None:
        """The container process ``pid`` runs in, by the container id in its cgroup: a container
        on the host's network (``network_mode: host``) listens on the host itself, with no proxy."""
        ids = _cgroup_ids(pid)
        return next((c for c in self.docker.containers if c.id in ids), None) if ids else None


_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def _cgroup_ids(pid: int) -> set[str]:
    """The 64-hex ids in ``/proc/PID/cgroup`` (``0::/docker/<id>``, ``.../docker-<id>.scope``)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            return set(_CONTAINER_ID.findall(f.read()))
    except OSError:
        return set()


def _merge_containers(holders: list[PortHolder]) -> list[PortHolder]:
    """One line per container, even when it has an IPv4 and an IPv6 proxy."""
    merged: dict[str, PortHolder] = {}
    out: list[PortHolder] = []
    for h in holders:
        if h.container is None:
            out.append(h)
            continue
        first = merged.get(h.container.id)
        if first is None:
            merged[h.container.id] = h
            out.append(h)
        else:
            both = PortHolder(
                first.kind,
                first.port,
                first.protocol,
                tuple(dict.fromkeys((*first.addresses, *h.addresses))),
                first.process,
                first.user,
                first.container,
            )
            out[out.index(first)] = both
            merged[h.container.id] = both
    return out


def _proxy_args(cmdline: str) -> dict[str, str]:
    words = shlex.split(cmdline) if cmdline else []
    return {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("-")}


def _published_addresses(container: Container, port: int, protocol: str) -> tuple[str, ...]:
    return tuple(
        dict.fromkeys(
            p.host_ip or "0.0.0.0" for p in container.published if p.port == port and p.protocol == protocol
        )
    )


def _as_listener(address: str, port: int, protocol: str) -> Listener:
    return Listener(protocol, address, port, 6 if ":" in address else 4, 0, 0)


def _and(items: Iterable[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    words = list(items)
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def _namespace_init(pid: int) -> bool:
    """Whether ``pid`` is PID 1 of a PID namespace of its own (``NSpid: 4242 1``)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) > 1 and ids[-1] == "1"
    except OSError:
        pass
    return False


def _systemd_unit(pid: int) -> str | None:
    """The system service a process runs in (``postgresql@15-main.service``), from its cgroup."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.rpartition(":")[2].strip("/").split("/")
        if len(parts) == 2 and parts[0] == "system.slice" and parts[1].endswith(".service"):
            return parts[1]
    return None


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def own_holder(holder: PortHolder, *, project: str | None, service: str | None, names: Iterable[str]) -> bool:
    """Whether ``holder`` is the service itself: its own compose container (same project and
    service: a container of another project is a conflict even with the same service name), or
    a process named like the service (postgres holding postgres's port)."""
    if holder.container is not None:
        c = holder.container
        return project is not None and (c.project, c.service) == (project, service)
    return holder.process is not None and holder.process.name in set(names)
