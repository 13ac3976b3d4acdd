"""Real processes that hold a port, for the tests of `portctl free`.

A holder is started *detached*: a launcher starts it in a session of its own and exits, so the
holder is no descendant of the test (portctl refuses to stop its own process tree). The holder
writes its PID on the launcher's pipe once it listens: the test waits for that line, not for
a time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# argv: port protocol term|ignore|handoff [fork]. "ignore" ignores SIGTERM (only SIGKILL ends
# it); "handoff" hands the socket to a new process when SIGTERM comes (a server re-executing
# itself): that process is in no plan made before, and ends itself after a minute. "fork"
# leaves a child in another session holding the same socket (a pre-fork server's worker),
# which ignores SIGTERM.
LISTENER = r"""
import os, signal, socket, sys
port, protocol, on_term = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if on_term == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
def handoff(*_):
    if os.fork() == 0:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.alarm(60)
        while True:
            signal.pause()
    os._exit(0)
if on_term == "handoff":
    signal.signal(signal.SIGTERM, handoff)
kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
sock = socket.socket(socket.AF_INET, kind)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("0.0.0.0", port))
if kind == socket.SOCK_STREAM:
    sock.listen(8)
child = os.fork() if len(sys.argv) > 4 else -1
if child == 0:
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        signal.pause()
print(os.getpid(), child, flush=True)
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)
while True:
    signal.pause()
"""

# Not dumpable (PR_SET_DUMPABLE 0): reading its fds takes CAP_SYS_PTRACE, even for root.
UNDUMPABLE = "import ctypes\nctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\n" + LISTENER

LAUNCHER = "import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True)"


@dataclass
class Holder:
    pid: int  # as this host's /proc names it
    port: int
    protocol: str = "tcp"
    child: int | None = None  # a forked child holding the same socket

    @property
    def alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except OSError:
            return False
        return state not in (b"Z", b"X")

    def kill(self) -> None:
        for pid in (self.pid, self.child):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def listener_argv(
    port: int,
    protocol: str = "tcp",
    *,
    ignore_term: bool = False,
    fork: bool = False,
    handoff: bool = False,
    undumpable: bool = False,
    python: str = sys.executable,
) -> list[str]:
    on_term = "handoff" if handoff else "ignore" if ignore_term else "term"
    argv = [python, "-c", UNDUMPABLE if undumpable else LISTENER, str(port), protocol, on_term]
    return [*argv, "fork"] if fork else argv


def detached(argv: Sequence[str], *, user: str | None = None) -> str:
    """Start ``argv`` outside this test's process tree; the first line it prints (once ready).
    Another ``user`` runs the system's python (the test's may live where that user cannot go)."""
    python = "/usr/bin/python3" if user else sys.executable
    launcher = subprocess.Popen(
        [python, "-c", LAUNCHER, *argv],
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        user=user,
    )
    assert launcher.stdout is not None
    line = launcher.stdout.readline()
    launcher.stdout.close()
    launcher.wait(timeout=30)
    assert line, f"the holder {argv} exited before it listened"
    return line


@contextlib.contextmanager
def holding(
    port: int,
    protocol: str = "tcp",
    *,
    ignore_term: bool = False,
    fork: bool = False,
    handoff: bool = False,
    undumpable: bool = False,
    user: str | None = None,
) -> Iterator[Holder]:
    """A detached process listening on ``port``; killed afterwards if it is still there.
    With ``fork`` a child shares the socket (and ignores SIGTERM); with ``handoff`` SIGTERM
    hands the socket to a new process; ``undumpable`` hides its fds from a reader without
    CAP_SYS_PTRACE."""
    python = "/usr/bin/python3" if user else sys.executable
    argv = listener_argv(
        port,
        protocol,
        ignore_term=ignore_term,
        fork=fork,
        handoff=handoff,
        undumpable=undumpable,
        python=python,
    )
    line = detached(argv, user=user)
    pid, child = (int(word) for word in line.split())
    holder = Holder(pid, port, protocol, child if child > 0 else None)
    try:
        yield holder
    finally:
        holder.kill()
