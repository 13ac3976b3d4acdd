"""Compose commands: the override file, and the whole quick fix as one deploy."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Annotated

import typer

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
from portctl.errors import InvalidInput

if TYPE_CHECKING:
    from portctl.stack import StackPort

app = typer.Typer(rich_markup_mode=None)

OutputFile = Annotated[
    str | None,
    typer.Option(
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
    from portctl.deploy import find_compose, plan_override
    from portctl.stack import unallocated_ports

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
    from portctl.deploy import OVERRIDE_MARK, write_if_changed

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            blank = not f.read(4096).strip() and not f.read(1)
    except OSError:
        blank = False  # missing or unreadable: write_if_changed says which
    try:
        return write_if_changed(path, text, owned_mark=None if blank else OVERRIDE_MARK)
    except OSError as e:  # no such folder, a folder, permission denied (a full disk is exit 3)
        raise InvalidInput(
            "--output", path, f"a writable file path in an existing folder ({e.strerror or e})"
        ) from e


@app.command()
def deploy(
    files: ComposeFilesOption = None,
    env: EnvOption = None,
    env_file: Annotated[
        str | None,
        typer.Option(
            "--env-file",
            metavar="FILE",
            help="Where to write the ports (default: .env.ports beside the compose file).",
            show_default=False,
        ),
    ] = None,
    output: OutputFile = None,
    wait: Annotated[
        float, typer.Option("--wait", metavar="SECONDS", help="How long each port may take to answer.")
    ] = 60.0,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the quick fix: allocate, write .env.ports and the override, compose up, verify.

    Every published port that something else holds is moved to a free one; the stack is
    started with `docker compose up -d`; each TCP port must then answer. Running it again
    changes nothing. Exits 1 if a port does not answer, 3 if Docker is unreachable.

    Example: portctl deploy -f docker-compose.production.yml
    """
    from portctl.deploy import deploy as run_deploy
    from portctl.holders import HostPorts

    with handled(as_json):
        project = require_project(files)
        with opened(store) as ctx:
            host = HostPorts()
            report = run_deploy(
                ctx.allocator(host.docker),
                project,
                environment=env,
                env_file=env_file,
                override_file=output,
                wait=wait,
                host=host,
            )
        for notice in report.notices:
            note(f"note: {notice}")

        def human() -> str:
            rows = [
                [
                    sp.name,
                    sp.mapping.service,
                    sp.declared,
                    r.allocation.port,
                    "moved" if r.allocation.port != sp.declared else "as declared",
                ]
                for sp, r in report.allocations
            ]
            files_line = [f"{report.env_file}: {'written' if report.env_written else 'unchanged'}"]
            if report.override_file:
                files_line.append(
                    f"{report.override_file}: {'written' if report.override_written else 'unchanged'}"
                )
            probes = [
                [p.name, f"{p.port}/{p.protocol}", "answers" if p.answered else "NO ANSWER", p.detail]
                for p in report.probes
            ]
            return "\n\n".join(
                [
                    table(["NAME", "SERVICE", "DECLARED", "PORT", ""], rows),
                    "\n".join(files_line),
                    table(["NAME", "PORT", "CHECK", "DETAIL"], probes),
                ]
            )

        data = {
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
            "probes": [p.__dict__ for p in report.probes],
            "compose_output": report.compose_output,
        }
        emit(as_json, data, human, ExitCode.OK if report.ok else ExitCode.CONFLICT)
