"""``portctl doctor`` as a user runs it: a table of verdicts with their fixes, a JSON envelope,
exit 1 when something needs fixing; a privileged port as an unprivileged user; bad input as
one line."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.cli.test_unprivileged import MAIN, _as_nobody, _python_for_nobody

from .conftest import PORTCTL, error_line, free_port

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/doctor-docker.sock"}


def test_a_foreign_listener_is_a_fail_row_with_its_fix_exit_1(run, listener_on):
    port = listener_on
    assert run("import", "-", input=_export(port)).returncode == 0
    result = run("doctor", env=NO_DOCKER)
    assert result.returncode == 1, result.stderr
    header, row, *_ = result.stdout.splitlines()
    assert header.split() == ["CHECK", "SUBJECT", "STATUS", "FINDING", "FIX"]
    assert row.startswith(f"in use  api {port}/tcp  fail    held by another process: process python")
    assert f"kill {os.getpid()}" in row
    assert result.stdout.rstrip().endswith("1 fail")
    assert "note: containers not scanned" in result.stderr


def test_json_lists_every_verdict(run, listener_on):
    assert run("import", "-", input=_export(listener_on)).returncode == 0
    result = run("doctor", "--json", env=NO_DOCKER)
    assert result.returncode == 1
    envelope = json.loads(result.stdout)
    assert envelope["ok"] is False
    data = envelope["data"]
    assert data["needs_fixing"] is True
    [fail] = [v for v in data["verdicts"] if v["status"] == "fail"]
    assert fail["check"] == "in use"
    assert fail["details"]["holder"]["process"]["pid"] == os.getpid()
    # refused: the "in use" finding says it; the firewall and the store are examined too
    assert {v["check"] for v in data["verdicts"]} == {"in use", "bind", "firewall", "store"}


def test_nothing_wrong_exits_0(run):
    port = free_port()
    assert run("import", "-", input=_export(port)).returncode == 0
    result = run("doctor", env=NO_DOCKER)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("all checks passed: ")
    named = run("doctor", "api", env=NO_DOCKER)  # named: every verdict is shown
    rows = [line.split() for line in named.stdout.splitlines()]
    assert ["bind", "api", f"{port}/tcp", "ok"] in [r[:4] for r in rows]


def test_compose_mistakes_are_fail_rows(run, tmp_path):
    port = free_port()
    (tmp_path / "compose.yml").write_text(
        "services:\n"
        "  postgres:\n    image: postgres\n    ports: ['5432:5433']\n"
        f"  web:\n    image: web\n    ports: ['{port}:80']\n"
        f"  api:\n    image: api\n    ports: ['{port}:8000']\n"
    )
    assert run("import", "-", input=_export(5433, "postgres")).returncode == 0
    result = run("doctor", "-f", "compose.yml", env=NO_DOCKER)
    assert result.returncode == 1
    rows = [line for line in result.stdout.splitlines() if line.startswith("mapping")]
    assert any('write "5433:5432" in compose.yml (services.postgres.ports[0])' in r for r in rows), rows
    assert any(f"host port {port}/tcp is published twice" in r for r in rows), rows


# --- bad input: one line, never a traceback -------------------------------------------------------


@pytest.mark.parametrize("port", ["0", "70000"])
def test_a_port_out_of_range_is_one_line_exit_2(run, port):
    result = run("doctor", port, env=NO_DOCKER)
    assert result.returncode == 2
    assert error_line(result) == (
        f"portctl: error: PORT: {port} is not valid; expected an integer from 1 to 65535 "
        "(digits 0-9 only, no spaces or signs)"
    )


def test_an_unknown_service_is_one_line_exit_1(run):
    result = run("doctor", "nosuch", env=NO_DOCKER)
    assert result.returncode == 1
    assert error_line(result).startswith("portctl: error: service 'nosuch' is not allocated in production")


def test_an_unparseable_compose_file_is_one_line_exit_2(run, tmp_path):
    (tmp_path / "compose.yml").write_text("services: [unclosed\n")
    result = run("doctor", "-f", "compose.yml", env=NO_DOCKER)
    assert result.returncode == 2
    assert "compose.yml" in error_line(result)


# --- a privileged port as nobody ------------------------------------------------------------------


@pytest.fixture
def nobody_store(run):
    """A store file nobody may read, holding one allocation below 1024 that nothing listens on."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser (util-linux) to run portctl as nobody")
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 70:
        pytest.skip("net.ipv4.ip_unprivileged_port_start lets anyone bind port 70 here")
    top = Path(tempfile.mkdtemp(prefix="portctl-doctor-"))
    top.chmod(0o755)
    store = top / "store.json"
    done = run("import", "-", input=_export(70, "gopher"), env={"PORTCTL_STORE": str(store)})
    assert done.returncode == 0, done.stderr
    store.chmod(0o644)
    yield store
    shutil.rmtree(top)


def test_a_privileged_port_as_nobody_fails_with_the_three_fixes(nobody_store):
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no python >= 3.11 the nobody user may run")
    env = {"PORTCTL_STORE": str(nobody_store), "PORTCTL_HOST": "test-host", **NO_DOCKER}
    result = _as_nobody([python, "-c", MAIN, "doctor", "gopher"], env)
    assert result.returncode == 1, result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("bind")]
    assert "70 is below net.ipv4.ip_unprivileged_port_start=1024, and user nobody has neither root" in row
    assert "sudo setcap cap_net_bind_service=+ep" in row
    assert "sudo sysctl -w net.ipv4.ip_unprivileged_port_start=70" in row
    assert "(a port >= 1024)" in row
    assert "note: not root:" in result.stderr
    assert "Traceback" not in result.stderr


# --- helpers --------------------------------------------------------------------------------------


@pytest.fixture
def listener_on():
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # free_port() counts TIME_WAIT as free
        s.bind(("0.0.0.0", free_port()))
        s.listen()
        yield s.getsockname()[1]


def _export(port: int, service: str = "api") -> str:
    return json.dumps(
        {
            "format": "portctl-ports",
            "schema": 1,
            "generated_at": "2026-11-27T12:00:00Z",
            "allocations": [
                {
                    "service": service,
                    "environment": "production",
                    "host": "test-host",
                    "port": port,
                    "protocol": "tcp",
                    "type": "custom",
                    "allocated_at": "2026-11-27T11:58:02Z",
                }
            ],
        }
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables") is None or shutil.which("ip") is None,
    reason="needs root, iptables and ip (iproute2) to make a network namespace of its own",
)
def test_doctor_finds_a_drop_rule_and_its_fix_removes_it(run, cli_env, tmp_path):
    """In a network namespace of the test's own, never the host's: a DROP rule on an allocated
    port fails doctor, naming the rule; the fix it prints removes the rule; doctor then passes."""
    port = free_port()
    assert run("import", "-", input=_export(port)).returncode == 0
    netns = f"doctor-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        inside = ["ip", "netns", "exec", netns]
        subprocess.run(
            [*inside, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"], check=True
        )

        def doctor() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*inside, PORTCTL, "doctor", "api", "--json"],
                capture_output=True,
                text=True,
                env={**cli_env, **NO_DOCKER},
                cwd=tmp_path,
                check=False,
            )

        blocked = doctor()
        assert blocked.returncode == 1, blocked.stderr
        (rule,) = [v for v in json.loads(blocked.stdout)["data"]["verdicts"] if v["check"] == "firewall"]
        assert rule["status"] == "fail"
        assert f"-A INPUT -p tcp -m tcp --dport {port} -j DROP" in rule["finding"]
        fix = rule["fix"].split(" (or ")[0]
        assert fix == f"iptables -D INPUT -p tcp -m tcp --dport {port} -j DROP"
        subprocess.run([*inside, *fix.split()], check=True)
        cleared = doctor()
        (ok,) = [v for v in json.loads(cleared.stdout)["data"]["verdicts"] if v["check"] == "firewall"]
        assert ok["status"] == "ok"
        assert cleared.returncode == 0, cleared.stdout
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and ip (iproute2) to make a network namespace of its own",
)
def test_reserved_ports_warn_and_reserving_one_keeps_the_others(cli_env, tmp_path):
    """In a namespace of the test's own (its sysctls are its own): a reserved port inside the
    ephemeral range warns; the fix that reserves another port keeps those reserved already."""
    netns = f"doctor-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    inside = ["ip", "netns", "exec", netns]
    try:
        subprocess.run([*inside, "sysctl", "-qw", "net.ipv4.ip_local_port_range=32768 60999"], check=True)
        subprocess.run([*inside, "sysctl", "-qw", "net.ipv4.ip_local_reserved_ports=50000-50010"], check=True)

        def bind_verdict(port: int) -> dict:
            done = subprocess.run(
                [*inside, PORTCTL, "doctor", str(port), "--json"],
                capture_output=True,
                text=True,
                env={**cli_env, **NO_DOCKER},
                cwd=tmp_path,
                check=False,
            )
            (found,) = [v for v in json.loads(done.stdout)["data"]["verdicts"] if v["check"] == "bind"]
            return found

        reserved = bind_verdict(50005)
        assert reserved["status"] == "warn"
        assert "50005 is in net.ipv4.ip_local_reserved_ports" in reserved["finding"]
        ephemeral = bind_verdict(40000)
        assert ephemeral["status"] == "warn"
        assert "sudo sysctl -w net.ipv4.ip_local_reserved_ports=40000,50000-50010" in ephemeral["fix"]
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)


def test_a_registered_service_on_ipv6_loopback_only_is_refused_to_ipv4_not_foreign(run, tmp_path):
    """Registered at 127.0.0.1, started afterwards on ::1 only: it is the service itself (not
    "another process" to kill), and IPv4 clients are refused; the fix binds IPv4 too."""
    port = free_port()
    assert run("allocate", "--service", "web6", "--port", port).returncode == 0
    assert run("register", "web6", "--check", "tcp").returncode in (0, 1)
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "::1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("::1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        result = run("doctor", "web6", "--json", env=NO_DOCKER)
        verdicts = {v["check"]: v for v in json.loads(result.stdout)["data"]["verdicts"]}
        assert verdicts["in use"]["status"] == "ok", verdicts["in use"]
        assert verdicts["refused"]["status"] == "fail"
        assert "listens on [::1] only" in verdicts["refused"]["finding"]
        assert verdicts["refused"]["fix"].startswith("listen on 127.0.0.1 too")
    finally:
        server.kill()
        server.wait()
