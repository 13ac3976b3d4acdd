"""What a person expects of a command line: options where they type them, names as arguments,
messages that say what is wrong and what to do, help that fits the terminal, completion, tables
drawn for terminals and plain for scripts, ISO 8601 times in JSON."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from datetime import datetime
from pathlib import Path

from .conftest import HOST, PORTCTL, TIMEOUT, Run, error_line, free_port

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLOR = re.compile(r"\x1b\[[0-9;]*(?:3[0-7]|9[0-7]|38;)[0-9;]*m")


def _data(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["data"]


# who ------------------------------------------------------------------------------------------


def test_who_exits_1_when_only_an_allocation_holds_the_port(run: Run) -> None:
    port = free_port()
    assert run("allocate", "postgres", "--port", port).returncode == 0
    result = run("who", port)
    assert result.returncode == 1, result.stdout
    assert f"{port}/tcp: allocated to postgres (production)" in result.stdout


def test_who_exits_0_for_a_free_port(run: Run) -> None:
    port = free_port()
    result = run("who", port)
    assert (result.returncode, result.stdout.strip()) == (0, f"{port}/tcp is free")


# status ---------------------------------------------------------------------------------------


def test_status_of_an_empty_environment_says_what_the_store_holds_elsewhere(run: Run) -> None:
    assert run("allocate", "postgres", "--port", free_port()).returncode == 0
    out = run("status", "--env", "development").stdout
    assert "no allocations yet" not in out
    assert f"no allocations in development on {HOST}; the store holds 1 in production on {HOST}" in out


def test_status_of_an_empty_store_says_how_to_start(run: Run) -> None:
    out = run("status", "--env", "staging").stdout
    assert "no allocations yet (try: portctl allocate --service postgres --env staging)" in out


# allocate --all and release --all --------------------------------------------------------------


def test_allocate_all_names_the_store_it_wrote_to(run: Run, store_path: Path) -> None:
    result = run("allocate", "--all", "--env", "staging")
    last = result.stdout.strip().splitlines()[-1]
    assert f"allocated in staging on {HOST}, in file://{store_path} (chosen by: PORTCTL_STORE)" in last


def test_release_all_without_a_terminal_needs_yes_and_changes_nothing(run: Run, store_path: Path) -> None:
    assert run("allocate", "postgres", "--port", free_port()).returncode == 0
    before = store_path.read_bytes()
    result = run("release", "--all")
    assert result.returncode == 2
    assert "add --yes to go ahead" in error_line(result)
    assert store_path.read_bytes() == before


def test_release_all_yes_releases_the_environment_only(run: Run) -> None:
    first, second = free_port(), free_port(range(7500, 8000))
    assert run("allocate", "postgres", "--port", first).returncode == 0
    assert run("allocate", "redis", "--port", second, "--env", "staging").returncode == 0
    result = run("release", "--all", "--yes")
    assert result.returncode == 0, result.stderr
    assert f"released {first}/tcp from postgres" in result.stdout
    assert "released 1 allocation(s) of production" in result.stdout
    assert run("env", "--env", "production").stdout.strip().splitlines()[1:] == []
    assert f"REDIS_PORT={second}" in run("env", "--env", "staging").stdout


def test_release_all_asks_on_a_terminal_and_a_no_changes_nothing(terminal: Run, store_path: Path) -> None:
    terminal("allocate", "postgres", "--port", free_port())
    before = store_path.read_bytes()
    result = terminal("release", "--all", answer="n\n")
    assert result.returncode == 1
    assert "release all 1 allocation(s) of production on" in result.stdout
    assert "not confirmed: nothing was changed" in result.stdout
    assert store_path.read_bytes() == before


# global options and names ---------------------------------------------------------------------


def test_json_and_store_before_the_command(run: Run, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    port = free_port()
    assert run("--store", other, "allocate", "postgres", "--port", port).returncode == 0
    data = _data(run("--json", "--store", other, "env"))
    assert data == {"postgres": port}
    assert _data(run("--json", "env")) == {}  # the default store ($PORTCTL_STORE) is untouched
    failed = run("--json", "who", "70000")
    assert failed.returncode == 2
    assert json.loads(failed.stdout)["error"]["code"] == "invalid_input"


def test_allocate_and_release_take_the_name_as_an_argument(run: Run) -> None:
    port = free_port()
    assert _data(run("allocate", "postgres", "--port", port, "--json"))["port"] == port  # type: ignore[index]
    assert _data(run("allocate", "--service", "postgres", "--json"))["port"] == port  # type: ignore[index]
    clash = run("allocate", "postgres", "--service", "redis")
    assert clash.returncode == 2
    assert "--service" in error_line(clash)
    assert run("release", "postgres").stdout.startswith(f"released {port}/tcp from postgres")


# help and completion --------------------------------------------------------------------------


def test_help_is_wrapped_by_the_terminal_width(run: Run) -> None:
    narrow = run("allocate", "--help", env={"COLUMNS": "60"}).stdout
    wide = run("allocate", "--help", env={"COLUMNS": "200"}).stdout
    assert max(len(line) for line in narrow.splitlines()) <= 60
    assert len(wide.splitlines()) < len(narrow.splitlines())
    # A sentence the source breaks over lines is one line on a wide terminal.
    assert "Without --port, portctl tries the environment's" in wide


def test_no_type_names_in_usage(run: Run) -> None:
    for command in (["who"], ["import"], ["register"], ["url"], ["render"], ["bluegreen", "status"]):
        out = run(*command, "--help").stdout
        assert "<str>" not in out, command
        assert "TEXT" not in out, command


def test_shell_completion_is_available(run: Run) -> None:
    script = run("--show-completion", "bash")
    assert script.returncode == 0
    assert "_portctl_completion" in script.stdout
    words = run(
        env={"_PORTCTL_COMPLETE": "complete_bash", "COMP_WORDS": "portctl bluegreen cu", "COMP_CWORD": "2"}
    )
    assert words.stdout.split() == ["cutover"]


# messages -------------------------------------------------------------------------------------


def test_check_with_nothing_to_check_says_what_to_do(run: Run) -> None:
    result = run("check")
    assert result.returncode == 2
    line = error_line(result)
    assert "'nothing'" not in line
    assert "nothing to check: no allocated port" in line
    assert "portctl allocate --all" in line
    assert "portctl check -f docker-compose.yml" in line


def test_import_of_the_wrong_json_says_what_the_file_should_be(run: Run) -> None:
    result = run("import", "-", input='{"services": {"postgres": 5433}}')
    assert result.returncode == 2
    line = error_line(result)
    assert "'dict'" not in line
    assert 'stdin holds a JSON object without an "allocations" list, not a port_config.json' in line
    listed = run("import", "-", input="[1, 2]")
    assert "stdin holds a JSON array, not a port_config.json" in error_line(listed)


def test_import_of_a_missing_file_says_so(run: Run) -> None:
    result = run("import", "missing.json")
    assert result.returncode == 2
    assert error_line(result) == (
        "portctl: error: cannot read missing.json: it does not exist; "
        "give the path of a port_config.json (or - for stdin)"
    )


def test_import_again_says_nothing_was_new(run: Run, store_path: Path, tmp_path: Path) -> None:
    assert run("allocate", "postgres", "--port", free_port()).returncode == 0
    assert run("export", "-o", "port_config.json").returncode == 0
    again = run("import", "port_config.json")
    assert again.stdout.strip() == (
        f"nothing to import: all 1 allocation(s) are already in file://{store_path} as the file has them"
    )
    assert "already so" not in again.stdout


# tables ---------------------------------------------------------------------------------------


def test_tables_for_scripts_are_plain_and_not_truncated(run: Run) -> None:
    long_name = "a" + "b" * 60
    assert run("allocate", long_name, "--port", free_port(), "--type", "custom").returncode == 0
    out = run("status", env={"COLUMNS": "40"}).stdout
    assert not ANSI.search(out)
    row = next(line for line in out.splitlines() if line.startswith(long_name))
    assert row.split()[:2] == [long_name, "production"]


def test_tables_on_a_terminal_are_drawn_and_colored_unless_no_color(terminal: Run) -> None:
    port = free_port()
    terminal("register", "ghost", "--port", port, "--check", "tcp")  # nothing listens: critical
    colored = terminal("services", env={"NO_COLOR": None, "TERM": "xterm-256color"})
    assert COLOR.search(colored.stdout), colored.stdout
    plain = terminal("services", env={"NO_COLOR": "1", "TERM": "xterm-256color"})
    assert not COLOR.search(plain.stdout), plain.stdout
    assert "critical" in ANSI.sub("", plain.stdout)


# JSON times -----------------------------------------------------------------------------------


def _iso(value: object) -> datetime:
    assert isinstance(value, str), value
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


def test_times_in_json_are_iso_8601_utc(run: Run) -> None:
    port = free_port()
    data = _data(run("register", "ghost", "--port", port, "--check", "none", "--json"))
    assert isinstance(data, dict)
    _iso(data["registered_at"])
    _iso(data["updated_at"])
    (listed,) = _data(run("services", "--json"))  # type: ignore[misc]
    assert _iso(listed["updated_at"]) == _iso(data["updated_at"])


# render --watch -------------------------------------------------------------------------------


def test_render_watch_stops_on_sigint_and_says_so(tmp_path: Path, cli_env: dict[str, str]) -> None:
    target = tmp_path / "upstreams.conf"
    argv = [PORTCTL, "render", "nginx", "-o", str(target), "--watch"]
    with subprocess.Popen(
        argv, cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None
        assert "Ctrl-C stops" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert f"portctl render: stopped; {target} stays as last rendered" in err
    assert "Traceback" not in err
    assert target.exists()


def test_render_watch_stops_on_sigterm(tmp_path: Path, cli_env: dict[str, str]) -> None:
    target = tmp_path / "targets.json"
    argv = [PORTCTL, "render", "prometheus", "-o", str(target), "--watch"]
    with subprocess.Popen(
        argv, cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None
        proc.stderr.readline()
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "portctl render: stopped" in err


def test_env_of_an_empty_environment_says_what_the_store_holds_elsewhere(run: Run) -> None:
    port = free_port()
    assert run("allocate", "postgres", "--port", port).returncode == 0
    result = run("env", "--env", "staging")
    assert result.returncode == 0
    assert f"no allocations in staging on {HOST}; the store holds 1 in production on {HOST}" in result.stderr
    assert result.stdout.startswith("# portctl: staging ports on")


def test_option_clashes_say_what_to_give(run: Run) -> None:
    both = run("allocate", "--all", "--service", "redis")
    assert "--all allocates every service: give --all alone, or name one service" in error_line(both)
    stray = run("allocate", "postgres", "-f", "compose.yml")
    assert "-f needs --all" in error_line(stray)
    lease = run("register", "api", "--port", free_port(), "--keep-alive")
    assert "give --lease 30s too" in error_line(lease)
