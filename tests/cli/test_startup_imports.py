"""The quick commands import only what they run: start-up is most of what `portctl url NAME`
costs a script that calls it in a loop. Each command runs in a fresh interpreter on a JSON
store, and the modules it loaded are read back from ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Never needed by a quick command on the JSON store: the CLI framework (loaded for help and
# usage errors only), YAML (compose files), rich (terminals only; tests run without one), the
# HTTP and store clients, the exporter, and the layers no quick command uses.
NEVER = (
    "typer",
    "click",
    "yaml",
    "rich",
    "requests",
    "urllib3",
    "etcd3gw",
    "consul",
    "prometheus_client",
    "portctl.compose",
    "portctl.monitoring",
    "portctl.operations",
)
NOT_FOR = {
    "url": ("psutil", "portctl.host.holders", "portctl.host.containers", "portctl.routing.bluegreen"),
    "env": ("psutil", "portctl.discovery", "portctl.registry", "portctl.routing"),
    "status": ("psutil", "portctl.discovery", "portctl.registry", "portctl.routing"),
    "who": ("portctl.discovery", "portctl.registry", "portctl.routing"),
}

PROBE = """
import json, sys
sys.argv = ["portctl", *json.loads(sys.argv[1])]
from portctl._entry import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def loaded(argv: list[str], env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return json.loads(done.stderr.strip().splitlines()[-1])


@pytest.fixture
def store_env(tmp_path, monkeypatch):
    import os

    env = {**os.environ, "PORTCTL_STORE": str(tmp_path / "store.json"), "PORTCTL_HOST": "test-host"}
    env.pop("PORTCTL_CONFIG", None)
    portctl = os.path.join(os.path.dirname(sys.executable), "portctl")
    subprocess.run([portctl, "allocate", "api"], env=env, cwd=tmp_path, capture_output=True, check=True)
    monkeypatch.chdir(tmp_path)
    return env


def _found(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in names)]


def test_version_loads_no_command(store_env):
    modules = loaded(["--version"], store_env)
    assert _found(modules, ("portctl.cli", "portctl.backends", *NEVER)) == []


@pytest.mark.parametrize(
    "argv", [["url", "api"], ["who", "1"], ["env"], ["status"], ["--json", "status"]], ids=" ".join
)
def test_a_quick_command_loads_only_what_it_runs(store_env, argv):
    modules = loaded(argv, store_env)
    command = next(word for word in argv if not word.startswith("-"))
    assert (
        f"portctl.cli.{'registry' if command == 'url' else 'host' if command == 'who' else 'ports'}"
        in modules
    )
    assert _found(modules, NEVER + NOT_FOR[command]) == []


def test_help_and_usage_errors_still_load_typer(store_env):
    assert "typer" in loaded(["url", "--help"], store_env)
    assert "typer" in loaded(["url", "--no-such-option"], store_env)
