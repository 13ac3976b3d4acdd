"""py-consul's own API tests, run against the Consul emulator.

py-consul (the client portctl's Consul store uses, written and tested by other people against a
real Consul) ships its test suite in its sdist: ``tests/api/test_*.py``, with a conftest that
starts a fresh ``hashicorp/consul`` container per test. We never keep a copy of that suite: at
test time :func:`suite_dir` downloads the sdist of the py-consul version installed here with
``pip download`` into a cache folder (pytest's cache) and unpacks only its ``tests/`` folder.
:func:`run_suite` runs it in a pytest of its own (their ``tests`` package would clash with
ours), where ``pyconsul_fixtures`` replaces their container-starting conftest with fixtures of
the same names that start a fresh emulator per test, and skips, each with its reason, the tests
of Consul features outside the emulator's scope.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = "tests/api"
PYTEST_INI = "[pytest]\naddopts = -p no:cacheprovider\n"


class SuiteUnavailable(Exception):
    """py-consul's sdist could not be had, or holds no API tests."""


def installed_version() -> str:
    return version("py-consul")


def suite_dir(cache: Path) -> Path:
    """The unpacked sdist of the installed py-consul, downloaded into ``cache`` once."""
    release = installed_version()
    target = cache.resolve() / f"py_consul-{release}"
    if (target / SUITE).is_dir():
        return target
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        archive = _download(release, Path(scratch))
        unpacked = Path(scratch) / "unpacked"
        _unpack_tests(archive, unpacked)
        (unpacked / "pytest.ini").write_text(PYTEST_INI)
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    return target


def _download(release: str, into: Path) -> Path:
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    argv += ["--disable-pip-version-check", "-q", "-d", str(into), f"py-consul=={release}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    archives = sorted(into.glob("py_consul-*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise SuiteUnavailable(f"pip download py-consul=={release} failed: {done.stderr.strip()[-300:]}")
    return archives[0]


def _unpack_tests(archive: Path, into: Path) -> None:
    """Only the sdist's ``tests/`` folder: not its root conftest (it starts Docker containers)
    nor its pytest settings (they need pytest-cov and pytest-asyncio)."""
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/tests/")]
        if not any(m.name.startswith(f"{top}/{SUITE}/test_") for m in members):
            raise SuiteUnavailable(f"{archive.name} holds no {SUITE}/test_*.py")
        tar.extractall(into.parent / "raw", members=members, filter="data")
    (into.parent / "raw" / top).rename(into)


def _pytest(suite: Path, *args: str, report: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(HERE), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CONSUL_HTTP_ADDR", None)  # their tests talk to the fixture's agent only
    if report is not None:
        env["PYCONSUL_CONFORMANCE_REPORT"] = str(report)
    argv = [sys.executable, "-m", "pytest", "-c", str(suite / "pytest.ini"), "--rootdir", str(suite)]
    argv += ["-p", "pyconsul_fixtures", *args, SUITE]
    return subprocess.run(argv, cwd=suite, env=env, capture_output=True, text=True, timeout=600, check=False)


def collect(suite: Path) -> list[str]:
    """The node ids of the suite's tests."""
    done = _pytest(suite, "--collect-only", "-q")
    ids = [line for line in done.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if not ids:
        raise SuiteUnavailable(f"collecting {SUITE} found no test: {(done.stdout + done.stderr)[-500:]}")
    return ids


def run_suite(suite: Path, report: Path) -> dict[str, dict[str, str]]:
    """Run the whole suite once; each node id's outcome (passed, failed, skipped) and detail."""
    done = _pytest(suite, "-q", "-p", "no:randomly", report=report)
    if not report.exists():
        raise SuiteUnavailable(f"the suite did not run: {(done.stdout + done.stderr)[-1500:]}")
    return dict(json.loads(report.read_text()))
