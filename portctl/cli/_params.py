"""How commands declare their parameters without importing typer.

A command module declares its commands as typer would (``Annotated[str, Option("--env", ...)]``
and ``@app.command()``), but with the light :class:`Option`, :class:`Argument` and
:class:`Commands` of this module. Nothing here imports typer: :func:`to_typer` builds the typer
app from the declarations when help, completion or an error message needs it, and
:mod:`portctl.cli._fast` parses an ordinary command line from the same declarations without it.
One set of declarations, two readers: they cannot drift apart. (Named tuples, not dataclasses:
a dataclass costs a millisecond to create, and start-up is what these commands cost.)
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple

__all__ = [
    "Argument",
    "Command",
    "Commands",
    "Exit",
    "Option",
    "Param",
    "call",
    "declared",
    "flags",
    "running",
    "to_typer",
]


class Exit(Exception):
    """End the command with ``code``: what a command raises once its answer is printed."""

    def __init__(self, code: int = 0) -> None:
        super().__init__(code)
        self.code = code


class Param(NamedTuple):
    """One parameter as declared: ``option`` or ``argument``, its flags, and typer's settings
    for it (help, metavar, envvar, min, max, show_default ...)."""

    kind: str
    decls: tuple[str, ...]
    settings: dict[str, Any]

    def to_typer(self) -> Any:
        import typer

        make = typer.Option if self.kind == "option" else typer.Argument
        return make(*self.decls, **self.settings)


def Option(*decls: str, **settings: Any) -> Any:  # noqa: N802 - spelled as typer's, which it stands for
    return Param("option", decls, settings)


def Argument(**settings: Any) -> Any:  # noqa: N802
    return Param("argument", (), settings)


class Command(NamedTuple):
    name: str
    function: Callable[..., Any]
    settings: dict[str, Any]


class Commands:
    """A module's commands (or a command group, given ``name``), recorded as declared."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.commands: dict[str, Command] = {}

    @property
    def name(self) -> str | None:
        return self.settings.get("name")

    @property
    def help(self) -> str:
        return str(self.settings.get("help") or "")

    def command(self, name: str | None = None, **settings: Any) -> Callable[[Callable[..., Any]], Any]:
        def record(function: Callable[..., Any]) -> Callable[..., Any]:
            spelled = name or function.__name__.lower().replace("_", "-")  # typer's rule
            self.commands[spelled] = Command(spelled, function, settings)
            return function

        return record


class Declared(NamedTuple):
    """A parameter of a command function: its Python name, base type, declaration, default."""

    name: str
    annotation: Any
    param: Param
    default: Any  # inspect.Parameter.empty when required


@functools.cache
def declared(function: Callable[..., Any]) -> tuple[Declared, ...]:
    """The parameters ``function`` declares, in order. Its annotations are strings (the modules
    use ``from __future__ import annotations``); evaluating them here costs microseconds."""
    hints = typing.get_type_hints(function, include_extras=True)
    found = []
    for p in inspect.signature(function).parameters.values():
        hint = hints[p.name]
        if typing.get_origin(hint) is not Annotated:
            raise TypeError(f"{function.__name__}({p.name}) is not declared with Option or Argument")
        base, *meta = typing.get_args(hint)
        [param] = [m for m in meta if isinstance(m, Param)]
        found.append(Declared(p.name, base, param, p.default))
    return tuple(found)


def flags(d: Declared) -> tuple[list[str], list[str]]:
    """The flags that set option ``d``, and (for a boolean ``--on/--off``) those that clear it.
    Undeclared, typer's rule: ``--`` and the name with dashes."""
    on: list[str] = []
    off: list[str] = []
    for decl in d.param.decls or ("--" + d.name.replace("_", "-"),):
        first, _, second = decl.partition("/")
        on.append(first.strip())
        if second:
            off.append(second.strip())
    return on, off


_running: list[Callable[..., Any]] = []


def running() -> Callable[..., Any] | None:
    """The command function being run (error messages spell its parameters as its flags)."""
    return _running[-1] if _running else None


def call(function: Callable[..., Any], target: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Run ``target`` with ``kwargs`` as command ``function``."""
    _running.append(function)
    try:
        return target(**kwargs)
    finally:
        _running.pop()


def _for_typer(function: Callable[..., Any], target: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` as typer reads it: the same signature with typer's own Option and Argument."""
    params, annotations = [], {}
    for d in declared(function):
        annotation = Annotated[d.annotation, d.param.to_typer()]  # type: ignore[name-defined]
        annotations[d.name] = annotation
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params.append(inspect.Parameter(d.name, kind, default=d.default, annotation=annotation))

    def run(**kwargs: Any) -> Any:
        return call(function, target, kwargs)

    run.__name__, run.__qualname__, run.__doc__ = function.__name__, function.__qualname__, function.__doc__
    run.__module__ = function.__module__
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = annotations
    return run


def to_typer(commands: Commands, call: Callable[[Command], Callable[..., Any]] | None = None) -> Any:
    """The typer app of ``commands``. ``call`` gives what runs for each command (a test records
    what typer passes); by default the command's own function."""
    import typer

    app = typer.Typer(**{"rich_markup_mode": None, **commands.settings})
    for command in commands.commands.values():
        target = call(command) if call else command.function
        app.command(command.name, **command.settings)(_for_typer(command.function, target))
    return app
