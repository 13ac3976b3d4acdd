"""A pytest plugin for py-consul's own API tests: their agent fixtures, served by the emulator.

Their root conftest starts a fresh ``hashicorp/consul:<version>`` container (``agent -dev``, script
checks enabled) per test as ``consul_instance`` (``container, port, version``),
``acl_consul_instance`` (the same with ACLs on, plus its management token) and ``consul_port``
(``port, version``). These fixtures keep those names and shapes and start a fresh emulator per
test instead, on 127.0.0.1:8500 when that port is free: a few of their checks probe
``http://localhost:8500``, the agent's own address inside its container.

Tests of Consul features the emulator does not provide are skipped with the reason in
:data:`OUT_OF_SCOPE`. With ``PYCONSUL_CONFORMANCE_REPORT`` set, every test's outcome is written
there as JSON. This module imports nothing from our ``tests`` package (theirs has that name).
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _load_emulator() -> Any:
    """The emulator package, loaded by its path under its own name (their ``tests`` shadows ours)."""
    package = Path(__file__).resolve().parent.parent / "consul_emulator"
    spec = importlib.util.spec_from_file_location(
        "consul_emulator", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["consul_emulator"] = module
    spec.loader.exec_module(module)
    return module


emulator = _load_emulator()
ConsulInstance = collections.namedtuple("ConsulInstance", ["container", "port", "version"])
AGENT_PORT = 8500
NEEDS_AGENT_PORT = {"test_agent_checks", "test_service_multi_check"}  # HTTP checks of localhost:8500

_ACL = (
    "the ACL system (/v1/acl/*: tokens, policies, roles, auth methods, binding rules, templated "
    "policies; /v1/agent/token/*): portctl only sends a token, and the emulator checks one fixed "
    "token without an ACL system behind it"
)
_CONNECT = (
    "Consul service mesh (Connect CA, intentions, sidecar proxies, gateways, discovery chains, "
    "config entries): portctl registers plain services"
)
OUT_OF_SCOPE: dict[str, str] = {
    "test_acl.py": _ACL,
    "test_acl_templated_policy.py": _ACL,
    "test_agent.py::TestAgent::test_agent_token_set": _ACL,
    "test_agent.py::TestAgent::test_agent_token_permission_denied": _ACL,
    "test_connect.py": _CONNECT,
    "test_config.py": _CONNECT,
    "test_discovery_chain.py": _CONNECT,
    "test_agent.py::TestAgent::test_agent_service_connect": _CONNECT,
    "test_agent.py::TestAgent::test_agent_service_register_kind_proxy_locality": _CONNECT,
    "test_health.py::TestHealth::test_health_connect": _CONNECT,
    "test_health.py::TestHealth::test_health_ingress": _CONNECT,
    "test_catalog.py::TestCatalog::test_catalog_gateway_services": _CONNECT,
    "test_coordinates.py": "network coordinates (/v1/coordinate/*): Serf's RTT estimates need a real cluster",
    "test_event.py": "user events (/v1/event/*): gossip broadcasts portctl does not use",
    "test_operator.py": "operator endpoints (/v1/operator/*: Raft, autopilot, keyring): cluster administration",
    "test_query.py": "prepared queries (/v1/query): portctl resolves through /v1/health/service",
    "test_snapshot.py": "snapshots (/v1/snapshot): a Raft snapshot archive of the whole cluster state",
    "test_agent.py::TestAgent::test_agent_metrics": "agent telemetry (/v1/agent/metrics): go-metrics gauges",
    "test_agent.py::TestAgent::test_agent_monitor_rejects_invalid_loglevel": (
        "agent log streaming (/v1/agent/monitor): the agent's own logs"
    ),
}


def _reason(nodeid: str) -> str | None:
    path = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    rest = nodeid.split("[", 1)[0].removeprefix(nodeid.split("::", 1)[0])
    return OUT_OF_SCOPE.get(path + rest) or OUT_OF_SCOPE.get(path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        reason = _reason(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"outside the emulator's scope: {reason}"))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start(request: pytest.FixtureRequest, acl_token: str | None = None) -> Iterator[Any]:
    port = AGENT_PORT if _port_free(AGENT_PORT) else 0
    if port == 0 and request.node.originalname in NEEDS_AGENT_PORT:
        pytest.skip(f"its checks probe the agent at localhost:{AGENT_PORT}, held by another process here")
    server = emulator.ConsulEmulator(
        ("127.0.0.1", port), acl_token=acl_token, session_ttl_min=10.0, enable_script_checks=True
    )
    with server:
        yield ConsulInstance(server, server.server_address[1], emulator.VERSION)


@pytest.fixture(params=["emulator"])
def consul_instance(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from _start(request)


@pytest.fixture(params=["emulator"])
def acl_consul_instance(request: pytest.FixtureRequest) -> Iterator[Any]:
    token = uuid.uuid4().hex
    for instance in _start(request, acl_token=token):
        yield instance, token


@pytest.fixture
def consul_port(consul_instance: Any) -> tuple[int, str]:
    return consul_instance.port, consul_instance.version


_outcomes: dict[str, dict[str, str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    seen = _outcomes.setdefault(report.nodeid, {"outcome": "passed", "detail": ""})
    if report.failed:
        seen.update(outcome="failed", detail=f"{report.when}: {report.longreprtext}")
    elif report.skipped and seen["outcome"] != "failed":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        seen.update(outcome="skipped", detail=reason.removeprefix("Skipped: "))


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("PYCONSUL_CONFORMANCE_REPORT")
    if path:
        Path(path).write_text(json.dumps(_outcomes, indent=1))
