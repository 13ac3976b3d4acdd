from __future__ import annotations

import socket

import pytest

from portctl.backends.file import JsonFileStore

pytest_plugins = [
    "tests.support.http_server",
    "tests.support.etcd_fixture",
    "tests.support.consul_fixture",
]  # http_server; etcd_*; consul_*


def free_port(protocol: str = "tcp", start: int = 20000) -> int:
    """A port free on IPv4 and IPv6 right now, below the ephemeral range."""
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    for port in range(start, 32000):
        try:
            for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                with socket.socket(family, kind) as s:
                    if family == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


def free_ports(count: int, start: int = 20000) -> list[int]:
    """``count`` consecutive-ish free ports."""
    ports: list[int] = []
    port = start
    while len(ports) < count:
        port = free_port(start=port)
        ports.append(port)
        port += 1
    return ports


@pytest.fixture
def store(tmp_path):
    with JsonFileStore(str(tmp_path / "store.json")) as s:
        yield s


@pytest.fixture
def listener():
    """Open a real listening socket; closed at the end of the test."""
    opened: list[socket.socket] = []

    def listen(port: int, host: str = "0.0.0.0", protocol: str = "tcp") -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
        s = socket.socket(family, kind)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(8)
        opened.append(s)
        return s

    yield listen
    for s in opened:
        s.close()
