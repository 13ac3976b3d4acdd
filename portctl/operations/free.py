"""Stop what holds a port, safely: the plan first, then the stop, then the proof.

:func:`plan_free` names every holder of a port (:class:`~portctl.host.holders.HostPorts`) and,
for each, what freeing it takes: a container is stopped through the Docker Engine API (also
when a docker-proxy holds the port for it: the proxy ends with its container); a process gets
SIGTERM, a grace period, then SIGKILL; a stopped container holds nothing now and is left alone.
A holder that must not be stopped carries its refusal: an init (PID 1, or PID 1 of a PID
namespace), a kernel thread, portctl's own process tree, Docker's own processes, another user's
process (unless root), a socket whose process is not visible.

:func:`free` stops nothing when any holder is refused (all or none: freeing half a port helps
nobody), then stops containers first (they need Docker, so a daemon that cannot be reached
stops the whole run before any process is signalled), then processes, and proves the port free
with a bind test. Allocations in the store are kept unless ``release`` is asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from portctl.errors import DockerUnavailable, PortctlError
from portctl.host.containers import Container, StopResult, require_docker, stop_container
from portctl.host.holders import PROXIES, HostPorts, PortHolder
from portctl.host.kernel import BindResult, bind_test, kernel_ports
from portctl.host.listeners import hidden_process
from portctl.host.stopping import ProcessEnd, process_stat, refusal, stop_processes
from portctl.ports.allocator import Allocation, PortAllocator
from portctl.records import Event

__all__ = ["FreePlan", "FreeReport", "Outcome", "StopRefused", "Target", "free", "plan_free"]

STOP_CONTAINER = "stop container"
STOP_PROCESS = "stop process"
LEAVE = "leave"  # a stopped container: it holds nothing now
SETTLE = 3.0  # seconds a port may take to be let go after its holder ended (docker-proxy exiting)


class StopRefused(PortctlError):
    """A holder of the port must not be stopped; nothing was."""

    code = "stop_refused"


def short(holder: PortHolder) -> str:
    """``container api-1 (compose shop/api)`` or ``process python3 pid 42``: who, briefly."""
    if holder.container is not None:
        c = holder.container
        return f"container {c.name}" + (
            f" (compose {c.project}/{c.service})" if c.project and c.service else ""
        )
    if holder.process is not None:
        return f"process {holder.process.name} pid {holder.process.pid}"
    return f"a socket of user {holder.user}"


@dataclass(frozen=True)
class Target:
    """One holder and what freeing the port does to it."""

    holder: PortHolder
    action: str  # STOP_CONTAINER, STOP_PROCESS or LEAVE
    refusal: str | None = None
    start_time: int | None = None  # the process's, so a reused PID is never signalled

    def to_dict(self) -> dict[str, Any]:
        return {"holder": self.holder.to_dict(), "action": self.action, "refusal": self.refusal}


@dataclass(frozen=True)
class FreePlan:
    port: int
    protocol: str
    targets: tuple[Target, ...]
    endpoint: str  # the Docker endpoint containers are stopped through
    notices: tuple[str, ...] = ()

    @property
    def to_stop(self) -> list[Target]:
        """Containers first: they need Docker, which may fail before any process is signalled."""
        stops = [t for t in self.targets if t.action != LEAVE]
        return sorted(stops, key=lambda t: t.action != STOP_CONTAINER)

    @property
    def left(self) -> list[Target]:
        return [t for t in self.targets if t.action == LEAVE]

    @property
    def refused(self) -> list[Target]:
        return [t for t in self.targets if t.refusal]

    def refusal_error(self) -> StopRefused | None:
        """One line naming every refused holder and why; None when none is."""
        refused = self.refused
        if not refused:
            return None
        reasons = "; ".join(f"{short(t.holder)}: {t.refusal}" for t in refused)
        if len(self.to_stop) > 1:
            reasons = (
                f"{len(refused)} of the {len(self.to_stop)} holders of {self.where} are refused: {reasons}"
            )
        else:
            reasons = f"{self.where} is held by {reasons}"
        return StopRefused(f"refusing to free {self.where}: {reasons}; nothing was stopped")

    @property
    def where(self) -> str:
        return f"{self.port}/{self.protocol}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "protocol": self.protocol,
            "targets": [t.to_dict() for t in self.targets],
            "refused": bool(self.refused),
            "notices": list(self.notices),
        }


def plan_free(port: int, protocol: str = "tcp", host: HostPorts | None = None) -> FreePlan:
    """What holds ``port`` and what freeing it would do to each holder; nothing is touched.

    A docker-proxy holding the port while Docker cannot be asked is a container that must be
    stopped through Docker: that raises DockerUnavailable, naming the fix."""
    host = host if host is not None else HostPorts()
    holders = _with_sharers(host, host.holders(port, protocol), port, protocol)
    proxied = [h for h in holders if _needs_docker(h)]
    if proxied and host.docker.notice:
        _require_docker(host.docker.endpoint, proxied[0], port, protocol)
    targets = tuple(_target(h, port) for h in holders)
    return FreePlan(port, protocol, targets, host.docker.endpoint, tuple(host.notices))


def _with_sharers(host: HostPorts, holders: list[PortHolder], port: int, protocol: str) -> list[PortHolder]:
    """``holders`` and, after each process, every other process holding the same sockets: a
    pre-forking server's workers share its listening socket and keep the port after it ends,
    so each is shown, checked against the refusals and stopped with it."""
    listeners = host.listeners.blocking(port, protocol)
    if not any(h.process is not None and h.container is None for h in holders):
        return holders
    every = host.listeners.holders(listeners)
    named = {h.process.pid for h in holders if h.process is not None}
    out: list[PortHolder] = []
    for h in holders:
        out.append(h)
        if h.process is None or h.container is not None:
            continue
        shared = [x for x in listeners if every[x.inode][:1] and every[x.inode][0].pid == h.process.pid]
        for x in shared:
            for other in every[x.inode][1:]:
                if other.pid not in named:
                    named.add(other.pid)
                    addresses = tuple(dict.fromkeys(y.address for y in shared if other in every[y.inode]))
                    out.append(PortHolder("process", port, protocol, addresses, other))
    return out


def _require_docker(endpoint: str, holder: PortHolder, port: int, protocol: str) -> None:
    """DockerUnavailable with the daemon's reason and why Docker is needed, unless it answers."""
    try:
        require_docker(endpoint)
    except DockerUnavailable as e:
        why = f"{e.why}; {short(holder)} holds {port}/{protocol} for a container, which only Docker can stop"
        raise DockerUnavailable(endpoint, f"{why}; nothing was stopped") from e


def _needs_docker(holder: PortHolder) -> bool:
    proxied = holder.process is not None and holder.process.name in PROXIES
    return holder.blocking and (holder.container is not None or proxied)


def _target(holder: PortHolder, port: int) -> Target:
    if holder.container is not None:
        return Target(holder, STOP_CONTAINER if holder.blocking else LEAVE)
    if holder.process is None:
        return Target(holder, STOP_PROCESS, hidden_process(f"sudo portctl free {port}"))
    p = holder.process
    stat = process_stat(p.pid)
    return Target(holder, STOP_PROCESS, refusal(p.pid, p.name, port), stat.start_time if stat else None)


# --- freeing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What stopping one holder did."""

    target: Target
    signal: str | None  # the signal that ended it; None when it had ended already
    exit_code: int | None = None  # a container's
    exited: bool = True
    grace: float = 0.0

    def describe(self) -> str:
        who = short(self.target.holder)
        if self.target.action == STOP_CONTAINER:
            return f"stopped {who} through the Docker Engine API: {self._container_end()}"
        return f"stopped {who}: {self._process_end()}"

    def _container_end(self) -> str:
        code = f" (exit code {self.exit_code})" if self.exit_code is not None else ""
        if self.signal is None:
            return "it had stopped already" + code
        if self.signal == "SIGKILL":
            return f"it did not exit within {_seconds(self.grace)} of its stop signal; SIGKILL ended it{code}"
        return f"{self.signal} ended it{code}"

    def _process_end(self) -> str:
        if self.signal is None:
            return "it had exited already"
        if self.signal == "SIGTERM":
            return "SIGTERM ended it"
        if not self.exited:
            return f"SIGKILL sent after {_seconds(self.grace)}, but it is still there (stuck in the kernel?)"
        return f"it did not exit within {_seconds(self.grace)} of SIGTERM; SIGKILL ended it"

    def to_dict(self) -> dict[str, Any]:
        holder = self.target.holder
        out: dict[str, Any] = {
            "action": self.target.action,
            "holder": holder.describe(),
            "signal": self.signal,
            "exited": self.exited,
            "outcome": self.describe(),
            "pid": holder.process.pid if holder.process is not None else None,
            "process": holder.to_dict().get("process"),
            "container": None,
        }
        if holder.container is not None:
            c = holder.container
            out["container"] = {"id": c.id, "name": c.name, "project": c.project, "service": c.service}
            out["exit_code"] = self.exit_code
        return out


@dataclass
class FreeReport:
    port: int
    protocol: str
    grace: float
    outcomes: list[Outcome]
    left: list[Target]  # stopped containers, untouched
    bind: BindResult
    proof: str  # "bind test", or "listener scan" for a port this user may not bind
    still_held: list[PortHolder] = field(default_factory=list)
    released: list[Allocation] = field(default_factory=list)
    kept: list[Allocation] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def freed(self) -> bool:
        return not self.still_held and (self.bind.free or self.proof != "bind test")

    @property
    def where(self) -> str:
        return f"{self.port}/{self.protocol}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "protocol": self.protocol,
            "grace_seconds": self.grace,
            "stopped": [o.to_dict() for o in self.outcomes],
            "left": [{"holder": t.holder.to_dict(), "why": left_alone(t.holder)} for t in self.left],
            "free": self.freed,
            "proof": self.proof,
            "bind": {"free": self.bind.free, "reason": self.bind.reason},
            "still_held": [h.to_dict() for h in self.still_held],
            "allocations": {
                "released": [a.to_dict() for a in self.released],
                "kept": [a.to_dict() for a in self.kept],
            },
            "notices": self.notices,
        }


def left_alone(holder: PortHolder) -> str:
    """Why a stopped container is not touched, and what would keep it off the port."""
    c = holder.container
    name = c.name if c is not None else "it"
    state = c.state if c is not None else "stopped"
    return (
        f"{short(holder)} is {state} and holds nothing now; "
        f"it takes the port back when started (docker rm {name})"
    )


def free(
    plan: FreePlan,
    grace: float = 10.0,
    *,
    allocator: PortAllocator | None = None,
    release: bool = False,
    rescan: Callable[[], HostPorts] = HostPorts,
) -> FreeReport:
    """Stop every holder of ``plan`` (none, raising StopRefused, when any is refused), prove the
    port free, and release its allocations in ``allocator``'s store if ``release`` is given and
    the port is free (kept otherwise)."""
    error = plan.refusal_error()
    if error is not None:
        raise error
    outcomes = _stop_all(plan.to_stop, grace, plan.endpoint)
    report = _proved(plan, grace, outcomes, rescan)
    if allocator is not None:
        on_port = allocations_on(allocator, plan.port, plan.protocol)
        if release and report.freed:
            report.released = [allocator.release(a.service, a.environment) for a in on_port]
        else:
            report.kept = on_port
    return report


def allocations_on(allocator: PortAllocator, port: int, protocol: str) -> list[Allocation]:
    """This host's allocations of ``port`` in the store, in every environment."""
    return [a for a in allocator.allocations(all_hosts=False) if a.port == port and a.protocol == protocol]


def _stop_all(targets: list[Target], grace: float, endpoint: str) -> list[Outcome]:
    """Containers one by one through Docker, then every process together (SIGTERM to all, the
    grace once, SIGKILL to those left): processes sharing a socket end as one."""
    outcomes = [
        _stop_container(t, t.holder.container, grace, endpoint)
        for t in targets
        if t.action == STOP_CONTAINER and t.holder.container is not None
    ]
    processes = [t for t in targets if t.action == STOP_PROCESS]
    for t in processes:
        if t.holder.process is None:  # an invisible process is refused when planned
            raise StopRefused(f"{short(t.holder)}: its process is not visible; nothing more was stopped")
    ends: list[ProcessEnd] = stop_processes(
        [(t.holder.process.pid, t.start_time) for t in processes if t.holder.process is not None], grace
    )
    outcomes += [
        Outcome(t, end.signal, exited=end.exited, grace=grace) for t, end in zip(processes, ends, strict=True)
    ]
    return outcomes


def _stop_container(target: Target, container: Container, grace: float, endpoint: str) -> Outcome:
    result: StopResult = stop_container(container.id, grace, endpoint)
    if not result.was_running:
        return Outcome(target, None, result.exit_code, grace=grace)
    signal = "SIGKILL" if result.killed else result.stop_signal
    return Outcome(target, signal, result.exit_code, grace=grace)


def _proved(
    plan: FreePlan, grace: float, outcomes: list[Outcome], rescan: Callable[[], HostPorts]
) -> FreeReport:
    """The port bound (or, for a port this user may not bind, no listener left), else what
    holds it now. A port may take a moment to be let go: a docker-proxy exits after its
    container, so the bind test is tried again for a few seconds before the host is asked."""
    privileged = kernel_ports().needs_privilege(plan.port)
    bind = BindResult(False, "not tried: binding it needs root") if privileged else _settled(plan)
    still: list[PortHolder] = []
    if not bind.free:
        host = rescan()
        still = [h for h in host.holders(plan.port, plan.protocol) if h.blocking]
    proof = "listener scan" if privileged else "bind test"
    left = plan.left
    return FreeReport(
        plan.port, plan.protocol, grace, outcomes, left, bind, proof, still, notices=list(plan.notices)
    )


def _settled(plan: FreePlan) -> BindResult:
    deadline = time.monotonic() + SETTLE
    pause = 0.01
    while True:
        result = bind_test(plan.port, plan.protocol)
        if result.free or time.monotonic() >= deadline:
            return result
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def freed_event(report: FreeReport, host: str, at: float) -> Event | None:
    """The event that records what ``report`` stopped (None when it stopped nothing), for
    ``portctl events``: a port freed by hand is as much worth knowing later as one moved."""
    if not report.outcomes:
        return None
    holders = "; ".join(_flat(o.target.holder.describe()) for o in report.outcomes)
    state = f"{report.where} free now ({report.proof})" if report.freed else f"{report.where} still held"
    detail = "; ".join(_flat(o.describe()) for o in report.outcomes) + f"; {state}"
    names = sorted({f"{a.service} ({a.environment})" for a in report.released})
    if names:
        detail += f"; released {', '.join(names)}"
    return Event(
        kind="freed",
        at=at,
        host=host,
        actor="portctl free",
        protocol=report.protocol,
        old_port=report.port,
        holder=holders,
        detail=detail,
    )


def _flat(text: str) -> str:
    """One line: a command line may hold newlines (``python -c``)."""
    return " ".join(text.split())
