"""Stopping a process that holds a port, and the processes that must never be stopped.

Host facts, read from ``/proc``: whether a process is an init (PID 1 of this system, or of a PID
namespace of its own: a container's or a sandbox's), a kernel thread, portctl's own process
tree, another user's, or Docker's own plumbing (docker-proxy, dockerd, containerd). Anything
else may be stopped the polite way: SIGTERM, a grace period to exit, then SIGKILL.

The process is held by a pidfd while it is signalled and awaited, so a PID the kernel gives to a
new process meanwhile is never signalled; its start time is compared with the one seen when the
plan was made, so a PID reused between plan and stop is not either.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from portctl.errors import PortctlError

__all__ = [
    "KILL_WAIT",
    "ProcessEnd",
    "ProcessStat",
    "StopFailed",
    "process_stat",
    "refusal",
    "stop_process",
    "stop_processes",
]

PF_KTHREAD = 0x00200000  # include/linux/sched.h: the task is a kernel thread
KTHREADD = 2  # the kernel's thread creator; every kernel thread is its child
DOCKER_PROCESSES = ("docker-proxy", "dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2")
KILL_WAIT = 5.0  # seconds a SIGKILLed process is given to disappear (it may be in an I/O wait)


class StopFailed(PortctlError):
    """The kernel refused a signal portctl was allowed to send by its own rules (an LSM, a
    user namespace); nothing more is tried."""

    code = "stop_failed"


@dataclass(frozen=True)
class ProcessStat:
    """The fields of ``/proc/PID/stat`` and ``status`` the refusals need."""

    pid: int
    ppid: int
    flags: int
    start_time: int  # clock ticks after boot: with the PID, names one process for good
    uid: int | None
    namespace_pids: tuple[int, ...]  # NSpid: the PID in each nested PID namespace, outermost first
    has_cmdline: bool

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD) or (self.ppid == KTHREADD and not self.has_cmdline)

    @property
    def namespace_init(self) -> bool:
        """PID 1 of a PID namespace nested in ours: a container's or sandbox's init."""
        return len(self.namespace_pids) > 1 and self.namespace_pids[-1] == 1


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or hidden from this user
        return None


def process_stat(pid: int, proc: str = "/proc") -> ProcessStat | None:
    """The process's stat fields; None when it is gone (or /proc hides it)."""
    stat = _read(f"{proc}/{pid}/stat")
    if not stat:
        return None
    # The command name is in parentheses and may hold spaces and parentheses itself.
    fields = stat.rpartition(b")")[2].split()
    status = (_read(f"{proc}/{pid}/status") or b"").decode(errors="replace")
    return ProcessStat(
        pid=pid,
        ppid=int(fields[1]),
        flags=int(fields[6]),
        start_time=int(fields[19]),
        uid=_status_ints(status, "Uid:")[0] if _status_ints(status, "Uid:") else None,
        namespace_pids=tuple(_status_ints(status, "NSpid:")),
        has_cmdline=bool(_read(f"{proc}/{pid}/cmdline")),
    )


def _status_ints(status: str, name: str) -> list[int]:
    for line in status.splitlines():
        if line.startswith(name):
            return [int(word) for word in line.split()[1:] if word.isdigit()]
    return []


def _ancestors(pid: int, proc: str = "/proc") -> Iterator[int]:
    """``pid``'s parent, its parent's parent, ... up to (not including) PID 0."""
    seen = {pid}
    stat = process_stat(pid, proc)
    while stat is not None and stat.ppid not in seen and stat.ppid > 0:
        seen.add(stat.ppid)
        yield stat.ppid
        stat = process_stat(stat.ppid, proc)


def refusal(pid: int, name: str = "", port: int | None = None, *, proc: str = "/proc") -> str | None:
    """Why process ``pid`` (command name ``name``) must not be stopped, in words that end with
    what to do instead; None when it may be."""
    stat = process_stat(pid, proc)
    if stat is None:
        return None  # gone already: nothing to refuse, nothing to stop
    return (
        _init_refusal(stat)
        or _kernel_refusal(stat)
        or _own_tree_refusal(pid, proc)
        or _docker_refusal(name, port)
        or _owner_refusal(stat, port)
    )


def _init_refusal(stat: ProcessStat) -> str | None:
    if stat.pid == 1:
        return (
            "it is PID 1, the init process of this system (or container): stopping it takes everything down"
        )
    if stat.namespace_init:
        return (
            "it is PID 1 of its own PID namespace (a container's or sandbox's init): stopping it "
            "stops everything in there; stop that container or sandbox instead"
        )
    return None


def _kernel_refusal(stat: ProcessStat) -> str | None:
    return "it is a kernel thread, not a process to stop" if stat.kernel_thread else None


def _own_tree_refusal(pid: int, proc: str) -> str | None:
    me = os.getpid()
    if pid == me:
        return "it is this portctl itself"
    if pid in set(_ancestors(me, proc)):
        return (
            "it is an ancestor of this portctl (the shell or program that ran it): "
            "stopping it stops portctl too"
        )
    if me in set(_ancestors(pid, proc)):
        return "it is a child of this portctl"
    return None


def _docker_refusal(name: str, port: int | None) -> str | None:
    if name not in DOCKER_PROCESSES:
        return None
    find = f"docker ps --filter publish={port}" if port else "docker ps"
    return f"it is Docker's own {name}, never stopped by portctl: stop the container it serves ({find})"


def _owner_refusal(stat: ProcessStat, port: int | None) -> str | None:
    euid = os.geteuid()
    if euid == 0 or stat.uid is None or stat.uid == euid:
        return None
    from portctl.host.listeners import user_name

    again = f"sudo portctl free {port}" if port else "sudo portctl free"
    return f"it belongs to user {user_name(stat.uid)}: run as root to stop another user's process ({again})"


# --- stopping ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessEnd:
    """How a stopped process ended: the signal that did it, or None when it had exited before
    portctl signalled it. ``exited`` is False only when even SIGKILL left it (an I/O wait)."""

    pid: int
    signal: str | None
    exited: bool = True


def stop_process(pid: int, grace: float, start_time: int | None = None) -> ProcessEnd:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL. ``start_time`` (from
    :func:`process_stat`) makes sure the PID still names the process that was planned for."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return ProcessEnd(pid, None)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            raise
        return _stop_without_pidfd(pid, grace, start_time)
    try:
        if not _same(pid, start_time):
            return ProcessEnd(pid, None)
        return _stop_pidfd(fd, pid, grace)
    finally:
        os.close(fd)


def stop_processes(processes: Sequence[tuple[int, int | None]], grace: float) -> list[ProcessEnd]:
    """Stop several processes together, each given as (pid, start time from :func:`process_stat`):
    SIGTERM to every one, up to ``grace`` seconds for them all to exit, then SIGKILL to those
    left. Together, because processes sharing a socket (a pre-forking server) may need to end
    as one: a master whose worker is stopped alone may start another, and ``grace`` is waited
    once, not once per process. Ends in the order given."""
    stops = [_Stop.open(pid, start_time) for pid, start_time in processes]
    try:
        termed = [stop for stop in stops if stop.send(signal.SIGTERM)]
        left = _wait_all(termed, grace)
        killed = [stop for stop in left if stop.send(signal.SIGKILL)]
        stuck = _wait_all(killed, KILL_WAIT)
        return [stop.end(stop in stuck) for stop in stops]
    finally:
        for stop in stops:
            stop.close()


@dataclass
class _Stop:
    """One process being stopped: held by a pidfd where the kernel has them (else watched in
    /proc), the signals it was sent."""

    pid: int
    start_time: int | None
    fd: int | None
    alive: bool
    sent: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, pid: int, start_time: int | None) -> _Stop:
        try:
            fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            return cls(pid, start_time, None, False)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                raise
            fd = None
        stop = cls(pid, start_time, fd, True)
        stop.alive = _same(pid, start_time)  # checked once the pidfd holds it: no reuse after
        return stop

    def send(self, sig: signal.Signals) -> bool:
        """Send ``sig``; False when the process had exited (or was never the one planned)."""
        if not self.alive:
            return False
        if self.fd is not None:
            sent = _pidfd_signal(self.fd, self.pid, sig)
        else:
            sent = _same(self.pid, self.start_time) and _kill(self.pid, sig)
        if sent:
            self.sent.append(sig.name)
        self.alive = sent
        return sent

    def exited(self) -> bool:
        if self.fd is not None:
            return _pidfd_exited(self.fd, 0)
        return not _alive(self.pid, self.start_time)

    def end(self, stuck: bool) -> ProcessEnd:
        return ProcessEnd(self.pid, self.sent[-1] if self.sent else None, not stuck)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _wait_all(stops: list[_Stop], seconds: float) -> list[_Stop]:
    """Wait up to ``seconds`` for every one of ``stops`` to exit; those that have not. Pidfds
    turn readable when their process exits, so they are polled together; processes without
    one are looked at in /proc between polls."""
    deadline = time.monotonic() + seconds
    left = [stop for stop in stops if not stop.exited()]
    pause = 0.005
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return left
        watched = {stop.fd: stop for stop in left if stop.fd is not None}
        wait = remaining if len(watched) == len(left) else min(pause, remaining)
        poller = select.poll()
        for fd in watched:
            poller.register(fd, select.POLLIN)
        poller.poll(max(1, int(wait * 1000)))
        left = [stop for stop in left if not stop.exited()]
        pause = min(pause * 2, 0.1)
    return left


def _same(pid: int, start_time: int | None) -> bool:
    stat = process_stat(pid)
    return stat is not None and (start_time is None or stat.start_time == start_time)


def _stop_pidfd(fd: int, pid: int, grace: float) -> ProcessEnd:
    if not _pidfd_signal(fd, pid, signal.SIGTERM):
        return ProcessEnd(pid, None)
    if _pidfd_exited(fd, grace):
        return ProcessEnd(pid, "SIGTERM")
    if not _pidfd_signal(fd, pid, signal.SIGKILL):
        return ProcessEnd(pid, "SIGTERM")  # it exited between the wait and the kill
    return ProcessEnd(pid, "SIGKILL", _pidfd_exited(fd, KILL_WAIT))


def _pidfd_signal(fd: int, pid: int, sig: signal.Signals) -> bool:
    """Send ``sig``; False when the process has exited already."""
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return False
    except PermissionError as e:
        raise StopFailed(f"cannot send {sig.name} to pid {pid}: permission denied; run as root") from e
    return True


def _pidfd_exited(fd: int, seconds: float) -> bool:
    """Wait for the process to exit: a pidfd turns readable when it does, so no polling."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(seconds * 1000))))


def _stop_without_pidfd(pid: int, grace: float, start_time: int | None) -> ProcessEnd:
    """For kernels before 5.3: the same steps, watching /proc for the process to go."""
    if not _same(pid, start_time) or not _kill(pid, signal.SIGTERM):
        return ProcessEnd(pid, None)
    if _gone_within(pid, grace, start_time):
        return ProcessEnd(pid, "SIGTERM")
    if not _kill(pid, signal.SIGKILL):
        return ProcessEnd(pid, "SIGTERM")
    return ProcessEnd(pid, "SIGKILL", _gone_within(pid, KILL_WAIT, start_time))


def _kill(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError as e:
        raise StopFailed(f"cannot send {sig.name} to pid {pid}: permission denied; run as root") from e
    return True


def _gone_within(pid: int, seconds: float, start_time: int | None) -> bool:
    deadline = time.monotonic() + seconds
    pause = 0.005
    while True:
        if not _alive(pid, start_time):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.1)


def _alive(pid: int, start_time: int | None) -> bool:
    """Running (a zombie has exited: its sockets are closed) and still the same process."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return False
    state = stat.rpartition(b")")[2].split()[0]
    return state not in (b"Z", b"X") and _same(pid, start_time)
