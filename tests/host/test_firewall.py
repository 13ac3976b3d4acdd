"""The firewall as iptables and nft print it: which rules drop or reject a port.

The parsers run on output the real tools printed (tests/host/data, made in a private network
namespace with iptables v1.8.9 nf_tables and nft 1.0.6); the reading runs the real tools in a
network namespace of the test's own, where it adds a DROP rule. The host's own rules are never
touched."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portctl.host.firewall import FirewallView, PortMatch, parse_iptables_save, parse_nft_json, read_firewall

DATA = Path(__file__).parent / "data"
IPTABLES = (DATA / "iptables-save.txt").read_text()
IP6TABLES = (DATA / "ip6tables-save.txt").read_text()
NFT_NATIVE = (DATA / "nft-native.json").read_text()
NFT_OF_IPTABLES = (DATA / "nft-iptables-nft.json").read_text()


def blocking_texts(rules, port, protocol="tcp"):
    return [r.text for r in rules if r.blocks and r.matches(port, protocol)]


@pytest.mark.parametrize(
    ("port", "protocol", "expected"),
    [
        (8080, "tcp", ["-A INPUT -p tcp -m tcp --dport 8080 -j DROP", "-A INPUT -s 198.51.100.0/24 -p tcp -m tcp ! --dport 22 -j DROP"]),
        (8080, "udp", []),
        (53, "udp", ["-A INPUT -p udp -m multiport --dports 53,1000:2000 -j REJECT --reject-with icmp-port-unreachable"]),
        (1500, "udp", ["-A INPUT -p udp -m multiport --dports 53,1000:2000 -j REJECT --reject-with icmp-port-unreachable"]),
        (2001, "udp", []),
        (22, "tcp", []),  # "! --dport 22": every port but 22
        (6050, "tcp", ["-A INPUT -s 198.51.100.0/24 -p tcp -m tcp ! --dport 22 -j DROP", '-A INPUT -p tcp -m multiport --dports 6000:6100 -m comment --comment "x11 and up" -j DROP']),
        (7000, "tcp", ["-A PREROUTING -p tcp -m tcp --dport 7000 -j DROP", "-A INPUT -s 198.51.100.0/24 -p tcp -m tcp ! --dport 22 -j DROP"]),
        (5432, "tcp", ["-A INPUT -s 198.51.100.0/24 -p tcp -m tcp ! --dport 22 -j DROP", "-A DOCKER-USER -s 10.0.0.0/8 -p tcp -m tcp --dport 5432 -j DROP"]),
    ],
)  # fmt: skip
def test_iptables_save_rules_that_block_a_port(port, protocol, expected):
    assert blocking_texts(parse_iptables_save(IPTABLES, 4), port, protocol) == expected


def test_iptables_rules_know_their_table_chain_and_action():
    rules = {r.text: r for r in parse_iptables_save(IPTABLES, 4)}
    raw = rules["-A PREROUTING -p tcp -m tcp --dport 7000 -j DROP"]
    assert (raw.tool, raw.family, raw.table, raw.chain, raw.action) == (
        "iptables",
        4,
        "raw",
        "PREROUTING",
        "DROP",
    )
    assert raw.delete_command() == "iptables -t raw -D PREROUTING -p tcp -m tcp --dport 7000 -j DROP"
    docker = rules["-A DOCKER-USER -s 10.0.0.0/8 -p tcp -m tcp --dport 5432 -j DROP"]
    assert docker.where == "chain DOCKER-USER of table filter (iptables)"
    assert (
        docker.delete_command() == "iptables -D DOCKER-USER -s 10.0.0.0/8 -p tcp -m tcp --dport 5432 -j DROP"
    )
    assert docker.allow_command(5432) == "iptables -I DOCKER-USER -p tcp --dport 5432 -j ACCEPT"
    assert rules["-A FORWARD -j DOCKER-USER"].action == "JUMP DOCKER-USER"
    assert docker.to_dict()["rule"] == docker.text


def test_rules_without_a_port_match_block_no_port():
    """A catch-all (conntrack INVALID, a jump) drops under conditions a port cannot judge."""
    rules = {r.text: r for r in parse_iptables_save(IPTABLES, 4)}
    assert not rules["-A INPUT -m conntrack --ctstate INVALID -j DROP"].matches(8080)


def test_ip6tables_save_rules_are_family_6():
    (rule,) = parse_iptables_save(IP6TABLES, 6)
    assert (rule.tool, rule.family, rule.action) == ("ip6tables", 6, "REJECT")
    assert rule.matches(9050)
    assert not rule.matches(9101)
    assert rule.delete_command().startswith("ip6tables -D INPUT -p tcp -m tcp --dport 9000:9100 -j REJECT")


@pytest.mark.parametrize(
    ("port", "protocol", "expected"),
    [
        (80, "tcp", ["tcp dport { 80, 443, 1000-2000 } drop", "tcp dport != 22 ip saddr 192.0.2.0/24 drop"]),
        (1500, "udp", []),
        (53, "udp", ["udp dport 53 reject"]),
        (53, "tcp", ["tcp dport != 22 ip saddr 192.0.2.0/24 drop"]),
        (6000, "udp", ["th dport 6000 drop"]),  # th: whichever transport protocol
        (7000, "udp", ["meta l4proto { tcp, udp } th dport 7000 drop"]),
        (5150, "tcp", ["tcp dport != 22 ip saddr 192.0.2.0/24 drop", "tcp dport @blocked reject"]),
        (22, "tcp", []),
        (9999, "tcp", ["tcp dport != 22 ip saddr 192.0.2.0/24 drop"]),  # the accept is not a block
    ],
)
def test_nft_rules_that_block_a_port(port, protocol, expected):
    assert blocking_texts(parse_nft_json(NFT_NATIVE), port, protocol) == expected


def test_nft_rules_know_their_table_and_handle():
    rule = next(r for r in parse_nft_json(NFT_NATIVE) if r.matches(53, "udp"))
    assert (rule.tool, rule.family, rule.nft_family, rule.table, rule.chain) == (
        "nft",
        0,
        "inet",
        "fw",
        "input",
    )
    assert rule.delete_command() == f"nft delete rule inet fw input handle {rule.handle}"
    assert rule.allow_command(53, "udp") == "nft insert rule inet fw input udp dport 53 accept"


def test_iptables_nft_tables_are_skipped_in_nft_when_iptables_was_read():
    """iptables-nft's tables appear in nft too, multiport only as an opaque xt match."""
    everything = parse_nft_json(NFT_OF_IPTABLES)
    assert {r.table for r in everything} == {"filter", "raw"}
    skip = [(f, t) for f in ("ip", "ip6") for t in ("filter", "raw")]
    assert parse_nft_json(NFT_OF_IPTABLES, skip) == []
    # read from nft alone, the plain rules still count; the xt multiport one cannot be judged
    assert [r.text for r in everything if r.blocks and r.matches(8080)] == [
        "tcp dport 8080 drop",
        "ip saddr 198.51.100.0/24 tcp dport != 22 drop",
    ]
    assert not [r for r in everything if r.blocks and r.matches(1500, "udp")]


def test_unreadable_input_gives_no_rules():
    assert parse_nft_json("not json") == []
    assert parse_nft_json('{"nftables": [{"rule": {"expr": [{"drop": null}]}}]}')[0].ports == ()
    assert (
        parse_iptables_save('-A INPUT -p tcp --dport http -j DROP\n-A INPUT -m comment --comment "x -j DROP')
        == []
    )


@given(
    st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)), min_size=1, max_size=5),
    st.integers(0, 65535),
)
def test_a_multiport_spec_matches_exactly_its_ports(pairs, port):
    ranges = [(min(a, b), max(a, b)) for a, b in pairs]
    spec = ",".join(f"{lo}:{hi}" if lo != hi else str(lo) for lo, hi in ranges)
    (rule,) = parse_iptables_save(f"*filter\n-A INPUT -p tcp -m multiport --dports {spec} -j DROP\n")
    inside = any(lo <= port <= hi for lo, hi in ranges)
    assert rule.matches(port) == inside
    (negated,) = parse_iptables_save(f"*filter\n-A INPUT -p tcp -m multiport ! --dports {spec} -j DROP\n")
    assert negated.matches(port) != inside
    assert PortMatch(tuple(ranges)).matches(port) == inside


# --- reading the real tools -------------------------------------------------------------------


def test_no_tool_installed_is_one_line(tmp_path):
    view = read_firewall(path=str(tmp_path))
    assert not view.readable
    assert view.rules == ()
    assert view.notice == (
        "firewall not read: neither iptables-save nor nft is installed (install iptables or nftables to check it)"
    )


needs_root_and_tools = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables") is None or shutil.which("ip") is None,
    reason="needs root, iptables and ip (iproute2) to make a network namespace of its own",
)


@pytest.fixture
def netns():
    name = f"doctorx-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def read_in(netns: str, port: int, user: str | None = None) -> dict:
    """read_firewall run inside ``netns`` (as ``user``): what it reads and what blocks ``port``."""
    code = (
        "import json, sys; from portctl.host.firewall import read_firewall; v = read_firewall(); "
        f"print(json.dumps({{'read_by': v.read_by, 'notice': v.notice, "
        f"'blocking': [r.to_dict() for r in v.blocking({port})]}}))"
    )
    argv = ["ip", "netns", "exec", netns]
    python = sys.executable
    if user:  # the venv's interpreter may sit in root's home; the system's reads the stdlib
        argv += ["runuser", "-u", user, "--"]
        python = "/usr/bin/python3"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([*argv, python, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_root_and_tools
def test_a_drop_rule_added_in_a_namespace_is_found(netns):
    port = 20000 + secrets.randbelow(20000)  # any port: the namespace is the test's own
    before = read_in(netns, port)
    assert before["blocking"] == []
    assert "iptables" in before["read_by"]
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            str(port),
            "-j",
            "DROP",
        ],
        check=True,
    )
    (rule,) = read_in(netns, port)["blocking"]
    assert rule["rule"] == f"-A INPUT -p tcp -m tcp --dport {port} -j DROP"
    assert (rule["tool"], rule["table"], rule["chain"], rule["action"]) == (
        "iptables",
        "filter",
        "INPUT",
        "DROP",
    )
    # the fix it gives removes the rule
    subprocess.run(["ip", "netns", "exec", netns, *rule["delete"].split()], check=True)
    assert read_in(netns, port)["blocking"] == []


@needs_root_and_tools
@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (nftables)")
def test_a_native_nft_rule_is_found_beside_iptables(netns):
    port = 20000 + secrets.randbelow(20000)  # any port: the namespace is the test's own
    nft = ["ip", "netns", "exec", netns, "nft"]
    subprocess.run([*nft, "add", "table", "inet", "doctorx"], check=True)
    subprocess.run(
        [*nft, "add", "chain", "inet", "doctorx", "input", "{ type filter hook input priority 0; }"],
        check=True,
    )
    subprocess.run(
        [*nft, "add", "rule", "inet", "doctorx", "input", "tcp", "dport", f"{{ {port}, 1 }}", "drop"],
        check=True,
    )
    (rule,) = read_in(netns, port)["blocking"]
    assert (rule["tool"], rule["table"], rule["chain"]) == ("nft", "doctorx", "input")
    subprocess.run(["ip", "netns", "exec", netns, *rule["delete"].split()], check=True)
    assert read_in(netns, port)["blocking"] == []


@needs_root_and_tools
@pytest.mark.skipif(
    shutil.which("runuser") is None or not os.access("/usr/bin/python3", os.X_OK),
    reason="needs runuser and /usr/bin/python3 to read as another user",
)
def test_not_root_says_so_in_one_line(netns):
    view = read_in(netns, 80, user="nobody")
    assert view["read_by"] == []
    assert "need root (permission denied): run portctl doctor as root to check the firewall" in view["notice"]


# --- jumps into chains that drop, and ACCEPT rules ahead of a DROP ----------------------------


def in_netns(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True)


def doctor_in(netns: str, port: int) -> list[dict]:
    """The firewall verdicts doctor gives on ``port`` inside ``netns``, and whether a real
    connection to a listener on the port gets through there."""
    code = (
        "import json, socket; from portctl.host.firewall import read_firewall; "
        "from portctl.operations._doctor_extra import CheckedPort, firewall_findings; "
        f"vs = firewall_findings(read_firewall(), [CheckedPort({port}, 'tcp', None)]); "
        f"srv = socket.create_server(('127.0.0.1', {port})); "
        "c = socket.socket(); c.settimeout(0.5); "
        f"ok = c.connect_ex(('127.0.0.1', {port})) == 0; "
        "print(json.dumps({'verdicts': [v.to_dict() for v in vs], 'connects': ok}))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    in_netns(netns, "ip", "link", "set", "lo", "up")
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_root_and_tools
def test_a_jump_to_a_chain_that_rejects_fails_naming_both_rules(netns):
    port = 20000 + secrets.randbelow(20000)
    in_netns(netns, "iptables", "-N", "DOCTORX-BLOCK")
    in_netns(netns, "iptables", "-A", "DOCTORX-BLOCK", "-j", "REJECT")
    in_netns(netns, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DOCTORX-BLOCK")
    seen = doctor_in(netns, port)
    assert not seen["connects"]  # the traffic is refused for real
    [verdict] = [v for v in seen["verdicts"] if v["status"] != "ok"]
    assert verdict["status"] == "fail"
    sending = f"-A INPUT -p tcp -m tcp --dport {port} -j DOCTORX-BLOCK"
    assert verdict["finding"] == (
        f"a rule in chain INPUT of table filter (iptables) sends {port}/tcp to chain DOCTORX-BLOCK, "
        f"whose rule -A DOCTORX-BLOCK -j REJECT --reject-with icmp-port-unreachable rejects it: {sending}"
    )
    assert verdict["fix"].startswith(f"iptables -D INPUT -p tcp -m tcp --dport {port} -j DOCTORX-BLOCK ")
    in_netns(netns, *verdict["fix"].split(" (or ")[0].split())  # the fix deletes the sending rule
    after = doctor_in(netns, port)
    assert after["connects"]
    assert [v["status"] for v in after["verdicts"]] == ["ok"]


@needs_root_and_tools
def test_a_jump_to_a_chain_that_returns_first_is_not_blocking(netns):
    """fail2ban's shape: the chain drops some sources and returns the rest."""
    port = 20000 + secrets.randbelow(20000)
    in_netns(netns, "iptables", "-N", "DOCTORX-F2B")
    in_netns(netns, "iptables", "-A", "DOCTORX-F2B", "-s", "192.0.2.7/32", "-j", "REJECT")
    in_netns(netns, "iptables", "-A", "DOCTORX-F2B", "-j", "RETURN")
    in_netns(netns, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DOCTORX-F2B")
    [verdict] = doctor_in(netns, port)["verdicts"]
    # the REJECT names a source, not the port: conservatively the port is dropped (for some)
    assert verdict["status"] == "fail"
    assert "whose rule -A DOCTORX-F2B -s 192.0.2.7/32 -j REJECT" in verdict["finding"]
    in_netns(netns, "iptables", "-D", "DOCTORX-F2B", "-s", "192.0.2.7/32", "-j", "REJECT")
    assert [v["status"] for v in doctor_in(netns, port)["verdicts"]] == ["ok"]


@needs_root_and_tools
def test_jumps_in_a_cycle_end(netns):
    port = 20000 + secrets.randbelow(20000)
    for chain in ("DOCTORX-A", "DOCTORX-B"):
        in_netns(netns, "iptables", "-N", chain)
    in_netns(netns, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DOCTORX-A")
    in_netns(netns, "iptables", "-A", "DOCTORX-A", "-j", "DOCTORX-B")
    in_netns(netns, "iptables", "-A", "DOCTORX-B", "-p", "tcp", "--dport", str(port), "-j", "DROP")
    sending, dropping = doctor_in(netns, port)["verdicts"]  # the DROP names the port itself too
    assert (sending["status"], dropping["status"]) == ("fail", "fail")
    assert (
        f"sends {port}/tcp to chain DOCTORX-A (then DOCTORX-B), whose rule -A DOCTORX-B" in sending["finding"]
    )
    assert dropping["finding"].startswith("a DROP rule in chain DOCTORX-B of table filter (iptables) drops")
    # iptables refuses a loop, so the cycle is parsed from text
    text = "*filter\n-A INPUT -p tcp --dport 80 -j A\n-A A -j B\n-A B -j A\n-A B -p udp -j DROP\n"
    view = FirewallView(tuple(parse_iptables_save(text)), ("iptables",))
    assert view.blocks(80) == []


@needs_root_and_tools
def test_doctors_own_allow_fix_clears_the_drop(netns):
    port = 20000 + secrets.randbelow(20000)
    in_netns(netns, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP")
    [before] = doctor_in(netns, port)["verdicts"]
    assert before["status"] == "fail"
    allow = before["fix"].split("(or allow it: ")[1].rstrip(")")
    assert allow == f"iptables -I INPUT -p tcp --dport {port} -j ACCEPT"
    in_netns(netns, *allow.split())
    after = doctor_in(netns, port)
    assert after["connects"]
    [verdict] = after["verdicts"]
    assert verdict["status"] == "ok"
    assert verdict["finding"] == (
        f"a rule in chain INPUT of table filter (iptables) lets {port}/tcp through ahead of the "
        f"DROP rule that names it: -A INPUT -p tcp -m tcp --dport {port} -j ACCEPT"
    )
    assert verdict["details"]["shadowed"][0]["rule"] == f"-A INPUT -p tcp -m tcp --dport {port} -j DROP"


@needs_root_and_tools
def test_an_accept_with_other_conditions_does_not_clear_the_drop(netns):
    port = 20000 + secrets.randbelow(20000)
    in_netns(netns, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP")
    in_netns(
        netns,
        "iptables",
        "-I",
        "INPUT",
        "-s",
        "192.0.2.0/24",
        "-p",
        "tcp",
        "--dport",
        str(port),
        "-j",
        "ACCEPT",
    )
    in_netns(
        netns, "iptables", "-I", "INPUT", "-i", "eth9", "-p", "tcp", "--dport", str(port), "-j", "ACCEPT"
    )
    [verdict] = doctor_in(netns, port)["verdicts"]
    assert verdict["status"] == "fail"
    assert verdict["finding"].startswith("a DROP rule in chain INPUT of table filter (iptables) drops")
    # a multiport ACCEPT counts as a port condition only
    in_netns(
        netns,
        "iptables",
        "-I",
        "INPUT",
        "-p",
        "tcp",
        "-m",
        "multiport",
        "--dports",
        f"1,{port}",
        "-j",
        "ACCEPT",
    )
    assert [v["status"] for v in doctor_in(netns, port)["verdicts"]] == ["ok"]


needs_nft = pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (nftables)")


def nft_table(netns: str) -> list[str]:
    nft = ["nft"]
    in_netns(netns, *nft, "add", "table", "inet", "doctorx")
    in_netns(
        netns, *nft, "add", "chain", "inet", "doctorx", "input", "{ type filter hook input priority 0; }"
    )
    in_netns(netns, *nft, "add", "chain", "inet", "doctorx", "blk")
    return nft


@needs_root_and_tools
@needs_nft
def test_an_nft_jump_to_a_chain_that_drops_fails(netns):
    port = 20000 + secrets.randbelow(20000)
    nft = nft_table(netns)
    in_netns(netns, *nft, "add", "rule", "inet", "doctorx", "blk", "drop")
    in_netns(netns, *nft, "add", "rule", "inet", "doctorx", "input", "tcp", "dport", str(port), "jump", "blk")
    seen = doctor_in(netns, port)
    assert not seen["connects"]
    [verdict] = seen["verdicts"]
    assert verdict["status"] == "fail"
    assert verdict["finding"] == (
        f"a rule in chain input of table inet doctorx (nft) sends {port}/tcp to chain blk, "
        f"whose rule drop drops it: tcp dport {port} jump blk"
    )
    in_netns(netns, *verdict["fix"].split(" (or ")[0].split())
    assert [v["status"] for v in doctor_in(netns, port)["verdicts"]] == ["ok"]


@needs_root_and_tools
@needs_nft
def test_an_nft_accept_ahead_of_a_drop_clears_it(netns):
    port = 20000 + secrets.randbelow(20000)
    nft = nft_table(netns)
    in_netns(netns, *nft, "add", "rule", "inet", "doctorx", "input", "tcp", "dport", str(port), "drop")
    [before] = doctor_in(netns, port)["verdicts"]
    allow = before["fix"].split("(or allow it: ")[1].rstrip(")")
    assert allow == f"nft insert rule inet doctorx input tcp dport {port} accept"
    in_netns(netns, *allow.split())
    after = doctor_in(netns, port)
    assert after["connects"]
    assert [v["status"] for v in after["verdicts"]] == ["ok"]
    # an accept for one source only does not
    in_netns(netns, *nft, "delete", "table", "inet", "doctorx")
    nft_table(netns)
    in_netns(netns, *nft, "add", "rule", "inet", "doctorx", "input", "tcp", "dport", str(port), "drop")
    in_netns(
        netns,
        *nft,
        "insert",
        "rule",
        "inet",
        "doctorx",
        "input",
        "ip",
        "saddr",
        "192.0.2.1",
        "tcp",
        "dport",
        str(port),
        "accept",
    )
    assert [v["status"] for v in doctor_in(netns, port)["verdicts"]] == ["fail"]


@needs_root_and_tools
def test_an_accept_in_a_chain_jumped_to_ahead_of_the_drop_clears_it(netns):
    """ufw's shape: INPUT jumps to a chain holding `allow PORT` before a later DROP names it."""
    port = 20000 + secrets.randbelow(20000)
    in_netns(
        netns,
        "iptables",
        "-A",
        "INPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    )
    in_netns(netns, "iptables", "-N", "DOCTORX-ALLOW")
    in_netns(netns, "iptables", "-A", "DOCTORX-ALLOW", "-p", "tcp", "--dport", str(port), "-j", "ACCEPT")
    in_netns(netns, "iptables", "-A", "INPUT", "-j", "DOCTORX-ALLOW")
    in_netns(netns, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP")
    found = doctor_in(netns, port)
    assert found["connects"]
    [verdict] = found["verdicts"]
    assert verdict["status"] == "ok", verdict
    # a jump only for some traffic (one interface) accepts nothing for sure: the DROP stands
    in_netns(netns, "iptables", "-D", "INPUT", "-j", "DOCTORX-ALLOW")
    in_netns(netns, "iptables", "-I", "INPUT", "2", "-i", "eth9", "-j", "DOCTORX-ALLOW")
    [still] = doctor_in(netns, port)["verdicts"]
    assert still["status"] == "fail"
