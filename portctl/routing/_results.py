"""What blue-green's operations return: a deployed color, both colors' state, a cutover.

Each ``to_dict()`` is the ``data`` of the CLI's ``--json`` envelope: times as ISO 8601 UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from portctl.records import LivePointer, iso_utc
from portctl.registry.entries import Instance

__all__ = ["BlueGreenStatus", "ColorState", "CutoverResult", "Deployed"]


@dataclass(frozen=True)
class Deployed:
    service: str
    environment: str
    color: str
    instance: Instance
    live: bool  # the first color of a service goes live at once: nothing served before it

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "environment": self.environment,
            "color": self.color,
            "live": self.live,
            "instance": self.instance.to_dict(),
        }


@dataclass(frozen=True)
class ColorState:
    color: str
    port: int | None  # its allocation on this host, if any
    instances: tuple[Instance, ...]
    live: bool
    draining: bool

    @property
    def state(self) -> str:
        if self.live:
            return "live"
        if self.draining:
            return "draining"
        return "idle" if self.instances else "not deployed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "color": self.color,
            "port": self.port,
            "state": self.state,
            "live": self.live,
            "instances": [i.to_dict() for i in self.instances],
        }


@dataclass(frozen=True)
class BlueGreenStatus:
    service: str
    environment: str
    pointer: LivePointer | None
    colors: tuple[ColorState, ...]
    uncolored: tuple[Instance, ...] = ()

    @property
    def live(self) -> str | None:
        return self.pointer.live if self.pointer else None

    def to_dict(self) -> dict[str, Any]:
        p = self.pointer
        return {
            "service": self.service,
            "environment": self.environment,
            "live": self.live,
            "changed_at": iso_utc(p.changed_at) if p and p.changed_at else None,
            "actor": p.actor if p else None,
            "drain_until": iso_utc(p.drain_until) if p and p.drain_until else None,
            "colors": [c.to_dict() for c in self.colors],
            "uncolored": [i.to_dict() for i in self.uncolored],
            "history": [f.to_dict() for f in (p.history if p else ())],
        }


@dataclass(frozen=True)
class CutoverResult:
    service: str
    environment: str
    kind: str  # "cutover" or "rollback"
    from_color: str | None
    to_color: str | None
    actor: str
    flipped_at: float
    probes: int  # checks run on the target before the flip
    drain: float
    drained: bool  # False when the wait was interrupted (the flip stands)
    instances: tuple[str, ...] = field(default=())  # the target's instance ids

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "environment": self.environment,
            "kind": self.kind,
            "from": self.from_color,
            "to": self.to_color,
            "actor": self.actor,
            "flipped_at": iso_utc(self.flipped_at),
            "probes": self.probes,
            "drain": self.drain,
            "drained": self.drained,
            "instances": list(self.instances),
        }
