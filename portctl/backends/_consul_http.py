"""The Consul store's connection: URL and environment, one bounded HTTP call, error mapping.

Every call goes through :meth:`ConsulHTTP.call`: a timeout on each request (a blocking query
adds its ``wait``), the shared retry policy for transient errors, ``?stale`` reads while the
cluster has no leader, and Consul's answers mapped onto portctl's error tree. The ACL token
travels only in the ``X-Consul-Token`` header and is scrubbed from every message.

A write that fails as :class:`NotApplied` was refused before it reached the Raft log (the
cluster has no leader); any other :class:`~portctl.errors.StoreUnavailable` from a write (a
timeout, a connection reset after sending) leaves its outcome unknown.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

import requests
from consul.base import Response  # type: ignore[import-untyped]
from consul.std import Consul  # type: ignore[import-untyped]

from portctl import _validate
from portctl.backends._retry import network_cause, retried
from portctl.errors import InvalidInput, Kind, StoreDenied, StoreError, StoreTimeout, StoreUnavailable

DEFAULT_PREFIX = "portctl/"
DEFAULT_TIMEOUT = 5.0
URL_FORM = (
    "consul://HOST:PORT[/PREFIX] or consul+https://HOST:PORT[/PREFIX] (consul:/// takes "
    "CONSUL_HTTP_ADDR), options timeout=SECONDS, cacert=, cert=, key=; the token only in "
    "CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE"
)
_OPTIONS = ("timeout", "cacert", "cert", "key")
NO_LEADER = "No cluster leader"

Params = Sequence[tuple[str, Any]]


class NotConsul(StoreError):
    """What answered is an HTTP server but not Consul: never read its 404s as an empty store.
    Not retried: asking again gets the same answer."""


# Consul's reads of these answer with X-Consul-Index (and X-Consul-KnownLeader,
# X-Consul-LastContact), a missing key's 404 included.
_INDEXED_READS = ("/v1/kv/", "/v1/health/", "/v1/catalog/")


class NotApplied(StoreUnavailable):
    """Consul answered that it did not apply the request (no cluster leader to forward it to)."""


@dataclass(frozen=True)
class ConsulConfig:
    """Where and how to reach Consul. ``token`` is never shown (repr, messages, URL)."""

    scheme: str  # "http" or "https"
    host: str
    port: int
    prefix: str  # ends with '/'
    timeout: float = DEFAULT_TIMEOUT
    token: str | None = field(default=None, repr=False)
    token_source: str = "CONSUL_HTTP_TOKEN"  # noqa: S105 - the variable's name, not a secret
    verify: bool | str = True
    cert: tuple[str, str] | str | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        scheme = "consul+https" if self.scheme == "https" else "consul"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.prefix}"


def parse_url(url: str, environ: Mapping[str, str] | None = None) -> ConsulConfig:
    """A :class:`ConsulConfig` from a store URL and Consul's own variables."""
    env = os.environ if environ is None else environ
    parts = _split(url, "store", URL_FORM)
    if parts.scheme not in ("consul", "consul+https"):
        raise InvalidInput(Kind("store"), url, URL_FORM)
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(Kind("store"), "a consul URL with credentials", URL_FORM)
    options = _options(parts.query)
    scheme = "https" if parts.scheme == "consul+https" else "http"
    host, port = parts.hostname, _written_port(parts.netloc, "store port")
    if not host:
        scheme, host, port = _from_addr(env.get("CONSUL_HTTP_ADDR", ""), scheme, env)
    _validate.host(host, "store host")
    token, source = _token(env)
    return ConsulConfig(
        scheme=scheme,
        host=host,
        port=(8501 if scheme == "https" else 8500) if port is None else port,
        prefix=_prefix(parts.path),
        timeout=_validate.call_timeout(options.get("timeout"), DEFAULT_TIMEOUT),
        token=token,
        token_source=source,
        verify=_verify(options, env),
        cert=_cert(options, env),
    )


def _options(query: str) -> dict[str, str]:
    raw = parse_qs(query, keep_blank_values=True)
    if "token" in raw:
        raise InvalidInput(Kind("store"), "a consul URL with a token", URL_FORM)
    unknown = sorted(set(raw) - set(_OPTIONS))
    if unknown:
        raise InvalidInput(Kind("store"), f"option {unknown[0]!r}", URL_FORM)
    return {k: v[-1] for k, v in raw.items()}


def _from_addr(addr: str, scheme: str, env: Mapping[str, str]) -> tuple[str, str, int | None]:
    """CONSUL_HTTP_ADDR: ``host:port``, ``http://host:port`` or ``https://host:port``."""
    if not addr:
        return scheme, "127.0.0.1", None
    if addr.startswith("unix://"):
        raise InvalidInput("CONSUL_HTTP_ADDR", addr, "host:port or http(s)://host:port (no unix socket)")
    parts = _split(
        addr if "://" in addr else "//" + addr, "CONSUL_HTTP_ADDR", "host:port or http(s)://host:port"
    )
    if parts.scheme in ("http", "https"):
        scheme = parts.scheme
    elif parts.scheme:
        raise InvalidInput("CONSUL_HTTP_ADDR", addr, "host:port or http(s)://host:port")
    if env.get("CONSUL_HTTP_SSL", "").lower() == "true":
        scheme = "https"
    host = parts.hostname
    if not host:
        raise InvalidInput("CONSUL_HTTP_ADDR", addr, "host:port or http(s)://host:port")
    return scheme, host, _written_port(parts.netloc, "CONSUL_HTTP_ADDR port")


def _split(url: str, field: str, expected: str) -> SplitResult:
    """``urlsplit`` that refuses what it would silently drop (tabs, newlines) or choke on ('[')."""
    if not _validate.one_line(url) or any(ch.isspace() for ch in url):
        raise InvalidInput(field, url, f"{expected}, on one line with no spaces")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bracket urlsplit let through
    except ValueError:
        raise InvalidInput(field, url, expected) from None
    return parts


def _written_port(netloc: str, field: str) -> int | None:
    """The port after the host, or None when none is written: ':' alone and port 0 are refused,
    never read as the default port."""
    address = netloc.rpartition("@")[2]
    tail = address.rpartition("]")[2] if address.startswith("[") else address
    if ":" not in tail:
        return None
    return _validate.port(tail.rpartition(":")[2], field)


def _prefix(path: str) -> str:
    path = path.strip("/")
    if not path:
        return DEFAULT_PREFIX
    _validate.key(path, "store prefix")
    return path + "/"


def _token(env: Mapping[str, str]) -> tuple[str | None, str]:
    token = env.get("CONSUL_HTTP_TOKEN", "").strip()
    if token:
        return token, "CONSUL_HTTP_TOKEN"
    path = env.get("CONSUL_HTTP_TOKEN_FILE", "")
    if not path:
        return None, "CONSUL_HTTP_TOKEN"
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise InvalidInput(
            "CONSUL_HTTP_TOKEN_FILE", path, f"a readable file holding the token ({e.strerror})"
        ) from e
    return token or None, f"CONSUL_HTTP_TOKEN_FILE ({path})"


def _verify(options: Mapping[str, str], env: Mapping[str, str]) -> bool | str:
    for path, name in ((options.get("cacert"), "cacert"), (env.get("CONSUL_CACERT"), "CONSUL_CACERT")):
        if path:
            return _readable(path, name)
    if env.get("CONSUL_CAPATH"):
        return _readable(env["CONSUL_CAPATH"], "CONSUL_CAPATH")
    return env.get("CONSUL_HTTP_SSL_VERIFY", "").lower() != "false"


def _cert(options: Mapping[str, str], env: Mapping[str, str]) -> tuple[str, str] | str | None:
    cert = options.get("cert") or env.get("CONSUL_CLIENT_CERT")
    key = options.get("key") or env.get("CONSUL_CLIENT_KEY")
    if not cert:
        if key:
            raise InvalidInput(
                "CONSUL_CLIENT_CERT", None, "a client certificate file to go with CONSUL_CLIENT_KEY"
            )
        return None
    _readable(cert, "CONSUL_CLIENT_CERT")
    return (cert, _readable(key, "CONSUL_CLIENT_KEY")) if key else cert


def _readable(path: str, name: str) -> str:
    if not os.access(path, os.R_OK):
        raise InvalidInput(name, path, "a readable file (or folder of CA certificates)")
    return path


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration: ``5s``, ``1500ms``."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


class ConsulHTTP:
    """Bounded calls to one Consul agent through py-consul's HTTP client."""

    def __init__(self, config: ConsulConfig) -> None:
        self.config = config
        client = Consul(
            host=config.host,
            port=config.port,
            scheme=config.scheme,
            verify=config.verify,
            cert=config.cert,
            connections_timeout=config.timeout,
        )
        self._http = client.http
        self._headers = {"X-Consul-Token": config.token} if config.token else {}
        self.stale_reads = 0  # reads answered with ?stale while the cluster had no leader
        self._closed = False

    def close(self) -> None:
        self._closed = True
        self._http.session.close()

    def call(
        self,
        method: str,
        path: str,
        params: Params = (),
        body: str | bytes | None = None,
        *,
        read: bool = False,
    ) -> Response:
        """One request with the retry policy; 2xx, 404, 409, 400 and 413 come back to the
        caller, everything else is raised as a store error."""
        return retried(lambda: self.once(method, path, params, body, read=read))

    def once(
        self,
        method: str,
        path: str,
        params: Params = (),
        body: str | bytes | None = None,
        *,
        read: bool = False,
    ) -> Response:
        """One try of :meth:`call`, for a caller that runs the retry policy itself."""
        response = self._send(method, path, params, body)
        self._refuse_if_not_consul(method, path, response)
        if read and response.code == 500 and NO_LEADER in str(response.body):
            # Consul's documented fallback: any server may answer a stale read.
            response = self._send(method, path, [*params, ("stale", "1")], body)
            if response.code < 300:
                self.stale_reads += 1
        self._raise_for(response, path)
        return response

    def _send(self, method: str, path: str, params: Params, body: str | bytes | None) -> Response:
        if self._closed:
            raise StoreUnavailable(f"the connection to Consul at {self.config.address} is closed")
        try:
            return self._request(method, path, params, body)
        finally:
            if self._closed:  # a call that raced close() must not leave its connection open
                self._http.session.close()

    def _request(self, method: str, path: str, params: Params, body: str | bytes | None) -> Response:
        http = self._http
        identity: Any = _identity
        try:
            if method == "GET":
                response: Response = http.get(identity, path, params=list(params), headers=self._headers)
            elif method == "PUT":
                response = http.put(
                    identity, path, params=list(params), data=body or "", headers=self._headers
                )
            else:
                response = http.delete(identity, path, params=list(params), headers=self._headers)
        except requests.Timeout as e:
            raise StoreTimeout(
                f"Consul at {self.config.address} did not answer within {self.config.timeout:g}s ({path}); "
                "check the agent, or raise ?timeout= in the store URL"
            ) from e
        except requests.RequestException as e:
            raise self._unreachable(e) from e
        return response

    def _unreachable(self, error: requests.RequestException) -> StoreUnavailable:
        cause = self._scrub(network_cause(error))
        advice = (
            "check cacert= (or CONSUL_CACERT) and that the agent serves HTTPS there"
            if cause.startswith("TLS failure")
            else "is the agent running? (set the address with the store URL or CONSUL_HTTP_ADDR)"
        )
        return StoreUnavailable(f"Consul is unreachable at {self.config.address} ({cause}); {advice}")

    def _refuse_if_not_consul(self, method: str, path: str, response: Response) -> None:
        if method != "GET" or not path.startswith(_INDEXED_READS) or response.code not in (200, 404):
            return  # errors (a refused token, no leader) come without Consul's read headers
        if any(name.lower().startswith("x-consul-") for name in response.headers):
            return
        raise NotConsul(
            f"the server at {self.config.address} is not a Consul agent (no X-Consul-* headers in "
            f"its answer {response.code} to GET {path}); check the store URL or CONSUL_HTTP_ADDR"
        )

    def _raise_for(self, response: Response, path: str) -> None:
        code = response.code
        if code in (401, 403):
            raise StoreDenied(
                self.config.url,
                self.config.token_source,
                f"Consul answered {code} {self._scrub(str(response.body))[:200]}"
                + ("" if self.config.token else " (no token was sent)"),
            )
        if response.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true":
            raise StoreDenied(
                self.config.url, self.config.token_source, f"the token may not read everything under {path}"
            )
        if code == 500 and NO_LEADER in str(response.body):
            raise NotApplied(
                f"Consul at {self.config.address} failed ({code} {self._scrub(str(response.body))[:200]})"
            )
        if code >= 500:
            raise StoreUnavailable(
                f"Consul at {self.config.address} failed ({code} {self._scrub(str(response.body))[:200]})"
            )

    def _scrub(self, text: str) -> str:
        token = self.config.token
        return text.replace(token, "[token]") if token else text


def _identity(response: Response) -> Response:
    return response
