"""Bad input through the real ``portctl`` script: one line naming the field and the accepted form,
the documented exit code, and a store left byte-for-byte as it was.

Exit codes: 0 ok, 1 conflict or not found, 2 usage or bad input, 3 store unavailable or corrupt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import Run, error_line, free_port, parse_env

NAME_FORM = "1-63 characters: lowercase letters, digits, '_' or '-'"
PORT_FORM = "an integer from 1 to 65535"
ENVIRONMENTS = "one of production, development, staging"
TYPES = "one of system, user, database, cache, custom, api, monitoring, dynamic"


def assert_bad_input(result: subprocess.CompletedProcess[str], *mentions: str) -> str:
    """Exit 2, nothing on stdout, one error line on stderr that mentions each of ``mentions``."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    line = error_line(result)
    for text in mentions:
        assert text in line, (text, line)
    return line


# Service names ---------------------------------------------------------------------------

BAD_NAMES = {
    "space": "my service",
    "slash": "a/b",
    "dotdot": "../x",
    "uppercase": "Postgres",
    "64-chars": "a" * 64,
    "trailing-newline": "svcx\n",
}


@pytest.mark.parametrize("command", ["allocate", "release"])
@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_bad_service_name(run: Run, store_path: Path, seeded_store: bytes, command: str, name: str) -> None:
    result = run(command, "--service", name)
    assert_bad_input(result, f"service: {name!r} is not valid", NAME_FORM)
    assert store_path.read_bytes() == seeded_store


@pytest.mark.parametrize("command", ["allocate", "release"])
def test_empty_service_name_is_refused(run: Run, store_path: Path, seeded_store: bytes, command: str) -> None:
    result = run(command, "--service", "")
    line = assert_bad_input(result, "service", NAME_FORM, "''")
    assert "None" not in line
    assert store_path.read_bytes() == seeded_store


def test_empty_service_name_error_shows_the_value_and_form(run: Run, seeded_store: bytes) -> None:
    line = error_line(run("allocate", "--service", ""))
    assert "None" not in line
    assert "''" in line
    assert NAME_FORM in line


def test_missing_service_option(run: Run, store_path: Path, seeded_store: bytes) -> None:
    assert_bad_input(run("allocate"), "--service", "a service name (or --all)")
    assert_bad_input(run("release"), "--service", "a service name")
    assert_bad_input(run("allocate", "--all", "--service", "redis"), "--all", "--all alone")
    assert store_path.read_bytes() == seeded_store


def test_longest_valid_service_name_is_accepted(run: Run) -> None:  # the 64-char one is refused
    name = "a" * 63
    result = run("allocate", "--service", name, "--port", free_port())
    assert result.returncode == 0, result.stderr
    assert "A" * 63 + "_PORT" in parse_env(run("env").stdout)


# Ports -----------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["0", "-1", "65536", "70000", "abc"])
def test_bad_port(run: Run, store_path: Path, seeded_store: bytes, port: str) -> None:
    result = run("allocate", "--service", "postgres", "--port", port)
    line = assert_bad_input(result, "port:", PORT_FORM)
    assert port in line
    assert store_path.read_bytes() == seeded_store


# Only ASCII digits, nothing around them: what int() would take besides (or choke on).
NOT_PLAIN_DIGITS = {
    "superscript-two": "²",
    "arabic-indic": "٨٠٨٢",
    "fullwidth": "８０８０",
    "leading-space": " 80",
    "trailing-space": "80 ",
    "trailing-newline": "8080\n",
    "underscore": "8_080",
    "plus-sign": "+8080",
    "decimal-point": "8080.0",
    "hex": "0x1f90",
    "empty": "",
}
PORT_COMMANDS = {
    "allocate": ("allocate", "--service", "postgres", "--port"),
    "register": ("register", "web", "--port"),
    "bluegreen-deploy": ("bluegreen", "deploy", "api", "--color", "blue", "--port"),
    "who": ("who",),
}


@pytest.mark.parametrize("command", PORT_COMMANDS.values(), ids=PORT_COMMANDS.keys())
@pytest.mark.parametrize("port", NOT_PLAIN_DIGITS.values(), ids=NOT_PLAIN_DIGITS.keys())
def test_a_port_is_ascii_digits_only(
    run: Run, store_path: Path, seeded_store: bytes, command: tuple[str, ...], port: str
) -> None:
    assert_bad_input(run(*command, port), f"port: {port!r} is not valid", PORT_FORM, "digits 0-9")
    assert store_path.read_bytes() == seeded_store


@pytest.mark.parametrize("command", PORT_COMMANDS.values(), ids=PORT_COMMANDS.keys())
def test_a_port_of_thousands_of_digits_is_refused_in_one_short_line(
    run: Run, store_path: Path, seeded_store: bytes, command: tuple[str, ...]
) -> None:
    line = assert_bad_input(run(*command, "9" * 5000), "port: '9999", "(5000 characters)", PORT_FORM)
    assert len(line) < 300
    assert store_path.read_bytes() == seeded_store


def test_leading_zeros_are_digits_too(run: Run, seeded_store: bytes, seed_port: int) -> None:
    port = free_port(exclude={seed_port})
    result = run("allocate", "--service", "redis", "--port", f"00{port}")
    assert result.returncode == 0, result.stderr
    assert parse_env(run("env").stdout)["REDIS_PORT"] == port


# Environments, types, protocols ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("allocate", "--service", "postgres", "--env", "qa"),
        ("release", "--service", "seed", "--env", "qa"),
        ("env", "--env", "qa"),
        ("status", "--env", "qa"),
        ("export", "--env", "qa"),
    ],
    ids=lambda args: args[0],
)
def test_unknown_environment(run: Run, store_path: Path, seeded_store: bytes, args: tuple[str, ...]) -> None:
    assert_bad_input(run(*args), "env: 'qa' is not valid", ENVIRONMENTS)
    assert store_path.read_bytes() == seeded_store


EMPTY_ENV_COMMANDS = {
    "allocate": ("allocate", "--service", "redis"),
    "release": ("release", "--service", "seed"),
    "env": ("env",),
    "register": ("register", "web", "--port", "7301", "--check", "none"),
    "services": ("services",),
    "verify": ("verify",),
    "bluegreen-deploy": ("bluegreen", "deploy", "api", "--color", "blue"),
    "bluegreen-cutover": ("bluegreen", "cutover", "api", "--yes"),
    "check": ("check",),
    "render": ("render", "nginx"),
}


@pytest.mark.parametrize("args", EMPTY_ENV_COMMANDS.values(), ids=EMPTY_ENV_COMMANDS.keys())
def test_an_empty_environment_is_refused_not_taken_for_production(
    run: Run, store_path: Path, seeded_store: bytes, args: tuple[str, ...]
) -> None:
    assert_bad_input(run(*args, "--env", ""), "env: '' is not valid", ENVIRONMENTS)
    assert store_path.read_bytes() == seeded_store


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("export",),
        ("url", "seed"),
    ],
    ids=lambda args: args[0],
)
def test_an_empty_environment_is_refused_by_readers_too(
    run: Run, store_path: Path, seeded_store: bytes, args: tuple[str, ...]
) -> None:
    assert_bad_input(run(*args, "--env", ""), "env: '' is not valid", ENVIRONMENTS)
    assert store_path.read_bytes() == seeded_store


def test_an_empty_default_environment_in_the_config_is_refused(
    run: Run, store_path: Path, seeded_store: bytes, tmp_path: Path
) -> None:
    (tmp_path / "portctl.toml").write_text('environment = ""\n')
    assert_bad_input(run("allocate", "--service", "redis"), "environment: '' is not valid", ENVIRONMENTS)
    assert store_path.read_bytes() == seeded_store


def test_unknown_environment_from_portctl_env(run: Run, store_path: Path, seeded_store: bytes) -> None:
    result = run("allocate", "--service", "postgres", env={"PORTCTL_ENV": "dev"})
    assert_bad_input(result, "'dev' is not valid", ENVIRONMENTS)
    assert store_path.read_bytes() == seeded_store


def test_unknown_type(run: Run, store_path: Path, seeded_store: bytes) -> None:
    result = run("allocate", "--service", "search", "--type", "vector")
    assert_bad_input(result, "type: 'vector' is not valid", TYPES)
    assert store_path.read_bytes() == seeded_store


def test_unknown_protocol(run: Run, store_path: Path, seeded_store: bytes) -> None:
    result = run("allocate", "--service", "postgres", "--protocol", "sctp")
    assert_bad_input(result, "protocol: 'sctp' is not valid", "tcp or udp")
    assert store_path.read_bytes() == seeded_store


# Files given to import and export --------------------------------------------------------


def test_import_of_a_missing_file(run: Run, store_path: Path, seeded_store: bytes) -> None:
    assert_bad_input(
        run("import", "nope.json"), "cannot read nope.json: it does not exist", "port_config.json"
    )
    assert store_path.read_bytes() == seeded_store


def test_import_of_a_file_that_is_not_json(
    run: Run, store_path: Path, seeded_store: bytes, tmp_path: Path
) -> None:
    (tmp_path / "port_config.json").write_text("postgres: 5433\n")
    assert_bad_input(run("import", "port_config.json"), "port_config.json", "valid JSON")
    assert store_path.read_bytes() == seeded_store


def test_import_with_one_bad_record_imports_nothing(
    run: Run, store_path: Path, seeded_store: bytes, tmp_path: Path
) -> None:
    good = {"service": "redis", "environment": "production", "host": "test-host", "port": free_port()}
    bad = {**good, "service": "api", "port": 70000}
    document = {"format": "portctl-ports", "schema": 1, "allocations": [good, bad]}
    (tmp_path / "port_config.json").write_text(json.dumps(document))
    assert_bad_input(run("import", "port_config.json"), "allocations[1].port: 70000", PORT_FORM)
    assert store_path.read_bytes() == seeded_store


def test_export_into_a_missing_folder(
    run: Run, store_path: Path, seeded_store: bytes, tmp_path: Path
) -> None:
    result = run("export", "-o", "missing/port_config.json")
    assert_bad_input(result, "--output: 'missing/port_config.json'", "a writable path")
    assert not (tmp_path / "missing").exists()
    assert store_path.read_bytes() == seeded_store


# A store file that cannot be trusted -----------------------------------------------------

NEWER_SCHEMA = {
    "format": "portctl-store",
    "schema": 99,
    "revision": 0,
    "compacted": 0,
    "entries": {},
    "deleted": {},
}
CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated": (lambda data: data[: len(data) // 2], "the file is not valid JSON"),
    "not-json": (lambda data: b"ports:\n  postgres: 5433\n", "the file is not valid JSON"),
    "empty": (lambda data: b"", "the file is empty"),
    "newer-schema": (lambda data: json.dumps(NEWER_SCHEMA).encode(), "written by a newer portctl"),
}
STORE_COMMANDS = [
    ("allocate", "--service", "redis"),
    ("release", "--service", "seed"),
    ("env",),
    ("status",),
    ("export",),
]


def _corrupt(store_path: Path, kind: str) -> bytes:
    change, _ = CORRUPTIONS[kind]
    data = change(store_path.read_bytes())
    store_path.write_bytes(data)
    return data


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=lambda args: args[0])
@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_unusable_store_is_refused_and_left_untouched(
    run: Run, store_path: Path, seeded_store: bytes, kind: str, args: tuple[str, ...]
) -> None:
    backup = Path(f"{store_path}.bak")
    assert not backup.exists()  # one write so far: no previous copy
    data = _corrupt(store_path, kind)

    result = run(*args)
    assert result.returncode == 3, (result.stdout, result.stderr)
    line = error_line(result)
    assert f"store {store_path} is unusable" in line
    assert CORRUPTIONS[kind][1] in line
    assert "it was left untouched" in line
    # A newer portctl's file is fine for that portctl: upgrade, never move it aside.
    advice = "upgrade portctl" if kind == "newer-schema" else "move it aside"
    assert advice in line
    assert ".bak" not in line
    assert store_path.read_bytes() == data
    assert not backup.exists()


@pytest.mark.parametrize("kind", ["truncated", "not-json", "empty"])
def test_unusable_store_message_names_the_backup(
    run: Run, store_path: Path, seeded_store: bytes, seed_port: int, kind: str
) -> None:
    second = run("allocate", "--service", "seed2", "--port", free_port(exclude={seed_port}))
    assert second.returncode == 0, second.stderr
    backup = Path(f"{store_path}.bak")
    assert backup.read_bytes() == seeded_store  # the previous good copy
    data = _corrupt(store_path, kind)

    for args in STORE_COMMANDS:
        result = run(*args)
        assert result.returncode == 3, (args, result.stderr)
        line = error_line(result)
        assert "it was left untouched" in line
        assert f"the previous good copy is {backup}" in line
        assert f"cp {backup} {store_path}" in line
        assert store_path.read_bytes() == data
        assert backup.read_bytes() == seeded_store

    # Following the advice works: the seed allocation is back.
    shutil.copyfile(backup, store_path)
    assert "SEED_PORT" in parse_env(run("env").stdout)


def test_newer_schema_with_a_backup_asks_to_upgrade(
    run: Run, store_path: Path, seeded_store: bytes, seed_port: int
) -> None:
    assert run("allocate", "--service", "seed2", "--port", free_port(exclude={seed_port})).returncode == 0
    backup = Path(f"{store_path}.bak")
    backup_bytes = backup.read_bytes()
    data = _corrupt(store_path, "newer-schema")
    result = run("allocate", "--service", "redis")
    assert result.returncode == 3
    line = error_line(result)
    assert "schema 99" in line
    assert "upgrade portctl" in line
    assert "move it aside" not in line
    assert "it was left untouched" in line
    assert store_path.read_bytes() == data
    assert backup.read_bytes() == backup_bytes


# Where the store lives -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["PORTCTL_STORE", "--store"])
@pytest.mark.parametrize("command", [("allocate", "--service", "redis"), ("env",)], ids=lambda a: a[0])
def test_store_in_a_missing_folder(
    run: Run, store_path: Path, seeded_store: bytes, tmp_path: Path, how: str, command: tuple[str, ...]
) -> None:
    folder = tmp_path / "no-such-folder"
    target = folder / "store.json"
    if how == "--store":
        result = run(*command, "--store", target)
    else:
        result = run(*command, env={"PORTCTL_STORE": str(target)})
    assert_bad_input(result, f"store: '{target}'", f"{folder} does not exist", "--store or PORTCTL_STORE")
    assert not folder.exists()
    assert store_path.read_bytes() == seeded_store


@pytest.fixture
def readonly_store(run: Run, tmp_path: Path) -> Iterator[Path]:
    """A store holding one allocation, in a folder mounted read-only.

    Tests run as root in CI, where a chmod does not stop writes; a read-only mount does.
    """
    folder = tmp_path / "readonly"
    folder.mkdir()
    store = folder / "store.json"
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command: cannot make a read-only location")
    tried = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if tried.returncode != 0:
        pytest.skip(
            "mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN), so no "
            f"read-only location can be made: {tried.stderr.strip()}"
        )
    try:
        seeded = run(
            "allocate", "--service", "seed", "--port", free_port(), env={"PORTCTL_STORE": str(store)}
        )
        assert seeded.returncode == 0, seeded.stderr
        remount = subprocess.run(
            [mount, "-o", "remount,ro", str(folder)], capture_output=True, text=True, check=False
        )
        if remount.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {remount.stderr.strip()}")
        probe = folder / "probe"
        try:
            probe.write_text("x")
        except OSError:
            pass
        else:
            pytest.skip("the read-only mount still accepts writes")
        yield store
    finally:
        umount = shutil.which("umount") or "umount"
        if subprocess.run([umount, str(folder)], capture_output=True, check=False).returncode != 0:
            subprocess.run([umount, "-l", str(folder)], capture_output=True, check=False)


@pytest.mark.parametrize(
    "args", [("allocate", "--service", "redis"), ("release", "--service", "seed")], ids=lambda a: a[0]
)
def test_store_in_a_read_only_location(run: Run, readonly_store: Path, args: tuple[str, ...]) -> None:
    before = readonly_store.read_bytes()
    result = run(*args, env={"PORTCTL_STORE": str(readonly_store)})
    assert result.returncode == 3, (result.stdout, result.stderr)
    line = error_line(result)
    assert f"cannot write store {readonly_store}" in line
    assert "choose a writable path with --store or PORTCTL_STORE" in line
    assert readonly_store.read_bytes() == before

    # Reading still works: the allocations can be seen, and copied elsewhere.
    shown = run("env", env={"PORTCTL_STORE": str(readonly_store)})
    assert shown.returncode == 0, shown.stderr
    assert "SEED_PORT" in parse_env(shown.stdout)


# Ports that are taken --------------------------------------------------------------------


def test_port_held_by_another_service(run: Run, store_path: Path) -> None:
    port = free_port()
    held = run("allocate", "--service", "postgres", "--port", port, "--env", "staging")
    assert held.returncode == 0, held.stderr
    before = store_path.read_bytes()

    for env in ("staging", "production"):
        result = run("allocate", "--service", "redis", "--port", port, "--env", env)
        assert result.returncode == 1, result.stderr
        line = error_line(result)
        assert f"port {port}/tcp" in line
        assert "postgres (staging)" in line
        assert "free it with: portctl release --service postgres --env staging" in line
        assert store_path.read_bytes() == before


def test_port_held_by_a_process_on_this_host(
    run: Run, store_path: Path, seeded_store: bytes, listening_port: int
) -> None:
    result = run("allocate", "--service", "redis", "--port", listening_port)
    assert result.returncode == 1, result.stderr
    line = error_line(result)
    assert f"port {listening_port}/tcp" in line
    assert "in use on this host" in line
    assert "already in use" in line
    assert store_path.read_bytes() == seeded_store


def test_conflict_messages_read_as_sentences(run: Run, listening_port: int) -> None:
    port = free_port()
    assert run("allocate", "--service", "postgres", "--port", port, "--env", "staging").returncode == 0
    by_service = error_line(run("allocate", "--service", "redis", "--port", port))
    by_process = error_line(run("allocate", "--service", "redis", "--port", listening_port))
    # The holder reads as part of a sentence, not "is held by allocated to ..." / "held by in use".
    assert "postgres (staging)" in by_service
    assert "held by allocated" not in by_service
    assert f"port {listening_port}/tcp" in by_process
    assert "in use on this host" in by_process
    assert "held by in use" not in by_process


def test_refusals_leave_no_stray_files(run: Run, store_path: Path, seeded_store: bytes) -> None:
    """Belt and braces: no stray temp files or backups appear next to the store on refusals."""
    siblings = sorted(os.listdir(store_path.parent))
    for args in [
        ("allocate", "--service", "Postgres"),
        ("allocate", "--service", "postgres", "--port", "0"),
        ("allocate", "--service", "postgres", "--env", "qa"),
        ("release", "--service", "nothing"),
    ]:
        run(*args)
    assert sorted(os.listdir(store_path.parent)) == siblings
    assert store_path.read_bytes() == seeded_store


def test_two_names_with_one_variable_are_refused(
    run: Run, store_path: Path, seeded_store: bytes, seed_port: int
) -> None:
    first = free_port(exclude={seed_port})
    assert run("allocate", "--service", "api-gw", "--port", str(first)).returncode == 0
    before = store_path.read_bytes()
    result = run("allocate", "--service", "api_gw", "--port", str(free_port(exclude={seed_port, first})))
    assert result.returncode == 2
    assert "API_GW_PORT" in error_line(result)
    assert "api-gw has it" in error_line(result)
    assert store_path.read_bytes() == before


def test_import_of_a_binary_file_is_refused(
    run: Run, tmp_path: Path, store_path: Path, seeded_store: bytes
) -> None:
    binary = tmp_path / "blob.json"
    binary.write_bytes(b"\xd0\xcf\x11\xe0\x00\xff")
    result = run("import", str(binary))
    assert result.returncode == 2
    assert "a UTF-8 text file" in error_line(result)
    assert store_path.read_bytes() == seeded_store


@pytest.mark.parametrize("host", ["[::1]", "a/b", "web\n"])
def test_a_host_name_that_cannot_be_a_key_is_refused(run: Run, host: str) -> None:
    result = run("status", env={"PORTCTL_HOST": host})
    assert result.returncode == 2
    assert "PORTCTL_HOST" in error_line(result)


def test_config_alternatives_must_be_a_list(run: Run, tmp_path: Path) -> None:
    (tmp_path / "portctl.toml").write_text("[services.vdb]\nport = 7450\nalternatives = 7451\n")
    result = run("status")
    assert result.returncode == 2
    assert "services.vdb.alternatives" in error_line(result)


@pytest.mark.parametrize("option", ["--successes-before-passing", "--failures-before-critical"])
def test_a_count_is_ascii_digits_only(run: Run, option: str) -> None:
    result = run("register", "web", "--port", "7311", "--check", "none", option, "٣")
    assert_bad_input(result, option, "a count from 1 to 100", "digits 0-9")
