"""``portctl serve`` and ``portctl metrics`` as a user runs them: real processes, real sockets."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cli.conftest import PORTCTL, TIMEOUT, error_line

PROMTOOL = shutil.which("promtool")


@contextmanager
def started(cli_env: dict[str, str], cwd: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``portctl serve ARGS`` running; the first line it printed on stdout, and the process."""
    proc = subprocess.Popen(
        [PORTCTL, "serve", *args],
        cwd=cwd,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        yield (proc.stdout.readline() if ready else ""), proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


@contextmanager
def served(cli_env: dict[str, str], cwd: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``portctl serve ARGS`` running; its URL (the first line it prints) and the process."""
    with started(cli_env, cwd, *args) as (line, proc):
        if not line.startswith("serving "):
            proc.kill()
            _, err = proc.communicate(timeout=TIMEOUT)
            pytest.fail(f"portctl serve did not start: {line!r} {err}")
        yield line.split()[1], proc


def get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url)  # noqa: S310 - the test's own http://127.0.0.1 server
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310
            return answer.status, answer.read().decode(), dict(answer.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, err


def test_serve_answers_every_route_and_stops_cleanly_on_sigterm(run, cli_env, tmp_path):
    run("register", "api", "--port", "18101", "--id", "api-1")
    with served(cli_env, tmp_path, "--listen", "127.0.0.1:0") as (url, proc):
        assert url.startswith("http://127.0.0.1:")
        status, body, headers = get(url + "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert 'portctl_service_instance_info{address="127.0.0.1"' in body
        status, body, _ = get(url + "/api/status")
        data = json.loads(body)
        assert status == 200
        assert data["environments"][0]["services"][0]["instances"][0]["id"] == "api-1"
        status, page, headers = get(url + "/")
        assert status == 200
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert 'data-instance="api-1"' in page
        assert "http://" not in page.replace(url, "")  # self-contained: nothing fetched from elsewhere
        assert get(url + "/-/healthy")[0] == 200
        assert get(url + "/-/ready")[0] == 200
        assert get(url + "/nope")[0] == 404
        code, err = stop(proc)
    assert code == 0
    assert "portctl serve: stopped" in err
    assert "Traceback" not in err


def test_a_taken_port_is_refused_naming_its_holder(run, cli_env, tmp_path, listener):
    holder = listener(0, "127.0.0.1")
    port = holder.getsockname()[1]
    result = run("serve", "--listen", f"127.0.0.1:{port}")
    assert result.returncode != 0
    line = error_line(result)
    assert f"port {port}/tcp is not available" in line
    assert f"pid {os.getpid()}" in line  # this test's own process holds it
    assert "--listen" in line


@pytest.mark.parametrize(
    ("listen", "says"),
    [
        ("127.0.0.1:70000", "70000"),
        ("nowhere:9098", "an IP address"),
        ("127.0.0.1", "HOST:PORT"),
        ("[::1:9098", "HOST:PORT"),
        ("127.0.0.1:٩٠٩٨", "digits 0-9 only"),
        ("192.0.2.1:0", "an address of this host"),
    ],
)
def test_a_malformed_listen_address_is_one_line(run, listen, says):
    result = run("serve", "--listen", listen)
    assert result.returncode == 2
    line = error_line(result)
    assert "--listen" in line
    assert says in line


def test_beyond_loopback_it_serves_with_a_warning_and_a_token_guards_it(run, cli_env, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-value\n")
    token_file.chmod(0o600)
    with served(cli_env, tmp_path, "--listen", "0.0.0.0:0", "--token-file", str(token_file)) as (url, proc):
        local = url.replace("0.0.0.0", "127.0.0.1")
        for route in ("/", "/api/status", "/metrics"):
            status, _, headers = get(local + route)
            assert status == 401, route
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert get(local + route, "wrong")[0] == 401
            assert get(local + route, "s3cret-token-value")[0] == 200
        assert get(local + "/-/healthy")[0] == 200  # probes stay open
        code, err = stop(proc)
    assert code == 0
    assert "warning: serving on http://0.0.0.0:" in err
    assert "beyond loopback" in err
    assert "s3cret-token-value" not in err


def test_a_missing_or_empty_token_file_is_refused(run, tmp_path):
    for path in (tmp_path / "absent", tmp_path / "empty"):
        if path.name == "empty":
            path.write_text("\n")
        result = run("serve", "--listen", "127.0.0.1:0", "--token-file", str(path))
        assert result.returncode == 2
        assert "--token-file" in error_line(result)


def test_without_listen_it_takes_the_port_allocated_to_portctl(run, cli_env, tmp_path):
    with served(cli_env, tmp_path) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        allocated = json.loads(run("--json", "status").stdout)["data"]
        stop(proc)
    ours = [a for a in allocated["allocations"] if a["service"] == "portctl"]
    assert [a["port"] for a in ours] == [port]
    assert 9000 <= port <= 9999  # the monitoring range


def test_the_store_going_away_is_shown_not_fatal(run, cli_env, tmp_path, store_path):
    run("register", "api", "--port", "18102", "--id", "api-1")
    with served(cli_env, tmp_path, "--listen", "127.0.0.1:0") as (url, proc):
        assert get(url + "/metrics")[0] == 200
        good = store_path.read_text()
        store_path.write_text("{broken")  # the store now cannot be read
        status, body, _ = get(url + "/metrics")
        assert status == 200
        assert 'portctl_collector_up{collector="store"} 0.0' in body
        assert 'service_id="api-1"' in body  # the last values it read
        _, page, _ = get(url + "/")
        assert "Store unreachable since" in page
        assert 'data-instance="api-1"' in page
        store_path.write_text(good)
        assert 'portctl_collector_up{collector="store"} 1.0' in get(url + "/metrics")[1]
        code, err = stop(proc)
    assert code == 0
    assert "Traceback" not in err


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")
def test_metrics_textfile_is_written_whole_for_node_exporter(run, tmp_path):
    run("register", "api", "--port", "18103", "--id", "api-1")
    target = tmp_path / "textfile" / "portctl.prom"
    target.parent.mkdir()
    result = run("metrics", "--textfile", target, "--no-scan")
    assert result.returncode == 0, result.stderr
    text = target.read_text()
    assert 'service_id="api-1"' in text
    assert "portctl_up" not in text
    assert [p.name for p in target.parent.iterdir()] == ["portctl.prom"]  # no temp file left
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"], check=False, input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_metrics_with_an_unreachable_store_says_so_and_exits_3(run, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"  # closed: nothing listens there
    target = tmp_path / "portctl.prom"
    result = run("metrics", "--textfile", target, "--no-scan", "--store", f"etcd://{endpoint}?timeout=1")
    assert result.returncode == 3
    line = error_line(result)
    assert "the store could not be read" in line
    assert f"{endpoint} (connection refused)" in line
    text = target.read_text()
    assert 'portctl_collector_up{collector="store"} 0.0' in text
    assert 'collector="host"' not in text  # not scanned: no claim either way


def test_metrics_of_a_corrupt_store_file_says_so_and_leaves_it(run, tmp_path, store_path):
    store_path.write_text("{broken")
    target = tmp_path / "portctl.prom"
    result = run("metrics", "--textfile", target)
    assert result.returncode == 3
    assert "not valid JSON" in error_line(result)
    assert 'portctl_collector_up{collector="store"} 0.0' in target.read_text()
    assert store_path.read_text() == "{broken"  # left as it was


def test_metrics_prints_the_exposition_without_textfile(run):
    result = run("metrics", "--no-scan")
    assert result.returncode == 0
    assert "# TYPE portctl_collector_up gauge" in result.stdout


def test_with_the_store_down_at_start_it_serves_only_where_told(run, cli_env, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        store = f"etcd://127.0.0.1:{s.getsockname()[1]}?timeout=1"  # nothing listens there
    result = run("serve", "--store", store)
    assert result.returncode == 3
    assert "--listen" in error_line(result)  # it could not allocate its port: say how to go on
    with served(cli_env, tmp_path, "--store", store, "--listen", "127.0.0.1:0") as (url, proc):
        assert get(url + "/-/healthy")[0] == 200
        status, body, _ = get(url + "/metrics")
        assert status == 200
        assert 'portctl_collector_up{collector="store"} 0.0' in body
        assert get(url + "/-/ready")[0] == 503  # never read: not ready
        assert "No data yet" in get(url + "/")[1]
        code, _ = stop(proc)
    assert code == 0


@pytest.mark.parametrize("where", ["missing/portctl.prom", "folder", "/proc/portctl.prom"])
def test_a_textfile_that_cannot_be_written_is_named_in_one_line(run, tmp_path, where):
    (tmp_path / "folder").mkdir()
    result = run("metrics", "--textfile", where, "--no-scan")
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith(f"portctl: error: --textfile: '{where}' is not valid")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_probes_answer_head_and_the_bearer_scheme_is_any_case(run, cli_env, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t0k3n\n")
    with served(cli_env, tmp_path, "--listen", "127.0.0.1:0", "--token-file", str(token_file)) as (url, proc):
        head = urllib.request.Request(url + "/-/healthy", method="HEAD")  # noqa: S310 - our own server
        with urllib.request.urlopen(head, timeout=TIMEOUT) as answer:  # noqa: S310 - our own server
            assert answer.status == 200
            assert answer.read() == b""
        for scheme in ("Bearer", "bearer", "BEARER"):
            headers = {"Authorization": f"{scheme} t0k3n"}
            request = urllib.request.Request(url + "/api/status", headers=headers)  # noqa: S310
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310
                assert answer.status == 200, scheme
        stop(proc)


def test_json_puts_the_address_on_the_first_line(run, cli_env, tmp_path):
    with started(cli_env, tmp_path, "--json", "--listen", "127.0.0.1:0") as (line, proc):
        envelope = json.loads(line)
        assert envelope["ok"] is True
        assert envelope["data"]["url"].startswith("http://127.0.0.1:")
        code, err = stop(proc)
    assert code == 0, err


def test_metrics_json_says_where_it_wrote(run, tmp_path):
    target = tmp_path / "portctl.prom"
    data = json.loads(run("--json", "metrics", "--no-scan", "--textfile", target).stdout)["data"]
    assert data == {"path": str(target), "store_up": True, "text": None}
    printed = json.loads(run("metrics", "--json", "--no-scan").stdout)["data"]
    assert "# TYPE portctl_collector_up gauge" in printed["text"]


def test_a_mapped_ipv4_loopback_address_is_loopback():
    from portctl.monitoring.server import parse_listen

    assert parse_listen("[::ffff:127.0.0.1]:0").loopback
    assert not parse_listen("[::ffff:192.0.2.1]:0").loopback
    assert not parse_listen("0.0.0.0:0").loopback


def test_sigterm_delivered_to_another_thread_still_stops_it(cli_env, tmp_path):
    """The kernel may deliver a process's SIGTERM to any of its threads. Python runs the handler
    in the main thread only when that thread runs: one blocked in a wait with no timeout never
    would. Sent here to a thread other than the main one, on purpose (tgkill)."""
    import ctypes
    import os

    tgkill = 234  # x86_64; elsewhere the test cannot aim a signal at one thread
    if os.uname().machine != "x86_64":
        pytest.skip("tgkill's syscall number is x86_64's here")
    with served(cli_env, tmp_path, "--listen", "127.0.0.1:0") as (_, proc):
        deadline = time.monotonic() + TIMEOUT
        while len(os.listdir(f"/proc/{proc.pid}/task")) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the server's and the port scan's threads
        others = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid)
        assert others, "serve runs no thread but its main one"
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(tgkill, proc.pid, others[-1], int(signal.SIGTERM)) == 0
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert "portctl serve: stopped" in err
