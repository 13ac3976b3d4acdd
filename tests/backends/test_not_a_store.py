"""A consul:// or etcd:// URL that points at some other HTTP server (a static file server,
nginx answering 404s, a catch-all that answers 200 to everything) is refused as not that
store: never read as an empty store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from tests.cli.conftest import PORTCTL, error_line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[int]:
    """``python -m http.server``: 404 for every GET of an API path, 501 for PUT and POST."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(tmp_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 404; }}
    }}
}}
"""


@pytest.fixture
def nginx_404(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        pytest.skip("nginx is not installed (Debian package nginx)")
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    port = _free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port))
    process = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


class _CatchAll(BaseHTTPRequestHandler):
    """Answers 200 with an empty JSON list to every request, as a misrouted API might."""

    body = b"[]"

    def do_GET(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _JsonRpc(_CatchAll):
    """A JSON-RPC server (an Ethereum or bitcoind node): 200 with an ``error`` object."""

    body = b'{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": null}'


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def catch_all() -> Iterator[int]:
    yield from _serve(_CatchAll)


@pytest.fixture
def json_rpc() -> Iterator[int]:
    yield from _serve(_JsonRpc)


def _portctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTCTL_", "CONSUL_", "ETCDCTL_"))}
    env["HOME"] = str(cwd)
    command = [PORTCTL, *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


SERVERS = ["file_server", "nginx_404", "catch_all", "json_rpc"]
COMMANDS = [("services",), ("bluegreen", "status", "api")]


# Each store's scheme, and what it says of a server that does not speak its API.
STORES = {
    "consul": "http://127.0.0.1:{port} is not a Consul agent (no X-Consul-* headers in its answer",
    "etcd": "http://127.0.0.1:{port} is not an etcd server",
}


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("scheme", STORES)
def test_store_url_at_another_http_server_is_refused(
    request: pytest.FixtureRequest, tmp_path: Path, scheme: str, server: str, args: tuple[str, ...]
) -> None:
    port = request.getfixturevalue(server)
    result = _portctl(*args, "--store", f"{scheme}://127.0.0.1:{port}", cwd=tmp_path)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert result.stdout == ""
    line = error_line(result)
    assert STORES[scheme].format(port=port) in line
