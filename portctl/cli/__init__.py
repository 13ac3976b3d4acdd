"""The ``portctl`` command: a thin layer over the library, one sub-app per command group."""

from __future__ import annotations

from typing import Annotated

import typer

from portctl._version import __version__
from portctl.cli import bluegreen, host, migrate, ports, registry, stack
from portctl.cli import render as render_cli
from portctl.cli._common import JsonOption, StoreOption
from portctl.cli._output import GLOBAL

app = typer.Typer(
    name="portctl",
    help="End port conflicts: see what holds each port, allocate conflict-free ports, and "
    "write the files your deploy needs.\n\nExit codes: 0 ok, 1 conflicts or unhealthy, "
    "2 usage, 3 store unavailable.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's help: plain text, paragraphs wrapped to the terminal
    context_settings={"max_content_width": 120},  # click's default stops at 80 columns
)
app.add_typer(ports.app)
app.add_typer(host.app)
app.add_typer(stack.app)
app.add_typer(registry.app)
app.add_typer(bluegreen.app, name="bluegreen")
app.add_typer(render_cli.app)
app.add_typer(migrate.app)


def _version(value: bool) -> None:
    if value:
        print(f"portctl {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    as_json: JsonOption = False,
    store: StoreOption = None,
) -> None:
    """End port conflicts on shared hosts."""
    GLOBAL.as_json, GLOBAL.store = as_json, store


def main() -> None:
    app()
