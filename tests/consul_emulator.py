"""A Consul HTTP API emulator: one agent that is also its own server, in the standard library.

It follows Consul's documented semantics for the part of the HTTP API portctl's Consul store
uses, so any Consul client (py-consul, ``curl``, consul-template...) can be pointed at it, the
way moto serves AWS:

* agent services with checks: ``PUT /v1/agent/service/register`` (``Check``/``Checks``: HTTP,
  TCP and TTL; ``Interval``, ``Timeout``, ``Status``, ``DeregisterCriticalServiceAfter``,
  ``SuccessBeforePassing``, ``FailuresBeforeCritical``; ``?replace-existing-checks``),
  ``PUT /v1/agent/service/deregister/:id``, ``GET /v1/agent/services``,
  ``GET /v1/agent/service/:id``, ``GET /v1/agent/checks``; HTTP and TCP checks are run by the
  emulator on their interval (2xx passing, 429 warning, anything else critical); TTL checks
  turn critical when not updated in time (``PUT /v1/agent/check/pass|warn|fail/:id``,
  ``PUT /v1/agent/check/update/:id``), with Consul's output ``TTL expired (last output before
  timeout follows): ...``; a service whose check has been critical for longer than its
  ``DeregisterCriticalServiceAfter`` (at least 1m, Consul's minimum) is deregistered by a reaper
  that runs every 30s, as Consul's does;
* health and catalog: ``GET /v1/health/service/:name`` (``?passing``, ``?tag``),
  ``GET /v1/health/state/:state``, ``GET /v1/health/checks/:name``, ``GET /v1/catalog/services``,
  ``GET /v1/catalog/service/:name``, ``GET /v1/catalog/nodes``;
* KV: ``GET``/``PUT``/``DELETE /v1/kv/:key`` with ``recurse``, ``keys`` (``separator``),
  ``raw``, ``cas``, ``flags``, ``acquire`` and ``release``;
* sessions: ``PUT /v1/session/create|destroy/:id|renew/:id``, ``GET /v1/session/info/:id``,
  ``GET /v1/session/list``; TTLs between ``session_ttl_min`` (10s, as Consul) and 24h, expired
  at twice their TTL as Consul does; behaviours ``release`` and ``delete``; lock-delay;
* ``PUT /v1/txn`` with KV verbs (set, cas, lock, unlock, get, get-tree, check-index,
  check-session, check-not-exists, delete, delete-tree, delete-cas), at most 64 operations,
  ``409`` with ``{"Results": null, "Errors": [{"OpIndex": i, "What": ...}]}`` on rollback;
* blocking queries (``?index=`` and ``?wait=``, default 5m, at most 10m, plus up to wait/16 of
  jitter) with ``X-Consul-Index`` on KV, health, catalog and session reads;
* ``GET /v1/status/leader``; with no leader every server read fails with
  ``500 No cluster leader`` unless it asks for ``?stale`` (then ``X-Consul-KnownLeader: false``),
  and writes fail;
* ACLs: started with a token, every request but ``/v1/status/*`` needs it in the
  ``X-Consul-Token`` header (or ``Authorization: Bearer``); without one the answer is
  ``403 Permission denied``, with a wrong one ``403 ACL not found``.

Tests steer what Consul itself cannot be asked to do through methods of :class:`ConsulState`
(``server.state``; ``reap_min`` and ``reap_interval`` shorten the reaper's minimum and period)
and of the server (:meth:`ConsulEmulator.drop_next_reply`, :meth:`ConsulEmulator.connections`)
or, from another process, through endpoints outside Consul's API:
``PUT /v1/emulator/reset-index?to=N`` (every index drops to at most N, as after a snapshot
restore: blocking queries return at once with the lower index),
``PUT /v1/emulator/leader?present=false|true`` and
``PUT /v1/emulator/drop-next-reply?path=/v1/txn`` (the next request to that path is applied,
then its connection is closed without an answer, as when a reply is lost).

Start it on its own::

    python -m tests.consul_emulator --port 8500 [--acl-token T] [--session-ttl-min 10s]

then ``CONSUL_HTTP_ADDR=127.0.0.1:8500 consul kv put a b`` or any other client works against it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

NODE = "emulator"
DATACENTER = "dc1"
LEADER = "127.0.0.1:8300"
MAX_TXN_OPS = 64
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
SESSION_TTL_MAX = 86400.0
TTL_MULTIPLIER = 2  # Consul expires a session at twice its TTL
DEFAULT_LOCK_DELAY = 15.0
REAP_MIN = 60.0  # Consul's minimum for DeregisterCriticalServiceAfter
REAP_INTERVAL = 30.0  # how often Consul's reaper looks for services critical too long
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SEVERITY = {"passing": 0, "warning": 1, "critical": 2}


class ConsulError(Exception):
    """An error answer: HTTP status and Consul's plain-text body."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def parse_duration(text: object, what: str = "duration") -> float:
    """A Go duration ("10s", "1m30s", "500ms"); a bare number is nanoseconds, as in Go's JSON."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text) / 1e9
    value = str(text).strip()
    if value in ("", "0"):
        return 0.0
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ConsulError(400, f"Request decode failed: time: invalid duration {value!r} ({what})")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def go_duration(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


# State ---------------------------------------------------------------------------------


@dataclass
class KVEntry:
    key: str
    value: bytes | None
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0
    session: str = ""

    def to_json(self, with_value: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        if with_value and self.value is not None:
            out["Value"] = base64.b64encode(self.value).decode()
        if self.session:
            out["Session"] = self.session
        return out


@dataclass
class Session:
    id: str
    name: str
    ttl: float | None
    behavior: str
    lock_delay: float
    node_checks: list[str]
    create_index: int
    modify_index: int
    expires_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": NODE,
            "LockDelay": int(self.lock_delay * 1e9),
            "Behavior": self.behavior,
            "TTL": go_duration(self.ttl) if self.ttl else "",
            "NodeChecks": list(self.node_checks),
            "ServiceChecks": None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class HealthCheck:
    check_id: str
    name: str
    service_id: str
    service_name: str
    kind: str  # "http", "tcp", "ttl" or "serf"
    target: str = ""  # URL for http, host:port for tcp
    interval: float = 0.0
    timeout: float = 10.0
    ttl: float = 0.0
    deregister_after: float | None = None
    success_before_passing: int = 0
    failures_before_critical: int = 0
    status: str = "critical"
    output: str = ""
    notes: str = ""
    create_index: int = 0
    modify_index: int = 0
    next_run: float = 0.0
    ttl_deadline: float = 0.0
    critical_since: float | None = None
    successes: int = 0
    failures: int = 0
    running: bool = False
    service_tags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        definition: dict[str, Any] = {}
        if self.kind == "http":
            definition = {"HTTP": self.target, "Interval": go_duration(self.interval)}
        elif self.kind == "tcp":
            definition = {"TCP": self.target, "Interval": go_duration(self.interval)}
        if self.kind in ("http", "tcp"):
            definition["Timeout"] = go_duration(self.timeout)
        if self.deregister_after is not None:
            definition["DeregisterCriticalServiceAfter"] = go_duration(self.deregister_after)
        return {
            "Node": NODE,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(self.service_tags),
            "Type": "" if self.kind == "serf" else self.kind,
            "Interval": go_duration(self.interval) if self.interval else "",
            "Timeout": go_duration(self.timeout) if self.kind in ("http", "tcp") else "",
            "Definition": definition,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Service:
    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    enable_tag_override: bool
    create_index: int
    modify_index: int

    def agent_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Meta": dict(self.meta),
            "Port": self.port,
            "Address": self.address,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": self.enable_tag_override,
            "Datacenter": DATACENTER,
        }

    def health_json(self) -> dict[str, Any]:
        out = self.agent_json()
        out.pop("Datacenter")
        out["CreateIndex"], out["ModifyIndex"] = self.create_index, self.modify_index
        return out

    def catalog_json(self) -> dict[str, Any]:
        return {
            "ID": NODE_ID,
            "Node": NODE,
            "Address": "127.0.0.1",
            "Datacenter": DATACENTER,
            "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
            "NodeMeta": {},
            "ServiceID": self.id,
            "ServiceName": self.name,
            "ServiceTags": list(self.tags),
            "ServiceAddress": self.address,
            "ServicePort": self.port,
            "ServiceMeta": dict(self.meta),
            "ServiceWeights": {"Passing": 1, "Warning": 1},
            "ServiceEnableTagOverride": self.enable_tag_override,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


NODE_ID = "8a1a3f5c-0000-4000-8000-000000000001"


def _node_json() -> dict[str, Any]:
    return {
        "ID": NODE_ID,
        "Node": NODE,
        "Address": "127.0.0.1",
        "Datacenter": DATACENTER,
        "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
        "Meta": {},
    }


class ConsulState:
    """Everything the emulated agent and servers hold, behind one lock.

    Every change takes the next Raft-like index and wakes blocking queries."""

    def __init__(self, *, acl_token: str | None = None, session_ttl_min: float = 10.0) -> None:
        self.cond = threading.Condition()
        self.acl_token = acl_token
        self.session_ttl_min = session_ttl_min
        self.reap_min = REAP_MIN
        self.reap_interval = REAP_INTERVAL
        self.last_reap = time.monotonic()
        self.index = 10
        self.leader = True
        self.generation = 0  # bumped on an index reset: blocking queries return at once
        self.kv: dict[str, KVEntry] = {}
        self.tombstones: dict[str, int] = {}
        self.lock_delays: dict[str, float] = {}
        self.sessions: dict[str, Session] = {}
        self.services: dict[str, Service] = {}
        self.checks: dict[str, HealthCheck] = {}
        self.service_index: dict[str, int] = {}
        self.catalog_index = self.index
        self.checks_index = self.index
        self.sessions_index = self.index
        serf = HealthCheck("serfHealth", "Serf Health Status", "", "", "serf", status="passing")
        serf.output = "Agent alive and reachable"
        serf.create_index = serf.modify_index = self.index
        self.checks[serf.check_id] = serf

    # Index ----------------------------------------------------------------------------

    def bump(self) -> int:
        """The index of a new write; wakes every blocking query. Called with the lock held."""
        self.index += 1
        self.cond.notify_all()
        return self.index

    def reset_index(self, to: int = 1) -> None:
        """Make every index at most ``to``, as after a snapshot restore onto a newer cluster:
        the data stays, the indexes go backwards, blocking queries return at once."""
        to = max(1, int(to))
        with self.cond:
            self.index = to
            for e in self.kv.values():
                e.create_index, e.modify_index = min(e.create_index, to), min(e.modify_index, to)
            self.tombstones = {k: min(v, to) for k, v in self.tombstones.items()}
            for s in self.sessions.values():
                s.create_index, s.modify_index = min(s.create_index, to), min(s.modify_index, to)
            for svc in self.services.values():
                svc.create_index, svc.modify_index = min(svc.create_index, to), min(svc.modify_index, to)
            for c in self.checks.values():
                c.create_index, c.modify_index = min(c.create_index, to), min(c.modify_index, to)
            self.service_index = {k: min(v, to) for k, v in self.service_index.items()}
            self.catalog_index = min(self.catalog_index, to)
            self.checks_index = min(self.checks_index, to)
            self.sessions_index = min(self.sessions_index, to)
            self.generation += 1
            self.cond.notify_all()

    def set_leader(self, present: bool) -> None:
        with self.cond:
            self.leader = present
            self.cond.notify_all()

    # KV -------------------------------------------------------------------------------

    def kv_index(self, key: str, prefix: bool) -> int:
        if prefix:
            found = [e.modify_index for k, e in self.kv.items() if k.startswith(key)]
            found += [i for k, i in self.tombstones.items() if k.startswith(key)]
        else:
            entry = self.kv.get(key)
            found = [entry.modify_index] if entry else [self.tombstones.get(key, 0)]
        return max([*found, 0]) or max(self.index, 1)

    def kv_set(self, key: str, value: bytes | None, flags: int | None, idx: int) -> KVEntry:
        old = self.kv.get(key)
        entry = KVEntry(
            key,
            value,
            flags if flags is not None else (old.flags if old else 0),
            old.create_index if old else idx,
            idx,
            old.lock_index if old else 0,
            old.session if old else "",
        )
        self.kv[key] = entry
        self.tombstones.pop(key, None)
        return entry

    def kv_delete(self, key: str, idx: int) -> None:
        if self.kv.pop(key, None) is not None:
            self.tombstones[key] = idx

    def kv_lock(self, key: str, value: bytes | None, flags: int | None, session: str, idx: int) -> bool:
        if session not in self.sessions:
            raise ConsulError(500, f"invalid session {session!r}")
        old = self.kv.get(key)
        if old is not None and old.session and old.session != session:
            return False
        if old is None or not old.session:
            until = self.lock_delays.get(key, 0.0)
            if until > time.monotonic():
                return False
        entry = self.kv_set(key, value, flags, idx)
        if entry.session != session:
            entry.lock_index += 1
        entry.session = session
        return True

    def kv_unlock(self, key: str, value: bytes | None, flags: int | None, session: str, idx: int) -> bool:
        old = self.kv.get(key)
        if old is None or old.session != session:
            return False
        entry = self.kv_set(key, value, flags, idx)
        entry.session = ""
        return True

    # Sessions -------------------------------------------------------------------------

    def destroy_session(self, session_id: str) -> None:
        """Invalidate a session: release or delete its keys, with lock-delay. Lock held."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        idx = self.bump()
        self.sessions_index = idx
        for key, entry in list(self.kv.items()):
            if entry.session != session_id:
                continue
            if session.lock_delay > 0:
                self.lock_delays[key] = time.monotonic() + session.lock_delay
            if session.behavior == "delete":
                self.kv_delete(key, idx)
            else:
                entry.session, entry.modify_index = "", idx

    # Services and checks ----------------------------------------------------------------

    def touch_service(self, name: str, idx: int) -> None:
        self.service_index[name] = idx

    def set_check(self, check: HealthCheck, status: str, output: str) -> None:
        """Record a check result; a change of status or output is a write. Lock held."""
        if status == "critical" and check.critical_since is None:
            check.critical_since = time.monotonic()
        elif status != "critical":
            check.critical_since = None
        if (check.status, check.output) == (status, output):
            return
        check.status, check.output = status, output
        idx = self.bump()
        check.modify_index = self.checks_index = idx
        if check.service_name:
            self.touch_service(check.service_name, idx)
        else:  # a node check changes the health of every service on the node
            for svc in self.services.values():
                self.touch_service(svc.name, idx)

    def deregister_service(self, service_id: str) -> bool:
        svc = self.services.pop(service_id, None)
        if svc is None:
            return False
        idx = self.bump()
        for cid in [cid for cid, c in self.checks.items() if c.service_id == service_id]:
            del self.checks[cid]
        self.checks_index = self.catalog_index = idx
        self.touch_service(svc.name, idx)
        return True

    def service_checks(self, service_id: str) -> list[HealthCheck]:
        node = [c for c in self.checks.values() if not c.service_id]
        own = [c for c in self.checks.values() if c.service_id == service_id]
        return sorted(node, key=lambda c: c.check_id) + sorted(own, key=lambda c: c.check_id)

    def health_of(self, name: str) -> list[dict[str, Any]]:
        out = []
        for svc in sorted(self.services.values(), key=lambda s: s.id):
            if svc.name == name:
                checks = [c.to_json() for c in self.service_checks(svc.id)]
                out.append({"Node": _node_json(), "Service": svc.health_json(), "Checks": checks})
        return out

    # The timers: TTLs, sessions, reaping ------------------------------------------------

    def tick(self, now: float) -> list[HealthCheck]:
        """Expire TTL checks and sessions, reap services critical too long; the HTTP and TCP
        checks now due (marked running). Lock held."""
        due = []
        for check in list(self.checks.values()):
            if check.kind == "ttl" and check.ttl_deadline and now >= check.ttl_deadline:
                check.ttl_deadline = 0.0
                self.set_check(check, "critical", _ttl_expired(check.output))
            elif check.kind in ("http", "tcp") and not check.running and now >= check.next_run:
                check.running = True
                due.append(check)
        for session in list(self.sessions.values()):
            if session.expires_at is not None and now >= session.expires_at:
                self.destroy_session(session.id)
        if now - self.last_reap >= self.reap_interval:
            self.last_reap = now
            self.reap(now)
        return due

    def reap(self, now: float) -> None:
        """Deregister every service with a check critical for longer than its
        DeregisterCriticalServiceAfter (raised to ``reap_min``). Lock held."""
        for check in list(self.checks.values()):
            limit = check.deregister_after
            critical_for = -1.0 if check.critical_since is None else now - check.critical_since
            if limit is not None and check.service_id and critical_for > max(limit, self.reap_min):
                self.deregister_service(check.service_id)


def _ttl_expired(last_output: str) -> str:
    """Consul's output for a TTL check that was not updated in time."""
    if not last_output or last_output.startswith("TTL expired"):
        return "TTL expired"
    return f"TTL expired (last output before timeout follows): {last_output}"


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


def run_tcp(target: str, timeout: float) -> tuple[str, str]:
    host, _, port = target.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        return "critical", f"dial tcp {target}: {e}"
    return "passing", f"TCP connect {target}: Success"


# The HTTP API --------------------------------------------------------------------------

Route = tuple[str, re.Pattern[str], Callable[..., Any]]


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


class ConsulAPI:
    """The endpoints, over a :class:`ConsulState`."""

    def __init__(self, state: ConsulState) -> None:
        self.state = state
        self.dropped_replies: list[str] = []  # paths whose next reply is never sent
        self.routes: list[Route] = []
        for method, pattern, handler in (
            ("GET", r"/v1/kv/(?P<key>.*)", self.kv_get),
            ("PUT", r"/v1/kv/(?P<key>.*)", self.kv_put),
            ("DELETE", r"/v1/kv/(?P<key>.*)", self.kv_delete),
            ("PUT", r"/v1/txn", self.txn),
            ("PUT", r"/v1/session/create", self.session_create),
            ("PUT", r"/v1/session/destroy/(?P<sid>[^/]+)", self.session_destroy),
            ("PUT", r"/v1/session/renew/(?P<sid>[^/]+)", self.session_renew),
            ("GET", r"/v1/session/info/(?P<sid>[^/]+)", self.session_info),
            ("GET", r"/v1/session/list", self.session_list),
            ("PUT", r"/v1/agent/service/register", self.service_register),
            ("PUT", r"/v1/agent/service/deregister/(?P<sid>.+)", self.service_deregister),
            ("GET", r"/v1/agent/services", self.agent_services),
            ("GET", r"/v1/agent/service/(?P<sid>.+)", self.agent_service),
            ("GET", r"/v1/agent/checks", self.agent_checks),
            ("GET", r"/v1/agent/self", self.agent_self),
            ("PUT", r"/v1/agent/check/(?P<verb>pass|warn|fail)/(?P<cid>.+)", self.check_ttl),
            ("PUT", r"/v1/agent/check/update/(?P<cid>.+)", self.check_update),
            ("GET", r"/v1/health/service/(?P<name>[^/]+)", self.health_service),
            ("GET", r"/v1/health/checks/(?P<name>[^/]+)", self.health_checks),
            ("GET", r"/v1/health/state/(?P<state_name>[^/]+)", self.health_state),
            ("GET", r"/v1/catalog/services", self.catalog_services),
            ("GET", r"/v1/catalog/service/(?P<name>[^/]+)", self.catalog_service),
            ("GET", r"/v1/catalog/nodes", self.catalog_nodes),
            ("GET", r"/v1/catalog/datacenters", lambda q, b: (200, [DATACENTER], {})),
            ("GET", r"/v1/status/leader", self.status_leader),
            ("GET", r"/v1/status/peers", self.status_peers),
            ("PUT", r"/v1/emulator/reset-index", self.admin_reset_index),
            ("PUT", r"/v1/emulator/leader", self.admin_leader),
            ("PUT", r"/v1/emulator/drop-next-reply", self.admin_drop_next_reply),
        ):
            self.routes.append((method, re.compile(pattern), handler))

    def authorize(self, path: str, headers: Any, query: dict[str, str]) -> None:
        token = self.state.acl_token
        if token is None or path.startswith(("/v1/status/", "/v1/emulator/")):
            return
        given = headers.get("X-Consul-Token") or query.get("token")
        bearer = headers.get("Authorization", "")
        if not given and bearer.startswith("Bearer "):
            given = bearer.removeprefix("Bearer ")
        if not given:
            raise ConsulError(403, "Permission denied: anonymous token lacks permission")
        if given != token:
            raise ConsulError(403, "ACL not found")

    def route(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        allowed = False
        for verb, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            allowed = True
            if verb == method or (verb == "PUT" and method == "POST"):
                return handler(query, body, **match.groupdict())
        if allowed:
            raise ConsulError(405, f"method {method} not allowed")
        raise ConsulError(404, f"Invalid URL path: not a recognized HTTP API endpoint: {path}")

    # Helpers --------------------------------------------------------------------------

    def _server_read(self, query: dict[str, str]) -> dict[str, str]:
        """Leader rules for a read; the headers to send. Lock held."""
        if self.state.leader:
            return {"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}
        if "stale" in query:
            return {"X-Consul-KnownLeader": "false", "X-Consul-LastContact": "15000"}
        raise ConsulError(500, "No cluster leader")

    def _server_write(self) -> None:
        if not self.state.leader:
            raise ConsulError(500, "No cluster leader")

    def _blocking(
        self,
        query: dict[str, str],
        compute: Callable[[], tuple[int, Any]],
        index_of: Callable[[], int] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """Run ``compute`` (index, payload) under the lock, blocking as Consul does when the
        query carries ``index``: until the index passes it, or ``wait`` (plus jitter) elapses.
        ``index_of``, when given, is the index alone: cheap to ask on every wake-up."""
        wanted = int(query.get("index") or 0)
        wait = min(parse_duration(query.get("wait", "")) or DEFAULT_WAIT, MAX_WAIT) if wanted else 0.0
        deadline = time.monotonic() + wait + random.uniform(0, wait / 16)
        state = self.state
        with state.cond:
            generation = state.generation
            while True:
                headers = self._server_read(query)
                remaining = deadline - time.monotonic()
                unchanged = index_of is not None and max(index_of(), 1) <= wanted
                if unchanged and remaining > 0 and state.generation == generation:
                    state.cond.wait(remaining)
                    continue
                index, payload = compute()
                index = max(index, 1)
                remaining = deadline - time.monotonic()
                if index > wanted or remaining <= 0 or state.generation != generation:
                    headers["X-Consul-Index"] = str(index)
                    return index, payload, headers
                state.cond.wait(remaining)

    def _session_of(self, sid: str) -> Session:
        session = self.state.sessions.get(sid)
        if session is None:
            raise ConsulError(404, f"Session id '{sid}' not found")
        return session

    # KV ---------------------------------------------------------------------------------

    def kv_get(self, query: dict[str, str], body: bytes, key: str) -> tuple[int, Any, dict]:
        state = self.state
        recurse, keys = "recurse" in query, "keys" in query

        def compute() -> tuple[int, Any]:
            index = state.kv_index(key, prefix=recurse or keys)
            if keys:
                separator = query.get("separator", "")
                found = []
                for k in sorted(state.kv):
                    if k.startswith(key):
                        rest = k[len(key) :]
                        shown = k
                        if separator and separator in rest:
                            shown = key + rest[: rest.index(separator) + len(separator)]
                        if not found or found[-1] != shown:
                            found.append(shown)
                return index, found or None
            if recurse:
                found = [state.kv[k].to_json() for k in sorted(state.kv) if k.startswith(key)]
                return index, found or None
            entry = state.kv.get(key)
            return index, [entry.to_json()] if entry else None

        index_of = lambda: state.kv_index(key, prefix=recurse or keys)  # noqa: E731
        _, payload, headers = self._blocking(query, compute, index_of)
        if payload is None:
            return 404, "", headers
        if "raw" in query and not recurse and not keys:
            raw = payload[0]["Value"]
            return 200, base64.b64decode(raw) if raw else b"", headers
        return 200, payload, headers

    def kv_put(self, query: dict[str, str], body: bytes, key: str) -> tuple[int, Any, dict]:
        state = self.state
        flags = int(query["flags"]) if query.get("flags") else None
        with state.cond:
            self._server_write()
            if "cas" in query:
                cas = int(query["cas"])
                current = state.kv.get(key)
                if (cas == 0 and current is not None) or (
                    cas != 0 and (current is None or current.modify_index != cas)
                ):
                    return 200, False, {}
            if query.get("acquire"):
                self._session_of_write(query["acquire"])
                ok = state.kv_lock(key, body, flags, query["acquire"], state.index + 1)
            elif query.get("release"):
                ok = state.kv_unlock(key, body, flags, query["release"], state.index + 1)
            else:
                state.kv_set(key, body, flags, state.index + 1)
                ok = True
            if ok:
                state.bump()
            return 200, ok, {}

    def _session_of_write(self, sid: str) -> None:
        if sid not in self.state.sessions:
            raise ConsulError(500, f"invalid session {sid!r}")

    def kv_delete(self, query: dict[str, str], body: bytes, key: str) -> tuple[int, Any, dict]:
        state = self.state
        with state.cond:
            self._server_write()
            if "cas" in query:
                cas = int(query["cas"])
                current = state.kv.get(key)
                if current is None or current.modify_index != cas:
                    return 200, False, {}
            idx = state.bump()
            targets = [k for k in state.kv if k.startswith(key)] if "recurse" in query else [key]
            for k in targets:
                state.kv_delete(k, idx)
            return 200, True, {}

    # Transactions ---------------------------------------------------------------------

    def txn(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        try:
            ops = json.loads(body or b"[]")
        except ValueError as e:
            raise ConsulError(400, f"Failed to parse body: {e}") from e
        if not isinstance(ops, list):
            raise ConsulError(400, "Failed to parse body: expected a list of operations")
        if len(ops) > MAX_TXN_OPS:
            raise ConsulError(413, f"Transaction contains too many operations ({len(ops)} > {MAX_TXN_OPS})")
        state = self.state
        with state.cond:
            self._server_write()
            saved = self._touched(ops)
            idx = state.index + 1
            results: list[dict[str, Any]] = []
            for i, op in enumerate(ops):
                kv = op.get("KV") if isinstance(op, dict) else None
                if kv is None:
                    raise ConsulError(400, f"operation {i}: only KV operations are supported here")
                try:
                    results += self._txn_kv(kv, idx)
                except ConsulError as e:
                    self._restore(saved)
                    if e.code != 409:
                        raise
                    return 409, {"Results": None, "Errors": [{"OpIndex": i, "What": e.text}]}, {}
            writes = any(
                o["KV"].get("Verb")
                not in ("get", "get-tree", "check-index", "check-session", "check-not-exists")
                for o in ops
            )
            if writes:
                state.bump()
            return 200, {"Results": results, "Errors": None}, {"X-Consul-Index": str(state.index)}

    def _touched(self, ops: list[Any]) -> dict[str, tuple[KVEntry | None, int | None]]:
        """Copies of every key the operations may change, to roll back to."""
        state, keys = self.state, set()
        for op in ops:
            kv = op.get("KV") if isinstance(op, dict) else None
            key = str((kv or {}).get("Key", ""))
            if (kv or {}).get("Verb") == "delete-tree":
                keys.update(k for k in state.kv if k.startswith(key))
            keys.add(key)
        return {k: (copy.deepcopy(state.kv.get(k)), state.tombstones.get(k)) for k in keys}

    def _restore(self, saved: dict[str, tuple[KVEntry | None, int | None]]) -> None:
        state = self.state
        for key, (entry, tombstone) in saved.items():
            state.kv.pop(key, None)
            state.tombstones.pop(key, None)
            if entry is not None:
                state.kv[key] = entry
            if tombstone is not None:
                state.tombstones[key] = tombstone

    def _txn_kv(self, kv: dict[str, Any], idx: int) -> list[dict[str, Any]]:
        state = self.state
        verb, key = kv.get("Verb", ""), kv.get("Key", "")
        value = base64.b64decode(kv["Value"]) if kv.get("Value") else None
        flags = kv.get("Flags")
        index, session = int(kv.get("Index") or 0), kv.get("Session", "")
        current = state.kv.get(key)

        def result(entry: KVEntry | None, with_value: bool = False) -> list[dict[str, Any]]:
            return [{"KV": entry.to_json(with_value)}] if entry is not None else []

        if verb == "set":
            return result(state.kv_set(key, value, flags or 0, idx))
        if verb == "cas":
            if (index == 0 and current is not None) or (
                index != 0 and (current is None or current.modify_index != index)
            ):
                what = "key already exists" if index == 0 else "index is stale"
                raise ConsulError(409, f'failed to set key "{key}", {what}')
            return result(state.kv_set(key, value, flags or 0, idx))
        if verb in ("lock", "unlock"):
            apply = state.kv_lock if verb == "lock" else state.kv_unlock
            if not apply(key, value, flags or 0, session, idx):
                raise ConsulError(
                    409,
                    f'failed to {verb} key "{key}", lock is held by another session'
                    if verb == "lock"
                    else f'failed to unlock key "{key}", it is not locked by session "{session}"',
                )
            return result(state.kv.get(key))
        if verb == "get":
            if current is None:
                raise ConsulError(409, f'key "{key}" doesn\'t exist')
            return result(current, True)
        if verb == "get-tree":
            return [{"KV": state.kv[k].to_json()} for k in sorted(state.kv) if k.startswith(key)]
        if verb == "check-index":
            if current is None or current.modify_index != index:
                raise ConsulError(
                    409,
                    f'current modify index {current.modify_index if current else 0} != {index} for key "{key}"',
                )
            return result(current)
        if verb == "check-session":
            if current is None or current.session != session:
                raise ConsulError(
                    409,
                    f'failed session check for key "{key}", current session {current.session if current else ""!r} != {session!r}',
                )
            return result(current)
        if verb == "check-not-exists":
            if current is not None:
                raise ConsulError(409, f'key "{key}" exists')
            return []
        if verb == "delete":
            state.kv_delete(key, idx)
            return []
        if verb == "delete-tree":
            for k in [k for k in state.kv if k.startswith(key)]:
                state.kv_delete(k, idx)
            return []
        if verb == "delete-cas":
            if current is None or current.modify_index != index:
                raise ConsulError(409, f'failed to delete key "{key}", index is stale')
            state.kv_delete(key, idx)
            return []
        raise ConsulError(400, f"unknown KV verb {verb!r}")

    # Sessions -------------------------------------------------------------------------

    def session_create(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        spec = _fields(json.loads(body) if body.strip() else {})
        ttl = parse_duration(spec.get("ttl", ""), "TTL") or None
        state = self.state
        if ttl is not None and not state.session_ttl_min <= ttl <= SESSION_TTL_MAX:
            raise ConsulError(
                400,
                f"Invalid Session TTL '{int(ttl * 1e9)}', must be between "
                f"[{go_duration(state.session_ttl_min)}={go_duration(SESSION_TTL_MAX)}]",
            )
        behavior = spec.get("behavior") or "release"
        if behavior not in ("release", "delete"):
            raise ConsulError(400, f"Invalid Behavior setting '{behavior}'")
        lock_delay = (
            parse_duration(spec["lockdelay"], "LockDelay") if "lockdelay" in spec else DEFAULT_LOCK_DELAY
        )
        checks = spec.get("nodechecks") or spec.get("checks")
        node_checks = list(checks) if checks is not None else ["serfHealth"]
        with state.cond:
            self._server_write()
            for cid in node_checks:
                check = state.checks.get(cid)
                if check is None:
                    raise ConsulError(500, f'Missing check "{cid}" registration')
                if check.status == "critical":
                    raise ConsulError(500, f'Check "{cid}" is in critical state')
            idx = state.bump()
            sid = str(uuid.uuid4())
            session = Session(sid, spec.get("name", ""), ttl, behavior, lock_delay, node_checks, idx, idx)
            if ttl is not None:
                session.expires_at = time.monotonic() + ttl * TTL_MULTIPLIER
            state.sessions[sid] = session
            state.sessions_index = idx
            return 200, {"ID": sid}, {}

    def session_destroy(self, query: dict[str, str], body: bytes, sid: str) -> tuple[int, Any, dict]:
        with self.state.cond:
            self._server_write()
            self.state.destroy_session(sid)
            return 200, True, {}

    def session_renew(self, query: dict[str, str], body: bytes, sid: str) -> tuple[int, Any, dict]:
        with self.state.cond:
            self._server_write()
            session = self._session_of(sid)
            if session.ttl is not None:
                session.expires_at = time.monotonic() + session.ttl * TTL_MULTIPLIER
            return 200, [session.to_json()], {}

    def session_info(self, query: dict[str, str], body: bytes, sid: str) -> tuple[int, Any, dict]:
        state = self.state

        def compute() -> tuple[int, Any]:
            session = state.sessions.get(sid)
            return state.sessions_index, [session.to_json()] if session else []

        _, payload, headers = self._blocking(query, compute)
        return 200, payload, headers

    def session_list(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        state = self.state

        def compute() -> tuple[int, Any]:
            return state.sessions_index, [s.to_json() for s in state.sessions.values()]

        _, payload, headers = self._blocking(query, compute)
        return 200, payload, headers

    # Agent services and checks ------------------------------------------------------------

    def service_register(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        try:
            raw = json.loads(body or b"{}")
        except ValueError as e:
            raise ConsulError(400, f"Request decode failed: {e}") from e
        spec = _fields(raw)
        name = spec.get("name") or ""
        if not name:
            raise ConsulError(400, "Invalid Service: Missing service name")
        meta = spec.get("meta") or {}
        _check_meta(meta)
        sid = spec.get("id") or name
        raw_checks = list(spec.get("checks") or [])
        if spec.get("check"):
            raw_checks.insert(0, spec["check"])
        state = self.state
        with state.cond:
            checks = [
                self._check_from(_fields(c), sid, name, i, len(raw_checks)) for i, c in enumerate(raw_checks)
            ]
            idx = state.bump()
            old = state.services.get(sid)
            if old is not None and old.name != name:
                state.touch_service(old.name, idx)
            svc = Service(
                sid,
                name,
                list(spec.get("tags") or []),
                spec.get("address") or "",
                int(spec.get("port") or 0),
                {str(k): str(v) for k, v in meta.items()},
                bool(spec.get("enabletagoverride")),
                old.create_index if old else idx,
                idx,
            )
            state.services[sid] = svc
            new_ids = {c.check_id for c in checks}
            if (
                query.get("replace-existing-checks") in ("", "true", "1")
                and "replace-existing-checks" in query
            ):
                for cid in [
                    cid for cid, c in state.checks.items() if c.service_id == sid and cid not in new_ids
                ]:
                    del state.checks[cid]
            for check in checks:
                check.create_index = check.modify_index = idx
                check.service_tags = list(svc.tags)
                state.checks[check.check_id] = check
            for c in state.checks.values():
                if c.service_id == sid:
                    c.service_tags = list(svc.tags)
            state.catalog_index = state.checks_index = idx
            state.touch_service(name, idx)
            return 200, "", {}

    def _check_from(self, spec: dict[str, Any], sid: str, name: str, i: int, count: int) -> HealthCheck:
        cid = (
            spec.get("checkid")
            or spec.get("id")
            or (f"service:{sid}" if count == 1 else f"service:{sid}:{i + 1}")
        )
        kinds = [k for k in ("http", "tcp", "ttl") if spec.get(k)]
        if len(kinds) != 1:
            unsupported = [
                k for k in ("args", "grpc", "h2ping", "dockercontainerid", "aliasservice") if spec.get(k)
            ]
            what = (
                f"the {unsupported[0]} check type is not emulated"
                if unsupported
                else "Must provide TTL or Interval"
            )
            raise ConsulError(400, f"Invalid check: {what}")
        kind = kinds[0]
        check = HealthCheck(cid, spec.get("name") or f"Service '{name}' check", sid, name, kind)
        check.notes = spec.get("notes") or ""
        check.status = spec.get("status") or "critical"
        if check.status not in _SEVERITY:
            raise ConsulError(400, f"Invalid check status {check.status!r}")
        if "deregistercriticalserviceafter" in spec:
            check.deregister_after = parse_duration(spec["deregistercriticalserviceafter"])
        check.success_before_passing = int(spec.get("successbeforepassing") or 0)
        check.failures_before_critical = int(spec.get("failuresbeforecritical") or 0)
        if kind == "ttl":
            check.ttl = parse_duration(spec["ttl"], "TTL")
            check.ttl_deadline = time.monotonic() + check.ttl
            return check
        check.target = str(spec[kind])
        check.interval = parse_duration(spec.get("interval", ""), "Interval")
        if check.interval <= 0:
            raise ConsulError(400, "Invalid check: Interval must be > 0 for HTTP and TCP checks")
        check.timeout = parse_duration(spec["timeout"]) if spec.get("timeout") else 10.0
        check.next_run = time.monotonic()  # Consul staggers the first run within the interval
        return check

    def service_deregister(self, query: dict[str, str], body: bytes, sid: str) -> tuple[int, Any, dict]:
        with self.state.cond:
            if not self.state.deregister_service(sid):
                raise ConsulError(
                    404,
                    f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the service name.',
                )
            return 200, "", {}

    def agent_services(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        with self.state.cond:
            return 200, {sid: s.agent_json() for sid, s in sorted(self.state.services.items())}, {}

    def agent_service(self, query: dict[str, str], body: bytes, sid: str) -> tuple[int, Any, dict]:
        with self.state.cond:
            svc = self.state.services.get(sid)
            if svc is None:
                raise ConsulError(404, f"unknown service ID: {sid}")
            out = svc.agent_json()
            out["ContentHash"] = f"{svc.modify_index:016x}"
            return 200, out, {"X-Consul-ContentHash": out["ContentHash"]}

    def agent_checks(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        with self.state.cond:
            return 200, {cid: c.to_json() for cid, c in sorted(self.state.checks.items())}, {}

    def agent_self(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        config = {
            "Datacenter": DATACENTER,
            "NodeName": NODE,
            "NodeID": NODE_ID,
            "Server": True,
            "Version": "1.20.0-emulator",
        }
        return 200, {"Config": config, "Member": {"Name": NODE, "Addr": "127.0.0.1", "Status": 1}}, {}

    def _ttl_check(self, cid: str) -> HealthCheck:
        check = self.state.checks.get(cid)
        if check is None:
            raise ConsulError(
                404, f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.'
            )
        if check.kind != "ttl":
            raise ConsulError(500, f"CheckID {cid!r} does not have associated TTL")
        return check

    def _update_ttl(self, cid: str, status: str, output: str) -> tuple[int, Any, dict]:
        with self.state.cond:
            check = self._ttl_check(cid)
            check.ttl_deadline = time.monotonic() + check.ttl
            self.state.set_check(check, status, output)
            return 200, "", {}

    def check_ttl(self, query: dict[str, str], body: bytes, verb: str, cid: str) -> tuple[int, Any, dict]:
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[verb]
        return self._update_ttl(cid, status, query.get("note", ""))

    def check_update(self, query: dict[str, str], body: bytes, cid: str) -> tuple[int, Any, dict]:
        spec = _fields(json.loads(body) if body.strip() else {})
        status = spec.get("status") or ""
        if status not in _SEVERITY:
            raise ConsulError(400, f'Invalid check status: "{status}"')
        return self._update_ttl(cid, status, str(spec.get("output") or ""))

    # Health and catalog ---------------------------------------------------------------

    def _service_index(self, name: str) -> int:
        return self.state.service_index.get(name) or self.state.catalog_index

    def health_service(self, query: dict[str, str], body: bytes, name: str) -> tuple[int, Any, dict]:
        state = self.state
        passing, tag = "passing" in query and query["passing"] not in ("false", "0"), query.get("tag")

        def compute() -> tuple[int, Any]:
            found = state.health_of(name)
            if tag:
                found = [f for f in found if tag in f["Service"]["Tags"]]
            if passing:
                found = [f for f in found if all(c["Status"] == "passing" for c in f["Checks"])]
            return self._service_index(name), found

        _, payload, headers = self._blocking(query, compute, lambda: self._service_index(name))
        return 200, payload, headers

    def health_checks(self, query: dict[str, str], body: bytes, name: str) -> tuple[int, Any, dict]:
        state = self.state

        def compute() -> tuple[int, Any]:
            found = [
                c.to_json()
                for c in sorted(state.checks.values(), key=lambda c: c.check_id)
                if c.service_name == name
            ]
            return self._service_index(name), found

        _, payload, headers = self._blocking(query, compute, lambda: self._service_index(name))
        return 200, payload, headers

    def health_state(self, query: dict[str, str], body: bytes, state_name: str) -> tuple[int, Any, dict]:
        if state_name not in ("any", *_SEVERITY):
            raise ConsulError(400, f"Invalid state: {state_name}")
        state = self.state

        def compute() -> tuple[int, Any]:
            checks = sorted(state.checks.values(), key=lambda c: (c.service_id, c.check_id))
            found = [c.to_json() for c in checks if state_name in ("any", c.status)]
            return state.checks_index, found

        _, payload, headers = self._blocking(query, compute, lambda: state.checks_index)
        return 200, payload, headers

    def catalog_services(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        state = self.state

        def compute() -> tuple[int, Any]:
            names: dict[str, list[str]] = {"consul": []}
            for svc in state.services.values():
                tags = names.setdefault(svc.name, [])
                tags.extend(t for t in svc.tags if t not in tags)
            return state.catalog_index, {k: sorted(v) for k, v in sorted(names.items())}

        _, payload, headers = self._blocking(query, compute, lambda: state.catalog_index)
        return 200, payload, headers

    def catalog_service(self, query: dict[str, str], body: bytes, name: str) -> tuple[int, Any, dict]:
        state = self.state
        tag = query.get("tag")

        def compute() -> tuple[int, Any]:
            found = [
                s.catalog_json()
                for s in sorted(state.services.values(), key=lambda s: s.id)
                if s.name == name
            ]
            if tag:
                found = [f for f in found if tag in f["ServiceTags"]]
            return self._service_index(name), found

        _, payload, headers = self._blocking(query, compute, lambda: self._service_index(name))
        return 200, payload, headers

    def catalog_nodes(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        node = _node_json()
        node.update({"CreateIndex": 1, "ModifyIndex": 1})
        _, payload, headers = self._blocking(query, lambda: (1, [node]))
        return 200, payload, headers

    def status_leader(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        with self.state.cond:
            leader = LEADER if self.state.leader else ""
            return 200, json.dumps(leader).encode(), {"Content-Type": "application/json"}

    def status_peers(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        with self.state.cond:
            return 200, [LEADER] if self.state.leader else [], {}

    # Test controls (not Consul's API) ---------------------------------------------------

    def admin_reset_index(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        self.state.reset_index(int(query.get("to") or 1))
        return 200, True, {}

    def admin_leader(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        self.state.set_leader(query.get("present", "true").lower() in ("1", "true", "yes"))
        return 200, True, {}

    def admin_drop_next_reply(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        self.dropped_replies.append(query.get("path") or "/v1/txn")
        return 200, True, {}


def _fields(raw: Any) -> dict[str, Any]:
    """Consul decodes JSON field names case-insensitively and accepts snake_case: normalise."""
    if not isinstance(raw, dict):
        raise ConsulError(400, "Request decode failed: expected a JSON object")
    return {str(k).replace("_", "").lower(): v for k, v in raw.items()}


def _check_meta(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise ConsulError(400, "Invalid Service Meta: expected an object")
    if len(meta) > 64:
        raise ConsulError(
            400, "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs"
        )
    for key, value in meta.items():
        if not _META_KEY.fullmatch(key) or len(key) > 128:
            raise ConsulError(
                400, f"Invalid Service Meta: Key contains invalid characters or is too long: {key!r}"
            )
        if key.startswith("consul-"):
            raise ConsulError(
                400, f"Invalid Service Meta: Key prefix 'consul-' is reserved for internal use: {key!r}"
            )
        if len(str(value)) > 512:
            raise ConsulError(
                400, f"Invalid Service Meta: Value is too long (limit: 512 characters): {key!r}"
            )


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
    ) -> None:
        super().__init__(address, _Handler)
        self.state = ConsulState(acl_token=acl_token, session_ttl_min=session_ttl_min)
        self.api = ConsulAPI(self.state)
        self._stop = threading.Event()
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

    def stop(self) -> None:
        self._stop.set()
        self.shutdown()
        self.server_close()
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
        runner = run_http if check.kind == "http" else run_tcp
        status, output = runner(check.target, check.timeout)
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
    parser = argparse.ArgumentParser(description="Serve an emulated Consul HTTP API.")
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


if __name__ == "__main__":
    main()
