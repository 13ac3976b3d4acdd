"""Command lines the plain parser runs end as they did when typer ran every command line: a
reader that goes away, an unanswered confirmation and a misspelt command get the same answer,
never a traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import PORTCTL, TIMEOUT, Run


def _into_closed_pipe(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``portctl ARGS | head -0`` without the race: the pipe's reader is gone before it starts."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [PORTCTL, *args],
            cwd=tmp_path,
            env=env,
            stdout=write,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["--json", "status"],
        ["url", "seed"],
        ["env"],
        ["export"],
        ["metrics", "--no-scan"],
        ["--help"],
        ["status", "--help"],
    ],
)
def test_a_reader_that_went_away_ends_the_command_quietly(argv, seeded_store, tmp_path, cli_env):
    result = _into_closed_pipe(tmp_path, cli_env, *argv)
    assert result.stderr == ""
    assert result.returncode == 1


def test_the_version_into_a_closed_pipe_is_quiet_too(tmp_path, cli_env):
    result = _into_closed_pipe(tmp_path, cli_env, "--version")
    assert result.stderr == ""
    assert result.returncode == 1


@pytest.mark.parametrize(
    "argv",
    [["release", "--all"], ["release", "--all", "--env", "production"], ["--json", "release", "--all"]],
)
def test_ctrl_d_at_the_confirmation_aborts_with_one_line(argv, terminal, run, seeded_store, store_path):
    result = terminal(*argv, answer="\x04")
    assert "Traceback" not in result.stdout
    assert result.stdout.rstrip().endswith("portctl: aborted; nothing was changed"), result.stdout
    assert result.returncode == 1
    assert store_path.read_bytes() == seeded_store


@pytest.mark.parametrize(
    ("typed", "meant"),
    [(["stat"], "status"), (["Status"], "status"), (["help"], "health"), (["--json", "alocate"], "allocate")],
)
def test_a_misspelt_command_is_answered_with_the_one_meant(typed, meant, run: Run):
    result = run(*typed)
    assert result.returncode == 2
    assert f"Did you mean '{meant}'?" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
