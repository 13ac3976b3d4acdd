"""The etcd store on a real etcd: the shared contract, then what only etcd can get wrong."""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import time
import urllib.request

import pytest

from portctl.backends import open_store
from portctl.backends.etcd import EtcdStore, parse_url
from portctl.errors import InvalidInput, StoreDenied, StoreTimeout, StoreUnavailable
from portctl.testing import StoreContract
from tests.support.etcd_fixture import ETCD, SKIP_REASON, etcdctl, start_single


class TestEtcdStore(StoreContract):
    ttl = 2.0  # etcd's minimum lease is about 1.5 s with the test cluster's timings
    ttl_wait = 2.0

    @pytest.fixture
    def store_url(self, etcd_url):
        return etcd_url


@pytest.fixture
def store(etcd_store):
    return etcd_store


def raw_keys(endpoint: str) -> list[str]:
    """Every key in the whole etcd, read without portctl."""
    body = json.dumps(
        {"key": base64.b64encode(b"\0").decode(), "range_end": base64.b64encode(b"\0").decode()}
    )
    request = urllib.request.Request(f"http://{endpoint}/v3/kv/range", body.encode())
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
        kvs = json.loads(response.read()).get("kvs", [])
    return [base64.b64decode(kv["key"]).decode() for kv in kvs]


# Connection options ------------------------------------------------------------------------


def test_url_forms_give_endpoints_prefix_and_timeout():
    options = parse_url("etcd://10.0.0.1:2379,10.0.0.2:2379/team-a?timeout=2.5", environ={})
    assert options.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert options.prefix == "/team-a/"
    assert options.timeout == 2.5
    assert parse_url("etcd+https://h:2379", environ={}).endpoints == ("https://h:2379",)
    assert parse_url("etcd://h:2379", environ={}).prefix == "/portctl/"


def test_endpoints_and_credentials_come_from_etcdctl_variables(tmp_path):
    environ = {"ETCDCTL_ENDPOINTS": "http://a:2379,b:2380", "ETCDCTL_USER": "alice:s3cret"}
    options = parse_url("etcd:///shared", environ=environ)
    assert options.endpoints == ("http://a:2379", "http://b:2380")
    assert (options.user, options.password) == ("alice", "s3cret")
    assert "s3cret" not in repr(options)
    assert "s3cret" not in options.url
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    from_file = parse_url(f"etcd://bob@h:2379?password_file={secret}", environ={})
    assert (from_file.user, from_file.password) == ("bob", "from-a-file")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd://alice:pw@h:2379", "no password in the URL"),
        ("etcd://alice:s3cr#et@h:2379", "no password"),
        ("etcd://alice:se/cret@h:2379", "no password"),
        ("etcd://h:2379?cacert=/nonexistent/ca.pem", "/nonexistent/ca.pem"),
        ("etcd://h:2379?password_file=/nonexistent/pw", "/nonexistent/pw"),
        ("etcd://alice@h:2379", "ETCDCTL_PASSWORD"),
        ("etcd://h:2379?timeout=0", "timeout"),
        ("etcd://h:2379?color=blue", "color"),
        ("etcd://h:99999", "port"),
        ("etcd://h:2379/../escape", "prefix"),
        ("etcd:///nothing", "ETCDCTL_ENDPOINTS"),
    ],
)
def test_bad_connection_options_are_refused_naming_the_problem(url, message):
    with pytest.raises(InvalidInput, match=message) as caught:
        parse_url(url, environ={})
    assert ":pw@" not in str(caught.value)
    assert "s3cr" not in str(caught.value)
    assert "se/cret" not in str(caught.value)
    assert "alice:se" not in str(caught.value)


def test_a_missing_tls_file_from_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("ETCDCTL_CACERT", "/nonexistent/etcd-ca.pem")
    with pytest.raises(InvalidInput, match="ETCDCTL_CACERT.*/nonexistent/etcd-ca.pem"):
        open_store("etcd://127.0.0.1:2379")


# Failures of the cluster -------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_reachable_endpoint_is_store_unavailable_naming_it():
    port = _closed_port()
    with open_store(f"etcd://127.0.0.1:{port}?timeout=1") as store, pytest.raises(StoreUnavailable) as caught:
        store.get("allocations/x")
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_a_server_that_never_answers_times_out():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does) but never answers
    try:
        port = silent.getsockname()[1]
        with open_store(f"etcd://127.0.0.1:{port}?timeout=0.5") as store, pytest.raises(StoreTimeout):
            store.get("allocations/x")
    finally:
        silent.close()


def test_failover_to_the_next_endpoint(etcd_endpoint):
    dead = _closed_port()
    with open_store(f"etcd://127.0.0.1:{dead},{etcd_endpoint}/failover-{dead}") as store:
        store.create("a", "1")
        got = store.get("a")
    assert got is not None
    assert got.value == "1"


# Keys stay under the prefix ----------------------------------------------------------------


def test_two_prefixes_never_see_each_others_keys(etcd_endpoint):
    with (
        open_store(f"etcd://{etcd_endpoint}/one") as one,
        open_store(f"etcd://{etcd_endpoint}/one-more") as two,
    ):
        one.create("k", "1")
        two.create("k", "2")
        assert [(e.key, e.value) for e in one.list("")] == [("k", "1")]
        assert [(e.key, e.value) for e in two.list("")] == [("k", "2")]


def test_a_crafted_name_cannot_leave_the_prefix(store, etcd_endpoint):
    from portctl.config.settings import Settings
    from portctl.ports.allocator import PortAllocator

    before = raw_keys(etcd_endpoint)
    allocator = PortAllocator(store, Settings(host="h"))
    for name in ("../../etc", "a/../../b", "x\x00y", "/abs"):
        with pytest.raises(InvalidInput):
            allocator.allocate(name, type="dynamic")
    assert raw_keys(etcd_endpoint) == before


# Change feed -------------------------------------------------------------------------------


def test_a_compacted_position_resets_and_a_snapshot_resumes_exactly(store):
    first = store.create("feed/a", "1")
    old = store.position()
    store.compare_and_set("feed/a", "2", first.version)
    store.create("feed/b", "1")
    store.compact()
    batch = store.watch("feed/", old, timeout=2)
    assert batch.reset
    entries, position = store.snapshot("feed/")
    assert [(e.key, e.value) for e in entries] == [("feed/a", "2"), ("feed/b", "1")]
    store.create("feed/c", "1")
    after = store.watch("feed/", position, timeout=2)
    assert [(c.kind, c.key) for c in after.changes] == [("put", "feed/c")]


def test_a_consumer_through_compactions_neither_loses_nor_repeats(store):
    """A counter is bumped 60 times while history is compacted under a watching consumer; the
    consumer sees strictly increasing values and ends on the last one."""
    entry = store.create("feed/counter", "0")
    seen: list[int] = []
    resets = []

    def consume(reader):
        entries, position = reader.snapshot("feed/")
        seen.extend(int(e.value) for e in entries)
        deadline = time.monotonic() + 30
        while seen[-1] < 60 and time.monotonic() < deadline:
            batch = reader.watch("feed/", position, timeout=0.5)
            if batch.reset:
                resets.append(position)
                entries, position = reader.snapshot("feed/")
                seen.extend(int(e.value) for e in entries if int(e.value) != seen[-1])
                continue
            seen.extend(int(c.entry.value) for c in batch.changes if c.entry is not None)
            position = batch.position

    with open_store(store.url) as reader:
        worker = threading.Thread(target=consume, args=(reader,))
        worker.start()
        for value in range(1, 61):
            entry = store.compare_and_set("feed/counter", str(value), entry.version)
            if value % 15 == 0:
                store.compact()
                time.sleep(0.2)  # let the consumer fall behind the compaction
            time.sleep(0.005)
        worker.join(timeout=40)
    assert seen[-1] == 60
    assert seen == sorted(set(seen))


# Credentials -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured_etcd(tmp_path_factory):
    """An etcd with auth enabled whose tokens expire after 2 s idle."""
    if ETCD is None:
        pytest.skip(SKIP_REASON)
    member = start_single(
        tmp_path_factory.mktemp("etcd-auth"), "--auth-token", "simple", "--auth-token-ttl", "2"
    )
    endpoint = f"http://{member.endpoint}"
    etcdctl(endpoint, "user", "add", "root:root-pw")
    etcdctl(endpoint, "user", "add", "portctl:right-pw")
    etcdctl(endpoint, "role", "add", "portctl-rw")
    etcdctl(endpoint, "role", "grant-permission", "portctl-rw", "--prefix=true", "readwrite", "/portctl/")
    etcdctl(endpoint, "user", "grant-role", "portctl", "portctl-rw")
    etcdctl(endpoint, "auth", "enable")
    yield member.endpoint
    member.kill()


def test_password_from_the_environment_works_and_the_token_is_renewed(secured_etcd, monkeypatch):
    monkeypatch.setenv("ETCDCTL_USER", "portctl")
    monkeypatch.setenv("ETCDCTL_PASSWORD", "right-pw")
    with open_store(f"etcd://{secured_etcd}") as store:
        assert isinstance(store, EtcdStore)
        made = store.create("renewal/a", "1")
        time.sleep(4)  # the simple token expires after 2 s without use
        store.compare_and_set("renewal/a", "2", made.version)
        got = store.get("renewal/a")
        assert got is not None
        assert got.value == "2"
        store.delete("renewal/a")


def test_a_wrong_password_is_denied_naming_the_variables_not_the_secret(secured_etcd, monkeypatch):
    monkeypatch.setenv("ETCDCTL_USER", "portctl:wrong-pw")
    with open_store(f"etcd://{secured_etcd}") as store, pytest.raises(StoreDenied) as caught:
        store.get("x")
    assert "ETCDCTL_USER" in str(caught.value)
    assert "wrong-pw" not in str(caught.value)


def test_no_credentials_on_a_secured_etcd_is_denied(secured_etcd, monkeypatch):
    monkeypatch.delenv("ETCDCTL_USER", raising=False)
    with open_store(f"etcd://{secured_etcd}") as store, pytest.raises(StoreDenied, match="ETCDCTL_USER"):
        store.list("")


def test_a_prefix_outside_the_users_role_is_denied(secured_etcd, monkeypatch):
    monkeypatch.setenv("ETCDCTL_USER", "portctl:right-pw")
    with open_store(f"etcd://{secured_etcd}/elsewhere") as store, pytest.raises(StoreDenied, match="roles"):
        store.create("x", "1")


# Watch streams -----------------------------------------------------------------------------


def test_two_readers_of_one_store_each_see_every_change(store):
    position = store.position()
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def follow(name):
        at = position
        deadline = time.monotonic() + 20
        while len(seen[name]) < 20 and time.monotonic() < deadline:
            batch = store.watch("shared/", at, timeout=1)
            seen[name] += [c.key for c in batch.changes]
            at = batch.position

    readers = [threading.Thread(target=follow, args=(n,)) for n in seen]
    for r in readers:
        r.start()
    for i in range(20):
        store.create(f"shared/k{i:02d}", "x")
    for r in readers:
        r.join(timeout=30)
    want = [f"shared/k{i:02d}" for i in range(20)]
    assert seen == {"a": want, "b": want}


def test_a_quiet_stream_outlives_the_call_timeout(etcd_url):
    with open_store(etcd_url + "?timeout=1") as store:
        position = store.position()
        quiet = store.watch("quiet/", position, timeout=2.5)  # longer than a call may take
        assert quiet.changes == ()
        store.create("quiet/a", "1")
        batch = store.watch("quiet/", quiet.position, timeout=5)
        assert [c.key for c in batch.changes] == ["quiet/a"]


def test_a_member_that_stops_answering_ends_the_watch_with_an_error(own_etcd):
    outcome: list[object] = []
    with open_store(f"etcd://{own_etcd.endpoint}/stopped?timeout=1") as store:
        position = store.position()
        own_etcd.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing

        def watch():
            try:
                outcome.append(store.watch("x/", position, timeout=1))
            except StoreUnavailable as e:
                outcome.append(e)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        watcher.join(timeout=30)
        assert not watcher.is_alive(), "watch() must not block on a silent member"
        assert isinstance(outcome[0], StoreUnavailable)
        own_etcd.process.send_signal(signal.SIGCONT)
