"""The README is a newcomer's path: every command is in it, with the commands CI runs."""

from __future__ import annotations

import pathlib

import typer.main

from portctl.cli import app

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    group = typer.main.get_group(app)
    return sorted(group.commands)


def test_every_command_is_in_the_readme_with_an_example():
    missing = [name for name in _commands() if f"portctl {name}" not in README]
    assert missing == []


def test_every_command_has_help_with_an_example():
    group = typer.main.get_group(app)
    for name, command in group.commands.items():
        assert "Example: portctl " + name in (command.help or ""), name


def test_readme_test_command_is_what_ci_runs():
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ci[-1] in README


def test_changelog_has_an_unreleased_section():
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()
