"""Which host port a failed ``docker compose up`` says was taken.

Between portctl's allocation and Compose's start something else may take a port. Docker then
fails the container's start with one of two texts (dockerd 20.10, printed by Compose as
``Error response from daemon: ...``):

* another container publishes the port (Docker's own port allocator)::

    driver failed programming external connectivity on endpoint app-api-1 (ID): Bind for
    0.0.0.0:8000 failed: port is already allocated

* a host process holds it (docker-proxy cannot bind)::

    driver failed programming external connectivity on endpoint app-api-1 (ID): Error
    starting userland proxy: listen tcp4 0.0.0.0:8000: bind: address already in use

The first names no protocol; the endpoint is the container, ``PROJECT-SERVICE-N``, which tells
a TCP and a UDP port of the same number apart when both are the stack's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TakenPort", "reports_taken_port", "taken_ports"]

_MARKS = ("port is already allocated", "address already in use")
_ADDRESS = r"(?P<address>\[[0-9A-Fa-f:.]*\]|[0-9.]*):(?P<port>\d{1,5})"
_ENDPOINT = r"(?:on endpoint (?P<endpoint>\S+) .*?)?"
_PATTERNS = (
    re.compile(_ENDPOINT + r"Bind for " + _ADDRESS + r" failed: port is already allocated"),
    re.compile(
        _ENDPOINT + r"listen (?P<protocol>tcp|udp)[46]? " + _ADDRESS + r": bind: address already in use"
    ),
)


@dataclass(frozen=True)
class TakenPort:
    port: int
    address: str  # as Docker wrote it: "0.0.0.0", "127.0.0.1", "[::]"
    protocol: str | None  # None when Docker did not say (the "already allocated" text)
    endpoint: str | None  # the container Docker was starting, "PROJECT-SERVICE-N"
    line: str  # the whole line of Compose's output that said so


def reports_taken_port(output: str) -> bool:
    """Whether Compose failed because a port was taken, whether or not the port can be read."""
    return any(mark in output for mark in _MARKS)


def taken_ports(output: str) -> list[TakenPort]:
    """Every taken port that Compose's output names, in its order, each once."""
    found: dict[tuple[int, str | None, str | None], TakenPort] = {}
    for line in output.splitlines():
        for pattern in _PATTERNS:
            for match in pattern.finditer(line):
                taken = _taken(match, line.strip())
                found.setdefault((taken.port, taken.protocol, taken.endpoint), taken)
    return list(found.values())


def _taken(match: re.Match[str], line: str) -> TakenPort:
    groups = match.groupdict()
    return TakenPort(
        port=int(groups["port"]),
        address=groups["address"],
        protocol=groups.get("protocol"),
        endpoint=groups.get("endpoint"),
        line=line,
    )
