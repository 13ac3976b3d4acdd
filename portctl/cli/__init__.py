"""The ``portctl`` command: a thin layer over the library, one sub-app per command group."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from portctl._version import __version__
from portctl.cli._common import JsonOption, StoreOption
from portctl.cli._output import GLOBAL

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
        print(f"portctl {__version__}")
        raise typer.Exit


def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    as_json: JsonOption = False,
    store: StoreOption = None,
) -> None:
    """End port conflicts on shared hosts."""
    GLOBAL.as_json, GLOBAL.store = as_json, store


def build(modules: tuple[str, ...] = MODULES) -> typer.Typer:
    """The ``portctl`` app with the commands of ``modules`` (default: all of them)."""
    import importlib

    built = typer.Typer(
        name="portctl",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # click's help: plain text, paragraphs wrapped to the terminal
        context_settings={"max_content_width": 120},  # click's default stops at 80 columns
    )
    built.callback()(_root)
    for name in modules:
        module = importlib.import_module(f"portctl.cli.{name}")
        group = next((g for g, m in GROUPS.items() if m == name), None)
        built.add_typer(module.app, name=group) if group else built.add_typer(module.app)
    return built


def _command(argv: list[str]) -> str | None:
    """The command ``argv`` names after the root options (``--json``, ``--store URL``), or None
    (no command, or a root option such as ``--help`` or ``--version``)."""
    words = iter(argv)
    for word in words:
        if word == "--json" or word.startswith("--store="):
            continue
        if word == "--store":
            next(words, None)
            continue
        return None if word.startswith("-") else word
    return None


def app_for(argv: list[str]) -> typer.Typer:
    """The app to run ``argv`` with: one command's module when it names a known command, else
    every command (root help, completion, a misspelt command: its error lists them all)."""
    name = _command(argv)
    if name is None and "--version" in argv:
        return build(())  # the version needs no command at all
    module = COMMANDS.get(name or "") or GROUPS.get(name or "")
    return build((module,)) if module else build()


def __getattr__(name: str) -> Any:
    """``portctl.cli.app``: the whole app, built when first asked for."""
    if name == "app":
        return build()
    raise AttributeError(name)


def run(argv: list[str]) -> int:
    """Run one command line; its exit code. A usage error is one line (a JSON envelope with
    ``--json``), exit 2, like every other refusal."""
    from portctl.cli._click import UsageError, is_help_request

    try:
        result = app_for(argv)(args=argv, prog_name="portctl", standalone_mode=False)
    except UsageError as e:
        if is_help_request(e):
            e.show()
            return int(e.exit_code)
        return _usage_error(e, as_json="--json" in argv)
    except typer.Abort:
        print("portctl: aborted; nothing was changed", file=sys.stderr)
        return 1
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
