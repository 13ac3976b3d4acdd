"""The etcd v3 store: one registry shared by many hosts.

URL forms::

    etcd://h1:2379,h2:2379,h3:2379            keys under /portctl/
    etcd://h1:2379/team-a                     keys under /team-a/
    etcd+https://h1:2379?cacert=ca.pem&cert=client.pem&key=client-key.pem
    etcd:///team-a                            endpoints from ETCDCTL_ENDPOINTS
    etcd://alice@h1:2379?password_file=/run/secrets/etcd   user alice, password from a file

Options in the query: ``timeout`` (seconds per call, default 5), ``cacert``, ``cert``, ``key``,
``password_file``. etcdctl's variables are honoured when the URL does not say:
``ETCDCTL_ENDPOINTS``, ``ETCDCTL_USER`` (``user`` or ``user:password``), ``ETCDCTL_PASSWORD``,
``ETCDCTL_CACERT``, ``ETCDCTL_CERT``, ``ETCDCTL_KEY``. A password is never accepted in the URL,
so it never shows in argv or a process list.

Mapping of the neutral interface (``portctl/backends/base.py``):

* a key ``k`` lives at ``<prefix>k``; a version is the key's ``mod_revision``;
* :meth:`transact` is one etcd txn: ``Create`` compares ``create_revision == 0``, ``Put``,
  ``Check`` and a versioned ``Delete`` compare ``mod_revision``; a failed txn reads the compared
  keys in its failure branch to name the one that failed;
* a TTL is a lease granted for the write; :meth:`refresh` keeps the key's lease alive; a put
  without a TTL keeps the key's lease (``ignore_lease``);
* the change feed is etcd's watch from ``position + 1``; a compacted position answers
  ``reset=True`` and :meth:`snapshot` re-reads at one revision, so a reader that re-watches
  from there neither loses nor repeats an event.

The client is etcd3gw (etcd's JSON gateway; no protobuf) with, added here: failover across
endpoints, password auth with the token renewed when etcd says it expired, a timeout on every
call, and the shared retry policy for transient errors.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import json
import math
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qs, urlsplit

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

from portctl import _validate
from portctl.backends._retry import Exhausted, failover, network_cause
from portctl.backends.base import (
    Capability,
    Change,
    ChangeBatch,
    Check,
    Create,
    Delete,
    Entry,
    Operation,
    Put,
    Store,
    check_operations,
)
from portctl.errors import (
    InvalidInput,
    KeyExists,
    Kind,
    NotFound,
    PortctlError,
    StoreDenied,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    VersionConflict,
)

__all__ = ["DEFAULT_PREFIX", "EtcdOptions", "EtcdStore", "parse_url"]

T = TypeVar("T")

DEFAULT_PREFIX = "portctl"
DEFAULT_TIMEOUT = 5.0
MAX_FOLLOWERS = 8  # idle watch streams kept open per store
URL_FORM = "etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?timeout=SECONDS] (or etcd+https://...)"
PASSWORD_HELP = "the password in ETCDCTL_PASSWORD, ETCDCTL_USER=user:password or ?password_file=FILE"  # noqa: S105 - help text

_TLS_ADVICE = "check ?cacert= (or ETCDCTL_CACERT) and the https:// endpoints"
_NEVER_SENT = ("connection refused", "name not resolved", "no route to host", "network unreachable")
_PASSWORD_IN_URL = re.compile(r"^[a-z+]+://[^@/?#,]*:[^@/?#]*@")

# gRPC status codes etcd's gateway puts in its error bodies.
_INVALID_ARGUMENT, _DEADLINE, _PERMISSION, _OUT_OF_RANGE, _UNAVAILABLE, _UNAUTHENTICATED = 3, 4, 7, 11, 14, 16


@dataclass(frozen=True)
class EtcdOptions:
    endpoints: tuple[str, ...]  # "http://127.0.0.1:2379"
    prefix: str  # "/portctl/"
    timeout: float = DEFAULT_TIMEOUT
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def url(self) -> str:
        tls = self.endpoints[0].startswith("https://")
        hosts = ",".join(e.split("://", 1)[1] for e in self.endpoints)
        user = f"{self.user}@" if self.user else ""
        return f"etcd{'+https' if tls else ''}://{user}{hosts}{self.prefix.rstrip('/')}"


def parse_url(url: str, environ: Mapping[str, str] | None = None) -> EtcdOptions:
    """Options from an ``etcd://`` URL and etcdctl's variables; secrets never from the URL."""
    env = os.environ if environ is None else environ
    if _PASSWORD_IN_URL.match(url):
        # Checked before parsing: a '#' or '/' in a password would cut the URL short.
        raise InvalidInput(
            "store URL", "etcd://USER:***@...", f"no password in the URL; give {PASSWORD_HELP}"
        )
    if not _validate.one_line(url) or any(ch.isspace() for ch in url):
        # urlsplit would drop tabs and newlines, not refuse them
        shown = "(not shown: the URL may hold a password)" if "@" in url else url
        raise InvalidInput("store URL", shown, f"{URL_FORM}, on one line with no spaces")
    try:
        parts = urlsplit(url)
    except ValueError:  # a stray or empty bracket
        raise InvalidInput(Kind("store"), "(not shown)" if "@" in url else url, URL_FORM) from None
    if parts.scheme not in ("etcd", "etcd+https"):
        raise InvalidInput(Kind("store"), url, URL_FORM)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if ":" in userinfo:
        raise InvalidInput("store URL", _redacted(url), f"no password in the URL; give {PASSWORD_HELP}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"timeout", "cacert", "cert", "key", "password_file"}
    if unknown:
        raise InvalidInput(
            "store URL option", sorted(unknown)[0], "timeout, cacert, cert, key or password_file"
        )
    tls = parts.scheme == "etcd+https"
    # With an '@' in the URL, a value in an error could be part of a password: never show it.
    endpoints = _endpoints(hosts, env, tls, secret="@" in url)
    user, password = _credentials(userinfo, query, env)
    return EtcdOptions(
        endpoints=endpoints,
        prefix=_prefix(parts.path),
        timeout=_validate.call_timeout(query.get("timeout"), DEFAULT_TIMEOUT),
        user=user,
        password=password,
        cacert=_file(query.get("cacert") or env.get("ETCDCTL_CACERT"), "cacert (ETCDCTL_CACERT)"),
        cert=_file(query.get("cert") or env.get("ETCDCTL_CERT"), "cert (ETCDCTL_CERT)"),
        key=_file(query.get("key") or env.get("ETCDCTL_KEY"), "key (ETCDCTL_KEY)"),
    )


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at:
        return url
    return url.replace(parts.netloc, f"{userinfo.split(':', 1)[0]}:***@{hosts}", 1)


def _endpoints(hosts: str, env: Mapping[str, str], tls: bool, secret: bool = False) -> tuple[str, ...]:
    source = "store URL"
    if not hosts:
        hosts, source = env.get("ETCDCTL_ENDPOINTS", ""), "ETCDCTL_ENDPOINTS"
    if not hosts:
        raise InvalidInput("store URL", "etcd://", f"{URL_FORM}, or ETCDCTL_ENDPOINTS set")
    secret = secret or "@" in hosts  # credentials in an endpoint: never echo any part of it
    found = []
    for item in hosts.split(","):
        scheme, sep, address = item.strip().rpartition("://")
        scheme = scheme if sep else ("https" if tls else "http")
        host, colon, port = address.rstrip("/").rpartition(":")
        bad = not (_is_port(port) and _is_host(host.strip("[]"))) if secret else False
        if scheme not in ("http", "https") or not colon or bad:
            shown = "(not shown: the URL may hold a password)" if secret else item
            raise InvalidInput(source, shown, "endpoints as HOST:PORT, separated by commas, and no password")
        _validate.port(port, f"{source} port")
        _validate.host(host.strip("[]"), f"{source} host")
        found.append(f"{scheme}://{host}:{port}")
    return tuple(found)


def _is_host(text: str) -> bool:
    try:
        _validate.host(text)
    except InvalidInput:
        return False
    return True


def _is_port(text: str) -> bool:
    try:
        _validate.port(text)
    except InvalidInput:
        return False
    return True


def _prefix(path: str) -> str:
    name = path.strip("/") or DEFAULT_PREFIX
    try:
        _validate.key(name)
    except InvalidInput:
        raise InvalidInput(
            "store URL prefix", path, "a key prefix like /portctl or /team-a/portctl"
        ) from None
    return f"/{name}/"


def _credentials(
    userinfo: str, query: Mapping[str, str], env: Mapping[str, str]
) -> tuple[str | None, str | None]:
    env_user, _, env_password = env.get("ETCDCTL_USER", "").partition(":")
    user = userinfo or env_user or None
    password = env.get("ETCDCTL_PASSWORD") or env_password or None
    password_file = _file(query.get("password_file"), "password_file")
    if password_file is not None:
        try:
            with open(password_file, encoding="utf-8") as f:
                password = f.read().strip()
        except (OSError, UnicodeDecodeError):
            raise InvalidInput("password_file", password_file, "a readable UTF-8 text file") from None
    if user and not password:
        raise InvalidInput("etcd password", f"user {user}", PASSWORD_HELP)
    return user, password if user else None


def _file(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    if not os.path.isfile(path):
        raise InvalidInput(what, path, "a readable file that exists")
    return path


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _range_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix`` (etcd's prefix range)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # prefixes always end in '/', never 0xff
    return base64.b64encode(bytes(raw)).decode()


class _Compacted(Exception):
    def __init__(self, revision: int) -> None:
        self.revision = revision


class _EndpointFailed(StoreUnavailable):
    """One endpoint failed one try: ``cause`` is short (``connection refused``); ``reached``
    says whether the request may have got there (its outcome is then unknown)."""

    advice = "check that etcd runs there"

    def __init__(self, endpoint: str, cause: str, reached: bool) -> None:
        self.endpoint = endpoint
        self.cause = cause
        self.reached = reached
        super().__init__(f"etcd at {endpoint} is unreachable ({cause}); {self.advice}")


class _EndpointTimeout(_EndpointFailed, StoreTimeout):
    advice = "check the cluster, or raise ?timeout= in the store URL"


class _Connection:
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
        advice = _TLS_ADVICE if tls else _EndpointFailed.advice
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
            raise _EndpointFailed(self.address(index), "its answer is not etcd's JSON", reached=True) from e
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

    def _unreachable(self, index: int, error: requests.RequestException, seconds: float) -> _EndpointFailed:
        cause = network_cause(error, round(seconds, 2))
        address = self.address(index)
        if isinstance(error, requests.Timeout):
            return _EndpointTimeout(address, cause, reached=not isinstance(error, requests.ConnectTimeout))
        # Refused, unresolved, TLS refused: the request never left. A reset or a broken-off
        # answer may have been applied.
        never_sent = cause in _NEVER_SENT or cause.startswith("TLS failure")
        return _EndpointFailed(address, cause, reached=not never_sent)

    def translate(self, e: Etcd3Exception, index: int | None = None) -> Exception:  # noqa: PLR0911 - one answer per error class
        code, message = _error_of(e)
        address = self.address(self.current if index is None else index)
        where = f"etcd at {address}"
        if code == _OUT_OF_RANGE and "compacted" in message:
            return _Compacted(0)
        if code == _UNAUTHENTICATED or "invalid auth token" in message:
            return StoreDenied(self.options.url, "ETCDCTL_USER and its password", message)
        if "authentication failed" in message:
            return StoreDenied(self.options.url, f"ETCDCTL_USER and {PASSWORD_HELP}", message)
        if code == _PERMISSION or "permission denied" in message:
            return StoreDenied(self.options.url, "the roles granted to ETCDCTL_USER", message)
        if "user name is empty" in message or "authentication is not enabled" in message:
            return StoreDenied(self.options.url, "ETCDCTL_USER", message)
        if code == _DEADLINE or "timed out" in message:
            return _EndpointTimeout(address, message.removeprefix("etcdserver: "), reached=True)
        if code == _INVALID_ARGUMENT:
            return StoreError(f"{where} refused the request: {message}")
        return _EndpointFailed(address, message.removeprefix("etcdserver: ") or "failed", reached=True)

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
    return error.cause if isinstance(error, _EndpointFailed) else str(error)


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


class EtcdStore(Store):
    """Allocations, registrations and colors in etcd v3, under one key prefix."""

    scheme: ClassVar[str] = "etcd"
    capabilities: ClassVar[Capability] = (
        Capability.CAS | Capability.TXN | Capability.WATCH | Capability.TTL | Capability.MULTI_HOST
    )

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self.prefix = options.prefix
        self._connection = _Connection(options)
        self._watch_lock = threading.Lock()
        self._followers: dict[tuple[str, str], _Follower] = {}  # idle streams, by where they go on
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> EtcdStore:
        return cls(parse_url(url))

    @property
    def url(self) -> str:
        return self.options.url

    def describe(self) -> str:
        return f"{self.url} (etcd, {len(self.options.endpoints)} endpoint(s), keys under {self.prefix})"

    # Reading -----------------------------------------------------------------------------

    def _range(self, prefix: str, revision: int | None = None) -> dict[str, Any]:
        _validate.prefix(prefix)
        full = self.prefix + prefix
        body: dict[str, Any] = {"key": _b64(full), "range_end": _range_end(full)}
        if revision is not None:
            body["revision"] = str(revision)
        return self._connection.call("/kv/range", body)

    def _entry(self, kv: Mapping[str, Any]) -> Entry:
        key = _unb64(kv["key"])[len(self.prefix) :]
        return Entry(key, _unb64(kv.get("value", "")), str(kv["mod_revision"]))

    def get(self, key: str) -> Entry | None:
        _validate.key(key)
        answer = self._connection.call("/kv/range", {"key": _b64(self.prefix + key)})
        kvs = answer.get("kvs") or []
        return self._entry(kvs[0]) if kvs else None

    def list(self, prefix: str = "") -> list[Entry]:
        return self.snapshot(prefix)[0]

    def snapshot(self, prefix: str = "") -> tuple[builtins.list[Entry], str]:
        answer = self._range(prefix)
        entries = sorted((self._entry(kv) for kv in answer.get("kvs") or []), key=lambda e: e.key)
        return entries, str(answer["header"]["revision"])

    def list_many(self, prefixes: Sequence[str]) -> builtins.list[Entry]:
        return self.snapshot_many(prefixes)[0]

    def snapshot_many(self, prefixes: Sequence[str]) -> tuple[builtins.list[Entry], str]:
        """One txn of range reads: every prefix at one revision, in one request."""
        if not prefixes:
            return [], self.position()
        ranges = []
        for prefix in prefixes:
            _validate.prefix(prefix)
            full = self.prefix + prefix
            ranges.append({"request_range": {"key": _b64(full), "range_end": _range_end(full)}})
        answer = self._connection.call("/kv/txn", {"success": ranges})
        found: dict[str, Entry] = {}
        for response in answer.get("responses") or []:
            for kv in (response.get("response_range") or {}).get("kvs") or []:
                entry = self._entry(kv)
                found[entry.key] = entry
        return sorted(found.values(), key=lambda e: e.key), str(answer["header"]["revision"])

    def position(self) -> str:
        answer = self._connection.call("/kv/range", {"key": _b64(self.prefix), "count_only": True})
        return str(answer["header"]["revision"])

    # Writing -----------------------------------------------------------------------------

    def transact(self, operations: Sequence[Operation]) -> dict[str, Entry]:
        check_operations(operations)
        if not operations:
            return {}
        leases = self._grant_leases(operations)
        body = self._txn(operations, leases)
        unanswered = 0  # tries that may have landed

        def send() -> dict[str, Any]:
            nonlocal unanswered
            try:
                return self._connection.once("/kv/txn", body)
            except StoreUnavailable as e:
                unanswered += getattr(e, "reached", True)
                raise

        try:
            answer = self._connection.each(send)
        except StoreUnavailable:
            raise  # the txn may have landed: its leases must live (unused ones expire)
        except BaseException:
            self._revoke(leases.values())
            raise
        if not answer.get("succeeded"):
            if unanswered:
                # The first try's answer was lost: it may have landed, and this retry then
                # failed on our own write. If the store holds what we wrote, it did.
                landed = self.landed(operations)
                if landed is not None:
                    return landed
            else:
                self._revoke(leases.values())
            raise self._failure(operations, answer)
        revision = str(answer["header"]["revision"])
        return {
            op.key: Entry(op.key, op.value, revision, op.ttl)
            for op in operations
            if isinstance(op, (Create, Put))
        }

    def _grant_leases(self, operations: Sequence[Operation]) -> dict[float, str]:
        leases: dict[float, str] = {}
        for op in operations:
            ttl = getattr(op, "ttl", None)
            if ttl is not None and ttl not in leases:
                # etcd leases are whole seconds, and etcd raises a TTL below its minimum.
                answer = self._connection.call("/lease/grant", {"TTL": max(1, math.ceil(ttl))})
                leases[ttl] = str(answer["ID"])
        return leases

    def _revoke(self, leases: Iterable[str]) -> None:
        for lease in leases:
            with contextlib.suppress(StoreError, _Compacted):  # an unused lease expires on its own
                self._connection.call("/kv/lease/revoke", {"ID": lease})

    def _txn(self, operations: Sequence[Operation], leases: Mapping[float, str]) -> dict[str, Any]:
        compare: list[dict[str, Any]] = []
        success: list[dict[str, Any]] = []
        failure: list[dict[str, Any]] = []
        for op in operations:
            key = _b64(self.prefix + op.key)
            condition = _condition(op)
            if condition is not None:
                compare.append({"key": key, **condition})
                failure.append({"request_range": {"key": key}})
            if isinstance(op, (Create, Put)):
                put: dict[str, Any] = {"key": key, "value": _b64(op.value)}
                if op.ttl is not None:
                    put["lease"] = leases[op.ttl]
                elif isinstance(op, Put) and op.keep_ttl:
                    put["ignore_lease"] = True
                success.append({"request_put": put})
            elif isinstance(op, Delete):
                success.append({"request_delete_range": {"key": key}})
        return {"compare": compare, "success": success, "failure": failure}

    def _failure(self, operations: Sequence[Operation], answer: Mapping[str, Any]) -> Exception:
        current: dict[str, str] = {}
        for response in answer.get("responses") or []:
            for kv in (response.get("response_range") or {}).get("kvs") or []:
                current[_unb64(kv["key"])[len(self.prefix) :]] = str(kv["mod_revision"])
        for op in operations:
            have = current.get(op.key)
            if isinstance(op, Create) and have is not None:
                return KeyExists(op.key)
            expected = None if isinstance(op, Create) else op.version
            conditional = isinstance(op, (Put, Check)) or (isinstance(op, Delete) and expected is not None)
            if conditional and have != expected:
                return VersionConflict(op.key)
        return VersionConflict(operations[0].key)  # changed and changed back between the reads

    def refresh(self, key: str) -> Entry:
        _validate.key(key)
        answer = self._connection.call("/kv/range", {"key": _b64(self.prefix + key)})
        kvs = answer.get("kvs") or []
        if not kvs:
            raise NotFound(f"key {key!r} does not exist or its TTL already expired")
        lease = kvs[0].get("lease")
        if lease and lease != "0":
            kept = self._connection.call("/lease/keepalive", {"ID": lease})
            ttl = (kept.get("result") or kept).get("TTL")
            if not ttl or int(ttl) <= 0:
                raise NotFound(f"key {key!r}: its lease expired")
            return Entry(key, _unb64(kvs[0].get("value", "")), str(kvs[0]["mod_revision"]), float(ttl))
        return self._entry(kvs[0])

    # Change feed -------------------------------------------------------------------------

    def watch(self, prefix: str, position: str, timeout: float) -> ChangeBatch:
        """Changes after ``position``. A reader that goes on from the position it was last
        given keeps one watch stream open (read by a thread), so a change costs no request.
        Each open stream serves one reader at a time: it is taken out of the pool while read."""
        _validate.prefix(prefix)
        if not position.isdigit():
            raise InvalidInput("position", position, "a position returned by this etcd store")
        with self._watch_lock:
            if self._closed:
                raise StoreUnavailable(f"the store {self.url} is closed")
            follower = self._followers.pop((prefix, position), None)
        if follower is None or follower.closed:
            follower = self._follow(prefix, position)
        item = follower.next(timeout)
        if item is None or (isinstance(item, ChangeBatch) and not item.reset):
            self._put_back(follower)
            return item if item is not None else ChangeBatch(position)
        follower.close()
        if isinstance(item, StoreDenied) and self.options.user and "invalid auth token" in str(item):
            self._connection.authenticate()  # the token expired: renew it; the next call reopens
            return ChangeBatch(position)
        if isinstance(item, Exception):
            raise item
        return item

    def _put_back(self, follower: _Follower) -> None:
        with self._watch_lock:
            key = (follower.prefix, follower.position)
            if self._closed or key in self._followers:
                follower.close()
                return
            self._followers[key] = follower
            while len(self._followers) > MAX_FOLLOWERS:  # readers that went away
                self._followers.pop(next(iter(self._followers))).close()

    def _follow(self, prefix: str, position: str) -> _Follower:
        full = self.prefix + prefix
        request = {
            "create_request": {
                "key": _b64(full),
                "range_end": _range_end(full),
                "start_revision": str(int(position) + 1),
            }
        }
        try:
            response = self._connection.watch_stream(request)
        except StoreDenied as e:
            if self.options.user is None or "invalid auth token" not in str(e):
                raise
            self._connection.authenticate()
            response = self._connection.watch_stream(request)
        sock = _socket_of(response)
        if sock is not None:
            sock.settimeout(None)  # the headers came within the timeout; the stream may be quiet
        return _Follower(self, prefix, position, response)

    def _batch_of(self, message: Mapping[str, Any]) -> ChangeBatch | None:
        """The change batch one watch message carries, if any; raises for an ended watch."""
        result = message.get("result") or {}
        if "error" in message:
            raise self._connection.translate(Etcd3Exception(json.dumps(message["error"])))
        if result.get("compact_revision") not in (None, "0", 0):
            # Too old: the reader re-reads with snapshot(), which gives the position.
            return ChangeBatch(str(result["compact_revision"]), (), reset=True)
        if result.get("canceled"):
            reason = result.get("cancel_reason") or "the watch was cancelled"
            raise StoreUnavailable(f"etcd at {self._connection.endpoint} ended the watch: {reason}")
        events = result.get("events") or []
        if not events:
            return None
        changes = tuple(self._change(event) for event in events)
        return ChangeBatch(str(max(int(event["kv"]["mod_revision"]) for event in events)), changes)

    def _change(self, event: Mapping[str, Any]) -> Change:
        kv = event["kv"]
        key = _unb64(kv["key"])[len(self.prefix) :]
        if event.get("type") == "DELETE":
            return Change("delete", key, None)
        return Change("put", key, self._entry(kv))

    def compact(self, revision: str | None = None) -> None:
        """Drop history before ``revision`` (now, by default), as etcd's auto-compaction does."""
        target = revision or self.position()
        self._connection.call("/kv/compaction", {"revision": target, "physical": True})

    def close(self) -> None:
        with self._watch_lock:
            self._closed = True
            followers, self._followers = list(self._followers.values()), {}
        for follower in followers:
            follower.close()
        self._connection.close()


class _Follower:
    """One open etcd watch stream; a daemon thread reads it into a queue."""

    def __init__(self, store: EtcdStore, prefix: str, position: str, response: requests.Response) -> None:
        self.store = store
        self.prefix = prefix
        self.position = position  # the last position handed out
        self.response = response
        self.items: queue.Queue[ChangeBatch | Exception] = queue.Queue()
        self.closed = False
        self._keep_alive(_socket_of(response))
        self.thread = threading.Thread(target=self._read, name="portctl-etcd-watch", daemon=True)
        self.thread.start()

    def next(self, timeout: float) -> ChangeBatch | Exception | None:
        try:
            item = self.items.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if isinstance(item, ChangeBatch) and not item.reset:
            self.position = item.position
        return item

    def _read(self) -> None:
        endpoint = self.store._connection.endpoint
        try:
            for message in _messages(self.response):
                batch = self.store._batch_of(message)
                if batch is not None:
                    self.items.put(batch)
                    if batch.reset:
                        return
            ended: Exception = StoreUnavailable(f"etcd at {endpoint} ended the watch stream")
        except PortctlError as e:
            ended = e
        except Exception as e:  # noqa: BLE001 - whatever ends the stream must reach the reader
            ended = StoreUnavailable(f"etcd at {endpoint} dropped the watch ({network_cause(e)})")
        if not self.closed:
            self.items.put(ended)

    @staticmethod
    def _keep_alive(sock: socket.socket | None) -> None:
        """A member that vanishes without a reset (power loss, partition) would leave the stream
        silent for ever; TCP keep-alive probes end it within about 25 s."""
        if sock is None:
            return
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)

    def close(self) -> None:
        """Stop reading: shut the socket down (a blocked read returns), then close."""
        if self.closed:
            return
        self.closed = True
        self.items.put(StoreUnavailable("the watch was closed"))  # wakes a reader waiting in next()
        sock = _socket_of(self.response)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=2)
        self.response.close()


def _socket_of(response: requests.Response) -> socket.socket | None:
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _condition(op: Operation) -> dict[str, Any] | None:
    if isinstance(op, Create) or (isinstance(op, Check) and op.version is None):
        return {"target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    version = op.version if isinstance(op, (Put, Check, Delete)) else None
    if version is None:
        return None
    if not version.isdigit():
        version = "-1"  # a version from another store never matches
    return {"target": "MOD", "result": "EQUAL", "mod_revision": version}


def _messages(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The JSON messages of a gateway stream, one per line, as they arrive."""
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)
