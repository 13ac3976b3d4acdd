"""Conflict resolution against real sockets and a real JSON store: what moves, what never does,
and what is recorded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from portctl.config.settings import Settings, load_settings
from portctl.host.kernel import bind_test
from portctl.operations.resolve import Resolver, resolve
from portctl.ports.allocator import PortAllocator
from portctl.ports.events import EventLog
from portctl.records import CheckSpec
from portctl.registry.entries import Registry
from portctl.registry.health import run_check
from tests.conftest import free_port

HOST = "resolve-host"
ENV = "development"


@pytest.fixture
def allocator(store):
    return PortAllocator(store, Settings(host=HOST))


def allocate(allocator, service, start, compose=True):
    """A port of a compose stack's service (``app/SERVICE``): a host process on it is not the
    service, which runs in its container; ``compose=False``: a service run on the host."""
    port = free_port(start=start)
    tag = f"app/{service}" if compose else None
    return allocator.allocate(service, port=port, environment=ENV, compose=tag).allocation


def resolver(allocator, **kw):
    kw.setdefault("environment", ENV)
    kw.setdefault("confirmations", 3)
    return Resolver(allocator, **kw)


def test_a_foreign_holder_is_confirmed_over_passes_then_the_service_moves(allocator, listener):
    api = allocate(allocator, "api", 21000)
    listener(api.port)  # this test's own process: not the api, and never signalled
    r = resolver(allocator)
    first, second = r.run_once(), r.run_once()
    assert [(p.service, p.seen, p.needed) for p in first.pending] == [("api", 1, 3)]
    assert [p.seen for p in second.pending] == [2]
    assert allocator.get("api", ENV).port == api.port  # nothing moved before the third look
    third = r.run_once()
    (move,) = third.moves
    assert (move.service, move.old_port) == ("api", api.port)
    assert move.new_port != api.port
    assert allocator.get("api", ENV).port == move.new_port
    assert bind_test(move.new_port).free
    assert f"pid {os.getpid()}" in move.holder
    (event,) = EventLog(allocator.store, HOST).read().events
    assert (event.kind, event.service, event.old_port, event.new_port) == (
        "moved",
        "api",
        api.port,
        move.new_port,
    )
    assert event.actor == "portctl resolve"
    assert f"pid {os.getpid()}" in event.holder


def test_a_process_on_a_host_services_port_may_be_it_restarted_and_is_left_alone(allocator):
    api = allocate(allocator, "api", 22000, compose=False)
    registry = Registry(allocator.store, allocator.settings)
    first = _serve(api.port)
    try:
        registry.register("api", port=api.port, environment=ENV, probe=run_check)
    finally:
        _stop(first)
    again = _serve(api.port)  # the service restarted: a new pid, the same program
    try:
        report = resolver(allocator, confirmations=1).run_once()
        assert report.moves == []
        (skipped,) = report.skipped
        assert f"cannot tell whether process python3 pid {again.pid}" in skipped.reason.replace(
            "python ", "python3 "
        )
        assert allocator.get("api", ENV).port == api.port
        assert registry.instances("api", ENV)[0].entry.port == api.port
    finally:
        _stop(again)


def test_a_docker_proxy_without_its_container_is_left_alone(allocator, tmp_path, monkeypatch):
    """Docker not reachable: a docker-proxy on a stack's port may serve the stack's own container."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    api = allocate(allocator, "api", 22100)
    proxy = tmp_path / "docker-proxy"
    proxy.symlink_to(sys.executable)
    child = _serve(api.port, program=str(proxy))
    try:
        report = resolver(allocator, confirmations=1).run_once()
        assert report.moves == []
        (skipped,) = report.skipped
        assert "held by Docker's proxy" in skipped.reason
        assert allocator.get("api", ENV).port == api.port
    finally:
        _stop(child)


def test_the_rate_limit_holds_across_resolvers_through_the_event_log(allocator, listener):
    taken = [allocate(allocator, name, 22200 + 10 * i) for i, name in enumerate(("api", "admin_ui"))]
    for a in taken:
        listener(a.port)
    assert len(resolver(allocator, confirmations=1, max_moves=1, per=3600).run_once().moves) == 1
    later = resolver(allocator, confirmations=1, max_moves=1, per=3600).run_once()  # another run
    assert later.moves == []
    assert "rate limit" in later.skipped[0].reason


def test_a_registration_whose_check_url_has_no_path_follows_too(allocator, listener):
    api = allocate(allocator, "api", 22300)
    registry = Registry(allocator.store, allocator.settings)
    check = CheckSpec("http", url=f"http://127.0.0.1:{api.port}")
    registry.register("api", port=api.port, environment=ENV, pid=999_999, check=check)
    listener(api.port)
    (move,) = resolver(allocator, confirmations=1).run_once().moves
    (instance,) = registry.instances("api", ENV)
    assert instance.entry.check.url == f"http://127.0.0.1:{move.new_port}"
    assert move.problems == ()


def test_a_conflict_that_goes_away_starts_its_count_again(allocator, listener):
    api = allocate(allocator, "api", 21100)
    r = resolver(allocator)
    sock = listener(api.port)
    r.run_once()
    r.run_once()
    sock.close()
    assert r.run_once().pending == []
    listener(api.port)
    assert [p.seen for p in r.run_once().pending] == [1]
    assert allocator.get("api", ENV).port == api.port


def test_another_holder_on_the_next_pass_is_another_conflict(allocator):
    api = allocate(allocator, "api", 21200)
    r = resolver(allocator, confirmations=2)
    first = _serve(api.port)
    try:
        assert [p.seen for p in r.run_once().pending] == [1]
    finally:
        _stop(first)
    second = _serve(api.port)
    try:
        report = r.run_once()
        assert [p.seen for p in report.pending] == [1]
        assert report.moves == []
    finally:
        _stop(second)


def test_a_service_running_on_its_port_is_never_moved(allocator):
    api = allocate(allocator, "api", 21300)
    server = _serve(api.port)
    try:
        registry = Registry(allocator.store, allocator.settings)
        registry.register("api", port=api.port, environment=ENV, pid=server.pid, probe=run_check)
        r = resolver(allocator, confirmations=1)
        report = r.run_once()
        assert report.moves == []
        assert report.pending == []
        assert allocator.get("api", ENV).port == api.port
        assert server.poll() is None  # and what holds the port is never touched
    finally:
        _stop(server)


def test_registrations_follow_the_move(allocator, listener):
    api = allocate(allocator, "api", 21400)
    registry = Registry(allocator.store, allocator.settings)
    registry.register("api", port=api.port, environment=ENV, pid=999_999)  # its process is gone
    listener(api.port)
    (move,) = resolver(allocator, confirmations=1).run_once().moves
    (instance,) = registry.instances("api", ENV)
    assert instance.entry.port == move.new_port
    assert move.registrations == (instance.entry.id,)
    assert instance.entry.id.endswith(f"-{move.new_port}")


def test_a_dry_run_says_what_would_move_and_changes_nothing(allocator, listener):
    api = allocate(allocator, "api", 21500)
    listener(api.port)
    (move,) = resolver(allocator, confirmations=1, dry_run=True).run_once().moves
    assert not move.done
    assert move.new_port != api.port
    assert allocator.get("api", ENV).port == api.port
    assert EventLog(allocator.store, HOST).read().events == []


def test_moves_are_rate_limited(allocator, listener):
    taken = [allocate(allocator, name, 21600 + 10 * i) for i, name in enumerate(("api", "admin_ui"))]
    for a in taken:
        listener(a.port)
    report = resolver(allocator, confirmations=1, max_moves=1, per=3600).run_once()
    assert len(report.moves) == 1
    (skipped,) = report.skipped
    assert "rate limit" in skipped.reason
    assert allocator.get(skipped.service, ENV).port in {a.port for a in taken}


def test_a_full_range_moves_nothing_and_backs_off(tmp_path, store, listener):
    port = free_port(start=21700)
    config = tmp_path / "portctl.toml"
    config.write_text(
        f"[types.tiny]\nrange = [{port}, {port}]\n[services.worker]\ntype = 'tiny'\nport = {port}\n"
    )
    settings = load_settings(str(config))
    allocator = PortAllocator(store, Settings(policy=settings.policy, host=HOST))
    allocator.allocate("worker", environment=ENV, compose="app/worker")
    listener(port)
    now = [1000.0]
    r = resolver(allocator, confirmations=1, clock=lambda: now[0], again=True)
    (skipped,) = r.run_once().skipped
    assert "no free port" in skipped.reason
    assert "no free port" in skipped.reason
    assert "30s" in skipped.reason
    assert allocator.get("worker", ENV).port == port
    now[0] += 5
    (later,) = r.run_once().skipped
    assert "trying again in 25s" in later.reason
    now[0] += 30
    (again,) = r.run_once().skipped
    assert "60s" in again.reason  # the back-off doubled
    assert EventLog(store, HOST).read().events == []


def test_the_person_facing_resolve_looks_a_second_apart(allocator, listener):
    api = allocate(allocator, "api", 21800)
    listener(api.port)
    waits: list[float] = []
    report = resolve(resolver(allocator), sleep=waits.append)
    assert waits == [1.0, 1.0]
    assert [m.service for m in report.moves] == ["api"]


def test_with_nothing_to_resolve_it_looks_once(allocator):
    allocate(allocator, "api", 21900)
    waits: list[float] = []
    report = resolve(resolver(allocator), sleep=waits.append)
    assert waits == []
    assert report.moves == []
    assert not report.conflicts_left


def _serve(port: int, program: str = sys.executable) -> subprocess.Popen:
    """A process of its own listening on ``port``; returns once it listens."""
    code = (
        "import socket,sys,time\n"
        f"s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0',{port}))\n"
        "s.listen(8); print('up', flush=True); time.sleep(600)\n"
    )
    child = subprocess.Popen([program, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "up"
    return child


def _stop(child: subprocess.Popen) -> None:
    child.kill()
    child.wait()
