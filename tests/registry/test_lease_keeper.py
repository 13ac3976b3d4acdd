"""LeaseKeeper and Registry.verify as a library user calls them: a real JSON store, real
listeners, a real thread keeping a lease."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from portctl.backends import open_store
from portctl.config.settings import Settings
from portctl.errors import InvalidInput
from portctl.keys import entry_key, health_key
from portctl.registry.entries import CheckSpec, Registry, Status
from portctl.registry.leases import LeaseKeeper, Renewal
from tests.conftest import free_port

SETTINGS = Settings(host="keeper-host")


@pytest.fixture
def registry(tmp_path):
    with open_store(f"file://{tmp_path}/store.json") as store:
        yield Registry(store, SETTINGS)


def test_a_kept_lease_outlives_its_length_and_stopping_is_prompt(registry):
    instance = registry.register("api", port=free_port(), check=CheckSpec("none"), lease=1.5)
    stop = threading.Event()
    outcome: list[bool] = []
    keeper = threading.Thread(target=lambda: outcome.append(LeaseKeeper(registry).keep(instance, stop)))
    keeper.start()
    time.sleep(3.5)
    assert [i.entry.id for i in registry.instances("api")] == [instance.entry.id]
    stop.set()
    keeper.join(timeout=1)
    assert not keeper.is_alive()
    assert outcome == [True]


def test_the_keeper_stops_when_the_entry_is_deregistered_elsewhere(registry):
    instance = registry.register("api", port=free_port(), check=CheckSpec("none"), lease=1.5)
    rewritten: list[str] = []
    stop = threading.Event()
    threading.Timer(0.2, lambda: registry.deregister(instance.entry.id)).start()
    kept = LeaseKeeper(registry).keep(instance, stop, on_rewritten=lambda i: rewritten.append(i.entry.id))
    assert kept is False
    assert rewritten == []
    assert registry.instances("api") == []


def test_a_lease_that_ran_out_unrenewed_is_written_again(registry):
    instance = registry.register("api", port=free_port(), check=CheckSpec("none"), lease=1)
    keeper = LeaseKeeper(registry)
    assert keeper.renew(instance, due=True) is Renewal.RENEWED
    assert keeper.renew(instance) is Renewal.NOT_DUE
    time.sleep(2.5)  # longer than the lease: the keeper was paused, the entry expired
    assert registry.instances("api") == []
    assert [i.entry.id for i in keeper.renew_all([])] == [instance.entry.id]
    assert [i.entry.id for i in registry.instances("api")] == [instance.entry.id]


def test_verify_runs_tcp_checks_now_and_records_them(registry):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        up = listener.getsockname()[1]
        registry.register("api", port=up, check=CheckSpec("tcp"), instance_id="api-up")
        down = free_port()
        registry.register("api", port=down, check=CheckSpec("tcp"), instance_id="api-down")
        registry.register("api", port=free_port(), check=CheckSpec("none"), instance_id="api-none")
        found = {v.instance.entry.id: v for v in registry.verify()}
    assert found["api-up"].status == Status.PASSING
    assert found["api-down"].status == Status.CRITICAL
    assert found["api-none"].status == Status.PASSING
    assert found["api-up"].to_dict()["status"] == "passing"
    recorded = {i.entry.id: i.status for i in registry.instances("api")}
    assert recorded["api-up"] == Status.PASSING
    assert recorded["api-down"] == Status.CRITICAL


def test_a_library_error_names_the_parameter_not_a_flag(registry):
    with pytest.raises(InvalidInput, match=r"^lease: 0.5 is not valid") as refused:
        registry.register("api", port=free_port(), check=CheckSpec("none"), lease=0.5)
    assert refused.value.params == ("lease",)


def test_a_pause_between_reading_the_clock_and_the_store_is_a_lapse_not_a_deregistration(registry):
    """The keeper read its clock, was stopped past the lease, and then found the entry gone:
    that is its own lease running out, so the entry is written again."""
    instance = registry.register("api", port=free_port(), check=CheckSpec("none"), lease=2.0)
    readings = iter([0.0, 0.5])  # the last renewal; the renewal's own reading, before the pause
    keeper = LeaseKeeper(registry, clock=lambda: next(readings, 10.0))  # after it: long past
    assert keeper.renew(instance) is Renewal.RENEWED
    e = instance.entry
    registry.store.delete(entry_key(e.environment, e.service, e.id))  # the lease ran out
    registry.store.delete(health_key(e.environment, e.service, e.id))
    assert keeper.renew(instance, due=True) is Renewal.REWRITTEN
    assert [i.entry.id for i in registry.instances("api")] == [e.id]


def test_a_lease_that_ran_out_before_its_keeper_started_is_written_again(registry):
    """The lease is granted by the registration; the keeper starts later (a slow start, or the
    process stopped in between). Its lapse counts from the registration, not from the start."""
    instance = registry.register("api", port=free_port(), check=CheckSpec("none"), lease=3.0)
    readings = iter([2.0])  # the keeper starts 2 s after the registration began (at 0)
    keeper = LeaseKeeper(registry, clock=lambda: next(readings, 3.2))  # first renewal: past 3 s
    e = instance.entry
    registry.store.delete(entry_key(e.environment, e.service, e.id))  # the lease ran out
    registry.store.delete(health_key(e.environment, e.service, e.id))
    stop = threading.Event()
    rewritten: list[str] = []

    def on_rewritten(i):
        rewritten.append(i.entry.id)
        stop.set()

    assert keeper.keep(instance, stop, renewed_at=0.0, on_rewritten=on_rewritten) is True
    assert rewritten == [e.id]
    assert [i.entry.id for i in registry.instances("api")] == [e.id]
