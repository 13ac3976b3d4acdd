"""`portctl check` without a compose file still knows a stack's own container: an allocation made
for a compose stack records its project and service."""

from __future__ import annotations

import socket

from portctl.allocation import Allocation, PortAllocator
from portctl.checking import check_ports, targets
from portctl.config import Settings
from portctl.containers import Container, DockerScan, PublishedPort
from portctl.holders import HostPorts
from portctl.scan import ListenerScan
from tests.conftest import free_port


def _docker_with(port: int, project: str, service: str) -> DockerScan:
    # What the Docker API reports for one running container of a compose project.
    published = (PublishedPort("", port, "tcp", 80),)
    container = Container(
        "c0ffee" * 10, f"{project}-{service}-1", "nginx", "running", project, service, published
    )
    return DockerScan("unix:///var/run/docker.sock", (container,))


def test_own_container_is_not_a_conflict_but_another_projects_is(store):
    port = free_port(start=26100)
    allocator = PortAllocator(store, Settings(host="check-host"))
    allocator.allocate("web", port=port, compose="shop/web")
    own = check_ports(targets(allocator, None), HostPorts(ListenerScan(), _docker_with(port, "shop", "web")))
    assert own.ok
    other = check_ports(
        targets(allocator, None), HostPorts(ListenerScan(), _docker_with(port, "legacy", "web"))
    )
    [finding] = other.conflicts
    assert "container legacy-web-1, compose legacy/web" in finding.conflicts[0].describe()


def test_a_process_holding_an_allocated_port_is_a_conflict(store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        allocator = PortAllocator(store, Settings(host="check-host"))
        # Recorded as documented (import runs no bind test): the port is ours but a process holds it.
        allocator.import_allocations([Allocation("api", "production", "check-host", port, "tcp", "api", "x")])
        report = check_ports(targets(allocator, None), HostPorts(ListenerScan(), DockerScan("unix:///none")))
    [finding] = report.conflicts
    assert finding.conflicts[0].process is not None
    assert finding.conflicts[0].process.pid > 0
