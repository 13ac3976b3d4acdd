"""Rendering for the CLI: tables for people, a stable JSON envelope for scripts, exit codes.

Every command ends in :func:`emit` or :func:`fail`. With ``--json`` the output is always::

    {"ok": true,  "data": {...}, "error": null}
    {"ok": false, "data": null,  "error": {"code": "port_conflict", "message": "..."}}
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import typer

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


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def emit(as_json: bool, data: Any, human: str | Callable[[], str], code: ExitCode = ExitCode.OK) -> None:
    if as_json:
        ok = code == ExitCode.OK
        print(json.dumps({"ok": ok, "data": data, "error": None}, indent=2, sort_keys=True))
    else:
        text = human() if callable(human) else human
        if text:
            print(text)
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


def fail(as_json: bool, error: PortctlError) -> NoReturn:
    code = exit_code_for(error)
    if as_json:
        envelope = {
            "ok": False,
            "data": None,
            "error": {"code": error.code, "message": error.message},
        }
        print(json.dumps(envelope, indent=2, sort_keys=True))
    else:
        print(f"portctl: error: {error.message}", file=sys.stderr)
    raise typer.Exit(int(code))


def note(message: str) -> None:
    """A remark for people on stderr, so stdout stays clean for `> .env.ports`."""
    print(message, file=sys.stderr)
