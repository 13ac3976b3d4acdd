"""The etcd store's connection: etcd's JSON gateway over HTTP, failover across endpoints,
password auth, and etcd's answers mapped onto portctl's error tree.

Every request goes through :class:`Connection`: a timeout on each try, the endpoints tried in
turn within the call's timeout (:func:`portctl.backends._retry.failover`), the auth token
renewed once when etcd says it expired, and an answer that is not etcd's (another server on
the port) refused rather than read as empty. Keys and values travel base64-encoded
(:func:`b64`, :func:`unb64`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

from portctl.backends._etcd_url import PASSWORD_HELP, EtcdOptions
from portctl.backends._retry import Exhausted, failover, network_cause
from portctl.backends.base import Entry
from portctl.errors import StoreDenied, StoreError, StoreTimeout, StoreUnavailable

__all__ = [
    "Compacted",
    "Connection",
    "EndpointFailed",
    "EndpointTimeout",
    "b64",
    "entry_of",
    "range_end",
    "unb64",
]

T = TypeVar("T")

_TLS_ADVICE = "check ?cacert= (or ETCDCTL_CACERT) and the https:// endpoints"
_NEVER_SENT = ("connection refused", "name not resolved", "no route to host", "network unreachable")

# gRPC status codes etcd's gateway puts in its error bodies.
_INVALID_ARGUMENT, _DEADLINE, _PERMISSION, _OUT_OF_RANGE, _UNAVAILABLE, _UNAUTHENTICATED = 3, 4, 7, 11, 14, 16


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    # base64.b64decode without its argument conversion: the same decoding, twice as fast
    # (a range of thousands of keys decodes two strings per key).
    return binascii.a2b_base64(text).decode()


def range_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix`` (etcd's prefix range)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # prefixes always end in '/', never 0xff
    return base64.b64encode(bytes(raw)).decode()


def entry_of(kv: Mapping[str, Any], root: str) -> Entry:
    """The entry of one key-value of etcd's answer, its key relative to the store's ``root``."""
    key = unb64(kv["key"])[len(root) :]
    return Entry(key, unb64(kv.get("value", "")), str(kv["mod_revision"]))


class Compacted(Exception):
    def __init__(self, revision: int) -> None:
        self.revision = revision


class EndpointFailed(StoreUnavailable):
    """One endpoint failed one try: ``cause`` is short (``connection refused``); ``reached``
    says whether the request may have got there (its outcome is then unknown)."""

    advice = "check that etcd runs there"

    def __init__(self, endpoint: str, cause: str, reached: bool) -> None:
        self.endpoint = endpoint
        self.cause = cause
        self.reached = reached
        super().__init__(f"etcd at {endpoint} is unreachable ({cause}); {self.advice}")


class EndpointTimeout(EndpointFailed, StoreTimeout):
    advice = "check the cluster, or raise ?timeout= in the store URL"


class Connection:
    """etcd3gw clients for every endpoint over one HTTP session, with failover and auth.

    A call tries every endpoint within the call's timeout (see :func:`_retry.failover`): the
    last one that answered first, endpoints that failed last, and the rest in the order
    listed. A tenth of the budget (at most 0.5 s) is kept back to ask the members that were
    reached but did not answer whether the cluster has a leader, so a cluster without quorum
    says so."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self.session = requests.Session()
        # Proxy variables are read once here, not on every request (as requests would).
        if any(name.lower().endswith("_proxy") for name in os.environ):
            self.session.proxies.update(requests.utils.get_environ_proxies(options.endpoints[0]))
        self.session.trust_env = False
        if options.cacert:
            self.session.verify = options.cacert
        if options.cert and options.key:
            self.session.cert = (options.cert, options.key)
        self.clients = [_client(endpoint, self.session) for endpoint in options.endpoints]
        self.current = 0
        self._down: set[int] = set()  # endpoints whose last try failed: tried last
        self._try = threading.local()  # the endpoint and seconds of the try in progress
        self._auth_lock = threading.Lock()
        self._token: str | None = None

    @property
    def endpoint(self) -> str:
        return self.address(self.current)

    def address(self, index: int) -> str:
        return self.options.endpoints[index].split("://", 1)[1]

    def order(self) -> list[int]:
        count = len(self.clients)
        ring = [(self.current + i) % count for i in range(count)]
        return sorted(ring, key=lambda i: i in self._down)  # stable: the ring order otherwise

    def trying(self) -> tuple[int, float]:
        """The endpoint and the seconds of the try in progress in this thread (see :meth:`each`);
        outside one, the current endpoint and the whole timeout."""
        target: tuple[int, float] | None = getattr(self._try, "target", None)
        return target or (self.current, self.options.timeout)

    def each(self, attempt: Callable[[], T]) -> T:
        """``attempt()`` on one endpoint after another (:meth:`trying` says which, and for how
        long), within the call's timeout; the error names every endpoint and its cause when none
        answered."""
        budget = self.options.timeout
        deadline = time.monotonic() + budget

        def tracked(index: int, seconds: float) -> T:
            outer = getattr(self._try, "target", None)
            self._try.target = (index, seconds)
            try:
                result = attempt()
            except StoreUnavailable:
                self._down.add(index)
                raise
            finally:
                self._try.target = outer
            self._down.discard(index)
            self.current = index
            return result

        try:
            return failover(self.order(), tracked, budget - min(0.5, budget / 10))
        except Exhausted as e:
            failures: dict[int, StoreUnavailable] = e.failures  # type: ignore[assignment]
        raise self._exhausted(failures, deadline) from failures[max(failures)] if failures else None

    def _exhausted(self, failures: Mapping[int, StoreUnavailable], deadline: float) -> StoreUnavailable:
        tried = [f"{self.address(i)} ({_cause(failures[i])})" for i in sorted(failures)]
        untried = [self.address(i) for i in range(len(self.clients)) if i not in failures]
        if untried:
            tried.append(f"{', '.join(untried)} (not tried: out of time)")
        listed = ", ".join(tried)
        quorum = self._quorum(failures, deadline)
        if quorum:
            return StoreUnavailable(f"etcd has no leader: {quorum}; {listed}")
        if any(isinstance(e, StoreTimeout) for e in failures.values()) or untried:
            return StoreTimeout(
                f"etcd did not answer: {listed}; check the cluster, or raise ?timeout= in the store "
                f"URL (now {self.options.timeout:g}s)"
            )
        tls = any(_cause(e).startswith("TLS failure") for e in failures.values())
        advice = _TLS_ADVICE if tls else EndpointFailed.advice
        return StoreUnavailable(f"etcd is unreachable: {listed}; {advice}")

    def _quorum(self, failures: Mapping[int, StoreUnavailable], deadline: float) -> str | None:
        """How the cluster lacks a leader, asked of the members that were reached, or None."""
        reached = [index for index, error in failures.items() if getattr(error, "reached", True)]
        statuses = {}
        for n, index in enumerate(reached):
            left = deadline - time.monotonic()
            if left <= 0.01:
                break
            with contextlib.suppress(StoreError):  # a silent one costs only its share
                statuses[index] = self._post(index, "/maintenance/status", {}, left / (len(reached) - n))
        if not statuses or any(_leader(status) for status in statuses.values()):
            return None
        answering = len({str(s.get("header", {}).get("member_id")) for s in statuses.values()})
        members = self._member_count(next(iter(statuses)), deadline)
        if members is None:
            return f"no quorum ({answering} member(s) answer, without a leader)"
        return f"no quorum ({answering} of {members} members answer; {members // 2 + 1} must run)"

    def _member_count(self, index: int, deadline: float) -> int | None:
        left = deadline - time.monotonic()
        if left <= 0.01:
            return None
        try:
            return len(self._post(index, "/cluster/member/list", {}, left).get("members") or [])
        except StoreError:
            return None

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.each(lambda: self.once(path, body))

    def once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One try at the endpoint of :meth:`trying` (authenticating first when a user is set)."""
        index, seconds = self.trying()
        if self.options.user and self._token is None:
            self._authenticate_at(index, seconds)
        try:
            return self._post(index, path, body, seconds)
        except StoreDenied as e:
            if self.options.user is None or "invalid auth token" not in str(e):
                raise
            self._authenticate_at(index, seconds)  # the token expired: renew it once and repeat
            return self._post(index, path, body, seconds)

    def _post(self, index: int, path: str, body: dict[str, Any], seconds: float) -> dict[str, Any]:
        client = self.clients[index]
        try:
            response = self.session.post(client.get_url(path), json=body, timeout=(seconds, seconds))
        except requests.RequestException as e:
            raise self._unreachable(index, e, seconds) from e
        if response.status_code != 200:
            if not _is_etcd_error(response.text):
                raise self._not_etcd(index, path, f"{response.status_code} {response.reason}")
            raise self.translate(Etcd3Exception(response.text, response.reason), index)
        try:
            answer: dict[str, Any] = response.json()
        except ValueError as e:
            # Not etcd, or an answer broken off (a member killed while it was sending): the
            # call may or may not have been applied, as with a timeout.
            raise EndpointFailed(self.address(index), "its answer is not etcd's JSON", reached=True) from e
        if not _has_etcd_header(answer, path):
            raise self._not_etcd(index, path, "200 without etcd's header")
        return answer

    def _not_etcd(self, index: int, path: str, answer: str) -> StoreError:
        """A server that answers, but not as etcd's gateway does (a JSON ``header`` object with
        cluster_id and revision, or a JSON error with a gRPC code): never read as empty."""
        return StoreError(
            f"the server at {self.options.endpoints[index]} is not an etcd server (it answered {answer} "
            f"to POST /v3{path}); check the store URL or ETCDCTL_ENDPOINTS"
        )

    def _unreachable(self, index: int, error: requests.RequestException, seconds: float) -> EndpointFailed:
        cause = network_cause(error, round(seconds, 2))
        address = self.address(index)
        if isinstance(error, requests.Timeout):
            return EndpointTimeout(address, cause, reached=not isinstance(error, requests.ConnectTimeout))
        # Refused, unresolved, TLS refused: the request never left. A reset or a broken-off
        # answer may have been applied.
        never_sent = cause in _NEVER_SENT or cause.startswith("TLS failure")
        return EndpointFailed(address, cause, reached=not never_sent)

    def translate(self, e: Etcd3Exception, index: int | None = None) -> Exception:  # noqa: PLR0911 - one answer per error class
        code, message = _error_of(e)
        address = self.address(self.current if index is None else index)
        where = f"etcd at {address}"
        if code == _OUT_OF_RANGE and "compacted" in message:
            return Compacted(0)
        if code == _UNAUTHENTICATED or "invalid auth token" in message:
            return StoreDenied(self.options.url, "ETCDCTL_USER and its password", message)
        if "authentication failed" in message:
            return StoreDenied(self.options.url, f"ETCDCTL_USER and {PASSWORD_HELP}", message)
        if code == _PERMISSION or "permission denied" in message:
            return StoreDenied(self.options.url, "the roles granted to ETCDCTL_USER", message)
        if "user name is empty" in message or "authentication is not enabled" in message:
            return StoreDenied(self.options.url, "ETCDCTL_USER", message)
        if code == _DEADLINE or "timed out" in message:
            return EndpointTimeout(address, message.removeprefix("etcdserver: "), reached=True)
        if code == _INVALID_ARGUMENT:
            return StoreError(f"{where} refused the request: {message}")
        return EndpointFailed(address, message.removeprefix("etcdserver: ") or "failed", reached=True)

    def authenticate(self) -> None:
        self.each(lambda: self._authenticate_at(*self.trying()))

    def _authenticate_at(self, index: int, seconds: float) -> None:
        with self._auth_lock:
            self.session.headers.pop("Authorization", None)
            body = {"name": self.options.user, "password": self.options.password}
            answer = self._post(index, "/auth/authenticate", body, seconds)
            self._token = str(answer["token"])
            self.session.headers["Authorization"] = self._token

    def watch_stream(self, body: dict[str, Any]) -> requests.Response:
        """A watch stream whose headers came within the call's timeout."""

        def open_stream() -> requests.Response:
            index, seconds = self.trying()
            if self.options.user and self._token is None:
                self._authenticate_at(index, seconds)
            url = self.clients[index].get_url("/watch")
            try:
                response = self.session.post(url, json=body, stream=True, timeout=(seconds, seconds))
            except requests.RequestException as e:
                raise self._unreachable(index, e, seconds) from e
            if response.status_code != 200:
                text = response.text
                response.close()
                raise self.translate(Etcd3Exception(text, response.reason), index)
            return response

        return self.each(open_stream)

    def close(self) -> None:
        self.session.close()


def _cause(error: StoreUnavailable) -> str:
    return error.cause if isinstance(error, EndpointFailed) else str(error)


def _leader(status: Mapping[str, Any]) -> bool:
    errors = " ".join(str(e) for e in status.get("errors") or [])
    return status.get("leader") not in (None, "", "0", 0) and "no leader" not in errors


def _client(endpoint: str, session: requests.Session) -> Etcd3Client:
    protocol, address = endpoint.split("://", 1)
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    return Etcd3Client(host=host, port=int(port), protocol=protocol, session=session, api_path="/v3/")


_STREAMING = ("/lease/keepalive", "/watch")  # answers wrapped in ``result``, or an ``error``


def _has_etcd_header(answer: object, path: str) -> bool:
    """etcd's gateway puts a ``header`` (cluster_id, revision...) in every answer; a streaming
    call (lease keep-alive) wraps it in ``result``, or answers ``error``. A bare ``error``
    object anywhere else is some other JSON server's (JSON-RPC answers 200 with one)."""
    if not isinstance(answer, dict):
        return False
    streaming = path.endswith(_STREAMING)
    inner = answer.get("result") if streaming else None
    found = inner.get("header") if isinstance(inner, dict) else answer.get("header")
    if isinstance(found, dict) and "cluster_id" in found:
        return True
    return streaming and isinstance(answer.get("error"), dict)


def _is_etcd_error(text: str) -> bool:
    """Whether an error answer is etcd's: a JSON object with a gRPC code or an error text."""
    try:
        body = json.loads(text)
    except ValueError:
        return False
    return isinstance(body, dict) and ("code" in body or "error" in body)


def _error_of(e: Etcd3Exception) -> tuple[int | None, str]:
    text = e.detail_text or ""
    try:
        body = json.loads(text)
    except ValueError:
        return None, (text or " ".join(str(a) for a in e.args)).strip()
    if not isinstance(body, dict):
        return None, text
    code = body.get("code")
    return (int(code) if code is not None else None), str(body.get("error") or body.get("message") or text)
