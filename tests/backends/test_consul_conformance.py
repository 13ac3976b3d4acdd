"""py-consul's own API tests pass against the Consul emulator.

Each test of py-consul's ``tests/api`` (obtained from the sdist of the installed py-consul, see
:mod:`tests.support.consul_conformance`) is one test here: it passes when theirs passed on a fresh
emulator, fails with their failure, and skips with their skip reason (features outside the
emulator's scope, listed with reasons in ``tests/support/consul_conformance/pyconsul_fixtures.py``).
The whole suite runs once, in a pytest of its own, the first time one of these tests asks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.consul_conformance import SuiteUnavailable, collect, run_suite, suite_dir
from tests.support.consul_fixture import real_consul

UNAVAILABLE = "py-consul's API tests could not be obtained"


def _cache(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    return Path(cache.mkdir("py-consul-sdist")) if cache else Path(".pytest_cache") / "py-consul-sdist"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "their_test" not in metafunc.fixturenames:
        return
    try:
        ids = collect(suite_dir(_cache(metafunc.config)))
    except (SuiteUnavailable, OSError) as e:
        metafunc.parametrize("their_test", [pytest.param(f"{UNAVAILABLE}: {e}", id="unavailable")])
        return
    metafunc.parametrize("their_test", ids, ids=[i.removeprefix("tests/api/") for i in ids])


@pytest.fixture(scope="session")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if real_consul():
        pytest.skip("py-consul's suite starts a fresh agent per test; CONSUL_HTTP_ADDR names a shared one")
    report = tmp_path_factory.mktemp("py-consul-suite") / "outcomes.json"
    return run_suite(suite_dir(_cache(request.config)), report)


def test_py_consul_api_suite(their_test: str, outcomes: dict[str, dict[str, str]]) -> None:
    if their_test.startswith(UNAVAILABLE):
        pytest.fail(their_test)
    result = outcomes.get(their_test)
    assert result is not None, f"{their_test} did not run: {sorted(outcomes)[:5]}..."
    if result["outcome"] == "skipped":
        pytest.skip(result["detail"])
    assert result["outcome"] == "passed", result["detail"]
