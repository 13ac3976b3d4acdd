"""What a new user meets in the first hour: usage mistakes, an interrupted start, the hints
that say where to look next."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import error_line

INTERRUPT_AT_START = """\
import sys

class _CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "portctl.cli":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, _CtrlC())
"""


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["allocate", "--bogus"], "No such option: --bogus (see: portctl allocate --help)"),
        (["who"], "Missing argument 'PORT'"),
        (["who", "-1"], "No such option: -1"),
        (["alocate"], "No such command 'alocate'"),
        (["deploy", "--wait"], "Option '--wait' requires an argument"),
    ],
)
def test_a_usage_mistake_is_one_line_exit_2(run, argv, said):
    result = run(*argv)
    assert result.returncode == 2
    assert said in error_line(result)
    assert "Usage:" not in result.stderr


def test_a_usage_mistake_with_json_is_an_envelope(run):
    result = run("--json", "allocate", "--servce", "x")
    assert result.returncode == 2
    envelope = json.loads(result.stdout)
    assert envelope["ok"] is False
    assert envelope["error"]["code"] == "usage"
    assert "No such option: --servce" in envelope["error"]["message"]


def test_help_and_no_arguments_still_show_the_help(run):
    helped = run("--help")
    assert helped.returncode == 0
    assert "Commands:" in helped.stdout
    bare = run()
    assert bare.returncode == 2
    assert "Commands:" in bare.stdout + bare.stderr


def test_ctrl_c_during_start_up_is_one_line_exit_130(run, tmp_path: Path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(INTERRUPT_AT_START)
    result = run("status", env={"PYTHONPATH": str(shim)})
    assert result.returncode == 130
    assert result.stderr.strip() == "portctl: interrupted"


def test_migrate_takes_a_bare_path_as_a_file_store(run, seeded_store, tmp_path: Path):
    result = run("migrate", "--to", "copy.json")
    assert result.returncode == 0, result.stderr
    copied = run("export", "--store", str(tmp_path / "copy.json"))
    assert json.loads(copied.stdout)["allocations"][0]["service"] == "seed"


def test_check_refuses_a_malformed_service_name_as_bad_input(run, seeded_store):
    result = run("check", "-s", "Bad")
    assert result.returncode == 2
    assert "'Bad' is not valid" in error_line(result)


def test_release_all_needs_yes_without_a_terminal_even_when_nothing_is_allocated(run):
    result = run("release", "--all", input="")
    assert result.returncode == 2
    assert "--yes" in error_line(result)
    assert run("release", "--all", "--yes").returncode == 0


def test_status_of_an_empty_environment_names_the_one_to_look_at(run, seeded_store):
    result = run("status", "--env", "development")
    assert result.returncode == 0
    assert "(see: portctl status --env production)" in result.stdout
    again = run("status", "--env", "production")
    assert "seed" in again.stdout


def test_output_onto_a_device_or_pipe_is_refused_and_left_alone(run, seeded_store, tmp_path: Path):
    import os
    import stat

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = run("env", "-o", fifo)
    assert result.returncode == 2
    assert "a regular file" in error_line(result)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the pipe, not replaced by a file


def test_output_through_a_symlink_writes_its_target(run, seeded_store, tmp_path: Path):
    target = tmp_path / "real.env"
    target.write_text("old\n")
    link = tmp_path / ".env.ports"
    link.symlink_to(target)
    assert run("env", "-o", link).returncode == 0
    assert link.is_symlink()
    assert "SEED_PORT=" in target.read_text()
