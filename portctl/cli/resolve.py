"""Conflict resolution and its record: ``portctl resolve`` and ``portctl events``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from portctl.cli._common import ComposeFilesOption, EnvOption, JsonOption, StoreOption, handled, opened
from portctl.cli._output import ExitCode, emit, note, table
from portctl.cli._params import Commands, Option

if TYPE_CHECKING:
    from portctl.cli._common import Opened
    from portctl.operations.resolve import Resolver, ResolveReport
    from portctl.records import Event

app = Commands(rich_markup_mode=None)

RedeployOption = Annotated[
    bool,
    Option("--redeploy", help="Run `docker compose up -d` for the moved compose services and probe them."),
]
DryRunOption = Annotated[bool, Option("--dry-run", help="Show what would move; change nothing.")]
ConfirmationsOption = Annotated[
    int,
    Option(
        "--confirmations",
        metavar="N",
        min=1,
        max=20,
        help="Act on a conflict only once it was seen, with the same holder, this many times in a row.",
    ),
]


def make_resolver(
    ctx: Opened,
    files: list[str] | None,
    env: str | None,
    *,
    confirmations: int,
    dry_run: bool,
    redeploy: bool,
    actor: str,
    again: bool = False,
) -> Resolver:
    """The resolver for the compose files ``files`` (their own override left out: it is
    rewritten, not read), or for the environment's allocations alone."""
    from portctl.cli._common import require_project
    from portctl.compose.deploy import deploy_inputs
    from portctl.operations.resolve import Resolver

    project, override = None, None
    if files:
        inputs, override = deploy_inputs(files)
        project = require_project(inputs)
    if redeploy and project is None:
        from portctl.cli._output import InputProblem

        raise InputProblem(
            "--redeploy",
            None,
            "--redeploy starts the moved compose services again: add their -f docker-compose.yml",
        )
    return Resolver(
        ctx.allocator(),
        environment=env,
        project=project,
        override_file=override,
        confirmations=confirmations,
        dry_run=dry_run,
        redeploy=redeploy,
        actor=actor,
        again=again,
    )


def report_lines(report: ResolveReport) -> list[str]:
    lines = []
    for m in report.moves:
        verb = "moved" if m.done else "would move"
        where = f"{m.service} ({m.environment}) {m.old_port} -> {m.new_port}/{m.protocol}"
        lines.append(f"{verb} {where}: {m.old_port} is held by {m.holder}")
        lines += [f"  wrote {f}" for f in m.files]
        lines += [f"  {m.service}'s registration is now {i}" for i in m.registrations if i]
        if m.redeployed:
            state = "answers" if m.answered else f"does not answer ({m.detail})"
            lines.append(f"  ran {m.redeployed}: {m.service} {state} on {m.new_port}")
        lines += [f"  {problem}" for problem in m.problems]
    for p in report.pending:
        lines.append(
            f"seen {p.seen} of {p.needed} times: {p.service} ({p.environment}) {p.port} is held by {p.holder}"
        )
    lines += [f"not moved: {s.service} ({s.environment}) {s.port}: {s.reason}" for s in report.skipped]
    return lines


@app.command()
def resolve(
    files: ComposeFilesOption = None,
    env: EnvOption = None,
    observations: ConfirmationsOption = 3,
    redeploy: RedeployOption = False,
    dry_run: DryRunOption = False,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move services off ports that foreign holders took while the services were not running.

    It looks a few times a second apart, and moves only a service that is not running on its
    port and whose port the same foreign process or container held every time. It never stops
    or signals what holds the port. Each move goes through the allocator, rewrites .env.ports
    and the override of the compose files given, moves the service's registrations, and is
    recorded (portctl events). Exits 1 when a conflict is left.

    Example: portctl resolve -f docker-compose.yml --redeploy
    """
    from portctl.operations.resolve import resolve as run

    with handled(as_json), opened(store) as ctx:
        resolver = make_resolver(
            ctx,
            files,
            env,
            confirmations=observations,
            dry_run=dry_run,
            redeploy=redeploy,
            actor="portctl resolve",
        )
        report = run(resolver)
        for notice in report.notices:
            note(f"note: {notice}")
        text = "\n".join(report_lines(report)) or f"no conflicts to resolve in {resolver.environment}"
        code = ExitCode.CONFLICT if report.conflicts_left else ExitCode.OK
        emit(as_json, report.to_dict(), text, code, ("conflicts_left", _left(report)))


def _left(report: ResolveReport) -> str:
    """Why conflicts are left, in one line: the first not moved, pending or failed."""
    reasons = [f"{s.service} not moved: {s.reason}" for s in report.skipped]
    reasons += [f"{p.service}: seen {p.seen} of {p.needed} times" for p in report.pending]
    reasons += [
        f"{m.service} would move {m.old_port} -> {m.new_port} (dry run)" for m in report.moves if not m.done
    ]
    reasons += [
        f"{m.service}: {'; '.join(m.problems) or 'does not answer on its new port'}"
        for m in report.moves
        if m.done and (m.problems or m.answered is False)
    ]
    return f"{len(reasons)} left; first: {reasons[0]}" if reasons else ""


@app.command()
def events(
    service: Annotated[
        str | None, Option("--service", metavar="NAME", help="Only this service's.", show_default=False)
    ] = None,
    env: EnvOption = None,
    since: Annotated[
        str | None,
        Option(
            "--since",
            metavar="1h",
            help="Only events this recent: 30s, 15m, 24h (at most 720h).",
            show_default=False,
        ),
    ] = None,
    all_hosts: Annotated[
        bool, Option("--all-hosts", help="Every host's events, not only this one's.")
    ] = False,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what portctl changed by itself, oldest first: ports moved by conflict resolution,
    ports freed by portctl free.

    Example: portctl events --since 24h
    """
    import time

    from portctl import _validate
    from portctl.ports.events import EventLog
    from portctl.registry.checks import parse_duration

    with handled(as_json):
        cutoff = time.time() - parse_duration(since, "--since") if since else None
        if service is not None:
            _validate.service_name(service)
        with opened(store) as ctx:
            environment = ctx.settings.policy.environment(env) if env else None
            found = EventLog(ctx.store, ctx.settings.host).read(
                all_hosts=all_hosts, since=cutoff, service=service, environment=environment
            )
        for key in found.corrupt:
            note(f"note: {key} is not a portctl event; skipped")
        emit(as_json, [e.to_dict() for e in found.events], lambda: _events_table(found.events))


def _events_table(found: list[Event]) -> str:
    if not found:
        return "no events"
    from portctl.cli._output import iso_utc

    rows: list[list[Any]] = [
        [
            iso_utc(e.at),
            e.host,
            e.kind,
            f"{e.service or '-'} ({e.environment or '-'})",
            f"{e.old_port or '-'} -> {e.new_port or '-'}",
            e.holder,
            e.actor,
        ]
        for e in found
    ]
    return table(["time", "host", "event", "service", "port", "holder", "by"], rows)
