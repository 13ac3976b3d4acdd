"""The ``portctl`` command: a thin layer over the library, one module per group of commands.

Start-up is most of what a quick command costs, so a command line imports only its command's
module, and an ordinary one runs without typer (:mod:`portctl.cli._fast`); typer is loaded for
help, completion and usage errors."""

from __future__ import annotations

import errno
import json
import sys
from typing import Annotated, Any

from portctl._version import __version__
from portctl.cli._common import JsonOption, StoreOption
from portctl.cli._output import GLOBAL
from portctl.cli._params import Commands, Exit, Option, call, to_typer

HELP = (
    "End port conflicts: see what holds each port, allocate conflict-free ports, and "
    "write the files your deploy needs.\n\nExit codes: 0 ok, 1 conflicts or unhealthy, "
    "2 usage, 3 store unavailable."
)

# Each command's module (portctl/cli/<module>.py), in the order `portctl --help` lists them. A
# command line that names one command imports only its module: start-up is most of what a
# quick command costs. tests/cli/test_lazy_commands.py checks this table against the modules.
MODULES = (
    "ports",
    "host",
    "stack",
    "registry",
    "bluegreen",
    "render",
    "migrate",
    "monitoring",
    "resolve",
    "doctor",
    "free",
)
GROUPS = {"bluegreen": "bluegreen"}  # sub-command groups: name -> module
COMMANDS = {
    **dict.fromkeys(("status", "allocate", "release", "env", "export", "import"), "ports"),
    **dict.fromkeys(("who", "check"), "host"),
    **dict.fromkeys(("override", "deploy"), "stack"),
    **dict.fromkeys(
        ("register", "deregister", "services", "health", "ttl", "verify", "agent", "url"), "registry"
    ),
    "render": "render",
    "migrate": "migrate",
    **dict.fromkeys(("serve", "metrics"), "monitoring"),
    **dict.fromkeys(("resolve", "events"), "resolve"),
    "doctor": "doctor",
    "free": "free",
}


def _version(value: bool) -> None:
    if value:
        import typer

        print(f"portctl {__version__}")
        raise typer.Exit


def _root(
    version: Annotated[
        bool, Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    as_json: JsonOption = False,
    store: StoreOption = None,
) -> None:
    """End port conflicts on shared hosts."""
    GLOBAL.as_json, GLOBAL.store = as_json, store


def commands_of(module: str) -> Commands:
    """The commands module ``portctl.cli.<module>`` declares (importing it imports no typer)."""
    import importlib

    commands: Commands = importlib.import_module(f"portctl.cli.{module}").app
    return commands


def _root_app(**settings: Any) -> Any:
    import typer

    from portctl.cli._params import _for_typer

    built = typer.Typer(
        name="portctl",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # click's help: plain text, paragraphs wrapped to the terminal
        context_settings={"max_content_width": 120},  # click's default stops at 80 columns
        **settings,
    )
    built.callback()(_for_typer(_root, _root))
    return built


def build(modules: tuple[str, ...] = MODULES) -> Any:
    """The ``portctl`` typer app with the commands of ``modules`` (default: all of them)."""
    built = _root_app()
    for name in modules:
        commands = commands_of(name)
        sub = to_typer(commands)
        built.add_typer(sub, name=commands.name) if commands.name else built.add_typer(sub)
    return built


def _lazy_root() -> Any:
    """The whole app for root help and a misspelt command, building a command's click object
    only when it is run: typer reading all 24 signatures costs more than the help it prints."""
    import typer.core
    import typer.main

    class LazyGroup(typer.core.TyperGroup):
        listing = False

        def list_commands(self, ctx: Any) -> list[str]:
            return [name for module in MODULES for name in _names(commands_of(module))]

        def get_command(self, ctx: Any, cmd_name: str) -> Any:
            module = COMMANDS.get(cmd_name) or GROUPS.get(cmd_name)
            if module is None:
                return None
            if self.listing:  # only its short help is shown
                return typer.core.TyperCommand(cmd_name, help=_help_of(commands_of(module), cmd_name))
            group = typer.main.get_command(build((module,)))
            return group.commands[cmd_name]  # type: ignore[attr-defined]

        def resolve_command(self, ctx: Any, args: list[str]) -> Any:
            if args and not (COMMANDS.get(args[0]) or GROUPS.get(args[0])):
                # typer suggests a misspelt command's neighbours from self.commands
                self.commands = dict.fromkeys(self.list_commands(ctx))  # type: ignore[assignment]
            return super().resolve_command(ctx, args)

        def format_commands(self, ctx: Any, formatter: Any) -> None:
            self.listing = True
            try:
                super().format_commands(ctx, formatter)
            finally:
                self.listing = False

    return _root_app(cls=LazyGroup)


def _names(commands: Commands) -> list[str]:
    return [commands.name] if commands.name else list(commands.commands)


def _help_of(commands: Commands, name: str) -> str:
    import inspect

    if commands.name == name:
        return commands.help
    return inspect.getdoc(commands.commands[name].function) or ""


def _split(argv: list[str]) -> tuple[dict[str, Any], int] | None:
    """The root options before the command (``--json``, ``--store URL``) and the command's
    index in ``argv``; None when a word there is any other option (``--help``, ``--version``)."""
    options: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--json":
            options["as_json"] = True
        elif word.startswith("--store="):
            options["store"] = word.removeprefix("--store=")
        elif word == "--store" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            options["store"] = argv[i + 1]
            i += 1
        elif word.startswith("-"):
            return None
        else:
            return options, i
        i += 1
    return None


def _command(argv: list[str]) -> str | None:
    """The command ``argv`` names after the root options, or None (no command, or another root
    option such as ``--help`` or ``--version``)."""
    split = _split(argv)
    return argv[split[1]] if split else None


def app_for(argv: list[str]) -> Any:
    """The typer app to run ``argv`` with: one command's module when it names a known command,
    else the lazily built whole (root help, completion, a misspelt command)."""
    name = _command(argv)
    if name is None and "--version" in argv:
        return _root_app()  # the version needs no command at all
    module = COMMANDS.get(name or "") or GROUPS.get(name or "")
    return build((module,)) if module else _lazy_root()


def __getattr__(name: str) -> Any:
    """``portctl.cli.app``: the whole app, built when first asked for."""
    if name == "app":
        return build()
    raise AttributeError(name)


def _plain(argv: list[str]) -> int | None:
    """Run a plain command line without typer; None when it is one for typer (help, a usage
    error, a form :mod:`portctl.cli._fast` does not read)."""
    split = _split(argv)
    if split is None:
        return None
    options, at = split
    module = COMMANDS.get(argv[at]) or GROUPS.get(argv[at])
    if module is None:
        return None
    commands, rest = commands_of(module), argv[at + 1 :]
    if commands.name:  # a group: its command is the next word
        if not rest or rest[0] not in commands.commands:
            return None
        command, rest = commands.commands[rest[0]], rest[1:]
    else:
        command = commands.commands[argv[at]]
    from portctl.cli._fast import parse

    kwargs = parse(command.function, rest)
    if kwargs is None:
        return None
    GLOBAL.as_json, GLOBAL.store = options.get("as_json", False), options.get("store")
    try:
        result = call(command.function, command.function, kwargs)
    finally:
        if sys.stdout is not None:
            sys.stdout.flush()  # a closed pipe is found here, where run() answers for it
    return result if isinstance(result, int) else 0


def run(argv: list[str]) -> int:
    """Run one command line; its exit code. A usage error is one line (a JSON envelope with
    ``--json``), exit 2, like every other refusal."""
    try:
        code = _plain(argv)
        return code if code is not None else _typer_run(argv)
    except Exit as e:
        return e.code
    # What typer's main does for the command lines it runs, done for the plain ones too.
    except EOFError:
        print(file=sys.stderr)
        return _aborted()
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
        from portctl._streams import reader_gone

        return reader_gone()
    except Exception as e:
        if not _is_abort(e):
            raise
        return _aborted()


def _is_abort(error: Exception) -> bool:
    """A question not answered (Ctrl-D at a confirmation): ``typer.Abort``, which only a command
    that asked (and so imported typer) raises."""
    typer = sys.modules.get("typer")
    return typer is not None and isinstance(error, typer.Abort)


def _aborted() -> int:
    print("portctl: aborted; nothing was changed", file=sys.stderr)
    return 1


def _typer_run(argv: list[str]) -> int:
    import typer

    from portctl.cli._click import UsageError, is_help_request

    try:
        result = app_for(argv)(args=argv, prog_name="portctl", standalone_mode=False)
    except UsageError as e:
        if is_help_request(e):
            e.show()
            return int(e.exit_code)
        return _usage_error(e, as_json="--json" in argv)
    except typer.Abort:
        return _aborted()
    return result if isinstance(result, int) else 0


def _usage_error(error: Any, as_json: bool) -> int:
    message = "; ".join(line.strip() for line in error.format_message().splitlines() if line.strip())
    if error.ctx is not None:
        message += f" (see: {error.ctx.command_path} --help)"
    if as_json:
        envelope = {"ok": False, "data": None, "error": {"code": "usage", "message": message}}
        print(json.dumps(envelope, indent=2, sort_keys=True))
    else:
        print(f"portctl: error: {message}", file=sys.stderr)
    return int(error.exit_code)


def main() -> None:
    sys.exit(run(sys.argv[1:]))
