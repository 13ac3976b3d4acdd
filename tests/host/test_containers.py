"""Docker being absent, refused or unreachable is a one-line notice for a scan, and a clear
error for a command that needs it. These run against real sockets (no daemon needed)."""

from __future__ import annotations

import os
import socket

import pytest

from portctl.errors import DockerUnavailable
from portctl.host.containers import require_docker, scan_containers


def test_missing_socket_is_a_notice(tmp_path):
    scan = scan_containers(f"unix://{tmp_path}/docker.sock")
    assert scan.containers == ()
    assert scan.notice == (
        f"containers not scanned: Docker at unix://{tmp_path}/docker.sock: Docker is not running there "
        "(no daemon answered)"
    )


def test_refused_tcp_endpoint_is_a_notice():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        scan = scan_containers(f"tcp://127.0.0.1:{port}")
    assert "Docker is not running there" in (scan.notice or "")


def test_unsupported_docker_host_is_named():
    with pytest.raises(DockerUnavailable, match="DOCKER_HOST must be unix:///path or tcp://host:port"):
        require_docker("ssh://builder@remote")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a socket another user may not open")
def test_permission_denied_on_the_socket_names_the_fix(tmp_path):
    path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    os.chmod(path, 0o600)
    tmp_path.chmod(0o755)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child that is not root, as a user outside the docker group would be
        try:
            os.setgid(65534)
            os.setuid(65534)
            notice = scan_containers(f"unix://{path}").notice or ""
            os.write(write, notice.encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        notice = f.read()
    server.close()
    assert "permission denied on the Docker socket" in notice
    assert "'docker' group" in notice
