"""Containers and the ports they publish, read from the Docker Engine API.

portctl talks to the Engine API directly over its socket with ``http.client`` instead of
importing the Docker SDK: the SDK's import alone (requests, urllib3) costs more start-up time
than a whole ``portctl check`` may take. ``DOCKER_HOST`` is honoured (``unix://``,
``tcp://``; TLS with ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH`` as the Docker CLI does).

Running containers report what they publish now. A stopped container reports nothing in the
list, but its port bindings come back when it restarts: those are read from the container's
``HostConfig.PortBindings`` and reported as warnings.

Docker being absent, stopped or refusing permission is not an error for a scan: the result
carries a one-line ``notice`` and no containers. :func:`require_docker` turns the same
conditions into :class:`~portctl.errors.DockerUnavailable` for commands that need Docker.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from portctl.errors import DockerUnavailable

__all__ = ["Container", "DockerScan", "PublishedPort", "docker_endpoint", "scan_containers"]

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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connection(endpoint: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(endpoint)
    if parts.scheme == "unix":
        return _UnixConnection(parts.path, timeout)
    if parts.scheme in ("tcp", "http", "https"):
        host, port = parts.hostname or "127.0.0.1", parts.port
        if os.environ.get("DOCKER_TLS_VERIFY") or parts.scheme == "https":
            return http.client.HTTPSConnection(host, port or 2376, timeout=timeout, context=_tls())
        return http.client.HTTPConnection(host, port or 2375, timeout=timeout)
    raise DockerUnavailable(endpoint, "DOCKER_HOST must be unix:///path or tcp://host:port")


def _tls() -> ssl.SSLContext:
    folder = os.environ.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")
    context = ssl.create_default_context(cafile=os.path.join(folder, "ca.pem"))
    context.load_cert_chain(os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem"))
    return context


def _get(endpoint: str, path: str, timeout: float) -> Any:
    conn = _connection(endpoint, timeout)
    try:
        conn.request("GET", path, headers={"Host": "docker"})
        response = conn.getresponse()
        body = response.read()
    except OSError as e:
        raise DockerUnavailable(endpoint, _why(endpoint, e)) from e
    except http.client.HTTPException as e:
        raise DockerUnavailable(endpoint, f"bad answer from the Docker API ({e})") from e
    finally:
        conn.close()
    if response.status >= 400:
        raise DockerUnavailable(endpoint, f"Docker API answered {response.status} to GET {path}")
    return json.loads(body)


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
