"""run_check against real servers: a TCP listener and an HTTP server whose answer the test sets."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from portctl.registry.entries import CheckSpec, ServiceEntry, Status
from portctl.registry.health import run_check
from tests.support.http_server import HealthServer


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def entry(port: int, check: CheckSpec, address: str = "127.0.0.1") -> ServiceEntry:
    return ServiceEntry("svc-1", "svc", "development", "test-host", address, port, check=check)


def http_entry(server: HealthServer, path: str = "/health", timeout: float = 2.0) -> ServiceEntry:
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}{path}"
    return entry(port, CheckSpec("http", url=url, timeout=timeout))


def test_tcp_connect_to_a_listener_passes(tcp_listener):
    port = tcp_listener.getsockname()[1]
    assert run_check(entry(port, CheckSpec("tcp"))) == (Status.PASSING, f"tcp connect to 127.0.0.1:{port} ok")


def test_tcp_connect_refused_is_critical():
    port = closed_port()
    status, output = run_check(entry(port, CheckSpec("tcp")))
    assert status == Status.CRITICAL
    assert output == f"tcp connect to 127.0.0.1:{port} failed: connection refused"


def test_tcp_check_on_ipv6_shows_the_address_in_brackets():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with s:
        s.listen(1)
        port = s.getsockname()[1]
        assert run_check(entry(port, CheckSpec("tcp"), "::1")) == (
            Status.PASSING,
            f"tcp connect to [::1]:{port} ok",
        )


@pytest.mark.parametrize(
    ("code", "status", "output"),
    [
        (200, Status.PASSING, "HTTP 200 OK"),
        (204, Status.PASSING, "HTTP 204 No Content"),
        (429, Status.WARNING, "HTTP 429 Too Many Requests"),
        (503, Status.CRITICAL, "HTTP 503 Service Unavailable"),
        (500, Status.CRITICAL, "HTTP 500 Internal Server Error"),
        (404, Status.CRITICAL, "HTTP 404 Not Found"),
    ],
)
def test_http_status_codes(http_server, code, status, output):
    http_server.behaviour.code = code
    assert run_check(http_entry(http_server)) == (status, output)


def test_http_can_switch_between_results(http_server):
    e = http_entry(http_server)
    assert run_check(e)[0] == Status.PASSING
    http_server.behaviour.code = 503
    assert run_check(e)[0] == Status.CRITICAL
    http_server.behaviour.code = 200
    assert run_check(e)[0] == Status.PASSING


def test_http_redirect_is_followed_to_the_final_answer(http_server):
    e = http_entry(http_server, "/moved")
    assert run_check(e) == (Status.PASSING, "HTTP 200 OK")
    http_server.behaviour.code = 503
    assert run_check(e) == (Status.CRITICAL, "HTTP 503 Service Unavailable")


def test_http_final_3xx_is_critical(http_server):
    http_server.behaviour.code = 300  # a redirect status without a Location: nothing to follow
    assert run_check(http_entry(http_server)) == (Status.CRITICAL, "HTTP 300 Multiple Choices")


def test_http_slow_handler_times_out(http_server):
    http_server.behaviour.delay = 2.0
    started = time.monotonic()
    status, output = run_check(http_entry(http_server, timeout=0.3))
    assert (status, output) == (Status.CRITICAL, "timed out after 0.3s")
    assert time.monotonic() - started < 1.5


def test_http_connection_refused_is_critical():
    port = closed_port()
    e = entry(port, CheckSpec("http", url=f"http://127.0.0.1:{port}/health"))
    assert run_check(e) == (Status.CRITICAL, "connection refused")


def test_http_server_closing_without_answer_is_critical():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]

        def close_at_once() -> None:
            conn, _ = s.accept()
            conn.recv(1024)
            conn.close()

        t = threading.Thread(target=close_at_once, daemon=True)
        t.start()
        status, output = run_check(entry(port, CheckSpec("http", url=f"http://127.0.0.1:{port}/")))
        t.join(5)
    assert status == Status.CRITICAL
    assert "closed connection" in output


def test_http_check_ignores_proxy_settings(http_server, monkeypatch):
    dead = closed_port()
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{dead}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert run_check(http_entry(http_server)) == (Status.PASSING, "HTTP 200 OK")


@pytest.mark.parametrize("check", [CheckSpec("ttl", ttl=15.0), CheckSpec("none")])
def test_ttl_and_none_checks_are_not_run(check):
    with pytest.raises(ValueError, match="tcp or http check"):
        run_check(entry(5432, check))


def test_importing_health_does_not_import_the_http_client():
    code = (
        "import sys, portctl.registry.health; "
        "print(sorted(m for m in ('urllib.request', 'http.client', 'http') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Behind Docker's userland proxy ----------------------------------------------------------------
# The real docker-proxy binary runs without dockerd: it listens on the host port, accepts every
# connection, and only then dials the container's address. A check that stops at the accepted
# connect reports a service that is not there.

DOCKER_PROXY = "/usr/sbin/docker-proxy"


@pytest.fixture
def docker_proxy() -> Iterator[tuple[int, int]]:
    """docker-proxy on 127.0.0.1:(host port) forwarding to 127.0.0.1:(container port)."""
    import os
    import shutil

    binary = shutil.which("docker-proxy") or (DOCKER_PROXY if os.path.exists(DOCKER_PROXY) else None)
    if binary is None:
        pytest.skip("docker-proxy is not installed (Debian package docker.io)")
    host_port, container_port = closed_port(), closed_port()
    argv = [binary, "-proto", "tcp", "-host-ip", "127.0.0.1", "-host-port", str(host_port)]
    argv += ["-container-ip", "127.0.0.1", "-container-port", str(container_port)]
    # docker-proxy reports readiness ("0\n") on fd 3, as dockerd expects: here, its stdout.
    proxy = subprocess.Popen(
        ["/bin/sh", "-c", 'exec "$0" "$@" 3>&1', *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proxy.stdout is not None
    assert proxy.stdout.read(2) == b"0\n"
    yield host_port, container_port
    proxy.terminate()
    proxy.wait()
    proxy.stdout.close()


def test_tcp_check_through_docker_proxy_with_nothing_behind_is_critical(docker_proxy):
    host_port, container_port = docker_proxy
    status, output = run_check(entry(host_port, CheckSpec("tcp")))
    assert status == Status.CRITICAL
    assert output == (
        f"tcp connect to 127.0.0.1:{host_port}: docker-proxy accepted but the container at "
        f"127.0.0.1 has nothing listening on {container_port}"
    )


def test_tcp_check_through_docker_proxy_passes_when_the_container_listens(docker_proxy):
    host_port, container_port = docker_proxy
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", container_port))
        server.listen(4)
        status, output = run_check(entry(host_port, CheckSpec("tcp")))
    assert (status, output) == (
        Status.PASSING,
        f"tcp connect to 127.0.0.1:{host_port} ok, through docker-proxy to 127.0.0.1:{container_port}",
    )
