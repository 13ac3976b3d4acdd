"""Does a TCP service answer? One probe for health checks, ``verify``, blue-green and deploy.

A completed connect is not enough when the port is published by Docker's userland proxy:
``docker-proxy`` accepts every connection itself and only then dials the container, so a
container with nothing listening on its port still "accepts" (the client then reads a reset or
an empty answer). When a local port is held by a docker-proxy, the probe therefore also
connects to the container's address and port, as the proxy does, from the host's network
namespace: that connect is the proxy's own, so its result is the service's.

With the userland proxy off, Docker forwards published ports with iptables DNAT (loopback
included); the connect then reaches the container itself, and a container with nothing
listening refuses it, so the plain connect tells the truth. The docker-proxy processes are
found by their command lines, which every user may read: no root is needed, except where /proc
hides other users' processes (``hidepid``), where the probe is the plain connect.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from portctl.host.containers import ProxyRoute, container_at, proxy_routes
from portctl.host.listeners import Listener, ListenerScan, blocks

__all__ = ["Answer", "is_local_address", "is_loopback", "reason", "tcp_answer"]


@dataclass(frozen=True)
class Answer:
    ok: bool
    detail: str  # one line: "tcp connect to 127.0.0.1:5432 ok", or why not


def tcp_answer(address: str, port: int, timeout: float) -> Answer:
    """Whether ``address``:``port`` answers a TCP connect, through any docker-proxy to the
    container behind it."""
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            peer = str(sock.getpeername()[0])
    except OSError as e:
        return Answer(False, f"tcp connect to {target} failed: {reason(e, timeout)}")
    route = _proxy_for(peer, port)
    if route is _HIDDEN:
        return Answer(
            False,
            f"tcp connect to {target} accepted by a root-owned socket whose process /proc hides "
            "(hidepid): cannot tell whether it is docker-proxy with nothing behind it; run the "
            "check as root",
        )
    if route is None:
        return Answer(True, f"tcp connect to {target} ok")
    return _behind_proxy(target, route, timeout)


_HIDDEN = ProxyRoute(0, "tcp", "", 0, "", 0)  # a root listener whose process this user cannot see


def _processes_hidden() -> bool:
    """Whether /proc hides other users' processes from this one (``hidepid``)."""
    return os.geteuid() != 0 and not os.path.exists("/proc/1")


def _proxy_for(peer: str, port: int) -> ProxyRoute | None:
    """The docker-proxy that accepted a connection to the local ``peer``:``port``, if any."""
    if not is_local_address(peer) or not _root_listens(port, peer):
        return None
    family = 6 if ":" in peer else 4
    routes = [r for r in proxy_routes(port) if blocks(_listener(r), peer)]
    routes.sort(key=lambda r: _listener(r).family != family)  # the same family accepts first
    if not routes and _processes_hidden():
        return _HIDDEN
    return routes[0] if routes else None


def _root_listens(port: int, peer: str) -> bool:
    """Whether a root-owned socket listens for ``peer``:``port``, as docker-proxy's does: one
    netlink dump, far cheaper than reading every process's command line."""
    return any(x.uid == 0 and blocks(x, peer) for x in ListenerScan(("tcp",)).on_port(port))


def _listener(route: ProxyRoute) -> Listener:
    address = route.host_ip or "0.0.0.0"
    return Listener("tcp", address, route.host_port, 6 if ":" in address else 4, 0, 0)


def _behind_proxy(target: str, route: ProxyRoute, timeout: float) -> Answer:
    inner = f"[{route.container_ip}]" if ":" in route.container_ip else route.container_ip
    inner += f":{route.container_port}"
    try:
        socket.create_connection((route.container_ip, route.container_port), timeout=timeout).close()
    except OSError as e:
        return Answer(False, f"tcp connect to {target}: {_no_service(route, e, timeout)}")
    return Answer(True, f"tcp connect to {target} ok, through docker-proxy to {inner}")


def _no_service(route: ProxyRoute, error: OSError, timeout: float) -> str:
    found = container_at(route.container_ip)
    who = f"container {found.name}" if found else f"the container at {route.container_ip}"
    if isinstance(error, ConnectionRefusedError):
        return f"docker-proxy accepted but {who} has nothing listening on {route.container_port}"
    why = reason(error, timeout)
    return f"docker-proxy accepted but {who} does not answer on {route.container_port}: {why}"


def is_loopback(address: str) -> bool:
    """``localhost``, ``127.x.x.x``, ``::1`` or ``::ffff:127.x.x.x`` (brackets allowed)."""
    import ipaddress

    if address == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def is_local_address(address: str) -> bool:
    """Loopback, a wildcard, or one of this host's own addresses."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(address.removeprefix("[").removesuffix("]"))
    except ValueError:
        return address in ("localhost", socket.gethostname())
    if ip.is_loopback or ip.is_unspecified:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return is_local_address(str(ip.ipv4_mapped))
    try:
        with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((str(ip), 0))  # binding succeeds only for an address this host owns
    except OSError:
        return False
    return True


def reason(error: BaseException, timeout: float) -> str:
    """A short lowercase reason: ``connection refused``, ``timed out after 2s``..."""
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host ({error.strerror})"
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    text = text or type(error).__name__
    return text[:1].lower() + text[1:]
