"""The Consul store: one registry shared by many hosts, with checks that Consul runs.

URL forms::

    consul://127.0.0.1:8500                   keys under portctl/ in Consul's KV
    consul://127.0.0.1:8500/team-a/portctl    keys under team-a/portctl/
    consul+https://consul.example:8501?cacert=ca.pem&cert=client.pem&key=client-key.pem
    consul:///team-a                          address from CONSUL_HTTP_ADDR

Options in the query: ``timeout`` (seconds per call, default 5), ``cacert``, ``cert``, ``key``.
Consul's own variables are honoured: ``CONSUL_HTTP_ADDR`` (when the URL names no host),
``CONSUL_HTTP_SSL``, ``CONSUL_HTTP_SSL_VERIFY``, ``CONSUL_HTTP_TOKEN`` or
``CONSUL_HTTP_TOKEN_FILE``, ``CONSUL_CACERT``/``CONSUL_CAPATH``, ``CONSUL_CLIENT_CERT`` and
``CONSUL_CLIENT_KEY``. The token is sent only as the ``X-Consul-Token`` header; a URL carrying
one is refused, so it never shows in argv or a process list.

Mapping of the neutral interface (``portctl/backends/base.py``):

* a key ``k`` lives in KV at ``<prefix>k``, with portctl's mark in its ``Flags`` (the upper 32
  bits; the lower ones hold its TTL in ms). A key under the prefix without the mark was written
  by someone else: it reads as it is, and portctl refuses to overwrite or delete it, naming it;
* a version is the key's ``ModifyIndex`` (plus the session holding it, for a key with a TTL);
* :meth:`transact` is one ``/v1/txn`` (at most 64 Consul operations): ``Create`` is ``cas`` with
  index 0, ``Put`` ``cas``/``check-index``, ``Expect`` ``check-index`` or ``check-not-exists``,
  a versioned ``Delete`` ``delete-cas``; Consul's 409 names the failed operation;
* a TTL is a session (TTL, behavior ``delete``, no lock-delay) holding the key; :meth:`refresh`
  renews it. Consul expires a session between its TTL and twice it, and refuses TTLs below its
  ``session_ttl_min`` (10s by default). A ``Put`` without a TTL keeps the session (the key keeps
  its TTL) unless ``keep_ttl`` is False: then the txn unlocks the key and the session goes;
* registry entries are also agent services with Consul-run checks, and health keys are built
  from Consul's health (see :mod:`portctl.backends._consul_services`). A health write updates a
  TTL check (``/v1/agent/check/update``); for TCP and HTTP checks Consul's own result stands;
* a leased registration (an entry written with a TTL, ``register --lease``) also gets a Consul
  TTL check ``portctl-lease:<id>`` whose TTL is the lease; :meth:`refresh` of the entry passes it
  with the session. When the keeper stops, the check turns critical one lease later - Consul DNS,
  ``consul_sd``, Traefik and portctl's resolvers skip the instance - and Consul deregisters the
  service after ``DeregisterCriticalServiceAfter`` (the lease, at least Consul's minimum of 1m;
  Consul's reaper runs every 30s). A :meth:`refresh` that finds the entry gone (its session
  expired) deregisters the service at once, unless the lease check passes again (registered
  anew meanwhile) or the service is not this entry's;
* a transaction whose answer was lost (a timeout, a connection reset after sending) is retried
  once; when the retry fails its conditions because the first try landed, the write is reported
  as done (:meth:`~portctl.backends.base.Store.landed`). After a try whose outcome is unknown,
  nothing is cleaned up: its sessions expire on their own, its agent services stay;
* the change feed follows blocking queries on the KV prefix and on ``/v1/health/state/any``
  (see :mod:`portctl.backends._consul_watch`); a position is a snapshot this store object keeps,
  so a position from another process, or one forgotten, answers ``reset=True``, as does an
  index that went backwards.

Reads fall back to ``?stale`` while the cluster has no leader; writes then fail as unavailable.
"""

from __future__ import annotations

import base64
import builtins
import collections
import contextlib
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from portctl import _validate
from portctl.backends import _consul_services as services
from portctl.backends._consul_http import ConsulConfig, ConsulHTTP, go_duration, parse_url
from portctl.backends._consul_kv import (
    _POSITION,
    _VERSION,
    MARK,
    SNAPSHOTS,
    TTL_MASK,
    WATCH_SLICE,
    _check_digests,
    _diff,
    _fresh,
    _is_key,
    _json,
    _kv_items,
    _ok,
    _Snapshot,
)
from portctl.backends._consul_txn import ConsulTransactions
from portctl.backends._consul_watch import WAIT, Feed, Mark
from portctl.backends.base import (
    Capability,
    ChangeBatch,
    Entry,
    Store,
)
from portctl.errors import (
    InvalidInput,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from portctl.keys import parse_registry_key

__all__ = ["ConsulStore"]


class ConsulStore(ConsulTransactions, Store):
    scheme: ClassVar[str] = "consul"
    capabilities: ClassVar[Capability] = (
        Capability.CAS
        | Capability.TXN
        | Capability.WATCH
        | Capability.TTL
        | Capability.MULTI_HOST
        | Capability.RUNS_CHECKS
    )

    def __init__(self, config: ConsulConfig) -> None:
        self.config = config
        self.prefix = config.prefix
        self._http = ConsulHTTP(config)
        self._lock = threading.Lock()
        self._feed: Feed | None = None
        self._feed_http: ConsulHTTP | None = None
        self._nonce = secrets.token_hex(6)
        self._serial = 0
        self._snapshots: collections.OrderedDict[str, _Snapshot] = collections.OrderedDict()
        self._health_cache: dict[str, tuple[Any, builtins.list[dict[str, Any]]]] = {}
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> ConsulStore:
        return cls(parse_url(url))

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def stale_reads(self) -> int:
        """How many reads were answered with ``?stale`` because the cluster had no leader."""
        feed_http = self._feed_http
        return self._http.stale_reads + (feed_http.stale_reads if feed_http else 0)

    def describe(self) -> str:
        response = self._http.call("GET", "/v1/status/leader", read=True)
        leader = str(_json(response.body) or "") or "none (reads are stale)"
        return f"Consul at {self.config.address} (keys under {self.prefix}, leader {leader})"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            feed, self._feed = self._feed, None
            feed_http, self._feed_http = self._feed_http, None
        if feed is not None:
            feed.stop()
        if feed_http is not None:
            feed_http.close()  # a blocking query in flight closes its connection when it returns
        self._http.close()

    # Reading ---------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        _validate.key(key)
        if services.is_health(key):
            return self._health(key)
        raw = self._kv_get(key)
        return None if raw is None else self._entry(raw)

    def list(self, prefix: str = "") -> builtins.list[Entry]:
        _validate.prefix(prefix)
        # A prefix inside one instance's folder still needs its entry, to build its health.
        parts = prefix.split("/")
        kv_prefix = "/".join(parts[:4]) + "/" if parts[0] == "registry" and len(parts) > 4 else prefix
        found = {e.key: e for e in self._entries(self._kv_list(kv_prefix))}
        found.update(self._healths(found.values(), {}))
        return [found[k] for k in sorted(found) if k.startswith(prefix)]

    def snapshot(self, prefix: str = "") -> tuple[builtins.list[Entry], str]:
        """Every entry under ``prefix`` and a position, from one read."""
        _validate.prefix(prefix)
        entries, position = self._read_all()
        return [entries[k] for k in sorted(entries) if k.startswith(prefix)], position

    def _kv_get(self, key: str) -> dict[str, Any] | None:
        response = self._http.call("GET", self._kv_path(key), read=True)
        if response.code == 404:
            return None
        found = _json(response.body)
        return found[0] if isinstance(found, list) and found else None

    def _kv_list(self, prefix: str) -> builtins.list[dict[str, Any]]:
        response = self._http.call("GET", self._kv_path(prefix), [("recurse", "1")], read=True)
        return _kv_items(response.code, response.body)

    def _kv_path(self, key: str) -> str:
        return "/v1/kv/" + self.prefix + key

    def _entries(self, items: Iterable[dict[str, Any]]) -> builtins.list[Entry]:
        out = []
        for raw in items:
            key = str(raw.get("Key", ""))[len(self.prefix) :]
            if _is_key(key) and not services.is_health(key):
                out.append(self._entry(raw))
        return out

    def _entry(self, raw: dict[str, Any]) -> Entry:
        key = str(raw["Key"])[len(self.prefix) :]
        value = base64.b64decode(raw["Value"]).decode("utf-8", "replace") if raw.get("Value") else ""
        flags = int(raw.get("Flags") or 0)
        ours = flags >> 32 == MARK
        ttl = (flags & TTL_MASK) / 1000 if ours and flags & TTL_MASK else None
        version = ("" if ours else "x") + str(raw["ModifyIndex"])
        if raw.get("Session"):
            version += f"~{raw['Session']}@{flags & TTL_MASK if ours else 0}"
        return Entry(key, value, version, ttl)

    # Health keys ------------------------------------------------------------------------

    def _health(self, key: str) -> Entry | None:
        entry_raw = self._kv_get(services.entry_of(key))
        if entry_raw is None:
            return None
        found = self._healths([self._entry(entry_raw)], {})
        return found.get(key)

    def _healths(
        self, entries: Iterable[Entry], cached: dict[str, builtins.list[dict[str, Any]]]
    ) -> dict[str, Entry]:
        """The health entries of the registry entries among ``entries``, one health read per
        service unless ``cached`` holds its answer."""
        by_service: dict[str, builtins.list[str]] = {}
        for e in entries:
            parts = parse_registry_key(e.key)
            if parts is not None and parts[3] == "entry":
                by_service.setdefault(parts[1], []).append(e.key)
        out = {}
        for service, keys in by_service.items():
            results = cached[service] if service in cached else self._health_results(service)
            for key in keys:
                instance = (parse_registry_key(key) or ("", "", "", ""))[2]
                value, version = services.health_value(services.health_record(instance, results))
                out[services.health_of(key)] = Entry(services.health_of(key), value, version)
        return out

    def _health_results(self, service: str) -> builtins.list[dict[str, Any]]:
        response = self._http.call("GET", f"/v1/health/service/{service}", read=True)
        found = _json(response.body) if response.code == 200 else []
        return found if isinstance(found, list) else []

    # Writing ---------------------------------------------------------------------------

    def refresh(self, key: str) -> Entry:
        _validate.key(key)
        current = self.get(key)
        if current is None:
            self._release_lapsed(key)
            raise NotFound(f"key {key!r} does not exist or its TTL already expired")
        match = _VERSION.fullmatch(current.version)
        session = match[3] if match else None
        parts = parse_registry_key(key)
        if session:
            response = self._http.call("PUT", f"/v1/session/renew/{session}")
            if response.code == 404:
                self._release_lapsed(key)
                raise NotFound(f"key {key!r} does not exist or its TTL already expired")
            _ok(response, f"renewing the TTL of {key}")
            if parts is not None and parts[3] == "entry":
                self._pass_lease(parts[2])
        return current

    def _release_lapsed(self, key: str) -> None:
        """A registry entry whose lease ran out: deregister its agent service, which Consul
        would otherwise keep routing to until it reaps it. Left alone when it is not this
        entry's, or its lease check passes (registered anew meanwhile)."""
        parts = parse_registry_key(key)
        if parts is None or parts[3] != "entry":
            return
        instance = parts[2]
        with contextlib.suppress(StoreError):  # Consul reaps it later in any case
            response = self._http.call("GET", f"/v1/agent/service/{instance}", read=True)
            service = (_json(response.body) or {}) if response.code == 200 else {}
            meta = service.get("Meta") or {}
            if (meta.get("portctl-prefix"), meta.get("portctl-key")) != (self.prefix, key):
                return
            checks = _json(self._http.call("GET", "/v1/agent/checks", read=True).body) or {}
            lease = checks.get(services.lease_check_id(instance)) if isinstance(checks, dict) else None
            if isinstance(lease, dict) and lease.get("Status") != "passing":
                self._http.call("PUT", f"/v1/agent/service/deregister/{instance}")

    # Change feed -------------------------------------------------------------------------

    def position(self) -> str:
        return self._read_all()[1]

    def watch(self, prefix: str, position: str, timeout: float) -> ChangeBatch:
        _validate.prefix(prefix)
        if not _POSITION.fullmatch(position):
            raise InvalidInput("position", position, "a position returned by this Consul store")
        base = self._snapshots.get(position)
        if base is None:  # another store object's, or forgotten: start again from a full read
            return ChangeBatch(self._read_all()[1], reset=True)
        feed = self._started_feed()
        deadline = time.monotonic() + max(0.0, min(timeout, WATCH_SLICE))
        while True:
            mark = feed.wait_beyond(base.mark, deadline)
            if mark.error is not None:
                raise _fresh(mark.error)
            if mark.resets != base.mark.resets:
                return ChangeBatch(self._read_all()[1], reset=True)
            if mark.generation == base.mark.generation:
                return ChangeBatch(position)
            current = self._current(feed, mark, base)
            changes = _diff(base.entries, current, prefix)
            position = self._remember(current, mark)
            if changes or time.monotonic() >= deadline:
                return ChangeBatch(position, changes)
            base = self._snapshots[position]

    def _started_feed(self) -> Feed:
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"store {self.url} is closed")
            if self._feed is None:
                self._feed_http = ConsulHTTP(self.config)
                self._feed = Feed(self._fetch_kv, self._fetch_health)
            return self._feed

    def _fetch_kv(self, index: int, wait: float) -> tuple[int, str]:
        return self._blocking(self._kv_path(""), [("recurse", "1")], index, wait)

    def _fetch_health(self, index: int, wait: float) -> tuple[int, str]:
        return self._blocking("/v1/health/state/any", [], index, wait)

    def _blocking(
        self, path: str, params: builtins.list[tuple[str, Any]], index: int, wait: float
    ) -> tuple[int, str]:
        http = self._feed_http
        if http is None:
            raise StoreUnavailable(f"store {self.url} is closed")
        if index:
            params = [*params, ("index", index), ("wait", go_duration(wait or WAIT))]
        response = http.call("GET", path, params, read=True)
        return int(response.headers.get("X-Consul-Index") or 0), str(
            response.body if response.code == 200 else ""
        )

    def _read_all(self) -> tuple[dict[str, Entry], str]:
        """Everything under the prefix, health included, remembered as a new position."""
        feed = self._feed
        mark = feed.mark() if feed is not None else Mark(0, 0, 0)
        entries = {e.key: e for e in self._entries(self._kv_list(""))}
        entries.update(self._healths(list(entries.values()), {}))
        return entries, self._remember(entries, mark)

    def _current(self, feed: Feed, mark: Mark, base: _Snapshot) -> dict[str, Entry]:
        """The entries as the followers last saw them. Health is re-read only for services
        whose entries changed, or whose checks changed in ``/v1/health/state/any``."""
        with feed.cond:
            body, health_body = feed.kv_body, feed.health_body
        items = _kv_items(200 if body else 404, body or "")
        entries = {e.key: e for e in self._entries(items)}
        named = {k: parts[1] for k in entries if (parts := parse_registry_key(k)) is not None}
        changed = {service for k, service in named.items() if base.entries.get(k) != entries[k]}
        digests = _check_digests(health_body)
        node = digests.get("", ())
        results: dict[str, builtins.list[dict[str, Any]]] = {}
        for service in sorted(set(named.values())):
            digest = (node, digests.get(service, ()))
            cached = self._health_cache.get(service)
            if cached is None or cached[0] != digest or service in changed:
                cached = (digest, self._health_results(service))
                self._health_cache[service] = cached
            results[service] = cached[1]
        entries.update(self._healths(list(entries.values()), results))
        return entries

    def _remember(self, entries: dict[str, Entry], mark: Mark) -> str:
        with self._lock:
            self._serial += 1
            token = f"{self._nonce}.{self._serial}"
            self._snapshots[token] = _Snapshot(entries, mark)
            while len(self._snapshots) > SNAPSHOTS:
                self._snapshots.popitem(last=False)
            return token
