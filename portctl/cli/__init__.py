"""The ``portctl`` command: a thin layer over the library, one sub-app per command group."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from portctl._version import __version__
from portctl.cli import bluegreen, doctor, free, host, migrate, monitoring, ports, registry, resolve, stack
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
from portctl.cli import doctor as _doctor_cli  # noqa: E402  (local only, not committed)

app.add_typer(_doctor_cli.app)
app.add_typer(monitoring.app)
app.add_typer(resolve.app)
app.add_typer(doctor.app)
app.add_typer(free.app)


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


def run(argv: list[str]) -> int:
    """Run one command line; its exit code. A usage error is one line (a JSON envelope with
    ``--json``), exit 2, like every other refusal."""
    from portctl.cli._click import UsageError, is_help_request

    try:
        result = app(args=argv, prog_name="portctl", standalone_mode=False)
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
