"""``portctl doctor``: the troubleshooting list as checks, one verdict per finding with its fix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from portctl.cli._common import (
    ComposeFilesOption,
    EnvOption,
    JsonOption,
    StoreOption,
    handled,
    load_project,
    opened,
)
from portctl.cli._output import ExitCode, emit, note, table
from portctl.cli._params import Argument, Commands

if TYPE_CHECKING:
    from portctl.operations.doctor import DoctorReport

app = Commands(rich_markup_mode=None)

# Worst first, so what needs fixing heads the table.
_ORDER = {"fail": 0, "warn": 1, "unknown": 2, "ok": 3}


@app.command()
def doctor(
    names: Annotated[
        list[str] | None,
        Argument(
            metavar="[PORT | SERVICE]...",
            help="Ports or services to examine (default: all).",
            show_default=False,
        ),
    ] = None,
    files: ComposeFilesOption = None,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the troubleshooting list as checks: one verdict per finding, with the fix to run.

    Checks: in use (what else holds a port, as lsof -i :PORT; the stack's own old container
    told from a foreign one), refused (a service that should answer but nothing listens on its
    port, it listens on another port, on 127.0.0.1 only while containers are its clients, or
    on IPv6 only), bind (a port below 1024 without root or CAP_NET_BIND_SERVICE, a port in the
    ephemeral range or reserved), mapping (with -f: a reversed HOST:CONTAINER, a host port
    published twice, a published port the allocation moved but nothing in the files moves).
    The table lists what is not ok (every verdict when ports or services are named); --json
    lists them all. Exits 1 when any verdict is fail, 0 otherwise.

    Example: portctl doctor -f docker-compose.production.yml
    """
    from portctl.operations.doctor import doctor as run_doctor
    from portctl.registry.entries import Registry

    with handled(as_json):
        project = load_project(files)
        with opened(store) as ctx:
            report = run_doctor(
                ctx.allocator(),
                Registry(ctx.store, ctx.settings),
                names=names or (),
                project=project,
                environment=env,
            )
        for notice in report.notices:
            note(f"note: {notice}")
        code = ExitCode.CONFLICT if report.needs_fixing else ExitCode.OK
        failing = [v for v in report.verdicts if v.needs_fixing]
        why = f"{len(failing)} to fix; first: {failing[0].subject}: {failing[0].finding}" if failing else ""
        emit(
            as_json, report.to_dict(), lambda: _human(report, every=bool(names)), code, ("needs_fixing", why)
        )


def _flat(text: str) -> str:
    """One line per row: a holder's command line may hold newlines (``python -c``)."""
    return " ".join(text.split())


def _human(report: DoctorReport, *, every: bool) -> str:
    shown = [v for v in report.verdicts if every or v.status.value != "ok"]
    shown.sort(key=lambda v: _ORDER[v.status.value])  # stable: the checks' order within a status
    counts = report.counts()
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "nothing to check"
    rows = [[v.check, v.subject, v.status.value, _flat(v.finding), _flat(v.fix) or "-"] for v in shown]
    body = table(["CHECK", "SUBJECT", "STATUS", "FINDING", "FIX"], rows) + "\n" if rows else ""
    if not report.needs_fixing and not rows:
        return f"{body}all checks passed: {summary}"
    return f"{body}\n{summary}"
