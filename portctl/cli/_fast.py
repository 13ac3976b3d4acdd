"""An ordinary command line parsed without typer or click.

Scripts call ``portctl url NAME`` and ``portctl allocate`` in loops, and typer alone costs more
to import than the work those commands do. This parser reads the same declarations typer does
(:mod:`portctl.cli._params`) and understands the plain forms: ``--opt VALUE``, ``--opt=VALUE``,
``-o VALUE``, flags, repeated options, positional arguments, ``--``, and an option's
environment variable. Anything else - ``--help``, an unknown option, a value that does not
convert, a missing argument, a declaration it does not model - it declines, and the command
line goes to typer, whose help and error messages are the product's. It never guesses:
declining costs only time. tests/cli/test_fast_parse.py checks it against typer on every
command.
"""

from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from portctl.cli._params import Declared, declared, flags

__all__ = ["parse"]

_EMPTY = inspect.Parameter.empty
_MODELLED = frozenset({"help", "metavar", "show_default", "envvar", "min", "max"})


class _Decline(Exception):
    pass


def _base(annotation: Any) -> tuple[Any, bool]:
    """``(element type, repeatable)`` of ``str``, ``int | None``, ``list[str] | None``..."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) != 1:
            raise _Decline
        annotation = rest[0]
    if typing.get_origin(annotation) is list:
        (element,) = typing.get_args(annotation)
        return element, True
    return annotation, False


def _convert(d: Declared, element: Any, text: str) -> Any:
    if element is str:
        return text
    if element in (int, float):
        try:
            value = element(text)
        except ValueError:
            raise _Decline from None
        low, high = d.param.settings.get("min"), d.param.settings.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            raise _Decline
        return value
    raise _Decline


def _spec(function: Callable[..., Any]) -> tuple[dict[str, tuple[Declared, bool]], list[Declared]]:
    """``flag -> (option, sets)`` and the positional arguments, or _Decline for a declaration
    this parser does not model."""
    table: dict[str, tuple[Declared, bool]] = {}
    arguments: list[Declared] = []
    for d in declared(function):
        if set(d.param.settings) - _MODELLED:
            raise _Decline  # a callback, an eager option...: typer's to run
        element, repeatable = _base(d.annotation)
        if d.param.kind == "argument":
            if arguments and _base(arguments[-1].annotation)[1]:
                raise _Decline  # only the last argument may take many words
            arguments.append(d)
            continue
        on, off = flags(d)
        if element is bool and not repeatable:
            table.update(dict.fromkeys(on, (d, True)) | dict.fromkeys(off, (d, False)))
        elif not off:
            table.update(dict.fromkeys(on, (d, True)))
        else:
            raise _Decline
    return table, arguments


def _parse(function: Callable[..., Any], args: Sequence[str]) -> dict[str, Any]:
    table, arguments = _spec(function)
    given: dict[str, list[Any]] = {}
    positional: list[str] = []
    words = iter(args)
    for word in words:
        if word == "--":
            positional.extend(words)
            break
        if not word.startswith("-") or word == "-":
            positional.append(word)
        else:
            _option(table, word, words, given)
    values = _arguments(arguments, positional)
    for d in (d for d, _ in table.values() if d.name not in values):
        values[d.name] = _option_value(d, given.get(d.name))
    return values


def _arguments(arguments: list[Declared], positional: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for d in arguments:
        element, repeatable = _base(d.annotation)
        if repeatable and positional:
            values[d.name] = [_convert(d, element, w) for w in positional]
            positional = []
        elif positional:
            values[d.name] = _convert(d, element, positional.pop(0))
        elif d.default is _EMPTY:
            raise _Decline
        else:
            values[d.name] = d.default
    if positional:
        raise _Decline  # more words than arguments
    return values


def _option(
    table: dict[str, tuple[Declared, bool]], word: str, words: Iterator[str], given: dict[str, list[Any]]
) -> None:
    """Read one option (and its value, from ``words`` unless given as ``--opt=VALUE``)."""
    flag, eq, inline = word.partition("=") if word.startswith("--") else (word, "", "")
    if flag not in table:
        raise _Decline  # --help, an unknown option, -abc, -ovalue
    d, sets = table[flag]
    element, _ = _base(d.annotation)
    if element is bool:
        if eq:
            raise _Decline
        given[d.name] = [sets]
        return
    text = inline if eq else next(words, None)
    if text is None or (not eq and text.startswith("-") and text != "-"):
        raise _Decline  # a missing value, or one click may read differently
    given.setdefault(d.name, []).append(_convert(d, element, text))


def _option_value(d: Declared, given: list[Any] | None) -> Any:
    element, repeatable = _base(d.annotation)
    if given is None and (envvar := d.param.settings.get("envvar")):
        text = os.environ.get(envvar)
        if text:  # click ignores a variable set to ""
            given = [_convert(d, element, t) for t in (text.split() if repeatable else [text])]
    if given is None:
        if d.default is _EMPTY:
            raise _Decline
        return d.default
    return list(given) if repeatable else given[-1]


def parse(function: Callable[..., Any], args: Sequence[str]) -> dict[str, Any] | None:
    """The keyword arguments typer would call ``function`` with for ``args``, or None when the
    command line is one for typer (help, a usage error, a form this parser does not read)."""
    try:
        return _parse(function, args)
    except _Decline:
        return None
