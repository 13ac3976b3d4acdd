"""Port commands: status, allocate, release, env, export, import."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

from portctl import __version__
from portctl.cli._common import (
    ComposeFilesOption,
    EnvOption,
    JsonOption,
    Opened,
    StoreOption,
    confirm,
    handled,
    opened,
    require_project,
)
from portctl.cli._output import ExitCode, InputProblem, emit, exit_code_for, message_of, note, table
from portctl.cli._params import Argument, Commands, Option
from portctl.errors import InvalidInput, PortctlError

if TYPE_CHECKING:  # the library is imported by the commands that run it
    from portctl.ports.allocator import Allocation, AllocationResult

app = Commands(rich_markup_mode=None)

NameArgument = Annotated[
    str | None,
    Argument(metavar="NAME", help="Service name (or --service NAME).", show_default=False),
]
ServiceOption = Annotated[
    str | None,
    Option(
        "--service",
        "-s",
        metavar="NAME",
        help="Service name, e.g. postgres or admin_ui.",
        show_default=False,
    ),
]
OutputOption = Annotated[
    str | None,
    Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Write to FILE atomically instead of stdout.",
        show_default=False,
    ),
]


def _allocation_rows(allocations: list[Allocation], with_host: bool) -> list[list[object]]:
    return [
        [
            a.service,
            a.environment,
            *([a.host] if with_host else []),
            a.port,
            a.protocol,
            a.type,
            a.allocated_at,
        ]
        for a in allocations
    ]


def _allocations_table(allocations: list[Allocation], with_host: bool = False) -> str:
    """The allocations; callers say what an empty list means."""
    headers = [
        "SERVICE",
        "ENV",
        *(["HOST"] if with_host else []),
        "PORT",
        "PROTO",
        "TYPE",
        "ALLOCATED",
    ]
    return table(headers, _allocation_rows(allocations, with_host))


def _nothing_here(ctx: Opened, env: str | None, all_hosts: bool) -> str:
    """What an empty status means: nothing anywhere, or what the store holds elsewhere."""
    where = f"in {ctx.settings.policy.environment(env)}" if env else "in any environment"
    where += "" if all_hosts else f" on {ctx.settings.host}"
    elsewhere = ctx.allocator().allocations(None, all_hosts=True)
    if not elsewhere:
        return f"no allocations yet (try: portctl allocate --service postgres{_env_flag(env)})"
    counts: dict[tuple[str, str], int] = {}
    for a in elsewhere:
        counts[a.environment, a.host] = counts.get((a.environment, a.host), 0) + 1
    shown = ", ".join(f"{n} in {e} on {h}" for (e, h), n in sorted(counts.items()))
    return f"no allocations {where}; the store holds {shown} (see: {_where_to_look(ctx, counts)})"


def _where_to_look(ctx: Opened, counts: dict[tuple[str, str], int]) -> str:
    """The status command that shows what the store holds elsewhere."""
    envs = sorted({e for e, h in counts if h == ctx.settings.host})
    if envs:
        return " or ".join(f"portctl status --env {e}" for e in envs)
    return "portctl status --all-hosts"


def _env_flag(env: str | None) -> str:
    return f" --env {env}" if env else ""


@app.command()
def status(
    env: EnvOption = None,
    all_hosts: Annotated[bool, Option("--all-hosts", help="Show every host in the store.")] = False,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the store in use (and why), this host, and the allocations.

    Example: portctl status --env development
    """
    with handled(as_json), opened(store) as ctx:
        from portctl.host.kernel import kernel_ports

        kernel = kernel_ports()
        allocations = ctx.allocator().allocations(env, all_hosts=all_hosts)
        data = {
            "version": __version__,
            "store": {
                "url": ctx.choice.url,
                "source": ctx.choice.source,
                "capabilities": ctx.store.capabilities.names(),
                "detail": ctx.store.describe(),
            },
            "config": ctx.settings.path,
            "host": ctx.settings.host,
            "default_environment": ctx.settings.policy.default_environment,
            "ephemeral_range": [kernel.ephemeral_low, kernel.ephemeral_high],
            "allocations": [a.to_dict() for a in allocations],
        }

        def human() -> str:
            head = table(
                ["", ""],
                show_header=False,
                rows=[
                    ["store", f"{ctx.choice.url}  (chosen by: {ctx.choice.source})"],
                    ["", ctx.store.describe()],
                    ["config", ctx.settings.path or "none (built-in policy)"],
                    ["host", ctx.settings.host],
                    [
                        "ephemeral",
                        f"{kernel.ephemeral_low}-{kernel.ephemeral_high} (never chosen for you)",
                    ],
                ],
            )
            if not allocations:
                return head + "\n\n" + _nothing_here(ctx, env, all_hosts)
            return head + "\n\n" + _allocations_table(allocations, all_hosts)

        emit(as_json, data, human)


def _describe(result: AllocationResult) -> str:
    a = result.allocation
    text = f"{a.service} ({a.environment}): {a.port}/{a.protocol}  [{result.reason}]"
    if result.previous_port is not None:
        text += f"  moved from {result.previous_port}"
    return text


def _result_data(result: AllocationResult) -> dict[str, object]:
    return {
        **result.allocation.to_dict(),
        "changed": result.changed,
        "reason": result.reason,
        "skipped": list(result.skipped),
        "previous_port": result.previous_port,
    }


@app.command()
def allocate(
    name: NameArgument = None,
    service: ServiceOption = None,
    port: Annotated[
        str | None,
        Option(
            "--port",
            "-p",
            metavar="N",
            help="Ask for this port; refused, naming the holder, if it is taken.",
            show_default=False,
        ),
    ] = None,
    type_: Annotated[
        str | None,
        Option(
            "--type",
            "-t",
            metavar="TYPE",
            help="Service type "
            "whose range to choose from: system, user, database, cache, custom, api, "
            "monitoring, dynamic.",
            show_default=False,
        ),
    ] = None,
    env: EnvOption = None,
    protocol: Annotated[
        str | None,
        Option(
            "--protocol",
            metavar="tcp|udp",
            help="Default: the service's protocol (tcp).",
            show_default=False,
        ),
    ] = None,
    all_: Annotated[
        bool,
        Option(
            "--all",
            help="Allocate every configured service, or with -f every published port of the compose files.",
        ),
    ] = False,
    files: ComposeFilesOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give a service a conflict-free port, or show the one it has.

    The same service and environment always get the same port back. Without --port, portctl
    tries the environment's standard port, then the service's alternative, then the first free
    port of the service type's range, proving each free with a bind test.

    With -f, every published port of the compose files is allocated, trying the declared
    port first and moving off any port that another container or process holds.

    Example: portctl allocate --service postgres --port 5433
    """
    with handled(as_json):
        service = _one_name(name, service)
        if all_:
            if service or port:
                raise InputProblem(
                    "--all", service, "--all allocates every service: give --all alone, or name one service"
                )
            if files:
                _allocate_stack(files, env, store, as_json)
            else:
                _allocate_all(env, store, as_json)
            return
        if files:
            raise InputProblem(
                "-f",
                files[0],
                "-f needs --all: portctl allocate --all -f FILE allocates every published port",
            )
        if service is None:
            raise InvalidInput(
                "NAME", None, "a service name (or --all): portctl allocate postgres, or --service postgres"
            )
        with opened(store) as ctx:
            result = ctx.allocator().allocate(
                service, port=_port(port), type=type_, environment=env, protocol=protocol
            )
        for reason in result.skipped:
            note(f"skipped {reason}")
        emit(as_json, _result_data(result), _describe(result))


def _one_name(name: str | None, service: str | None) -> str | None:
    """NAME or --service NAME, as register, url and health take it; not two different ones."""
    if name and service and name != service:
        raise InvalidInput("--service", service, f"the same name as NAME ({name!r}), or only one of them")
    return name or service


def _allocate_all(env: str | None, store: str | None, as_json: bool) -> None:
    rows: list[dict[str, Any]] = []
    failed = False
    with opened(store) as ctx:
        allocator = ctx.allocator()
        environment = ctx.settings.policy.environment(env)
        for name in ctx.settings.stack_services():
            try:
                rows.append(_result_data(allocator.allocate(name, environment=env)))
            except PortctlError as e:
                if exit_code_for(e) != ExitCode.CONFLICT:
                    raise
                failed = True
                rows.append({"service": name, "error": {"code": e.code, "message": message_of(e)}})

    def human() -> str:
        body = table(
            ["SERVICE", "PORT", "RESULT"],
            [
                [
                    r["service"],
                    r.get("port", "-"),
                    r["error"]["message"] if "error" in r else r["reason"],
                ]
                for r in rows
            ],
        )
        return body + "\n\n" + _where(rows, environment, ctx)

    emit(as_json, rows, human, ExitCode.CONFLICT if failed else ExitCode.OK)


def _where(rows: list[dict[str, Any]], environment: str, ctx: Opened) -> str:
    """The line that names the store the allocations went into."""
    done = sum("error" not in r for r in rows)
    return (
        f"{done} of {len(rows)} service(s) allocated in {environment} on {ctx.settings.host}, "
        f"in {ctx.choice.url} (chosen by: {ctx.choice.source})"
    )


def _allocate_stack(files: list[str], env: str | None, store: str | None, as_json: bool) -> None:
    from portctl.compose.stack import allocate_stack
    from portctl.host.holders import HostPorts

    project = require_project(files)
    host = HostPorts()
    with opened(store) as ctx:
        results = allocate_stack(ctx.allocator(host.docker), project, env, host)
    for notice in host.notices:
        note(f"note: {notice}")
    for _, result in results:
        for reason in result.skipped:
            note(f"{result.allocation.service}: skipped {reason}")
    rows = [
        {**_result_data(r), "compose_service": sp.mapping.service, "declared": sp.declared}
        for sp, r in results
    ]

    def human() -> str:
        return table(
            ["SERVICE", "DECLARED", "PORT", "RESULT"],
            [[r["service"], r["declared"], r["port"], r["reason"]] for r in rows],
        )

    emit(as_json, rows, human)


def _port(value: str | None) -> int | None:
    if value is None:
        return None
    from portctl._validate import port

    return port(value)


@app.command()
def release(
    name: NameArgument = None,
    service: ServiceOption = None,
    all_: Annotated[
        bool, Option("--all", help="Release every allocation of the environment on this host.")
    ] = False,
    yes: Annotated[bool, Option("--yes", "-y", help="With --all: do not ask for confirmation.")] = False,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give a service's port back to the pool; --all gives back every port of the environment.

    Example: portctl release --service redis --env staging

    Example: portctl release --all --env staging --yes
    """
    with handled(as_json):
        service = _one_name(name, service)
        if all_:
            if service:
                raise InputProblem(
                    "--all", service, "--all releases every service: give --all alone, or name one service"
                )
            _release_all(env, yes, store, as_json)
            return
        if service is None:
            raise InvalidInput(
                "NAME", None, "a service name (or --all): portctl release redis, or --service redis"
            )
        with opened(store) as ctx:
            gone = ctx.allocator().release(service, env)
        emit(
            as_json,
            gone.to_dict(),
            f"released {gone.port}/{gone.protocol} from {gone.service} ({gone.environment})",
        )


def _release_all(env: str | None, yes: bool, store: str | None, as_json: bool) -> None:
    with opened(store) as ctx:
        environment = ctx.settings.policy.environment(env)
        allocator = ctx.allocator()
        found = allocator.allocations(environment)
        where = f"{environment} on {ctx.settings.host}, in {ctx.choice.url}"
        if found or not (yes or sys.stdin.isatty()):  # a script needs --yes either way
            confirm(yes, f"release all {len(found)} allocation(s) of {where}?")
        gone = [allocator.release(a.service, environment) for a in found]
    lines = [f"released {a.port}/{a.protocol} from {a.service}" for a in gone]
    lines.append(f"released {len(gone)} allocation(s) of {where}")
    emit(as_json, [a.to_dict() for a in gone], "\n".join(lines))


@app.command()
def env(
    env: EnvOption = None,
    output: OutputOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the environment's ports as dotenv lines (POSTGRES_PORT=5433) for .env.ports.

    Example: portctl env --env staging > .env.ports
    """
    with handled(as_json), opened(store) as ctx:
        environment = ctx.settings.policy.environment(env)
        allocations = ctx.allocator().allocations(environment)
        from portctl.ports.documents import render_env

        text = render_env(allocations, environment, ctx.settings.host)
        if not allocations:
            note(_nothing_here(ctx, environment, all_hosts=False))
        _write_or_print(output, text, as_json, {a.service: a.port for a in allocations})


@app.command("export")
def export_(
    output: OutputOption = None,
    env: EnvOption = None,
    all_hosts: Annotated[bool, Option("--all-hosts", help="Every host, not just this one.")] = False,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write the allocations as port_config.json (documented schema) for review and import.

    Example: portctl export -o port_config.json
    """
    with handled(as_json), opened(store) as ctx:
        allocations = ctx.allocator().allocations(env, all_hosts=all_hosts)
        from portctl.ports.documents import export_document

        document = export_document(allocations)
        _write_or_print(output, json.dumps(document, indent=2) + "\n", as_json, document)


@app.command("import")
def import_(
    file: Annotated[str, Argument(metavar="FILE", help="A port_config.json, or - for stdin.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Record the allocations of a port_config.json in the store: all of them or none.

    Example: portctl import port_config.json
    """
    with handled(as_json):
        source = "stdin" if file == "-" else file
        allocations = _parse_document(_read_input(file), source)
        with opened(store) as ctx:
            results = ctx.allocator().import_allocations(allocations)
        data = [_result_data(r) for r in results]
        emit(as_json, data, _imported(results, ctx.choice.url))


def _parse_document(text: str, source: str) -> list[Allocation]:
    """The allocations of a port_config.json, or an error that says what the file should be."""
    try:
        from portctl.ports.documents import parse_export

        return parse_export(text, source)
    except InvalidInput as e:
        if e.field != source or not isinstance(e.value, str) or e.value not in _JSON_KINDS:
            raise
        raise InputProblem(
            source,
            e.value,
            f"{source} holds a JSON {_JSON_KINDS[e.value]}, not a port_config.json: expected an object "
            'with an "allocations" list (portctl export writes one)',
        ) from None


# Python's names for what a JSON document holds, as JSON calls them.
_JSON_KINDS = {
    "dict": 'object without an "allocations" list',
    "list": "array",
    "str": "string",
    "int": "number",
    "float": "number",
    "bool": "boolean",
    "NoneType": "null",
}


def _imported(results: list[AllocationResult], url: str) -> str:
    new = sum(r.changed for r in results)
    same = len(results) - new
    if not results:
        return "the file holds no allocations: nothing to import"
    if not new:
        return f"nothing to import: all {same} allocation(s) are already in {url} as the file has them"
    kept = f"; {same} were already there as the file has them" if same else ""
    return f"imported {new} allocation(s) into {url}{kept}"


def _read_input(file: str) -> str:
    if file == "-":
        return sys.stdin.read()
    try:
        with open(file, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise _unreadable(file, "it does not exist") from None
    except OSError as e:
        raise _unreadable(file, (e.strerror or str(e)).lower()) from e
    except UnicodeDecodeError as e:
        raise _unreadable(file, "it is not a UTF-8 text file") from e


def _unreadable(file: str, why: str) -> InvalidInput:
    return InputProblem(
        "FILE", file, f"cannot read {file}: {why}; give the path of a port_config.json (or - for stdin)"
    )


def _write_or_print(output: str | None, text: str, as_json: bool, data: object) -> None:
    if output:
        try:
            from portctl.ports.documents import write_atomically

            write_atomically(output, text)
        except OSError as e:
            raise InvalidInput("--output", output, f"a writable path ({e.strerror})") from e
        emit(as_json, {"written": output, "content": data}, f"wrote {output}")
    else:
        emit(as_json, data, text.rstrip("\n"))
