"""The registry contract: register, health, lease and deregister through :class:`Registry`, the
same on every store, with the expectations that depend on the store's declared capability.

A store with ``Capability.RUNS_CHECKS`` (Consul) runs the registered checks itself: what the
registry reads back is the store's own verdict, so a check that cannot pass turns critical
there whatever the registering process said. A store without it keeps what was written until
``portctl agent`` runs the check.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from portctl.backends import Capability, Store, open_store
from portctl.config.settings import Settings
from portctl.keys import entry_key, health_key
from portctl.records import CheckSpec, ServiceEntry, Status
from portctl.registry.entries import Instance, Registry

ENV = "production"


def _passing(_entry: ServiceEntry) -> tuple[Status, str]:
    return Status.PASSING, "said passing by the registering process"


def _closed_port() -> int:
    """A loopback port that nothing listens on (bound, then closed: the kernel leaves it free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class RegistryContract:
    """Subclass in a pytest module with a ``store_url`` fixture yielding a fresh, empty store.
    ``ttl`` is the shortest lease the store keeps honestly; ``ttl_wait`` how long past it to
    wait; ``check_wait`` how long a store that runs checks may take to run one."""

    ttl: float = 1.0
    ttl_wait: float = 1.5
    check_wait: float = 10.0

    @pytest.fixture
    def store_url(self) -> Iterator[str]:
        raise NotImplementedError("a RegistryContract subclass must provide a store_url fixture")

    @pytest.fixture
    def store(self, store_url: str) -> Iterator[Store]:
        store = open_store(store_url)
        yield store
        store.close()

    @pytest.fixture
    def registry(self, store: Store) -> Registry:
        return Registry(store, Settings(host="contract-host"))

    def _register(self, registry: Registry, service: str, **kw: Any) -> Instance:
        return registry.register(service, port=_closed_port(), environment=ENV, probe=_passing, **kw)

    def test_a_registration_is_listed_with_its_entry_and_health(
        self, registry: Registry, store: Store
    ) -> None:
        done = self._register(registry, "contract-api", check=CheckSpec("ttl", ttl=60.0), tags=("v1",))
        e = done.entry
        listed = registry.instances(environment=ENV, service="contract-api")
        assert [i.entry.id for i in listed] == [e.id]
        assert listed[0].entry.tags == ("v1",)
        assert store.get(entry_key(ENV, e.service, e.id)) is not None
        assert store.get(health_key(ENV, e.service, e.id)) is not None

    def test_a_ttl_report_is_what_the_registry_reads(self, registry: Registry) -> None:
        e = self._register(registry, "contract-ttl", check=CheckSpec("ttl", ttl=60.0)).entry
        registry.ttl(e.id, Status.PASSING, "all good", environment=ENV)
        assert registry.instance(e.id, ENV).status == Status.PASSING
        registry.ttl(e.id, Status.CRITICAL, "broken", environment=ENV)
        found = registry.instance(e.id, ENV)
        assert found.status == Status.CRITICAL
        assert "broken" in found.output

    def test_a_check_that_cannot_pass_is_judged_by_the_store_that_runs_checks(
        self, registry: Registry, store: Store
    ) -> None:
        e = self._register(registry, "contract-tcp", check=CheckSpec("tcp", interval=1.0, timeout=1.0)).entry

        def status() -> Status:
            return registry.instance(e.id, ENV).status

        if Capability.RUNS_CHECKS in store.capabilities:
            assert _until(lambda: status() == Status.CRITICAL, self.check_wait), (
                "a store that runs checks must find nothing listening on the port"
            )
        else:
            assert status() == Status.PASSING  # as written, until the agent checks it

    def test_a_leased_registration_vanishes_unless_kept_alive(self, registry: Registry) -> None:
        kept = self._register(registry, "contract-kept", check=CheckSpec("ttl", ttl=60.0), lease=self.ttl)
        lapsed = self._register(registry, "contract-lapsed", check=CheckSpec("ttl", ttl=60.0), lease=self.ttl)
        deadline = time.monotonic() + self.ttl + self.ttl_wait
        while time.monotonic() < deadline:
            assert registry.keep_alive(kept, rewrite=False) is False
            time.sleep(self.ttl / 4)
        ids = {i.entry.id for i in registry.instances(environment=ENV)}
        assert kept.entry.id in ids
        assert lapsed.entry.id not in ids

    def test_deregistering_removes_the_entry_and_its_health(self, registry: Registry, store: Store) -> None:
        e = self._register(registry, "contract-gone", check=CheckSpec("ttl", ttl=60.0)).entry
        registry.deregister(e.id, ENV)
        assert registry.instances(environment=ENV, service="contract-gone") == []
        assert store.get(entry_key(ENV, e.service, e.id)) is None
        assert store.get(health_key(ENV, e.service, e.id)) is None
