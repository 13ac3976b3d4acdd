"""What every ``portctl doctor`` check takes and gives: a :class:`DoctorContext` in, a list of
:class:`Verdict` out, one per finding, each with the fix to run."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from portctl.compose.check import Target
    from portctl.compose.project import ComposeProject
    from portctl.errors import StoreError
    from portctl.host.holders import HostPorts
    from portctl.ports.allocator import PortAllocator
    from portctl.registry.entries import Registry

__all__ = ["DoctorContext", "Verdict", "VerdictStatus"]


class VerdictStatus(enum.StrEnum):
    OK = "ok"  # checked, nothing to fix
    WARN = "warn"  # worth knowing; nothing breaks because of it now
    FAIL = "fail"  # needs fixing: doctor exits 1
    UNKNOWN = "unknown"  # could not be checked (a tool missing, not root): says why


@dataclass(frozen=True)
class Verdict:
    check: str  # "in use", "refused", "bind", "mapping", "firewall", "store"
    subject: str  # what it is about: "postgres 5432/tcp", "store", "iptables"
    status: VerdictStatus
    finding: str  # one line: what was found
    fix: str = ""  # one line: the command or edit that fixes it ("" when nothing to do)
    service: str | None = None
    port: int | None = None
    protocol: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # for --json: holders, rules, keys

    @property
    def needs_fixing(self) -> bool:
        return self.status == VerdictStatus.FAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "subject": self.subject,
            "status": self.status.value,
            "finding": self.finding,
            "fix": self.fix,
            "service": self.service,
            "port": self.port,
            "protocol": self.protocol,
            "details": self.details,
        }


@dataclass
class DoctorContext:
    """What the checks look at, gathered once per run."""

    allocator: PortAllocator
    registry: Registry
    environment: str
    targets: list[Target]  # the ports to examine (portctl.compose.check.targets)
    host: HostPorts  # one scan of listeners and containers, shared by every check
    project: ComposeProject | None = None
    now: float = 0.0
    asked_ports: tuple[int, ...] = ()  # PORT arguments that are not allocated to any service
    store_error: StoreError | None = None  # the store did not answer: only the host was examined
