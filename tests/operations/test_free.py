"""`free` with real processes: what a stop ends with, and every holder it refuses.

The holders are real listeners started outside the test's process tree (tests/support/
port_holders.py); the refusals are met the way a user meets them: the port's holder is PID 1
of a PID namespace (``unshare --pid --fork``), this very process, its parent, its child,
another user's process.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from portctl.backends.file import JsonFileStore
from portctl.config.settings import Settings
from portctl.host.stopping import process_stat, refusal
from portctl.operations.free import STOP_PROCESS, StopRefused, free, plan_free
from portctl.ports.allocator import PortAllocator
from tests.conftest import free_port
from tests.support.port_holders import Holder, detached, holding, listener_argv

ROOT = Path(__file__).resolve().parents[2]
COMM = Path(sys.executable).name[:15]  # the holders' command name, as the kernel keeps it
OWN_COMM = Path("/proc/self/comm").read_text().strip()


def _bound(port: int, protocol: str = "tcp") -> bool:
    """Whether a server could bind ``port`` on 0.0.0.0 now."""
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def test_a_process_ended_by_sigterm_frees_the_port_and_the_bind_test_proves_it() -> None:
    port = free_port()
    with holding(port) as holder:
        plan = plan_free(port)
        assert [(t.action, t.refusal) for t in plan.targets] == [(STOP_PROCESS, None)]
        assert plan.targets[0].holder.process is not None
        assert plan.targets[0].holder.process.pid == holder.pid
        report = free(plan, grace=30)
        assert not holder.alive
    assert report.freed
    assert report.bind.free
    assert report.proof == "bind test"
    assert [o.describe() for o in report.outcomes] == [
        f"stopped process {COMM} pid {holder.pid}: SIGTERM ended it"
    ]
    record = report.to_dict()
    assert record["stopped"][0]["signal"] == "SIGTERM"
    assert record["stopped"][0]["pid"] == holder.pid
    assert record["free"] is True
    assert _bound(port)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    port = free_port()
    with holding(port, ignore_term=True) as holder:
        report = free(plan_free(port), grace=0.3)
        assert not holder.alive
    outcome = report.outcomes[0]
    assert outcome.signal == "SIGKILL"
    assert outcome.describe().endswith("it did not exit within 0.3s of SIGTERM; SIGKILL ended it")
    assert report.freed
    assert _bound(port)


def test_a_udp_holder_is_stopped_too() -> None:
    port = free_port("udp")
    with holding(port, "udp") as holder:
        report = free(plan_free(port, "udp"), grace=30)
        assert not holder.alive
    assert report.freed
    assert report.where == f"{port}/udp"
    assert _bound(port, "udp")


def test_every_process_sharing_the_socket_is_planned_and_stopped() -> None:
    """A pre-fork server: parent and child hold the same listening socket; the child ignores
    SIGTERM. Both are planned, both are stopped (SIGTERM to both, SIGKILL to the one left after
    the grace), and the port is proved free."""
    port = free_port()
    with holding(port, fork=True) as holder:
        assert holder.child is not None
        plan = plan_free(port)
        pids = [t.holder.process.pid for t in plan.targets if t.holder.process is not None]
        assert sorted(pids) == sorted([holder.pid, holder.child])
        assert [(t.action, t.refusal) for t in plan.targets] == [(STOP_PROCESS, None)] * 2
        report = free(plan, grace=0.3)
        assert not holder.alive
        assert not Holder(holder.child, port).alive
    ends = {o.target.holder.process.pid: o.describe() for o in report.outcomes if o.target.holder.process}
    assert ends == {
        holder.pid: f"stopped process {COMM} pid {holder.pid}: SIGTERM ended it",
        holder.child: f"stopped process {COMM} pid {holder.child}: it did not exit within 0.3s of SIGTERM; "
        "SIGKILL ended it",
    }
    assert report.freed
    assert _bound(port)


SHARER = (
    "import os, signal, subprocess, sys; fd = int(sys.argv[1]);"
    " subprocess.Popen([sys.executable, '-c', 'import os, signal; print(os.getpid(), flush=True);"
    " os.dup2(os.open(os.devnull, os.O_WRONLY), 1); signal.pause()'], pass_fds=[fd], start_new_session=True)"
)


def test_a_refused_sharer_of_the_socket_refuses_the_whole_free(listener) -> None:
    """This process's socket, shared with a detached process (no descendant of it): that one
    may be stopped, this process may not; so neither is."""
    port = free_port()
    sock = listener(port)
    launcher = subprocess.Popen(
        [sys.executable, "-c", SHARER, str(sock.fileno())],
        pass_fds=[sock.fileno()],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout is not None
    sharer = Holder(int(launcher.stdout.readline()), port)
    launcher.wait(timeout=30)
    try:
        plan = plan_free(port)
        pids = sorted(t.holder.process.pid for t in plan.targets if t.holder.process is not None)
        assert pids == sorted([os.getpid(), sharer.pid])
        error = plan.refusal_error()
        assert error is not None
        assert f"1 of the 2 holders of {port}/tcp are refused" in error.message
        assert f"pid {os.getpid()}: it is this portctl itself" in error.message
        with pytest.raises(StopRefused):
            free(plan)
        assert sharer.alive
    finally:
        sharer.kill()


def test_a_port_still_held_after_the_stop_names_what_holds_it() -> None:
    """A holder that hands its socket to a new process when stopped: that process was in no
    plan, so the port is still held, and the report names it."""
    port = free_port()
    with holding(port, handoff=True) as holder:
        report = free(plan_free(port), grace=30)
        try:
            assert not report.freed
            assert not holder.alive
            remaining = [h.process.pid for h in report.still_held if h.process is not None]
            assert len(remaining) == 1
            assert remaining[0] != holder.pid
            assert "still held" not in report.bind.reason  # the kernel's words: "... already in use"
            assert not _bound(port)
        finally:
            for h in report.still_held:
                if h.process is not None:
                    os.kill(h.process.pid, 9)


def test_nothing_holds_a_free_port() -> None:
    port = free_port()
    plan = plan_free(port)
    assert plan.targets == ()
    assert plan.refusal_error() is None
    report = free(plan)
    assert report.outcomes == []
    assert report.freed


def test_its_own_process_is_refused(listener) -> None:
    port = free_port()
    listener(port)
    plan = plan_free(port)
    error = plan.refusal_error()
    assert error is not None
    assert f"process {OWN_COMM} pid {os.getpid()}: it is this portctl itself" in error.message
    assert error.message.endswith("; nothing was stopped")
    with pytest.raises(StopRefused):
        free(plan)
    assert not _bound(port)


def test_its_own_child_is_refused() -> None:
    port = free_port()
    child = subprocess.Popen(listener_argv(port), stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline()
        plan = plan_free(port)
        assert plan.targets[0].refusal == "it is a child of this portctl"
        with pytest.raises(StopRefused, match="child of this portctl"):
            free(plan)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_its_own_parent_is_refused(listener) -> None:
    """This test holds the port and runs the planner as its child: the holder is its parent."""
    port = free_port()
    listener(port)
    code = f"from portctl.operations.free import plan_free; print(plan_free({port}).refusal_error())"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert f"process {OWN_COMM} pid {os.getpid()}: it is an ancestor of this portctl" in done.stdout
    assert not _bound(port)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed")
def test_pid_1_of_a_pid_namespace_is_refused() -> None:
    """A sandbox's (or container's) init holding a port of the host's network: stopping it
    would end everything in its namespace."""
    if os.geteuid() != 0:
        pytest.skip("a PID namespace of its own needs root here (unshare --pid)")
    port = free_port()
    line = detached(["unshare", "--pid", "--fork", "--kill-child", *listener_argv(port)])
    assert line.split()[0] == "1"  # its own PID, inside its namespace
    plan = plan_free(port)
    holder = plan.targets[0].holder.process
    assert holder is not None
    try:
        assert plan.targets[0].refusal is not None
        assert plan.targets[0].refusal.startswith("it is PID 1 of its own PID namespace")
        with pytest.raises(StopRefused, match="PID 1 of its own PID namespace"):
            free(plan)
        assert not _bound(port)
    finally:
        os.kill(holder.pid, 9)


def test_pid_1_of_the_system_is_refused() -> None:
    """PID 1 cannot be made to hold a test's port; the refusal is checked on the real one."""
    assert refusal(1, "init", 5432) == (
        "it is PID 1, the init process of this system (or container): stopping it takes everything down"
    )


def test_a_kernel_thread_is_refused() -> None:
    threads = [pid for pid in _pids() if (stat := process_stat(pid)) is not None and stat.kernel_thread]
    if not threads:
        pytest.skip("no kernel thread is visible in this PID namespace")
    assert refusal(threads[-1], "kworker", 5432) == "it is a kernel thread, not a process to stop"


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _plan_as(user: str, port: int, *, ptrace: bool) -> str:
    """The refusal a planner running as ``user`` meets. With ``ptrace`` (CAP_SYS_PTRACE and
    CAP_DAC_READ_SEARCH, a debugging or monitoring agent's) it sees which process holds another
    user's socket, as root does, but is still no root to stop it."""
    granted = "+sys_ptrace,+dac_read_search"
    caps = [f"--inh-caps={granted}", f"--ambient-caps={granted}"] if ptrace else []
    code = f"from portctl.operations.free import plan_free; print(plan_free({port}).refusal_error())"
    argv = [
        "setpriv",
        f"--reuid={user}",
        f"--regid={user}",
        "--clear-groups",
        *caps,
        "/usr/bin/python3",
        "-c",
        code,
    ]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def as_other_users() -> None:
    if os.geteuid() != 0:
        pytest.skip("running processes as other users needs root")
    if shutil.which("setpriv") is None or not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("setpriv (util-linux) and /usr/bin/python3 are needed to run as another user")


@pytest.mark.usefixtures("as_other_users")
def test_another_users_process_is_refused_unless_root() -> None:
    port = free_port()
    with holding(port, user="nobody") as holder:
        message = _plan_as("daemon", port, ptrace=True)
        assert f"process python3 pid {holder.pid}: it belongs to user nobody: run as root" in message
        assert holder.alive


@pytest.mark.usefixtures("as_other_users")
def test_a_holder_whose_process_is_not_visible_is_refused() -> None:
    port = free_port()
    with holding(port, user="nobody") as holder:
        message = _plan_as("daemon", port, ptrace=False)
        assert "a socket of user nobody: its process is not visible to this user: run as root" in message
        assert f"sudo portctl free {port}" in message
        assert holder.alive


# How root itself may not see a socket's process: a planner whose /proc is that of a PID
# namespace of its own, or one without CAP_SYS_PTRACE looking at a process that is not dumpable.
HIDDEN_FROM_ROOT = {
    "another PID namespace": ["unshare", "--pid", "--fork", "--mount-proc"],
    "a missing capability": ["setpriv", "--bounding-set=-sys_ptrace"],
}


@pytest.mark.parametrize("how", list(HIDDEN_FROM_ROOT))
def test_as_root_a_hidden_process_is_explained_not_sent_to_root(how: str) -> None:
    """Root is not told to run as root: it is told why it cannot see the process, and where to
    stop it from."""
    if os.geteuid() != 0:
        pytest.skip("the words for root are seen as root")
    wrapper = HIDDEN_FROM_ROOT[how]
    if shutil.which(wrapper[0]) is None:
        pytest.skip(f"{wrapper[0]} (util-linux) is not installed")
    port = free_port()
    code = f"from portctl.operations.free import plan_free; print(plan_free({port}).refusal_error())"
    with holding(port, undumpable=True) as holder:
        done = subprocess.run(
            [*wrapper, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert holder.alive
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"refusing to free {port}/tcp: {port}/tcp is held by a socket of user root: its process is in "
        "another PID namespace or hidden from this one (/proc hidepid or a missing capability): "
        "stop it from where it runs; nothing was stopped"
    )


def test_with_one_holder_refused_none_is_stopped(listener) -> None:
    """An IPv4 listener that may be stopped, an IPv6 one that may not: all or none."""
    port = free_port()
    with holding(port) as holder:
        listener(port, "::")
        plan = plan_free(port)
        assert len(plan.targets) == 2
        error = plan.refusal_error()
        assert error is not None
        assert f"1 of the 2 holders of {port}/tcp are refused" in error.message
        with pytest.raises(StopRefused):
            free(plan)
        assert holder.alive


def _allocator(tmp_path: Path) -> PortAllocator:
    return PortAllocator(JsonFileStore(str(tmp_path / "store.json")), Settings(host="free-host"))


def test_the_allocation_is_kept_unless_release_is_asked(tmp_path: Path) -> None:
    port = free_port()
    allocator = _allocator(tmp_path)
    allocator.allocate("api", port=port)
    with holding(port):
        report = free(plan_free(port), grace=30, allocator=allocator)
    assert [a.service for a in report.kept] == ["api"]
    assert report.released == []
    assert [a.port for a in allocator.allocations()] == [port]


def test_release_releases_the_allocation_once_the_port_is_free(tmp_path: Path) -> None:
    port = free_port()
    allocator = _allocator(tmp_path)
    allocator.allocate("api", port=port)
    with holding(port):
        report = free(plan_free(port), grace=30, allocator=allocator, release=True)
    assert [a.service for a in report.released] == ["api"]
    assert report.to_dict()["allocations"]["released"][0]["port"] == port
    assert allocator.allocations() == []
