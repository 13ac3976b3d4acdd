"""Rendering for the CLI: tables for people, a stable JSON envelope for scripts, exit codes.

Every command ends in :func:`emit` or :func:`fail`. With ``--json`` the output is always::

    {"ok": true,  "data": {...}, "error": null}
    {"ok": false, "data": null,  "error": {"code": "port_conflict", "message": "..."}}

Timestamps in the envelope are ISO 8601 UTC strings. Tables are plain, stable columns when the
output is not a terminal (scripts parse them); on a terminal they are drawn by rich, colored
unless ``NO_COLOR`` is set. rich is imported only then, so plain runs start fast.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from portctl.cli._params import Exit
from portctl.errors import (
    DockerUnavailable,
    InvalidInput,
    NotFound,
    OutputUnavailable,
    PortConflict,
    PortctlError,
    RangeExhausted,
    StoreError,
    VersionConflict,
)


class InputProblem(InvalidInput):
    """Bad input (exit 2) whose message reads better whole than as "FIELD: 'value' is not
    valid; expected ...": a missing file, nothing to work on."""

    def __init__(self, field: str, value: object, message: str) -> None:
        self.field, self.value, self.expected = field, value, message
        PortctlError.__init__(self, message)


class ExitCode(enum.IntEnum):
    OK = 0
    CONFLICT = 1  # conflicts, unhealthy services, nothing found
    USAGE = 2  # bad input: names, ports, URLs, config
    STORE_UNAVAILABLE = 3  # the store (or Docker, for commands that need it) is down or corrupt


def exit_code_for(error: PortctlError) -> ExitCode:
    if isinstance(error, InvalidInput):
        return ExitCode.USAGE
    if isinstance(error, (StoreError, DockerUnavailable, OutputUnavailable)):
        return ExitCode.STORE_UNAVAILABLE
    if isinstance(error, (PortConflict, RangeExhausted, VersionConflict, NotFound)):
        return ExitCode.CONFLICT
    return ExitCode.CONFLICT


@dataclass
class GlobalOptions:
    """``portctl --json --store URL COMMAND``: options given before the command, which every
    command falls back to when it is not given them itself."""

    as_json: bool = False
    store: str | None = None


GLOBAL = GlobalOptions()


def wants_json(as_json: bool) -> bool:
    return as_json or GLOBAL.as_json


# Cell values drawn in color on a terminal.
_STYLES = {
    "CONFLICT": "bold red",
    "NO ANSWER": "bold red",
    "critical": "red",
    "warning": "yellow",
    "moved": "yellow",
    "ok": "green",
    "passing": "green",
    "answers": "green",
    "live": "green",
}


def _is_terminal() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, show_header: bool = True) -> str:
    cells = [[str(c) for c in row] for row in rows]
    if _is_terminal():
        return _rich_table(headers, cells, show_header)
    return _plain_table(headers, cells, show_header)


def _plain_table(headers: Sequence[str], cells: list[list[str]], show_header: bool) -> str:
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([*([line(headers)] if show_header else []), *(line(r) for r in cells)])


def _rich_table(headers: Sequence[str], cells: list[list[str]], show_header: bool) -> str:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=None, show_header=show_header, header_style="bold", pad_edge=False)
    for header in headers:
        grid.add_column(header, overflow="fold")
    for row in cells:
        grid.add_row(*(Text(c, style=_STYLES.get(c, "")) for c in row))
    console = Console(soft_wrap=False, highlight=False)
    with console.capture() as captured:
        console.print(grid)
    return "\n".join(line.rstrip() for line in captured.get().rstrip("\n").splitlines())


def iso_utc(seconds: float) -> str:
    """``2026-11-27T14:00:12.345Z``: a time in seconds since the epoch, as ISO 8601 UTC."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_timestamp(key: str, value: object) -> bool:
    named = key == "at" or key.endswith(("_at", "_until"))
    return named and isinstance(value, (int, float)) and not isinstance(value, bool)


def with_iso_times(data: Any) -> Any:
    """``data`` with every epoch timestamp (keys ``at``, ``*_at``, ``*_until``) as ISO 8601 UTC
    (null where it was never set), so scripts read one format whichever layer made the record."""
    if isinstance(data, dict):
        return {
            k: (iso_utc(v) if v > 0 else None) if _is_timestamp(k, v) else with_iso_times(v)
            for k, v in data.items()
        }
    if isinstance(data, (list, tuple)):
        return [with_iso_times(v) for v in data]
    return data


def emit(
    as_json: bool,
    data: Any,
    human: str | Callable[[], str],
    code: ExitCode = ExitCode.OK,
    error: tuple[str, str] | None = None,
) -> None:
    """Print ``data`` (the envelope's ``data`` with ``--json``) or ``human``, then exit ``code``.
    ``error`` is ``(code, message)``: why a command that has data to show still failed
    (``doctor`` found something to fix), for the envelope's ``error``."""
    if wants_json(as_json):
        ok = code == ExitCode.OK
        failed = {"code": error[0], "message": error[1]} if error and not ok else None
        envelope = {"ok": ok, "data": with_iso_times(data), "error": failed}
        print(json.dumps(envelope, indent=2, sort_keys=True))
    else:
        text = human() if callable(human) else human
        if text:
            print(text)
    if code != ExitCode.OK:
        raise Exit(int(code))


def flag_of(name: str) -> str:
    """The flag of the running command's option whose Python name is ``name`` (``min_healthy``:
    ``--min-healthy``; ``type`` matches ``type_``, the name Python makes of ``--type``); ``name``
    itself when the command has no such option. Read from the command's own declarations, so
    every command maps the library's parameter names to its flags without a table."""
    from portctl.cli._params import declared, flags, running

    function = running()
    for d in declared(function) if function is not None else ():
        if d.param.kind == "option" and name in (d.name, d.name.rstrip("_")):
            spelled = flags(d)[0]
            return next((o for o in spelled if o.startswith("--")), spelled[0])
    return name


def message_of(error: PortctlError) -> str:
    """An error's message as this command line spells it: parameters as their flags."""
    return error.spelled(flag_of)


def fail(as_json: bool, error: PortctlError) -> NoReturn:
    code = exit_code_for(error)
    message = message_of(error)
    if wants_json(as_json):
        envelope = {
            "ok": False,
            "data": None,
            "error": {"code": error.code, "message": message},
        }
        print(json.dumps(envelope, indent=2, sort_keys=True))
    else:
        print(f"portctl: error: {message}", file=sys.stderr)
    raise Exit(int(code))


def note(message: str) -> None:
    """A remark for people on stderr, so stdout stays clean for `> .env.ports`."""
    print(message, file=sys.stderr)


@contextlib.contextmanager
def window_progress(seconds: float) -> Iterator[Callable[[str], None]]:
    """A reporter for a timed window (a cutover's health gate): a progress bar on a terminal's
    stderr, else each message as a plain line there."""
    if seconds <= 0 or not sys.stderr.isatty() or os.environ.get("TERM") == "dumb":
        yield note
        return
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    started = time.monotonic()
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("probing", total=seconds)

        def report(message: str) -> None:
            done = min(seconds, time.monotonic() - started)
            bar.update(task, description=message, completed=done)

        yield report
        bar.update(task, completed=seconds)
