"""A container's own socket table: what listens inside it, on the ports it publishes to.

A published port forwards to the container's port; if nothing listens there inside the
container, every connection is refused or reset although the host port looks taken. The
kernel keeps one socket table per network namespace, and ``/proc/<pid>/net/tcp`` shows the one
of process ``pid``'s namespace, so the container's main process (``State.Pid`` from the Docker
Engine API) leads to the container's listeners without entering the namespace.

Most kernels let any user read another process's ``/proc/<pid>/net``; where /proc hides other
users' processes (``hidepid``) or a security module refuses it, the table is unreadable and
:func:`read_namespace` says why (run as root). Asking Docker for the pid needs access to its
socket, and the pid must be this host's: a daemon reached over TCP may run elsewhere.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from portctl.host._tables import check_protocols, parse_proc_table
from portctl.host.containers import API_TIMEOUT, _get, docker_endpoint
from portctl.host.listeners import Listener

__all__ = ["NamespaceSockets", "container_pid", "local_pids", "namespace_listeners", "read_namespace"]


def container_pid(container_id: str, endpoint: str | None = None, timeout: float = API_TIMEOUT) -> int | None:
    """The host pid of the container's main process; None when it has none (not running).

    Raises :class:`~portctl.errors.DockerUnavailable` when Docker cannot be asked or does not know the
    container."""
    endpoint = endpoint or docker_endpoint()
    inspect: Any = _get(endpoint, f"/containers/{quote(container_id)}/json", timeout)
    pid = (inspect.get("State") or {}).get("Pid") if isinstance(inspect, dict) else None
    return pid if isinstance(pid, int) and pid > 0 else None


def local_pids(endpoint: str | None = None) -> bool:
    """Whether the pids Docker reports are this host's: a daemon reached over TCP may run on
    another machine, whose processes this /proc does not show."""
    return urlsplit(endpoint or docker_endpoint()).scheme == "unix"


@dataclass(frozen=True)
class NamespaceSockets:
    pid: int
    listeners: tuple[Listener, ...] | None  # None when the table could not be read
    reason: str | None = None  # why not, in one line

    def on_port(self, port: int, protocol: str = "tcp") -> list[Listener]:
        return [x for x in self.listeners or () if x.port == port and x.protocol == protocol]


def read_namespace(pid: int, protocols: Iterable[str] = ("tcp",), proc: str = "/proc") -> NamespaceSockets:
    """The listeners of the network namespace process ``pid`` is in, read from
    ``/proc/<pid>/net/{tcp,udp}{,6}``; unreadable (not root, the process gone) says why."""
    wanted = check_protocols(protocols)
    found: list[Listener] = []
    for protocol in wanted:
        for suffix in ("", "6"):
            path = f"{proc}/{pid}/net/{protocol}{suffix}"
            try:
                with open(path, encoding="ascii") as f:
                    text = f.read()
            except FileNotFoundError:
                if suffix:  # IPv6 is off in that namespace
                    continue
                return NamespaceSockets(pid, None, f"process {pid} is gone")
            except OSError as e:
                return NamespaceSockets(pid, None, _why(pid, e))
            found.extend(Listener(*row) for row in parse_proc_table(text, protocol))
    return NamespaceSockets(pid, tuple(found))


def namespace_listeners(pid: int, protocols: Iterable[str] = ("tcp",)) -> list[Listener] | None:
    """The listeners in process ``pid``'s network namespace; None when they cannot be read
    (:func:`read_namespace` says why)."""
    found = read_namespace(pid, protocols).listeners
    return None if found is None else list(found)


def _why(pid: int, e: OSError) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"the socket table of process {pid} is not readable (permission denied): run as root"
    return f"the socket table of process {pid} could not be read ({e.strerror or e})"
