"""Blue-green commands: deploy, cutover, rollback, status."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from portctl.cli._common import (
    AddressOption,
    EnvOption,
    JsonOption,
    StoreOption,
    confirm,
    handled,
    store_flag,
)
from portctl.cli._output import emit, note, table, window_progress
from portctl.cli._params import Argument, Commands, Option

if TYPE_CHECKING:
    from portctl.backends.base import Store
    from portctl.config.settings import Settings
    from portctl.records import LivePointer
    from portctl.routing.bluegreen import BlueGreen, BlueGreenStatus, CutoverResult

app = Commands(
    name="bluegreen",
    help="Blue-green port switching: two colors of a service on two ports, one live pointer "
    "flipped with compare-and-set after a health-gated window.\n\n"
    "Example: portctl bluegreen cutover api --to green --min-healthy 10s --drain 30s --yes",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_UNCOLORED = "the uncolored instances"
NameArgument = Annotated[str, Argument(metavar="NAME", help="The service name.")]
DrainOption = Annotated[
    str,
    Option(
        "--drain",
        metavar="30s",
        help="After the flip, wait this long before reporting done: the longest a client may "
        "still use the old color (0s: do not wait).",
    ),
]


@contextlib.contextmanager
def _bluegreen(flag: str | None, *, deploying: bool = False) -> Iterator[tuple[BlueGreen, Settings]]:
    """A BlueGreen on the chosen store, refused at once if the store lacks compare-and-set;
    SIGINT and SIGTERM end a healthy window (nothing flips) or a drain (the flip stands)."""
    from portctl.routing.bluegreen import BlueGreen

    with _opened(flag, deploying) as (store, settings):
        stop = threading.Event()

        def handler(*_: object) -> None:
            stop.set()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield BlueGreen(store, settings, stop=stop), settings
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


@contextlib.contextmanager
def _opened(flag: str | None, deploying: bool = False) -> Iterator[tuple[Store, Settings]]:
    from portctl.backends import open_store
    from portctl.config.settings import load_settings, resolve_store
    from portctl.routing.bluegreen import DEPLOY_REQUIRED, REQUIRED

    settings = load_settings()
    choice = resolve_store(store_flag(flag), settings)
    store = open_store(choice.url, require=DEPLOY_REQUIRED if deploying else REQUIRED)
    try:
        yield store, settings
    finally:
        store.close()


def _pointer_now(flag: str | None, name: str, env: str | None) -> LivePointer | None:
    """The live pointer as it is now, read before asking (no signal handlers: Ctrl-C at the
    question interrupts as usual)."""
    from portctl.routing.bluegreen import BlueGreen

    with _opened(flag) as (store, settings):
        return BlueGreen(store, settings).pointer(name, env)


def _ask_cutover(yes: bool, flag: str | None, name: str, to: str | None, env: str | None) -> None:
    if yes:
        return
    from portctl.routing.live import other

    pointer = _pointer_now(flag, name, env)
    live = pointer.live if pointer else None
    target = to or other(live)
    if target is None or target == live:
        return  # the cutover itself refuses, saying why
    stays = f"{name} stays on {live}" if live else f"the uncolored instances of {name} keep serving"
    question = f"cut {name} ({_environment(env)}) over from {live or _UNCOLORED} to {target}?"
    confirm(yes, question, f"nothing was changed; {stays}")


def _ask_rollback(yes: bool, flag: str | None, name: str, env: str | None) -> None:
    if yes:
        return
    pointer = _pointer_now(flag, name, env)
    if pointer is None or not pointer.history:
        return  # the rollback itself refuses, saying why
    back = pointer.history[-1].from_color or "the uncolored instances"
    question = (
        f"roll {name} ({_environment(env)}) back from {pointer.live or 'the uncolored instances'} to {back}?"
    )
    confirm(
        yes, question, f"nothing was changed; {name} stays on {pointer.live or 'the uncolored instances'}"
    )


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _environment(env: str | None) -> str:
    from portctl.config.settings import load_settings

    return load_settings().policy.environment(env)


@app.command()
def deploy(
    name: NameArgument,
    color: Annotated[str, Option("--color", metavar="COLOR", help="blue or green.")],
    port: Annotated[
        str | None,
        Option(
            "--port",
            "-p",
            metavar="N",
            help="The color's port (it may already be listening). Default: a free one.",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        str | None,
        Option(
            "--check",
            metavar="CHECK",
            help="tcp (default), http://HOST:{port}/PATH ({port} is the color's port), ttl:15s or none.",
            show_default=False,
        ),
    ] = None,
    address: AddressOption = None,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Allocate a color's port and register it (checked once now). The first color of a new
    service goes live at once; the live color cannot be deployed over.

    Example: portctl bluegreen deploy api --color green --check 'http://127.0.0.1:{port}/health'
    """
    from portctl import _validate
    from portctl.records import check_color
    from portctl.routing.bluegreen import parse_color_check

    with handled(as_json):
        check_color(color)
        spec = parse_color_check(check)
        number = _validate.port(port, "--port") if port is not None else None
        with _bluegreen(store, deploying=True) as (bg, _):
            done = bg.deploy(name, color, port=number, check=spec, address=address, environment=env)
            live = bg.pointer(name, env)
        e, i = done.instance.entry, done.instance
        switch = f"to switch: portctl bluegreen cutover {name} --to {color}"
        if done.live:
            after = f"{color} is live (the first color of {name})"
        elif live is not None and live.live is not None:
            after = f"live color is {live.live}; {switch}"
        else:
            after = f"not live yet (uncolored instances serve); {switch}"
        text = (
            f"deployed {name} {color} ({e.environment}) at {e.address}:{e.port} as {e.id}, check "
            f"{e.check.describe()}: {i.status.value} ({i.output}); {after}"
        )
        emit(as_json, done.to_dict(), text)


def _result_text(r: CutoverResult) -> str:
    old = r.from_color or "the uncolored instances"
    new = r.to_color or "the uncolored instances"
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
        Option(
            "--to",
            metavar="COLOR",
            help="The color to switch to (default: the other one).",
            show_default=False,
        ),
    ] = None,
    min_healthy: Annotated[
        str,
        Option(
            "--min-healthy",
            metavar="10s",
            help="The target must pass every check for this long, and once more right before the flip.",
        ),
    ] = "10s",
    drain: DrainOption = "30s",
    yes: Annotated[bool, Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Switch a service's live color after a health-gated window; exit 1 if refused or lost.

    Example: portctl bluegreen cutover api --to green --min-healthy 10s --drain 30s --yes
    """
    from portctl.records import check_color
    from portctl.routing.bluegreen import parse_window

    with handled(as_json):
        if to is not None:
            check_color(to, "--to")
        window = parse_window(min_healthy, "--min-healthy")
        wait = parse_window(drain, "--drain")
        _ask_cutover(yes, store, name, to, env)
        with _bluegreen(store) as (bg, _), window_progress(window) as progress:
            result = bg.cutover(
                name, to=to, min_healthy=window, drain=wait, environment=env, progress=progress
            )
        emit(as_json, result.to_dict(), _result_text(result))


@app.command()
def rollback(
    name: NameArgument,
    drain: DrainOption = "30s",
    yes: Annotated[bool, Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Undo the last flip: back to the previous color, which stayed registered.

    Example: portctl bluegreen rollback api --yes
    """
    from portctl.routing.bluegreen import parse_window

    with handled(as_json):
        wait = parse_window(drain, "--drain")
        _ask_rollback(yes, store, name, env)
        with _bluegreen(store) as (bg, _):
            result = bg.rollback(name, drain=wait, environment=env, progress=note)
        emit(as_json, result.to_dict(), _result_text(result))


def _status_text(s: BlueGreenStatus) -> str:
    p = s.pointer
    if p is None or p.live is None:
        head = f"{s.service} ({s.environment}): no color is live; the uncolored instances serve"
    else:
        head = f"{s.service} ({s.environment}): {p.live} is live since {_when(p.changed_at)} by {p.actor}"
    rows = []
    for c in s.colors:
        shown = c.instances or ()
        if not shown:
            rows.append([c.color, c.state, c.port or "-", "-", "-", ""])
        for i in shown:
            e = i.entry
            rows.append([c.color, c.state, e.port, f"{e.id} {e.address}:{e.port}", i.status.value, i.output])
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
    """Both colors of a service: ports, instances and health, which is live, and the history
    of cutovers.

    Example: portctl bluegreen status api
    """
    with handled(as_json), _bluegreen(store) as (bg, _):
        found = bg.status(name, env)
        emit(as_json, found.to_dict(), _status_text(found))
