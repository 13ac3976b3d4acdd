"""Real components for the blue-green tests: two HTTP backends that answer with their color,
nginx and HAProxy started on loopback ports, and the CLI fixtures of ``tests/cli``."""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cli.conftest import cli_env, run, store_path  # noqa: F401 - the CLI fixtures, shared

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


class _ColorHandler(BaseHTTPRequestHandler):
    server: ColorServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/health"):
            code = self.server.health_code()
            body = b"ok" if code == 200 else b"failing"
        else:
            code, body = 200, self.server.color.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class ColorServer(ThreadingHTTPServer):
    """Answers ``/`` with its color; ``/health`` with 200, 503, or alternately (flapping)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, color: str) -> None:
        super().__init__(("127.0.0.1", 0), _ColorHandler)
        self.color = color
        self.health = "ok"  # "ok", "failing" or "flapping"
        self._flip = False
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def health_code(self) -> int:
        if self.health == "flapping":
            with self._lock:
                self._flip = not self._flip
                return 200 if self._flip else 503
        return 200 if self.health == "ok" else 503


@pytest.fixture
def colors() -> Iterator[dict[str, ColorServer]]:
    servers = {c: ColorServer(c) for c in ("blue", "green")}
    threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True) for s in servers.values()]
    for t in threads:
        t.start()
    yield servers
    for s in servers.values():
        s.shutdown()
        s.server_close()


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, timeout: float = 5.0) -> str:
    """One GET on a new connection; the body, or raises."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:80]}")
        return body
    finally:
        conn.close()


@dataclass
class Client:
    """Sends requests in a loop until stopped; records (time, color) and the failures."""

    fetch: Callable[[], str]
    answers: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Client:
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                body = self.fetch()
            except Exception as e:
                self.failures.append(repr(e))
            else:
                self.answers.append((time.time(), body))
            time.sleep(0.002)

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(10)

    def wait_for(self, color: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers and self.answers[-1][1] == color:
                return
            time.sleep(0.005)
        last = self.answers[-1][1] if self.answers else None
        raise AssertionError(
            f"no {color} answer within {timeout}s (last: {last}, failures: {self.failures[:3]})"
        )

    def first_since(self, color: str, since: float) -> float | None:
        return next((t for t, body in self.answers if t >= since and body == color), None)


@dataclass
class Nginx:
    prefix: Path
    conf: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def globals(self) -> str:
        return f"daemon off; pid {self.prefix}/nginx.pid; error_log {self.prefix}/error.log;"

    def command(self, *extra: str) -> list[str]:
        assert NGINX is not None
        return [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-g", self.globals, *extra]

    @property
    def reload_line(self) -> str:
        """``nginx -s reload`` with the same -p/-c/-g, as one command line for --reload."""
        import shlex

        return shlex.join(self.command("-s", "reload"))

    def start(self) -> None:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nginx exited: {self.process.stderr.read().decode() if self.process.stderr else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("nginx did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


NGINX_CONF = """\
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
    include {upstreams};
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://api;
            proxy_connect_timeout 2s;
        }}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    if NGINX is None:
        pytest.skip("nginx is not installed (Debian package nginx)")
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    port = free_loopback_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(upstreams=prefix / "upstreams.conf", port=port))
    server = Nginx(prefix, conf, port)
    yield server
    server.stop()
