"""``doctor`` on real listeners and real compose files: each item of the troubleshooting list
is a verdict a person can act on, with the fix to run. Docker is not asked (a socket nobody
serves), so these run without it; tests/e2e/test_doctor.py has the containers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from portctl.compose.project import load_compose
from portctl.config.settings import Settings
from portctl.errors import InvalidInput, ServiceNotFound
from portctl.host.containers import DockerScan
from portctl.host.holders import HostPorts
from portctl.host.kernel import kernel_ports
from portctl.host.listeners import ListenerScan
from portctl.operations.doctor import CHECKS, doctor
from portctl.ports.allocator import Allocation, PortAllocator
from portctl.records import CheckSpec
from portctl.registry.entries import Registry
from tests.conftest import free_port

HOST = "doctor-host"
NO_DOCKER = "unix:///nonexistent/doctor-docker.sock"


def _allocator(store) -> PortAllocator:
    return PortAllocator(store, Settings(host=HOST))


def _record(store, service: str, port: int) -> None:
    """An allocation as documented (import runs no bind test, so a held port may be recorded)."""
    _allocator(store).import_allocations([Allocation(service, "production", HOST, port, "tcp", "api", "x")])


def _register(store, service: str, port: int, *, pid: int | None = None, address: str | None = None) -> None:
    Registry(store, Settings(host=HOST)).register(
        service, port=port, check=CheckSpec("none"), pid=pid, address=address
    )


def _doctor(store, *names: str, project=None):
    host = HostPorts(ListenerScan(), DockerScan(NO_DOCKER))  # a fresh scan: after the listeners opened
    return doctor(
        _allocator(store), Registry(store, Settings(host=HOST)), names=names, project=project, host=host
    )


def _only(report, check: str, status: str | None = None):
    found = [v for v in report.verdicts if v.check == check and (status is None or v.status.value == status)]
    assert len(found) == 1, [v.to_dict() for v in report.verdicts]
    return found[0]


def _compose(tmp_path, text: str):
    path = tmp_path / "docker-compose.yml"
    path.write_text(textwrap.dedent(text))
    return load_compose([str(path)], environ={})


def test_the_checks_are_in_the_troubleshooting_lists_order():
    assert [c.__name__ for c in CHECKS] == [
        "in_use_verdicts",
        "refused_verdicts",
        "bind_verdicts",
        "mapping_verdicts",
        "container_port_verdicts",
        "firewall_verdicts",
        "store_verdicts",
    ]


# --- Address already in use ----------------------------------------------------------------------


def test_a_foreign_process_on_an_allocated_port_is_named_with_the_command_that_frees_it(store, listener):
    port = free_port(start=26500)
    listener(port)
    _record(store, "api", port)
    report = _doctor(store)
    verdict = _only(report, "in use")
    assert verdict.status.value == "fail"
    assert verdict.finding.startswith("held by another process: process python")
    assert f"pid {os.getpid()}" in verdict.finding
    assert verdict.fix.startswith(
        f"portctl free {port} (it stops every process holding it; or kill {os.getpid()})"
    )
    assert "portctl release --service api --env production && portctl allocate" in verdict.fix
    assert verdict.details["owner"] == "process"
    assert report.needs_fixing


def test_the_service_holding_its_own_port_is_ok(store, listener):
    port = free_port(start=26550)
    listener(port)
    _record(store, "api", port)
    _register(store, "api", port, pid=os.getpid())
    report = _doctor(store)
    verdict = _only(report, "in use")
    assert verdict.status.value == "ok"
    assert verdict.finding.startswith("held by the service itself: process python")
    assert not report.needs_fixing


def test_an_unallocated_port_is_still_examined(store, listener):
    port = free_port(start=26600)
    listener(port)
    report = _doctor(store, str(port))
    assert report.asked_ports == (port,)
    verdict = _only(report, "in use")
    assert verdict.subject == f"{port}/tcp"
    assert verdict.status.value == "fail"
    assert "not allocated to any service in production" in verdict.finding


def test_an_allocated_port_stands_for_its_service(store):
    port = free_port(start=26650)
    _record(store, "api", port)
    report = _doctor(store, str(port))
    assert report.asked_ports == ()
    assert [t.service for t in report.targets] == ["api"]


# --- Connection refused ---------------------------------------------------------------------------


@pytest.fixture
def server_elsewhere():
    """A process (not this one) listening on a port of its own, and its pid and port."""
    port = free_port(start=26700)
    code = f"import socket,sys; s=socket.socket(); s.bind(('0.0.0.0',{port})); s.listen(); print('up', flush=True); sys.stdin.read()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "up"
    yield proc.pid, port
    proc.kill()
    proc.wait()


def test_a_registered_service_listening_on_another_port_names_both(store, server_elsewhere):
    pid, actual = server_elsewhere
    allocated = free_port(start=26750)
    _record(store, "api", allocated)
    _register(store, "api", allocated, pid=pid)
    verdict = _only(_doctor(store), "refused")
    assert verdict.status.value == "fail"
    assert f"nothing listens on {allocated}, the allocated port; python" in verdict.finding
    assert f"(pid {pid}) listens on {actual}" in verdict.finding
    assert f"start python3 on {allocated}" in verdict.fix or f"on {allocated}" in verdict.fix
    assert f"--port {actual}" in verdict.fix


def test_a_registered_service_with_nothing_listening_is_refused(store):
    port = free_port(start=26800)
    _record(store, "api", port)
    _register(store, "api", port)
    verdict = _only(_doctor(store), "refused")
    assert verdict.status.value == "fail"
    assert verdict.finding.startswith(f"nothing listens on {port} though api is registered here")
    assert "portctl deregister" in verdict.fix


def test_a_service_not_running_is_not_expected_to_answer(store):
    _record(store, "api", free_port(start=26850))
    verdict = _only(_doctor(store), "refused")
    assert verdict.status.value == "ok"
    assert verdict.finding.startswith("not expected to answer")


def test_loopback_only_is_fine_without_container_clients(store, listener):
    port = free_port(start=26900)
    listener(port, "127.0.0.1")
    _record(store, "api", port)
    _register(store, "api", port, pid=os.getpid())
    verdict = _only(_doctor(store), "refused")
    assert verdict.status.value == "ok"
    assert verdict.finding == "listens on 127.0.0.1 only: reachable from this host"


def test_loopback_only_with_a_compose_project_says_bind_0_0_0_0(store, listener, tmp_path):
    port = free_port(start=26950)
    listener(port, "127.0.0.1")
    project = _compose(
        tmp_path,
        f"""\
        name: doctor-loop
        services:
          api:
            image: busybox
            ports: ["{port}:{port}"]
        """,
    )
    _record(store, "api", port)
    _register(store, "api", port, pid=os.getpid())
    verdict = _only(_doctor(store, project=project), "refused")
    assert verdict.status.value == "warn"
    assert "listens on 127.0.0.1 only, while compose project doctor-loop are its clients" in verdict.finding
    assert verdict.fix.startswith("bind 0.0.0.0")


def test_ipv6_only_wildcard_refuses_ipv4_clients(store, listener):
    port = free_port(start=27000)
    listener(port, "::")  # IPV6_V6ONLY set: no IPv4 at all
    _record(store, "api", port)
    _register(store, "api", port, pid=os.getpid())
    verdict = _only(_doctor(store), "refused")
    assert verdict.status.value == "fail"
    assert verdict.finding.startswith(
        "listens on [::] with IPV6_V6ONLY (no IPv4 listener): tcp connect to 127.0.0.1"
    )
    assert "connection refused" in verdict.finding
    assert verdict.fix.startswith("listen on 0.0.0.0 too, or clear IPV6_V6ONLY")
    assert "net.ipv6.bindv6only" in verdict.fix


def test_ipv6_loopback_only_refuses_ipv4_clients(store, listener):
    port = free_port(start=27050)
    listener(port, "::1")
    _record(store, "api", port)
    _register(store, "api", port, pid=os.getpid(), address="::1")
    verdict = _only(_doctor(store), "refused")
    assert verdict.status.value == "fail"
    assert verdict.finding.startswith("listens on [::1] only (no IPv4 listener)")


def test_a_dual_stack_listener_answers(store):
    port = free_port(start=27100)
    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.listen()
        _record(store, "api", port)
        _register(store, "api", port, pid=os.getpid())
        verdict = _only(_doctor(store), "refused")
    assert verdict.status.value == "ok"
    assert verdict.finding == f"listens on [::], dual-stack: tcp connect to 127.0.0.1:{port} ok"


# --- Cannot bind to port --------------------------------------------------------------------------


def test_a_port_in_the_ephemeral_range_is_a_warning_with_its_fix(store):
    kernel = kernel_ports()
    port = next(
        p for p in range(kernel.ephemeral_low + 500, kernel.ephemeral_high) if p not in kernel.reserved
    )
    _record(store, "api", port)
    verdict = _only(_doctor(store), "bind")
    assert verdict.status.value == "warn"
    assert (
        f"{port} is in the ephemeral range {kernel.ephemeral_low}-{kernel.ephemeral_high}" in verdict.finding
    )
    assert f"sudo sysctl -w net.ipv4.ip_local_reserved_ports={port}" in verdict.fix


def test_a_privileged_port_is_fine_for_root(store):
    if not kernel_ports().may_bind_privileged:
        pytest.skip("runs as root; tests/cli/test_doctor.py runs doctor as nobody")
    _record(store, "gopher", 70)
    verdict = _only(_doctor(store), "bind")
    assert verdict.status.value == "ok"
    assert "this user may bind it" in verdict.finding


# --- Docker port mapping --------------------------------------------------------------------------


def test_a_reversed_mapping_is_a_verdict_not_an_error(store, tmp_path):
    project = _compose(
        tmp_path,
        """\
        services:
          postgres:
            image: postgres
            ports: ["5432:5433"]
        """,
    )
    _record(store, "postgres", 5433)
    verdict = _only(_doctor(store, project=project), "mapping")
    assert verdict.status.value == "fail"
    assert 'services.postgres.ports[0] is "5432:5433"' in verdict.finding
    assert "5433 is postgres's host port" in verdict.finding
    assert verdict.fix.startswith('write "5433:5432" in ')
    assert verdict.fix.endswith("docker-compose.yml (services.postgres.ports[0])")


def test_a_host_port_published_twice(store, tmp_path):
    port = free_port(start=27150)
    project = _compose(
        tmp_path,
        f"""\
        services:
          weaviate:
            image: weaviate
            ports: ["{port}:8080"]
          api:
            image: api
            ports: ["127.0.0.1:{port}:8000"]
        """,
    )
    verdicts = [
        v
        for v in _doctor(store, project=project).verdicts
        if v.check == "mapping" and v.status.value == "fail"
    ]
    [twice] = verdicts
    assert (
        f'host port {port}/tcp is published twice: by weaviate ("{port}:8080") and by api ("127.0.0.1:{port}:8000")'
        in twice.finding
    )
    assert "portctl deploy -f" in twice.fix


def test_a_published_port_the_allocation_moved_needs_the_override(store, tmp_path):
    project = _compose(
        tmp_path,
        """\
        services:
          redis:
            image: redis
            ports: ["6379:6379"]
        """,
    )
    _record(store, "redis", 6380)
    verdict = _only(_doctor(store, project=project), "mapping")
    assert verdict.status.value == "fail"
    assert (
        'redis publishes 6379 ("6379:6379") but the allocation says 6380, and no override or variable moves it'
        in verdict.finding
    )
    assert verdict.fix.startswith("portctl override -f ")
    assert "portctl deploy -f " in verdict.fix


def test_a_variable_that_moves_the_port_is_only_a_warning(store, tmp_path):
    project = _compose(
        tmp_path,
        """\
        services:
          redis:
            image: redis
            ports: ["${REDIS_PORT:-6379}:6379"]
        """,
    )
    _record(store, "redis", 6380)
    verdict = _only(_doctor(store, project=project), "mapping")
    assert verdict.status.value == "warn"
    assert "${REDIS_PORT} moves it when set (REDIS_PORT=6380)" in verdict.finding


def test_no_compose_file_no_mapping_verdicts(store):
    _record(store, "api", free_port(start=27200))
    assert [v for v in _doctor(store).verdicts if v.check == "mapping"] == []


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["0", "70000"])
def test_a_port_out_of_range_is_bad_input(store, port):
    with pytest.raises(InvalidInput, match=f"PORT: {port} is not valid; expected an integer from 1 to 65535"):
        _doctor(store, port)


def test_an_unknown_service_is_not_found(store):
    _record(store, "api", free_port(start=27250))
    with pytest.raises(
        ServiceNotFound,
        match="service 'nosuch' is not allocated in production nor in the compose files; known: api",
    ):
        _doctor(store, "nosuch")


def test_the_report_as_json_lists_every_verdict(store):
    _record(store, "api", free_port(start=27300))
    data = _doctor(store).to_dict()
    assert data["needs_fixing"] is False
    assert {v["check"] for v in data["verdicts"]} == {"in use", "refused", "bind", "firewall", "store"}
    assert data["counts"]["fail"] == 0
