"""Compose commands: the override file, and the whole quick fix as one deploy."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

from portctl.cli._common import (
    ComposeFilesOption,
    EnvOption,
    JsonOption,
    StoreOption,
    handled,
    opened,
    require_project,
)
from portctl.cli._output import ExitCode, emit, note, table
from portctl.cli._params import Commands, Option
from portctl.errors import InvalidInput

if TYPE_CHECKING:
    from portctl.compose.deploy import DeployReport, DeployStep, MovedPort
    from portctl.compose.stack import StackPort

app = Commands(rich_markup_mode=None)

OutputFile = Annotated[
    str | None,
    Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Write to FILE (atomically) instead of stdout.",
        show_default=False,
    ),
]


@app.command()
def override(
    files: ComposeFilesOption = None,
    env: EnvOption = None,
    output: OutputFile = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write the docker-compose.override.yml that moves each service to its allocated port.

    Moved services get their whole ports list replaced (`ports: !override`, Compose >= 2.24):
    Compose merges a plain list into the base file's, which would keep the conflicting port.
    With an older Compose, use ${NAME_PORT} variables in the base file and `portctl env`.
    A port with no allocation stays as declared; stderr names each one.

    Example: portctl override -f docker-compose.production.yml > docker-compose.override.yml
    """
    from portctl.compose.deploy import find_compose, plan_override
    from portctl.compose.stack import unallocated_ports

    with handled(as_json):
        project = require_project(files)
        with opened(store) as ctx:
            env_name = ctx.settings.policy.environment(env)
            allocations = {a.service: a for a in ctx.allocator().allocations(env_name)}
        tool = find_compose()
        plan = plan_override(project, allocations, tool)
        left = unallocated_ports(project, allocations)
        if tool is None:
            note("note: Docker Compose v2 not found; the override uses !override (Compose >= 2.24)")
        if left:
            note(_unallocated_note(left, files or [], env))
        if not plan.needed:
            note("no port moved: the base file's ports stand (an empty override)")
        text = plan.text or "# written by portctl: no port moved\nservices: {}\n"
        data = {
            "services": {s: [m.published for m in ms] for s, ms in plan.services.items()},
            "unallocated": [
                {"name": sp.name, "service": sp.mapping.service, "port": sp.declared} for sp in left
            ],
            "replace": plan.replace,
            "text": text,
        }
        if output:
            written = _write_override(output, text)
            emit(
                as_json,
                {**data, "written": output, "changed": written},
                f"{'wrote' if written else 'unchanged:'} {output}",
            )
        else:
            emit(as_json, data, text.rstrip("\n"))


def _unallocated_note(left: list[StackPort], files: list[str], env: str | None) -> str:
    ports = ", ".join(f"{sp.name} ({sp.declared})" for sp in left)
    command = " ".join(["portctl allocate --all", *(f"-f {shlex.quote(f)}" for f in files)])
    if env:
        command += f" --env {shlex.quote(env)}"
    return f"note: not allocated, left as declared: {ports}; to move them too: {command}"


def _write_override(path: str, text: str) -> bool:
    """Write the override unless unchanged; refuse a file someone else wrote. A blank file (what
    a failed `portctl override > FILE` leaves) holds nothing of anyone's, so it is replaced."""
    from portctl.compose.deploy import OVERRIDE_MARK, UnwritableFile, write_if_changed

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            blank = not f.read(4096).strip() and not f.read(1)
    except OSError:
        blank = False  # missing or unreadable: write_if_changed says which
    try:
        return write_if_changed(path, text, owned_mark=None if blank else OVERRIDE_MARK)
    except (OSError, UnwritableFile) as e:  # no such folder, a folder, permission denied
        cause = e.__cause__ if isinstance(e, UnwritableFile) else e
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        raise InvalidInput("--output", path, f"a writable file path in an existing folder ({why})") from e


@app.command()
def deploy(
    files: ComposeFilesOption = None,
    env: EnvOption = None,
    env_file: Annotated[
        str | None,
        Option(
            "--env-file",
            metavar="FILE",
            help="Where to write the ports (default: .env.ports beside the compose file).",
            show_default=False,
        ),
    ] = None,
    output: OutputFile = None,
    wait: Annotated[
        str,
        Option(
            "--wait",
            metavar="DURATION",
            help="How long the ports may take to answer, e.g. 60s or 2m (0s: probe once).",
        ),
    ] = "60s",
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the quick fix: allocate, write .env.ports and the override, compose up, verify.

    Every published port that something else holds is moved to a free one; the stack is
    started with `docker compose up -d`, and the exact command is printed for reuse (a plain
    `docker compose -f FILE up -d` reads neither the override nor .env.ports). Each TCP port
    must then answer: the service itself, not only Docker's proxy. Without -f, the Compose
    files are found as Compose finds them (COMPOSE_FILE, compose.yaml, ... docker-compose.yml).
    A port taken between the allocation and Compose's start moves that service alone to a
    free port, and Compose runs once more (said in a note, and `moved` in --json).
    Running it again changes nothing. Exits 1 if a port does not answer, 3 if Docker or
    Compose is missing.

    Example: portctl deploy -f docker-compose.production.yml --wait 2m
    """
    from portctl.compose.deploy import deploy as run_deploy
    from portctl.compose.deploy import deploy_inputs
    from portctl.host.holders import HostPorts

    with handled(as_json):
        seconds = _wait_seconds(wait)
        inputs, own_override = deploy_inputs(files)
        project = require_project(inputs)
        with opened(store) as ctx, _deploy_display() as show:
            host = HostPorts()
            report = run_deploy(
                ctx.allocator(host.docker),
                project,
                environment=env,
                env_file=env_file,
                override_file=output or own_override,
                wait=seconds,
                host=host,
                progress=show,
            )
        for notice in report.notices:
            note(f"note: {notice}")
        emit(
            as_json,
            _deploy_data(report),
            lambda: _deploy_text(report),
            ExitCode.OK if report.ok else ExitCode.CONFLICT,
        )


def _wait_seconds(value: str) -> float:
    from portctl.registry.checks import parse_duration

    if value.strip() in ("0", "0s", "0ms"):
        return 0.0
    return parse_duration(value, "--wait")


@contextlib.contextmanager
def _deploy_display() -> Iterator[Callable[[DeployStep], None]]:
    """A progress display on stderr while Compose runs and ports are probed; nothing at all
    when stderr is not a terminal (logs, CI), so no animation lands in a file."""
    if not sys.stderr.isatty():
        yield lambda step: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        up = bar.add_task("docker compose up", total=None)
        waiting = None

        def show(step: DeployStep) -> None:
            nonlocal waiting
            if step.stage == "up":
                bar.update(up, description=f"compose: {step.text[:70]}")
                return
            if waiting is None:
                bar.update(up, visible=False)
                waiting = bar.add_task("waiting", total=step.total)
            bar.update(waiting, description=step.text, completed=step.done, total=step.total)

        yield show


def _deploy_text(report: DeployReport) -> str:
    taken = {m.name: m for m in report.moved}
    rows = [
        [
            sp.name,
            sp.mapping.service,
            sp.declared,
            r.allocation.port,
            _move_text(sp, r.allocation.port, taken),
        ]
        for sp, r in report.allocations
    ]
    files_line = [f"{report.env_file}: {'written' if report.env_written else 'unchanged'}"]
    if report.override_file:
        files_line.append(f"{report.override_file}: {'written' if report.override_written else 'unchanged'}")
    files_line.append(f"ran: {report.command}")
    probes = [
        [p.name, f"{p.port}/{p.protocol}", "answers" if p.answered else "NO ANSWER", p.detail]
        for p in report.probes
    ]
    return "\n\n".join(
        [
            table(["NAME", "SERVICE", "DECLARED", "PORT", "MOVE"], rows),
            "\n".join(files_line),
            table(["NAME", "PORT", "CHECK", "DETAIL"], probes),
        ]
    )


def _move_text(sp: StackPort, port: int, taken: dict[str, MovedPort]) -> str:
    moved = taken.get(sp.name)
    if moved is not None:
        return f"moved ({moved.old_port} was taken at start)"
    return "moved" if port != sp.declared else "as declared"


def _deploy_data(report: DeployReport) -> dict[str, Any]:
    return {
        "project": report.project,
        "allocations": [
            {
                **r.allocation.to_dict(),
                "compose_service": sp.mapping.service,
                "declared": sp.declared,
                "changed": r.changed,
            }
            for sp, r in report.allocations
        ],
        "env_file": {"path": report.env_file, "changed": report.env_written},
        "override_file": {"path": report.override_file, "changed": report.override_written},
        "compose_command": report.command,
        "probes": [p.__dict__ for p in report.probes],
        "moved": [m.to_dict() for m in report.moved],
        "compose_output": report.compose_output,
    }
