"""A command line that names one command loads only that command's module: the table that
says which module holds which command is checked against the modules themselves."""

from __future__ import annotations

import subprocess
import sys

import typer.main

from portctl.cli import COMMANDS, GROUPS, MODULES, build


def commands_of(module: str) -> set[str]:
    group = typer.main.get_command(build((module,)))
    return set(group.commands)  # type: ignore[attr-defined]


def test_every_command_is_in_the_table_with_its_module():
    found = {name: module for module in MODULES for name in commands_of(module)}
    assert found == {**COMMANDS, **GROUPS}


def test_the_whole_app_lists_every_command_once():
    group = typer.main.get_command(build())
    assert set(group.commands) == set(COMMANDS) | set(GROUPS)  # type: ignore[attr-defined]


def test_one_command_loads_only_its_module():
    code = (
        "import sys\n"
        "from portctl.cli import run\n"
        "run(['--json', 'doctor', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('portctl.cli.') and not m.startswith('portctl.cli._')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "['portctl.cli.doctor']"
