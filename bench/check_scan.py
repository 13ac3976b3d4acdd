"""`portctl check` beside `ss -ltnp` and `lsof -iTCP -sTCP:LISTEN -P -n`, in the same run, with
1,000 and 10,000 listening TCP sockets held by one helper process and Docker reachable.

The helper is a Python process (RLIMIT_NOFILE raised) listening on N sockets on 127.0.0.1: every
one on an ephemeral port (bind port 0) except the middle one, which listens on a port allocated
beforehand. portctl refuses to allocate a port something already holds, so that port is taken
from below the kernel's ephemeral range (bind(0) never hands it out), allocated, and then bound
by the helper: `portctl check` has a real conflict to attribute to a process with N fds. Check
runs in a temporary folder (no config file) on a fresh JSON store (PORTCTL_HOST=bench) holding
postgres, redis, that port and, when Docker is reachable, the port a busybox container publishes.

Docker is the daemon at $DOCKER_HOST (or /var/run/docker.sock) when one answers; otherwise, as
root with dockerd installed, a dockerd of this run's own (own socket, data and exec root in a
temporary folder, vfs storage), stopped at the end. Without Docker the run goes on and says so.

Each command runs once untimed, then the commands are interleaved round by round so machine
noise falls on them alike; a run's wall time is time.perf_counter around subprocess.run. `python
-c pass` runs in the same rounds, to show the interpreter's share. Python's bytecode cache goes to
the temporary folder (PYTHONPYCACHEPREFIX, PYTHONDONTWRITEBYTECODE unset), so every timed run
finds portctl compiled, as an installed package is, whatever the environment says.

Targets at 10,000 sockets: check at most 1.5x the wall time of `ss -ltnp`, and at least 2x
faster than lsof. Timing is reported, never asserted; the exit code is 1 only when a command
fails or check names the wrong holder.

    python bench/check_scan.py [--runs 15] [--lsof-runs 15] [--sockets 1000,10000]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from portctl.errors import DockerUnavailable
from portctl.host.containers import docker_endpoint, require_docker

TARGET_SOCKETS = 10_000
TARGET_OVER_SS = 1.5  # check's median at most this many times ss's
TARGET_UNDER_LSOF = 2.0  # lsof's median at least this many times check's
CHECK_CODES = frozenset({0, 1})  # 1: check found a conflict, which this benchmark sets up
CONTAINER = f"portctl-bench-{os.getpid()}"
IMAGE = f"portctl-bench-busybox:{os.getpid()}"
DOCKER_START_TIMEOUT = 60.0
SS = "ss -ltnp"
LSOF = "lsof -iTCP -sTCP:LISTEN -P -n"
CHECK = "portctl check"
BARE = "python -c pass"

# Run as `python -c HELPER N PORT`: N listeners, the middle one on PORT. It waits on stdin, so it
# also ends if this benchmark dies without killing it.
HELPER = """\
import resource, socket, sys
count, port = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
need = count + 64
if soft != resource.RLIM_INFINITY and soft < need:
    top = hard if hard == resource.RLIM_INFINITY else max(hard, need)
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, top))
held = []
for i in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port if i == count // 2 else 0))
    s.listen(8)
    held.append(s)
print("ready", flush=True)
sys.stdin.read()
"""


@dataclass(frozen=True)
class Command:
    name: str
    argv: list[str] | None  # None: the tool is not installed
    runs: int
    codes: frozenset[int] = frozenset({0})
    missing: str = ""  # why argv is None


@dataclass
class Docker:
    endpoint: str  # passed to portctl as DOCKER_HOST, reachable or not
    reachable: bool
    status: str  # one line for the header


@dataclass
class Row:
    sockets: int
    times: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        times = self.times.get(name)
        return statistics.median(times) if times else None


# --- ports and the helper -------------------------------------------------------------------------


def ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Free ports just below the ephemeral range, so no helper's bind(0) can take one first."""
    found = list(itertools.islice((p for p in range(ephemeral_low() - 1, 1024, -1) if bindable(p)), count))
    if len(found) < count:
        raise SystemExit("no free port below the ephemeral range")
    return found


@contextlib.contextmanager
def helper(count: int, port: int) -> Iterator[int]:
    """A process listening on ``count`` sockets, one on ``port``; yields its pid."""
    process = subprocess.Popen(
        [sys.executable, "-c", HELPER, str(count), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise SystemExit(f"the helper did not open {count} listeners (exit code {process.wait()})")
        yield process.pid
    finally:
        process.kill()
        process.wait()


# --- Docker ---------------------------------------------------------------------------------------


def answers(endpoint: str) -> bool:
    try:
        require_docker(endpoint, timeout=2)
    except DockerUnavailable:
        return False
    return True


def reach_docker(stack: contextlib.ExitStack, root: Path) -> Docker:
    """The daemon already running, else one of our own, else a Docker that is not reachable."""
    given = docker_endpoint()
    if answers(given):
        return Docker(given, True, f"Docker: the daemon at {given}")
    if shutil.which("dockerd") is None:
        why = "dockerd is not installed (Debian package docker.io)"
    elif os.geteuid() != 0:
        why = "dockerd needs root to start here"
    else:
        endpoint = stack.enter_context(own_dockerd(root))
        if endpoint is not None:
            return Docker(endpoint, True, f"Docker: a dockerd of this run's own at {endpoint}")
        lines = (root / "dockerd.log").read_text(errors="replace").strip().splitlines()
        why = f"the dockerd started here did not answer ({lines[-1] if lines else 'no log'})"
    return Docker(given, False, f"Docker was NOT reachable: nothing answers at {given} and {why}")


@contextlib.contextmanager
def own_dockerd(root: Path) -> Iterator[str | None]:
    """dockerd on its own socket, data root and exec root (vfs); yields its endpoint or None."""
    root.mkdir()
    endpoint = f"unix://{root}/docker.sock"
    argv = ["dockerd", "--storage-driver", "vfs", "--host", endpoint, "--data-root", str(root / "data")]
    argv += ["--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid")]
    with open(root / "dockerd.log", "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + DOCKER_START_TIMEOUT
        while not answers(endpoint) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        yield endpoint if process.poll() is None and answers(endpoint) else None
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def docker(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": endpoint}
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def busybox_container(endpoint: str, root: Path, port: int) -> Iterator[str]:
    """`busybox httpd` publishing 127.0.0.1:``port``, from an image made with `docker import`;
    yields "" when it runs, else why not. Container and image are removed at the end."""
    busybox = shutil.which("busybox")
    if shutil.which("docker") is None or busybox is None:
        yield "no container: the docker CLI or busybox is not installed (docker.io, busybox-static)"
        return
    rootfs = root / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    with tarfile.open(root / "rootfs.tar", "w") as tar:
        tar.add(rootfs, arcname=".")
    try:
        made = docker(endpoint, "import", str(root / "rootfs.tar"), IMAGE)
        if made.returncode == 0:
            publish = ["-p", f"127.0.0.1:{port}:80"]
            command = ["/bin/busybox", "httpd", "-f", "-p", "80"]
            made = docker(endpoint, "run", "-d", "--name", CONTAINER, *publish, IMAGE, *command)
        yield "" if made.returncode == 0 else f"no container: {made.stderr.strip()}"
    finally:
        docker(endpoint, "rm", "-f", CONTAINER)
        docker(endpoint, "rmi", IMAGE)


# --- the store ------------------------------------------------------------------------------------


def allocate(portctl: str, env: dict[str, str], cwd: str, *args: str) -> None:
    done = subprocess.run(
        [portctl, "allocate", *args], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"portctl allocate {' '.join(args)} failed: {done.stderr.strip()}")


def attribution(portctl: str, env: dict[str, str], cwd: str, ports: dict[int, str]) -> list[str]:
    """Run `portctl check --json` once: what it names as the holder of each of ``ports`` (the
    helper's pid, the container's name), as problems; [] when every one is right."""
    done = subprocess.run(
        [portctl, "check", "--json"], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )
    try:
        findings = json.loads(done.stdout)["data"]["findings"]
    except (ValueError, KeyError, TypeError):
        return [f"portctl check --json exited {done.returncode}: {done.stderr.strip()[:200]}"]
    problems = []
    for port, holder in ports.items():
        named = [
            h.get("container", {}).get("name") or str(h.get("process", {}).get("pid"))
            for f in findings
            if f["port"] == port
            for h in f["conflicts"]
        ]
        if holder not in named:
            problems.append(f"check names {named or 'nothing'} for port {port}, not {holder}")
    return problems


# --- measuring ------------------------------------------------------------------------------------


def tool(name: str, argv: list[str], runs: int, package: str) -> Command:
    if shutil.which(argv[0]) is None:
        return Command(name, None, runs, missing=f"not installed (Debian package {package})")
    return Command(name, argv, runs)


def timed(argv: list[str], env: dict[str, str], cwd: str) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    return (time.perf_counter() - start) * 1000, done.returncode


def measure(row: Row, commands: Sequence[Command], rounds: int, env: dict[str, str], cwd: str) -> None:
    """One untimed run of each command, then ``rounds`` interleaved rounds."""
    for command in commands:
        if command.argv is not None:
            timed(command.argv, env, cwd)
    for i in range(rounds):
        for command in commands:
            if command.argv is None or i >= command.runs:
                continue
            ms, code = timed(command.argv, env, cwd)
            row.times.setdefault(command.name, []).append(ms)
            if code not in command.codes:
                row.errors.append(f"{command.name} exited with code {code}")


def p90(times: list[float]) -> float:
    return statistics.quantiles(times, n=10)[-1] if len(times) > 1 else times[0]


# --- the tables -----------------------------------------------------------------------------------

COLUMNS = (("sockets", 7), ("command", 30), ("runs", 4), ("median ms", 9), ("p90 ms", 8))


def print_header() -> None:
    print("  ".join(f"{name:>{w}}" if i != 1 else f"{name:<{w}}" for i, (name, w) in enumerate(COLUMNS)))
    print("  ".join("-" * w for _, w in COLUMNS))


def print_row(row: Row, commands: Sequence[Command]) -> None:
    for command in commands:
        times = row.times.get(command.name, [])
        head = f"{row.sockets:>7,}  {command.name:<30}"
        if command.argv is None:
            print(f"{head}  {command.missing}")
        else:
            print(f"{head}  {len(times):>4}  {statistics.median(times):>9.1f}  {p90(times):>8.1f}")
    for error in dict.fromkeys(row.errors):
        print(f"  ! {error}")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def ratios(row: Row) -> tuple[float | None, float | None]:
    """check/ss and lsof/check, from the medians."""
    check = row.median(CHECK)
    return ratio(check, row.median(SS)), ratio(row.median(LSOF), check)


def text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def print_ratios(rows: Sequence[Row]) -> None:
    print(f"\n{'sockets':>7}  {'check/ss':>9}  {'lsof/check':>10}")
    for row in rows:
        over_ss, under_lsof = ratios(row)
        print(f"{row.sockets:>7,}  {text(over_ss):>9}  {text(under_lsof):>10}")


def print_verdicts(rows: Sequence[Row]) -> None:
    row = next((r for r in rows if r.sockets == TARGET_SOCKETS), None)
    at = f"at {TARGET_SOCKETS:,} sockets"
    over_ss = verdict(row, CHECK, SS, lambda value: value <= TARGET_OVER_SS)
    under_lsof = verdict(row, LSOF, CHECK, lambda value: value >= TARGET_UNDER_LSOF)
    print(f"target: check at most {TARGET_OVER_SS}x the wall time of ss -ltnp {at} -> {over_ss}")
    print(f"target: check at least {TARGET_UNDER_LSOF:.0f}x faster than lsof {at} -> {under_lsof}")


def verdict(row: Row | None, numerator: str, denominator: str, good: Callable[[float], bool]) -> str:
    """met/MISSED with the ratio of the two medians, and the medians themselves."""
    top, bottom = (row.median(numerator), row.median(denominator)) if row else (None, None)
    value = ratio(top, bottom)
    if value is None or top is None or bottom is None:
        return "not measured"
    return f"{'met' if good(value) else 'MISSED'} ({value:.3f}x: {top:.1f} ms / {bottom:.1f} ms)"


def counts(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more counts of at least 1")
    return values


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of at least 1")
    return int(text)


# --- the run --------------------------------------------------------------------------------------


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    tmp = Path(
        stack.enter_context(tempfile.TemporaryDirectory(prefix="portctl-check-", ignore_cleanup_errors=True))
    )
    cwd = tmp / "cwd"
    cwd.mkdir()
    portctl = shutil.which("portctl", path=os.path.dirname(sys.executable)) or "portctl"
    conflict_port, web_port = free_ports(2)
    found = reach_docker(stack, tmp / "docker")
    unset = ("PORTCTL_CONFIG", "PORTCTL_ENV", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env |= {"PORTCTL_STORE": str(tmp / "store.json"), "PORTCTL_HOST": "bench", "DOCKER_HOST": found.endpoint}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    allocations = [["postgres"], ["redis"], ["legacy-api", "--port", str(conflict_port)]]
    if found.reachable:
        allocations.append(["web", "--port", str(web_port)])
    for service, *port in allocations:
        allocate(portctl, env, str(cwd), "--service", service, *port)
    expected = {conflict_port: "helper"}
    status = found.status
    if found.reachable:
        why_not = stack.enter_context(busybox_container(found.endpoint, tmp / "image", web_port))
        if why_not:
            status += f"; {why_not}"
        else:
            status += f"; container {CONTAINER} publishes 127.0.0.1:{web_port}"
            expected[web_port] = CONTAINER

    print(status)
    print(
        f"host: Linux {platform.release()}, {os.cpu_count()} CPUs, uid {os.geteuid()}; "
        f"Python {platform.python_version()}; check has {len(allocations)} targets, {len(expected)} held"
    )
    commands = [
        tool(SS, SS.split(), args.runs, "iproute2"),
        tool(LSOF, LSOF.split(), min(args.lsof_runs, args.runs), "lsof"),
        Command(CHECK, [portctl, "check"], args.runs, CHECK_CODES),
        Command(BARE, [sys.executable, "-c", "pass"], args.runs),
    ]
    shown = commands[:3]
    print()
    print_header()
    rows = []
    for sockets in args.sockets:
        row = Row(sockets)
        with helper(sockets, conflict_port) as pid:
            holders = {port: str(pid) if who == "helper" else who for port, who in expected.items()}
            row.errors += attribution(portctl, env, str(cwd), holders)
            measure(row, commands, args.runs, env, str(cwd))
        rows.append(row)
        print_row(row, shown)
        sys.stdout.flush()
    bare = [ms for row in rows for ms in row.times.get(BARE, [])]
    if not any(row.errors for row in rows):
        named = " and ".join(
            f"{port} to {'the helper' if who == 'helper' else who}" for port, who in expected.items()
        )
        print(f"\ncheck named the holders right in every row (--json, once per row): {named}")
    print_ratios(rows)
    print(
        f"\ninterpreter start (python -c pass, same rounds): median {statistics.median(bare):.1f} ms, "
        f"p90 {p90(bare):.1f} ms"
    )
    if not found.reachable:
        print("note: Docker was not reachable, so check ran without containers (it prints a notice)")
    print()
    print_verdicts(rows)
    return 1 if any(row.errors for row in rows) else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=positive, default=15, help="timed rounds per row (default 15)")
    parser.add_argument("--lsof-runs", type=positive, default=15, help="lsof runs per row, at most --runs")
    parser.add_argument(
        "--sockets",
        type=counts,
        default=[1_000, TARGET_SOCKETS],
        help="listeners per row (default 1000,10000)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the cleanup below runs
    with contextlib.ExitStack() as stack:
        return run(args, stack)


if __name__ == "__main__":
    sys.exit(main())
