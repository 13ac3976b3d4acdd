"""The CLI on a real etcd: registrations on leases through a pause, migration both ways, and
what a user sees when etcd is unreachable or refuses them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from portctl.backends import open_store
from tests.backends.test_etcd import raw_keys, secured_etcd  # noqa: F401 - the secured_etcd fixture
from tests.cli.conftest import PORTCTL, error_line, free_port

LEASE_KEY = "registry/production/api/{id}/entry"


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def present(url: str, key: str) -> bool:
    with open_store(url) as store:
        return store.get(key) is not None


@pytest.fixture
def background(tmp_path, cli_env):
    """Start ``portctl ...`` in the background; killed at the end of the test."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: object) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [PORTCTL, *(str(a) for a in args)],
            cwd=tmp_path,
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(timeout=30)


# Unreachable, refused, crafted -------------------------------------------------------------


def test_no_reachable_endpoint_exits_3_naming_it(run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run("status", "--store", f"etcd://127.0.0.1:{port}?timeout=1")
    assert result.returncode == 3
    assert f"127.0.0.1:{port}" in error_line(result)
    assert "unreachable" in error_line(result)


def test_a_wrong_password_exits_3_without_printing_it(run, secured_etcd):  # noqa: F811
    result = run("status", "--store", f"etcd://{secured_etcd}", env={"ETCDCTL_USER": "portctl:hunter2-wrong"})
    assert result.returncode == 3
    assert "ETCDCTL_USER" in error_line(result)
    assert "hunter2-wrong" not in result.stdout + result.stderr


def test_a_password_in_the_url_is_refused_with_exit_2(run):
    result = run("status", "--store", "etcd://alice:hunter2@127.0.0.1:2379")
    assert result.returncode == 2
    assert "ETCDCTL_PASSWORD" in error_line(result)
    assert "hunter2" not in result.stdout + result.stderr


def test_a_missing_tls_file_exits_2_naming_it(run):
    result = run("status", "--store", "etcd+https://127.0.0.1:2379?cacert=/nonexistent/ca.pem")
    assert result.returncode == 2
    assert "/nonexistent/ca.pem" in error_line(result)


def test_a_name_crafted_to_escape_the_prefix_is_refused_and_writes_nothing(run, etcd_url, etcd_endpoint):
    before = raw_keys(etcd_endpoint)
    for name in ("../../x", "api/../../x"):
        result = run("allocate", "--service", name, "--store", etcd_url)
        assert result.returncode == 2, result.stderr
        assert "service: " in error_line(result)
    assert raw_keys(etcd_endpoint) == before


# Leases through a pause --------------------------------------------------------------------


def keep_alive_registrar(background, etcd_url: str, lease: str):
    """``portctl register api --lease L --keep-alive`` in the background, once its entry is there:
    the process, the port and the entry's key."""
    port = free_port()
    registrar = background(
        "register", "api", "--port", port, "--check", "none", "--lease", lease, "--keep-alive", "--store", etcd_url
    )  # fmt: skip
    key = LEASE_KEY.format(id=f"api-test-host-{port}")
    assert wait_until(lambda: present(etcd_url, key)), registrar.stderr
    return registrar, port, key


def test_a_keep_alive_process_paused_past_its_lease_registers_again(run, background, etcd_url):
    registrar, _port, key = keep_alive_registrar(background, etcd_url, lease="2s")
    registrar.send_signal(signal.SIGSTOP)
    assert wait_until(lambda: not present(etcd_url, key)), "the lease should run out while paused"
    registrar.send_signal(signal.SIGCONT)
    ok = wait_until(lambda: present(etcd_url, key))
    if not ok:
        registrar.send_signal(signal.SIGTERM)
        out, err = registrar.communicate(timeout=30)
        raise AssertionError(f"rc={registrar.returncode} stderr={err!r} stdout={out!r}")
    registrar.send_signal(signal.SIGTERM)
    registrar.wait(timeout=30)
    assert registrar.returncode == 0
    assert not present(etcd_url, key)  # SIGTERM deregistered it
    assert "registered it again" in registrar.stderr.read()


def test_a_keep_alive_process_lets_go_of_an_entry_deregistered_elsewhere(run, background, etcd_url):
    registrar, port, key = keep_alive_registrar(background, etcd_url, lease="3s")
    assert run("deregister", f"api-test-host-{port}", "--store", etcd_url).returncode == 0
    registrar.wait(timeout=30)
    assert registrar.returncode == 0
    assert "deregistered elsewhere" in registrar.stderr.read()
    assert not present(etcd_url, key)


def test_the_agent_paused_past_a_lease_writes_the_entry_again(run, background, etcd_url):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))  # a port of its own: a free_port() could be taken meanwhile
    port = listener.getsockname()[1]
    listener.listen(8)  # the agent's zombie check sees a live port
    try:
        registered = run("register", "api", "--port", port, "--lease", "2s", "--store", etcd_url)
        assert registered.returncode == 0, registered.stderr
        key = LEASE_KEY.format(id=f"api-test-host-{port}")
        agent = background("agent", "--store", etcd_url)
        time.sleep(3)
        assert present(etcd_url, key)  # kept alive past its 2 s lease
        agent.send_signal(signal.SIGSTOP)
        assert wait_until(lambda: not present(etcd_url, key))
        agent.send_signal(signal.SIGCONT)
        assert wait_until(lambda: present(etcd_url, key))
        gone = run("deregister", f"api-test-host-{port}", "--store", etcd_url)
        assert gone.returncode == 0
        time.sleep(3)
        assert not present(etcd_url, key)  # deregistered on purpose: the agent lets it go
    finally:
        listener.close()


def test_keep_alive_without_a_lease_is_refused(run):
    result = run("register", "api", "--port", free_port(), "--keep-alive")
    assert result.returncode == 2
    assert "--lease" in error_line(result)


# Registry and discovery through the CLI ----------------------------------------------------


def test_register_then_url_and_services_on_etcd(run, etcd_url):
    port = free_port()
    assert run("register", "api", "--port", port, "--check", "none", "--store", etcd_url).returncode == 0
    url = run("url", "api", "--store", etcd_url)
    assert url.returncode == 0, url.stderr
    assert url.stdout.strip() == f"http://127.0.0.1:{port}"
    services = run("services", "--json", "--store", etcd_url)
    listed = json.loads(services.stdout)["data"]
    assert [(s["service"], s["port"]) for s in listed] == [("api", port)]


# Migration ---------------------------------------------------------------------------------


def _export(run, store: str) -> dict[str, object]:
    """``portctl export`` of a store, without the time it was generated."""
    result = run("export", "--store", store)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    document.pop("generated_at")
    assert document["allocations"]
    return document


def test_migrate_json_to_etcd_and_back_keeps_everything(run, etcd_url, tmp_path, store_path):
    for service in ("postgres", "redis", "api", "grafana"):
        assert run("allocate", "--service", service).returncode == 0
    assert run("register", "api", "--check", "none").returncode == 0
    with open_store(f"file://{store_path}") as store:
        store.create("bluegreen/production/api/live", json.dumps({"color": "blue"}))

    there = run("migrate", "--to", etcd_url)
    assert there.returncode == 0, there.stderr
    assert "copied" in there.stdout
    assert _export(run, etcd_url) == _export(run, f"file://{store_path}")

    back_path = tmp_path / "back" / "store.json"
    back_path.parent.mkdir()
    back = run("migrate", "--to", f"file://{back_path}", "--store", etcd_url)
    assert back.returncode == 0, back.stderr
    assert _export(run, f"file://{back_path}") == _export(run, f"file://{store_path}")
    with open_store(f"file://{store_path}") as a, open_store(f"file://{back_path}") as b:
        assert [(e.key, e.value) for e in a.list("")] == [(e.key, e.value) for e in b.list("")]
    assert oct(os.stat(back_path).st_mode & 0o022) == "0o0"


def test_migrate_into_a_store_in_use_is_refused_and_changes_nothing(run, etcd_url):
    assert run("allocate", "--service", "redis").returncode == 0
    assert run("allocate", "--service", "postgres", "--store", etcd_url).returncode == 0
    before = _export(run, etcd_url)
    result = run("migrate", "--to", etcd_url)
    assert result.returncode == 2
    assert "empty store" in error_line(result)
    assert _export(run, etcd_url) == before
