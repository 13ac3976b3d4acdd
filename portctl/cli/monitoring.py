"""The serve and metrics commands: the exporter, the status page, the textfile."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import TYPE_CHECKING, Annotated

from portctl.cli._common import EnvOption, JsonOption, StoreOption, handled, opened
from portctl.cli._output import emit, note, wants_json
from portctl.cli._params import Commands, Option
from portctl.errors import InvalidInput

if TYPE_CHECKING:
    from portctl.cli._common import Opened
    from portctl.monitoring.server import Listen

app = Commands(rich_markup_mode=None)

TOKEN_FORM = "a readable file holding the token on one line (e.g. made with: openssl rand -hex 32 > FILE)"  # noqa: S105 - advice, not a secret


@app.command()
def serve(
    listen: Annotated[
        str | None,
        Option(
            "--listen",
            metavar="ADDR",
            help="Where to listen: HOST:PORT, [IPv6]:PORT or PORT (on 127.0.0.1). Default: "
            "127.0.0.1 on the port allocated to the service portctl (standard 9098).",
            show_default=False,
        ),
    ] = None,
    token_file: Annotated[
        str | None,
        Option(
            "--token-file",
            metavar="FILE",
            help="Require 'Authorization: Bearer <token>' for /, /api/status and /metrics; the "
            "token is this file's first line.",
            show_default=False,
        ),
    ] = None,
    refresh: Annotated[
        str, Option("--refresh", metavar="10s", help="How often the status page reloads itself.")
    ] = "10s",
    scan_interval: Annotated[
        str,
        Option(
            "--scan-interval",
            metavar="15s",
            help="How often the host's allocated ports and Docker's containers are scanned for conflicts.",
        ),
    ] = "15s",
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Serve Prometheus /metrics, a status page (/), its JSON (/api/status), /-/healthy and
    /-/ready, until Ctrl-C or SIGTERM.

    Every scrape reads the store afresh within Prometheus' scrape timeout; while the store is
    unreachable the last values it gave stay, marked (portctl_collector_up{collector="store"}
    is 0, the page says since when). Listening beyond loopback is allowed, with a warning:
    the page shows every service, port and holder.

    Example: portctl serve --listen 127.0.0.1:9098
    """
    from portctl.monitoring.server import StatusServer, parse_listen
    from portctl.monitoring.snapshot import Monitor
    from portctl.registry.checks import parse_duration

    with handled(as_json):
        where = parse_listen(listen) if listen is not None else None
        page_refresh = parse_duration(refresh, "--refresh")
        interval = parse_duration(scan_interval, "--scan-interval")
        token = _read_token(token_file) if token_file is not None else None
        stop = threading.Event()  # set by SIGTERM or Ctrl-C, even during start-up
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        with opened(store) as ctx:
            where = where or _allocated(ctx, env)
            monitor = Monitor(ctx.store, ctx.settings)
            server = StatusServer(monitor, where, token=token, refresh=page_refresh, log=note)
            if not where.loopback:
                guard = "a bearer token is required" if token else "give --token-file to require a token"
                note(
                    f"warning: serving on {server.url}, beyond loopback: whoever reaches it sees every "
                    f"service, port and holder; {guard}"
                )
            scanner = monitor.scan_every(interval, stop)
            server.start()
            # The first line on stdout is the address, for scripts that start it with port 0
            # (with --json, the envelope on that one line).
            if wants_json(as_json):
                envelope = {"ok": True, "data": {"url": server.url, "store": ctx.choice.url}, "error": None}
                print(json.dumps(envelope, sort_keys=True))
            else:
                print(f"serving {server.url}")
            sys.stdout.flush()
            note(
                f"portctl serve: {ctx.choice.url}, ports scanned every {interval:g}s; Ctrl-C or SIGTERM stops"
            )
            # In slices: the kernel may deliver SIGTERM to another thread, and Python runs the
            # handler in the main thread only when it runs, which a wait with no timeout never does.
            while not stop.wait(0.5):
                pass
            server.stop()
            scanner.join(timeout=10)
            note("portctl serve: stopped")


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(
            "token_file", path, f"{TOKEN_FORM} ({getattr(e, 'strerror', None) or e})"
        ) from None
    if not token or not token.isprintable() or " " in token:
        raise InvalidInput("token_file", path, f"{TOKEN_FORM}; its first line is empty or not one word")
    return token


def _allocated(ctx: Opened, env: str | None) -> Listen:
    """127.0.0.1 on the port allocated to ``portctl`` (allocating it the first time)."""
    from portctl.errors import StoreUnavailable
    from portctl.monitoring.server import SERVICE, STANDARD_PORTS, Listen

    try:
        result = ctx.allocator().allocate(SERVICE, type="monitoring", environment=env, prefer=STANDARD_PORTS)
    except StoreUnavailable as e:
        raise type(e)(f"{e.message}; or give --listen ADDR to serve without allocating a port") from e
    port = result.allocation.port
    if result.changed:
        why = "its standard port" if port == STANDARD_PORTS[0] else f"{STANDARD_PORTS[0]} was not free"
        note(f"portctl serve: allocated port {port} to portctl ({why})")
    return Listen("127.0.0.1", port)


@app.command()
def metrics(
    textfile: Annotated[
        str | None,
        Option(
            "--textfile",
            metavar="FILE",
            help="Write the exposition to FILE atomically (for node_exporter's textfile collector: "
            "a FILE.prom in its --collector.textfile.directory). Default: print it.",
            show_default=False,
        ),
    ] = None,
    scan: Annotated[
        bool,
        Option("--scan/--no-scan", help="Scan this host's allocated ports for conflicts first."),
    ] = True,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the Prometheus metrics once, or write them for node_exporter's textfile collector.

    The same series as portctl serve's /metrics, without portctl_up (node_exporter's
    node_textfile_mtime_seconds tells how fresh the file is). When the store cannot be read
    the file is still written, with portctl_collector_up{collector="store"} 0, and the
    command exits 3.

    Example: portctl metrics --textfile /var/lib/node_exporter/textfile/portctl.prom
    """
    from portctl.errors import StoreUnavailable
    from portctl.monitoring.metrics import textfile as exposition_text
    from portctl.monitoring.snapshot import Monitor
    from portctl.ports.documents import write_atomically

    with handled(as_json):
        if textfile == "":
            raise InvalidInput("textfile", textfile, "a file to write (e.g. portctl.prom)")
        with opened(store) as ctx:
            monitor = Monitor(ctx.store, ctx.settings, scan_ports=scan)
            monitor.scan()
            snapshot = monitor.snapshot(budget=30.0)  # the store's own timeouts end a read sooner
        text = exposition_text(snapshot)
        if textfile is None and not wants_json(as_json):
            sys.stdout.write(text)
        elif textfile is not None:
            try:
                write_atomically(textfile, text)
            except InvalidInput as e:  # a folder, device or pipe where the file goes
                raise InvalidInput("textfile", textfile, e.expected) from None
            except OSError as e:  # no such folder, permission denied (a full disk is exit 3)
                why = e.strerror or str(e)
                raise InvalidInput("textfile", textfile, f"a file in a writable folder ({why})") from None
        failed = snapshot.sources["store"]
        if not failed.up:
            written = textfile or "the output"
            raise StoreUnavailable(
                f"the store could not be read: {failed.error}; {written} says so "
                '(portctl_collector_up{collector="store"} 0)'
            )
        data = {"path": textfile, "text": None if textfile else text, "store_up": True}
        emit(as_json, data, f"{textfile}: written" if textfile else "")
