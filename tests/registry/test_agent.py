"""The agent against real servers and a JSON store: checks, damping, TTL expiry, removals."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portctl.backends.base import Entry
from portctl.backends.file import JsonFileStore
from portctl.config.settings import Settings
from portctl.errors import InvalidInput, NotFound, StoreUnavailable
from portctl.registry.agent import Agent, AgentReport
from portctl.registry.entries import CheckSpec, Instance, Registry, Status, health_key

ENV = "development"


class Clock:
    """Seconds since the epoch, moved forward by the test: record times stay comparable."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with JsonFileStore(str(tmp_path / "store.json")) as store:
        yield Registry(store, Settings(host="test-host"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def listen(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(8)
    return s


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stored(registry: Registry, instance_id: str, environment: str = ENV) -> Instance:
    return registry.instance(instance_id, environment)


def ids(registry: Registry) -> list[str]:
    return [i.entry.id for i in registry.instances(all_environments=True)]


# Running checks -----------------------------------------------------------------------------


def test_first_pass_runs_every_check_then_only_due_ones(registry, clock):
    with listen() as s:
        port = s.getsockname()[1]
        registry.register(
            "db", port=port, instance_id="db-1", environment=ENV, check=CheckSpec("tcp", interval=10)
        )
        agent = Agent(registry, clock=clock)
        assert agent.run_once() == AgentReport([("db-1", Status.PASSING)], [])
        assert stored(registry, "db-1").health.output == f"tcp connect to 127.0.0.1:{port} ok"
        assert agent.run_once().checked == []
        clock.advance(9.5)
        assert agent.run_once().checked == []
        clock.advance(1)
        assert agent.run_once().checked == [("db-1", Status.PASSING)]


def test_flap_damping_needs_a_streak_to_change_status(registry, clock, http_server):
    port = http_server.server_address[1]
    check = CheckSpec(
        "http",
        url=f"http://127.0.0.1:{port}/health",
        interval=5,
        successes_before_passing=2,
        failures_before_critical=3,
    )
    with listen() as _:
        registry.register("web", port=port, instance_id="web-1", environment=ENV, check=check)
    agent = Agent(registry, clock=clock)

    def step(code: int) -> Status:
        http_server.behaviour.code = code
        clock.advance(5)
        report = agent.run_once()
        status = stored(registry, "web-1").status
        assert report.checked == [("web-1", status)]
        return status

    assert stored(registry, "web-1").status == Status.CRITICAL  # not checked yet
    assert [step(c) for c in (200, 200)] == [Status.CRITICAL, Status.PASSING]
    # Two failures, then a success: the failure streak starts again.
    assert [step(c) for c in (503, 503, 200)] == [Status.PASSING] * 3
    health = stored(registry, "web-1").health
    assert (health.pending, health.streak) == (None, 0)
    assert [step(c) for c in (503, 503)] == [Status.PASSING] * 2
    health = stored(registry, "web-1").health
    assert (health.output, health.pending, health.streak) == (
        "HTTP 503 Service Unavailable",
        Status.CRITICAL,
        2,
    )
    assert step(503) == Status.CRITICAL
    assert stored(registry, "web-1").health.critical_since is not None
    # Back up: one success is not enough, a failure in between resets the streak.
    assert [step(c) for c in (200, 503, 200, 200)] == [Status.CRITICAL] * 3 + [Status.PASSING]
    assert stored(registry, "web-1").health.critical_since is None
    # A warning applies at once, in both directions.
    assert step(429) == Status.WARNING
    assert stored(registry, "web-1").health.output == "HTTP 429 Too Many Requests"
    assert [step(c) for c in (200, 200)] == [Status.WARNING, Status.PASSING]


def test_failing_http_check_after_the_server_stops(registry, clock, http_server):
    port = http_server.server_address[1]
    check = CheckSpec("http", url=f"http://127.0.0.1:{port}/", interval=1)
    registry.register("web", port=port, instance_id="web-1", environment=ENV, check=check)
    agent = Agent(registry, clock=clock, zombie_grace=1e9)
    assert agent.run_once().checked == [("web-1", Status.PASSING)]
    http_server.shutdown()
    http_server.server_close()
    clock.advance(1)
    assert agent.run_once().checked == [("web-1", Status.CRITICAL)]
    assert stored(registry, "web-1").health.output == "connection refused"


# TTL checks ---------------------------------------------------------------------------------


def test_expired_ttl_is_persisted_as_critical(registry, clock):
    registry.register(
        "job", port=closed_port(), instance_id="job-1", environment=ENV, check=CheckSpec("ttl", ttl=0.3)
    )
    agent = Agent(registry, clock=clock)
    registry.ttl("job-1", Status.PASSING, environment=ENV)
    assert agent.run_once() == AgentReport([], [])
    assert stored(registry, "job-1").health.status == Status.PASSING
    position = registry.store.position()

    time.sleep(0.4)
    assert stored(registry, "job-1").status == Status.CRITICAL  # reads as critical already...
    assert stored(registry, "job-1").health.status == Status.PASSING  # ...but is stored passing
    assert agent.run_once() == AgentReport([("job-1", Status.CRITICAL)], [])
    health = stored(registry, "job-1").health
    assert health.status == Status.CRITICAL
    assert health.output == f"TTL expired at {_utc(health.expires_at)} (no update within its 0.3s TTL)"
    assert health.critical_since == health.expires_at
    batch = registry.store.watch("registry/", position, timeout=0)
    assert [(c.kind, c.key) for c in batch.changes] == [("put", health_key(ENV, "job", "job-1"))]

    assert agent.run_once() == AgentReport([], [])  # written once
    registry.ttl("job-1", Status.PASSING, environment=ENV)
    assert agent.run_once() == AgentReport([], [])
    assert stored(registry, "job-1").health.status == Status.PASSING


def _utc(when: float | None) -> str:
    assert when is not None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def test_expired_ttl_message_stays_true_when_read_later(tmp_path, clock):
    """What `portctl health` shows minutes after the agent marked the TTL expired."""
    store_path = tmp_path / "store.json"
    with JsonFileStore(str(store_path)) as store:
        registry = Registry(store, Settings(host="test-host"))
        check = CheckSpec("ttl", ttl=0.3)
        registry.register("job", port=closed_port(), instance_id="job-1", environment=ENV, check=check)
        registry.ttl("job-1", Status.PASSING, environment=ENV)
        time.sleep(0.4)
        Agent(registry, clock=clock).run_once()
        expired_at = stored(registry, "job-1").health.expires_at
    time.sleep(1.2)  # a later reader: no "expired 0s ago" frozen in the record
    env = {**os.environ, "PORTCTL_STORE": str(store_path), "PORTCTL_HOST": "test-host"}
    portctl = os.path.join(os.path.dirname(sys.executable), "portctl")
    shown = subprocess.run(
        [portctl, "health", "job", "--env", ENV], capture_output=True, text=True, env=env, check=False
    )
    assert f"TTL expired at {_utc(expired_at)} (no update within its 0.3s TTL)" in shown.stdout, shown
    assert "ago" not in shown.stdout


def test_an_expired_ttl_read_before_any_agent_says_it_expired(tmp_path):
    """No agent ran: the reader sees critical, and an output that says why, not the last pass."""
    store_path = tmp_path / "store.json"
    with JsonFileStore(str(store_path)) as store:
        registry = Registry(store, Settings(host="test-host"))
        registry.register(
            "job", port=closed_port(), instance_id="job-1", environment=ENV, check=CheckSpec("ttl", ttl=0.3)
        )
        registry.ttl("job-1", Status.PASSING, "all good", environment=ENV)
        expires_at = stored(registry, "job-1").health.expires_at
    time.sleep(0.5)
    env = {**os.environ, "PORTCTL_STORE": str(store_path), "PORTCTL_HOST": "test-host"}
    portctl = os.path.join(os.path.dirname(sys.executable), "portctl")
    shown = subprocess.run(
        [portctl, "services", "--env", ENV], capture_output=True, text=True, env=env, check=False
    )
    assert "critical" in shown.stdout, shown
    assert f"TTL expired at {_utc(expires_at)}" in shown.stdout
    assert "all good" not in shown.stdout


def test_ttl_entries_are_not_port_checked_for_zombies(registry, clock):
    registry.register(
        "job", port=closed_port(), instance_id="job-1", environment=ENV, check=CheckSpec("ttl", ttl=60)
    )
    agent = Agent(registry, clock=clock, zombie_grace=1)
    registry.ttl("job-1", Status.PASSING, environment=ENV)
    agent.run_once()
    clock.advance(30)
    assert agent.run_once() == AgentReport([], [])
    assert ids(registry) == ["job-1"]


@pytest.mark.parametrize(
    ("check", "address"),
    [(CheckSpec("none"), "127.0.0.1"), (CheckSpec("tcp", interval=1000), "192.0.2.10")],
    ids=["unchecked", "remote-address"],
)
def test_entries_not_expected_to_listen_here_are_not_zombies(registry, clock, check, address):
    registry.register(
        "ext", port=closed_port(), address=address, instance_id="ext-1", environment=ENV, check=check
    )
    agent = Agent(registry, clock=clock, zombie_grace=1)
    agent.run_once()
    clock.advance(120)
    assert agent.run_once().deregistered == []
    assert ids(registry) == ["ext-1"]


# deregister_after ---------------------------------------------------------------------------


def test_deregister_after_removes_an_instance_critical_too_long(registry, clock):
    with listen() as s:
        up = s.getsockname()[1]
        check = CheckSpec("tcp", interval=1, deregister_after=30)
        registry.register("db", port=closed_port(), instance_id="db-down", environment=ENV, check=check)
        registry.register("db", port=up, instance_id="db-up", environment=ENV, check=check)
        agent = Agent(registry, clock=clock, zombie_grace=1e9)
        report = agent.run_once()
        assert sorted(report.checked) == [("db-down", Status.CRITICAL), ("db-up", Status.PASSING)]
        clock.advance(20)
        assert agent.run_once().deregistered == []
        clock.advance(11)
        report = agent.run_once()
        assert [i for i, _ in report.deregistered] == ["db-down"]
        assert re.fullmatch(r"critical for 3\ds \(deregister after 30s\)", report.deregistered[0][1])
        assert ids(registry) == ["db-up"]
        with pytest.raises(NotFound):
            stored(registry, "db-down")
        assert registry.store.get(health_key(ENV, "db", "db-down")) is None


def test_expired_ttl_counts_as_critical_from_its_expiry(registry, clock):
    check = CheckSpec("ttl", ttl=0.3, deregister_after=10)
    registry.register("job", port=closed_port(), instance_id="job-1", environment=ENV, check=check)
    registry.ttl("job-1", Status.PASSING, environment=ENV)
    agent = Agent(registry, clock=clock)
    time.sleep(0.4)
    assert agent.run_once() == AgentReport([("job-1", Status.CRITICAL)], [])
    clock.advance(9)
    assert agent.run_once() == AgentReport([], [])
    clock.advance(2)
    report = agent.run_once()
    assert [i for i, _ in report.deregistered] == ["job-1"]
    assert ids(registry) == []


# Zombies ------------------------------------------------------------------------------------


def test_port_zombie_is_removed_only_after_the_grace_period(registry, clock):
    s = listen()
    port = s.getsockname()[1]
    check = CheckSpec("tcp", interval=1000)
    registry.register("db", port=port, instance_id="db-1", environment=ENV, check=check)
    agent = Agent(registry, clock=clock, zombie_grace=60)
    assert agent.run_once().deregistered == []

    s.close()
    assert agent.run_once().deregistered == []  # a zombie candidate from now
    clock.advance(30)
    assert agent.run_once().deregistered == []
    s = listen(port)  # it listens again: the grace period starts over next time
    clock.advance(40)
    assert agent.run_once().deregistered == []
    s.close()
    assert agent.run_once().deregistered == []
    clock.advance(59)
    assert agent.run_once().deregistered == []
    assert ids(registry) == ["db-1"]
    clock.advance(2)
    report = agent.run_once()
    assert len(report.deregistered) == 1
    instance, reason = report.deregistered[0]
    assert instance == "db-1"
    assert re.fullmatch(rf"port {port} no longer listens for 6[01]s", reason)
    assert ids(registry) == []


@pytest.mark.parametrize("check", [CheckSpec("tcp", interval=1000), CheckSpec("ttl", ttl=600)])
def test_instance_whose_owner_process_is_gone_is_removed(registry, clock, sleeper, check):
    with listen() as s:
        port = s.getsockname()[1]
        registry.register(
            "api", port=port, instance_id="api-1", environment=ENV, check=check, pid=sleeper.pid
        )
        agent = Agent(registry, clock=clock, zombie_grace=60)
        agent.run_once()
        clock.advance(100)
        assert agent.run_once().deregistered == []  # the owner still runs
        sleeper.kill()
        sleeper.wait()
        assert agent.run_once().deregistered == []
        clock.advance(61)
        assert agent.run_once().deregistered == [("api-1", f"owner pid {sleeper.pid} is gone")]


def test_unreaped_owner_counts_as_gone(registry, clock, sleeper):
    with listen() as s:
        port = s.getsockname()[1]
        check = CheckSpec("tcp", interval=1000)
        registry.register(
            "api", port=port, instance_id="api-1", environment=ENV, check=check, pid=sleeper.pid
        )
        agent = Agent(registry, clock=clock, zombie_grace=5)
        agent.run_once()
        os.kill(sleeper.pid, signal.SIGKILL)  # not waited for: a zombie process until reaped
        deadline = time.monotonic() + 5
        while not _is_defunct(sleeper.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(sleeper.pid, 0)  # still there for kill(2)
        agent.run_once()
        clock.advance(6)
        assert agent.run_once().deregistered == [("api-1", f"owner pid {sleeper.pid} is gone")]


def _is_defunct(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0] == b"Z"


def test_both_zombie_conditions_are_named(registry, clock, sleeper):
    port = closed_port()
    registry.register(
        "api",
        port=port,
        instance_id="api-1",
        environment=ENV,
        check=CheckSpec("tcp", interval=1000),
        pid=sleeper.pid,
    )
    sleeper.kill()
    sleeper.wait()
    agent = Agent(registry, clock=clock, zombie_grace=10)
    agent.run_once()
    clock.advance(10)
    ((instance, reason),) = agent.run_once().deregistered
    assert instance == "api-1"
    assert reason == f"port {port} no longer listens for 10s; owner pid {sleeper.pid} is gone"


def test_re_registration_starts_the_grace_period_again(registry, clock):
    port = closed_port()
    check = CheckSpec("tcp", interval=1000)
    registry.register("db", port=port, instance_id="db-1", environment=ENV, check=check)
    agent = Agent(registry, clock=clock, zombie_grace=60)
    agent.run_once()
    clock.advance(50)
    assert agent.run_once().deregistered == []
    registry.register("db", port=port, instance_id="db-1", environment=ENV, check=check)
    report = agent.run_once()
    assert report == AgentReport([("db-1", Status.CRITICAL)], [])  # a new registration: checked at once
    clock.advance(30)
    assert agent.run_once().deregistered == []
    clock.advance(31)
    assert [i for i, _ in agent.run_once().deregistered] == ["db-1"]


def test_a_registration_replaced_after_the_verdict_is_kept(registry, clock):
    port = closed_port()
    check = CheckSpec("tcp", interval=1000)
    old = registry.register("db", port=port, instance_id="db-1", environment=ENV, check=check).entry
    time.sleep(0.01)
    registry.register("db", port=port, instance_id="db-1", environment=ENV, check=check)
    agent = Agent(registry, clock=clock)
    assert agent._deregister(old) is False
    assert ids(registry) == ["db-1"]


# Scope ------------------------------------------------------------------------------------


def test_instances_of_other_hosts_are_left_alone(registry, clock):
    other = Registry(registry.store, Settings(host="other-host"))
    check = CheckSpec("tcp", interval=1, deregister_after=1)
    other.register("db", port=closed_port(), instance_id="db-other", environment=ENV, check=check)
    agent = Agent(registry, clock=clock, zombie_grace=1)
    agent.run_once()
    clock.advance(1000)
    assert agent.run_once() == AgentReport([], [])
    assert stored(registry, "db-other").health.output == "not checked yet"


def test_an_environment_narrows_the_agent(registry, clock):
    with listen() as s:
        port = s.getsockname()[1]
        for env in ("development", "staging"):
            registry.register(
                "db", port=port, instance_id=f"db-{env}", environment=env, check=CheckSpec("tcp")
            )
        assert Agent(registry, environment="staging", clock=clock).run_once().checked == [
            ("db-staging", Status.PASSING)
        ]
        assert sorted(Agent(registry, clock=clock).run_once().checked) == [
            ("db-development", Status.PASSING),
            ("db-staging", Status.PASSING),
        ]


# The loop ---------------------------------------------------------------------------------


def test_run_loops_until_stopped(registry):
    with listen() as s:
        registry.register(
            "db",
            port=s.getsockname()[1],
            instance_id="db-1",
            environment=ENV,
            check=CheckSpec("tcp", interval=0.1),
        )
        agent = Agent(registry)
        stop = threading.Event()
        reports: list[AgentReport] = []
        thread = threading.Thread(target=agent.run, args=(stop, 0.02), kwargs={"on_report": reports.append})
        thread.start()
        deadline = time.monotonic() + 5
        while sum(len(r.checked) for r in reports) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        thread.join(5)
        assert not thread.is_alive()
        assert sum(len(r.checked) for r in reports) >= 3


class FlakyStore(JsonFileStore):
    """A JSON store whose listing fails a given number of times, as a store server might."""

    failures = 0

    def list(self, prefix: str = "") -> list[Entry]:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("store is down")
        return super().list(prefix)


def test_run_hands_store_errors_to_on_error_and_goes_on(tmp_path):
    store = FlakyStore(str(tmp_path / "store.json"))
    registry = Registry(store, Settings(host="test-host"))
    with listen() as s:
        registry.register(
            "db", port=s.getsockname()[1], instance_id="db-1", environment=ENV, check=CheckSpec("tcp")
        )
        store.failures = 2
        agent = Agent(registry)
        stop = threading.Event()
        errors: list[Exception] = []

        def on_report(report: AgentReport) -> None:
            if report.checked:
                stop.set()

        agent.run(stop, 0.01, on_report=on_report, on_error=errors.append)
        assert [str(e) for e in errors] == ["store is down"] * 2
        store.failures = 1
        with pytest.raises(StoreUnavailable):
            agent.run(threading.Event(), 0.01)


# Found in the registry ----------------------------------------------------------------------


def test_registry_refuses_an_instance_id_another_service_uses(registry):
    registry.register(
        "api", port=closed_port(), instance_id="shared", environment=ENV, check=CheckSpec("none")
    )
    with pytest.raises(InvalidInput, match="an id no other service uses in .* \\(api has it\\)"):
        registry.register(
            "web", port=closed_port(), instance_id="shared", environment=ENV, check=CheckSpec("ttl", ttl=60)
        )
    assert [i.entry.service for i in registry.instances(environment=ENV)] == ["api"]


class RacingStore(JsonFileStore):
    """A JSON store in which another writer (the agent marking a TTL expired, say) rewrites a
    key right after it is read, once."""

    race_on: str | None = None

    def get(self, key: str) -> Entry | None:
        found = super().get(key)
        if found is not None and key == self.race_on:
            self.race_on = None
            self.compare_and_set(key, found.value, found.version)
        return found


def test_registry_ttl_retries_when_the_health_key_changes_under_it(tmp_path):
    store = RacingStore(str(tmp_path / "store.json"))
    registry = Registry(store, Settings(host="test-host"))
    registry.register(
        "job", port=closed_port(), instance_id="job-1", environment=ENV, check=CheckSpec("ttl", ttl=60)
    )
    store.race_on = health_key(ENV, "job", "job-1")
    assert registry.ttl("job-1", Status.PASSING, environment=ENV).status == Status.PASSING
