"""Containers and the ports they publish, read from the Docker Engine API.

portctl talks to the Engine API directly over its socket (plain HTTP/1.0 on the Unix socket;
``http.client`` for TCP and TLS) instead of importing the Docker SDK: the SDK's import alone
(requests, urllib3) costs more start-up time than a whole ``portctl check`` may take.
``DOCKER_HOST`` is honoured (``unix://``, ``tcp://``; TLS with ``DOCKER_TLS_VERIFY`` and
``DOCKER_CERT_PATH`` as the Docker CLI does).

Running containers report what they publish now. A stopped container reports nothing in the
list, but its port bindings come back when it restarts: those are read from the container's
``HostConfig.PortBindings`` and reported as warnings.

Docker being absent, stopped or refusing permission is not an error for a scan: the result
carries a one-line ``notice`` and no containers. :func:`require_docker` turns the same
conditions into :class:`~portctl.errors.DockerUnavailable` for commands that need Docker.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from portctl.errors import DockerUnavailable

if TYPE_CHECKING:
    import ssl

__all__ = [
    "Container",
    "DockerScan",
    "ProxyRoute",
    "PublishedPort",
    "StopResult",
    "container_at",
    "docker_endpoint",
    "proxy_routes",
    "publisher",
    "scan_containers",
    "stop_container",
]

DEFAULT_HOST = "unix:///var/run/docker.sock"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
API_TIMEOUT = 5.0


@dataclass(frozen=True)
class PublishedPort:
    host_ip: str  # "0.0.0.0", "::", "127.0.0.1"; "" when Docker binds every address
    port: int
    protocol: str
    target: int


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str
    state: str  # running, exited, created, paused, restarting, dead
    project: str | None
    service: str | None
    published: tuple[PublishedPort, ...]  # running: published now; otherwise: on restart
    addresses: tuple[str, ...] = ()  # its IPs on Docker networks

    @property
    def running(self) -> bool:
        return self.state in ("running", "paused", "restarting")

    def publishes(self, port: int, protocol: str) -> bool:
        return any(p.port == port and p.protocol == protocol for p in self.published)

    def describe(self) -> str:
        parts = [f"container {self.name}"]
        if self.project and self.service:
            parts.append(f"compose {self.project}/{self.service}")
        parts.append(f"image {self.image}")
        parts.append(f"id {self.id[:12]}")
        return ", ".join(parts)


@dataclass(frozen=True)
class DockerScan:
    endpoint: str
    containers: tuple[Container, ...] = ()
    notice: str | None = None  # why containers could not be read, in one line

    def publishing(self, port: int, protocol: str = "tcp") -> list[Container]:
        return [c for c in self.containers if c.publishes(port, protocol)]

    def by_address(self, address: str) -> Container | None:
        return next((c for c in self.containers if address in c.addresses), None)


def docker_endpoint() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def _unix_get(path: str, target: str, timeout: float, method: str = "GET") -> tuple[int, bytes]:
    """A request over the daemon's Unix socket with a plain HTTP/1.0 exchange: the daemon
    answers and closes, so no HTTP library (and its import time) is needed for the common case.
    A POST sends an empty body (``Content-Length: 0``), all the actions used here need."""
    body_header = "Content-Length: 0\r\n" if method != "GET" else ""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(f"{method} {target} HTTP/1.0\r\nHost: docker\r\n{body_header}\r\n".encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP answer: {head[:40]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(status_line[1]), body


def _dechunk(body: bytes) -> bytes:
    out, rest = [], body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


def _tcp_get(endpoint: str, target: str, timeout: float, method: str = "GET") -> tuple[int, bytes]:
    import http.client

    parts = urlsplit(endpoint)
    host, port = parts.hostname or "127.0.0.1", parts.port
    conn: http.client.HTTPConnection
    if os.environ.get("DOCKER_TLS_VERIFY") or parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, port or 2376, timeout=timeout, context=_tls())
    else:
        conn = http.client.HTTPConnection(host, port or 2375, timeout=timeout)
    try:
        conn.request(method, target, body=b"" if method != "GET" else None, headers={"Host": "docker"})
        response = conn.getresponse()
        return response.status, response.read()
    except http.client.HTTPException as e:
        raise ValueError(str(e)) from e
    finally:
        conn.close()


def _tls() -> ssl.SSLContext:
    import ssl

    folder = os.environ.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")
    context = ssl.create_default_context(cafile=os.path.join(folder, "ca.pem"))
    context.load_cert_chain(os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem"))
    return context


def _request(endpoint: str, method: str, target: str, timeout: float) -> tuple[int, bytes]:
    """One Engine API exchange on ``endpoint``; its status and body. Unreachable, refusing or
    garbled daemons become DockerUnavailable; the status is the caller's to judge."""
    scheme = urlsplit(endpoint).scheme
    if scheme not in ("unix", "tcp", "http", "https"):
        raise DockerUnavailable(endpoint, "DOCKER_HOST must be unix:///path or tcp://host:port")
    try:
        if scheme == "unix":
            return _unix_get(urlsplit(endpoint).path, target, timeout, method)
        return _tcp_get(endpoint, target, timeout, method)
    except OSError as e:
        raise DockerUnavailable(endpoint, _why(endpoint, e)) from e
    except ValueError as e:
        raise DockerUnavailable(endpoint, f"bad answer from the Docker API ({e})") from e


def _get(endpoint: str, target: str, timeout: float) -> Any:
    status, body = _request(endpoint, "GET", target, timeout)
    if status >= 400:
        raise DockerUnavailable(endpoint, f"Docker API answered {status} to GET {target}")
    return json.loads(body)


def _post(endpoint: str, target: str, timeout: float) -> int:
    """POST an action with no body (stop, start, ...); its status, which is below 400, or 304
    when there was nothing to do."""
    status, body = _request(endpoint, "POST", target, timeout)
    if status >= 400:
        raise DockerUnavailable(
            endpoint, f"Docker API answered {status} to POST {target}{_api_message(body)}"
        )
    return status


def _api_message(body: bytes) -> str:
    """``: <the daemon's message>`` from an error answer's JSON, or nothing."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        return ""
    return f": {message}" if message else ""


def _why(endpoint: str, e: OSError) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied on the Docker socket: run as root or add your user to the 'docker' group"
    if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return "Docker is not running there (no daemon answered)"
    if isinstance(e, TimeoutError):
        return "the Docker API did not answer in time"
    return e.strerror or str(e)


def require_docker(endpoint: str | None = None, timeout: float = API_TIMEOUT) -> str:
    """The endpoint, once the daemon answers; DockerUnavailable naming the fix otherwise."""
    endpoint = endpoint or docker_endpoint()
    _get(endpoint, "/version", timeout)
    return endpoint


@dataclass(frozen=True)
class StopResult:
    """How a stopped container ended: Docker sends its stop signal (SIGTERM unless the image
    says otherwise), waits the grace period, then sends SIGKILL. Exit code 137 means the kill."""

    was_running: bool  # False: Docker answered 304, it had stopped already
    exit_code: int | None
    stop_signal: str = "SIGTERM"  # the image's StopSignal, which Docker sends first

    @property
    def killed(self) -> bool:
        return self.exit_code == 137


def stop_container(
    container_id: str, grace: float, endpoint: str | None = None, timeout: float = API_TIMEOUT
) -> StopResult:
    """Stop a container through the Engine API (``POST /containers/{id}/stop?t=GRACE``), the
    way ``docker stop -t GRACE`` does, and read how it ended. The request waits for the stop,
    so its timeout is the grace period plus ``timeout``."""
    import math

    endpoint = endpoint or docker_endpoint()
    seconds = max(0, math.ceil(grace))
    status = _post(endpoint, f"/containers/{quote(container_id)}/stop?t={seconds}", seconds + timeout)
    inspect = _get(endpoint, f"/containers/{quote(container_id)}/json", timeout)
    code = (inspect.get("State") or {}).get("ExitCode")
    stop_signal = (inspect.get("Config") or {}).get("StopSignal") or "SIGTERM"
    return StopResult(status != 304, code if isinstance(code, int) else None, str(stop_signal))


def scan_containers(endpoint: str | None = None, timeout: float = API_TIMEOUT) -> DockerScan:
    """Every container with the ports it publishes (or will publish when restarted)."""
    endpoint = endpoint or docker_endpoint()
    try:
        listed = _get(endpoint, "/containers/json?all=1", timeout)
        containers = tuple(_container(endpoint, raw, timeout) for raw in listed)
    except DockerUnavailable as e:
        return DockerScan(endpoint, (), f"containers not scanned: {e.message}")
    return DockerScan(endpoint, containers)


def _container(endpoint: str, raw: dict[str, Any], timeout: float) -> Container:
    labels = raw.get("Labels") or {}
    state = str(raw.get("State", ""))
    names = raw.get("Names") or [raw["Id"][:12]]
    if state in ("running", "paused", "restarting"):
        published = _published_now(raw.get("Ports") or [])
    else:
        inspect = _get(endpoint, f"/containers/{quote(raw['Id'])}/json", timeout)
        published = _bindings((inspect.get("HostConfig") or {}).get("PortBindings") or {})
    networks = ((raw.get("NetworkSettings") or {}).get("Networks") or {}).values()
    addresses = tuple(n["IPAddress"] for n in networks if n.get("IPAddress"))
    return Container(
        id=raw["Id"],
        name=names[0].lstrip("/"),
        image=str(raw.get("Image", "")),
        state=state,
        project=labels.get(PROJECT_LABEL),
        service=labels.get(SERVICE_LABEL),
        published=published,
        addresses=addresses,
    )


def _published_now(ports: Iterable[dict[str, Any]]) -> tuple[PublishedPort, ...]:
    found = {
        PublishedPort(
            str(p.get("IP", "")), int(p["PublicPort"]), str(p.get("Type", "tcp")), int(p["PrivatePort"])
        )
        for p in ports
        if p.get("PublicPort")
    }
    return tuple(sorted(found, key=lambda p: (p.port, p.protocol, p.host_ip)))


def _bindings(bindings: dict[str, Any]) -> tuple[PublishedPort, ...]:
    found: set[PublishedPort] = set()
    for spec, hosts in bindings.items():
        target, _, protocol = spec.partition("/")
        for host in hosts or []:
            if str(host.get("HostPort", "")).isdigit():
                found.add(
                    PublishedPort(
                        host.get("HostIp", ""), int(host["HostPort"]), protocol or "tcp", int(target)
                    )
                )
    return tuple(sorted(found, key=lambda p: (p.port, p.protocol, p.host_ip)))


def publisher(scan: DockerScan | None = None) -> Callable[[int, str], str | None]:
    """A check for the allocator: the container publishing a port, or None. Docker is asked
    once, and only when a candidate port has passed the bind test."""
    cache: list[DockerScan] = [scan] if scan is not None else []

    def published(port: int, protocol: str) -> str | None:
        if not cache:
            cache.append(scan_containers())
        found = cache[0].publishing(port, protocol)
        if not found:
            return None
        c = found[0]
        return c.describe() if c.running else f"{c.describe()} ({c.state}; publishes it again when started)"

    return published


# --- docker-proxy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyRoute:
    """One docker-proxy process: it listens on the host port and, for each connection it
    accepts, dials the container's address from the host's network namespace."""

    pid: int
    protocol: str
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int


def proxy_routes(port: int, protocol: str = "tcp", proc: str = "/proc") -> list[ProxyRoute]:
    """The docker-proxy processes forwarding host ``port``, read from their command lines,
    which every user may read (their sockets only root may attribute). Empty when /proc hides
    other users' processes (``hidepid``)."""
    routes = []
    for pid in _pids(proc):
        if _read(f"{proc}/{pid}/comm").strip() != b"docker-proxy":
            continue
        route = _route(pid, _read(f"{proc}/{pid}/cmdline").split(b"\0"))
        if route is not None and route.host_port == port and route.protocol == protocol:
            routes.append(route)
    return routes


def _pids(proc: str) -> list[int]:
    try:
        return [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone meanwhile, or hidden
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _route(pid: int, argv: list[bytes]) -> ProxyRoute | None:
    words = [w.decode(errors="replace") for w in argv]
    args = {w.lstrip("-"): words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("-")}
    try:
        return ProxyRoute(
            pid,
            args.get("proto", "tcp"),
            args.get("host-ip", ""),
            int(args["host-port"]),
            args["container-ip"],
            int(args["container-port"]),
        )
    except (KeyError, ValueError):  # not a forwarding docker-proxy command line
        return None


def container_at(address: str, endpoint: str | None = None, timeout: float = 2.0) -> Container | None:
    """The running container with ``address`` on one of its networks; None when there is none
    or Docker cannot be asked."""
    endpoint = endpoint or docker_endpoint()
    try:
        listed = _get(endpoint, "/containers/json", timeout)
    except DockerUnavailable:
        return None
    for raw in listed:
        networks = ((raw.get("NetworkSettings") or {}).get("Networks") or {}).values()
        if any(address in (n.get("IPAddress"), n.get("GlobalIPv6Address")) for n in networks):
            return _container(endpoint, raw, timeout)
    return None
