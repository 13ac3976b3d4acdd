"""The records that layers share, and their encoding in the store: one home for each."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from portctl.errors import InvalidInput, StoreCorrupt

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
