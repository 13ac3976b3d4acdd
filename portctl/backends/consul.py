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
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from portctl import _validate
from portctl.backends import _consul_services as services
from portctl.backends._consul_http import ConsulConfig, ConsulHTTP, NotApplied, go_duration, parse_url
from portctl.backends._consul_watch import WAIT, Feed, Mark
from portctl.backends._retry import retried
from portctl.backends.base import (
    Capability,
    Change,
    ChangeBatch,
    Create,
    Delete,
    Entry,
    Expect,
    Operation,
    Put,
    Store,
    check_operations,
)
from portctl.errors import (
    InvalidInput,
    KeyExists,
    NotFound,
    StoreCorrupt,
    StoreDenied,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from portctl.keys import parse_registry_key
from portctl.records import HealthRecord, ServiceEntry, Status

__all__ = ["ConsulStore"]

MARK = 0x706F7274  # "port": portctl wrote this key
TTL_MASK = 0xFFFFFFFF
MAX_TXN_OPS = 64
WATCH_SLICE = 0.25  # a watch waits on the followers in memory; short slices let callers stop fast
SNAPSHOTS = 16
_VERSION = re.compile(r"^(x?)(\d+)(?:~([0-9a-fA-F-]{1,64})@(\d+))?$")
_POSITION = re.compile(r"^[0-9a-f]{12}\.\d+$")
_READ_ONLY = ("check-index", "check-not-exists")


@dataclass(frozen=True)
class _Version:
    index: int
    session: str
    foreign: bool
    ttl_ms: int = 0  # the TTL of the session holding the key


@dataclass
class _Snapshot:
    entries: dict[str, Entry]
    mark: Mark


@dataclass
class _Plan:
    """One transaction, translated: Consul operations, and what to do around them."""

    txn: builtins.list[dict[str, Any]] = field(default_factory=list)
    owners: builtins.list[Operation] = field(default_factory=list)  # the portctl operation of each txn op
    new_sessions: dict[str, str] = field(default_factory=dict)  # key -> session created for it
    old_sessions: builtins.list[str] = field(default_factory=list)  # to destroy once the txn committed
    # key -> (entry, first status of its check, lease: the TTL it is written with)
    registrations: dict[str, tuple[ServiceEntry, Status | None, float | None]] = field(default_factory=dict)
    deregistrations: builtins.list[str] = field(default_factory=list)  # instance ids
    lease_passes: builtins.list[str] = field(default_factory=list)  # instances on a new lease
    ttl_updates: builtins.list[tuple[str, HealthRecord]] = field(
        default_factory=list
    )  # (instance id, record)
    health_writes: builtins.list[str] = field(default_factory=list)

    def add(self, owner: Operation, verb: str, key: str, **fields: Any) -> None:
        self.txn.append({"KV": {"Verb": verb, "Key": key, **fields}})
        self.owners.append(owner)

    def writes(self) -> bool:
        return any(op["KV"]["Verb"] not in _READ_ONLY for op in self.txn)


@dataclass
class _Sending:
    """How the tries of one transaction went. A try left unanswered (a timeout, a connection
    reset after sending) may have landed."""

    unanswered: int = 0
    landed: dict[str, Entry] | None = None  # what an unanswered try wrote, found after a retry


class ConsulStore(Store):
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

    def transact(self, operations: Sequence[Operation]) -> dict[str, Entry]:
        check_operations(operations)
        plan = self._plan(operations)
        sending = _Sending()
        try:
            self._register_all(plan)
            results = self._commit(operations, plan, sending)
        except (KeyExists, VersionConflict):
            if sending.unanswered:
                # The store does not hold this write, but a lost try may have put a key on one of
                # its sessions that another writer then overwrote keeping the TTL: the sessions
                # expire on their own. The services are put back as KV says.
                self._resync_services(plan)
            else:
                self._undo(plan)
            raise
        except BaseException:
            if not sending.unanswered:  # else it may have landed: its sessions and services stay
                self._undo(plan)
            raise
        self._after_commit(plan)
        if sending.landed is not None:
            return self._with_health(operations, plan, sending.landed)
        return self._written(operations, plan, results)

    def _plan(self, operations: Sequence[Operation]) -> _Plan:
        by_key = {op.key: op for op in operations}
        plan = _Plan()
        try:
            for op in operations:
                if services.is_health(op.key):
                    self._plan_health(op, by_key, plan)
                else:
                    self._plan_kv(op, plan)
            _check_size(plan, operations)
        except BaseException:
            self._drop_sessions(plan)  # created for a transaction that is never sent
            raise
        return plan

    def _plan_kv(self, op: Operation, plan: _Plan) -> None:
        key = self.prefix + op.key
        version = self._version(op.key, op.version) if isinstance(op, Put) else None
        if isinstance(op, (Create, Put)) and (parse_registry_key(op.key) or ("",) * 4)[3] == "entry":
            entry = services.parse_entry(op.key, op.value)
            plan.registrations[op.key] = (entry, None, _lease(op, version))
            if op.ttl is not None:
                plan.lease_passes.append(entry.id)
        if isinstance(op, Create):
            self._plan_write(op, plan, key, op.value, op.ttl, None)
        elif isinstance(op, Put):
            self._plan_write(op, plan, key, op.value, op.ttl, version)
        elif isinstance(op, Expect):
            if op.version is None:
                plan.add(op, "check-not-exists", key)
            else:
                plan.add(op, "check-index", key, Index=self._version(op.key, op.version).index)
        else:
            self._plan_delete(op, plan, key)

    def _plan_write(
        self, op: Operation, plan: _Plan, key: str, value: str, ttl: float | None, version: _Version | None
    ) -> None:
        if ttl is None and version is not None and version.session and _keeps_ttl(op):
            # A write without a TTL keeps the key's TTL: the session still holds it.
            flags = MARK << 32 | version.ttl_ms
            value64 = base64.b64encode(value.encode()).decode()
            plan.add(op, "cas", key, Index=version.index, Value=value64, Flags=flags)
            return
        fields = {"Value": base64.b64encode(value.encode()).decode(), "Flags": _flags(ttl)}
        if ttl is not None:
            plan.new_sessions[op.key] = self._new_session(op.key, ttl)
        session = plan.new_sessions.get(op.key, "")
        if version is None:
            if session:
                plan.add(op, "check-not-exists", key)
                plan.add(op, "lock", key, Session=session, **fields)
            else:
                plan.add(op, "cas", key, Index=0, **fields)
            return
        if not version.session and not session:
            plan.add(op, "cas", key, Index=version.index, **fields)
            return
        plan.add(op, "check-index", key, Index=version.index)
        if version.session:
            plan.add(op, "unlock", key, Session=version.session, **fields)
            plan.old_sessions.append(version.session)
        if session:
            plan.add(op, "lock", key, Session=session, **fields)

    def _plan_delete(self, op: Delete, plan: _Plan, key: str) -> None:
        parts = parse_registry_key(op.key)
        if op.version is not None:
            version = self._version(op.key, op.version)
            plan.add(op, "delete-cas", key, Index=version.index)
            if version.session:
                plan.old_sessions.append(version.session)
        else:
            current = self._kv_get(op.key)
            if current is None:
                return
            entry = self._entry(current)
            self._version(op.key, entry.version)  # refuses someone else's key
            plan.add(op, "delete", key)
            if current.get("Session"):
                plan.old_sessions.append(str(current["Session"]))
        if parts is not None and parts[3] == "entry":
            plan.deregistrations.append(parts[2])

    def _plan_health(self, op: Operation, by_key: dict[str, Operation], plan: _Plan) -> None:
        """Health keys are Consul's health, never stored. A versioned operation is a condition
        on it (and on its entry's version); a write updates a TTL check. A create is a write
        like any other: the health of a registered instance always exists, so a copy that
        writes entry and health in separate transactions (a migration) still succeeds."""
        ekey = services.entry_of(op.key)
        entry_op = by_key.get(ekey)
        if isinstance(op, Expect) and op.version is None:  # absent: its entry is absent
            if entry_op is None:
                plan.add(op, "check-not-exists", self.prefix + ekey)
            elif not isinstance(entry_op, Create):
                raise VersionConflict(op.key)
        elif not isinstance(op, Create) and op.version is not None:
            entry_raw = self._kv_get(ekey)
            current = None if entry_raw is None else self._healths([self._entry(entry_raw)], {}).get(op.key)
            if current is None or current.version != op.version:
                raise VersionConflict(op.key)
            if entry_op is None and entry_raw is not None:
                plan.add(op, "check-index", self.prefix + ekey, Index=int(entry_raw["ModifyIndex"]))
        if isinstance(op, (Create, Put)):
            self._plan_health_write(op, ekey, entry_op, plan)

    def _plan_health_write(
        self, op: Create | Put, ekey: str, entry_op: Operation | None, plan: _Plan
    ) -> None:
        record = _health_record(op.key, op.value)
        plan.health_writes.append(op.key)
        if ekey in plan.registrations:
            registered, _, lease = plan.registrations[ekey]
            plan.registrations[ekey] = (registered, record.status, lease)
            return
        if entry_op is not None:
            return
        raw = self._kv_get(ekey)
        if raw is None:
            return
        entry = _service_entry(ekey, self._entry(raw).value)
        if entry is not None and entry.check.kind == "ttl":
            plan.ttl_updates.append((entry.id, record))

    def _version(self, key: str, version: str) -> _Version:
        match = _VERSION.fullmatch(version)
        if match is None:
            raise VersionConflict(key)
        parsed = _Version(int(match[2]), match[3] or "", bool(match[1]), int(match[4] or 0))
        if parsed.foreign:
            raise StoreCorrupt(
                self.prefix + key,
                "the key holds a value portctl did not write (no portctl mark in its Flags)",
                advice=f"portctl will not overwrite it; inspect it with: consul kv get {self.prefix + key}, "
                "and delete it if it is stray",
            )
        return parsed

    def _new_session(self, key: str, ttl: float) -> str:
        body = {
            "Name": f"portctl {key}"[:128],
            "TTL": go_duration(ttl),
            "Behavior": "delete",
            "LockDelay": "0s",
        }
        response = self._http.call("PUT", "/v1/session/create", body=json.dumps(body))
        if response.code == 400:
            raise InvalidInput(f"ttl of {key}", ttl, f"a TTL Consul accepts ({str(response.body).strip()})")
        _ok(response, "creating a session")
        return str(_json(response.body)["ID"])

    def _register_all(self, plan: _Plan) -> None:
        """Register agent services before the KV write: a reader who sees an entry finds its
        service (its health) in Consul already."""
        for key, (entry, status, lease) in plan.registrations.items():
            self._refuse_taken_id(entry, key)
            body = services.registration(entry, key, self.prefix, status, lease)
            response = self._http.call(
                "PUT", "/v1/agent/service/register", [("replace-existing-checks", "true")], json.dumps(body)
            )
            if response.code == 400:
                raise InvalidInput(
                    key, entry.service, f"a service Consul accepts ({str(response.body).strip()})"
                )
            _ok(response, f"registering {entry.id}")

    def _refuse_taken_id(self, entry: ServiceEntry, key: str) -> None:
        response = self._http.call("GET", f"/v1/agent/service/{entry.id}", read=True)
        if response.code != 200:
            return
        meta = (_json(response.body) or {}).get("Meta") or {}
        owner = (meta.get("portctl-prefix"), meta.get("portctl-key"))
        if owner != (self.prefix, key):
            held = (
                f"{meta.get('portctl-prefix')}{meta.get('portctl-key')}"
                if owner[0]
                else "a service outside portctl"
            )
            raise InvalidInput("instance_id", entry.id, f"an id no other Consul service uses (it is {held})")

    def _commit(
        self, operations: Sequence[Operation], plan: _Plan, sending: _Sending
    ) -> builtins.list[dict[str, Any]]:
        """The results of the txn. When a retry fails its conditions after a try that was never
        answered, and the store holds what was written, that try landed: ``sending.landed``."""
        if not plan.txn:
            return []
        body = json.dumps(plan.txn)

        def send() -> Any:
            sending.unanswered += 1
            try:
                response = self._http.once("PUT", "/v1/txn", body=body)
            except (NotApplied, StoreDenied):
                sending.unanswered -= 1  # answered: refused before it was applied
                raise
            sending.unanswered -= 1
            return response

        response = retried(send)
        if response.code == 409 and sending.unanswered and plan.writes():
            sending.landed = self.landed([op for op in operations if not services.is_health(op.key)])
            if sending.landed is not None:
                return []
        return self._results(plan, response)

    def _results(self, plan: _Plan, response: Any) -> builtins.list[dict[str, Any]]:
        body = _json(response.body) if response.code in (200, 409) else None
        if response.code == 409 and isinstance(body, dict):
            errors = body.get("Errors") or [{}]
            failed = plan.owners[min(int(errors[0].get("OpIndex") or 0), len(plan.owners) - 1)]
            raise KeyExists(failed.key) if isinstance(failed, Create) else VersionConflict(failed.key)
        if response.code == 413:
            raise InvalidInput(
                "transaction", f"{len(plan.txn)} operations", f"what Consul accepts ({response.body})"
            )
        _ok(response, "the transaction")
        return list((body or {}).get("Results") or [])

    def _undo(self, plan: _Plan) -> None:
        """After a transaction known not to have landed: drop its sessions, and put each service
        it registered back as KV says it is (another writer may have won)."""
        self._drop_sessions(plan)
        self._resync_services(plan)

    def _drop_sessions(self, plan: _Plan) -> None:
        with contextlib.suppress(StoreError):
            for session in plan.new_sessions.values():
                self._http.call("PUT", f"/v1/session/destroy/{session}")

    def _resync_services(self, plan: _Plan) -> None:
        with contextlib.suppress(StoreError):
            for key, (registered, _, lease) in plan.registrations.items():
                raw = self._kv_get(key)
                found = None if raw is None else self._entry(raw)
                current = None if found is None else _service_entry(key, found.value)
                kept = None if found is None else found.ttl
                if current is None:
                    self._http.call("PUT", f"/v1/agent/service/deregister/{registered.id}")
                elif current != registered or kept != lease:
                    body = services.registration(current, key, self.prefix, None, kept)
                    self._http.call(
                        "PUT",
                        "/v1/agent/service/register",
                        [("replace-existing-checks", "true")],
                        json.dumps(body),
                    )

    def _after_commit(self, plan: _Plan) -> None:
        for session in plan.old_sessions:
            _ok(self._http.call("PUT", f"/v1/session/destroy/{session}"), "destroying a session")
        for instance in plan.deregistrations:
            response = self._http.call("PUT", f"/v1/agent/service/deregister/{instance}")
            if response.code != 404:
                _ok(response, f"deregistering {instance}")
        for instance, record in plan.ttl_updates:
            body = json.dumps({"Status": record.status.value, "Output": record.output})
            response = self._http.call(
                "PUT", f"/v1/agent/check/update/{services.check_id(instance)}", body=body
            )
            if response.code != 404:  # deregistered meanwhile
                _ok(response, f"updating the TTL check of {instance}")
        # The lease check was registered passing; this pass covers an agent that kept the old
        # status of a check registered again. Best effort: the write itself is done.
        with contextlib.suppress(StoreError):
            for instance in plan.lease_passes:
                self._pass_lease(instance)

    def _pass_lease(self, instance: str) -> None:
        response = self._http.call("PUT", f"/v1/agent/check/pass/{services.lease_check_id(instance)}")
        if response.code != 404:  # deregistered meanwhile, or written before leases had checks
            _ok(response, f"passing the lease check of {instance}")

    def _written(
        self, operations: Sequence[Operation], plan: _Plan, results: builtins.list[dict[str, Any]]
    ) -> dict[str, Entry]:
        by_full_key = {str(r["KV"]["Key"]): r["KV"] for r in results if isinstance(r, dict) and r.get("KV")}
        written: dict[str, Entry] = {}
        for op in operations:
            if isinstance(op, (Create, Put)) and op.key not in plan.health_writes:
                raw = dict(by_full_key[self.prefix + op.key])
                raw["Value"] = base64.b64encode(op.value.encode()).decode()
                written[op.key] = self._entry(raw)
        return self._with_health(operations, plan, written)

    def _with_health(
        self, operations: Sequence[Operation], plan: _Plan, written: dict[str, Entry]
    ) -> dict[str, Entry]:
        """``written`` plus the health each health write left, in the order of ``operations``."""
        out: dict[str, Entry] = {}
        for op in operations:
            if isinstance(op, (Create, Put)) and op.key in plan.health_writes:
                out[op.key] = self._health(op.key) or Entry(op.key, op.value, "h0")
            elif op.key in written:
                out[op.key] = written[op.key]
        return out

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


# Helpers ------------------------------------------------------------------------------------


def _flags(ttl: float | None) -> int:
    return MARK << 32 | (min(round(ttl * 1000), TTL_MASK) if ttl else 0)


def _check_size(plan: _Plan, operations: Sequence[Operation]) -> None:
    if len(plan.txn) > MAX_TXN_OPS:
        raise InvalidInput(
            "transaction", f"{len(operations)} operations", f"at most {MAX_TXN_OPS} Consul operations in one"
        )


def _keeps_ttl(op: Operation) -> bool:
    return not isinstance(op, Put) or op.keep_ttl


def _lease(op: Create | Put, version: _Version | None) -> float | None:
    """The TTL a write leaves its key with: its own, or the one it keeps."""
    if op.ttl is not None:
        return op.ttl
    if version is not None and version.session and _keeps_ttl(op):
        return version.ttl_ms / 1000 or None
    return None


def _is_key(key: str) -> bool:
    try:
        _validate.key(key)
    except InvalidInput:
        return False  # a folder marker or a name portctl never writes: not addressable here
    return True


def _json(body: object) -> Any:
    try:
        return json.loads(body) if isinstance(body, (str, bytes)) and body else None
    except ValueError:
        return None


def _kv_items(code: int, body: object) -> builtins.list[dict[str, Any]]:
    if code == 404:
        return []
    found = _json(body)
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def _ok(response: Any, doing: str) -> None:
    if not 200 <= response.code < 300:
        raise StoreUnavailable(f"Consul refused {doing}: {response.code} {str(response.body).strip()[:200]}")


def _health_record(key: str, value: str) -> HealthRecord:
    try:
        return HealthRecord.from_dict(json.loads(value))
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidInput(key, "a value that is no health record", f"a health record as JSON ({e})") from e


def _service_entry(key: str, value: str) -> ServiceEntry | None:
    with contextlib.suppress(InvalidInput):
        return services.parse_entry(key, value)
    return None


def _check_digests(body: str | None) -> dict[str, tuple[tuple[str, str, str], ...]]:
    """Each service's checks (id, status, output) in a ``/v1/health/state/any`` answer; node
    checks under ""."""
    found: dict[str, list[tuple[str, str, str]]] = {}
    for check in _json(body) or []:
        if isinstance(check, dict):
            item = (str(check.get("CheckID")), str(check.get("Status")), str(check.get("Output")))
            found.setdefault(str(check.get("ServiceName") or ""), []).append(item)
    return {name: tuple(sorted(items)) for name, items in found.items()}


def _diff(before: dict[str, Entry], after: dict[str, Entry], prefix: str) -> tuple[Change, ...]:
    changes = [
        Change("put", k, e) for k, e in sorted(after.items()) if k.startswith(prefix) and before.get(k) != e
    ]
    changes += [Change("delete", k, None) for k in sorted(before) if k.startswith(prefix) and k not in after]
    return tuple(changes)


def _fresh(error: StoreError) -> StoreError:
    """A new error like ``error`` (one raised object must not collect every watcher's traceback)."""
    if not isinstance(error, StoreUnavailable):
        return error
    copy = StoreUnavailable(str(error))
    copy.__cause__ = error
    return copy
