"""The Consul emulator answers like Consul to any client: raw py-consul calls, no portctl."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import consul
import pytest
import requests
from consul.callback import CB

from tests.consul_emulator import ConsulEmulator


@pytest.fixture
def c(consul_url):
    host, port = consul_url.removeprefix("http://").rsplit(":", 1)
    return consul.Consul(host=host, port=int(port), connections_timeout=10)


def new_session(c, ttl: str, behavior: str) -> str:
    """A session with a short TTL: py-consul itself refuses TTLs under Consul's default 10s
    minimum, so the body is sent through its HTTP client as Consul documents it."""
    body = {"TTL": ttl, "Behavior": behavior, "LockDelay": "0s"}
    return c.http.put(CB.json(is_id=True), "/v1/session/create", data=json.dumps(body))


def wait_for(read, until, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    value = read()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def test_kv_put_get_flags_recurse_keys_and_cas(c, consul_prefix):
    p = consul_prefix
    assert c.kv.put(p + "a/1", "one", flags=42)
    assert c.kv.put(p + "a/2", "two")
    assert c.kv.put(p + "b", "three")
    _, item = c.kv.get(p + "a/1")
    assert (item["Value"], item["Flags"]) == (b"one", 42)
    assert [i["Key"] for i in c.kv.get(p + "a/", recurse=True)[1]] == [p + "a/1", p + "a/2"]
    assert c.kv.get(p, keys=True, separator="/")[1] == [p + "a/", p + "b"]
    assert c.kv.put(p + "b", "x", cas=0) is False  # cas=0: only if absent
    assert c.kv.put(p + "b", "x", cas=item["ModifyIndex"]) is False  # another key's index
    _, b = c.kv.get(p + "b")
    assert c.kv.put(p + "b", "x", cas=b["ModifyIndex"]) is True
    assert c.kv.delete(p + "b", cas=b["ModifyIndex"]) is False  # stale index
    assert c.kv.delete(p + "a/", recurse=True)
    assert c.kv.get(p + "a/", recurse=True)[1] is None


def test_txn_applies_all_or_answers_409_with_the_failed_operation(c, consul_prefix):
    p, b64 = consul_prefix, lambda s: base64.b64encode(s.encode()).decode()
    c.kv.put(p + "taken", "t")
    ok = c.txn.put(
        [
            {"KV": {"Verb": "set", "Key": p + "x", "Value": b64("1")}},
            {"KV": {"Verb": "get", "Key": p + "taken"}},
        ]
    )
    assert ok["Errors"] is None
    assert base64.b64decode(ok["Results"][1]["KV"]["Value"]) == b"t"
    with pytest.raises(consul.ConsulException, match="409") as failed:
        c.txn.put(
            [
                {"KV": {"Verb": "set", "Key": p + "y", "Value": b64("2")}},
                {"KV": {"Verb": "cas", "Key": p + "taken", "Index": 0, "Value": b64("3")}},
            ]
        )
    body = json.loads(str(failed.value).split(" ", 1)[1])
    assert body["Results"] is None
    assert body["Errors"][0]["OpIndex"] == 1
    assert c.kv.get(p + "y")[1] is None  # rolled back


def test_sessions_lock_keys_and_delete_or_release_them_when_they_expire(c, consul_prefix):
    p = consul_prefix
    deleting = new_session(c, "1s", "delete")
    releasing = new_session(c, "1s", "release")
    assert c.kv.put(p + "d", "1", acquire=deleting)
    assert c.kv.put(p + "r", "1", acquire=releasing)
    assert c.kv.put(p + "d", "2", acquire=releasing) is False  # held by another session
    assert c.session.info(deleting)[1]["Behavior"] == "delete"
    assert wait_for(lambda: c.kv.get(p + "d")[1], lambda v: v is None) is None
    released = wait_for(lambda: c.kv.get(p + "r")[1], lambda v: "Session" not in v)
    assert released["Value"] == b"1"
    assert c.session.info(releasing)[1] is None
    kept = new_session(c, "1s", "delete")
    assert c.kv.put(p + "k", "1", acquire=kept)
    for _ in range(8):
        time.sleep(0.4)
        c.session.renew(kept)
    assert c.kv.get(p + "k")[1]["Session"] == kept
    assert c.kv.put(p + "k", "2", release=kept)
    c.session.destroy(kept)
    assert c.kv.get(p + "k")[1]["Value"] == b"2"


def test_a_session_ttl_below_the_minimum_is_refused(consul_emulator, c):
    with pytest.raises(consul.ConsulException, match="Invalid Session TTL"):
        new_session(c, "500ms", "delete")


def test_blocking_queries_wait_for_a_change_or_the_wait(c, consul_prefix):
    key = consul_prefix + "watched"
    c.kv.put(key, "1")
    index, _ = c.kv.get(key)
    started = time.monotonic()
    same, _ = c.kv.get(key, index=index, wait="300ms")
    assert same == index
    assert time.monotonic() - started >= 0.25
    threading.Timer(0.2, lambda: c.kv.put(key, "2")).start()
    newer, item = c.kv.get(key, index=index, wait="10s")
    assert int(newer) > int(index)
    assert item["Value"] == b"2"


def test_agent_services_with_checks_show_in_catalog_and_health(c, http_server):
    port = http_server.server_address[1]
    check = consul.Check.http(f"http://127.0.0.1:{port}/health", interval="200ms")
    c.agent.service.register("web", service_id="web-1", port=port, tags=["v1"], check=check)
    assert c.catalog.services()[1]["web"] == ["v1"]
    assert c.catalog.service("web")[1][0]["ServicePort"] == port
    assert wait_for(lambda: c.health.service("web", passing=True)[1], lambda n: len(n) == 1)
    http_server.behaviour.code = 500
    assert wait_for(lambda: c.health.service("web", passing=True)[1], lambda n: n == []) == []
    index, _ = c.health.service("web")
    threading.Timer(0.2, lambda: c.agent.service.deregister("web-1")).start()
    _, nodes = c.health.service("web", index=index, wait="10s")
    assert nodes == []


def test_ttl_checks_are_updated_and_expire(c):
    c.agent.service.register("job", service_id="job-1", check=consul.Check.ttl("1s"))
    status = lambda: c.agent.checks()["service:job-1"]["Status"]  # noqa: E731
    assert status() == "critical"
    c.agent.check.ttl_pass("service:job-1", "fine")
    assert status() == "passing"
    c.agent.check.ttl_warn("service:job-1")
    assert status() == "warning"
    assert wait_for(status, lambda s: s == "critical") == "critical"
    assert "TTL expired" in c.agent.checks()["service:job-1"]["Output"]


def test_without_a_leader_reads_need_stale_and_writes_fail(consul_emulator, c, consul_prefix):
    c.kv.put(consul_prefix + "k", "v")
    consul_emulator.state.set_leader(False)
    assert c.status.leader() == ""
    with pytest.raises(consul.ConsulException, match="No cluster leader"):
        c.kv.get(consul_prefix + "k")
    assert c.kv.get(consul_prefix + "k", consistency="stale")[1]["Value"] == b"v"
    with pytest.raises(consul.ConsulException, match="No cluster leader"):
        c.kv.put(consul_prefix + "k", "w")


def test_an_index_reset_answers_blocking_queries_with_a_lower_index(consul_emulator, c, consul_prefix):
    for i in range(5):
        c.kv.put(consul_prefix + "k", str(i))
    index, _ = c.kv.get(consul_prefix + "k")
    threading.Timer(0.2, lambda: consul_emulator.state.reset_index(2)).start()
    lower, _ = c.kv.get(consul_prefix + "k", index=index, wait="10s")
    assert int(lower) < int(index)


def test_acls_refuse_requests_without_the_token():
    with ConsulEmulator(acl_token="t0ken") as server:  # noqa: S106 - a test token
        host, port = server.address.rsplit(":", 1)
        anonymous = consul.Consul(host=host, port=int(port))
        with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
            anonymous.kv.put("a", "b")
        assert consul.Consul(host=host, port=int(port), token="t0ken").kv.put("a", "b")  # noqa: S106


def test_it_starts_on_its_own_from_the_command_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.consul_emulator", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert f"127.0.0.1:{port}" in process.stdout.readline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status/leader", timeout=10) as answer:
            assert json.loads(answer.read()) == "127.0.0.1:8300"
    finally:
        process.terminate()
        process.wait(10)


def test_a_ttl_check_expires_with_consuls_output_and_its_service_is_reaped(consul_emulator, c):
    consul_emulator.state.reap_min = 0.5  # Consul's is 1m, its reaper runs every 30s
    consul_emulator.state.reap_interval = 0.2
    check = consul.Check.ttl("1s")
    check["DeregisterCriticalServiceAfter"] = "10ms"  # raised to the minimum, as Consul does
    c.agent.service.register("job", service_id="job-1", check=check)
    c.agent.service.register("keep", service_id="keep-1", check=consul.Check.ttl("1s"))
    c.agent.check.ttl_pass("service:job-1", "all good")
    expired = wait_for(lambda: c.agent.checks()["service:job-1"], lambda k: k["Status"] == "critical")
    assert expired["Output"] == "TTL expired (last output before timeout follows): all good"
    assert wait_for(lambda: "job-1" in c.agent.services(), lambda present: not present) is False
    assert c.health.service("job")[1] == []
    assert "keep-1" in c.agent.services()  # critical, but without DeregisterCriticalServiceAfter


def test_a_dropped_reply_is_applied_and_never_answered(consul_emulator, c, consul_prefix):
    consul_emulator.drop_next_reply("/v1/txn")
    op = {"KV": {"Verb": "set", "Key": consul_prefix + "k", "Value": base64.b64encode(b"v").decode()}}
    with pytest.raises(requests.ConnectionError):
        c.txn.put([op])
    assert c.kv.get(consul_prefix + "k")[1]["Value"] == b"v"
    assert c.txn.put([op])["Errors"] is None  # the next one is answered
