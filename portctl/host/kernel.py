"""What the kernel says about ports: the ephemeral range, reserved ports, privilege, and a
bind test that proves a port free right now."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["BindResult", "KernelPorts", "bind_test", "kernel_ports"]

_PROC = "/proc/sys/net/ipv4"
_CAP_NET_BIND_SERVICE = 10


@dataclass(frozen=True)
class KernelPorts:
    ephemeral_low: int
    ephemeral_high: int
    reserved: frozenset[int]
    unprivileged_start: int  # ports below this need root or CAP_NET_BIND_SERVICE
    may_bind_privileged: bool

    def is_ephemeral(self, port: int) -> bool:
        return self.ephemeral_low <= port <= self.ephemeral_high

    def needs_privilege(self, port: int) -> bool:
        return port < self.unprivileged_start and not self.may_bind_privileged

    def dynamic_pick_allowed(self, port: int) -> bool:
        """A port portctl may choose by itself: not ephemeral, not reserved, bindable."""
        return not (self.is_ephemeral(port) or port in self.reserved or self.needs_privilege(port))


def _read(name: str) -> str | None:
    try:
        with open(os.path.join(_PROC, name)) as f:
            return f.read().strip()
    except OSError:
        return None


def parse_port_list(text: str) -> frozenset[int]:
    """Parse ``ip_local_reserved_ports`` syntax: ``8080,9000-9005``."""
    ports: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return frozenset(ports)


def _has_bind_capability() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_BIND_SERVICE & 1)
    except OSError:
        pass
    return False


@lru_cache(maxsize=1)
def kernel_ports() -> KernelPorts:
    """Read once per process; these sysctls change rarely and only by an administrator."""
    low, high = 32768, 60999  # Linux's default when /proc is not readable
    rng = _read("ip_local_port_range")
    if rng:
        low, high = (int(x) for x in rng.split()[:2])
    reserved = parse_port_list(_read("ip_local_reserved_ports") or "")
    start = int(_read("ip_unprivileged_port_start") or 1024)
    return KernelPorts(low, high, reserved, start, _has_bind_capability())


@dataclass(frozen=True)
class BindResult:
    free: bool
    reason: str = ""  # why not, e.g. "Address already in use on [::]"


@lru_cache(maxsize=1)
def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def bind_test(port: int, protocol: str = "tcp", address: str = "0.0.0.0") -> BindResult:
    """Try to bind ``port`` the way a server would, then let it go.

    TCP sockets set SO_REUSEADDR and listen, as servers do, so a port with only TIME_WAIT
    connections counts as free while any listener - on any address, when ``address`` is the
    wildcard - counts as busy. The wildcard is tried on IPv4 and IPv6 (v6-only, so a dual
    stack listener is seen on either family).
    """
    for family, host in _targets(address):
        reason = _try_bind(family, host, port, protocol)
        if reason:
            return BindResult(False, reason)
    return BindResult(True)


def _targets(address: str) -> list[tuple[socket.AddressFamily, str]]:
    if address in ("0.0.0.0", "::", "*", ""):
        targets = [(socket.AF_INET, "0.0.0.0")]
        if _ipv6_available():
            targets.append((socket.AF_INET6, "::"))
        return targets
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return [(family, address)]


def _try_bind(family: socket.AddressFamily, host: str, port: int, protocol: str) -> str:
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1)
    except OSError as e:
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        what = "already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e)).lower()
        return f"{shown}:{port}/{protocol} {what}"
    finally:
        sock.close()
    return ""
