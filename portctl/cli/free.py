"""`portctl free`: stop what holds a port, safely, and prove the port free."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

from portctl import _validate
from portctl.cli._common import JsonOption, Opened, StoreOption, confirm, handled, opened
from portctl.cli._output import ExitCode, emit, note, wants_json
from portctl.cli._params import Argument, Commands, Option

if TYPE_CHECKING:
    from portctl.operations.free import FreePlan, FreeReport, Target
    from portctl.ports.allocator import Allocation, PortAllocator

app = Commands(rich_markup_mode=None)


@app.command()
def free(
    port: Annotated[str, Argument(metavar="PORT", help="The port to free.")],
    protocol: Annotated[str, Option("--protocol", metavar="tcp|udp", help="Protocol.")] = "tcp",
    yes: Annotated[
        bool, Option("--yes", "-y", help="Stop without asking (needed without a terminal).")
    ] = False,
    grace: Annotated[
        str, Option("--grace", metavar="DURATION", help="Time to exit after SIGTERM before SIGKILL.")
    ] = "10s",
    dry_run: Annotated[bool, Option("--dry-run", help="Show what would be stopped; stop nothing.")] = False,
    release: Annotated[
        bool,
        Option("--release", help="Also release portctl's allocation(s) of the port once it is free."),
    ] = False,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop what holds a port - a container through the Docker API, a process with SIGTERM
    then SIGKILL after the grace period - and prove the port free with a bind test.

    A container reached through docker-proxy is stopped itself (never the proxy); a stopped
    container holds nothing and is left alone. It refuses, stopping nothing, when any holder
    is PID 1 (of the system or of a PID namespace), a kernel thread, portctl's own process
    tree, Docker's own process, another user's process (unless root) or not visible. It asks
    first on a terminal; without one it needs --yes. portctl's allocation of the port is kept
    unless --release is given. Exits 0 when the port is free (or nothing held it), 1 when a
    holder is refused or the port is still held, 3 when Docker is needed and unreachable.

    Example: portctl free 8000 --yes
    """
    with handled(as_json):
        number = _validate.port(port)
        _validate.protocol(protocol)
        seconds = _grace(grace)
        from portctl.operations.free import plan_free

        plan = plan_free(number, protocol)
        for notice in plan.notices:
            note(f"note: {notice}")
        if (error := plan.refusal_error()) is not None:
            raise error
        if dry_run:
            emit(as_json, {**plan.to_dict(), "dry_run": True}, lambda: _preview(plan, seconds, dry_run=True))
            return
        if plan.to_stop and not yes:
            _ask(plan, seconds, as_json)
        report = _free(plan, seconds, store, release)
        code = ExitCode.OK if report.freed else ExitCode.CONFLICT
        still = f"{plan.where} is still held" if not report.freed else ""
        emit(as_json, report.to_dict(), lambda: _rendered(plan, report, release), code, ("still_held", still))


def _ask(plan: FreePlan, seconds: float, as_json: bool) -> None:
    """On a terminal: show what will be stopped, then ask; without one: the --yes error."""
    if sys.stdin.isatty() and not wants_json(as_json):
        print(_preview(plan, seconds, dry_run=False))
    confirm(False, f"Stop {_names(plan.to_stop)} to free {plan.where}?", declined="nothing was stopped")


def _grace(text: str) -> float:
    from portctl.registry.checks import parse_duration

    return parse_duration(text, "--grace")


def _free(plan: FreePlan, seconds: float, store: str | None, release: bool) -> FreeReport:
    """Stop and prove; the store is opened first when --release needs it (a store that is down
    then stops the run before anything is stopped), else read afterwards only to say which
    allocation is kept, and a store that cannot be read then is only a note."""
    from portctl.errors import StoreError
    from portctl.operations.free import free

    if release:
        with opened(store) as ctx:
            report = free(plan, seconds, allocator=ctx.allocator(), release=True)
            _record(ctx, report)
            return report
    report = free(plan, seconds)
    try:
        with opened(store) as ctx:
            report.kept = _kept(ctx.allocator(), plan)
            _record(ctx, report)
    except StoreError as e:
        report.notices.append(f"allocations not read: {e.message}")
        note(f"note: allocations not read, and what was stopped not recorded in portctl events: {e.message}")
    return report


def _record(ctx: Opened, report: FreeReport) -> None:
    """What was stopped, in the event log (``portctl events``); a store that refuses the write
    is a note: the port is free all the same."""
    import time

    from portctl.errors import StoreError
    from portctl.operations.free import freed_event
    from portctl.ports.events import EventLog

    event = freed_event(report, ctx.settings.host, time.time())
    if event is None:
        return
    try:
        EventLog(ctx.store, ctx.settings.host).record(event)
    except StoreError as e:
        report.notices.append(f"not recorded in portctl events: {e.message}")
        note(f"note: what was stopped is not recorded in portctl events: {e.message}")


def _kept(allocator: PortAllocator, plan: FreePlan) -> list[Allocation]:
    from portctl.operations.free import allocations_on

    return allocations_on(allocator, plan.port, plan.protocol)


def _names(targets: list[Target]) -> str:
    from portctl.operations.free import short

    names = [short(t.holder) for t in targets]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def _preview(plan: FreePlan, seconds: float, *, dry_run: bool) -> str:
    from portctl.operations.free import STOP_CONTAINER, left_alone

    if not plan.targets:
        return f"nothing holds {plan.where}: nothing to stop"
    lines = [f"{plan.where} is held by:", *(f"  {_one_line(t.holder.describe())}" for t in plan.targets)]
    verb = "would stop" if dry_run else "will stop"
    for t in plan.to_stop:
        how = (
            f"through the Docker Engine API (docker stop -t {seconds:g})"
            if t.action == STOP_CONTAINER
            else f"with SIGTERM, then SIGKILL if it has not exited after {seconds:g}s"
        )
        lines.append(f"{verb} {_names([t])} {how}")
    lines += [f"left alone: {left_alone(t.holder)}" for t in plan.left]
    if dry_run:
        lines.append("dry run: nothing was stopped")
    return "\n".join(lines)


def _rendered(plan: FreePlan, report: FreeReport, release: bool) -> str:
    from portctl.operations.free import left_alone

    lines = [o.describe() for o in report.outcomes]
    lines += [left_alone(t.holder) for t in report.left]
    if not plan.targets:
        lines.append(f"nothing holds {report.where}")
    if report.freed:
        lines.append(f"{report.where} is free now ({report.proof})")
    else:
        held = "; ".join(_one_line(h.describe()) for h in report.still_held) or report.bind.reason
        lines.append(f"{report.where} is still held: {held}")
    lines += [
        f"released the allocation of {a.service} ({a.environment}) on {report.where}" for a in report.released
    ]
    for a in report.kept:
        how = "it is kept: the port is still held" if release else "kept (add --release to release it)"
        lines.append(f"allocation of {a.service} ({a.environment}) on {report.where}: {how}")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    """A holder's description on one line: a command line may hold newlines (``python -c``)."""
    return "".join(" " if ch < " " or ch == "\x7f" else ch for ch in text)
