"""What a user sees when a distributed store is partly down, unreachable, or its client library
is not installed: the command works if a quorum answers, else one line naming each endpoint
and its cause, never a library's exception dump or a traceback."""

# ruff: noqa: F811 - the silent_endpoint fixture is imported, then taken as a parameter

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from tests.backends.test_etcd_failover import (  # noqa: F401 - silent_endpoint is a fixture
    RAW_DUMPS,
    closed_endpoint,
    silent_endpoint,
    wait_for_no_leader,
)
from tests.cli.conftest import error_line


@pytest.fixture
def plain_http_endpoint() -> Iterator[str]:
    """A plain HTTP server (no TLS) on loopback."""
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://...)"
        yield f"127.0.0.1:{line.split(' port ')[1].split()[0]}"
    finally:
        server.kill()
        server.wait(timeout=10)


def port_of(output: str) -> str:
    found = re.search(r"(\d+)/tcp", output)
    assert found, output
    return found.group(1)


def assert_readable(line: str) -> None:
    assert not any(dump in line for dump in RAW_DUMPS), line


# etcd: failover and quorum ----------------------------------------------------------------


def test_allocate_succeeds_with_the_first_two_of_five_endpoints_down(run, etcd_cluster, silent_endpoint):
    store = f"etcd://{closed_endpoint()},{silent_endpoint},{etcd_cluster.endpoints}/five"
    first = run("allocate", "--service", "api", "--type", "dynamic", "--store", store)
    assert first.returncode == 0, first.stderr
    again = run("allocate", "--service", "api", "--type", "dynamic", "--store", store)
    assert again.returncode == 0, again.stderr
    assert port_of(again.stdout) == port_of(first.stdout)  # read back through the failover
    assert run("status", "--store", store).returncode == 0


def test_a_cluster_without_quorum_exits_3_saying_no_leader(run, etcd_cluster):
    etcd_cluster.members[1].kill()
    etcd_cluster.members[2].kill()
    wait_for_no_leader(etcd_cluster.members[0])
    result = run(
        "allocate", "--service", "api", "--type", "dynamic", "--store", etcd_cluster.url() + "?timeout=2"
    )
    assert result.returncode == 3
    line = error_line(result)
    assert "no leader" in line
    assert "quorum" in line
    assert_readable(line)


def test_every_etcd_endpoint_down_exits_3_naming_each_and_its_cause(run, silent_endpoint):
    refused = closed_endpoint()
    result = run("allocate", "--service", "api", "--store", f"etcd://{refused},{silent_endpoint}?timeout=1")
    assert result.returncode == 3
    line = error_line(result)
    assert f"{refused} (connection refused)" in line
    assert f"{silent_endpoint} (no answer" in line
    assert_readable(line)


@pytest.mark.parametrize("scheme", ["etcd", "consul"])
def test_an_unresolvable_host_is_named_with_its_cause(run, scheme):
    result = run("services", "--store", f"{scheme}://no-such-host.invalid:2379?timeout=2")
    assert result.returncode == 3
    line = error_line(result)
    assert "no-such-host.invalid:2379" in line
    assert "name not resolved" in line
    assert_readable(line)


@pytest.mark.parametrize("scheme", ["etcd", "consul"])
def test_a_refused_connection_is_named_with_its_cause(run, scheme):
    endpoint = closed_endpoint()
    result = run("services", "--store", f"{scheme}://{endpoint}?timeout=2")
    assert result.returncode == 3
    line = error_line(result)
    assert f"{endpoint} (connection refused)" in line
    assert_readable(line)


@pytest.mark.parametrize("scheme", ["etcd+https", "consul+https"])
def test_tls_to_a_plain_http_server_is_a_tls_failure(run, scheme, plain_http_endpoint):
    result = run("services", "--store", f"{scheme}://{plain_http_endpoint}?timeout=2")
    assert result.returncode == 3
    line = error_line(result)
    assert f"{plain_http_endpoint} (TLS failure" in line
    assert "_ssl.c" not in line
    assert_readable(line)


@pytest.mark.parametrize("scheme", ["etcd", "consul"])
def test_a_server_that_never_answers_is_named_with_the_budget(run, scheme, silent_endpoint):
    result = run("services", "--store", f"{scheme}://{silent_endpoint}?timeout=0.5")
    assert result.returncode == 3
    line = error_line(result)
    assert silent_endpoint in line
    assert "0.5s" in line
    assert_readable(line)


# Client libraries not installed ------------------------------------------------------------

BLOCKER = textwrap.dedent(
    """
    import sys

    class _NotInstalled:
        NAMES = {"etcd3gw", "requests", "consul"}

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in self.NAMES:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NotInstalled())
    """
)


@pytest.fixture
def without_clients(tmp_path) -> dict[str, str]:
    """Environment in which etcd3gw, requests and py-consul cannot be imported."""
    shim = tmp_path / "not-installed"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": str(shim)}


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("etcd://127.0.0.1:2379", "etcd"),
        ("etcd+https://127.0.0.1:2379", "etcd"),
        ("consul://127.0.0.1:8500", "consul"),
        ("consul+https://127.0.0.1:8501", "consul"),
    ],
)
def test_a_store_whose_client_is_not_installed_names_the_extra(run, without_clients, url, extra):
    result = run("status", "--store", url, env=without_clients)
    assert result.returncode == 2
    line = error_line(result)
    assert f"pip install 'portctl[{extra}]'" in line
    assert "ModuleNotFoundError" not in line


def test_a_missing_client_in_json_output_is_one_envelope(run, without_clients):
    result = run("services", "--json", "--store", "etcd://127.0.0.1:2379", env=without_clients)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "portctl[etcd]" in result.stdout + result.stderr


def test_the_json_store_works_without_the_clients(run, without_clients):
    result = run("allocate", "--service", "api", env=without_clients)
    assert result.returncode == 0, result.stderr
