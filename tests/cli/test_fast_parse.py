"""The plain parser (portctl.cli._fast) against typer, on every command: for each command line
the plain parser reads, it must give the command exactly the arguments typer would; and the
ordinary forms must be ones it reads, or scripts pay typer's start-up for nothing."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import pytest
import typer.main

from portctl.cli import MODULES, commands_of
from portctl.cli._fast import _base, parse
from portctl.cli._params import Command, declared, flags, to_typer


def _commands() -> list[tuple[str, Command]]:
    found = []
    for module in MODULES:
        commands = commands_of(module)
        found += [(module, c) for c in commands.commands.values()]
    return found


COMMANDS = _commands()


def _sample(d: Any) -> str:
    element, _ = _base(d.annotation)
    if element in (int, float):
        return str(d.param.settings.get("min") or 3)
    return "sample-value"


def _arguments(command: Command) -> list[str]:
    return [_sample(d) for d in declared(command.function) if d.param.kind == "argument"]


def _required(command: Command) -> list[str]:
    """The options that have no default, and the arguments, with sample values."""
    words = []
    for d in declared(command.function):
        if d.param.kind == "option" and d.default is inspect.Parameter.empty:
            words += [flags(d)[0][0], _sample(d)]
    return words + _arguments(command)


def _cases(command: Command) -> list[list[str]]:
    """Command lines an ordinary user or script writes: each option in each of its spellings,
    ``--opt=VALUE``, a repeated option, ``--`` before the arguments."""
    arguments = _required(command)
    options_needed = arguments[: len(arguments) - len(_arguments(command))]
    cases = [arguments, [*options_needed, "--", *_arguments(command)]]
    if all(
        d.default is not inspect.Parameter.empty
        for d in declared(command.function)
        if d.param.kind == "argument"
    ):
        cases.append(options_needed)  # the arguments left to their defaults
    for d in declared(command.function):
        if d.param.kind != "option":
            continue
        element, repeatable = _base(d.annotation)
        on, off = flags(d)
        for flag in on + off:
            if element is bool:
                cases.append([*arguments, flag])
                continue
            value = _sample(d)
            cases.append([flag, value, *arguments])
            cases.append([*arguments, flag, value])
            if flag.startswith("--"):
                cases.append([*arguments, f"{flag}={value}"])
            if repeatable:
                cases.append([*arguments, flag, value, flag, "second"])
    return cases


def _typer_kwargs(module: str, command: Command, argv: list[str]) -> dict[str, Any]:
    """What typer passes the command for ``argv``."""
    seen: dict[str, Any] = {}

    def record(c: Command) -> Any:
        def run(**kwargs: Any) -> None:
            seen.update(kwargs)

        return run

    commands = commands_of(module)
    click_command = typer.main.get_command(to_typer(commands, call=record))
    prefix = [command.name] if isinstance(click_command, typer.core.TyperGroup) else []
    click_command.main(args=[*prefix, *argv], prog_name="portctl", standalone_mode=False)
    return seen


@pytest.mark.parametrize(("module", "command"), COMMANDS, ids=[c.name for _, c in COMMANDS])
def test_the_plain_parser_gives_what_typer_gives(module, command, monkeypatch):
    monkeypatch.delenv("PORTCTL_ENV", raising=False)
    for argv in _cases(command):
        plain = parse(command.function, argv)
        assert plain is not None, f"portctl {command.name} {' '.join(argv)}: left to typer"
        assert plain == _typer_kwargs(module, command, argv), argv


@pytest.mark.parametrize(("module", "command"), COMMANDS, ids=[c.name for _, c in COMMANDS])
def test_an_environment_variable_fills_its_option_as_in_typer(module, command, monkeypatch):
    with_envvar = [d for d in declared(command.function) if d.param.settings.get("envvar")]
    for d in with_envvar:
        monkeypatch.setenv(d.param.settings["envvar"], "staging")
        argv = _required(command)
        assert parse(command.function, argv) == _typer_kwargs(module, command, argv)
        monkeypatch.setenv(d.param.settings["envvar"], "")  # set but empty: as if unset
        assert parse(command.function, argv) == _typer_kwargs(module, command, argv)


@pytest.mark.parametrize(("module", "command"), COMMANDS, ids=[c.name for _, c in COMMANDS])
def test_flags_are_the_ones_typer_makes(module, command):
    click_command = typer.main.get_command(to_typer(commands_of(module)))
    if isinstance(click_command, typer.core.TyperGroup):
        click_command = click_command.commands[command.name]
    options = {p.name: (list(p.opts), list(p.secondary_opts)) for p in click_command.params}
    for d in declared(command.function):
        if d.param.kind == "option":
            assert flags(d) == options[d.name]


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--no-such-option"],
        ["--port"],
        ["-sx"],
        ["one", "two", "three", "four", "five", "six"],
    ],
)
def test_what_it_does_not_read_goes_to_typer(argv):
    allocate = commands_of("ports").commands["allocate"].function
    assert parse(allocate, argv) is None


def test_a_value_out_of_its_range_goes_to_typer():
    resolve = commands_of("resolve").commands["resolve"].function
    ranged = [d for d in declared(resolve) if d.param.settings.get("max") is not None]
    assert ranged, "resolve declares a bounded option"
    flag = flags(ranged[0])[0][0]
    assert parse(resolve, [flag, str(ranged[0].param.settings["max"] + 1)]) is None
    assert parse(resolve, [flag, str(ranged[0].param.settings["max"])]) is not None
    assert parse(resolve, [flag, "three"]) is None


def test_every_command_is_declared_for_both_readers():
    for _, command in COMMANDS:
        hints = typing.get_type_hints(command.function, include_extras=True)
        assert set(hints) - {"return"} == set(inspect.signature(command.function).parameters)
        assert declared(command.function)
