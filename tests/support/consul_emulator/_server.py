"""The server: a threading HTTP server in front of the API, the thread that runs checks and
expires TTLs, start and stop, and the command line (``python -m tests.support.consul_emulator``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from ._api import ConsulAPI
from ._state import ConsulError, ConsulState, HealthCheck, go_duration, parse_duration

# Check runners -------------------------------------------------------------------------


def run_http(url: str, timeout: float) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"User-Agent": "Consul Health Check"})  # noqa: S310 - an http(s) check URL
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the check's own URL
            code, reason, body = response.status, response.reason, response.read(4096)
    except urllib.error.HTTPError as e:
        code, reason, body = e.code, e.reason, e.read(4096) if e.fp else b""
    except (OSError, ValueError) as e:
        return "critical", f"Get {url!r}: {e}"
    text = body.decode("utf-8", "replace")
    output = f"HTTP GET {url}: {code} {reason} Output: {text}"
    if 200 <= code < 300:
        return "passing", output
    if code == 429:
        return "warning", output
    return "critical", output


def run_script(args: list[str], timeout: float) -> tuple[str, str]:
    """Consul's script check: exit 0 passing, 1 warning, anything else critical; the output is
    what it printed (stdout and stderr), cut to 4 KiB."""
    try:
        done = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "critical", f"Timed out ({go_duration(timeout)}) running check"
    except OSError as e:
        return "critical", f"Failed to run check: {e}"
    output = (done.stdout + done.stderr)[:4096].decode("utf-8", "replace")
    return {0: "passing", 1: "warning"}.get(done.returncode, "critical"), output


def run_tcp(target: str, timeout: float) -> tuple[str, str]:
    host, _, port = target.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        return "critical", f"dial tcp {target}: {e}"
    return "passing", f"TCP connect {target}: Success"


# The HTTP front --------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall
    server: ConsulEmulator

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.opened(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.closed(self)

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        api = self.server.api
        try:
            api.authorize(parts.path, self.headers, query)
            code, payload, headers = api.route(method, unquote(parts.path), query, body)
        except ConsulError as e:
            code, payload, headers = e.code, e.text, {}
        except Exception as e:
            code, payload, headers = 500, f"emulator error: {e!r}", {}
        if self.server.take_dropped_reply(parts.path):
            self.close_connection = True  # applied, never answered: the client sees a reset
            return
        data = payload if isinstance(payload, bytes) else None
        if data is None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            headers.setdefault(
                "Content-Type", "text/plain" if isinstance(payload, str) else "application/json"
            )
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# The server ------------------------------------------------------------------------------


class ConsulEmulator(ThreadingHTTPServer):
    """The HTTP server plus the thread that runs checks and expires TTLs.

    ``with ConsulEmulator(("127.0.0.1", 0)) as server: server.url`` serves in a thread."""

    daemon_threads = True
    allow_reuse_address = True
    tick_interval = 0.02

    def __init__(
        self,
        address: tuple[str, int] = ("127.0.0.1", 0),
        *,
        acl_token: str | None = None,
        session_ttl_min: float = 10.0,
        enable_script_checks: bool = False,
    ) -> None:
        super().__init__(address, _Handler)
        self.state = ConsulState(acl_token=acl_token, session_ttl_min=session_ttl_min)
        self.state.enable_script_checks = enable_script_checks
        self.api = ConsulAPI(self.state)
        self.api.on_leave = self._leave
        self._stop = threading.Event()
        self._stop_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="consul-emulator-check")
        self._runners: list[threading.Thread] = []
        self._connections_lock = threading.Lock()
        self._connections: set[_Handler] = set()

    def drop_next_reply(self, path: str) -> None:
        """Apply the next request to ``path``, then close its connection without answering."""
        with self._connections_lock:
            self.api.dropped_replies.append(path)

    def take_dropped_reply(self, path: str) -> bool:
        with self._connections_lock:
            if path in self.api.dropped_replies:
                self.api.dropped_replies.remove(path)
                return True
            return False

    def connections(self) -> list[tuple[str, int]]:
        """The client address of every connection open now."""
        with self._connections_lock:
            return sorted(h.client_address[:2] for h in self._connections)

    def opened(self, handler: _Handler) -> None:
        with self._connections_lock:
            self._connections.add(handler)

    def closed(self, handler: _Handler) -> None:
        with self._connections_lock:
            self._connections.discard(handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> ConsulEmulator:
        """Serve and run checks in daemon threads."""
        for target, name in (
            (self._serve, "consul-emulator-http"),
            (self._run_timers, "consul-emulator-timers"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._runners.append(thread)
        return self

    def _serve(self) -> None:
        self.serve_forever(poll_interval=0.05)

    def _leave(self) -> None:
        threading.Thread(target=self.stop, name="consul-emulator-leave", daemon=True).start()

    def stop(self) -> None:
        """Stop serving and running checks; a second call waits for the first to finish."""
        with self._stop_lock:
            if self._stop.is_set():
                return
            self._stop.set()
            self.shutdown()
            self.server_close()
            with self._connections_lock:  # an agent that exits drops its clients' connections too
                for handler in self._connections:
                    with contextlib.suppress(OSError):
                        handler.connection.shutdown(socket.SHUT_RDWR)
            for thread in self._runners:
                thread.join(5)
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ConsulEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_timers(self) -> None:
        while not self._stop.wait(self.tick_interval):
            with self.state.cond:
                due = self.state.tick(time.monotonic())
            for check in due:
                with contextlib.suppress(RuntimeError):  # the pool is shut down while stopping
                    self._pool.submit(self._run_check, check)

    def _run_check(self, check: HealthCheck) -> None:
        if check.kind == "script":
            status, output = run_script(check.args, check.timeout)
        else:
            status, output = (run_http if check.kind == "http" else run_tcp)(check.target, check.timeout)
        with self.state.cond:
            check.running = False
            check.next_run = time.monotonic() + check.interval
            if self.state.checks.get(check.check_id) is not check:
                return  # deregistered or replaced meanwhile
            self.state.set_check(check, _damped(check, status), output)


def _damped(check: HealthCheck, status: str) -> str:
    """Consul's SuccessBeforePassing / FailuresBeforeCritical: a change of status needs that
    many results in a row; warning applies at once."""
    if status == "passing":
        check.successes, check.failures = check.successes + 1, 0
        if check.status != "passing" and check.successes < check.success_before_passing:
            return check.status
    elif status == "critical":
        check.failures, check.successes = check.failures + 1, 0
        if check.status != "critical" and check.failures < check.failures_before_critical:
            return check.status
    else:
        check.successes = check.failures = 0
    return status


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.consul_emulator", description="Serve an emulated Consul HTTP API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--acl-token", default=None, help="enable ACLs: every request needs this token")
    parser.add_argument(
        "--session-ttl-min", default="10s", help="the shortest session TTL accepted (Consul: 10s)"
    )
    args = parser.parse_args(argv)
    server = ConsulEmulator(
        (args.host, args.port), acl_token=args.acl_token, session_ttl_min=parse_duration(args.session_ttl_min)
    )
    print(f"Consul HTTP API emulator on {server.url} (CONSUL_HTTP_ADDR={server.address})", flush=True)
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
