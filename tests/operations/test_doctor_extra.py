"""``portctl doctor``'s store check on a real JSON store written with the real allocator and
registry, made inconsistent the way a crash or a hand edit would (one key deleted); a store
that is down; and the firewall check's verdicts on rules the real iptables printed."""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from portctl.backends import open_store
from portctl.backends.file import JsonFileStore
from portctl.config.settings import Settings
from portctl.host.containers import DockerScan
from portctl.host.firewall import FirewallView, parse_iptables_save
from portctl.host.holders import HostPorts
from portctl.host.listeners import ListenerScan
from portctl.keys import allocation_key, claim_key
from portctl.operations._doctor_extra import LONG_CRITICAL, CheckedPort, firewall_findings, store_verdicts
from portctl.operations._doctoring import DoctorContext, VerdictStatus
from portctl.ports.allocator import PortAllocator
from portctl.records import iso_utc
from portctl.registry.entries import CheckSpec, Registry, Status
from portctl.registry.health import run_check
from tests.conftest import free_port

HOST = "doctor-host"
ENV = "development"
DATA = Path(__file__).parents[1] / "host" / "data"


def context(store, now: float = 0.0) -> DoctorContext:
    settings = Settings(host=HOST)
    return DoctorContext(
        allocator=PortAllocator(store, settings),
        registry=Registry(store, settings),
        environment=ENV,
        targets=[],
        host=HostPorts(ListenerScan(("tcp",)), DockerScan("unix:///nonexistent")),
        now=now,
    )


def gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def by_subject(verdicts):
    return {v.subject: v for v in verdicts}


@pytest.fixture
def failing():
    """Start a real HTTP server on 127.0.0.1:PORT that answers every request with 500."""
    servers: list[http.server.HTTPServer] = []

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(500)

        def log_message(self, *args):
            pass

    def start(port: int) -> None:
        server = http.server.HTTPServer(("127.0.0.1", port), Failing)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def store(tmp_path):
    with JsonFileStore(str(tmp_path / "store.json")) as s:
        yield s


def test_a_consistent_store_is_one_ok(store, listener):
    ctx = context(store)
    port = free_port(start=26100)
    ctx.allocator.allocate("api", port=port, environment=ENV)
    listener(port, "127.0.0.1")
    ctx.registry.register("api", environment=ENV, probe=lambda e: (Status.PASSING, "ok"))
    [verdict] = store_verdicts(context(store))
    assert verdict.status == VerdictStatus.OK
    assert verdict.finding == (
        f"the store {store.url} answers; its claims, allocations and registrations on {HOST} agree"
    )


def test_a_claim_without_its_record_fails_and_the_fix_repairs_it(store):
    ctx = context(store)
    port = ctx.allocator.allocate("cache", port=free_port(start=26200), environment=ENV).allocation.port
    store.delete(allocation_key(HOST, ENV, "cache"))
    [verdict] = store_verdicts(ctx)
    assert verdict.status == VerdictStatus.FAIL
    assert verdict.subject == f"claim {port}/tcp"
    assert verdict.finding == (
        f"the claim ports/{HOST}/tcp/{port} keeps port {port} for cache ({ENV}), which has no allocation record"
    )
    assert verdict.fix.startswith(
        f"portctl allocate --service cache --env {ENV} --port {port} writes the record"
    )
    ctx.allocator.allocate("cache", port=port, environment=ENV)  # the fix, through the same API
    assert [v.status for v in store_verdicts(ctx)] == [VerdictStatus.OK]


def test_a_record_without_its_claim_fails_and_the_fix_repairs_it(store):
    ctx = context(store)
    port = ctx.allocator.allocate("queue", port=free_port(start=26300), environment=ENV).allocation.port
    store.delete(claim_key(HOST, "tcp", port))
    [verdict] = store_verdicts(ctx)
    assert verdict.status == VerdictStatus.FAIL
    assert verdict.finding == (
        f"the allocation allocations/{HOST}/{ENV}/queue has port {port}/tcp but no claim on it: "
        "another allocation may take it"
    )
    assert verdict.fix == (
        f"portctl release --service queue --env {ENV} && portctl allocate --service queue --env {ENV} --port {port}"
    )
    ctx.allocator.release("queue", ENV)
    ctx.allocator.allocate("queue", port=port, environment=ENV)
    assert [v.status for v in store_verdicts(ctx)] == [VerdictStatus.OK]


def test_zombie_and_long_critical_registrations(store, failing):
    ctx = context(store)
    silent_port, critical_port = free_port(start=26400), free_port(start=26500)
    zombie = ctx.registry.register(
        "worker", port=silent_port, environment=ENV, pid=gone_pid(), check=CheckSpec("tcp")
    ).entry
    failing(critical_port)
    critical = ctx.registry.register(
        "web",
        port=critical_port,
        environment=ENV,
        check=CheckSpec("http", url=f"http://127.0.0.1:{critical_port}/", deregister_after=60),
        probe=run_check,
    ).entry
    found = by_subject(store_verdicts(context(store)))
    assert set(found) == {f"registration {zombie.id}"}  # critical just now: not for long
    bad = found[f"registration {zombie.id}"]
    assert bad.status == VerdictStatus.FAIL
    assert bad.finding == (
        f"worker ({ENV}) instance {zombie.id} is a zombie: nothing listens on 127.0.0.1:{silent_port} "
        f"and its process {zombie.pid} is gone; checked now: tcp connect to 127.0.0.1:{silent_port} "
        "failed: connection refused"
    )
    assert bad.fix == f"portctl deregister {zombie.id} --env {ENV} (or run portctl agent: it removes zombies)"
    # critical for 30s is not long for a registration removed after 60s; for 2 minutes it is
    assert set(by_subject(store_verdicts(context(store, now=time.time() + 30)))) == set(found)
    later = by_subject(store_verdicts(context(store, now=time.time() + 120)))
    long = later[f"registration {critical.id}"]
    assert long.status == VerdictStatus.FAIL
    assert long.finding.startswith(f"web ({ENV}) instance {critical.id} is critical for 12")
    assert "(deregister after 60s) (last recorded at " in long.finding
    assert long.finding.endswith("; checked now: HTTP 500 Internal Server Error")  # run again now
    assert long.fix.endswith("; run portctl agent, which removes it after deregister_after")
    # the fix it names removes it
    ctx.registry.deregister(zombie.id, ENV)
    ctx.registry.deregister(critical.id, ENV)
    assert [v.status for v in store_verdicts(ctx)] == [VerdictStatus.OK]


def test_critical_without_deregister_after_fails_after_five_minutes(store, failing):
    ctx = context(store)
    port = free_port(start=26600)
    failing(port)
    entry = ctx.registry.register(
        "db",
        port=port,
        environment=ENV,
        check=CheckSpec("http", url=f"http://127.0.0.1:{port}/health"),
        probe=run_check,
    ).entry
    assert [v.status for v in store_verdicts(context(store, now=time.time() + LONG_CRITICAL / 2))] == [
        VerdictStatus.OK
    ]
    [verdict] = store_verdicts(context(store, now=time.time() + LONG_CRITICAL + 60))
    assert verdict.subject == f"registration {entry.id}"
    assert verdict.status == VerdictStatus.FAIL
    assert (
        verdict.fix
        == f"make db pass its check (http http://127.0.0.1:{port}/health every 5s), or portctl deregister {entry.id} --env {ENV}"
    )


def test_a_stale_critical_record_of_a_service_that_answers_now_is_a_warning(store, listener):
    """Recorded critical when nothing listened; the service started since, and no agent ran."""
    ctx = context(store)
    port = free_port(start=26700)
    entry = ctx.registry.register(
        "web", port=port, environment=ENV, check=CheckSpec("tcp"), probe=run_check
    ).entry
    [recorded] = [i for i in ctx.registry.instances(all_environments=True) if i.entry.id == entry.id]
    assert recorded.status == Status.CRITICAL
    listener(port, "127.0.0.1")  # web starts
    [verdict] = store_verdicts(context(store, now=time.time() + LONG_CRITICAL + 131))
    assert verdict.status == VerdictStatus.WARN
    assert verdict.finding.startswith(f"web ({ENV}) instance {entry.id} is recorded critical for 4")
    assert verdict.finding.endswith(
        f"s (last recorded at {iso_utc(recorded.health.updated_at)}; deregister after 300s), "
        "but its check passes now: "
        "nothing is recording its health — run portctl agent"
    )
    assert verdict.fix == "portctl agent (or portctl verify, once)"
    assert verdict.details["checked_now"]["status"] == "passing"


def test_a_zombie_whose_port_answers_now_is_a_warning(store, listener):
    """Its registering process is gone, but the port answers: restarted under another pid."""
    ctx = context(store)
    port = free_port(start=26800)
    listener(port, "127.0.0.1")
    entry = ctx.registry.register(
        "api", port=port, environment=ENV, pid=gone_pid(), check=CheckSpec("tcp"), probe=run_check
    ).entry
    [verdict] = store_verdicts(context(store))
    assert verdict.status == VerdictStatus.WARN
    assert verdict.finding == (
        f"api ({ENV}) instance {entry.id} looks like a zombie (its process {entry.pid} is gone), "
        f"but its check passes now: tcp connect to 127.0.0.1:{port} ok"
    )


def test_an_expired_ttl_keeps_its_record_and_says_when(store):
    ctx = context(store)
    entry = ctx.registry.register(
        "batch", port=free_port(start=26900), environment=ENV, check=CheckSpec("ttl", ttl=30)
    ).entry
    [instance] = [i for i in ctx.registry.instances(all_environments=True) if i.entry.id == entry.id]
    [verdict] = store_verdicts(context(store, now=time.time() + 30 + LONG_CRITICAL + 60))
    assert verdict.status == VerdictStatus.FAIL
    assert verdict.finding.startswith(f"batch ({ENV}) instance {entry.id} is critical for ")
    assert verdict.finding.endswith(f" (last recorded at {iso_utc(instance.health.updated_at)})")
    assert "checked_now" not in verdict.details


def test_a_store_that_is_down_is_one_fail_naming_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"etcd://127.0.0.1:{s.getsockname()[1]}?timeout=1"  # bound, never listening
        store = open_store(url)
        [verdict] = store_verdicts(context(store))
    assert verdict.status == VerdictStatus.FAIL
    assert verdict.subject == "store"
    assert verdict.finding.startswith(f"the store {store.url} does not answer: etcd is unreachable")
    assert verdict.fix.startswith(f"start the store server at {store.url}, or choose a store that runs")


# --- the firewall check on rules the real iptables printed ------------------------------------


def test_firewall_verdicts_name_the_rule_and_the_command_that_removes_it():
    view = FirewallView(
        tuple(parse_iptables_save((DATA / "iptables-save.txt").read_text(), 4)), ("iptables",)
    )
    verdicts = firewall_findings(view, [CheckedPort(5432, "tcp", "postgres"), CheckedPort(53, "tcp", None)])
    drops = [v for v in verdicts if v.port == 5432]
    assert [v.status for v in drops] == [VerdictStatus.FAIL, VerdictStatus.FAIL]
    docker = drops[1]
    assert docker.subject == "postgres 5432/tcp"
    assert docker.finding == (
        "a DROP rule in chain DOCKER-USER of table filter (iptables) drops 5432/tcp: "
        "-A DOCKER-USER -s 10.0.0.0/8 -p tcp -m tcp --dport 5432 -j DROP"
    )
    assert docker.fix == (
        "iptables -D DOCKER-USER -s 10.0.0.0/8 -p tcp -m tcp --dport 5432 -j DROP "
        "(or allow it: iptables -I DOCKER-USER -p tcp --dport 5432 -j ACCEPT)"
    )
    assert [v.status for v in verdicts if v.port == 53] == [VerdictStatus.FAIL]  # "! --dport 22"


def test_an_unreadable_firewall_is_one_unknown():
    view = FirewallView(notice="firewall not read: iptables-save needs root (permission denied): run ...")
    [verdict] = firewall_findings(view, [CheckedPort(80, "tcp", "web"), CheckedPort(443, "tcp", "web")])
    assert verdict.status == VerdictStatus.UNKNOWN
    assert verdict.finding == view.notice
    assert verdict.fix == "run portctl doctor as root"


def test_nothing_blocking_is_ok_per_port():
    view = FirewallView((), ("iptables", "nft"))
    [verdict] = firewall_findings(view, [CheckedPort(8080, "tcp", "api")])
    assert verdict.status == VerdictStatus.OK
    assert verdict.finding == (
        "no iptables or nft rule that names 8080/tcp drops or rejects it (rules for every port are not judged)"
    )
