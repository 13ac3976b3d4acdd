"""Every command, under the conditions a new user meets first, ends with an answer, never a
Traceback: a home folder that does not exist, read-only cache and state folders, no Docker
engine, no store extras installed, and a store that is down.

The command list is read from the CLI itself, so a new command without an entry in
``EXAMPLES`` fails here until it is given one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer.main

from portctl.cli import app

from .conftest import PORTCTL
from .test_store_failures import BLOCKER  # the store clients' libraries made unimportable

RUNUSER = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin") or "runuser"
TIMEOUT = shutil.which("timeout", path="/usr/bin:/bin") or "timeout"

# One working example per command: what a user would type first.
EXAMPLES: dict[str, list[str]] = {
    "status": [],
    "allocate": ["--service", "sweep"],
    "release": ["--service", "sweep"],
    "env": [],
    "export": [],
    "import": ["ports.json"],
    "who": ["7999"],
    "doctor": ["7999"],
    "free": ["7999", "--dry-run"],  # never --yes here: whatever holds 7999 on this machine stays
    "check": ["-f", "compose.yml"],
    "override": ["-f", "compose.yml"],
    "deploy": ["-f", "compose.yml", "--wait", "1s"],
    "register": ["sweep", "--port", "7998", "--check", "tcp"],
    "deregister": ["sweep-x"],
    "services": [],
    "health": ["sweep"],
    "ttl": ["pass", "sweep-x"],
    "verify": [],
    "agent": ["--once"],
    "url": ["sweep"],
    "bluegreen deploy": ["sweep", "--color", "blue", "--port", "7997"],
    "bluegreen cutover": ["sweep", "--to", "green", "--min-healthy", "0s", "--drain", "0s", "--yes"],
    "bluegreen rollback": ["sweep", "--drain", "0s", "--yes"],
    "bluegreen status": ["sweep"],
    "render": ["nginx"],
    "migrate": ["--to", "other.json"],
    "metrics": [],
    "serve": ["--listen", "127.0.0.1:0"],  # stopped by SIGTERM after a while (see _run)
    "resolve": ["--confirmations", "1"],
    "events": [],
}
LONG_RUNNING = {"serve": 3}  # seconds it runs before SIGTERM; it must then exit 0, cleanly

COMPOSE = """\
services:
  web:
    image: busybox
    ports: ["7996:80"]
"""

EXPORT = {
    "format": "portctl-ports",
    "schema": 1,
    "generated_at": "2026-11-27T12:00:00Z",
    "allocations": [
        {
            "service": "sweep",
            "environment": "production",
            "host": "test-host",
            "port": 7995,
            "protocol": "tcp",
            "type": "custom",
            "allocated_at": "2026-11-27T11:58:02Z",
        }
    ],
}


def _commands() -> list[str]:
    def walk(command: object, prefix: tuple[str, ...] = ()) -> Iterator[str]:
        children = getattr(command, "commands", None)
        if children is None:
            yield " ".join(prefix)
            return
        for name, child in children.items():
            yield from walk(child, (*prefix, name))

    return sorted(walk(typer.main.get_command(app)))


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A folder any user may read, with a compose file and an export file in it."""
    root = Path(os.path.realpath(os.environ.get("TMPDIR", "/tmp"))) / f"portctl-sweep-{os.getpid()}"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    (root / "compose.yml").write_text(COMPOSE)
    (root / "ports.json").write_text(json.dumps(EXPORT))
    readonly = root / "readonly"
    for sub in ("cache", "state"):
        (readonly / sub).mkdir(parents=True)
    for folder in (readonly / "cache", readonly / "state", readonly):
        folder.chmod(0o555)
    blocker = root / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _base_env() -> dict[str, str]:
    scrubbed = {"PORTCTL_STORE", "PORTCTL_CONFIG", "PORTCTL_ENV", "PORTCTL_HOST", "FORCE_COLOR"}
    scrubbed |= {"XDG_CACHE_HOME", "XDG_STATE_HOME", "DOCKER_HOST", "CONSUL_HTTP_ADDR", "ETCDCTL_ENDPOINTS"}
    env = {k: v for k, v in os.environ.items() if k not in scrubbed}
    env.update(
        {
            "PORTCTL_HOST": "test-host",
            "NO_COLOR": "1",
            "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin",
        }
    )
    return env


def _conditions(root: Path) -> dict[str, tuple[dict[str, str], bool]]:
    """name -> (environment, run as an unprivileged user)."""
    dead = _dead_port()
    return {
        "no home folder": ({"HOME": "/nonexistent"}, True),
        "read-only cache and state": (
            {
                "HOME": "/nonexistent",
                "XDG_CACHE_HOME": str(root / "readonly" / "cache"),
                "XDG_STATE_HOME": str(root / "readonly" / "state"),
            },
            True,
        ),
        "no docker": (
            {"DOCKER_HOST": f"unix://{root}/no-docker.sock", "PORTCTL_STORE": str(root / "nodocker.json")},
            False,
        ),
        "no store extras (etcd)": (
            {"PORTCTL_STORE": f"etcd://127.0.0.1:{dead}", "PYTHONPATH": str(root / "blocker")},
            False,
        ),
        "no store extras (consul)": (
            {"PORTCTL_STORE": f"consul://127.0.0.1:{dead}", "PYTHONPATH": str(root / "blocker")},
            False,
        ),
        "etcd down": ({"PORTCTL_STORE": f"etcd://127.0.0.1:{dead}?timeout=1"}, False),
        "consul down": ({"PORTCTL_STORE": f"consul://127.0.0.1:{dead}?timeout=1"}, False),
    }


@pytest.fixture(scope="module")
def nobody_portctl(workdir: Path) -> str:
    """portctl installed where the unprivileged user ``nobody`` can run it.

    The test interpreter may live under root's home (pyenv), which nobody cannot read, so a
    second install is made from Debian's python3 into a folder anyone may read."""
    if os.geteuid() != 0:
        pytest.skip("running as another user (nobody) needs root")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that the user nobody can run")
    venv = workdir / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    source = Path(__file__).resolve().parents[2]
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return str(venv / "bin" / "portctl")


def _run(
    root: Path, argv: list[str], env: dict[str, str], as_nobody: str | None
) -> subprocess.CompletedProcess[str]:
    seconds = LONG_RUNNING.get(argv[0])
    # timeout sends SIGTERM and, with --preserve-status, exits as the command did.
    stopper = [TIMEOUT, "--preserve-status", "-s", "TERM", str(seconds)] if seconds else []
    command = [*stopper, PORTCTL, *argv]
    if as_nobody:
        assignments = (f"{k}={v}" for k, v in env.items())
        command = [RUNUSER, "-u", "nobody", "--", "env", "-i", *assignments, *stopper, as_nobody, *argv]
    return subprocess.run(
        command,
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_command_has_an_example() -> None:
    assert sorted(EXAMPLES) == _commands()


CONDITIONS = [
    "no home folder",
    "read-only cache and state",
    "no docker",
    "no store extras (etcd)",
    "no store extras (consul)",
    "etcd down",
    "consul down",
]


# The JSON envelope under the conditions where it differs most from the human output.
CASES = [(condition, False) for condition in CONDITIONS] + [("no home folder", True), ("etcd down", True)]


@pytest.mark.parametrize(
    ("condition", "as_json"), CASES, ids=[f"{c}{' --json' if j else ''}" for c, j in CASES]
)
def test_no_command_ends_in_a_traceback(
    request: pytest.FixtureRequest, workdir: Path, condition: str, as_json: bool
) -> None:
    extra, unprivileged = _conditions(workdir)[condition]
    as_nobody = request.getfixturevalue("nobody_portctl") if unprivileged else None
    env = {**_base_env(), **extra}
    runs = {name: [*name.split(), *args, *(["--json"] if as_json else [])] for name, args in EXAMPLES.items()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(
            zip(runs, pool.map(lambda argv: _run(workdir, argv, env, as_nobody), runs.values()), strict=True)
        )
    problems = []
    for name, result in results.items():
        output = result.stdout + result.stderr
        if "Traceback" in output or result.returncode not in (0, 1, 2, 3):
            problems.append(
                f"portctl {' '.join(runs[name])}: exit {result.returncode}: {_last_lines(output)}"
            )
        elif as_json and result.returncode != 0:
            envelope = json.loads(result.stdout)
            if envelope["ok"] or not envelope["error"]["message"]:
                problems.append(f"portctl {' '.join(runs[name])}: envelope {result.stdout[:300]}")
        elif not as_json and result.returncode in (2, 3):
            errors = [line for line in result.stderr.splitlines() if line.startswith("portctl: error: ")]
            if len(errors) != 1:
                problems.append(f"portctl {' '.join(runs[name])}: no one-line error\n{result.stderr[-800:]}")
    assert not problems, f"{condition}:\n\n" + "\n\n".join(problems)


def _last_lines(output: str, count: int = 2) -> str:
    return " | ".join(output.strip().splitlines()[-count:])
