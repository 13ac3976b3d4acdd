"""Registry commands: register, deregister, services, health, ttl, verify, agent, url."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any

from portctl.cli._common import (
    AddressOption,
    ComposeFilesOption,
    EnvOption,
    JsonOption,
    Opened,
    StoreOption,
    handled,
    opened,
)
from portctl.cli._output import ExitCode, InputProblem, emit, message_of, note, table
from portctl.cli._params import Argument, Commands, Exit, Option
from portctl.cli.resolve import ConfirmationsOption, DryRunOption, RedeployOption, make_resolver, report_lines
from portctl.errors import InvalidInput

if TYPE_CHECKING:
    from portctl.operations.resolve import Resolver
    from portctl.registry.entries import Instance, Registry

app = Commands(rich_markup_mode=None)

IdArgument = Annotated[str, Argument(metavar="ID", help="The instance id, as `portctl services` shows it.")]


def _registry(ctx: Opened) -> Registry:
    from portctl.registry.entries import Registry

    return Registry(ctx.store, ctx.settings)


def _meta(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key or not key.replace("_", "").replace("-", "").isalnum():
            raise InvalidInput("--meta", pair, "KEY=VALUE with a key of letters, digits, '_' or '-'")
        out[key] = value
    return out


def _row(i: Instance) -> list[object]:
    e = i.entry
    return [e.service, e.id, f"{e.address}:{e.port}", i.status.value, e.check.describe(), i.output]


def _instances_table(instances: list[Instance]) -> str:
    if not instances:
        return "no registered services (try: portctl register redis)"
    return table(["SERVICE", "ID", "ADDRESS", "STATUS", "CHECK", "OUTPUT"], [_row(i) for i in instances])


@app.command()
def register(
    name: Annotated[str, Argument(metavar="NAME", help="The service name.")],
    port: Annotated[
        str | None,
        Option(
            "--port",
            "-p",
            metavar="N",
            help="Its port. Default: its allocation in this environment.",
            show_default=False,
        ),
    ] = None,
    address: AddressOption = None,
    instance_id: Annotated[
        str | None,
        Option(
            "--id",
            metavar="ID",
            help="Instance id (default NAME-HOST-PORT); register several instances with different ids.",
            show_default=False,
        ),
    ] = None,
    tags: Annotated[
        list[str] | None, Option("--tag", metavar="T", help="A tag (repeatable).", show_default=False)
    ] = None,
    meta: Annotated[
        list[str] | None,
        Option(
            "--meta",
            metavar="K=V",
            help="Metadata (repeatable); meta scheme=postgresql sets the URL scheme.",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        str | None,
        Option(
            "--check",
            metavar="CHECK",
            help="tcp (default), http://HOST:PORT/PATH, ttl:15s or none.",
            show_default=False,
        ),
    ] = None,
    interval: Annotated[
        str | None,
        Option("--interval", metavar="5s", help="How often the agent checks.", show_default=False),
    ] = None,
    timeout: Annotated[
        str | None, Option("--timeout", metavar="2s", help="Check timeout.", show_default=False)
    ] = None,
    deregister_after: Annotated[
        str | None,
        Option(
            "--deregister-after",
            metavar="10m",
            help="Remove the entry after it has been critical this long.",
            show_default=False,
        ),
    ] = None,
    successes_before_passing: Annotated[
        str,
        Option(
            "--successes-before-passing",
            metavar="N",
            help="Flap damping: passing results in a row before it turns passing.",
        ),
    ] = "1",
    failures_before_critical: Annotated[
        str,
        Option(
            "--failures-before-critical",
            metavar="N",
            help="Flap damping: failures in a row before it turns critical.",
        ),
    ] = "1",
    lease: Annotated[
        str | None,
        Option(
            "--lease",
            metavar="30s",
            help="The entry vanishes unless kept alive within this time, by --keep-alive or "
            "portctl agent (an etcd lease; a TTL in the JSON store).",
            show_default=False,
        ),
    ] = None,
    keep_alive: Annotated[
        bool,
        Option(
            "--keep-alive",
            help="Stay in the foreground keeping the lease alive; Ctrl-C or SIGTERM deregisters.",
        ),
    ] = False,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register a service instance with a health check; the check runs once now.

    Example: portctl register redis --check tcp --interval 5s

    Example: portctl register api --lease 30s --keep-alive
    """
    from portctl import _validate
    from portctl.registry.checks import parse_check, parse_duration
    from portctl.registry.health import run_check

    with handled(as_json):
        spec = parse_check(
            check,
            interval=interval,
            timeout=timeout,
            deregister_after=deregister_after,
            successes_before_passing=successes_before_passing,
            failures_before_critical=failures_before_critical,
        )
        number = _validate.port(port, "--port") if port is not None else None
        seconds = parse_duration(lease, "--lease") if lease is not None else None
        if keep_alive and seconds is None:
            raise InputProblem("--keep-alive", None, "--keep-alive keeps a lease alive: give --lease 30s too")
        with opened(store) as ctx:
            registry = _registry(ctx)
            granted = time.monotonic()  # the lease starts no earlier than this (the keeper's clock)
            found = registry.register(
                name,
                port=number,
                address=address,
                instance_id=instance_id,
                tags=tags or (),
                meta=_meta(meta),
                check=spec,
                environment=env,
                probe=run_check,
                lease=seconds,
            )
            e = found.entry
            text = (
                f"registered {e.id}: {e.service} ({e.environment}) at {e.address}:{e.port}, check "
                f"{e.check.describe()}: {found.status.value} ({found.output})"
            )
            if not keep_alive:
                emit(as_json, found.to_dict(), text)
                return
            emit(as_json, found.to_dict(), text)
            sys.stdout.flush()
            _keep_registered(registry, found, granted)


def _keep_registered(registry: Registry, instance: Instance, granted: float) -> None:
    """Renew the lease every third of it until SIGTERM or Ctrl-C, then deregister."""
    from portctl.registry.leases import LeaseKeeper

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lease = instance.entry.lease or 1.0
    note(f"keeping {instance.entry.id} alive (lease {lease:g}s); Ctrl-C or SIGTERM deregisters")
    try:
        kept = LeaseKeeper(registry).keep(
            instance,
            stop,
            on_unreachable=lambda e: note(f"could not renew the lease: {message_of(e)}; trying again"),
            on_rewritten=lambda i: note(f"the lease of {i.entry.id} had run out; registered it again"),
            renewed_at=granted,
        )
    except KeyboardInterrupt:
        kept = True
    if not kept:
        note(f"{instance.entry.id} was deregistered elsewhere; stopping")
        return
    registry.deregister(instance.entry.id, instance.entry.environment)
    note(f"deregistered {instance.entry.id}")


@app.command()
def deregister(
    instance_id: IdArgument,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a registered instance and its health.

    Example: portctl deregister redis-web-1-6379
    """
    with handled(as_json), opened(store) as ctx:
        gone = _registry(ctx).deregister(instance_id, env)
        emit(as_json, gone.to_dict(), f"deregistered {gone.id} ({gone.service}, {gone.environment})")


@app.command()
def services(
    env: EnvOption = None,
    all_envs: Annotated[bool, Option("--all-envs", help="Every environment.")] = False,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """List registered instances with their health.

    Example: portctl services --env staging
    """
    with handled(as_json), opened(store) as ctx:
        found = _registry(ctx).instances(environment=env, all_environments=all_envs)
        emit(as_json, [i.to_dict() for i in found], _instances_table(found))


@app.command()
def health(
    name: Annotated[str, Argument(metavar="NAME", help="The service name.")],
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a service's instances and health; exit 1 unless one of them is healthy.

    Example: portctl health postgres
    """
    from portctl.errors import ServiceNotFound
    from portctl.registry.entries import Status

    with handled(as_json), opened(store) as ctx:
        registry = _registry(ctx)
        found = registry.instances(name, env)
        if not found:
            known = sorted({i.entry.service for i in registry.instances(environment=env)})
            raise ServiceNotFound(name, known, f"registered in {ctx.settings.policy.environment(env)}")
        healthy = any(i.status != Status.CRITICAL for i in found)
        emit(
            as_json,
            [i.to_dict() for i in found],
            _instances_table(found),
            ExitCode.OK if healthy else ExitCode.CONFLICT,
        )


@app.command()
def ttl(
    state: Annotated[str, Argument(metavar="pass|warn|fail", help="The new status.")],
    instance_id: IdArgument,
    output: Annotated[str, Option("--note", metavar="TEXT", help="Output to record.")] = "",
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Report a TTL check's status; it holds for one TTL period.

    Example: portctl ttl pass worker-web-1-7001
    """
    from portctl.registry.entries import Status

    states = {"pass": Status.PASSING, "warn": Status.WARNING, "fail": Status.CRITICAL}
    with handled(as_json):
        if state not in states:
            raise InvalidInput("state", state, "pass, warn or fail")
        with opened(store) as ctx:
            found = _registry(ctx).ttl(instance_id, states[state], output, env)
        emit(
            as_json, found.to_dict(), f"{found.entry.id}: {found.status.value} for {found.entry.check.ttl:g}s"
        )


@app.command()
def verify(
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check every registered service now; exit 1 if any is critical.

    TCP and HTTP checks run now (and are recorded, with flap damping); TTL checks report their
    last status. It replaces a hand-written verify_deployment_status.sh.

    Example: portctl verify --env production
    """
    from portctl.registry.entries import Status

    with handled(as_json), opened(store) as ctx:
        rows: list[dict[str, Any]] = [v.to_dict() for v in _registry(ctx).verify(env)]
        critical = [r for r in rows if r["status"] == Status.CRITICAL.value]
        if not rows:
            note("no registered services to verify (try: portctl register NAME)")

        def human() -> str:
            body = table(
                ["SERVICE", "ID", "ADDRESS", "STATUS", "OUTPUT"],
                [
                    [r["service"], r["id"], f"{r['address']}:{r['port']}", r["status"], r["output"]]
                    for r in rows
                ],
            )
            return body + f"\n\n{len(rows) - len(critical)} of {len(rows)} healthy"

        emit(as_json, rows, human, ExitCode.CONFLICT if critical else ExitCode.OK)


@app.command()
def agent(
    env: EnvOption = None,
    once: Annotated[bool, Option("--once", help="Run one pass and exit.")] = False,
    zombie_grace: Annotated[
        str,
        Option(
            "--zombie-grace",
            metavar="60s",
            help="How long an entry "
            "whose port stopped listening (or whose owner exited) stays before removal.",
        ),
    ] = "60s",
    resolve: Annotated[
        bool,
        Option(
            "--resolve",
            help="Also move services off ports foreign holders took while they were not running "
            "(as portctl resolve does, confirmed over --confirmations passes).",
        ),
    ] = False,
    resolve_every: Annotated[
        str, Option("--resolve-every", metavar="5s", help="With --resolve: how often to look.")
    ] = "5s",
    files: ComposeFilesOption = None,
    confirmations: ConfirmationsOption = 3,
    redeploy: RedeployOption = False,
    dry_run: DryRunOption = False,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the health checks of this host's services, keep TTLs honest, remove zombies.

    For stores that do not run checks themselves (the JSON file). Runs until interrupted.
    With --resolve it also resolves port conflicts by itself (see portctl resolve): -f gives
    the compose files whose .env.ports and override follow a move.

    Example: portctl agent --zombie-grace 2m
    """
    from portctl.registry.agent import Agent
    from portctl.registry.checks import parse_duration

    with handled(as_json):
        grace = parse_duration(zombie_grace, "--zombie-grace")
        every = parse_duration(resolve_every, "--resolve-every")
        with opened(store) as ctx:
            worker = Agent(_registry(ctx), environment=env, all_environments=env is None, zombie_grace=grace)
            resolvers = []
            if resolve:
                # Like the checks, every environment unless one is given; a compose project's
                # files belong to one environment (the given one, or the default).
                environments = [env] if env or files else list(ctx.settings.policy.environments)
                resolvers = [
                    make_resolver(
                        ctx,
                        files,
                        e,
                        confirmations=confirmations,
                        dry_run=dry_run,
                        redeploy=redeploy,
                        actor="portctl agent --resolve",
                        again=not once,
                    )
                    for e in environments
                ]
            elif files or redeploy or dry_run:
                raise InputProblem(
                    "--resolve", None, "-f, --redeploy and --dry-run go with --resolve: add it"
                )
            if once:
                report = worker.run_once()
                data = {
                    "checked": [[i, s.value] for i, s in report.checked],
                    "deregistered": [list(d) for d in report.deregistered],
                    "rewritten": report.rewritten,
                }
                lines = [f"{i}: {s.value}" for i, s in report.checked]
                lines += [f"deregistered {i}: {why}" for i, why in report.deregistered]
                lines += [f"registered {i} again: its lease had run out" for i in report.rewritten]
                if resolvers:
                    from portctl.operations.resolve import resolve as resolve_now

                    resolved = [resolve_now(r) for r in resolvers]
                    data["resolve"] = {
                        r.environment: x.to_dict() for r, x in zip(resolvers, resolved, strict=True)
                    }
                    lines += [line for x in resolved for line in report_lines(x)]
                emit(as_json, data, "\n".join(lines) or "nothing to check on this host")
                return
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            doing = " and resolving port conflicts" if resolvers else ""
            where = f"{ctx.settings.host}'s services{doing} in {ctx.choice.url}"
            note(f"portctl agent: checking {where}; Ctrl-C stops")
            broken: list[str] = []
            if resolvers:
                _start_resolving(resolvers, stop, every, broken)
            try:
                worker.run(stop)
            except KeyboardInterrupt:
                stop.set()
            if broken:
                raise Exit(1)


def _start_resolving(
    resolvers: list[Resolver], stop: threading.Event, every: float, broken: list[str]
) -> threading.Thread:
    """The resolvers' passes, every ``every`` seconds beside the checks, each move on stderr.
    An error that is not portctl's own stops the whole agent (exit 1), saying so in one line:
    an agent that goes on checking while it no longer resolves would look as if it did."""
    from portctl.errors import PortctlError
    from portctl.host.holders import HostPorts

    def passes() -> None:
        while not stop.is_set():
            try:
                host = HostPorts()  # one scan of the host per pass, for every environment
                for resolver in resolvers:
                    for line in report_lines(resolver.run_once(host)):
                        note(f"resolve: {line}")
            except PortctlError as e:
                note(f"resolve: {message_of(e)}; trying again")
            except Exception as e:  # noqa: BLE001 - said in one line, then the agent stops (exit 1)
                broken.append(repr(e))
                note(f"resolve: stopped by an unexpected error ({e!r}); the agent stops")
                stop.set()
                return
            stop.wait(every)

    thread = threading.Thread(target=passes, name="portctl-resolve", daemon=True)
    thread.start()
    return thread


@app.command()
def url(
    name: Annotated[str, Argument(metavar="NAME", help="The service name.")],
    scheme: Annotated[
        str | None,
        Option(
            "--scheme",
            metavar="SCHEME",
            help="URL scheme (default: the service's, e.g. postgresql, redis, http).",
            show_default=False,
        ),
    ] = None,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a healthy instance's URL, for shell scripts.

    Example: portctl url redis
    """
    from portctl.discovery import ServiceDiscovery

    with handled(as_json), opened(store) as ctx:
        chosen = ctx.settings.policy.environment(env)  # refused as --env, before any lookup
        with ServiceDiscovery(
            ctx.store, environment=chosen, settings=ctx.settings, watch=False, only=[name]
        ) as discovery:
            found = discovery.get_service_url(name, scheme=scheme)
            stale = discovery.stale
        if stale is not None:
            note(f"note: the store is unreachable; this answer is {stale:.0f}s old")
        emit(as_json, {"service": name, "url": found, "stale": stale}, found)
