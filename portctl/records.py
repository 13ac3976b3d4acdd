"""The records that layers share, and their encoding in the store: one home for each."""

from __future__ import annotations

import enum
import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from portctl import _validate
from portctl.errors import InvalidInput, StoreCorrupt

# Service registrations and their health
#
# Each instance is two keys (portctl.keys.entry_key and health_key): the registration
# (ServiceEntry) and its health (HealthRecord), apart so that checks rewrite only the small
# health key.


class Stored(Protocol):
    """What a record is read from: a store entry's key and value."""

    @property
    def key(self) -> str: ...

    @property
    def value(self) -> str: ...


ID_FORM = "1-128 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


class Status(enum.StrEnum):
    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class CheckSpec:
    kind: str = "none"  # "tcp", "http", "ttl" or "none"
    url: str | None = None  # http checks
    interval: float = 5.0
    timeout: float = 2.0
    ttl: float | None = None  # ttl checks: how long a pass lasts
    deregister_after: float | None = None  # critical this long: the agent removes the entry
    successes_before_passing: int = 1
    failures_before_critical: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CheckSpec:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)

    def describe(self) -> str:
        if self.kind == "http":
            return f"http {self.url} every {self.interval:g}s"
        if self.kind == "ttl":
            return f"ttl {self.ttl:g}s"
        if self.kind == "tcp":
            return f"tcp every {self.interval:g}s"
        return "none"


def valid_instance_id(value: str) -> str:
    if not _ID.fullmatch(value) or ".." in value:
        raise InvalidInput("--id", value, ID_FORM)
    return value


@dataclass(frozen=True)
class ServiceEntry:
    id: str
    service: str
    environment: str
    host: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    check: CheckSpec = field(default_factory=CheckSpec)
    registered_at: float = 0.0
    pid: int | None = None  # the process that registered it, for zombie reconciliation
    lease: float | None = None  # seconds the entry lives unless kept alive (None: until removed)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tags"] = list(self.tags)
        out["meta"] = dict(self.meta)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ServiceEntry:
        """Validated as if typed by a user: an entry becomes router configs and URLs."""
        return cls(
            id=valid_instance_id(str(raw["id"])),
            service=_validate.service_name(str(raw["service"])),
            environment=_validate.service_name(str(raw["environment"]), "environment"),
            host=_validate.host_identity(str(raw["host"])),
            address=_validate.host(str(raw["address"]), "address"),
            port=_validate.port(raw["port"]),
            tags=tuple(raw.get("tags", ())),
            meta=dict(raw.get("meta", {})),
            check=CheckSpec.from_dict(raw.get("check", {})),
            registered_at=float(raw.get("registered_at", 0.0)),
            pid=raw.get("pid"),
            lease=raw.get("lease"),
        )


@dataclass(frozen=True)
class HealthRecord:
    status: Status = Status.CRITICAL
    output: str = ""
    updated_at: float = 0.0
    pending: Status | None = None  # a result seen but not yet often enough to change status
    streak: int = 0  # how many times in a row ``pending`` was seen
    critical_since: float | None = None
    expires_at: float | None = None  # ttl checks: critical after this time without a renewal
    duration: float | None = None  # seconds the last check took, when portctl ran it

    def effective(self, now: float | None = None) -> Status:
        return Status.CRITICAL if self.expired(now) else self.status

    def expired(self, now: float | None = None) -> bool:
        """Whether a TTL ran out without a renewal (before any agent recorded it)."""
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def output_now(self, ttl: float | None = None, now: float | None = None) -> str:
        """The output as true when read: a TTL that ran out says so, not its last report."""
        if self.expires_at is not None and self.expired(now):
            return expiry_text(self.expires_at, ttl)
        return self.output

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        out["pending"] = self.pending.value if self.pending else None
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> HealthRecord:
        return cls(
            status=Status(raw["status"]),
            output=str(raw.get("output", "")),
            updated_at=float(raw.get("updated_at", 0.0)),
            pending=Status(raw["pending"]) if raw.get("pending") else None,
            streak=int(raw.get("streak", 0)),
            critical_since=raw.get("critical_since"),
            expires_at=raw.get("expires_at"),
            duration=_seconds(raw.get("duration")),
        )


def _seconds(value: object) -> float | None:
    """A stored duration; None when absent or not a non-negative number (older records)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        return None
    return float(value)


def expiry_text(expires_at: float, ttl: float | None) -> str:
    """A TTL's expiry as a moment, not an age: stored once, it must stay true when read later."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))
    within = f" (no update within its {ttl:g}s TTL)" if ttl else ""
    return f"TTL expired at {stamp}{within}"


def parse_entry(item: Stored) -> ServiceEntry:
    try:
        return ServiceEntry.from_dict(json.loads(item.value))
    except RecursionError as e:
        raise StoreCorrupt(item.key, "the service entry is not valid (JSON nested too deeply)") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise StoreCorrupt(item.key, f"the service entry is not valid ({e})") from e


def parse_health(item: Stored) -> HealthRecord:
    try:
        return HealthRecord.from_dict(json.loads(item.value))
    except RecursionError as e:
        raise StoreCorrupt(item.key, "the health record is not valid (JSON nested too deeply)") from e
    except (ValueError, KeyError, TypeError) as e:
        raise StoreCorrupt(item.key, f"the health record is not valid ({e})") from e


# Blue-green live pointers
#
# The pointer of a service in an environment is one key (portctl.keys.pointer_key), so one
# compare-and-set orders a flip and the record of it. Its value::
#
#     {"format": "portctl-bluegreen", "schema": 1, "service": "api", "environment": "production",
#      "live": "green", "previous": "blue", "changed_at": 1767225600.0, "actor": "deploy@web-1",
#      "drain_until": 1767225630.0,
#      "history": [{"at": 1767225600.0, "actor": "deploy@web-1", "from": "blue", "to": "green",
#                   "kind": "cutover"}]}
#
# ``live`` may be null: the service's instances without a color serve. The history keeps the
# last HISTORY_LIMIT cutovers and rollbacks. Times are stored as seconds since the epoch; the
# ``to_dict()`` a caller shows gives them as ISO 8601 UTC strings.

COLORS = ("blue", "green")
COLOR_FORM = "blue or green"
HISTORY_LIMIT = 20
POINTER_FORMAT = "portctl-bluegreen"
POINTER_SCHEMA = 1


def check_color(value: object, field_name: str = "color") -> str:
    """``value`` as a color, or InvalidInput naming ``field_name``."""
    if value not in COLORS:
        raise InvalidInput(field_name, value, COLOR_FORM)
    return str(value)


def iso_utc(seconds: float) -> str:
    """``2026-11-27T14:00:12.345Z``: seconds since the epoch as ISO 8601 UTC."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Flip:
    """One cutover or rollback in the history."""

    at: float
    actor: str
    from_color: str | None
    to_color: str | None
    kind: str  # "cutover" or "rollback"

    def stored(self) -> dict[str, Any]:
        """As the pointer's stored value holds it (``at`` in seconds since the epoch)."""
        return {
            "at": self.at,
            "actor": self.actor,
            "from": self.from_color,
            "to": self.to_color,
            "kind": self.kind,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.stored(), "at": iso_utc(self.at)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Flip:
        return cls(float(raw["at"]), str(raw["actor"]), raw.get("from"), raw.get("to"), str(raw["kind"]))


@dataclass(frozen=True)
class LivePointer:
    service: str
    environment: str
    live: str | None
    previous: str | None = None
    changed_at: float = 0.0
    actor: str = ""
    drain_until: float | None = None
    history: tuple[Flip, ...] = ()
    version: str = ""  # the store's version token of the key this was read from

    def to_json(self) -> str:
        doc = {
            "format": POINTER_FORMAT,
            "schema": POINTER_SCHEMA,
            "service": self.service,
            "environment": self.environment,
            "live": self.live,
            "previous": self.previous,
            "changed_at": self.changed_at,
            "actor": self.actor,
            "drain_until": self.drain_until,
            "history": [f.stored() for f in self.history[-HISTORY_LIMIT:]],
        }
        return json.dumps(doc, sort_keys=True)

    def flipped(self, to: str | None, actor: str, now: float, drain: float, kind: str) -> LivePointer:
        flip = Flip(now, actor, self.live, to, kind)
        return LivePointer(
            self.service,
            self.environment,
            to,
            self.live,
            now,
            actor,
            now + drain,
            (*self.history, flip)[-HISTORY_LIMIT:],
        )


def parse_pointer(key: str, value: str, version: str) -> LivePointer:
    """The pointer stored at ``key``; StoreCorrupt naming the key if it is not one."""
    try:
        return _pointer_from(json.loads(value), version)
    except RecursionError as e:
        raise StoreCorrupt(key, "the blue-green pointer is not valid (JSON nested too deeply)") from e
    except (ValueError, KeyError, TypeError) as e:
        raise StoreCorrupt(key, f"the blue-green pointer is not valid ({e})") from e


def _pointer_from(doc: Any, version: str) -> LivePointer:
    if not isinstance(doc, dict) or doc.get("format") != POINTER_FORMAT:
        raise ValueError(f"not a {POINTER_FORMAT} record")
    if int(doc.get("schema", 0)) > POINTER_SCHEMA:
        raise ValueError(f"schema {doc['schema']} is newer than this portctl reads ({POINTER_SCHEMA})")
    live, previous = doc.get("live"), doc.get("previous")
    for color in (live, previous):
        if color is not None:
            check_color(color, "live")
    return LivePointer(
        str(doc["service"]),
        str(doc["environment"]),
        live,
        previous,
        float(doc.get("changed_at", 0.0)),
        str(doc.get("actor", "")),
        doc.get("drain_until"),
        tuple(Flip.from_dict(f) for f in doc.get("history", [])),
        version,
    )


# Events
#
# What portctl did to a port by itself, one key per event (portctl.keys.event_key), kept so a
# person can see afterwards why a service is on another port than yesterday:
#
#     {"format": "portctl-event", "schema": 1, "kind": "moved", "at": 1767225600.0,
#      "host": "web-1", "environment": "production", "service": "api", "protocol": "tcp",
#      "old_port": 8000, "new_port": 8001, "holder": "container intruder (image ...)",
#      "actor": "portctl agent --resolve", "detail": "...", "files": [".env.ports"]}

EVENT_FORMAT = "portctl-event"
EVENT_SCHEMA = 1
EVENT_KINDS = ("moved", "freed")


@dataclass(frozen=True)
class Event:
    kind: str  # "moved": a service's allocation moved off a port a foreign holder took; "freed"
    at: float  # seconds since the epoch
    host: str
    actor: str  # the command that acted: "portctl resolve", "portctl agent --resolve", ...
    environment: str | None = None
    service: str | None = None
    protocol: str = "tcp"
    old_port: int | None = None
    new_port: int | None = None
    holder: str = ""  # what held (or holds) the old port, as `portctl who` describes it
    detail: str = ""
    files: tuple[str, ...] = ()  # the files rewritten for it
    key: str = ""  # the store key it was read from ("" before it is recorded)

    def to_json(self) -> str:
        doc = {"format": EVENT_FORMAT, "schema": EVENT_SCHEMA, **self._fields()}
        return json.dumps(doc, sort_keys=True)

    def _fields(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "at": self.at,
            "host": self.host,
            "actor": self.actor,
            "environment": self.environment,
            "service": self.service,
            "protocol": self.protocol,
            "old_port": self.old_port,
            "new_port": self.new_port,
            "holder": self.holder,
            "detail": self.detail,
            "files": list(self.files),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self._fields(), "at": iso_utc(self.at), "key": self.key}


def parse_event(item: Stored) -> Event:
    """The event stored at ``item.key``; StoreCorrupt naming the key if it is not one."""
    try:
        return _event_from(json.loads(item.value), item.key)
    except RecursionError as e:
        raise StoreCorrupt(item.key, "the event is not valid (JSON nested too deeply)") from e
    except (ValueError, KeyError, TypeError) as e:
        raise StoreCorrupt(item.key, f"the event is not valid ({e})") from e


def _event_from(doc: Any, key: str) -> Event:
    if not isinstance(doc, dict) or doc.get("format") != EVENT_FORMAT:
        raise ValueError(f"not a {EVENT_FORMAT} record")
    if int(doc.get("schema", 0)) > EVENT_SCHEMA:
        raise ValueError(f"schema {doc['schema']} is newer than this portctl reads ({EVENT_SCHEMA})")
    return Event(
        kind=str(doc["kind"]),
        at=float(doc["at"]),
        host=str(doc["host"]),
        actor=str(doc.get("actor", "")),
        environment=_optional_text(doc.get("environment")),
        service=_optional_text(doc.get("service")),
        protocol=str(doc.get("protocol", "tcp")),
        old_port=_optional_port(doc.get("old_port")),
        new_port=_optional_port(doc.get("new_port")),
        holder=str(doc.get("holder", "")),
        detail=str(doc.get("detail", "")),
        files=tuple(str(f) for f in doc.get("files", [])),
        key=key,
    )


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


def _optional_port(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"{value!r} is not a port")
    return value
