"""Registry commands as a user runs them, against real TCP and HTTP servers the tests start."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.cli.conftest import Run, error_line, free_port


@pytest.fixture
def tcp_server() -> Iterator[socket.socket]:
    s = socket.create_server(("127.0.0.1", 0))
    yield s
    s.close()


def _data(result) -> object:
    return json.loads(result.stdout)["data"]


def test_register_takes_the_allocated_port_and_checks_it_now(run: Run, tcp_server: socket.socket) -> None:
    port = tcp_server.getsockname()[1]
    assert run("allocate", "--service", "cache", "--port", str(port)).returncode == 1  # held: our listener
    assert (
        run(
            "import",
            "-",
            input=json.dumps(
                {
                    "allocations": [
                        {"service": "cache", "environment": "production", "host": "test-host", "port": port}
                    ]
                }
            ),
        ).returncode
        == 0
    )
    result = run("register", "cache", "--json")
    assert result.returncode == 0, result.stderr
    entry = _data(result)
    assert (entry["port"], entry["status"], entry["id"]) == (port, "passing", f"cache-test-host-{port}")
    assert f"tcp connect to 127.0.0.1:{port}" in entry["output"]
    services = run("services")
    assert f"cache-test-host-{port}" in services.stdout
    assert "passing" in services.stdout


def test_http_check_maps_status_codes(run: Run, http_server) -> None:
    port, behaviour = http_server.server_address[1], http_server.behaviour
    url = f"http://127.0.0.1:{port}/health"
    assert _data(run("register", "web", "--port", str(port), "--check", url, "--json"))["status"] == "passing"
    behaviour.code = 429
    assert _data(run("register", "web", "--port", str(port), "--check", url, "--json"))["status"] == "warning"
    behaviour.code = 503
    critical = run("register", "web", "--port", str(port), "--check", url, "--json")
    assert _data(critical)["status"] == "critical"
    assert "503" in _data(critical)["output"]
    assert run("health", "web").returncode == 1
    verify = run("verify")
    assert verify.returncode == 1
    assert "0 of 1 healthy" in verify.stdout
    behaviour.code = 200
    verify = run("verify")
    assert verify.returncode == 0, verify.stdout
    assert "1 of 1 healthy" in verify.stdout
    assert run("health", "web").returncode == 0


def test_several_instances_and_deregister(run: Run, tcp_server: socket.socket) -> None:
    port = tcp_server.getsockname()[1]
    for instance in ("api-a", "api-b"):
        assert run("register", "api", "--port", str(port), "--id", instance).returncode == 0
    listed = [i["id"] for i in _data(run("services", "--json"))]
    assert listed == ["api-a", "api-b"]
    assert "deregistered api-a" in run("deregister", "api-a").stdout
    assert [i["id"] for i in _data(run("services", "--json"))] == ["api-b"]
    missing = run("deregister", "api-a")
    assert missing.returncode == 1
    assert "known: api-b" in error_line(missing)


def test_ttl_check_waits_for_a_pass(run: Run) -> None:
    assert run("register", "worker", "--port", "7301", "--check", "ttl:30s").returncode == 0
    assert _data(run("services", "--json"))[0]["status"] == "critical"
    passed = run("ttl", "pass", "worker-test-host-7301")
    assert passed.returncode == 0
    assert "passing for 30s" in passed.stdout
    assert run("ttl", "warn", "worker-test-host-7301").returncode == 0
    assert _data(run("services", "--json"))[0]["status"] == "warning"


def test_url_prints_a_healthy_instance(run: Run, tcp_server: socket.socket) -> None:
    port = tcp_server.getsockname()[1]
    run("register", "redis", "--port", str(port))
    result = run("url", "redis")
    assert (result.returncode, result.stdout.strip()) == (0, f"redis://127.0.0.1:{port}")
    assert run("url", "redis", "--scheme", "http").stdout.strip() == f"http://127.0.0.1:{port}"
    unknown = run("url", "nosuch")
    assert unknown.returncode == 1
    assert "'nosuch'" in error_line(unknown)
    assert "redis" in error_line(unknown)


def test_agent_once_reports_each_check(run: Run, tcp_server: socket.socket) -> None:
    port = tcp_server.getsockname()[1]
    run("register", "cache", "--port", str(port))
    result = run("agent", "--once")
    assert result.returncode == 0, result.stderr
    assert f"cache-test-host-{port}: passing" in result.stdout


@pytest.mark.parametrize(
    ("args", "field", "form"),
    [
        (("register", "ghost"), "service", "give --port N"),
        (
            ("register", "web", "--port", "7302", "--check", "ftp://127.0.0.1:21/"),
            "--check",
            "tcp, http://HOST:PORT/PATH",
        ),
        (
            ("register", "web", "--port", "7302", "--check", "http://127.0.0.1:7999/h"),
            "--check",
            "nobody allocated",
        ),
        (("register", "web", "--port", "7302", "--check", "ttl:15"), "--check ttl", "a duration like"),
        (("register", "web", "--port", "7302", "--check", "ttl:-1s"), "--check ttl", "a duration like"),
        (("register", "web", "--port", "7302", "--check", "ttl:1y"), "--check ttl", "a duration like"),
        (("register", "web", "--port", "7302", "--interval", "5"), "--interval", "a duration like"),
        (("register", "Web", "--port", "7302"), "service", "lowercase letters"),
        (("register", "web", "--port", "70000"), "--port", "from 1 to 65535"),
        (("register", "web", "--port", "7302", "--meta", "novalue"), "--meta", "KEY=VALUE"),
        (("ttl", "maybe", "x"), "state", "pass, warn or fail"),
    ],
)
def test_bad_input_is_refused_naming_the_field(
    run: Run, args: tuple[str, ...], field: str, form: str
) -> None:
    result = run(*args)
    assert result.returncode in (1, 2), result.stderr
    line = error_line(result)
    assert field in line
    assert form in line
    assert run("services", "--json").stdout.count('"id"') == 0  # nothing registered


def test_ttl_on_an_instance_without_a_ttl_check(run: Run, tcp_server: socket.socket) -> None:
    port = tcp_server.getsockname()[1]
    run("register", "cache", "--port", str(port))
    result = run("ttl", "pass", f"cache-test-host-{port}")
    assert result.returncode == 2
    assert "an instance with a TTL check" in error_line(result)


@pytest.mark.parametrize(
    ("url", "form"),
    [
        ("http://127.0.0.1:99999/h", "a port from 1 to 65535"),
        ("http://127.0.0.1:abc/h", "a port from 1 to 65535"),
        ("http://admin:s3cret@127.0.0.1:7303/h", "without user or password"),
    ],
)
def test_bad_check_urls_are_refused_without_echoing_secrets(run: Run, url: str, form: str) -> None:
    result = run("register", "web", "--port", "7303", "--check", url, "--json")
    assert result.returncode == 2
    envelope = json.loads(result.stdout)
    assert envelope["error"]["code"] == "invalid_input"
    assert form in envelope["error"]["message"]
    assert "s3cret" not in result.stdout + result.stderr


# Meta --------------------------------------------------------------------------------------

BAD_META = {
    "newline-in-value": ("owner=ops\nteam=x", "--meta owner", "on one line"),
    "carriage-return": ("owner=ops\r", "--meta owner", "on one line"),
    "tab-in-value": ("owner=a\tb", "--meta owner", "on one line"),
    "escape-in-value": ("owner=\x1b[31mred", "--meta owner", "on one line"),
    "bidi-override": ("owner=abc\u202edef", "--meta owner", "on one line"),
    "line-separator": ("owner=a\u2028b", "--meta owner", "on one line"),
    "long-value": ("owner=" + "x" * 513, "--meta owner", "at most 512"),
    "portctl-key": ("portctl-env=staging", "--meta", "not starting with 'portctl-'"),
    "portctl-key-uppercase": ("Portctl-Key=x", "--meta", "not starting with 'portctl-'"),
    "consul-key": ("consul-version=1", "--meta", "'consul-' (reserved by Consul)"),
    "non-ascii-key": ("équipe=ops", "--meta", "ASCII letters"),
    "long-key": ("k" * 129 + "=v", "--meta", "1-128"),
}


@pytest.mark.parametrize(("pair", "field", "form"), BAD_META.values(), ids=BAD_META.keys())
def test_bad_meta_is_refused_and_nothing_registered(run: Run, pair: str, field: str, form: str) -> None:
    result = run("register", "web", "--port", "7304", "--check", "none", "--meta", pair)
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert field in line
    assert form in line
    assert run("services", "--json").stdout.count('"id"') == 0


def test_good_meta_is_kept(run: Run) -> None:
    pairs = ("scheme=postgresql", "owner=Équipe Ops (Paris)", "build_id=a-1", "empty=")
    args = [a for pair in pairs for a in ("--meta", pair)]
    result = run("register", "web", "--port", "7305", "--check", "none", *args, "--json")
    assert result.returncode == 0, result.stderr
    assert _data(result)["meta"] == {
        "scheme": "postgresql",
        "owner": "Équipe Ops (Paris)",
        "build_id": "a-1",
        "empty": "",
    }


# Where an HTTP check points -----------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["evil.example", "10.0.0.5", "192.0.2.1", "127.0.0.1.evil.example", "localhost.evil.example"],
)
def test_an_http_check_on_another_host_is_refused(run: Run, host: str) -> None:
    url = f"http://{host}:7306/health"
    result = run("register", "web", "--port", "7306", "--check", url)
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert f"--check: {url!r} is not valid" in line
    assert "the instance's own address 127.0.0.1 or a loopback address" in line
    assert run("services", "--json").stdout.count('"id"') == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "127.0.0.2", "[::1]"])
def test_an_http_check_on_a_loopback_form_of_a_loopback_address_is_accepted(run: Run, host: str) -> None:
    url = f"http://{host}:7307/health"
    result = run("register", "web", "--port", "7307", "--check", url, "--timeout", "200ms", "--json")
    assert result.returncode == 0, result.stderr
    assert _data(result)["check"]["url"] == url


def test_an_http_check_follows_the_given_address(run: Run) -> None:
    own = "http://192.0.2.10:7308/health"
    args = ("register", "web", "--port", "7308", "--address", "192.0.2.10", "--timeout", "200ms")
    registered = run(*args, "--check", own, "--json")
    assert registered.returncode == 0, registered.stderr
    assert _data(registered)["check"]["url"] == own
    # Not loopback: a loopback URL would check this host, not the instance.
    refused = run(*args, "--id", "web-2", "--check", "http://127.0.0.1:7308/health")
    assert refused.returncode == 2
    line = error_line(refused)
    assert "the instance's own address 192.0.2.10; give --address" in line
    assert "loopback" not in line


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:7309/he\nalth", "http://127.0.0.1:7309/ health", "http://127.0.0.1:7309/h\t"],
)
def test_an_http_check_with_spaces_or_control_characters_is_refused(run: Run, url: str) -> None:
    result = run("register", "web", "--port", "7309", "--check", url)
    assert result.returncode == 2
    assert "http://HOST:PORT/PATH on one line, without spaces" in error_line(result)


@pytest.mark.parametrize(
    ("port", "form"),
    [
        ("٧٣١٠", "a port from 1 to 65535"),
        ("+7310", "a port from 1 to 65535"),
        ("0", "a port from 1 to 65535"),
        ("9" * 2000, "a port from 1 to 65535"),
        ("9" * 5000, "over 2048 characters"),
    ],
    ids=["arabic-indic", "plus-sign", "zero", "2000-digits", "5000-digits"],
)
def test_an_http_check_port_is_ascii_digits(run: Run, port: str, form: str) -> None:
    result = run("register", "web", "--port", "7310", "--check", f"http://127.0.0.1:{port}/h")
    assert result.returncode == 2
    line = error_line(result)
    assert form in line
    assert len(line) < 2300


@pytest.mark.parametrize("flag", ["--successes-before-passing", "--failures-before-critical"])
@pytest.mark.parametrize("count", ["٣", "３", " 3", "+3", "0"])
def test_flap_damping_counts_are_ascii_digits(run: Run, flag: str, count: str) -> None:
    result = run("register", "web", "--port", "7311", "--check", "none", flag, count)
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = error_line(result)
    assert line.startswith(f"portctl: error: {flag}: ")
    assert "is not valid; expected a count from 1 to 100 (digits 0-9 only" in line
    assert "Traceback" not in result.stderr
    assert "no registered services" in run("services").stdout


@pytest.mark.parametrize("text", ["line one\nline two", "tab\there", "bell\x07", "\u2028"])
def test_a_ttl_note_on_several_lines_or_with_control_characters_is_refused(run: Run, text: str) -> None:
    assert run("register", "worker", "--port", "7312", "--check", "ttl:30s").returncode == 0
    result = run("ttl", "pass", "worker-test-host-7312", "--note", text)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--note: " in error_line(result)
    assert "one line" in error_line(result)
    shown = json.loads(run("services", "--json").stdout)["data"]
    assert "ttl pass" not in json.dumps(shown)  # nothing recorded


def test_a_ttl_note_on_one_line_is_recorded(run: Run) -> None:
    assert run("register", "worker", "--port", "7313", "--check", "ttl:30s").returncode == 0
    assert run("ttl", "pass", "worker-test-host-7313", "--note", "batch 42 done").returncode == 0
    assert "batch 42 done" in run("services", "--json").stdout


def test_a_check_url_that_does_not_parse_is_one_line(run: Run) -> None:
    result = run("register", "api", "--port", free_port(), "--check", "http://[::1")
    assert result.returncode == 2
    assert "--check" in error_line(result)
