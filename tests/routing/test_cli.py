"""``portctl bluegreen`` as a user runs it: deploy, cutover, rollback, status; bad input gets a
one-line error naming the problem and the fix, a non-zero exit, and leaves the store as it was."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime

import pytest

from tests.cli.conftest import (
    PORTCTL,
    TIMEOUT,
    error_line,
    terminal,  # noqa: F401 - the pseudo-terminal fixture
)


def _deploy(run, colors, *names: str) -> None:
    for color in names or ("blue", "green"):
        result = run(
            "bluegreen", "deploy", "api", "--color", color, "--port", colors[color].port,
            "--check", "http://127.0.0.1:{port}/health",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr


def final_error(result) -> str:
    """The error line after progress lines (a cutover reports its healthy window as it goes)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("portctl: error: ")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    assert "Traceback" not in result.stderr
    return errors[0]


def _data(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["data"]


def test_deploy_cutover_status_rollback(run, colors):
    first = _data(
        run("bluegreen", "deploy", "api", "--color", "blue", "--port", colors["blue"].port, "--json")
    )
    assert (first["color"], first["live"], first["instance"]["status"]) == ("blue", True, "passing")
    second = run("bluegreen", "deploy", "api", "--color", "green", "--port", colors["green"].port)
    assert "live color is blue; to switch: portctl bluegreen cutover api --to green" in second.stdout

    done = _data(
        run("bluegreen", "cutover", "api", "--min-healthy", "500ms", "--drain", "0s", "--yes", "--json")
    )
    assert (done["from"], done["to"], done["actor"]) == (
        "blue",
        "green",
        f"{done['actor'].split('@')[0]}@test-host",
    )
    assert run("url", "api").stdout.strip() == f"http://127.0.0.1:{colors['green'].port}"

    status = run("bluegreen", "status", "api")
    assert "api (production): green is live since" in status.stdout
    assert "blue   idle" in status.stdout
    assert "green  live" in status.stdout
    assert "test-host  blue  green  cutover" in status.stdout

    back = run("bluegreen", "rollback", "api", "--drain", "0s", "--yes")
    assert back.returncode == 0, back.stderr
    assert "rollback of api (production): green -> blue" in back.stdout
    history = _data(run("bluegreen", "status", "api", "--json"))["history"]
    assert [(h["from"], h["to"], h["kind"]) for h in history] == [
        ("blue", "green", "cutover"),
        ("green", "blue", "rollback"),
    ]


def test_the_color_port_is_allocated_when_not_given(run):
    result = _data(run("bluegreen", "deploy", "worker", "--color", "blue", "--check", "none", "--json"))
    port = result["instance"]["port"]
    assert f"WORKER_BLUE_PORT={port}" in run("env").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("deploy", "api", "--color", "red"), "--color: 'red' is not valid; expected blue or green"),
        (
            ("cutover", "api", "--to", "purple", "--yes"),
            "--to: 'purple' is not valid; expected blue or green",
        ),
        (
            ("cutover", "api", "--min-healthy", "10", "--yes"),
            "--min-healthy: '10' is not valid; expected a duration",
        ),
        (
            ("deploy", "api", "--color", "green", "--check", "http://127.0.0.1:1/x"),
            "write it as http://HOST:{port}/PATH",
        ),
    ],
)
def test_usage_errors_exit_2(run, store_path, colors, args, message):
    _deploy(run, colors, "blue")
    before = store_path.read_bytes()
    result = run("bluegreen", *args)
    assert result.returncode == 2
    assert message in error_line(result)
    assert store_path.read_bytes() == before


def test_cutover_refusals_exit_1_and_change_nothing(run, store_path, colors):
    _deploy(run, colors, "blue")
    before = store_path.read_bytes()

    never = run("bluegreen", "cutover", "api", "--to", "green", "--yes")
    assert never.returncode == 1
    assert error_line(never).endswith(
        "green of api is not deployed in production (no instance registered); "
        "deploy it first: portctl bluegreen deploy api --color green"
    )
    live = run("bluegreen", "cutover", "api", "--to", "blue", "--yes")
    assert live.returncode == 1
    assert "blue is already the live color of api in production" in error_line(live)
    rollback = run("bluegreen", "rollback", "api", "--yes")
    assert rollback.returncode == 1
    assert "api has no cutover to roll back in production" in error_line(rollback)
    assert store_path.read_bytes() == before

    _deploy(run, colors, "green")
    colors["green"].health = "failing"
    before = store_path.read_bytes()
    unhealthy = run("bluegreen", "cutover", "api", "--min-healthy", "0s", "--yes")
    assert unhealthy.returncode == 1
    assert "api-green-test-host failed its check" in error_line(unhealthy)
    assert "HTTP 503" in unhealthy.stderr
    colors["green"].health = "flapping"
    flapping = run("bluegreen", "cutover", "api", "--min-healthy", "2s", "--yes")
    assert flapping.returncode == 1
    assert "healthy window" in final_error(flapping)
    assert store_path.read_bytes() == before


def test_a_cutover_without_a_terminal_needs_yes(run, store_path, colors):
    _deploy(run, colors)
    before = store_path.read_bytes()
    result = run("bluegreen", "cutover", "api")
    assert result.returncode == 2
    assert "--yes" in error_line(result)
    assert store_path.read_bytes() == before


def test_status_of_a_service_without_blue_green(run):
    result = run("bluegreen", "status", "nothing")
    assert result.returncode == 1
    assert "service 'nothing' is not deployed with blue-green in production" in error_line(result)


def test_two_racing_cutover_processes_one_wins(run, tmp_path, cli_env, colors):
    _deploy(run, colors)
    command = [
        PORTCTL,
        "bluegreen",
        "cutover",
        "api",
        "--to",
        "green",
        "--min-healthy",
        "2s",
        "--drain",
        "0s",
        "--yes",
    ]
    racers = [
        subprocess.Popen(
            command, cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outcomes = [(p.wait(TIMEOUT), *p.communicate()) for p in racers]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 1]
    loser = next(err for code, _, err in outcomes if code == 1)
    assert (
        "lost: another cutover changed the live color while this one was checking" in loser.splitlines()[-1]
    )
    assert len(_data(run("bluegreen", "status", "api", "--json"))["history"]) == 1


def _iso(value) -> datetime:
    assert isinstance(value, str), value
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


def test_times_in_bluegreen_json_are_iso_8601_utc(run, colors):
    _deploy(run, colors)
    done = _data(
        run("bluegreen", "cutover", "api", "--min-healthy", "0s", "--drain", "0s", "--yes", "--json")
    )
    flipped = _iso(done["flipped_at"])
    status = _data(run("bluegreen", "status", "api", "--json"))
    assert _iso(status["changed_at"]) == flipped
    _iso(status["drain_until"])
    assert [_iso(h["at"]) for h in status["history"]] == [flipped]
    for color in status["colors"]:
        for instance in color["instances"]:
            _iso(instance["registered_at"])
            _iso(instance["updated_at"])


def test_the_cutover_prompt_names_the_target_and_a_no_changes_nothing(terminal, store_path, colors):  # noqa: F811 - the fixture
    for color in ("blue", "green"):
        terminal(
            "bluegreen", "deploy", "api", "--color", color, "--port", colors[color].port,
            "--check", "http://127.0.0.1:{port}/health",
        )  # fmt: skip
    before = store_path.read_bytes()
    result = terminal("bluegreen", "cutover", "api", "--min-healthy", "0s", answer="n\n")
    assert result.returncode == 1
    assert "cut api (production) over from blue to green?" in result.stdout
    assert "not confirmed: nothing was changed; api stays on blue" in result.stdout
    assert store_path.read_bytes() == before


def test_a_cutover_on_a_terminal_shows_its_window_as_progress(terminal, colors):  # noqa: F811 - the fixture
    for color in ("blue", "green"):
        terminal(
            "bluegreen", "deploy", "api", "--color", color, "--port", colors[color].port,
            "--check", "http://127.0.0.1:{port}/health",
        )  # fmt: skip
    result = terminal("bluegreen", "cutover", "api", "--min-healthy", "1s", "--drain", "0s", answer="y\n")
    assert result.returncode == 0, result.stdout
    assert "green: 1 instance(s) passing for 0s of 1s" in result.stdout
    assert "━" in result.stdout  # the bar
    assert "cutover of api (production): blue -> green" in result.stdout


def test_a_rollback_prompt_names_both_colors(terminal, store_path, colors):  # noqa: F811 - the fixture
    for color in ("blue", "green"):
        terminal(
            "bluegreen", "deploy", "api", "--color", color, "--port", colors[color].port,
            "--check", "http://127.0.0.1:{port}/health",
        )  # fmt: skip
    terminal("bluegreen", "cutover", "api", "--min-healthy", "0s", "--drain", "0s", "--yes")
    before = store_path.read_bytes()
    result = terminal("bluegreen", "rollback", "api", answer="n\n")
    assert result.returncode == 1
    assert "roll api (production) back from green to blue?" in result.stdout
    assert "nothing was changed; api stays on green" in result.stdout
    assert store_path.read_bytes() == before
