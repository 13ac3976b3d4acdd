"""Files portctl writes for other tools (``-o`` outputs, overrides, caches): temp files of
writers killed mid-write are removed once their writer is provably dead, never before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from portctl.ports import documents
from portctl.ports.documents import write_atomically

# A writer that stops itself at its fsync: its temp file is written but not yet renamed.
PAUSING_WRITER = """
import os, signal, sys
from portctl.ports.documents import write_atomically

real_fsync = os.fsync
def pause_then_fsync(fd):
    os.fsync = real_fsync
    os.kill(os.getpid(), signal.SIGSTOP)
    real_fsync(fd)
os.fsync = pause_then_fsync
write_atomically(sys.argv[1], "from the writer\\n")
"""


def _paused_writer(path):
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_WRITER, str(path)])
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status
    return proc


def _temps(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "."))


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "port_config.json"
    path.write_text("old\n")
    return path


def test_temp_files_of_killed_writers_are_removed_by_the_next_write(target):
    left = set()
    for _ in range(3):
        proc = _paused_writer(target)
        left |= set(_temps(target))
        proc.kill()
        proc.wait()
    assert len(left) == 3  # each writer had its own temp file when it was killed
    assert _temps(target)
    assert target.read_text() == "old\n"
    write_atomically(str(target), "new\n")
    assert _temps(target) == []
    assert target.read_text() == "new\n"


def test_a_live_writers_temp_file_is_kept_and_its_write_completes(target):
    proc = _paused_writer(target)
    try:
        [temp] = _temps(target)
        write_atomically(str(target), "meanwhile\n")
        assert _temps(target) == [temp]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=30) == 0
    assert target.read_text() == "from the writer\n"
    assert _temps(target) == []


def _temp_of(target, pid, start, namespace):
    path = target.parent / f"{target.name}.{pid}-{start}-{namespace}.0123abcd.tmp"
    path.write_text("part")
    return path


def test_a_pid_reused_by_another_process_proves_its_writer_dead(target):
    """Our own pid is alive, but the writer that named the file started at another time."""
    start = documents._start_time(os.getpid())
    if start is None:
        pytest.skip("no /proc: process start times cannot be read")
    namespace = documents._pid_namespace()
    reused = _temp_of(target, os.getpid(), start - 1, namespace)
    ours = _temp_of(target, os.getpid(), start, namespace)
    write_atomically(str(target), "new\n")
    assert not reused.exists()
    assert ours.exists()  # same pid, same start: that process is alive (it is this one)


def test_a_writer_in_another_pid_namespace_is_never_judged(target):
    other = _temp_of(target, 999_999_999, 1, documents._pid_namespace() + 1)
    write_atomically(str(target), "new\n")
    assert other.exists()


def test_files_that_only_look_like_temp_files_are_kept(target):
    kept = [target.parent / f"{target.name}.{tail}" for tail in ("mine.tmp", "abc123.tmp", "bak")]
    for path in kept:
        path.write_text("someone else's")
    write_atomically(str(target), "new\n")
    assert all(path.exists() for path in kept)
