"""A real unprivileged user whose home does not exist (``nobody``, HOME=/nonexistent): read-only
commands work without creating any folder, and a write that cannot make the default store's
folder is a one-line error, exit 3. The CLI tests run as root, so these run portctl as nobody."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
from pathlib import Path

import pytest

from portctl.backends.file import JsonFileStore, default_path
from portctl.config.settings import default_store_url, load_settings, resolve_store

ROOT = Path(__file__).resolve().parents[2]
MAIN = "import sys; sys.argv[0] = 'portctl'; from portctl.cli import main; main()"
NOBODY_STORE = "/nonexistent/.local/state/portctl/store.json"


def _python_for_nobody() -> str | None:
    """An interpreter nobody may run: the venv's may sit in root's home."""
    for candidate in (os.path.realpath(shutil.which("python3") or ""), "/usr/bin/python3"):
        if (
            candidate
            and _as_nobody([candidate, "-c", "import sys; assert sys.version_info >= (3, 11)"]).returncode
            == 0
        ):
            return candidate
    return None


def _as_nobody(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *site.getsitepackages()]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [
            "runuser",
            "-u",
            "nobody",
            "--",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in {**base, **(env or {})}.items()),
            *argv,
        ],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def portctl_as_nobody():
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser (util-linux) to run portctl as nobody")
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no python >= 3.11 the nobody user may run")
    probe = _as_nobody([python, "-c", "import portctl.cli, psutil, typer"])
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot import portctl and its dependencies here: {probe.stderr.strip()[-200:]}")
    return lambda *args, env=None: _as_nobody([python, "-c", MAIN, *map(str, args)], env)


@pytest.mark.parametrize("command", [("status",), ("who", "22"), ("env",), ("services",)], ids=lambda c: c[0])
def test_read_only_commands_work_without_a_home(portctl_as_nobody, command):
    result = portctl_as_nobody(*command)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert not Path("/nonexistent").exists()


def test_status_reports_no_allocations_and_the_path_it_would_use(portctl_as_nobody):
    result = portctl_as_nobody("status")
    assert result.returncode == 0, result.stderr
    assert f"file://{NOBODY_STORE}  (chosen by: default)" in result.stdout
    assert "no allocations yet" in result.stdout


def test_a_write_that_cannot_create_the_default_folder_is_one_line_exit_3(portctl_as_nobody):
    result = portctl_as_nobody("allocate", "--service", "redis")
    assert result.returncode == 3
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("portctl: error: cannot create the store folder /nonexistent/.local/state/portctl")
    assert "Permission denied" in line
    assert "--store or PORTCTL_STORE, or set XDG_STATE_HOME" in line


@pytest.fixture
def nobodys_state():
    """A folder nobody owns, outside root's 0700 pytest folder."""
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="portctl-nobody-"))
    top.chmod(0o755)
    state = top / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    yield state
    shutil.rmtree(top)


def test_the_first_write_creates_the_default_folder(portctl_as_nobody, nobodys_state):
    state = nobodys_state
    env = {"XDG_STATE_HOME": str(state)}
    assert portctl_as_nobody("status", env=env).returncode == 0
    assert not (state / "portctl").exists()  # a read creates nothing
    result = portctl_as_nobody("allocate", "--service", "redis", env=env)
    assert result.returncode == 0, result.stderr
    assert (state / "portctl" / "store.json").stat().st_uid == 65534


# The same, in the library (as any user) ------------------------------------------------------


def test_choosing_and_reading_the_default_store_creates_no_folder(monkeypatch, tmp_path):
    for var in ("PORTCTL_CONFIG", "PORTCTL_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_store_url() == f"file://{tmp_path}/state/portctl/store.json"
    choice = resolve_store(None, load_settings())
    store = JsonFileStore(default_path())
    assert (choice.source, store.list(""), store.get("a")) == ("default", [], None)
    assert not (tmp_path / "state").exists()
    store.create("a", "1")
    assert (tmp_path / "state" / "portctl" / "store.json").is_file()


def test_another_missing_folder_is_still_refused(monkeypatch, tmp_path):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    from portctl.errors import InvalidInput

    with pytest.raises(InvalidInput, match="does not exist"):
        JsonFileStore(str(tmp_path / "elsewhere" / "store.json"))
