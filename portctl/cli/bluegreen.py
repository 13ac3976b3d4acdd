"""Blue-green commands: deploy, cutover, rollback, status."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from portctl.cli._common import AddressOption, EnvOption, JsonOption, StoreOption, handled
from portctl.cli._output import emit, note, table
from portctl.errors import InvalidInput

if TYPE_CHECKING:
    from portctl.bluegreen import BlueGreen, BlueGreenStatus, CutoverResult
    from portctl.config import Settings

app = typer.Typer(
    name="bluegreen",
    help="Blue-green port switching: two colours of a service on two ports, one live pointer "
    "flipped with compare-and-set after a health-gated window.\n\n"
    "Example: portctl bluegreen cutover api --to green --min-healthy 10s --drain 30s --yes",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="The service name.")]
DrainOption = Annotated[
    str,
    typer.Option(
        "--drain",
        metavar="30s",
        help="After the flip, wait this long before reporting done: the longest a client may "
        "still use the old colour (0s: do not wait).",
    ),
]


@contextlib.contextmanager
def _bluegreen(store_flag: str | None, *, deploying: bool = False) -> Iterator[tuple[BlueGreen, Settings]]:
    """A BlueGreen on the chosen store, refused at once if the store lacks compare-and-set;
    SIGINT and SIGTERM end a healthy window (nothing flips) or a drain (the flip stands)."""
    from portctl.backends import open_store
    from portctl.bluegreen import DEPLOY_REQUIRED, REQUIRED, BlueGreen
    from portctl.config import load_settings, resolve_store

    settings = load_settings()
    choice = resolve_store(store_flag, settings)
    store = open_store(choice.url, require=DEPLOY_REQUIRED if deploying else REQUIRED)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield BlueGreen(store, settings, stop=stop), settings
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        store.close()


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _environment(env: str | None) -> str:
    from portctl.config import load_settings

    return load_settings().policy.environment(env)


def _confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInput("--yes", None, "--yes to go ahead without a terminal to confirm on")
    if not typer.confirm(question, default=False, err=True):
        raise typer.Exit(1)


@app.command()
def deploy(
    name: NameArgument,
    color: Annotated[str, typer.Option("--color", metavar="COLOR", help="blue or green.")],
    port: Annotated[
        str | None,
        typer.Option(
            "--port",
            "-p",
            metavar="N",
            help="The colour's port (it may already be listening). Default: a free one.",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        str | None,
        typer.Option(
            "--check",
            metavar="CHECK",
            help="tcp (default), http://HOST:{port}/PATH ({port} is the colour's port), ttl:15s or none.",
            show_default=False,
        ),
    ] = None,
    address: AddressOption = None,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Allocate a colour's port and register it (checked once now). The first colour of a new
    service goes live at once; the live colour cannot be deployed over.

    Example: portctl bluegreen deploy api --color green --check 'http://127.0.0.1:{port}/health'
    """
    from portctl import _validate
    from portctl.bluegreen import check_color, parse_colour_check

    with handled(as_json):
        check_color(color)
        spec = parse_colour_check(check)
        number = _validate.port(port, "--port") if port is not None else None
        with _bluegreen(store, deploying=True) as (bg, _):
            done = bg.deploy(name, color, port=number, check=spec, address=address, environment=env)
            live = bg.pointer(name, env)
        e, i = done.instance.entry, done.instance
        switch = f"to switch: portctl bluegreen cutover {name} --to {color}"
        if done.live:
            after = f"{color} is live (the first colour of {name})"
        elif live is not None and live.live is not None:
            after = f"live colour is {live.live}; {switch}"
        else:
            after = f"not live yet (uncoloured instances serve); {switch}"
        text = (
            f"deployed {name} {color} ({e.environment}) at {e.address}:{e.port} as {e.id}, check "
            f"{e.check.describe()}: {i.status.value} ({i.health.output}); {after}"
        )
        emit(as_json, done.to_dict(), text)


def _result_text(r: CutoverResult) -> str:
    old = r.from_color or "the uncoloured instances"
    new = r.to_color or "the uncoloured instances"
    text = f"{r.kind} of {r.service} ({r.environment}): {old} -> {new} at {_when(r.flipped_at)} by {r.actor}"
    text += f" after {r.probes} passing check(s)"
    if r.drain:
        text += f"; drained {r.drain:g}s" if r.drained else "; drain interrupted (the flip stands)"
    return text + f"; {old} stays registered (rollback: portctl bluegreen rollback {r.service})"


@app.command()
def cutover(
    name: NameArgument,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="COLOR",
            help="The colour to switch to (default: the other one).",
            show_default=False,
        ),
    ] = None,
    min_healthy: Annotated[
        str,
        typer.Option(
            "--min-healthy",
            metavar="10s",
            help="The target must pass every check for this long, and once more right before the flip.",
        ),
    ] = "10s",
    drain: DrainOption = "30s",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Switch a service's live colour after a health-gated window; exit 1 if refused or lost.

    Example: portctl bluegreen cutover api --to green --min-healthy 10s --drain 30s --yes
    """
    from portctl.bluegreen import check_color, parse_window

    with handled(as_json):
        if to is not None:
            check_color(to, "--to")
        window = parse_window(min_healthy, "--min-healthy")
        wait = parse_window(drain, "--drain")
        _confirm(yes, f"cut {name} ({_environment(env)}) over to {to or 'the other colour'}?")
        with _bluegreen(store) as (bg, _):
            result = bg.cutover(name, to=to, min_healthy=window, drain=wait, environment=env, progress=note)
        emit(as_json, result.to_dict(), _result_text(result))


@app.command()
def rollback(
    name: NameArgument,
    drain: DrainOption = "30s",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Undo the last flip: back to the previous colour, which stayed registered.

    Example: portctl bluegreen rollback api --yes
    """
    from portctl.bluegreen import parse_window

    with handled(as_json):
        wait = parse_window(drain, "--drain")
        _confirm(yes, f"roll {name} ({_environment(env)}) back to its previous colour?")
        with _bluegreen(store) as (bg, _):
            result = bg.rollback(name, drain=wait, environment=env, progress=note)
        emit(as_json, result.to_dict(), _result_text(result))


def _status_text(s: BlueGreenStatus) -> str:
    p = s.pointer
    if p is None or p.live is None:
        head = f"{s.service} ({s.environment}): no colour is live; the uncoloured instances serve"
    else:
        head = f"{s.service} ({s.environment}): {p.live} is live since {_when(p.changed_at)} by {p.actor}"
    rows = []
    for c in s.colours:
        shown = c.instances or ()
        if not shown:
            rows.append([c.color, c.state, c.port or "-", "-", "-", ""])
        for i in shown:
            e = i.entry
            rows.append(
                [c.color, c.state, e.port, f"{e.id} {e.address}:{e.port}", i.status.value, i.health.output]
            )
    parts = [head, "", table(["COLOR", "STATE", "PORT", "INSTANCE", "HEALTH", "OUTPUT"], rows)]
    history = p.history if p else ()
    if history:
        flips = [
            [_when(f.at), f.actor, f.from_color or "-", f.to_color or "-", f.kind] for f in reversed(history)
        ]
        parts += ["", table(["TIME", "ACTOR", "FROM", "TO", "KIND"], flips)]
    else:
        parts += ["", "no cutover yet"]
    return "\n".join(parts)


@app.command()
def status(
    name: NameArgument,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Both colours of a service: ports, instances and health, which is live, and the history
    of cutovers.

    Example: portctl bluegreen status api
    """
    with handled(as_json), _bluegreen(store) as (bg, _):
        found = bg.status(name, env)
        emit(as_json, found.to_dict(), _status_text(found))
