"""portctl.host.listeners against real sockets: listeners, the wildcard rules, and who holds each one."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import pwd
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from portctl.errors import InvalidInput
from portctl.host import listeners as scan
from portctl.host.listeners import Listener, ListenerScan, ProcessInfo, blocks

ROOT = pathlib.Path(__file__).resolve().parents[2]
LITTLE = pytest.mark.skipif(sys.byteorder != "little", reason="literal /proc lines of a little-endian host")


def inode_of(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def fresh_port() -> int:
    """A port nothing uses on any address, TCP or UDP, so a test's listener is its only one."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind(("0.0.0.0", 0))
            port = first.getsockname()[1]
            if all(bindable(family, kind, port) for family, kind in KINDS):
                return port
    raise RuntimeError("no port free on both families and protocols")


KINDS = [
    (socket.AF_INET6, socket.SOCK_STREAM),
    (socket.AF_INET, socket.SOCK_DGRAM),
    (socket.AF_INET6, socket.SOCK_DGRAM),
]


def bindable(family: socket.AddressFamily, kind: socket.SocketKind, port: int) -> bool:
    with socket.socket(family, kind) as sock:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        except OSError:
            return False
    return True


def tcp_listener(host: str, v6only: bool | None = None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if v6only is not None:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    sock.bind((host, fresh_port()))
    sock.listen(8)
    return sock


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def me(sock: socket.socket, address: str, family: int, protocol: str = "tcp") -> Listener:
    return Listener(protocol, address, port_of(sock), family, inode_of(sock), os.geteuid())


# --- parsers, on literal lines -----------------------------------------------------------------

TCP6_HEADER = (
    "  sl  local_address                         remote_address                        st tx_queue "
    "rx_queue tr tm->when retrnsmt   uid  timeout inode"
)
TCP6_ANY = (
    "   0: 00000000000000000000000000000000:3C48 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 118988 1 0000000064613371 100 0 0 10 0"
)
TCP6_LOOPBACK = (
    "   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000  1000        0 220011 1 0000000000000000 100 0 0 10 0"
)
TCP6_MAPPED = (
    "   2: 0000000000000000FFFF00000100007F:2382 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000    33        0 330022 1 0000000000000000 100 0 0 10 0"
)
TCP6_GLOBAL = (
    "   3: B80D0120000000000000000001000000:0050 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 440033 1 0000000000000000 100 0 0 10 0"
)
TCP6_ESTABLISHED = (
    "   4: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D431 01 "
    "00000000:00000000 00:00000000 00000000  1000        0 550044 1 0000000000000000 20 4 30 10 -1"
)
TCP6_TIME_WAIT = (
    "   5: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D432 06 "
    "00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000"
)
TCP4_LOOPBACK = (
    "   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   "
    "107        0 24680 1 0000000000000000 100 0 0 10 0"
)
UDP4_BOUND = (
    "  123: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 "
    "13579 2 0000000000000000 0"
)
UDP4_UNBOUND = (
    "  124: 00000000:0000 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 "
    "13580 2 0000000000000000 0"
)
UDP4_CONNECTED = (
    "  125: 0100007F:A1B2 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 "
    "13581 2 0000000000000000 0"
)


@LITTLE
@pytest.mark.parametrize(
    ("hexed", "expected"),
    [
        ("0100007F", ("127.0.0.1", 4)),
        ("00000000", ("0.0.0.0", 4)),
        ("0302010A", ("10.1.2.3", 4)),
        ("00000000000000000000000000000000", ("::", 6)),
        ("00000000000000000000000001000000", ("::1", 6)),
        ("0000000000000000FFFF00000100007F", ("127.0.0.1", 6)),
        ("0000000000000000FFFF000000000000", ("0.0.0.0", 6)),
        ("B80D0120000000000000000001000000", ("2001:db8::1", 6)),
        ("000080FE00000000FF020000FA0400FE", ("fe80::2ff:fe00:4fa", 6)),
    ],
)
def test_decode_proc_address(hexed, expected):
    assert scan.decode_proc_address(hexed) == expected


def test_decode_proc_address_of_a_big_endian_host():
    assert scan.decode_proc_address("7F000001", "big") == ("127.0.0.1", 4)
    assert scan.decode_proc_address("00000000000000000000FFFF7F000001", "big") == ("127.0.0.1", 6)
    assert scan.decode_proc_address("20010DB8000000000000000000000001", "big") == ("2001:db8::1", 6)


def test_decode_proc_address_rejects_other_lengths():
    with pytest.raises(ValueError):
        scan.decode_proc_address("0100")


@LITTLE
@pytest.mark.parametrize(
    ("line", "protocol", "row"),
    [
        (TCP6_ANY, "tcp", ("tcp", "::", 15432, 6, 118988, 0)),
        (TCP6_LOOPBACK, "tcp", ("tcp", "::1", 8080, 6, 220011, 1000)),
        (TCP6_MAPPED, "tcp", ("tcp", "127.0.0.1", 9090, 6, 330022, 33)),
        (TCP6_GLOBAL, "tcp", ("tcp", "2001:db8::1", 80, 6, 440033, 0)),
        (TCP6_ESTABLISHED, "tcp", None),
        (TCP6_TIME_WAIT, "tcp", None),
        (TCP6_HEADER, "tcp", None),
        (TCP4_LOOPBACK, "tcp", ("tcp", "127.0.0.1", 3306, 4, 24680, 107)),
        (UDP4_BOUND, "udp", ("udp", "0.0.0.0", 68, 4, 13579, 0)),
        (UDP4_UNBOUND, "udp", None),
        (UDP4_CONNECTED, "udp", None),
        (UDP4_BOUND, "tcp", None),  # 07 is CLOSE for TCP: bound, not listening
        ("", "tcp", None),
    ],
)
def test_parse_proc_line(line, protocol, row):
    assert scan.parse_proc_line(line, protocol) == row


@LITTLE
def test_parse_proc_table_keeps_listeners_only():
    text = "\n".join([TCP6_HEADER, TCP6_ANY, TCP6_ESTABLISHED, TCP6_MAPPED, TCP6_TIME_WAIT, ""])
    assert scan.parse_proc_table(text, "tcp") == [
        ("tcp", "::", 15432, 6, 118988, 0),
        ("tcp", "127.0.0.1", 9090, 6, 330022, 33),
    ]
    with pytest.raises(InvalidInput):
        scan.parse_proc_table(text, "sctp")


def diag_message(family: int, port: int, address: str, uid: int, inode: int, extra: bytes = b"") -> bytes:
    src = socket.inet_pton(family, address).ljust(16, b"\0")
    body = struct.pack("=BBBB", family, 10, 0, 0) + struct.pack(">HH", port, 0) + src + bytes(16)
    body += struct.pack("=I8sIIIII", 0, bytes(8), 0, 0, 0, uid, inode) + extra
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body


def control_message(kind: int, code: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 20, kind, 2, 1, 0, code)


def test_parse_diag_messages():
    attribute = struct.pack("=HHB3x", 5, 8, 0)  # INET_DIAG_SHUTDOWN, padded: skipped by length
    data = (
        diag_message(socket.AF_INET, 5432, "127.0.0.1", 0, 111, attribute)
        + diag_message(socket.AF_INET6, 80, "::ffff:10.1.2.3", 33, 222)
        + diag_message(socket.AF_INET6, 443, "::", 0, 333, attribute)
        + diag_message(socket.AF_INET6, 0, "::1", 0, 444)  # port 0: not bound, not a listener
    )
    rows: list = []
    assert scan.parse_diag_messages(data, "tcp", rows) is False
    assert rows == [
        ("tcp", "127.0.0.1", 5432, 4, 111, 0),
        ("tcp", "10.1.2.3", 80, 6, 222, 33),
        ("tcp", "::", 443, 6, 333, 0),
    ]
    rows = []
    assert scan.parse_diag_messages(data + control_message(3), "udp", rows) is True
    assert len(rows) == 3
    assert rows[0][0] == "udp"
    assert scan.parse_diag_messages(control_message(3), "tcp", []) is True
    assert scan.parse_diag_messages(control_message(1) + control_message(3), "tcp", []) is True  # NOOP


def test_parse_diag_messages_raises_the_kernels_error():
    with pytest.raises(OSError) as caught:
        scan.parse_diag_messages(control_message(2, -errno.EPERM), "tcp", [])
    assert caught.value.errno == errno.EPERM


def test_parse_diag_messages_rejects_a_truncated_message():
    whole = diag_message(socket.AF_INET, 22, "0.0.0.0", 0, 1)
    with pytest.raises(OSError) as caught:
        scan.parse_diag_messages(whole[:40], "tcp", [])
    assert caught.value.errno == errno.EPROTO


# --- the wildcard rules, on listeners as values ---------------------------------------------------


def listener_on(address: str) -> Listener:
    return Listener("tcp", address, 8080, 6 if ":" in address else 4, 1, 0)


@pytest.mark.parametrize(
    ("held", "asked", "blocked"),
    [
        ("0.0.0.0", "0.0.0.0", True),
        ("0.0.0.0", "127.0.0.1", True),
        ("0.0.0.0", "10.1.2.3", True),
        ("0.0.0.0", "::ffff:10.1.2.3", True),
        ("0.0.0.0", "::1", False),
        ("0.0.0.0", "::", True),  # a wildcard query is blocked by anything
        ("::", "10.1.2.3", True),  # dual-stack unless V6ONLY, which the tables do not show
        ("::", "::1", True),
        ("::", "0.0.0.0", True),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "10.1.2.3", False),
        ("127.0.0.1", "::1", False),
        ("127.0.0.1", "*", True),
        ("127.0.0.1", "", True),
        ("127.0.0.1", "::ffff:127.0.0.1", True),
        ("::1", "::1", True),
        ("::1", "[::1]", True),
        ("::1", "0:0:0:0:0:0:0:1", True),
        ("::1", "127.0.0.1", False),
        ("::1", "0.0.0.0", True),
        ("2001:db8::1", "2001:DB8::1", True),
        ("2001:db8::1", "2001:db8::2", False),
    ],
)
def test_blocks(held, asked, blocked):
    assert blocks(listener_on(held), asked) is blocked


def test_blocks_rejects_what_is_not_an_address():
    with pytest.raises(InvalidInput):
        blocks(listener_on("0.0.0.0"), "localhost")


# --- real sockets of this process -----------------------------------------------------------------


@pytest.fixture(scope="module")
def held():
    """Listeners of every kind, plus sockets that hold a port without listening."""
    socks = {
        "any4": tcp_listener("0.0.0.0"),
        "loop4": tcp_listener("127.0.0.1"),
        "any6_only": tcp_listener("::", v6only=True),
        "any6_dual": tcp_listener("::", v6only=False),
        "loop6": tcp_listener("::1", v6only=True),
        "mapped": tcp_listener("::ffff:127.0.0.1", v6only=False),
    }
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", fresh_port()))
    socks["udp"] = udp
    bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bound.bind(("127.0.0.1", fresh_port()))  # bound, never listening: state CLOSE
    socks["bound"] = bound
    client = socket.create_connection(("127.0.0.1", port_of(socks["loop4"])))
    accepted, _ = socks["loop4"].accept()
    socks["client"], socks["accepted"] = client, accepted
    socks["time_wait_port"] = time_wait()
    yield socks
    for sock in socks.values():
        if isinstance(sock, socket.socket):
            sock.close()


def time_wait() -> int:
    """A port whose only socket is in TIME_WAIT: its listener is gone, the server side closed first."""
    server = tcp_listener("127.0.0.1")
    port = port_of(server)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    server.close()
    accepted.close()  # the side that closes first keeps TIME_WAIT
    client.recv(1)
    client.close()
    deadline = time.monotonic() + 5
    while not proc_states(port) and time.monotonic() < deadline:
        time.sleep(0.01)
    return port


def proc_states(port: int) -> set[str]:
    """The TCP states of every IPv4 socket with local ``port``, from /proc/net/tcp."""
    states = set()
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}"):
            states.add(fields[3])
    return states


@pytest.fixture(scope="module")
def snapshot(held):
    return ListenerScan()


def test_on_port_lists_each_kind_of_listener(held, snapshot):
    assert snapshot.on_port(port_of(held["any4"])) == [me(held["any4"], "0.0.0.0", 4)]
    assert snapshot.on_port(port_of(held["any6_only"])) == [me(held["any6_only"], "::", 6)]
    assert snapshot.on_port(port_of(held["any6_dual"])) == [me(held["any6_dual"], "::", 6)]
    assert snapshot.on_port(port_of(held["loop6"])) == [me(held["loop6"], "::1", 6)]
    assert snapshot.on_port(port_of(held["mapped"])) == [me(held["mapped"], "127.0.0.1", 6)]
    assert snapshot.on_port(port_of(held["udp"]), "udp") == [me(held["udp"], "127.0.0.1", 4, "udp")]
    assert snapshot.on_port(port_of(held["udp"]), "tcp") == []
    assert snapshot.on_port(port_of(held["any4"]), "udp") == []


def test_connected_bound_and_time_wait_sockets_are_not_listeners(held, snapshot):
    loop4 = port_of(held["loop4"])
    assert snapshot.on_port(loop4) == [me(held["loop4"], "127.0.0.1", 4)]  # not the accepted one
    client = port_of(held["client"])  # an ephemeral port: it may be listened on elsewhere
    assert inode_of(held["client"]) not in {x.inode for x in snapshot.on_port(client)}
    assert snapshot.on_port(port_of(held["bound"])) == []
    port = held["time_wait_port"]
    assert "06" in proc_states(port)  # the TIME_WAIT socket is really there
    assert snapshot.on_port(port) == []
    assert snapshot.blocking(port) == []
    inodes = {listener.inode for listener in snapshot.listeners}
    assert 0 not in inodes  # TIME_WAIT sockets have none
    assert inode_of(held["client"]) not in inodes
    assert inode_of(held["accepted"]) not in inodes
    assert inode_of(held["bound"]) not in inodes


WILDCARD_QUERIES = ("0.0.0.0", "::", "", "*")


@pytest.mark.parametrize(
    ("name", "blocked_for", "free_for"),
    [
        ("any4", ("127.0.0.1", "10.1.2.3"), ("::1", "fe80::1")),
        ("loop4", ("127.0.0.1", "::ffff:127.0.0.1"), ("10.1.2.3", "::1")),
        ("any6_only", ("127.0.0.1", "10.1.2.3", "::1"), ()),
        ("any6_dual", ("127.0.0.1", "10.1.2.3", "::1"), ()),
        ("loop6", ("::1",), ("127.0.0.1", "10.1.2.3", "2001:db8::1")),
        ("mapped", ("127.0.0.1",), ("10.1.2.3", "::1")),
    ],
)
def test_blocking(held, snapshot, name, blocked_for, free_for):
    sock = held[name]
    port = port_of(sock)
    for address in WILDCARD_QUERIES + blocked_for:
        assert [x.inode for x in snapshot.blocking(port, "tcp", address)] == [inode_of(sock)], address
    for address in free_for:
        assert snapshot.blocking(port, "tcp", address) == [], address
    assert snapshot.blocking(port, "udp") == []


def test_blocking_defaults_to_the_ipv4_wildcard(held, snapshot):
    assert snapshot.blocking(port_of(held["loop6"])) == [me(held["loop6"], "::1", 6)]
    assert snapshot.blocking(port_of(held["udp"]), "udp") == [me(held["udp"], "127.0.0.1", 4, "udp")]


def test_many_lookups_use_the_same_answers(held, snapshot):
    ports = [port_of(held[name]) for name in ("any4", "loop4", "any6_dual", "loop6")]
    first = [snapshot.on_port(port) for port in ports]
    for _ in range(5):  # past the linear passes, into the index
        assert [snapshot.on_port(port) for port in ports] == first


def test_bad_input_is_refused(snapshot):
    with pytest.raises(InvalidInput):
        ListenerScan(["sctp"])
    with pytest.raises(InvalidInput):
        snapshot.on_port(80, "icmp")
    with pytest.raises(InvalidInput):
        snapshot.blocking(80, "tcp", "not-an-address")


def test_protocols_are_chosen(held):
    tcp_only = ListenerScan(["tcp"])
    assert tcp_only.on_port(port_of(held["udp"]), "udp") == []
    assert tcp_only.on_port(port_of(held["any4"])) == [me(held["any4"], "0.0.0.0", 4)]
    assert all(x.protocol == "tcp" for x in tcp_only.listeners)


def test_netlink_and_proc_agree(held):
    mine = {inode_of(sock) for sock in held.values() if isinstance(sock, socket.socket)}
    netlink = {row for row in scan.read_listeners(method="netlink") if row[4] in mine}
    proc = {row for row in scan.read_listeners(method="proc") if row[4] in mine}
    assert netlink == proc
    assert len(netlink) == 7  # six TCP listeners and the UDP socket


def test_owners_names_this_process(held, snapshot):
    listeners = [x for name in ("any4", "loop6", "mapped") for x in snapshot.on_port(port_of(held[name]))]
    listeners += snapshot.on_port(port_of(held["udp"]), "udp")
    owners = snapshot.owners(listeners)
    assert set(owners) == {x.inode for x in listeners}
    comm = pathlib.Path("/proc/self/comm").read_text().strip()
    for info in owners.values():
        assert info is not None
        assert info.pid == os.getpid()
        assert info.name == comm
        assert info.user == pwd.getpwuid(os.geteuid()).pw_name
        assert "pytest" in info.cmdline
    assert snapshot.complete_attribution
    assert snapshot.owners(listeners) == owners  # from the cache
    assert snapshot.owners([]) == {}


def test_owners_of_a_vanished_socket_is_none(held):
    snapshot = ListenerScan()
    gone = Listener("tcp", "127.0.0.1", 1, 4, 2**40 + 12345, os.geteuid())  # no such inode
    assert snapshot.owners([gone]) == {gone.inode: None}
    # Every process was looked at: the answer is incomplete only if some could not be read
    # (even root may be refused, e.g. a sandbox's init process).
    assert snapshot.complete_attribution is not any_fds_unreadable()


def any_fds_unreadable() -> bool:
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                os.readlink(f"/proc/{pid}/fd/{fd}")
        except PermissionError:
            return True
        except FileNotFoundError:
            continue
    return False


# --- other processes ----------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, resource, socket, sys
    count, order = int(sys.argv[1]), sys.argv[2]
    need = 2 * count + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    # One CPU: socket inodes come from per-CPU batches, increasing only while the process stays put.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        socks.append(s)
    if order == "reversed":  # inodes decreasing in fd order, above a gap: bisection cannot work
        moved = [socket.socket(fileno=os.dup(s.fileno())) for s in reversed(socks)]
        for s in socks:
            s.close()
        socks = moved[::-1]
    print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture
def child():
    """Start a python child holding ``count`` listeners; yields (process, ports)."""
    started: list[subprocess.Popen] = []

    def start(count: int = 1, order: str = "created") -> tuple[subprocess.Popen, list[int]]:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(count), order, "portctl-scan-child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        return proc, [int(port) for port in proc.stdout.readline().split()]

    yield start
    for proc in started:
        proc.communicate("", timeout=30)


def assert_child_holds(snapshot: ListenerScan, proc: subprocess.Popen, ports: list[int]) -> None:
    # The child's 127.0.0.1:PORT is its own; another process may use PORT on another address.
    listeners = [x for port in ports for x in snapshot.on_port(port) if x.address == "127.0.0.1"]
    assert len(listeners) == len(ports)
    owners = snapshot.owners(listeners)
    for listener in listeners:
        info = owners[listener.inode]
        assert isinstance(info, ProcessInfo)
        assert info.pid == proc.pid
        assert info.name.startswith("python")
        assert "portctl-scan-child" in info.cmdline
        assert info.cmdline.startswith(sys.executable)
    assert snapshot.complete_attribution


def test_owners_names_a_child_process(child):
    proc, ports = child()
    assert_child_holds(ListenerScan(), proc, ports)


def test_owners_in_a_process_with_thousands_of_fds(child):
    proc, ports = child(3000)
    snapshot = ListenerScan()
    assert_child_holds(snapshot, proc, [ports[0], ports[1500], ports[-1]])
    # Found by bisection: the child's table was never read in full.
    assert proc.pid not in snapshot._done


def test_owners_when_bisection_cannot_work(child):
    proc, ports = child(1000, "reversed")
    snapshot = ListenerScan()
    assert_child_holds(snapshot, proc, [ports[0], ports[500], ports[-1]])
    assert_child_holds(snapshot, proc, [ports[10], ports[900]])  # from the links already read


def test_owners_of_many_listeners_at_once(child):
    proc, ports = child(400)
    assert_child_holds(ListenerScan(), proc, ports)


# --- not root -----------------------------------------------------------------------------------

NOBODY = textwrap.dedent(
    """
    import json, os, socket, sys
    from portctl.host.listeners import ListenerScan
    theirs = int(sys.argv[1])
    mine = socket.socket()
    mine.bind(("127.0.0.1", 0))
    mine.listen(1)
    snapshot = ListenerScan()
    inode = os.fstat(mine.fileno()).st_ino
    own = snapshot.owners([x for x in snapshot.on_port(mine.getsockname()[1]) if x.inode == inode])
    after_own = snapshot.complete_attribution
    other = snapshot.on_port(theirs)
    print(json.dumps({
        "uid": os.geteuid(),
        "count": len(snapshot.listeners),
        "own": [[info.pid, info.user] if info else None for info in own.values()],
        "after_own": after_own,
        "other": [[x.address, x.uid] for x in other],
        "other_owners": [info for info in snapshot.owners(other).values()],
        "complete": snapshot.complete_attribution,
    }))
    """
)


def python_for_nobody() -> str | None:
    """An interpreter the nobody user may run (the venv's may sit in root's home)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            done = subprocess.run(
                [*as_nobody(), candidate, "-c", "import sys; assert sys.version_info >= (3, 11)"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if done.returncode == 0:
            return candidate
    return None


def as_nobody() -> list[str]:
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_not_root_lists_listeners_but_cannot_attribute_roots(held):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as another user")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    python = python_for_nobody()
    if python is None:
        pytest.skip("no python >= 3.11 the nobody user may run")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [*as_nobody(), python, "-c", NOBODY, str(port_of(held["any4"]))],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
        check=False,
    )
    if done.returncode != 0 and "No module named 'portctl'" in done.stderr:
        pytest.skip(f"the nobody user cannot read {ROOT}")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["uid"] == 65534
    assert result["count"] >= 7
    assert result["own"] == [[result["own"][0][0], pwd.getpwuid(65534).pw_name]]
    assert result["after_own"] is True  # its own socket was found: nothing to warn about
    assert result["other"] == [["0.0.0.0", 0]]  # listed, with root's uid from the socket table
    assert result["other_owners"] == [None]
    assert result["complete"] is False


# --- a socket shared by several processes -------------------------------------------------------


def test_every_holder_of_a_socket_shared_by_a_forked_child():
    """A pre-fork server: parent and child hold the same socket; owners() names one of them,
    holders() names both."""
    from tests.support.port_holders import holding

    port = fresh_port()
    with holding(port, fork=True) as holder:
        snapshot = ListenerScan()
        listeners = snapshot.on_port(port)
        assert len(listeners) == 1
        inode = listeners[0].inode
        assert snapshot.owners(listeners)[inode].pid in {holder.pid, holder.child}
        every = snapshot.holders(listeners)
        assert sorted(info.pid for info in every[inode]) == sorted([holder.pid, holder.child])
        assert all(info.name.startswith("python") for info in every[inode])
        assert snapshot.owners(listeners)[inode] == every[inode][0]  # the one owners() named first


def test_holders_of_a_vanished_socket_is_empty(held):
    gone = Listener("tcp", "127.0.0.1", 1, 4, 2**40 + 12346, os.geteuid())
    assert ListenerScan().holders([gone]) == {gone.inode: ()}


# --- what is said about sockets whose process is not seen --------------------------------------

NOTICE = (
    "import sys; from portctl.host.listeners import ListenerScan, unattributed_notice;"
    " s = ListenerScan(); s.owners(s.on_port(int(sys.argv[1])));"
    " print(s.complete_attribution); print(unattributed_notice())"
)


def test_root_without_a_capability_is_told_why_not_to_run_as_root():
    """Root without CAP_SYS_PTRACE cannot read a non-dumpable process's fds: the notice gives
    that reason, not "run as root"."""
    from tests.support.port_holders import holding

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux)")
    port = fresh_port()
    with holding(port, undumpable=True):
        done = subprocess.run(
            ["setpriv", "--bounding-set=-sys_ptrace", sys.executable, "-c", NOTICE, str(port)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "False",
        "some sockets' processes are in another PID namespace or hidden from this one "
        "(/proc hidepid or a missing capability): name them from where they run",
    ]


def test_a_user_who_is_not_root_is_told_to_run_as_root():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run as nobody")
    python = python_for_nobody()
    if python is None:
        pytest.skip("no python >= 3.11 the nobody user may run")
    code = "from portctl.host.listeners import hidden_process, unattributed_notice;"
    code += " print(unattributed_notice()); print(hidden_process('sudo portctl free 80'))"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [*as_nobody(), python, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
        check=False,
    )
    if done.returncode != 0 and "No module named 'portctl'" in done.stderr:
        pytest.skip(f"the nobody user cannot read {ROOT}")
    assert done.stdout.splitlines() == [
        "some sockets' processes are not visible to this user: run as root to name them",
        "its process is not visible to this user: run as root to see and stop it (sudo portctl free 80)",
    ]
