"""`portctl check` without a compose file still knows a stack's own container: an allocation made
for a compose stack records its project and service."""

from __future__ import annotations

import os
import socket
import subprocess

from portctl.compose.check import check_ports, targets
from portctl.config.settings import Settings
from portctl.host.containers import Container, DockerScan, PublishedPort
from portctl.host.holders import HostPorts
from portctl.host.listeners import ListenerScan
from portctl.ports.allocator import Allocation, PortAllocator
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
    holder = finding.conflicts[0]
    assert holder.describe() == "container legacy-web-1 (compose legacy/web, image nginx), on 0.0.0.0"
    assert holder.next_step() == "docker stop legacy-web-1 (or docker compose -p legacy down)"


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


# The registered instance on its port is the service itself -----------------------------------


def _registered(store, port: int, *, pid: int | None = None, color: str | None = None):
    """An allocation on ``port`` and the registry instance that serves it (no check run)."""
    from portctl.registry.entries import CheckSpec, Registry

    settings = Settings(host="check-host")
    name = f"api_{color}" if color else "api"
    PortAllocator(store, settings).import_allocations(
        [Allocation(name, "production", "check-host", port, "tcp", "api", "x")]
    )
    meta = {"color": color} if color else {}
    Registry(store, settings).register(
        "api", port=port, check=CheckSpec("none"), pid=pid, meta=meta, tags=(color,) if color else ()
    )
    return PortAllocator(store, settings)


def _check(allocator):
    return check_ports(targets(allocator, None), HostPorts(ListenerScan(), DockerScan("unix:///none")))


def test_a_colors_own_server_is_not_a_conflict(store, listener):
    port = free_port(start=26200)
    listener(port)
    report = _check(_registered(store, port, color="green"))
    assert report.ok
    [finding] = report.findings
    assert finding.target.service == "api_green"
    assert finding.own[0].process.pid == os.getpid()
    assert report.next_step() is None


def test_a_holder_where_the_instance_does_not_answer_is_a_conflict(store, listener):
    port = free_port(start=26300)
    listener(port, "127.0.0.2")  # the instance answers on 127.0.0.1; this is something else
    report = _check(_registered(store, port))
    [finding] = report.conflicts
    assert finding.conflicts[0].addresses == ("127.0.0.2",)


def test_a_registration_that_recorded_its_process_needs_that_process(store, listener):
    port = free_port(start=26400)
    listener(port)
    other = subprocess.Popen(["sleep", "60"])
    try:
        assert not _check(_registered(store, port, pid=other.pid)).ok  # we hold it, not pid `other`
    finally:
        other.kill()
        other.wait()


def test_a_registration_made_by_a_parent_of_the_holder_is_itself(store, listener):
    port = free_port(start=26500)
    listener(port)
    assert _check(_registered(store, port, pid=os.getppid())).ok  # registered by our parent


def test_next_step_names_the_free_command_and_the_move(store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        allocator = PortAllocator(store, Settings(host="check-host"))
        allocator.import_allocations([Allocation("api", "production", "check-host", port, "tcp", "api", "x")])
        report = _check(allocator)
    assert report.next_step() == (
        f"free the ports: kill {os.getpid()}; or move the services: "
        "portctl release --service api --env production && portctl allocate --service api --env production"
    )
