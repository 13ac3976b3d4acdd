"""Host commands: who holds a port, and the conflict check to run before a deploy."""

from __future__ import annotations

from typing import Annotated

from portctl import _validate
from portctl.cli._common import (
    ComposeFilesOption,
    EnvOption,
    JsonOption,
    StoreOption,
    handled,
    load_project,
    opened,
)
from portctl.cli._output import ExitCode, InputProblem, emit, note, table
from portctl.cli._params import Argument, Commands, Option

app = Commands(rich_markup_mode=None)


@app.command()
def who(
    port: Annotated[str, Argument(metavar="PORT", help="The port to look up.")],
    protocol: Annotated[str, Option("--protocol", metavar="tcp|udp", help="Protocol.")] = "tcp",
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what holds a port: processes, containers, and portctl's own allocations.

    One line per holder: what `lsof -i :PORT` and `docker ps` would tell. Exits 1 when
    something holds or claims the port (a process, a container - a stopped one takes it back
    when started -, or an allocation in the store), 0 when it is free.

    Example: portctl who 5432
    """
    from portctl.host.holders import HostPorts

    with handled(as_json):
        number = _validate.port(port)
        _validate.protocol(protocol)
        host = HostPorts()
        holders = host.holders(number, protocol)
        with opened(store) as ctx:
            allocated = [
                a
                for a in ctx.allocator().allocations(all_hosts=False)
                if a.port == number and a.protocol == protocol
            ]
        for notice in host.notices:
            note(f"note: {notice}")
        lines = [h.describe() for h in holders]
        lines += [
            f"{number}/{protocol}: allocated to {a.service} ({a.environment}) in {ctx.choice.url}"
            for a in allocated
        ]
        data = {
            "port": number,
            "protocol": protocol,
            "holders": [h.to_dict() for h in holders],
            "allocations": [a.to_dict() for a in allocated],
            "notices": host.notices,
        }
        busy = bool(allocated or holders)  # a stopped container's port is not free to take
        emit(
            as_json,
            data,
            "\n".join(lines) or f"{number}/{protocol} is free",
            ExitCode.CONFLICT if busy else ExitCode.OK,
        )


def _nothing_to_check(env: str | None, services: list[str] | None, files: list[str] | None) -> InputProblem:
    what = f"no port of {', '.join(services)}" if services else "no allocated port"
    where = f"in {env}" if env else "in this environment"
    source = " and the compose files publish none" if files else " and no compose file was given"
    return InputProblem(
        "check",
        None,
        f"nothing to check: {what} {where}{source}; allocate first (portctl allocate --all) "
        "or name the compose file (portctl check -f docker-compose.yml)",
    )


@app.command()
def check(
    service: Annotated[
        list[str] | None,
        Option(
            "--service",
            "-s",
            metavar="NAME",
            help="Check only this service (repeatable).",
            show_default=False,
        ),
    ] = None,
    files: ComposeFilesOption = None,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check every allocated or compose-declared port for conflicts; exit 1 if any.

    Each conflict names its holder: a process (pid, name, user, command) or a container
    (name, compose project/service, image). A port held by the service's own container or
    process is not a conflict; a stopped container that would take a port back is a warning.
    It replaces a hand-written check_ports.sh and fits a CI gate.

    Example: portctl check -f docker-compose.production.yml
    """
    from portctl.compose.check import check_ports, targets
    from portctl.host.holders import HostPorts

    with handled(as_json):
        project = load_project(files)
        with opened(store) as ctx:
            to_check = targets(ctx.allocator(), env, project, service or ())
        if not to_check:
            raise _nothing_to_check(env, service, files)
        report = check_ports(to_check, HostPorts())
        for notice in report.notices:
            note(f"note: {notice}")

        def human() -> str:
            rows = []
            for f in report.findings:
                t = f.target
                status = "CONFLICT" if f.conflicts else "warning" if f.warnings else "ok"
                rows.append([t.service, f"{t.port}/{t.protocol}", status, t.source])
                rows += [["", "", "", f"held by {h.describe()}"] for h in f.conflicts]
                rows += [["", "", "", f"stopped: {h.describe()}"] for h in f.warnings]
            summary = f"\n{len(report.conflicts)} conflict(s) in {len(report.findings)} port(s)"
            if step := report.next_step():
                summary += f"\nnext: {step}"
            return table(["SERVICE", "PORT", "STATUS", "DETAIL"], rows) + summary

        data = {
            "ok": report.ok,
            "findings": [f.to_dict() for f in report.findings],
            "notices": report.notices,
            "next_step": report.next_step(),
        }
        emit(as_json, data, human, ExitCode.OK if report.ok else ExitCode.CONFLICT)
