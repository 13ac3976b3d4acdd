"""The team plan's commands, run through the real ``portctl`` script.

Each command is the plan's line with ``portctl`` in place of ``python3 port_manager.py``.
No port is assumed free: expected ports are derived from what a bind shows right now, and a
port found busy is skipped (or expected to be refused) rather than hard-coded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from importlib.metadata import version
from pathlib import Path

import pytest

from .conftest import HOST, Run, error_line, free_port, parse_env, port_is_free

# The plan's "Option 1: Quick Fix" lines.
QUICK_FIX = [
    ("postgres", 5433),
    ("redis", 6380),
    ("weaviate", 8081),
    ("api", 8010),
    ("admin_ui", 3002),
    ("grafana", 3003),
    ("prometheus", 9091),
]
STACK = ["postgres", "redis", "weaviate", "api", "admin_ui", "grafana", "prometheus"]
LOOP = f"for service in {' '.join(STACK)}; do portctl allocate --service $service; done"

# Production candidates from the plan (standard port, then the quick fix's alternative), and the
# range of each service's type, where portctl looks when both are busy.
PRODUCTION_PREFERRED = {
    "postgres": [5432, 5433],
    "redis": [6379, 6380],
    "weaviate": [8080, 8081],
    "api": [8000, 8010],
    "admin_ui": [3000, 3002],
    "grafana": [3001, 3003],
    "prometheus": [9090, 9091],
}
TYPE_RANGE = {
    "postgres": range(5000, 6000),
    "redis": range(6000, 7000),
    "weaviate": range(8000, 9000),
    "api": range(8000, 9000),
    "admin_ui": range(1024, 5000),
    "grafana": range(9000, 10000),
    "prometheus": range(9000, 10000),
}
# The plan's .env.development and .env.staging.
PLAN_ENV_PORTS = {
    "development": {"postgres": 5433, "redis": 6380, "weaviate": 8081, "api": 8010},
    "staging": {"postgres": 5434, "redis": 6381, "weaviate": 8082, "api": 8020},
}
# What portctl falls back to in those environments: the standard port, then the alternative.
FALLBACKS = {"postgres": [5432, 5433], "redis": [6379, 6380], "weaviate": [8080, 8081], "api": [8000, 8010]}
EXPORT_FIELDS = {"service", "environment", "host", "port", "protocol", "type", "allocated_at"}
COMMANDS = ["status", "allocate", "release", "env", "export", "import"]


def var(service: str) -> str:
    return service.upper() + "_PORT"


def first_free(candidates: list[int], taken: Collection[int] = ()) -> int | None:
    for port in candidates:
        if port not in taken and port_is_free(port):
            return port
    return None


def envelope(stdout: str) -> dict:
    doc = json.loads(stdout)
    assert set(doc) == {"ok", "data", "error"}
    return doc


def allocated_port(stdout: str, service: str) -> int:
    """The port in ``postgres (production): 5433/tcp  [requested]``."""
    match = re.search(rf"^{re.escape(service)} \((\w+)\): (\d+)/tcp  \[[^\]]+\]", stdout, re.M)
    assert match, stdout
    return int(match.group(2))


def status_rows(stdout: str) -> dict[tuple[str, str], int]:
    """{(service, env): port} from the allocations table of ``portctl status``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("SERVICE"))
    rows = {}
    for line in lines[start + 1 :]:
        service, env, port, *_ = line.split()
        rows[service, env] = int(port)
    return rows


# Option 1: Quick Fix ---------------------------------------------------------------------


@pytest.mark.parametrize(("service", "port"), QUICK_FIX, ids=[s for s, _ in QUICK_FIX])
def test_quick_fix_line_allocates_the_requested_port(run: Run, service: str, port: int) -> None:
    if not port_is_free(port):
        pytest.skip(f"port {port} is busy on this machine")
    result = run("allocate", "--service", service, "--port", port)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(f"{service} (production): {port}/tcp")
    assert "[requested]" in result.stdout

    env = run("env")
    assert env.returncode == 0, env.stderr
    assert f"{var(service)}={port}" in env.stdout.splitlines()


def test_quick_fix_block_then_env_file_is_sourceable(run: Run, sh: Run, tmp_path: Path) -> None:
    free = {s: p for s, p in QUICK_FIX if port_is_free(p)}
    if not free:
        pytest.skip("every quick-fix port is busy on this machine")
    for service, port in QUICK_FIX:
        result = run("allocate", "--service", service, "--port", port)
        if service in free:
            assert result.returncode == 0, result.stderr
        else:  # busy here: the plan's line must be refused, naming why
            assert result.returncode == 1
            assert "in use" in error_line(result)

    shown = run("env")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == f"# portctl: production ports on {HOST}"
    assert parse_env(shown.stdout) == {var(s): p for s, p in free.items()}
    if "postgres" in free:
        assert "POSTGRES_PORT=5433" in shown.stdout.splitlines()
    if "admin_ui" in free:
        assert "ADMIN_UI_PORT=3002" in shown.stdout.splitlines()

    # 2. Generate new environment file, then use it as the plan does (source .env.ports).
    written = sh("portctl env > .env.ports")
    assert written.returncode == 0, written.stderr
    assert (tmp_path / ".env.ports").read_text() == shown.stdout
    names = " ".join(var(s) for s in free)
    sourced = sh(f'set -a; source .env.ports; for v in {names}; do echo "$v=${{!v}}"; done')
    assert sourced.returncode == 0, sourced.stderr
    assert sourced.stderr == ""
    assert parse_env(sourced.stdout) == {var(s): p for s, p in free.items()}
    if "postgres" in free:
        one = sh("set -a; source .env.ports; echo $POSTGRES_PORT")
        assert one.stdout == "5433\n"
    # set -a exports them: a child process (docker-compose) sees the same values.
    child = sh("set -a; source .env.ports; env")
    seen = {k: v for k, _, v in (line.partition("=") for line in child.stdout.splitlines())}
    for service, port in free.items():
        assert seen[var(service)] == str(port)


# Quick Start: the allocation loop --------------------------------------------------------


def test_allocation_loop_gives_distinct_ports_and_is_idempotent(run: Run, sh: Run, store_path: Path) -> None:
    expected = {s: first_free(PRODUCTION_PREFERRED[s]) for s in STACK}

    first = sh(LOOP)
    assert first.returncode == 0, first.stderr
    assert "error" not in first.stderr
    ports = {s: allocated_port(first.stdout, s) for s in STACK}
    assert len(set(ports.values())) == len(STACK), ports
    for service, port in ports.items():
        if expected[service] is not None:
            assert port == expected[service], (service, port)
        else:
            assert port in TYPE_RANGE[service], (service, port)

    env = run("env")
    assert parse_env(env.stdout) == {var(s): p for s, p in ports.items()}

    before = store_path.read_bytes()
    second = sh(LOOP)
    assert second.returncode == 0, second.stderr
    assert {s: allocated_port(second.stdout, s) for s in STACK} == ports
    assert second.stdout.count("[already allocated]") == len(STACK)
    assert store_path.read_bytes() == before  # nothing rewritten

    # The plan's Quick Start step 1: status lists them and says which store, and why.
    status = run("status")
    assert status.returncode == 0, status.stderr
    assert f"{store_path}  (chosen by: PORTCTL_STORE)" in status.stdout
    assert "none (built-in policy)" in status.stdout  # cwd is tmp_path: no config file found
    assert re.search(rf"^host\s+{HOST}$", status.stdout, re.M)
    assert status_rows(status.stdout) == {(s, "production"): p for s, p in ports.items()}


def test_store_flag_wins_over_the_environment_variable(run: Run, store_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    port = free_port()
    result = run("allocate", "--service", "postgres", "--port", port, "--store", other)
    assert result.returncode == 0, result.stderr
    assert other.exists()
    assert not store_path.exists()  # PORTCTL_STORE's file was not touched, not even created

    flagged = run("status", "--store", other)
    assert flagged.returncode == 0, flagged.stderr
    assert f"file://{other}  (chosen by: --store flag)" in flagged.stdout
    assert status_rows(flagged.stdout) == {("postgres", "production"): port}

    as_json = envelope(run("status", "--store", other, "--json").stdout)
    assert as_json["data"]["store"]["source"] == "--store flag"
    assert as_json["data"]["store"]["url"] == f"file://{other}"

    plain = run("status")
    assert "(chosen by: PORTCTL_STORE)" in plain.stdout
    assert "no allocations yet" in plain.stdout
    assert not store_path.exists()  # reading an absent store does not create it


# Environments ----------------------------------------------------------------------------


def test_environments_get_their_own_ports_and_stay_apart(run: Run) -> None:
    taken: set[int] = set()
    ports: dict[str, int] = {}
    # development first, then staging, then production: each env's first choice is then open.
    for env, preferred in [
        ("development", [5433, 5432]),
        ("staging", [5434, 5432, 5433]),
        ("production", [5432, 5433]),
    ]:
        expected = first_free(preferred, taken)
        result = run("allocate", "--service", "postgres", "--env", env)
        assert result.returncode == 0, result.stderr
        ports[env] = allocated_port(result.stdout, "postgres")
        assert f"postgres ({env}):" in result.stdout
        if expected is not None:
            assert ports[env] == expected, (env, ports[env])
        taken.add(ports[env])
    if port_is_free(5433):
        assert ports["development"] == 5433
    if port_is_free(5434):
        assert ports["staging"] == 5434
    assert len(set(ports.values())) == 3

    # redis only in staging: the other environments do not list it.
    redis = run("allocate", "--service", "redis", "--env", "staging")
    assert redis.returncode == 0, redis.stderr
    outputs = {}
    for env, port in ports.items():
        shown = run("env", "--env", env)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[0] == f"# portctl: {env} ports on {HOST}"
        outputs[env] = shown.stdout
        values = parse_env(shown.stdout)
        assert values["POSTGRES_PORT"] == port
        assert ("REDIS_PORT" in values) == (env == "staging")
    assert len(set(outputs.values())) == 3

    # PORTCTL_ENV picks the environment too.
    via_var = run("env", env={"PORTCTL_ENV": "development"})
    assert via_var.stdout == outputs["development"]

    # Releasing in one environment leaves the others alone.
    gone = run("release", "--service", "postgres", "--env", "staging")
    assert gone.returncode == 0, gone.stderr
    assert "POSTGRES_PORT" not in parse_env(run("env", "--env", "staging").stdout)
    assert run("env", "--env", "development").stdout == outputs["development"]
    assert run("env", "--env", "production").stdout == outputs["production"]


@pytest.mark.parametrize("environment", ["development", "staging"])
def test_environment_ports_follow_the_plans_env_files(run: Run, environment: str) -> None:
    plan = PLAN_ENV_PORTS[environment]
    expected = {}
    taken: set[int] = set()
    for service, port in plan.items():
        want = first_free([port, *FALLBACKS[service]], taken)
        result = run("allocate", "--service", service, "--env", environment)
        assert result.returncode == 0, result.stderr
        got = allocated_port(result.stdout, service)
        if want is not None:
            assert got == want, (service, got)
        taken.add(got)
        expected[var(service)] = got
    values = parse_env(run("env", "--env", environment).stdout)
    assert values == expected


# Release ---------------------------------------------------------------------------------


def test_release_removes_the_service_and_a_second_release_names_it(run: Run, store_path: Path) -> None:
    redis_port = free_port()
    assert run("allocate", "--service", "redis", "--port", redis_port).returncode == 0
    assert run("allocate", "--service", "postgres", "--port", free_port(exclude={redis_port})).returncode == 0
    assert "REDIS_PORT" in parse_env(run("env").stdout)

    released = run("release", "--service", "redis")
    assert released.returncode == 0, released.stderr
    assert released.stdout.strip() == f"released {redis_port}/tcp from redis (production)"
    values = parse_env(run("env").stdout)
    assert "REDIS_PORT" not in values
    assert "POSTGRES_PORT" in values

    before = store_path.read_bytes()
    again = run("release", "--service", "redis")
    assert again.returncode == 1
    line = error_line(again)
    assert "'redis'" in line
    assert "production" in line
    assert "known: postgres" in line
    assert store_path.read_bytes() == before

    # The released port is free for another service again.
    reuse = run("allocate", "--service", "cache2", "--port", redis_port)
    assert reuse.returncode == 0, reuse.stderr


# Export and import -----------------------------------------------------------------------


def _allocate_some(run: Run) -> list[tuple[str, str, int]]:
    """postgres and redis in production, api in staging, each on a free high port."""
    made = []
    taken: set[int] = set()
    for service, env in [("postgres", "production"), ("redis", "production"), ("api", "staging")]:
        port = free_port(exclude=taken)
        taken.add(port)
        result = run("allocate", "--service", service, "--port", port, "--env", env)
        assert result.returncode == 0, result.stderr
        made.append((service, env, port))
    return made


def test_export_writes_the_documented_schema(run: Run, tmp_path: Path) -> None:
    made = _allocate_some(run)
    result = run("export", "-o", "port_config.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "wrote port_config.json"

    doc = json.loads((tmp_path / "port_config.json").read_text())
    assert set(doc) == {"format", "schema", "generated_at", "allocations"}
    assert doc["format"] == "portctl-ports"
    assert doc["schema"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["generated_at"])
    types = {"postgres": "database", "redis": "cache", "api": "api"}
    for record in doc["allocations"]:
        assert set(record) == EXPORT_FIELDS
        assert record["host"] == HOST
        assert record["protocol"] == "tcp"
        assert record["type"] == types[record["service"]]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["allocated_at"])
    got = [(r["service"], r["environment"], r["port"]) for r in doc["allocations"]]
    # sorted by host, environment, service, so the file diffs cleanly in review
    assert got == sorted(made, key=lambda m: (m[1], m[0]))


def test_import_into_a_fresh_store_recreates_the_allocations(run: Run, tmp_path: Path) -> None:
    _allocate_some(run)
    assert run("export", "-o", "port_config.json").returncode == 0
    source = envelope(run("export", "--json").stdout)["data"]
    source_env = {e: run("env", "--env", e).stdout for e in ("production", "staging")}

    fresh = {"PORTCTL_STORE": str(tmp_path / "fresh.json")}
    imported = run("import", "port_config.json", env=fresh)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == f"imported 3 allocation(s) into file://{tmp_path / 'fresh.json'}"

    target = envelope(run("export", "--json", env=fresh).stdout)["data"]
    assert target["allocations"] == source["allocations"]  # allocated_at is kept too
    for env, text in source_env.items():
        assert run("env", "--env", env, env=fresh).stdout == text

    before = (tmp_path / "fresh.json").read_bytes()
    again = run("import", "port_config.json", env=fresh)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().startswith("nothing to import: all 3 allocation(s) are already in file://")
    assert (tmp_path / "fresh.json").read_bytes() == before


def test_import_from_stdin(run: Run, tmp_path: Path) -> None:
    _allocate_some(run)
    document = run("export").stdout
    fresh = {"PORTCTL_STORE": str(tmp_path / "fresh.json")}
    result = run("import", "-", env=fresh, input=document)
    assert result.returncode == 0, result.stderr
    assert run("env", env=fresh).stdout == run("env").stdout


def test_import_refuses_a_port_held_by_another_service_and_changes_nothing(run: Run, tmp_path: Path) -> None:
    made = _allocate_some(run)
    assert run("export", "-o", "port_config.json").returncode == 0
    postgres_port = next(p for s, _, p in made if s == "postgres")

    target_path = tmp_path / "target.json"
    target = {"PORTCTL_STORE": str(target_path)}
    holder = run("allocate", "--service", "billing", "--port", postgres_port, env=target)
    assert holder.returncode == 0, holder.stderr
    before = target_path.read_bytes()
    env_before = run("env", env=target).stdout

    result = run("import", "port_config.json", env=target)
    assert result.returncode == 1
    line = error_line(result)
    assert f"port {postgres_port}/tcp" in line
    assert "billing (production)" in line
    assert "nothing was imported" in line
    assert target_path.read_bytes() == before
    assert run("env", env=target).stdout == env_before


# The --json envelope ---------------------------------------------------------------------


def test_json_envelope_on_success(run: Run) -> None:
    port = free_port()
    allocated = run("allocate", "--service", "postgres", "--port", port, "--json")
    assert allocated.returncode == 0, allocated.stderr
    doc = envelope(allocated.stdout)
    assert doc["ok"] is True
    assert doc["error"] is None
    assert doc["data"]["service"] == "postgres"
    assert doc["data"]["port"] == port
    assert doc["data"]["changed"] is True
    assert doc["data"]["reason"] == "requested"

    again = envelope(run("allocate", "--service", "postgres", "--json").stdout)
    assert again["data"]["changed"] is False
    assert again["data"]["port"] == port

    env = envelope(run("env", "--json").stdout)
    assert env == {"ok": True, "data": {"postgres": port}, "error": None}

    status = envelope(run("status", "--json").stdout)
    assert status["ok"] is True
    assert status["data"]["host"] == HOST
    assert status["data"]["store"]["source"] == "PORTCTL_STORE"
    assert [a["port"] for a in status["data"]["allocations"]] == [port]

    released = envelope(run("release", "--service", "postgres", "--json").stdout)
    assert released["ok"] is True
    assert released["data"]["port"] == port


def test_json_envelope_on_errors(run: Run, store_path: Path) -> None:
    port = free_port()
    assert run("allocate", "--service", "postgres", "--port", port).returncode == 0

    cases = [
        (("allocate", "--service", "Postgres"), 2, "invalid_input", "service"),
        (("release", "--service", "redis"), 1, "not_found", "redis"),
        (("allocate", "--service", "redis", "--port", port), 1, "port_conflict", "postgres"),
    ]
    for args, code, error_code, mentioned in cases:
        result = run(*args, "--json")
        assert result.returncode == code, (args, result.stdout)
        assert result.stderr == ""  # the whole answer is the envelope on stdout
        doc = envelope(result.stdout)
        assert doc["ok"] is False
        assert doc["data"] is None
        assert set(doc["error"]) == {"code", "message"}
        assert doc["error"]["code"] == error_code
        assert mentioned in doc["error"]["message"]

    store_path.write_bytes(b"{not json")
    corrupt = run("env", "--json")
    assert corrupt.returncode == 3
    doc = envelope(corrupt.stdout)
    assert doc["ok"] is False
    assert doc["data"] is None
    assert doc["error"]["code"] == "store_corrupt"
    assert "left untouched" in doc["error"]["message"]


# Version and help ------------------------------------------------------------------------


def test_version(run: Run) -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"portctl {version('portctl')}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_shows_an_example(run: Run, command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"Example: portctl {command}\b", result.stdout), result.stdout
