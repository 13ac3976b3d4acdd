"""The Consul store's KV encoding: version tokens, key flags, sizes and the small readers of
Consul's answers shared by its reads and its transactions."""

from __future__ import annotations

import builtins
import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from portctl import _validate
from portctl.backends import _consul_services as services
from portctl.backends._consul_watch import Mark
from portctl.backends.base import (
    Change,
    Create,
    Entry,
    Operation,
    Put,
)
from portctl.errors import (
    InvalidInput,
    StoreError,
    StoreUnavailable,
)
from portctl.records import HealthRecord, ServiceEntry, Status

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
