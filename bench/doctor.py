"""`portctl doctor` on the plan's 14-service stack against the commands it replaces, run one
after another in the same run: `lsof -i`, `ss -ltnp`, `docker ps` and `iptables-save`.

The stack (postgres, redis, weaviate, api, admin_ui, grafana, prometheus, nginx on two ports,
the four mcp_* services, a worker and jaeger) is a compose file in a temporary folder whose
published ports are free ports of this machine, each allocated at that port in a fresh JSON
store (PORTCTL_HOST=bench), so doctor runs every check on 14 ports: in use, refused, bind and
mapping. Docker is the daemon at $DOCKER_HOST (or /var/run/docker.sock); when none answers,
doctor and `docker ps` run without it and the header says so. A command that is not installed
is left out of the sum, and the header says that too.

Each command runs once untimed, then the rounds interleave doctor and the four commands, so
machine noise falls on them alike; a run's wall time is time.perf_counter around
subprocess.run, and "the four together" is the sum of one round's four runs. Target: doctor's
median at most the four commands' median together. Timing is reported, never asserted; the
exit code is 1 only when a command fails.

    python bench/doctor.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import free_ports, percentile, positive

from portctl.errors import DockerUnavailable
from portctl.host.containers import docker_endpoint, require_docker

DOCTOR = "portctl doctor -f compose.yml"
TOOLS = ("lsof -i", "ss -ltnp", "docker ps", "iptables-save")
TOGETHER = "the four together"
DOCTOR_CODES = frozenset({0, 1})  # 1: a verdict is fail, which a busy machine may well give
# service -> the container ports it publishes; nginx's two are named by their variables.
STACK: dict[str, tuple[int, ...]] = {
    "postgres": (5432,),
    "redis": (6379,),
    "weaviate": (8080,),
    "api": (8000,),
    "admin_ui": (3000,),
    "grafana": (3000,),
    "prometheus": (9090,),
    "nginx": (80, 443),
    "mcp_weaviate": (8001,),
    "mcp_conductor": (8002,),
    "mcp_memory": (8003,),
    "mcp_tools": (8006,),
    "worker": (),
    "jaeger": (16686,),
}
NGINX_VARIABLES = {80: "NGINX_HTTP_PORT", 443: "NGINX_HTTPS_PORT"}


@dataclass(frozen=True)
class Command:
    name: str
    argv: list[str] | None  # None: not installed
    codes: frozenset[int] = frozenset({0})
    missing: str = ""


@dataclass
class Times:
    runs: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, name: str, ms: float) -> None:
        self.runs.setdefault(name, []).append(ms)


def compose_file(ports: list[int]) -> tuple[str, list[tuple[str, int]]]:
    """The stack's compose text, and (allocation name, host port) for each published port."""
    lines, allocations, free = ["name: bench-stack", "services:"], [], iter(ports)
    for service, targets in STACK.items():
        lines += [f"  {service}:", "    image: busybox"]
        if not targets:
            continue
        lines.append("    ports:")
        for target in targets:
            port = next(free)
            variable = NGINX_VARIABLES.get(target) if service == "nginx" else None
            host = f"${{{variable}:-{port}}}" if variable else str(port)
            lines.append(f'      - "{host}:{target}"')
            allocations.append((variable.removesuffix("_PORT").lower() if variable else service, port))
    return "\n".join(lines) + "\n", allocations


def export(allocations: list[tuple[str, int]]) -> str:
    return json.dumps(
        {
            "format": "portctl-ports",
            "schema": 1,
            "generated_at": "2026-11-27T12:00:00Z",
            "allocations": [
                {
                    "service": name,
                    "environment": "production",
                    "host": "bench",
                    "port": port,
                    "protocol": "tcp",
                    "type": "custom",
                    "allocated_at": "2026-11-27T12:00:00Z",
                }
                for name, port in allocations
            ],
        }
    )


def tool(text: str) -> Command:
    argv = text.split()
    if shutil.which(argv[0]) is None:
        return Command(text, None, missing=f"{argv[0]} is not installed")
    if argv[0] == "iptables-save" and os.geteuid() != 0:
        return Command(text, None, missing="iptables-save needs root")
    # lsof exits 1 when it finds nothing; iptables-save may warn about legacy tables.
    return Command(text, argv, frozenset({0, 1}))


def docker_status() -> tuple[bool, str]:
    endpoint = docker_endpoint()
    try:
        require_docker(endpoint, timeout=3)
    except DockerUnavailable as e:
        return False, f"Docker: not reachable ({e.message}); doctor and docker ps run without it"
    return True, f"Docker: {endpoint}"


def once(command: Command, env: dict[str, str], cwd: str) -> tuple[float, str]:
    """Wall time of one run in ms, and an error line when it failed."""
    assert command.argv is not None
    begun = time.perf_counter()
    done = subprocess.run(command.argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    ms = (time.perf_counter() - begun) * 1000
    if done.returncode not in command.codes:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return ms, f"{command.name}: exit {done.returncode}: {tail[0]}"
    return ms, ""


def measure(commands: list[Command], runs: int, env: dict[str, str], cwd: str) -> Times:
    times = Times()
    present = [c for c in commands if c.argv is not None]
    for command in present:  # untimed: caches warm, bytecode compiled
        _, error = once(command, env, cwd)
        if error:
            times.errors.append(error)
    for _ in range(runs):
        together = 0.0
        for command in present:
            ms, error = once(command, env, cwd)
            times.add(command.name, ms)
            if command.name != DOCTOR:
                together += ms
            if error and error not in times.errors:
                times.errors.append(error)
        times.add(TOGETHER, together)
    return times


def print_table(times: Times, commands: list[Command]) -> None:
    names = [c.name for c in commands if c.argv is not None] + [TOGETHER]
    width = max(len(n) for n in names)
    print(f"{'command':<{width}}  {'median ms':>9}  {'p90 ms':>7}  runs")
    for name in names:
        values = times.runs.get(name, [])
        if values:
            median, p90 = statistics.median(values), percentile(values, 0.9)
            print(f"{name:<{width}}  {median:>9.1f}  {p90:>7.1f}  {len(values)}")


def print_verdict(times: Times) -> None:
    doctor, together = times.runs.get(DOCTOR), times.runs.get(TOGETHER)
    if not doctor or not together:
        return
    ratio = statistics.median(doctor) / statistics.median(together) if statistics.median(together) else 0.0
    met = "met" if ratio <= 1.0 else "MISSED"
    print()
    print(f"{'target':<42}  {'measured':>9}  verdict")
    print(f"{'doctor <= the four commands together':<42}  {ratio:>8.2f}x  {met}")


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="portctl-doctor-", ignore_cleanup_errors=True) as folder:
        tmp = Path(folder)
        text, allocations = compose_file(free_ports(15))
        (tmp / "compose.yml").write_text(text)
        unset = ("PORTCTL_CONFIG", "PORTCTL_ENV", "PYTHONDONTWRITEBYTECODE")
        env = {k: v for k, v in os.environ.items() if k not in unset}
        env |= {"PORTCTL_STORE": str(tmp / "store.json"), "PORTCTL_HOST": "bench", "NO_COLOR": "1"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        portctl = shutil.which("portctl", path=os.path.dirname(sys.executable)) or "portctl"
        imported = subprocess.run(
            [portctl, "import", "-"],
            input=export(allocations),
            check=False,
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if imported.returncode != 0:
            print(f"portctl import failed: {imported.stderr.strip()}")
            return 1
        _, status = docker_status()
        commands = [Command(DOCTOR, [portctl, "doctor", "-f", "compose.yml"], DOCTOR_CODES)]
        commands += [tool(t) for t in TOOLS]
        missing = [c.missing for c in commands if c.argv is None]
        print(status)
        print(
            f"stack: {len(STACK)} services, {len(allocations)} published ports, all allocated; "
            f"{os.cpu_count()} CPUs, uid {os.geteuid()}"
        )
        if missing:
            print(f"left out of the sum: {'; '.join(missing)}")
        print()
        times = measure(commands, args.runs, env, str(tmp))
        print_table(times, commands)
        print_verdict(times)
        for error in times.errors:
            print(f"error: {error}")
        return 1 if times.errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=positive, default=15, help="timed rounds (default 15)")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
