"""The README's exit codes, run: every row of its exit-code table and every exit a command's
documentation promises is checked against a real run of the ``portctl`` script.

The README is parsed, not copied: a reworded or new promise about an exit code fails here until
a case below runs it.
"""

# ruff: noqa: F811 - the CLI fixtures of tests/cli are imported, then taken as parameters

from __future__ import annotations

import fcntl
import os
import pathlib
import re
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from portctl.cli._output import ExitCode
from tests.cli.conftest import (  # noqa: F401 - the CLI fixtures, shared
    Run,
    cli_env,
    free_port,
    run,
    store_path,
)

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()


def exit_table() -> dict[int, str]:
    """The rows of the ``| exit | meaning |`` table."""
    section = README.split("| exit | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (\d) \| (.+?) \|$", section, re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def command_rows() -> dict[str, str]:
    """The commands table: ``portctl NAME`` -> what it does."""
    rows = re.findall(r"^\| `portctl ([a-z -]+)` \| (.+?) \| `", README, re.MULTILINE)
    return dict(rows)


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # free_port() counts TIME_WAIT as free
        sock.bind(("0.0.0.0", free_port()))
        sock.listen(1)
        yield sock.getsockname()[1]


Case = Callable[..., int]


# One case per phrase of the exit-code table: (code, phrase) -> a run giving that code.
def _done(run: Run, **_: object) -> int:
    return run("allocate", "postgres", "--port", free_port()).returncode


def _taken(run: Run, **_: object) -> int:
    port = free_port()
    run("allocate", "postgres", "--port", port)
    return run("allocate", "grafana", "--port", port).returncode


def _check_found(run: Run, tmp_path: pathlib.Path, listener: int, **_: object) -> int:
    (tmp_path / "compose.yml").write_text(f'services:\n  web:\n    image: x\n    ports: ["{listener}:80"]\n')
    return run("check", "-f", "compose.yml").returncode


def _range_used_up(run: Run, tmp_path: pathlib.Path, listener: int, **_: object) -> int:
    (tmp_path / "portctl.toml").write_text(
        f'[types.tiny]\nrange = [{listener}, {listener}]\n[services.x]\ntype = "tiny"\n'
    )
    return run("allocate", "x").returncode


def _not_allocated(run: Run, **_: object) -> int:
    return run("release", "ghost").returncode


def _bad_name(run: Run, **_: object) -> int:
    return run("allocate", "../x").returncode


def _bad_port(run: Run, **_: object) -> int:
    return run("who", "70000").returncode


def _unknown_env(run: Run, **_: object) -> int:
    return run("status", "--env", "nope").returncode


def _unknown_type(run: Run, **_: object) -> int:
    return run("allocate", "x", "--type", "nope").returncode


def _bad_config(run: Run, tmp_path: pathlib.Path, **_: object) -> int:
    (tmp_path / "portctl.toml").write_text("stack = [\n")
    return run("status").returncode


def _bad_url(run: Run, **_: object) -> int:
    return run("--store", "bogus://x", "status").returncode


def _bad_compose(run: Run, tmp_path: pathlib.Path, **_: object) -> int:
    (tmp_path / "compose.yml").write_text('services:\n  web:\n    image: x\n    ports: ["70000:80"]\n')
    return run("check", "-f", "compose.yml").returncode


def _corrupt(run: Run, store_path: pathlib.Path, **_: object) -> int:
    store_path.write_text("{not json")
    return run("status").returncode


def _unreadable(run: Run, store_path: pathlib.Path, **_: object) -> int:
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    run("allocate", "x", "--port", free_port())
    store_path.chmod(0)
    return run("status").returncode


def _output_disk(run: Run, tmp_path: pathlib.Path, **_: object) -> int:
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only filesystem needs root")
    folder = tmp_path / "readonly"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], check=True)
    try:
        return run("env", "-o", folder / ".env.ports").returncode
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _unwritable(run: Run, **_: object) -> int:
    return run("--store", "/proc/portctl-store.json", "allocate", "x").returncode


def _locked(run: Run, store_path: pathlib.Path, **_: object) -> int:
    run("status")
    with open(f"{store_path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return run("allocate", "x", "--port", free_port()).returncode


def _docker(run: Run, tmp_path: pathlib.Path, **_: object) -> int:
    (tmp_path / "compose.yml").write_text(
        f'services:\n  web:\n    image: x\n    ports: ["{free_port()}:80"]\n'
    )
    return run("deploy", "-f", "compose.yml", env={"DOCKER_HOST": "unix:///nonexistent.sock"}).returncode


TABLE_CASES: dict[tuple[int, str], Case] = {
    (0, "done; no conflict"): _done,
    (1, "the port is taken"): _taken,
    (1, "`check` found conflicts"): _check_found,
    (1, "no port is left in the range"): _range_used_up,
    (1, "the service is not allocated"): _not_allocated,
    (2, "a malformed name"): _bad_name,
    (2, "or port"): _bad_port,
    (2, "an unknown environment"): _unknown_env,
    (2, "or type"): _unknown_type,
    (2, "a bad config"): _bad_config,
    (2, "URL"): _bad_url,
    (2, "compose file"): _bad_compose,
    (3, "the store is unreadable"): _unreadable,
    (3, "corrupt"): _corrupt,
    (3, "unwritable"): _unwritable,
    (3, "locked too long"): _locked,
    (3, "or Docker, for a command that needs it"): _docker,
    (3, "the disk of an output file is full or read-only"): _output_disk,
}
# Phrases whose run needs a Docker engine and a compose stack: tests/e2e runs them.
NEEDS_DOCKER = {(1, "a deployed port does not answer")}


def test_the_table_lists_every_exit_code_and_only_those() -> None:
    assert set(exit_table()) == {int(c) for c in ExitCode}


def test_every_phrase_of_the_table_has_a_case() -> None:
    table = exit_table()
    for code, phrase in [*TABLE_CASES, *NEEDS_DOCKER]:
        assert phrase in table[code], (code, phrase)
    for code, meaning in table.items():
        phrases = [p for c, p in [*TABLE_CASES, *NEEDS_DOCKER] if c == code]
        listed = meaning.split(": ", 1)[-1]  # after a heading such as "bad input:"
        for clause in re.split(r"[,;] ", listed):
            assert any(p in clause or clause in p for p in phrases), (code, clause)


def test_the_root_help_says_the_same_codes(run: Run) -> None:
    help_text = " ".join(run("--help", env={"COLUMNS": "200"}).stdout.split())
    assert "Exit codes: 0 ok, 1 conflicts or unhealthy, 2 usage, 3 store unavailable." in help_text


@pytest.mark.parametrize(("code", "phrase"), list(TABLE_CASES), ids=[p for _, p in TABLE_CASES])
def test_each_phrase_of_the_table_exits_with_its_code(
    code: int, phrase: str, run: Run, tmp_path: pathlib.Path, store_path: pathlib.Path, listener: int
) -> None:
    case = TABLE_CASES[code, phrase]
    assert case(run=run, tmp_path=tmp_path, store_path=store_path, listener=listener) == code


# What the commands table (and a command's own section) promises about exit codes.
def _who_free(run: Run, **_: object) -> int:
    return run("who", free_port()).returncode


def _who_allocated(run: Run, **_: object) -> int:
    port = free_port()
    run("allocate", "postgres", "--port", port)
    return run("who", port).returncode


def _who_listening(run: Run, listener: int, **_: object) -> int:
    return run("who", listener).returncode


def _health_unhealthy(run: Run, **_: object) -> int:
    run("register", "ghost", "--port", free_port(), "--check", "tcp")
    return run("health", "ghost").returncode


def _health_healthy(run: Run, **_: object) -> int:
    run("register", "quiet", "--port", free_port(), "--check", "none")
    return run("health", "quiet").returncode


def _verify_critical(run: Run, **_: object) -> int:
    run("register", "ghost", "--port", free_port(), "--check", "tcp")
    return run("verify").returncode


def _cutover_refused(run: Run, **_: object) -> int:
    return run("bluegreen", "cutover", "api", "--to", "green", "--yes").returncode


def _cutover_without_yes(run: Run, **_: object) -> int:
    run("bluegreen", "deploy", "api", "--color", "blue", "--port", free_port(), "--check", "none")
    result = run("bluegreen", "cutover", "api", "--to", "green")
    assert "add --yes to go ahead" in result.stderr
    return result.returncode


def _release_all_without_yes(run: Run, **_: object) -> int:
    run("allocate", "postgres", "--port", free_port())
    result = run("release", "--all")
    assert "add --yes to go ahead" in result.stderr
    return result.returncode


def _allocate_all_with_a_failure(run: Run, tmp_path: pathlib.Path, listener: int, **_: object) -> int:
    (tmp_path / "portctl.toml").write_text(
        f'stack = ["x"]\n[types.tiny]\nrange = [{listener}, {listener}]\n[services.x]\ntype = "tiny"\n'
    )
    return run("allocate", "--all").returncode


def _free_refused(run: Run, listener: int, **_: object) -> int:
    """The port's holder is this test, so portctl's own parent: refused, nothing stopped."""
    return run("free", listener, "--yes").returncode


def _free_nothing(run: Run, **_: object) -> int:
    return run("free", free_port(), "--yes").returncode


def _doctor_held(run: Run, listener: int, **_: object) -> int:
    """Something holds the port asked about: "Address already in use" is a finding to fix."""
    return run("doctor", listener).returncode


def _doctor_clean(run: Run, **_: object) -> int:
    return run("doctor", free_port()).returncode


PROMISES: list[tuple[str, int, Case]] = [
    ("then exit 1 if something holds or claims the port (0 if free)", 0, _who_free),
    ("then exit 1 if something holds or claims the port (0 if free)", 1, _who_allocated),
    ("then exit 1 if something holds or claims the port (0 if free)", 1, _who_listening),
    ("exit 1 if anything does", 1, _who_allocated),
    ("exit 1 on conflicts", 1, _check_found),
    ("exit 1 unless one is healthy", 1, _health_unhealthy),
    ("exit 1 unless one is healthy", 0, _health_healthy),
    ("exit 1 if any is critical", 1, _verify_critical),
    ("exit 1 if refused or lost", 1, _cutover_refused),
    ("Without a terminal, `--yes` is required (exit 2 otherwise)", 2, _cutover_without_yes),
    ("without a terminal it needs `--yes` (exit 2 otherwise)", 2, _release_all_without_yes),
    ("and exits 1 if any could not be allocated", 1, _allocate_all_with_a_failure),
    ("exit 1 if a holder is refused or the port is still held", 1, _free_refused),
    ("exit 1 if a holder is refused or the port is still held", 0, _free_nothing),
    ("exit 1 when something needs fixing", 1, _doctor_held),
    ("exit 1 when something needs fixing", 0, _doctor_clean),
]


def test_every_exit_the_commands_table_promises_has_a_case() -> None:
    promised = [(name, text) for name, text in command_rows().items() if re.search(r"\bexits? \d", text)]
    assert promised, "the commands table promises no exit code"
    for name, text in promised:
        assert any(phrase in text for phrase, _, _ in PROMISES), name


@pytest.mark.parametrize(("phrase", "code", "case"), PROMISES, ids=[f"{c.__name__}" for _, _, c in PROMISES])
def test_each_promise_holds(
    phrase: str,
    code: int,
    case: Case,
    run: Run,
    tmp_path: pathlib.Path,
    store_path: pathlib.Path,
    listener: int,
) -> None:
    assert phrase in " ".join(README.split()), phrase
    assert case(run=run, tmp_path=tmp_path, store_path=store_path, listener=listener) == code
