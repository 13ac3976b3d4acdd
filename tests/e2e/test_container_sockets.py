"""What listens inside a container, read from its own network namespace, and doctor's verdict on
each published port: busybox httpd on container port 80 published as a host port is fine; a
container publishing container port 8080 while httpd listens on 80 inside, or httpd bound to
127.0.0.1 only, fails with the fix."""

from __future__ import annotations

import secrets
import time

import pytest

from portctl.backends.file import JsonFileStore
from portctl.compose.check import Target
from portctl.config.settings import Settings
from portctl.host.containers import scan_containers
from portctl.host.holders import HostPorts
from portctl.host.listeners import ListenerScan
from portctl.host.netns import container_pid, namespace_listeners, read_namespace
from portctl.operations._doctor_extra import container_port_verdicts
from portctl.operations._doctoring import DoctorContext, VerdictStatus
from portctl.ports.allocator import PortAllocator
from portctl.registry.entries import Registry
from tests.conftest import free_port


@pytest.fixture
def run_container(docker, busybox_image):
    """Start ``httpd`` in a container publishing HOST:CONTAINER; removed at the end."""
    started: list[str] = []

    def run(publish: str, listen: str) -> tuple[str, str]:
        name = f"doctorx-{secrets.token_hex(4)}"
        docker(
            "run",
            "-d",
            "--name",
            name,
            "-p",
            publish,
            busybox_image,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            listen,
        )
        started.append(name)
        return name, docker("inspect", "-f", "{{.Id}}", name).strip()

    yield run
    if started:
        docker("rm", "-f", *started, check=False)


def listening_inside(pid: int, port: int, seconds: float = 30.0):
    """The container's listeners once one is on ``port`` (httpd binds soon after the start)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = namespace_listeners(pid) or []
        if any(x.port == port for x in found):
            return found
        time.sleep(0.05)
    pytest.fail(f"nothing listened on {port} inside the container within {seconds:g}s")


def context(tmp_path, docker_host, targets) -> DoctorContext:
    store = JsonFileStore(str(tmp_path / "store.json"))
    settings = Settings(host="doctor-host")
    return DoctorContext(
        PortAllocator(store, settings),
        Registry(store, settings),
        "development",
        targets,
        HostPorts(ListenerScan(), scan_containers(docker_host)),
    )


def target(service: str, port: int) -> Target:
    return Target(service, "development", port, "tcp", "0.0.0.0", "allocation")


def test_the_listeners_inside_a_container(run_container, docker_host):
    host_port = free_port(start=27100)
    _, cid = run_container(f"{host_port}:80", "80")
    pid = container_pid(cid, docker_host)
    assert pid is not None
    found = listening_inside(pid, 80)
    assert [(x.protocol, x.port) for x in found] == [("tcp", 80)]  # not the host's listeners
    assert not any(x.port == host_port for x in found)


def test_doctor_on_published_ports_inside_containers(run_container, docker_host, tmp_path):
    good, bad, loop = free_port(start=27200), free_port(start=27300), free_port(start=27400)
    good_name, good_id = run_container(f"{good}:80", "80")
    bad_name, bad_id = run_container(f"{bad}:8080", "80")  # httpd listens on 80, not 8080
    loop_name, loop_id = run_container(f"{loop}:80", "127.0.0.1:80")
    for cid in (good_id, bad_id, loop_id):
        listening_inside(container_pid(cid, docker_host) or 0, 80)
    ctx = context(tmp_path, docker_host, [target("web", good), target("api", bad), target("admin", loop)])
    verdicts = {v.service: v for v in container_port_verdicts(ctx)}
    assert verdicts["web"].status == VerdictStatus.OK
    assert verdicts["web"].finding == (
        f"container {good_name} publishes {good} -> container port 80, and something listens on 80 inside it"
    )
    api = verdicts["api"]
    assert api.status == VerdictStatus.FAIL
    assert api.finding == (
        f"container {bad_name} publishes {bad} -> container port 8080, but nothing listens on 8080 inside it "
        "(it listens on 80)"
    )
    assert api.fix == (
        "make the service listen on port 8080 inside the container, "
        f"or change the mapping (HOST:CONTAINER) to {bad}:80"
    )
    admin = verdicts["admin"]
    assert admin.status == VerdictStatus.FAIL
    assert admin.finding == (
        f"container {loop_name} publishes {loop} -> container port 80, but it listens on 80 only on "
        "127.0.0.1, which the published port cannot reach"
    )
    assert admin.fix == "make the service bind 0.0.0.0:80 (every address) inside the container"


def test_the_table_of_a_process_that_is_gone_says_why(run_container, docker, docker_host):
    name, cid = run_container(f"{free_port(start=27500)}:80", "80")
    pid = container_pid(cid, docker_host) or 0
    listening_inside(pid, 80)
    docker("kill", name)
    docker("wait", name)
    sockets = read_namespace(pid)
    assert sockets.listeners is None
    assert sockets.reason == f"process {pid} is gone"
    assert namespace_listeners(pid) is None


def test_a_stopped_container_has_no_process(docker, busybox_image, docker_host):
    name = f"doctorx-{secrets.token_hex(4)}"
    docker("create", "--name", name, busybox_image, "/bin/busybox", "true")
    try:
        assert container_pid(name, docker_host) is None
    finally:
        docker("rm", "-f", name, check=False)
