"""ServiceDiscovery on a real etcd: the store-neutral resolver behaviour again, followed through
etcd's watch, then what a resolver does when etcd itself goes away."""

from __future__ import annotations

import signal

import pytest

from portctl.backends import open_store
from portctl.discovery import ServiceDiscovery
from portctl.ports.allocator import PortAllocator
from tests.discovery.test_resolver import (  # noqa: F401 - fixtures and tests run again here
    HEALTHY,
    SETTINGS,
    _clean_environment,
    allocator,
    cache_file,
    discovery,
    registry,
    test_all_instances_critical_is_an_error_saying_so,
    test_allocate_missing_allocates_and_answers,
    test_allocations_of_other_hosts_do_not_count,
    test_among_healthy_instances_the_lowest_id_is_chosen,
    test_follows_a_reallocation_without_restarting,
    test_follows_a_reregistration_without_restarting,
    test_follows_health_changes,
    test_many_threads_resolve_while_the_port_moves,
    test_unhealthy_instances_are_skipped,
    test_unknown_names_list_what_is_known,
    test_url_and_address_from_a_registration,
    test_warning_counts_as_healthy,
    test_without_watch_only_refresh_rereads,
    wait_for,
)


@pytest.fixture
def store(etcd_store):
    return etcd_store


def test_a_stopped_etcd_serves_the_last_known_good_marked_stale(own_etcd, tmp_path):
    url = f"etcd://{own_etcd.endpoint}/stale?timeout=1"
    with open_store(url) as store:
        port = PortAllocator(store, SETTINGS).allocate("redis").allocation.port
    with ServiceDiscovery(url, settings=SETTINGS, cache_file=str(tmp_path / "c.json")) as resolver:
        assert resolver.get_service_url("redis") == f"redis://127.0.0.1:{port}"
        assert resolver.stale is None
        own_etcd.kill(signal.SIGKILL)
        assert wait_for(lambda: resolver.stale, lambda stale: stale is not None, timeout=15) is not None
        assert resolver.get_service_url("redis") == f"redis://127.0.0.1:{port}"
