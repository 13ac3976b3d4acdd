"""Fixtures that drive the installed ``portctl`` console script the way a user would.

Every test gets its own store (``PORTCTL_STORE`` in ``tmp_path``), runs in ``tmp_path`` so no
``portctl.toml`` is found, and calls itself ``test-host``. Ports are never assumed free: the
helpers here prove a port free with a bind, the way portctl's own bind test does.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

BIN_DIR = os.path.dirname(sys.executable)
PORTCTL = os.path.join(BIN_DIR, "portctl")
HOST = "test-host"
TIMEOUT = 60

# Plain variables a developer may have set that would change what portctl does.
_SCRUBBED = ("PORTCTL_STORE", "PORTCTL_CONFIG", "PORTCTL_ENV", "PORTCTL_HOST", "FORCE_COLOR")

Run = Callable[..., subprocess.CompletedProcess[str]]


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def port_is_free(port: int, protocol: str = "tcp") -> bool:
    """Bind ``port`` on the wildcard addresses as a server would (and as portctl checks)."""
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    targets: list[tuple[socket.AddressFamily, str]] = [(socket.AF_INET, "0.0.0.0")]
    if _ipv6_available():
        targets.append((socket.AF_INET6, "::"))
    for family, address in targets:
        with socket.socket(family, kind) as sock:
            try:
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address, port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(1)
            except OSError:
                return False
    return True


def free_port(candidates: Iterable[int] = range(7100, 8000), exclude: Iterable[int] = ()) -> int:
    """The first of ``candidates`` (default: high 7xxx ports) that is free on this machine."""
    skip = set(exclude)
    for port in candidates:
        if port not in skip and port_is_free(port):
            return port
    pytest.skip("no free port among the candidates on this machine")


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failing command printed on stderr (asserting it is exactly one)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{result.stderr}"
    assert lines[0].startswith("portctl: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def parse_env(text: str) -> dict[str, int]:
    """``portctl env`` output as {VARIABLE: port}; comments and blank lines skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        out[name] = int(value)
    return out


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.json"


@pytest.fixture
def cli_env(store_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(
        {
            "PORTCTL_STORE": str(store_path),
            "PORTCTL_HOST": HOST,
            "PATH": BIN_DIR + os.pathsep + env.get("PATH", ""),
            "NO_COLOR": "1",
            "XDG_CACHE_HOME": str(store_path.parent / "cache"),  # discovery's last-known-good file
        }
    )
    return env


def _merged(base: dict[str, str], extra: dict[str, str | None] | None) -> dict[str, str]:
    env = dict(base)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture
def run(tmp_path: Path, cli_env: dict[str, str]) -> Run:
    """``run("allocate", "--service", "postgres")``: the portctl script, in tmp_path.

    ``env`` adds to (or, with a None value, removes from) the test environment.
    """

    def _run(
        *args: object, env: dict[str, str | None] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PORTCTL, *(str(a) for a in args)],
            cwd=tmp_path,
            env=_merged(cli_env, env),
            input=input,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    return _run


@pytest.fixture
def sh(tmp_path: Path, cli_env: dict[str, str]) -> Run:
    """Run a bash script as a user's shell would, with ``portctl`` on PATH, in tmp_path."""

    def _sh(
        script: str, env: dict[str, str | None] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=_merged(cli_env, env),
            input=input,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    return _sh


@pytest.fixture
def seed_port() -> int:
    return free_port()


@pytest.fixture
def seeded_store(run: Run, store_path: Path, seed_port: int) -> bytes:
    """A store holding one allocation (service ``seed`` on ``seed_port``); its bytes."""
    result = run("allocate", "--service", "seed", "--port", seed_port)
    assert result.returncode == 0, result.stderr
    return store_path.read_bytes()


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port a process on this host (this test) is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


@pytest.fixture
def terminal(tmp_path: Path, cli_env: dict[str, str]) -> Run:
    """``terminal("status", answer="n\\n")``: portctl on a pseudo-terminal (stdin, stdout and
    stderr), as a person runs it; ``answer`` is typed ahead. Output is stdout and stderr
    interleaved, as the terminal shows them (``stderr`` is empty)."""

    def _terminal(
        *args: object, env: dict[str, str | None] | None = None, answer: str = "", columns: int = 120
    ) -> subprocess.CompletedProcess[str]:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        argv = [PORTCTL, *(str(a) for a in args)]
        with subprocess.Popen(
            argv, cwd=tmp_path, env=_merged(cli_env, env), stdin=slave, stdout=slave, stderr=slave
        ) as proc:
            os.close(slave)
            if answer:
                os.write(master, answer.encode())
            output = _read_until_closed(master)
            code = proc.wait(timeout=TIMEOUT)
        os.close(master)
        return subprocess.CompletedProcess(argv, code, output.replace("\r\n", "\n"), "")

    return _terminal


def _read_until_closed(fd: int) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer of the terminal has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


Serve = Callable[[int], subprocess.Popen[bytes]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(port)``: ``python3 -m http.server PORT``, as a user would start one, listening."""
    started: list[subprocess.Popen[bytes]] = []

    def _serve(port: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                assert process.poll() is None, f"http.server could not listen on {port}"
                time.sleep(0.05)
            else:
                return process
        pytest.fail(f"http.server did not listen on {port}")

    yield _serve
    for process in started:
        process.terminate()
        process.wait(10)
