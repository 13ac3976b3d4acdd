"""The HTTP API: each route maps a request (method, path, query, body) to an answer over the state.

:class:`ConsulAPI` knows nothing of sockets, so the server can be any HTTP front; answers are
``(status, payload, headers)`` and errors are :class:`ConsulError` with Consul's own text.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ._filter import compile_filter
from ._state import (
    DATACENTER,
    DEFAULT_LOCK_DELAY,
    DEFAULT_WAIT,
    LEADER,
    MAX_TXN_OPS,
    MAX_WAIT,
    NODE,
    NODE_ID,
    NODE_MAINTENANCE,
    SERVICE_MAINTENANCE,
    SESSION_TTL_MAX,
    TTL_MULTIPLIER,
    VERSION,
    ConsulError,
    ConsulState,
    HealthCheck,
    KVEntry,
    Node,
    Service,
    Session,
    go_duration,
    parse_duration,
)

_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_SEVERITY = {"passing": 0, "warning": 1, "critical": 2}

Route = tuple[str, re.Pattern[str], Callable[..., Any]]


class ConsulAPI:
    """The endpoints, over a :class:`ConsulState`."""

    def __init__(self, state: ConsulState) -> None:
        self.state = state
        self.dropped_replies: list[str] = []  # paths whose next reply is never sent
        self.on_leave: Callable[[], None] | None = None  # how the agent shuts down on /v1/agent/leave
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
            ("GET", r"/v1/session/node/(?P<node>[^/]+)", self.session_node),
            ("PUT", r"/v1/agent/service/register", self.service_register),
            ("PUT", r"/v1/agent/service/deregister/(?P<sid>.+)", self.service_deregister),
            ("GET", r"/v1/agent/services", self.agent_services),
            ("GET", r"/v1/agent/service/(?P<sid>.+)", self.agent_service),
            ("PUT", r"/v1/agent/service/maintenance/(?P<sid>.+)", self.service_maintenance),
            ("GET", r"/v1/agent/checks", self.agent_checks),
            ("PUT", r"/v1/agent/check/register", self.check_register),
            ("PUT", r"/v1/agent/check/deregister/(?P<cid>.+)", self.check_deregister),
            ("PUT", r"/v1/agent/maintenance", self.agent_maintenance),
            ("GET", r"/v1/agent/self", self.agent_self),
            ("GET", r"/v1/agent/members", self.agent_members),
            ("PUT", r"/v1/agent/force-leave/(?P<node>[^/]+)", self.agent_force_leave),
            ("PUT", r"/v1/agent/reload", self.agent_reload),
            ("PUT", r"/v1/agent/leave", self.agent_leave),
            ("PUT", r"/v1/agent/check/(?P<verb>pass|warn|fail)/(?P<cid>.+)", self.check_ttl),
            ("PUT", r"/v1/agent/check/update/(?P<cid>.+)", self.check_update),
            ("GET", r"/v1/health/service/(?P<name>[^/]+)", self.health_service),
            ("GET", r"/v1/health/checks/(?P<name>[^/]+)", self.health_checks),
            ("GET", r"/v1/health/state/(?P<state_name>[^/]+)", self.health_state),
            ("GET", r"/v1/health/node/(?P<node>[^/]+)", self.health_node),
            ("GET", r"/v1/health/(?:connect|ingress)/(?P<name>[^/]+)", self.no_instances),
            ("GET", r"/v1/catalog/services", self.catalog_services),
            ("GET", r"/v1/catalog/service/(?P<name>[^/]+)", self.catalog_service),
            ("GET", r"/v1/catalog/nodes", self.catalog_nodes),
            ("GET", r"/v1/catalog/node/(?P<node>[^/]+)", self.catalog_node),
            ("GET", r"/v1/catalog/connect/(?P<name>[^/]+)", self.no_instances),
            ("PUT", r"/v1/catalog/register", self.catalog_register),
            ("PUT", r"/v1/catalog/deregister", self.catalog_deregister),
            ("GET", r"/v1/catalog/datacenters", lambda q, b: (200, [DATACENTER], {})),
            ("GET", r"/v1/status/leader", self.status_leader),
            ("GET", r"/", lambda q, b: (301, "", {"Location": "/ui/"})),
            ("GET", r"/ui/.*", self.ui),
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
        _datacenter(query.get("dc"))
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
            node = str(spec.get("node") or NODE)
            if node not in state.nodes:
                raise ConsulError(500, f"Failed session create: node {node!r} is not registered")
            for cid in node_checks:
                check = state.checks.get(cid) if node == NODE else None
                check = check or state.catalog_checks.get((node, cid))
                if check is None:
                    raise ConsulError(500, f'Missing check "{cid}" registration')
                if check.status == "critical":
                    raise ConsulError(500, f'Check "{cid}" is in critical state')
            idx = state.bump()
            sid = str(uuid.uuid4())
            session = Session(
                sid, spec.get("name", ""), ttl, behavior, lock_delay, node_checks, idx, idx, node=node
            )
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

    def session_node(self, query: dict[str, str], body: bytes, node: str) -> tuple[int, Any, dict]:
        state = self.state

        def compute() -> tuple[int, Any]:
            return state.sessions_index, [s.to_json() for s in state.sessions.values() if s.node == node]

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
            count = len(raw_checks)
            checks = [
                self._check_from(_fields(c), f"service:{sid}" + (f":{i + 1}" if count > 1 else ""), sid, name)
                for i, c in enumerate(raw_checks)
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
                tagged_addresses=_tagged_addresses(spec.get("taggedaddresses")),
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

    def _check_from(self, spec: dict[str, Any], default_id: str, sid: str, name: str) -> HealthCheck:
        """A check from its definition; its ID is ``CheckID`` or ``ID``, else ``default_id``."""
        cid = spec.get("checkid") or spec.get("id") or default_id
        kinds = [k for k in ("http", "tcp", "ttl", "args") if spec.get(k)]
        if kinds == ["args"] and not self.state.enable_script_checks:
            raise ConsulError(
                500,
                "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' "
                "or 'enable_local_script_checks' to true",
            )
        if len(kinds) != 1:
            unsupported = [k for k in ("grpc", "h2ping", "dockercontainerid", "aliasservice") if spec.get(k)]
            what = (
                f"the {unsupported[0]} check type is not emulated"
                if unsupported
                else "Must provide TTL or Interval"
            )
            raise ConsulError(400, f"Invalid check: {what}")
        kind = "script" if kinds[0] == "args" else kinds[0]
        default_name = f"Service '{name}' check" if sid else cid
        check = HealthCheck(cid, spec.get("name") or default_name, sid, name, kind)
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
        if kind == "script":
            check.args = [str(a) for a in spec["args"]]
        else:
            check.target = str(spec[kind])
        check.interval = parse_duration(spec.get("interval", ""), "Interval")
        if check.interval <= 0:
            raise ConsulError(400, "Invalid check: Interval must be > 0 for HTTP, TCP and script checks")
        default_timeout = 30.0 if kind == "script" else 10.0
        check.timeout = parse_duration(spec["timeout"]) if spec.get("timeout") else default_timeout
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
            found = {sid: s.agent_json() for sid, s in sorted(self.state.services.items())}
            return 200, _filtered_map(query, found), {}

    def agent_service(self, query: dict[str, str], body: bytes, sid: str) -> tuple[int, Any, dict]:
        with self.state.cond:
            svc = self.state.services.get(sid)
            if svc is None:
                raise ConsulError(404, f"unknown service ID: {sid}")
            out = svc.agent_json()
            out["ContentHash"] = f"{svc.modify_index:016x}"
            return 200, out, {"X-Consul-ContentHash": out["ContentHash"]}

    def agent_checks(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        """The agent's own checks: not the Serf check, which the servers keep for the node."""
        with self.state.cond:
            found = {cid: c.to_json() for cid, c in sorted(self.state.checks.items())}
            return 200, _filtered_map(query, found), {}

    def check_register(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        """``PUT /v1/agent/check/register``: ``Name`` is required, ``ID`` defaults to it; a
        ``ServiceID`` must name a service of this agent."""
        spec = _fields(_json_body(body))
        name = str(spec.get("name") or "")
        if not name:
            raise ConsulError(400, "Missing check name")
        sid = str(spec.get("serviceid") or "")
        state = self.state
        with state.cond:
            svc = state.services.get(sid) if sid else None
            if sid and svc is None:
                raise ConsulError(404, f'ServiceID "{sid}" does not exist')
            check = self._check_from(spec, name, sid, svc.name if svc else "")
            check.service_tags = list(svc.tags) if svc else []
            state.add_check(check)
            return 200, "", {}

    def check_deregister(self, query: dict[str, str], body: bytes, cid: str) -> tuple[int, Any, dict]:
        with self.state.cond:
            if not self.state.remove_check(cid):
                raise ConsulError(404, f'Unknown check ID "{cid}"')
            return 200, "", {}

    def agent_maintenance(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        """Node maintenance: a critical ``_node_maintenance`` check fails every service here."""
        enable = _enable(query)
        notes = query.get("reason") or (
            "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
        )
        with self.state.cond:
            self._set_maintenance(NODE_MAINTENANCE, "Node Maintenance Mode", None, enable, notes)
            return 200, "", {}

    def service_maintenance(self, query: dict[str, str], body: bytes, sid: str) -> tuple[int, Any, dict]:
        """Service maintenance: a critical ``_service_maintenance:<id>`` check on that service."""
        enable = _enable(query)
        notes = query.get("reason") or (
            "Maintenance mode is enabled for this service, but no reason was provided. "
            "This is a default message."
        )
        with self.state.cond:
            svc = self.state.services.get(sid)
            if svc is None:
                raise ConsulError(404, f'Unknown service ID "{sid}"')
            self._set_maintenance(SERVICE_MAINTENANCE + sid, "Service Maintenance Mode", svc, enable, notes)
            return 200, "", {}

    def _set_maintenance(self, cid: str, name: str, svc: Service | None, enable: bool, notes: str) -> None:
        if not enable:
            self.state.remove_check(cid)
            return
        if cid in self.state.checks:
            return  # already in maintenance: Consul keeps the first reason
        check = HealthCheck(cid, name, svc.id if svc else "", svc.name if svc else "", "maintenance")
        check.notes = notes
        check.service_tags = list(svc.tags) if svc else []
        self.state.add_check(check)

    def agent_self(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        with self.state.cond:
            leader = LEADER if self.state.leader else ""
        config = {
            "Datacenter": DATACENTER,
            "PrimaryDatacenter": DATACENTER,
            "NodeName": NODE,
            "NodeID": NODE_ID,
            "Server": True,
            "Version": VERSION,
            "VersionPrerelease": "",
            "Revision": "emulator",
        }
        stats = {
            "agent": {"checks": str(len(self.state.checks)), "services": str(len(self.state.services))},
            "consul": {"leader": str(bool(leader)).lower(), "leader_addr": leader, "server": "true"},
        }
        coord = {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05}
        return (
            200,
            {
                "Config": config,
                "DebugConfig": {"Datacenter": DATACENTER, "NodeName": NODE, "ServerMode": True},
                "Coord": coord,
                "Member": _member(),
                "Stats": stats,
                "Meta": {"consul-network-segment": "", "consul-version": VERSION},
                "xDS": {"SupportedProxies": {}, "Port": -1, "Ports": {}},
            },
            {},
        )

    def agent_members(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        wan = query.get("wan") not in (None, "", "0", "false")
        return 200, [_member(wan)], {}

    def agent_force_leave(self, query: dict[str, str], body: bytes, node: str) -> tuple[int, Any, dict]:
        if node != NODE:
            raise ConsulError(500, f"agent: No node found with name '{node}'")
        return 200, "", {}

    def agent_reload(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        return 200, "", {}  # the emulator has no configuration files to read again

    def agent_leave(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        """Leave gracefully and shut the agent down, once this answer is sent."""
        if self.on_leave is not None:
            threading.Timer(0.05, self.on_leave).start()
        return 200, "", {}

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

    def _read(
        self, query: dict[str, str], compute: Callable[[], Any], index_of: Callable[[], int]
    ) -> tuple[int, Any, dict]:
        """A blocking read whose list answer goes through ``?filter``; none with ``?peer`` (no
        cluster peering here)."""
        predicate = compile_filter(query["filter"]) if query.get("filter") else None

        def indexed() -> tuple[int, Any]:
            found = [] if query.get("peer") else compute()
            if predicate is not None and isinstance(found, list):
                found = [f for f in found if predicate(f)]
            return index_of(), found

        _, payload, headers = self._blocking(query, indexed, index_of)
        return 200, payload, headers

    def health_service(self, query: dict[str, str], body: bytes, name: str) -> tuple[int, Any, dict]:
        state = self.state
        passing, tag = "passing" in query and query["passing"] not in ("false", "0"), query.get("tag")

        def compute() -> list[dict[str, Any]]:
            found = state.health_of(name)
            if tag:
                found = [f for f in found if tag in f["Service"]["Tags"]]
            if passing:
                found = [f for f in found if all(c["Status"] == "passing" for c in f["Checks"])]
            return found

        return self._read(query, compute, lambda: self._service_index(name))

    def health_checks(self, query: dict[str, str], body: bytes, name: str) -> tuple[int, Any, dict]:
        state = self.state

        def compute() -> list[dict[str, Any]]:
            return [c.to_json() for c in state.all_checks() if c.service_name == name]

        return self._read(query, compute, lambda: self._service_index(name))

    def health_node(self, query: dict[str, str], body: bytes, node: str) -> tuple[int, Any, dict]:
        state = self.state
        compute = lambda: [c.to_json() for c in state.all_checks() if c.node == node]  # noqa: E731
        return self._read(query, compute, lambda: state.checks_index)

    def health_state(self, query: dict[str, str], body: bytes, state_name: str) -> tuple[int, Any, dict]:
        if state_name not in ("any", *_SEVERITY):
            raise ConsulError(400, f"Invalid state: {state_name}")
        state = self.state

        def compute() -> list[dict[str, Any]]:
            return [c.to_json() for c in state.all_checks() if state_name in ("any", c.status)]

        return self._read(query, compute, lambda: state.checks_index)

    def no_instances(self, query: dict[str, str], body: bytes, name: str) -> tuple[int, Any, dict]:
        """Connect-capable instances and ingress gateways: none, as nothing here speaks the mesh."""
        return self._read(query, list, lambda: self._service_index(name))

    def catalog_services(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        """Service names with their tags, from the catalog entries ``?filter`` keeps."""
        state = self.state

        def compute() -> list[dict[str, Any]]:
            return [s.catalog_json(state.nodes[s.node]) for s in state.all_services()]

        code, entries, headers = self._read(query, compute, lambda: state.catalog_index)
        names: dict[str, list[str]] = {}
        for entry in entries:
            tags = names.setdefault(entry["ServiceName"], [])
            tags.extend(t for t in entry["ServiceTags"] if t not in tags)
        return code, {k: sorted(v) for k, v in sorted(names.items())}, headers

    def catalog_service(self, query: dict[str, str], body: bytes, name: str) -> tuple[int, Any, dict]:
        state = self.state
        tag = query.get("tag")

        def compute() -> list[dict[str, Any]]:
            found = [s.catalog_json(state.nodes[s.node]) for s in state.all_services() if s.name == name]
            return [f for f in found if tag in f["ServiceTags"]] if tag else found

        return self._read(query, compute, lambda: self._service_index(name))

    def catalog_nodes(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        state = self.state
        compute = lambda: [n.indexed_json() for _, n in sorted(state.nodes.items())]  # noqa: E731
        return self._read(query, compute, lambda: state.catalog_index)

    def catalog_node(self, query: dict[str, str], body: bytes, node: str) -> tuple[int, Any, dict]:
        """A node and its services (those ``?filter`` keeps); ``null`` for an unknown node."""
        state = self.state
        predicate = compile_filter(query["filter"]) if query.get("filter") else None

        def compute() -> tuple[int, Any]:
            found = state.nodes.get(node)
            if found is None:
                return state.catalog_index, None
            services = {s.id: s.health_json() for s in state.all_services() if s.node == node}
            if predicate is not None:
                services = {k: v for k, v in services.items() if predicate(v)}
            return state.catalog_index, {"Node": found.indexed_json(), "Services": services}

        _, payload, headers = self._blocking(query, compute, lambda: state.catalog_index)
        return 200, payload, headers

    def catalog_register(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        """``PUT /v1/catalog/register``: a node (``Node`` and ``Address`` required), with an
        optional service (``ID`` defaults to its name) and checks (``CheckID`` defaults to
        ``Name``); ``SkipNodeUpdate`` keeps a known node's address and tags."""
        spec = _fields(_json_body(body))
        _datacenter(spec.get("datacenter"))
        name, address = str(spec.get("node") or ""), str(spec.get("address") or "")
        if not name:
            raise ConsulError(400, "Must provide node")
        if not address:
            raise ConsulError(400, "Must provide address if SkipNodeUpdate is not set")
        state = self.state
        with state.cond:
            self._server_write()
            idx = state.bump()
            node = self._register_node(spec, name, address, idx)
            self._register_catalog_service(node, spec.get("service"), idx)
            checks = ([spec["check"]] if spec.get("check") else []) + list(spec.get("checks") or [])
            for raw in checks:
                self._register_catalog_check(node, _fields(raw), idx)
            state.catalog_index = state.checks_index = idx
            return 200, True, {}

    def _register_node(self, spec: dict[str, Any], name: str, address: str, idx: int) -> Node:
        state = self.state
        node = state.nodes.get(name)
        if node is None:
            node = state.nodes[name] = Node(name, address, str(spec.get("id") or ""), create_index=idx)
        elif spec.get("skipnodeupdate"):
            return node
        node.address, node.modify_index = address, idx
        node.tagged_addresses = {str(k): str(v) for k, v in (spec.get("taggedaddresses") or {}).items()}
        node.meta = {str(k): str(v) for k, v in (spec.get("nodemeta") or {}).items()}
        for svc in state.all_services():
            if svc.node == name:
                state.touch_service(svc.name, idx)
        return node

    def _register_catalog_service(self, node: Node, raw: Any, idx: int) -> Service | None:
        if not raw:
            return None
        spec = _fields(raw)
        name = str(spec.get("service") or spec.get("name") or "")
        if not name:
            raise ConsulError(400, "Invalid Service: Missing service name")
        sid = str(spec.get("id") or name)
        old = self.state.catalog_services.get((node.name, sid))
        meta = spec.get("meta") or {}
        _check_meta(meta)
        svc = Service(
            sid,
            name,
            list(spec.get("tags") or []),
            str(spec.get("address") or ""),
            int(spec.get("port") or 0),
            {str(k): str(v) for k, v in meta.items()},
            bool(spec.get("enabletagoverride")),
            old.create_index if old else idx,
            idx,
            node=node.name,
            tagged_addresses=_tagged_addresses(spec.get("taggedaddresses")),
        )
        self.state.catalog_services[(node.name, sid)] = svc
        self.state.touch_service(name, idx)
        return svc

    def _register_catalog_check(self, node: Node, spec: dict[str, Any], idx: int) -> None:
        name = str(spec.get("name") or "")
        cid = str(spec.get("checkid") or spec.get("id") or name)
        if not cid:
            raise ConsulError(400, "Missing check ID or name")
        sid = str(spec.get("serviceid") or "")  # without one, a check of the node
        owner = self.state.catalog_services.get((node.name, sid)) if sid else None
        if sid and owner is None:
            raise ConsulError(400, f"Unknown service ID '{sid}' for check ID '{cid}'")
        check = HealthCheck(cid, name or cid, sid, owner.name if owner else "", "", node=node.name)
        check.status = str(spec.get("status") or "critical")
        check.notes, check.output = str(spec.get("notes") or ""), str(spec.get("output") or "")
        check.service_tags = list(owner.tags) if owner else []
        check.create_index = check.modify_index = idx
        self.state.catalog_checks[(node.name, cid)] = check
        self.state.touch_checked(check, idx)

    def catalog_deregister(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        """``PUT /v1/catalog/deregister``: one check, one service (with its checks), or the node
        with everything on it. The agent's own node is kept: its agent would register it again."""
        spec = _fields(_json_body(body))
        _datacenter(spec.get("datacenter"))
        name = str(spec.get("node") or "")
        if not name:
            raise ConsulError(400, "Must provide node")
        state = self.state
        with state.cond:
            self._server_write()
            idx = state.bump()
            sid, cid = str(spec.get("serviceid") or ""), str(spec.get("checkid") or "")
            doomed_services = [k for k in state.catalog_services if k[0] == name and sid in ("", k[1])]
            doomed_checks = [
                k
                for k, c in state.catalog_checks.items()
                if k[0] == name and (k[1] == cid if cid else (not sid or c.service_id == sid))
            ]
            if cid:
                doomed_services = []
            if name == NODE and not sid and not cid:
                doomed_services = doomed_checks = []
            for key in doomed_services:
                state.touch_service(state.catalog_services.pop(key).name, idx)
            for key in doomed_checks:
                state.touch_checked(state.catalog_checks.pop(key), idx)
            if not sid and not cid and name != NODE:
                state.nodes.pop(name, None)
            state.catalog_index = state.checks_index = idx
            return 200, True, {}

    def ui(self, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        """The agent's web UI (``/`` redirects here, as on an agent with ``ui`` on): one page."""
        page = f"<!doctype html><title>Consul {VERSION} (emulator)</title><h1>{NODE}</h1>"
        return 200, page.encode(), {"Content-Type": "text/html; charset=utf-8"}

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


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body) if body.strip() else {}
    except ValueError as e:
        raise ConsulError(400, f"Request decode failed: {e}") from e


def _datacenter(name: object) -> None:
    """Only this datacenter exists: any other is out of reach, as Consul says."""
    if name not in (None, "", DATACENTER):
        raise ConsulError(500, "No path to datacenter")


def _enable(query: dict[str, str]) -> bool:
    value = query.get("enable")
    if value is None or value == "":
        raise ConsulError(400, "Missing value for enable")
    if value.lower() not in ("true", "false", "1", "0"):
        raise ConsulError(400, f"Invalid value for enable: {value!r}")
    return value.lower() in ("true", "1")


def _member(wan: bool = False) -> dict[str, Any]:
    return {
        "Name": f"{NODE}.{DATACENTER}" if wan else NODE,
        "Addr": "127.0.0.1",
        "Port": 8302 if wan else 8301,
        "Tags": {"dc": DATACENTER, "role": "consul", "build": VERSION, "port": "8300", "bootstrap": "1"},
        "Status": 1,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


def _filtered_map(query: dict[str, str], found: dict[str, Any]) -> dict[str, Any]:
    if not query.get("filter"):
        return found
    predicate = compile_filter(query["filter"])
    return {k: v for k, v in found.items() if predicate(v)}


def _tagged_addresses(raw: Any) -> dict[str, dict[str, Any]]:
    """A service's tagged addresses, ``{"lan": {"Address": ..., "Port": ...}}``, from any casing."""
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise ConsulError(400, "Request decode failed: TaggedAddresses must be an object")
    out = {}
    for tag, value in raw.items():
        fields = _fields(value)
        out[str(tag)] = {"Address": str(fields.get("address") or ""), "Port": int(fields.get("port") or 0)}
    return out


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
