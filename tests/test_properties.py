"""Property tests of every parser of user input: ports, counts, durations, names, checks, meta,
Compose ports, the config file and ``port_config.json`` imports.

Each parser, given anything, returns a valid result or refuses with :class:`InvalidInput` - never
another exception. Speed is bounded by Hypothesis' per-example ``deadline``: a generous 2 s, far
above what a linear parser needs even for the 50,000-character inputs drawn here, so a parser
that goes quadratic (or hangs) fails, while a noisy machine does not. Runs are derandomized with
a fixed number of examples, so every run tries the same inputs.
"""

from __future__ import annotations

import json
import os
import re
import string
import tempfile
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from portctl import _validate
from portctl.compose.project import load_compose
from portctl.config.settings import load_settings
from portctl.errors import InvalidInput
from portctl.ports.documents import parse_export
from portctl.registry.checks import check_host, parse_check, parse_duration
from portctl.registry.entries import CheckSpec

BOUNDED = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FILES = settings(BOUNDED, max_examples=150)  # each example writes and reads a file

ASCII_DIGITS = re.compile(r"[0-9]+", re.ASCII)
DURATION = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h)", re.ASCII)

# What int() and float() take besides ASCII digits, and what breaks them.
NEAR_DIGITS = [
    "²",
    "٨",
    "٠",
    "８",
    "１",
    "\u0e53",
    "_",
    " ",
    "\t",
    "\n",
    "\u00a0",
    "\u2028",
    "+",
    "-",
    ".",
    "e",
]
digitish = st.text(st.sampled_from([*string.digits, *NEAR_DIGITS]), max_size=12)
huge_digits = st.integers(1, 50_000).map(lambda n: "9" * n)
long_junk = st.integers(1, 50_000).map(lambda n: "a." * n)
user_text = st.one_of(digitish, huge_digits, long_junk, st.text(max_size=80))
port_text = st.one_of(
    st.integers(0, 70_000).map(str), st.integers(1, 65535).map(lambda p: f"00{p}"), user_text
)
numbers = st.one_of(st.integers(), st.floats(), st.booleans(), st.none())


def refused(call: Any, *args: Any, **kwargs: Any) -> Any:
    """The parser's result, or None when it refused with InvalidInput (any other error fails)."""
    try:
        return call(*args, **kwargs)
    except InvalidInput as e:
        refusal = e
    assert str(refusal).startswith(refusal.field), refusal  # one message, naming the field
    assert "\n" not in str(refusal)
    return None


def _is_port_text(value: str) -> bool:
    return bool(ASCII_DIGITS.fullmatch(value)) and len(value.lstrip("0")) <= 5 and 1 <= int(value) <= 65535


# Ports and counts ------------------------------------------------------------------------


@BOUNDED
@given(st.one_of(port_text, numbers))
@example("²")
@example("٨٠٨٢")
@example(" 80")
@example("80 ")
@example("8_080")
@example("9" * 5000)
def test_a_port_is_a_port_or_refused(value: object) -> None:
    got = refused(_validate.port, value)
    if isinstance(value, str):
        assert (got is not None) == _is_port_text(value)
        assert got is None or got == int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        assert (got is not None) == (1 <= value <= 65535)
    else:
        assert got is None


@BOUNDED
@given(st.one_of(port_text, numbers))
def test_a_count_is_a_count_or_refused(value: object) -> None:
    got = refused(_validate.count, value, "--failures-before-critical")
    assert got is None or (1 <= got <= 100 and not isinstance(got, bool))
    if isinstance(value, str) and got is not None:
        assert ASCII_DIGITS.fullmatch(value)


@BOUNDED
@given(st.one_of(user_text, st.floats().map(str), st.none()))
def test_a_call_timeout_is_seconds_or_refused(value: str | None) -> None:
    got = refused(_validate.call_timeout, value, 5.0)
    assert got is None or 0 < got <= 300
    if value is not None and got is not None:
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)?", value, re.ASCII)


# Durations -------------------------------------------------------------------------------

duration_text = st.one_of(
    st.builds(
        "{}{}".format,
        st.one_of(st.integers(0, 10**8), st.floats(0, 1e8).map("{:.3f}".format), digitish, huge_digits),
        st.sampled_from(["ms", "s", "m", "h", "d", "", " s", "S", "s "]),
    ),
    user_text,
)


@BOUNDED
@given(st.one_of(duration_text, st.floats(), st.integers()))
@example("١٥s")
@example(" 15s")
@example("9" * 5000 + "s")
def test_a_duration_is_seconds_or_refused(value: str | float) -> None:
    got = refused(parse_duration, value, "--interval")
    assert got is None or 0 < got <= 30 * 24 * 3600
    if isinstance(value, str) and got is not None:
        assert DURATION.fullmatch(value)


# Names -------------------------------------------------------------------------------------

name_text = st.one_of(st.from_regex(r"[a-z][a-z0-9_-]{0,70}", fullmatch=True), user_text)


@BOUNDED
@given(name_text)
def test_a_service_name_is_a_dns_label_or_refused(value: str) -> None:
    got = refused(_validate.service_name, value)
    assert got is None or (got == value and re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", value, re.ASCII))


@BOUNDED
@given(st.one_of(st.from_regex(r"[a-zA-Z0-9.:\[\]%_-]{1,60}", fullmatch=True), user_text))
def test_a_host_is_a_name_or_address_or_refused(value: str) -> None:
    got = refused(_validate.host, value)
    assert got is None or (got == value and len(value) <= 253 and _validate.one_line(value))
    identity = refused(_validate.host_identity, value)
    assert identity is None or (identity == value and "/" not in value and value not in (".", ".."))


@BOUNDED
@given(st.one_of(st.from_regex(r"[a-z0-9./@:_-]{0,60}", fullmatch=True), user_text))
def test_a_store_key_cannot_escape_its_prefix(value: str) -> None:
    got = refused(_validate.key, value)
    if got is not None:
        assert not value.startswith("/")
        assert not {".", "..", ""} & set(value.split("/"))
    prefix = refused(_validate.prefix, value)
    assert prefix is None or ".." not in prefix.split("/")


# Checks and meta ------------------------------------------------------------------------------

url_host = st.sampled_from(
    ["127.0.0.1", "localhost", "[::1]", "127.9.9.9", "evil.example", "10.0.0.5", "[::ffff:127.0.0.1]", ""]
)
check_text = st.one_of(
    st.builds("http://{}:{}/{}".format, url_host, port_text, st.text(max_size=20)),
    st.builds("{}{}".format, st.sampled_from(["http://", "https://", "ttl:", "tcp", "none", ""]), user_text),
    user_text,
    st.none(),
)


@BOUNDED
@given(check_text, st.one_of(port_text, st.integers()), st.one_of(duration_text, st.none()))
@example("http://127.0.0.1:80/he\nalth", "1", None)
@example("http://evil.example:7000/health", 1, "5s")
def test_a_check_is_a_check_or_refused(text: str | None, count: object, interval: str | None) -> None:
    spec = refused(parse_check, text, interval=interval, failures_before_critical=count)  # type: ignore[arg-type]
    if spec is None:
        return
    assert isinstance(spec, CheckSpec)
    assert spec.kind in ("tcp", "http", "ttl", "none")
    assert 1 <= spec.failures_before_critical <= 100
    assert 0 < spec.interval <= 30 * 24 * 3600
    if spec.kind == "http":
        assert spec.url == text
        assert not any(ch.isspace() for ch in text or "")


address = st.sampled_from(["127.0.0.1", "::1", "[::1]", "localhost", "0.0.0.0", "192.0.2.10", "db.internal"])
loopback = {"127.0.0.1", "::1", "localhost", "127.9.9.9", "::ffff:127.0.0.1"}


@BOUNDED
@given(st.builds("http://{}:{}/h".format, st.one_of(url_host, address), port_text), address)
def test_an_http_check_targets_the_instance_or_is_refused(url: str, where: str) -> None:
    if refused(parse_check, url) is None:
        return
    try:
        check_host(url, where)
    except InvalidInput:
        return
    host, bare = urlsplit(url).hostname, where.strip("[]")
    assert host == bare or (host in loopback and bare in {*loopback, "0.0.0.0"})


meta_key = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    st.sampled_from(["portctl-env", "Consul-x", "é", ""]),
    user_text,
)


@BOUNDED
@given(st.dictionaries(meta_key, st.one_of(st.text(max_size=40), user_text), max_size=8))
def test_meta_is_one_line_pairs_or_refused(pairs: dict[str, str]) -> None:
    got = refused(_validate.meta, pairs)
    if got is None:
        return
    assert got == pairs
    for name, value in got.items():
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", name, re.ASCII)
        assert not name.lower().startswith(("portctl-", "consul-"))
        assert len(value) <= 512
        assert _validate.one_line(value)
        assert "\n" not in value


# Files: Compose, config, port_config.json ---------------------------------------------------


def _in_a_file(name: str, text: str, read: Any) -> Any:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return read(path)


# Tokens as written in a file, so an integer of thousands of digits can be written at all, up to
# and beyond Python's 4300-digit limit of int().
limited_digits = st.integers(1, 4300).map(lambda n: "9" * n)
file_digits = st.one_of(limited_digits, huge_digits)


def _int_token(digits: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.integers(-10, 70_000).map(str), digits, st.sampled_from(["0x50", "8_080", "1e3"]))


int_token = _int_token(file_digits)
str_token = st.one_of(digitish, st.text(max_size=20)).map(json.dumps)
scalar_token = st.one_of(int_token, str_token, st.sampled_from(["true", "1.5"]))
toml_token = scalar_token

publish_part = st.one_of(st.integers(0, 70_000).map(str), digitish, file_digits, st.just("8000-8002"))
short_port = st.builds(
    "{}{}{}".format,
    st.sampled_from(["", "127.0.0.1:", "[::1]:", "0.0.0.0:", "${HOST_IP}:"]),
    st.one_of(st.just(""), publish_part.map(lambda p: p + ":")),
    st.builds("{}{}".format, publish_part, st.sampled_from(["", "/tcp", "/udp", "/sctp", "/"])),
)
compose_entry = st.one_of(
    short_port.map(json.dumps),
    short_port,  # unquoted: YAML may read it as an integer (of any size), a float or a string
    int_token,
    st.builds("{{target: {}, published: {}}}".format, scalar_token, scalar_token),
)


def _valid_compose(entries: list[str]) -> None:
    text = "services:\n  web:\n    image: busybox\n    ports:\n" + "".join(f"      - {e}\n" for e in entries)
    project = refused(_in_a_file, "docker-compose.yml", text, lambda p: load_compose([p], environ={}))
    for mapping in project.services.get("web", ()) if project else ():
        assert 1 <= mapping.target <= 65535
        assert mapping.published is None or 1 <= mapping.published <= 65535
        assert mapping.protocol in ("tcp", "udp")


@FILES
@given(st.lists(compose_entry, min_size=1, max_size=4))
@example([json.dumps("٨٠٨٢:80")])
@example([json.dumps("1-65535:1-65535")])
def test_compose_ports_are_mappings_or_refused(entries: list[str]) -> None:
    _valid_compose(entries)


@FILES
@given(st.sampled_from([["9" * 5000], ["{target: " + "9" * 5000 + "}"]]))
def test_compose_refuses_a_port_of_thousands_of_digits(entries: list[str]) -> None:
    _valid_compose(entries)


config_line = st.one_of(
    st.builds("environment = {}".format, str_token),
    st.builds("environments = [{}]".format, str_token),
    st.builds("host = {}".format, str_token),
    st.builds("stack = [{}]".format, str_token),
)
config_service = st.builds(
    "[services.{}]\nport = {}\nports = {{ development = {} }}\nalternatives = [{}]\nprotocol = {}\n".format,
    st.sampled_from(["vdb", "postgres", "Bad", "a.b"]),
    toml_token,
    toml_token,
    toml_token,
    st.one_of(str_token, st.just('"tcp"')),
)
config_type = st.builds("[types.ml]\nrange = [{}, {}]\n".format, toml_token, toml_token)
config_text = st.one_of(
    st.builds(
        lambda lines, tables: "\n".join(lines) + "\n" + "\n".join(tables),
        st.lists(config_line, max_size=3, unique_by=lambda line: line.split("=")[0]),
        st.lists(st.one_of(config_service, config_type), max_size=2, unique=True),
    ),
    st.text(max_size=200),
)


def _valid_settings(text: str) -> None:
    found = refused(_in_a_file, "portctl.toml", text, load_settings)
    if found is None:
        return
    for kind in found.policy.types.values():
        assert 1 <= kind.low <= kind.high <= 65535
    for spec in found.policy.services.values():
        assert all(1 <= p <= 65535 for p in [*spec.preferred(found.policy.default_environment)])
    assert found.policy.default_environment in found.policy.environments


@FILES
@given(config_text)
@example('[services.vdb]\nport = "٨٠٨٢"\n')
@example('environment = ""\n')
def test_a_config_file_is_settings_or_refused(text: str) -> None:
    _valid_settings(text)


@FILES
@given(
    st.sampled_from([f"[services.vdb]\nport = {'9' * 5000}\n", f"[types.ml]\nrange = [{'9' * 5000}, 1]\n"])
)
def test_a_config_file_with_an_integer_of_thousands_of_digits_is_refused(text: str) -> None:
    _valid_settings(text)


record_field = st.sampled_from(["service", "environment", "host", "port", "protocol", "type", "compose"])
record = st.dictionaries(record_field, st.one_of(scalar_token, st.just("null")), max_size=7).map(
    lambda fields: "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in fields.items()) + "}"
)
good_record = st.builds(
    '{{"service": "redis", "environment": "production", "host": "web-1", "port": {}}}'.format, int_token
)
export_text = st.one_of(
    st.builds(
        '{{"format": "portctl-ports", "schema": {}, "allocations": [{}]}}'.format,
        st.one_of(int_token, str_token),
        st.lists(st.one_of(record, good_record), max_size=3).map(", ".join),
    ),
    st.text(max_size=200),
)


def _valid_import(text: str) -> None:
    found = refused(parse_export, text, "port_config.json")
    for allocation in found or ():
        assert 1 <= allocation.port <= 65535
        assert _validate.service_name(allocation.service) == allocation.service
        assert allocation.protocol in ("tcp", "udp")


@FILES
@given(export_text)
@example('{"allocations": [{"service": "redis", "environment": "production", "host": "h", "port": "٨٠"}]}')
def test_an_import_file_is_allocations_or_refused(text: str) -> None:
    _valid_import(text)


@FILES
@given(st.sampled_from(["9" * 5000, '{"allocations": [], "schema": ' + "9" * 5000 + "}"]))
def test_an_import_file_with_an_integer_of_thousands_of_digits_is_refused(text: str) -> None:
    _valid_import(text)


# Store URLs ----------------------------------------------------------------------------------


def _valid_store_url(url: str, environ: dict[str, str] | None = None, *, port: str | None = None) -> None:
    """``port``: the port as written, when the URL does not hold it (an environment variable)."""
    from portctl.backends import open_store

    with pytest.MonkeyPatch.context() as env:
        for name, value in (environ or {}).items():
            env.setenv(name, value)
        store = refused(open_store, url)
    if store is not None:
        store.close()
        if port is None:
            port = url.rpartition(":")[2].partition("?")[0].partition("/")[0]
        assert _is_port_text(port), url


@BOUNDED
@given(port_text)
@example("٨٥٠٠")
@example("²")
def test_a_consul_store_url_port_is_a_port_or_refused(port: str) -> None:
    _valid_store_url(f"consul://127.0.0.1:{port}")


@pytest.mark.parametrize("port", ["0", "", "00", "\n", "85\n00", "8500\t", "85\r00"])
def test_a_consul_store_url_with_port_0_empty_or_broken_is_refused(port: str) -> None:
    _valid_store_url(f"consul://127.0.0.1:{port}")
    _valid_store_url("consul:///", {"CONSUL_HTTP_ADDR": f"127.0.0.1:{port}"}, port=port)
    _valid_store_url("consul:///", {"CONSUL_HTTP_ADDR": f"http://127.0.0.1:{port}/"}, port=port)


@BOUNDED
@given(port_text)
@example("²")
@example("٢٣٧٩")
def test_an_etcd_store_url_port_is_a_port_or_refused(port: str) -> None:
    _valid_store_url(f"etcd://127.0.0.1:{port}")
    if "\0" not in port:  # no environment variable can hold it
        # Spaces around each endpoint of the list are allowed, as etcdctl allows them.
        _valid_store_url("etcd:///", {"ETCDCTL_ENDPOINTS": f"http://127.0.0.1:{port}"}, port=port.strip())


@pytest.mark.parametrize(
    "url", ["consul://127.0.0.1:[", "consul://127.0.0.1:[]", "consul://[::1:8500", "consul://[]:8500"]
)
def test_a_consul_store_url_with_a_stray_bracket_is_refused(url: str) -> None:
    _valid_store_url(url)
    _valid_store_url("consul:///", {"CONSUL_HTTP_ADDR": url.removeprefix("consul://")}, port="[")


# PORTCTL_<NAME>_URL ------------------------------------------------------------------------------


def _valid_override(url: str) -> None:
    from portctl.discovery._snapshot import override_answer

    answer = refused(override_answer, "api", {"PORTCTL_API_URL": url})
    if answer is not None:
        assert 1 <= answer.port <= 65535
        written = urlsplit(url).netloc.rpartition("@")[2].rpartition("]")[2].rpartition(":")
        assert not written[2] or int(written[2]) == answer.port, url  # empty: the default port


@BOUNDED
@given(
    st.builds(
        "{}://{}:{}/".format,
        st.sampled_from(["http", "redis", "postgresql"]),
        url_host,
        port_text.filter(lambda p: not p or set(p) != {"0"}),  # port 0: the xfail test below
    )
)
@example("http://127.0.0.1:٨٠/")
def test_a_url_override_is_an_address_or_refused(url: str) -> None:
    _valid_override(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:0/",
        "http://127.0.0.1:00/",
        "http://127.0.0.1:80\t/",
        "http://127.0.0.1:8\n0/",
        "http://[::1/",
    ],
)
def test_a_url_override_with_port_0_or_a_dropped_character_is_refused(url: str) -> None:
    from portctl.discovery._snapshot import override_answer

    with pytest.raises(InvalidInput, match="^PORTCTL_API_URL"):
        override_answer("api", {"PORTCTL_API_URL": url})
