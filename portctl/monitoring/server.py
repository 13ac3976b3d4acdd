"""``portctl serve``: ``/metrics``, the status page, ``/api/status``, ``/-/healthy``, ``/-/ready``.

One threaded HTTP server from the standard library (a handful of fixed routes need no web
framework). Each scrape reads the store within the time Prometheus gives it
(``X-Prometheus-Scrape-Timeout-Seconds``, less a margin for the answer to travel); the port
scan runs in the background (:meth:`Monitor.scan_every`). A bearer token, when set, guards
everything but the two probes; it is compared in constant time and never logged.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from portctl import _validate
from portctl.errors import InvalidInput, PortConflict
from portctl.monitoring.snapshot import Monitor

__all__ = [
    "DEFAULT_BUDGET",
    "SERVICE",
    "STANDARD_PORTS",
    "Listen",
    "StatusServer",
    "parse_listen",
    "scrape_budget",
]

# portctl serve's own port, in the monitoring range: below the exporters' block of Prometheus'
# port list (9100-9999), clear of Prometheus (9090), Pushgateway (9091), Alertmanager
# (9093-9094), Loki's gRPC (9095) and Calico (9099). Then the alternatives, then the range.
STANDARD_PORTS = (9098, 9097, 9096)
SERVICE = "portctl"
DEFAULT_BUDGET = 10.0  # seconds a scrape may spend without a timeout header (Prometheus' default)
_MARGIN = 0.25  # seconds kept for writing the answer
_LISTEN_FORM = "HOST:PORT, [IPv6]:PORT or PORT (loopback), e.g. 127.0.0.1:9098"


@dataclass(frozen=True)
class Listen:
    host: str
    port: int  # 0: any free port (tests)

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
        return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}"


def parse_listen(text: str, field: str = "listen") -> Listen:
    """``127.0.0.1:9098``, ``[::1]:9098``, ``0.0.0.0:9098`` or ``9098`` (on loopback)."""
    value = text.strip()
    if value.isascii() and value.isdigit():
        return Listen("127.0.0.1", _validate.port(value, field, low=0))
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise InvalidInput(field, text, _LISTEN_FORM)
    else:
        host, sep, port = value.rpartition(":")
        if not sep or ":" in host:
            raise InvalidInput(field, text, _LISTEN_FORM)
    if not host:
        raise InvalidInput(field, text, _LISTEN_FORM)
    if host != "localhost":
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise InvalidInput(field, text, "an IP address to listen on (" + _LISTEN_FORM + ")") from None
    return Listen(host, _validate.port(port, field, low=0))


def scrape_budget(header: str | None, default: float = DEFAULT_BUDGET) -> float:
    """Seconds a scrape may spend: the timeout Prometheus sent, less a margin; ``default``
    without one (or with one that is not a positive number of seconds)."""
    if header is None:
        return default
    text = header.strip()
    number = text.replace(".", "", 1)
    if not (number.isascii() and number.isdigit()) or len(number) > 12:
        return default
    seconds = float(text)
    return max(0.05, seconds - _MARGIN) if seconds > 0 else default


class StatusServer:
    """The HTTP server of one :class:`Monitor`."""

    def __init__(
        self,
        monitor: Monitor,
        listen: Listen,
        *,
        token: str | None = None,
        refresh: float = 10.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.monitor = monitor
        self.listen = listen
        self.token = token
        self.refresh = refresh
        self.log = log or (lambda _: None)
        self._httpd = self._bind()
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.listen.url(self.port)

    def _bind(self) -> ThreadingHTTPServer:
        family = self.listen.family
        handler = _handler(self)

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True  # TIME_WAIT from a previous run must not block a restart

        try:
            return Server((self.listen.host, self.listen.port), handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortConflict(self.listen.port, "tcp", _holder_of(self.listen), _taken_hint()) from e
            if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise InvalidInput(
                    "listen", f"{self.listen.host}:{self.listen.port}", "an address of this host"
                ) from e
            if e.errno == errno.EACCES:
                raise PortConflict(
                    self.listen.port, "tcp", "ports below 1024 need root", "choose a port in 9000-9999"
                ) from e
            raise InvalidInput(
                "listen", self.listen.url(), f"an address this host can listen on ({e.strerror})"
            ) from e

    def start(self) -> None:
        """Serve in a thread (return at once), the first store read under way."""
        self.monitor.prime()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="portctl-serve", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close the socket (a request under way is not waited for)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # Answers ---------------------------------------------------------------------------------

    def answer(self, path: str, headers: Any) -> tuple[int, str, bytes, dict[str, str]]:  # noqa: PLR0911 - one per route
        """``(status, content type, body, extra headers)`` for a GET of ``path``."""
        route = urlsplit(path).path
        if route == "/-/healthy":
            return 200, "text/plain; charset=utf-8", b"portctl is healthy.\n", {}
        if route == "/-/ready":
            if not self.monitor.ready:
                self.monitor.prime()  # a read after a failed one, so ready comes back by itself
            if self.monitor.ready:
                return 200, "text/plain; charset=utf-8", b"portctl is ready.\n", {}
            return 503, "text/plain; charset=utf-8", b"portctl is not ready: the store was never read.\n", {}
        if route not in ("/", "/metrics", "/api/status"):
            return 404, "text/plain; charset=utf-8", b"not found; try /, /metrics, /api/status\n", {}
        if self.token is not None and not _authorized(headers.get("Authorization"), self.token):
            body = b"a bearer token is needed (Authorization: Bearer ...)\n"
            return 401, "text/plain; charset=utf-8", body, {"WWW-Authenticate": 'Bearer realm="portctl"'}
        if route == "/metrics":
            from portctl.monitoring.metrics import exposition

            budget = scrape_budget(headers.get("X-Prometheus-Scrape-Timeout-Seconds"))
            body, content_type = exposition(self.monitor.snapshot(budget), headers.get("Accept"))
            return 200, content_type, body, {}
        from portctl.monitoring.page import status_html, status_json

        snapshot = self.monitor.snapshot(DEFAULT_BUDGET / 2)
        if route == "/api/status":
            body = json.dumps(status_json(snapshot), indent=2, sort_keys=True).encode()
            return 200, "application/json", body + b"\n", {}
        return 200, "text/html; charset=utf-8", status_html(snapshot, self.refresh).encode(), {}


def _handler(server: StatusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "portctl"
        sys_version = ""

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def _answer(self, *, with_body: bool) -> None:
            try:
                status, content_type, body, extra = server.answer(self.path, self.headers)
            except Exception as e:  # noqa: BLE001 - one bad request must not stop the server
                server.log(f"portctl serve: {self.path.split('?')[0]} failed: {type(e).__name__}: {e}")
                status, content_type, body, extra = 500, "text/plain; charset=utf-8", b"internal error\n", {}
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_POST(self) -> None:
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "only GET is served")

        do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            return  # no access log: a request line may carry what a proxy added

    return Handler


def _authorized(header: str | None, token: str) -> bool:
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 9110)
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


def _holder_of(listen: Listen) -> str:
    """Who holds the port, as ``portctl who`` names it."""
    from portctl.host.holders import HostPorts

    try:
        holders = HostPorts().holders(listen.port, "tcp", listen.host)
    except Exception:  # noqa: BLE001 - naming the holder is a courtesy; the refusal stands
        holders = []
    if not holders:
        return f"{listen.host}:{listen.port} is already in use"
    return "held by " + "; ".join(h.describe() for h in holders)


def _taken_hint() -> str:
    return "choose another with --listen, or free it (portctl who PORT names the holder)"
