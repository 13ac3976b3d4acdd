"""The Consul store's transactions: portctl operations translated into one ``/v1/txn`` (KV
operations, sessions for TTLs) plus the agent calls that register, deregister or update the
services and checks behind registry keys, with the undo and resync when a part fails."""

from __future__ import annotations

import base64
import builtins
import contextlib
import json
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from portctl.backends import _consul_services as services
from portctl.backends._consul_http import ConsulHTTP, NotApplied, go_duration
from portctl.backends._consul_kv import (
    _VERSION,
    MARK,
    _check_size,
    _flags,
    _health_record,
    _json,
    _keeps_ttl,
    _lease,
    _ok,
    _Plan,
    _Sending,
    _service_entry,
    _Version,
)
from portctl.backends._retry import retried
from portctl.backends.base import (
    Create,
    Delete,
    Entry,
    Expect,
    Operation,
    Put,
    check_operations,
)
from portctl.errors import (
    InvalidInput,
    KeyExists,
    StoreCorrupt,
    StoreDenied,
    StoreError,
    VersionConflict,
)
from portctl.keys import parse_registry_key
from portctl.records import ServiceEntry


class ConsulTransactions:
    """:meth:`Store.transact` for :class:`ConsulStore`, kept apart from its reads and watch."""

    prefix: str
    _http: ConsulHTTP
    _lock: threading.Lock

    if TYPE_CHECKING:

        def _kv_get(self, key: str) -> dict[str, Any] | None: ...

        def _entry(self, raw: dict[str, Any]) -> Entry: ...

        def _health(self, key: str) -> Entry | None: ...

        def _healths(
            self, entries: Iterable[Entry], cached: dict[str, builtins.list[dict[str, Any]]]
        ) -> dict[str, Entry]: ...

        def landed(self, operations: Sequence[Operation]) -> dict[str, Entry] | None: ...

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
