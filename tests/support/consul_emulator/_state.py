"""What the emulated agent and its servers hold: KV, sessions, services and checks, indexes.

No HTTP here: :class:`ConsulState` is the data behind one lock, changed by the API and by the
server's check runner, plus the constants, the error answer and the duration syntax they share.
"""

from __future__ import annotations

import base64
import copy
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

NODE = "emulator"
VERSION = "1.22.0"  # the Consul release whose documented HTTP API this follows
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
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
RUN_KINDS = ("http", "tcp", "script")  # the checks the agent runs on their interval
NODE_MAINTENANCE = "_node_maintenance"
SERVICE_MAINTENANCE = "_service_maintenance:"


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
        if with_value and self.value:  # Consul answers an empty value as null
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
    node: str = NODE

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
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
    kind: str  # "http", "tcp", "script", "ttl", "maintenance", or "" (serf and catalog checks)
    target: str = ""  # URL for http, host:port for tcp
    args: list[str] = field(default_factory=list)  # the command of a script check
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
    node: str = NODE

    def to_json(self) -> dict[str, Any]:
        definition: dict[str, Any] = {}
        if self.kind == "http":
            definition = {"HTTP": self.target, "Interval": go_duration(self.interval)}
        elif self.kind == "tcp":
            definition = {"TCP": self.target, "Interval": go_duration(self.interval)}
        elif self.kind == "script":
            definition = {"ScriptArgs": list(self.args), "Interval": go_duration(self.interval)}
        if self.kind in ("http", "tcp", "script"):
            definition["Timeout"] = go_duration(self.timeout)
        if self.deregister_after is not None:
            definition["DeregisterCriticalServiceAfter"] = go_duration(self.deregister_after)
        return {
            "Node": self.node,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(self.service_tags),
            "Type": self.kind,
            "Interval": go_duration(self.interval) if self.interval else "",
            "Timeout": go_duration(self.timeout) if self.kind in ("http", "tcp", "script") else "",
            "Definition": definition,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Node:
    name: str
    address: str
    id: str = ""
    tagged_addresses: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    create_index: int = 1
    modify_index: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Node": self.name,
            "Address": self.address,
            "Datacenter": DATACENTER,
            "TaggedAddresses": dict(self.tagged_addresses),
            "Meta": dict(self.meta),
        }

    def indexed_json(self) -> dict[str, Any]:
        return {**self.to_json(), "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}


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
    node: str = NODE
    tagged_addresses: dict[str, dict[str, Any]] = field(default_factory=dict)

    def agent_json(self) -> dict[str, Any]:
        out = {
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
        if self.tagged_addresses:
            out["TaggedAddresses"] = copy.deepcopy(self.tagged_addresses)
        return out

    def health_json(self) -> dict[str, Any]:
        out = self.agent_json()
        out.pop("Datacenter")
        out["CreateIndex"], out["ModifyIndex"] = self.create_index, self.modify_index
        return out

    def catalog_json(self, node: Node) -> dict[str, Any]:
        return {
            "ID": node.id,
            "Node": node.name,
            "Address": node.address,
            "Datacenter": DATACENTER,
            "TaggedAddresses": dict(node.tagged_addresses),
            "NodeMeta": dict(node.meta),
            "ServiceID": self.id,
            "ServiceName": self.name,
            "ServiceTags": list(self.tags),
            "ServiceAddress": self.address,
            "ServicePort": self.port,
            "ServiceMeta": dict(self.meta),
            "ServiceTaggedAddresses": copy.deepcopy(self.tagged_addresses),
            "ServiceWeights": {"Passing": 1, "Warning": 1},
            "ServiceEnableTagOverride": self.enable_tag_override,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


NODE_ID = "8a1a3f5c-0000-4000-8000-000000000001"


def _agent_node() -> Node:
    return Node(NODE, "127.0.0.1", NODE_ID, {"lan": "127.0.0.1", "wan": "127.0.0.1"})


class ConsulState:
    """Everything the emulated agent and servers hold, behind one lock.

    Every change takes the next Raft-like index and wakes blocking queries."""

    def __init__(self, *, acl_token: str | None = None, session_ttl_min: float = 10.0) -> None:
        self.cond = threading.Condition()
        self.acl_token = acl_token
        self.enable_script_checks = False  # Consul's enable_script_checks: run "Args" checks
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
        self.services: dict[str, Service] = {}  # the agent's, by ID
        self.checks: dict[str, HealthCheck] = {}  # the agent's, by ID
        # What the servers hold besides: other nodes, and what /v1/catalog/register put there;
        # the agent node's Serf check and the "consul" service of the server itself
        self.nodes: dict[str, Node] = {NODE: _agent_node()}
        self.catalog_services: dict[tuple[str, str], Service] = {}
        self.catalog_checks: dict[tuple[str, str], HealthCheck] = {}
        self.service_index: dict[str, int] = {}
        self.catalog_index = self.index
        self.checks_index = self.index
        self.sessions_index = self.index
        self.maintenance_notes = ""
        serf = HealthCheck("serfHealth", "Serf Health Status", "", "", "", status="passing")
        serf.output = "Agent alive and reachable"
        serf.create_index = serf.modify_index = self.index
        self.catalog_checks[(NODE, serf.check_id)] = serf
        server = Service("consul", "consul", [], "", 8300, {}, False, self.index, self.index)
        self.catalog_services[(NODE, "consul")] = server

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
            for svc in self.all_services():
                svc.create_index, svc.modify_index = min(svc.create_index, to), min(svc.modify_index, to)
            for c in self.all_checks():
                c.create_index, c.modify_index = min(c.create_index, to), min(c.modify_index, to)
            for n in self.nodes.values():
                n.create_index, n.modify_index = min(n.create_index, to), min(n.modify_index, to)
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
        self.touch_checked(check, idx)

    def touch_checked(self, check: HealthCheck, idx: int) -> None:
        """A check changed: so did the health of its service, or of every service on its node."""
        self.checks_index = idx
        if check.service_name:
            self.touch_service(check.service_name, idx)
            return
        for svc in self.all_services():
            if svc.node == check.node:
                self.touch_service(svc.name, idx)

    def add_check(self, check: HealthCheck) -> None:
        """Register (or replace) an agent check. Lock held."""
        idx = self.bump()
        check.create_index = check.modify_index = idx
        self.checks[check.check_id] = check
        self.touch_checked(check, idx)

    def remove_check(self, check_id: str) -> bool:
        check = self.checks.pop(check_id, None)
        if check is None:
            return False
        self.touch_checked(check, self.bump())
        return True

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

    def all_services(self) -> list[Service]:
        found = [*self.services.values(), *self.catalog_services.values()]
        return sorted(found, key=lambda s: (s.node, s.id))

    def all_checks(self) -> list[HealthCheck]:
        found = [*self.checks.values(), *self.catalog_checks.values()]
        return sorted(found, key=lambda c: (c.node, c.service_id, c.check_id))

    def service_checks(self, svc: Service) -> list[HealthCheck]:
        """The checks of the service's node, then its own."""
        return [c for c in self.all_checks() if c.node == svc.node and c.service_id in ("", svc.id)]

    def health_of(self, name: str) -> list[dict[str, Any]]:
        out = []
        for svc in self.all_services():
            if svc.name == name:
                checks = [c.to_json() for c in self.service_checks(svc)]
                node = self.nodes[svc.node].to_json()
                out.append({"Node": node, "Service": svc.health_json(), "Checks": checks})
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
            elif check.kind in RUN_KINDS and not check.running and now >= check.next_run:
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
