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

from tests.support.consul_emulator import ConsulEmulator


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
        [sys.executable, "-m", "tests.support.consul_emulator", "--port", str(port)],
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


def test_an_empty_value_reads_back_as_null(c, consul_prefix):
    p, b64 = consul_prefix, lambda s: base64.b64encode(s.encode()).decode()
    assert c.kv.put(p + "empty", "")
    assert c.kv.put(p + "dir/", None)
    assert c.kv.put(p + "dir/x", "1")
    assert c.kv.get(p + "empty")[1]["Value"] is None
    assert [i["Value"] for i in c.kv.get(p + "dir/", recurse=True)[1]] == [None, b"1"]
    got = c.txn.put(
        [{"KV": {"Verb": "get", "Key": p + "empty"}}, {"KV": {"Verb": "get", "Key": p + "dir/x"}}]
    )
    assert [r["KV"]["Value"] for r in got["Results"]] == [None, b64("1")]


def test_a_lock_is_released_only_by_its_session(c, consul_prefix):
    key = consul_prefix + "lock"
    first, second = c.session.create(), c.session.create()
    assert c.kv.put(key, "1", acquire=first)
    assert c.kv.put(key, "1", acquire=first)  # again by its holder: still held
    assert c.kv.put(key, "2", acquire=second) is False
    assert c.kv.put(key, "2", release=second) is False
    assert c.kv.put(key, "2", release=first)
    _, item = c.kv.get(key)
    assert ("Session" in item, item["LockIndex"], item["Value"]) == (False, 1, b"2")
    assert c.kv.put(key, "3", acquire=second)
    assert c.kv.get(key)[1]["LockIndex"] == 2


def test_a_registered_check_is_named_by_its_id_which_defaults_to_its_name(c):
    assert c.agent.check.register("disk space", consul.Check.ttl("10s"), notes="df -h")
    assert c.agent.check.register("mem", consul.Check.ttl("10s"), check_id="mem-1")
    checks = c.agent.checks()
    assert (checks["disk space"]["Name"], checks["disk space"]["Notes"]) == ("disk space", "df -h")
    assert checks["mem-1"]["Name"] == "mem"
    assert "serfHealth" not in checks  # the node's Serf check is the servers', not the agent's
    assert c.agent.check.register("orphan", consul.Check.ttl("10s"), service_id="nowhere") is False  # 404
    assert c.agent.check.deregister("mem-1")
    assert c.agent.check.deregister("mem-1") is False  # 404: unknown check ID
    assert set(c.agent.checks()) == {"disk space"}


def test_a_service_has_several_checks_numbered_in_order_plus_the_node_check(c):
    c.agent.service.register(
        "multi",
        check=consul.Check.ttl("10s"),
        extra_checks=[consul.Check.ttl("10s"), consul.Check.ttl("10s")],
    )
    c.agent.check.register("extra", consul.Check.ttl("10s"), service_id="multi")
    _, nodes = c.health.service("multi")
    ids = [check["CheckID"] for check in nodes[0]["Checks"]]
    assert ids == ["serfHealth", "extra", "service:multi:1", "service:multi:2", "service:multi:3"]
    for cid in ids[1:]:
        c.agent.check.ttl_pass(cid)
    assert len(c.health.service("multi", passing=True)[1]) == 1
    c.agent.check.ttl_fail("service:multi:2")
    assert c.health.service("multi", passing=True)[1] == []  # one critical check is enough
    assert [x["CheckID"] for x in c.health.checks("multi")[1]] == ids[1:]


def test_node_maintenance_fails_every_service_until_it_is_disabled(c):
    c.agent.service.register("web", service_id="web-1", check=consul.Check.ttl("10s"))
    c.agent.check.ttl_pass("service:web-1")
    assert len(c.health.service("web", passing=True)[1]) == 1
    assert c.agent.maintenance("true")
    check = c.agent.checks()["_node_maintenance"]
    assert (check["Status"], check["ServiceID"]) == ("critical", "")
    assert "no reason was provided" in check["Notes"]
    assert c.health.service("web", passing=True)[1] == []
    assert "_node_maintenance" in [x["CheckID"] for x in c.health.node("emulator")[1]]
    assert c.agent.maintenance("false")
    assert "_node_maintenance" not in c.agent.checks()
    assert len(c.health.service("web", passing=True)[1]) == 1


def test_service_maintenance_fails_only_that_service(c):
    for sid in ("api-1", "api-2"):
        c.agent.service.register("api", service_id=sid, check=consul.Check.ttl("10s"))
        c.agent.check.ttl_pass(f"service:{sid}")
    assert c.agent.service.maintenance("api-1", "true", "upgrading")
    check = c.agent.checks()["_service_maintenance:api-1"]
    assert (check["Status"], check["Notes"], check["ServiceID"]) == ("critical", "upgrading", "api-1")
    assert [n["Service"]["ID"] for n in c.health.service("api", passing=True)[1]] == ["api-2"]
    with pytest.raises(consul.ConsulException, match="400"):
        c.http.put(CB.boolean(), "/v1/agent/service/maintenance/api-1")  # enable is required
    assert c.agent.service.maintenance("nope", "true") is False  # 404: unknown service
    assert c.agent.service.maintenance("api-1", "false")
    assert len(c.health.service("api", passing=True)[1]) == 2


def test_health_state_and_node_list_node_and_service_checks(c):
    c.agent.service.register("job", service_id="job-1", check=consul.Check.ttl("10s"))
    assert [x["CheckID"] for x in c.health.state("passing")[1]] == ["serfHealth"]
    assert {x["CheckID"] for x in c.health.state("critical")[1]} == {"service:job-1"}
    assert {x["CheckID"] for x in c.health.state("any")[1]} == {"serfHealth", "service:job-1"}
    node = c.agent.self()["Config"]["NodeName"]
    assert {x["CheckID"] for x in c.health.node(node)[1]} == {"serfHealth", "service:job-1"}
    assert c.health.node("elsewhere")[1] == []


def test_catalog_lists_nodes_services_and_what_is_registered_on_other_nodes(c):
    _, nodes = c.catalog.nodes()
    assert [n["Node"] for n in nodes] == ["emulator"]
    assert c.catalog.services()[1] == {"consul": []}
    assert c.catalog.register(
        "n1", "10.1.10.11", service={"service": "db", "port": 5432}, check={"name": "up"}
    )
    assert c.catalog.register("n2", "10.1.10.12", service={"service": "db", "tags": ["primary"]})
    c.agent.service.register("web", service_id="web-1", port=8080, tags=["v1"])
    assert [n["Node"] for n in c.catalog.nodes()[1]] == ["emulator", "n1", "n2"]
    assert c.catalog.services()[1] == {"consul": [], "db": ["primary"], "web": ["v1"]}
    assert {x["Node"] for x in c.catalog.service("db")[1]} == {"n1", "n2"}
    assert [x["Node"] for x in c.catalog.service("db", tag="primary")[1]] == ["n2"]
    _, n1 = c.catalog.node("n1")
    assert (n1["Node"]["Address"], set(n1["Services"])) == ("10.1.10.11", {"db"})
    assert set(c.catalog.node("emulator")[1]["Services"]) == {"consul", "web-1"}
    assert c.catalog.node("n3")[1] is None
    _, db = c.health.service("db")
    assert {n["Node"]["Node"]: [x["CheckID"] for x in n["Checks"]] for n in db} == {"n1": ["up"], "n2": []}
    assert c.catalog.deregister("n1", check_id="up")
    assert c.catalog.deregister("n2", service_id="db")
    assert {x["Node"] for x in c.catalog.service("db")[1]} == {"n1"}
    assert c.catalog.deregister("n1")
    assert [n["Node"] for n in c.catalog.nodes()[1]] == ["emulator", "n2"]


def test_status_names_the_leader_that_agent_self_reports(c):
    leader = c.status.leader()
    assert leader == c.agent.self()["Stats"]["consul"]["leader_addr"]
    assert c.status.peers() == [leader]
    assert c.agent.self()["Member"] in c.agent.members()


def test_filter_expressions_select_entries_and_a_malformed_one_is_refused(c):
    c.agent.service.register("f", service_id="f-1", tags=["keep"], check=consul.Check.ttl("10s"))
    c.agent.service.register("f", service_id="f-2", tags=["drop"], check=consul.Check.ttl("10s"))
    assert set(c.agent.services(filter_expr='"keep" in Tags')) == {"f-1"}
    assert set(c.agent.checks(filter_expr='ServiceID == "f-2"')) == {"service:f-2"}
    found = c.health.service("f", filter_expr='"keep" in Service.Tags or Service.ID == `nothing`')[1]
    assert [n["Service"]["ID"] for n in found] == ["f-1"]
    assert [x["ServiceID"] for x in c.health.state("any", filter_expr="not (ServiceID is empty)")[1]] == [
        "f-1",
        "f-2",
    ]
    with pytest.raises(consul.ConsulException, match="boolean expression"):
        c.catalog.nodes(filter_expr="not a valid expression((")


def test_another_datacenter_has_no_path(c, consul_prefix):
    for call in (lambda: c.kv.get(consul_prefix + "k", dc="dc2"), lambda: c.session.create(dc="dc2")):
        with pytest.raises(consul.ConsulException, match="No path to datacenter"):
            call()


def test_script_checks_run_only_where_enabled():
    with ConsulEmulator() as server:
        host, port = server.address.rsplit(":", 1)
        c = consul.Consul(host=host, port=int(port))
        with pytest.raises(consul.ConsulException, match="Scripts are disabled"):
            c.agent.check.register("script", consul.Check.script(["true"], "1s"))
    with ConsulEmulator(enable_script_checks=True) as server:
        host, port = server.address.rsplit(":", 1)
        c = consul.Consul(host=host, port=int(port))
        for name, args in (
            ("ok", ["true"]),
            ("warn", ["sh", "-c", "echo low; exit 1"]),
            ("bad", ["sh", "-c", "exit 2"]),
        ):
            assert c.agent.check.register(name, consul.Check.script(args, "1s"))
        status = lambda: {k: (v["Status"], v["Output"]) for k, v in c.agent.checks().items()}  # noqa: E731
        want = {"ok": ("passing", ""), "warn": ("warning", "low\n"), "bad": ("critical", "")}
        assert wait_for(status, lambda s: s == want) == want


def test_leave_shuts_the_agent_down():
    server = ConsulEmulator().start()
    host, port = server.address.rsplit(":", 1)
    c = consul.Consul(host=host, port=int(port))
    assert c.agent.leave()

    def reachable() -> bool:
        try:
            c.status.leader()
        except requests.ConnectionError:
            return False
        return True

    assert wait_for(reachable, lambda up: not up) is False
    server.stop()  # already stopped: harmless
