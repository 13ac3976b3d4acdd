"""The render command: router and Prometheus configuration from the registry."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Annotated

from portctl.cli._common import EnvOption, JsonOption, StoreOption, handled, opened
from portctl.cli._output import InputProblem, emit, note
from portctl.cli._params import Argument, Commands, Option
from portctl.errors import InvalidInput

app = Commands(rich_markup_mode=None)

MONITORING = ("prometheus-rules", "grafana")


@app.command()
def render(
    target: Annotated[
        str,
        Argument(metavar="TARGET", help="nginx, haproxy, prometheus, prometheus-rules or grafana."),
    ],
    output: Annotated[
        str | None,
        Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write it here atomically (only when it changes). Default: print it.",
            show_default=False,
        ),
    ] = None,
    watch: Annotated[
        bool, Option("--watch", help="Keep following the store and re-render on change.")
    ] = False,
    reload: Annotated[
        str | None,
        Option(
            "--reload",
            metavar="CMD",
            help="Run after each change of the file (split like a shell would, run without one); "
            "if it fails, the previous file is put back.",
            show_default=False,
        ),
    ] = None,
    quiet_period: Annotated[
        str,
        Option(
            "--quiet-period",
            metavar="1s",
            help="With --watch: render once the store has been quiet this long, so a burst of "
            "changes causes one reload.",
        ),
    ] = "1s",
    max_wait: Annotated[
        str,
        Option(
            "--max-wait",
            metavar="10s",
            help="With --watch: render at least this often while changes keep coming.",
        ),
    ] = "10s",
    critical_for: Annotated[
        str | None,
        Option(
            "--critical-for",
            metavar="5m",
            help="prometheus-rules: how long an instance is critical before its alert fires (default 5m).",
            show_default=False,
        ),
    ] = None,
    job: Annotated[
        str | None,
        Option(
            "--job",
            metavar="NAME",
            help="prometheus-rules: the scrape job of portctl serve (default portctl).",
            show_default=False,
        ),
    ] = None,
    provisioning: Annotated[
        str | None,
        Option(
            "--provisioning",
            metavar="DIR",
            help="grafana: also write DIR/portctl.yaml, the provider that loads the dashboard "
            "(and the dashboard to DIR/portctl-dashboard.json unless -o says where).",
            show_default=False,
        ),
    ] = None,
    env: EnvOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Render nginx upstreams, HAProxy backends or Prometheus file_sd targets from the registry
    (each service's healthy instances, of its live color for blue-green services), or the
    Prometheus alert rules and the Grafana dashboard of portctl's metrics.

    Example: portctl render nginx -o /etc/nginx/conf.d/upstreams.conf --watch --reload 'nginx -s reload'
    """
    from portctl.registry.checks import parse_duration
    from portctl.routing.render import TARGETS, Follower, install, reload_command
    from portctl.routing.render import render as render_text

    with handled(as_json):
        if target not in (*TARGETS, *MONITORING):
            raise InvalidInput("TARGET", target, "nginx, haproxy, prometheus, prometheus-rules or grafana")
        argv = reload_command(reload)
        for flag, given, owner in (
            ("--critical-for", critical_for, "prometheus-rules"),
            ("--job", job, "prometheus-rules"),
            ("--provisioning", provisioning, "grafana"),
        ):
            if given is not None and target != owner:
                raise InputProblem(
                    flag.lstrip("-").replace("-", "_"), given, f"{flag} goes with {owner} only"
                )
        if target in MONITORING:
            if watch:
                raise InputProblem("watch", True, f"--watch follows the registry; {target} does not read it")
            _render_monitoring(target, output, argv, critical_for, job, provisioning, as_json)
            return
        quiet = parse_duration(quiet_period, "--quiet-period")
        longest = parse_duration(max_wait, "--max-wait")
        if (watch or argv) and not output:
            raise InvalidInput("--output", None, "a file to write (--watch and --reload need --output FILE)")
        with opened(store) as ctx:
            environment = ctx.settings.policy.environment(env)
            if watch and output:
                stop = threading.Event()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, lambda *_: stop.set())
                follower = Follower(
                    ctx.store,
                    target,
                    environment,
                    ctx.settings.host,
                    output,
                    reload=argv,
                    quiet=quiet,
                    max_wait=longest,
                    on_event=note,
                    stop=stop,
                )
                note(
                    f"portctl render: following {ctx.choice.url} ({environment}) into {output}; Ctrl-C stops"
                )
                follower.run()
                note(f"portctl render: stopped; {output} stays as last rendered")
                emit(
                    as_json, {"path": output, "reloads": follower.reloads, "failures": follower.failures}, ""
                )
                return
            text = render_text(ctx.store, target, environment, ctx.settings.host)
        if output is None:
            emit(as_json, {"target": target, "environment": environment, "text": text}, text.rstrip("\n"))
            return
        done = install(output, text, argv)
        said = "unchanged" if not done.changed else "written" + (", reloaded" if done.reloaded else "")
        data = {"path": output, "changed": done.changed, "reloaded": done.reloaded}
        emit(as_json, data, f"{output}: {said}")
        sys.stdout.flush()


def _render_monitoring(
    target: str,
    output: str | None,
    argv: list[str] | None,
    critical_for: str | None,
    job: str | None,
    provisioning: str | None,
    as_json: bool,
) -> None:
    """The alert rules or the dashboard: printed, or installed like any rendered file."""
    import os

    from portctl.routing.render import install

    if target == "prometheus-rules":
        from portctl.monitoring.rules import prometheus_rules

        text = prometheus_rules(critical_for=critical_for or "5m", job="portctl" if job is None else job)
    else:
        from portctl.monitoring.dashboard import grafana_dashboard

        text = grafana_dashboard()
    provider: str | None = None
    if provisioning is not None:
        if not os.path.isdir(provisioning):
            raise InvalidInput(
                "provisioning", provisioning, "an existing folder: Grafana's provisioning/dashboards"
            )
        output = output or os.path.join(provisioning, "portctl-dashboard.json")
        provider = os.path.join(provisioning, "portctl.yaml")
        if os.path.realpath(output) == os.path.realpath(provider):
            raise InvalidInput("output", output, f"a file other than the provider, {provider}")
        if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
            raise InvalidInput(
                "output", output, "a file in an existing folder (Grafana reads the dashboard there)"
            )
    if output is None:
        if argv:
            raise InvalidInput("output", None, "a file to write (--reload needs --output FILE)")
        emit(as_json, {"target": target, "text": text}, text.rstrip("\n"))
        return
    # The dashboard first: a provider is written only once what it points at is there.
    done = install(output, text, argv)
    said = "unchanged" if not done.changed else "written" + (", reloaded" if done.reloaded else "")
    data: dict[str, object] = {"path": output, "changed": done.changed, "reloaded": done.reloaded}
    lines = [f"{output}: {said}"]
    if provisioning is not None and provider is not None:
        from portctl.monitoring.dashboard import grafana_provider

        folder = os.path.dirname(os.path.abspath(output))
        try:
            wrote = install(provider, grafana_provider(folder))
        except InvalidInput as e:
            raise InvalidInput(
                "provisioning", provisioning, f"a folder portctl can write ({e.expected})"
            ) from None
        state = "written" if wrote.changed else "unchanged"
        lines.append(f"{provider}: {state} (loads dashboards from {folder})")
        data["provider"] = {"path": provider, "changed": wrote.changed, "dashboards": folder}
    emit(as_json, data, "\n".join(lines))
