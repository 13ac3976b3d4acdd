"""`portctl resolve`, `portctl agent --resolve` and `portctl events` as a user runs them: a
foreign process takes an allocated port while the service is not running; the service moves,
its files follow, and the move is on record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import Run, Serve, error_line, free_port, parse_env


def allocated(run: Run, tmp_path: Path, service: str, port: int) -> Path:
    """``service`` of a compose stack (``docker-compose.yml`` in ``tmp_path``), allocated at
    ``port``: it runs in its container, so a host process on its port is someone else."""
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(f'services:\n  {service}:\n    image: busybox\n    ports:\n      - "{port}:80"\n')
    done = run("allocate", "--all", "-f", compose, "--env", "development")
    assert done.returncode == 0, done.stderr
    return compose


def port_of(run: Run, service: str) -> int:
    data = json.loads(run("--json", "status", "--env", "development").stdout)["data"]
    return next(a["port"] for a in data["allocations"] if a["service"] == service)


def test_resolve_moves_a_service_whose_port_a_foreign_process_took(
    run: Run, serve: Serve, tmp_path: Path
) -> None:
    port = free_port(range(7300, 7400))
    allocated(run, tmp_path, "api", port)
    holder = serve(port)
    done = run("resolve", "--env", "development")
    assert done.returncode == 0, done.stderr
    new = port_of(run, "api")
    assert new != port
    assert f"moved api (development) {port} -> {new}/tcp: {port} is held by process " in done.stdout
    assert f"pid {holder.pid} " in done.stdout
    assert holder.poll() is None  # what holds the port is never stopped
    events = json.loads(run("--json", "events").stdout)["data"]
    assert [(e["kind"], e["service"], e["old_port"], e["new_port"]) for e in events] == [
        ("moved", "api", port, new)
    ]
    assert f"pid {holder.pid}" in events[0]["holder"]
    assert events[0]["actor"] == "portctl resolve"
    table = run("events").stdout
    assert f"{port} -> {new}" in table
    assert "portctl resolve" in table


def test_resolve_rewrites_the_compose_projects_files(run: Run, serve: Serve, tmp_path: Path) -> None:
    port = free_port(range(7400, 7500))
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(f'services:\n  api:\n    image: busybox\n    ports:\n      - "{port}:80"\n')
    allocated(run, tmp_path, "api", port)
    serve(port)
    done = run("resolve", "-f", compose, "--env", "development")
    assert done.returncode == 0, done.stderr
    new = port_of(run, "api")
    assert parse_env((tmp_path / ".env.ports").read_text()) == {"API_PORT": new}
    override = (tmp_path / "docker-compose.override.yml").read_text()
    assert f"{new}:80" in override
    assert "!override" in override
    assert f"wrote {tmp_path / '.env.ports'}" in done.stdout
    (event,) = json.loads(run("--json", "events").stdout)["data"]
    assert sorted(os.path.basename(f) for f in event["files"]) == [
        ".env.ports",
        "docker-compose.override.yml",
    ]


def test_a_dry_run_changes_nothing(run: Run, serve: Serve, tmp_path: Path) -> None:
    port = free_port(range(7500, 7600))
    allocated(run, tmp_path, "api", port)
    serve(port)
    done = run("resolve", "--dry-run", "--env", "development")
    assert done.returncode == 1, done.stderr  # the conflict is still there
    error = json.loads(run("--json", "resolve", "--dry-run", "--env", "development").stdout)["error"]
    assert error["message"].startswith(f"1 left; first: api would move {port} -> ")
    assert error["message"].endswith(" (dry run)")
    assert f"would move api (development) {port} -> " in done.stdout
    assert port_of(run, "api") == port
    assert run("events").stdout.strip() == "no events"


def test_a_full_range_is_reported_and_nothing_moves(run: Run, serve: Serve, tmp_path: Path) -> None:
    port = free_port(range(7600, 7700))
    (tmp_path / "portctl.toml").write_text(
        f"[types.tiny]\nrange = [{port}, {port}]\n[services.worker]\ntype = 'tiny'\nport = {port}\n"
    )
    allocated(run, tmp_path, "worker", port)
    serve(port)
    done = run("resolve", "--env", "development")
    assert done.returncode == 1
    assert f"not moved: worker (development) {port}: no free port for 'worker'" in done.stdout
    assert port_of(run, "worker") == port


def test_the_agent_resolves_once_with_once(run: Run, serve: Serve, tmp_path: Path) -> None:
    port = free_port(range(7700, 7800))
    allocated(run, tmp_path, "api", port)
    serve(port)
    done = run("agent", "--once", "--resolve", "--env", "development")
    assert done.returncode == 0, done.stderr
    assert f"moved api (development) {port} -> " in done.stdout
    (event,) = json.loads(run("--json", "events").stdout)["data"]
    assert event["actor"] == "portctl agent --resolve"


def test_a_process_on_a_host_services_port_is_not_moved(run: Run, serve: Serve, tmp_path: Path) -> None:
    """No compose stack: the process may be the service itself, restarted: leave it, say so."""
    port = free_port(range(7350, 7400))
    assert run("allocate", "--service", "api", "--port", port, "--env", "development").returncode == 0
    holder = serve(port)
    done = run("resolve", "--env", "development")
    assert done.returncode == 1
    assert f"not moved: api (development) {port}: cannot tell whether process " in done.stdout
    assert f" pid {holder.pid} " in done.stdout
    assert port_of(run, "api") == port


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("resolve", "--redeploy"), "--redeploy"),
        (("agent", "--once", "--redeploy"), "--resolve"),
        (("events", "--since", "yesterday"), "--since"),
        (("events", "--service", "Bad Name"), "'Bad Name' is not valid"),
        (("resolve", "-f", "missing.yml"), "missing.yml"),
    ],
)
def test_bad_input_is_one_line(run: Run, args: tuple[str, ...], expected: str) -> None:
    done = run(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in error_line(done)


def test_a_move_whose_files_cannot_be_written_is_still_recorded_and_exits_1(
    run: Run, serve: Serve, tmp_path: Path
) -> None:
    port = free_port(range(7450, 7500))
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(f'services:\n  api:\n    image: busybox\n    ports:\n      - "{port}:80"\n')
    theirs = tmp_path / "docker-compose.override.yml"
    theirs.write_text("services: {}\n")  # a person's own override: never overwritten
    allocated(run, tmp_path, "api", port)
    serve(port)
    done = run("resolve", "-f", compose, "--env", "development")
    assert done.returncode == 1, done.stdout + done.stderr
    new = port_of(run, "api")
    assert f"moved api (development) {port} -> {new}/tcp" in done.stdout
    assert "files not rewritten:" in done.stdout
    assert "has no 'written by portctl' line" in done.stdout
    assert theirs.read_text() == "services: {}\n"
    (event,) = json.loads(run("--json", "events").stdout)["data"]
    assert "files not rewritten" in event["detail"]


def test_the_agent_resolves_every_environment_unless_told_one(run: Run, serve: Serve, tmp_path: Path) -> None:
    port = free_port(range(7800, 7900))
    allocated(run, tmp_path, "api", port)  # in development; the agent is given no --env
    serve(port)
    done = run("agent", "--once", "--resolve")
    assert done.returncode == 0, done.stderr
    assert f"moved api (development) {port} -> " in done.stdout
