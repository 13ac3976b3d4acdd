"""`portctl free` as a user runs it: what it says it stopped, its JSON, its refusals, and bad
input. The holders are real listening processes (tests/support/port_holders.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.port_holders import detached, holding, listener_argv

from .conftest import PORTCTL, Run, free_port, port_is_free

COMM = Path(sys.executable).name[:15]


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line on stderr; other lines may only be notes (Docker not reachable)."""
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("portctl: error: ")]
    assert len(errors) == 1, result.stderr
    others = [line for line in result.stderr.splitlines() if line not in errors]
    assert all(line.startswith("note: ") for line in others), result.stderr
    return errors[0]


def test_free_stops_the_process_and_proves_the_port_free(run: Run) -> None:
    port = free_port()
    with holding(port) as holder:
        result = run("free", port, "--yes", input="")
        assert not holder.alive
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"stopped process {COMM} pid {holder.pid}: SIGTERM ended it",
        f"{port}/tcp is free now (bind test)",
    ]
    assert port_is_free(port)
    (event,) = json.loads(run("--json", "events").stdout)["data"]
    assert (event["kind"], event["old_port"], event["actor"]) == ("freed", port, "portctl free")
    assert f"pid {holder.pid}" in event["holder"]
    assert event["detail"].endswith(f"{port}/tcp free now (bind test)")


def test_free_json_reports_what_was_stopped_and_how(run: Run) -> None:
    port = free_port()
    with holding(port, ignore_term=True) as holder:
        result = run("free", port, "--yes", "--grace", "200ms", "--json", input="")
    assert result.returncode == 0, result.stderr
    envelope = json.loads(result.stdout)
    assert envelope["ok"] is True
    assert envelope["error"] is None
    data = envelope["data"]
    assert (data["port"], data["protocol"], data["free"], data["proof"]) == (port, "tcp", True, "bind test")
    [stopped] = data["stopped"]
    assert (stopped["action"], stopped["signal"], stopped["pid"]) == ("stop process", "SIGKILL", holder.pid)
    assert stopped["process"]["name"] == COMM
    assert stopped["container"] is None
    assert stopped["holder"].startswith(f"process {COMM} pid {holder.pid}")


def test_dry_run_shows_what_it_would_stop_and_stops_nothing(run: Run) -> None:
    port = free_port()
    with holding(port) as holder:
        result = run("free", port, "--dry-run", input="")
        assert holder.alive
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{port}/tcp is held by:"
    assert lines[1].startswith(f"  process {COMM} pid {holder.pid} user ")
    assert (
        lines[2]
        == f"would stop process {COMM} pid {holder.pid} with SIGTERM, then SIGKILL if it has not exited after 10s"
    )
    assert lines[3] == "dry run: nothing was stopped"


def test_without_a_terminal_it_needs_yes(run: Run) -> None:
    port = free_port()
    with holding(port) as holder:
        result = run("free", port, input="")
        assert holder.alive
    assert result.returncode == 2
    assert result.stdout == ""
    assert one_error(result) == "portctl: error: there is no terminal to confirm on: add --yes to go ahead"


def test_on_a_terminal_it_asks_and_a_no_stops_nothing(terminal: Run) -> None:
    port = free_port()
    with holding(port) as holder:
        result = terminal("free", port, answer="n\n")
        assert holder.alive
    assert result.returncode == 1
    assert f"will stop process {COMM} pid {holder.pid} with SIGTERM" in result.stdout
    assert f"Stop process {COMM} pid {holder.pid} to free {port}/tcp? [y/N]" in result.stdout
    assert "not confirmed: nothing was stopped" in result.stdout


def test_on_a_terminal_a_yes_stops_it(terminal: Run) -> None:
    port = free_port()
    with holding(port) as holder:
        result = terminal("free", port, answer="y\n")
        assert not holder.alive
    assert result.returncode == 0, result.stdout
    assert f"{port}/tcp is free now (bind test)" in result.stdout


def test_a_dry_run_records_nothing(run: Run) -> None:
    port = free_port()
    with holding(port):
        assert run("free", port, "--dry-run").returncode == 0
    assert json.loads(run("--json", "events").stdout)["data"] == []


def test_a_free_port_has_nothing_to_stop(run: Run) -> None:
    port = free_port()
    result = run("free", port, input="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"nothing holds {port}/tcp", f"{port}/tcp is free now (bind test)"]
    envelope = json.loads(run("free", port, "--json", input="").stdout)
    assert envelope["ok"] is True
    assert envelope["data"]["stopped"] == []


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (["0"], "port: 0 is not valid; expected an integer from 1 to 65535"),
        (["70000"], "port: 70000 is not valid; expected an integer from 1 to 65535"),
        (["http"], "port: 'http' is not valid"),
        (["8000", "--protocol", "sctp"], "protocol: 'sctp' is not valid; expected tcp or udp"),
        (["8000", "--grace", "0s"], "--grace: '0s' is not valid"),
        (["8000", "--grace", "10"], "--grace: '10' is not valid"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run: Run, args: list[str], mention: str) -> None:
    result = run("free", *args, "--yes", input="")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert mention in one_error(result)


def test_bad_input_in_json_is_an_error_envelope(run: Run) -> None:
    result = run("free", "70000", "--json", input="")
    assert result.returncode == 2
    envelope = json.loads(result.stdout)
    assert envelope["ok"] is False
    assert envelope["error"]["code"] == "invalid_input"


def test_the_shell_that_runs_it_is_refused(run: Run, tmp_path: Path) -> None:
    """A program that holds the port and runs `portctl free` on it: its own parent."""
    port = free_port()
    program = (
        "import socket, subprocess, sys\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {port})); s.listen()\n"
        f"sys.exit(subprocess.run([{PORTCTL!r}, 'free', '{port}', '--yes'], stdin=subprocess.DEVNULL).returncode)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env={**os.environ, "PORTCTL_STORE": str(tmp_path / "store.json")},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    line = one_error(result)
    assert line.startswith(
        f"portctl: error: refusing to free {port}/tcp: {port}/tcp is held by process {COMM} pid "
    )
    assert "it is an ancestor of this portctl" in line
    assert line.endswith("; nothing was stopped")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed")
def test_a_pid_1_holder_is_refused(run: Run) -> None:
    if os.geteuid() != 0:
        pytest.skip("a PID namespace of its own needs root here (unshare --pid)")
    port = free_port()
    detached(["unshare", "--pid", "--fork", "--kill-child", *listener_argv(port)])
    result = run("free", port, "--yes", "--json", input="")
    plan = json.loads(run("who", port, "--json").stdout)["data"]["holders"]
    for holder in plan:
        os.kill(holder["process"]["pid"], 9)
    assert result.returncode == 1
    envelope = json.loads(result.stdout)
    assert envelope["ok"] is False
    assert envelope["error"]["code"] == "stop_refused"
    assert "it is PID 1 of its own PID namespace" in envelope["error"]["message"]


def test_a_socket_shared_by_a_forked_child_names_both_and_stops_both(run: Run) -> None:
    """A pre-fork server: the dry run and the real run name parent and child; the child,
    which ignores SIGTERM, is killed after the grace; the port is free, exit 0."""
    port = free_port()
    with holding(port, fork=True) as holder:
        preview = run("free", port, "--dry-run", input="")
        assert holder.alive
        result = run("free", port, "--yes", "--grace", "200ms", input="")
        assert not holder.alive
    assert preview.returncode == 0, preview.stderr
    lines = preview.stdout.splitlines()
    assert lines[0] == f"{port}/tcp is held by:"
    assert lines[1].startswith(f"  process {COMM} pid {holder.pid} user ")
    assert lines[2].startswith(f"  process {COMM} pid {holder.child} user ")
    assert lines[3].startswith(f"would stop process {COMM} pid {holder.pid} with SIGTERM")
    assert lines[4].startswith(f"would stop process {COMM} pid {holder.child} with SIGTERM")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"stopped process {COMM} pid {holder.pid}: SIGTERM ended it",
        f"stopped process {COMM} pid {holder.child}: it did not exit within 0.2s of SIGTERM; SIGKILL ended it",
        f"{port}/tcp is free now (bind test)",
    ]
    assert port_is_free(port)


def test_still_held_says_what_holds_it_and_exits_1(run: Run) -> None:
    """A holder that hands its socket to a new process when stopped: that one was in no plan."""
    port = free_port()
    with holding(port, handoff=True) as holder:
        result = run("free", port, "--yes", input="")
        assert not port_is_free(port)
        last = result.stdout.splitlines()[-1]
        assert last.startswith(f"{port}/tcp is still held: process {COMM} pid "), result.stdout
        successor = int(last.split(" pid ")[1].split()[0])
        os.kill(successor, 9)
    assert result.returncode == 1, result.stderr
    assert successor != holder.pid


def test_the_allocation_is_kept_unless_release_is_given(run: Run) -> None:
    port = free_port()
    assert run("allocate", "--service", "api", "--port", port).returncode == 0
    with holding(port):
        kept = run("free", port, "--yes", input="")
    assert kept.returncode == 0, kept.stderr
    assert f"allocation of api (production) on {port}/tcp: kept (add --release to release it)" in kept.stdout
    with holding(port):
        released = run("free", port, "--yes", "--release", input="")
    assert released.returncode == 0, released.stderr
    assert f"released the allocation of api (production) on {port}/tcp" in released.stdout
    assert "api" not in run("status").stdout
