"""etcd endpoint failover: every endpoint listed is tried within the call's time budget.

Dead endpoints are real sockets on loopback: a port where nothing listens (connection refused,
costs nothing) and one that accepts connections but never answers (the kernel completes the
handshake; nothing reads), which costs a share of the budget.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from portctl.backends import Create, Put, open_store
from portctl.errors import StoreTimeout, StoreUnavailable

RAW_DUMPS = ("HTTPConnectionPool", "HTTPSConnectionPool", "Max retries", "NewConnectionError", "urllib3")


def closed_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def dead_first(etcd_cluster, silent_endpoint) -> str:
    """Five endpoints: a refusing one, a silent one, then the three healthy members."""
    return f"etcd://{closed_endpoint()},{silent_endpoint},{etcd_cluster.endpoints}/failover"


def wait_for_no_leader(member, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = member.status() or {}
        if not status.get("leader") or status.get("leader") == "0":
            return
        time.sleep(0.05)
    raise AssertionError(f"{member.name} still reports a leader")


def test_every_operation_reaches_the_quorum_behind_two_dead_endpoints(dead_first):
    with open_store(dead_first) as store:
        created = store.create("a", "1")
        assert store.get("a") == created
        store.transact([Put("a", "2", version=created.version), Create("b", "x", ttl=5)])
        assert [e.value for e in store.list()] == ["2", "x"]
        assert store.refresh("b").ttl is not None
        position = store.position()
        store.create("c", "3")
        batch = store.watch("", position, timeout=5)
        assert [c.key for c in batch.changes] == ["c"]


def test_a_fresh_store_for_each_call_still_reaches_the_quorum(dead_first):
    # No memory of which endpoint worked: each opening starts again from the first listed.
    for i in range(3):
        with open_store(dead_first) as store:
            store.create(f"k{i}", "v")
    with open_store(dead_first) as store:
        assert [e.key for e in store.list()] == ["k0", "k1", "k2"]


def test_a_member_killed_between_calls_is_skipped(etcd_cluster):
    with open_store(etcd_cluster.url()) as store:
        store.create("a", "1")
        etcd_cluster.members[0].kill()
        store.compare_and_set("a", "2", store.get("a").version)
        assert store.get("a").value == "2"


def test_every_endpoint_down_names_each_with_its_cause(silent_endpoint):
    refused = closed_endpoint()
    store = open_store(f"etcd://{refused},{silent_endpoint}?timeout=1")
    with store, pytest.raises(StoreUnavailable) as caught:
        store.get("a")
    message = str(caught.value)
    assert f"{refused} (connection refused)" in message
    assert f"{silent_endpoint} (no answer" in message
    assert not any(dump in message for dump in RAW_DUMPS), message


def test_a_single_silent_endpoint_is_a_timeout_naming_the_budget(silent_endpoint):
    with open_store(f"etcd://{silent_endpoint}?timeout=0.5") as store, pytest.raises(StoreTimeout) as caught:
        store.get("a")
    assert silent_endpoint in str(caught.value)
    assert "0.5s" in str(caught.value)


def test_a_cluster_without_quorum_says_it_has_no_leader(etcd_cluster):
    url = etcd_cluster.url() + "?timeout=2"
    etcd_cluster.members[1].kill()
    etcd_cluster.members[2].kill()
    wait_for_no_leader(etcd_cluster.members[0])
    with open_store(url) as store:
        for call in (lambda: store.get("a"), lambda: store.create("a", "1"), store.position):
            with pytest.raises(StoreUnavailable) as caught:
                call()
            message = str(caught.value)
            assert "no leader" in message
            assert "quorum" in message
            assert etcd_cluster.members[1].endpoint in message  # the members that are down are named
            assert not any(dump in message for dump in RAW_DUMPS), message


def test_an_unresolvable_name_and_a_tls_mismatch_are_named_shortly(etcd_endpoint):
    with (
        open_store("etcd://no-such-host.invalid:2379?timeout=2") as store,
        pytest.raises(StoreUnavailable) as c,
    ):
        store.get("a")
    assert "no-such-host.invalid:2379 (name not resolved)" in str(c.value)
    with open_store(f"etcd+https://{etcd_endpoint}?timeout=2") as store, pytest.raises(StoreUnavailable) as c:
        store.get("a")
    assert f"{etcd_endpoint} (TLS failure" in str(c.value)
    assert not any(dump in str(c.value) for dump in RAW_DUMPS), str(c.value)


@pytest.fixture
def resetting_endpoint() -> Iterator[str]:
    """A plain server that reads the TLS hello and resets the connection (as a loaded plain-HTTP
    server does when it closes with the hello unread): the reset comes before any TLS alert."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(1)  # part of the hello stays unread
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # SO_LINGER 0: RST, not FIN

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    server.shutdown(socket.SHUT_RDWR)  # wakes the accept
    server.close()
    thread.join(timeout=5)


@pytest.mark.parametrize("scheme", ["etcd+https", "consul+https"])
def test_a_reset_during_the_tls_handshake_is_a_tls_failure(scheme, resetting_endpoint):
    with (
        open_store(f"{scheme}://{resetting_endpoint}?timeout=2") as store,
        pytest.raises(StoreUnavailable) as c,
    ):
        store.get("a")
    assert f"{resetting_endpoint} (TLS failure" in str(c.value), str(c.value)
    assert "plain HTTP" in str(c.value)
    assert not any(dump in str(c.value) for dump in RAW_DUMPS), str(c.value)


def test_no_leader_is_found_behind_dead_endpoints_listed_first(etcd_cluster, silent_endpoint):
    url = f"etcd://{closed_endpoint()},{silent_endpoint},{etcd_cluster.endpoints}/nq?timeout=2"
    etcd_cluster.members[1].kill()
    etcd_cluster.members[2].kill()
    wait_for_no_leader(etcd_cluster.members[0])
    with open_store(url) as store, pytest.raises(StoreUnavailable) as caught:
        store.get("a")
    assert "no leader" in str(caught.value)
    assert f"{silent_endpoint} (no answer" in str(caught.value)
