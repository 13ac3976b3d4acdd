"""Every listener on the host, and who holds it: what ``lsof -i :PORT`` and ``ss -ltnp`` tell.

Listeners are read first, in one NETLINK_SOCK_DIAG dump per protocol and family in which the
kernel itself keeps only LISTEN (TCP) or unconnected (UDP) sockets; /proc/net/{tcp,udp}{,6} is the
fallback where netlink is refused (a seccomp filter, a missing ``*_diag`` module). Owners are
found afterwards, and only for the listeners asked about, by reading ``/proc/<pid>/fd`` links
until every wanted socket inode is seen: the cost grows with sockets, not processes x files.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from portctl.errors import InvalidInput, Kind

__all__ = [
    "Listener",
    "ListenerScan",
    "ProcessInfo",
    "blocks",
    "decode_proc_address",
    "parse_diag_messages",
    "parse_proc_line",
    "parse_proc_table",
    "read_listeners",
    "read_process",
    "user_name",
]

PROTOCOLS = ("tcp", "udp")
WILDCARDS = frozenset({"0.0.0.0", "::", "", "*"})

_TCP_LISTEN = 10  # TCP_LISTEN in include/net/tcp_states.h; "0A" in /proc/net/tcp
_UDP_UNCONNECTED = 7  # TCP_CLOSE: a bound, unconnected UDP socket; "07" in /proc/net/udp
_STATE = {"tcp": _TCP_LISTEN, "udp": _UDP_UNCONNECTED}
_STATE_HEX = {protocol: f"{state:02X}" for protocol, state in _STATE.items()}
_IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_FAMILIES = ((4, socket.AF_INET), (6, socket.AF_INET6))

# A row is a Listener's fields in order; Listener objects are built only for the rows asked
# about, because a frozen dataclass costs ~1 us to create and a busy host has 10,000 rows.
Row = tuple[str, str, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Listener:
    protocol: str  # "tcp" (LISTEN sockets) | "udp" (bound UDP sockets, local port != 0)
    address: str  # "0.0.0.0", "::", "127.0.0.1", "::1"; IPv4-mapped IPv6 shown as IPv4, family 6
    port: int
    family: int  # 4 or 6
    inode: int
    uid: int


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    name: str  # comm, e.g. "python3", "docker-proxy"
    user: str  # user name (uid number as text if unknown)
    cmdline: str  # argv joined with spaces ("" if unreadable)


# --- pure parsing -----------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _text(raw: bytes) -> str:
    """Address text from 4 or 16 network-order bytes; IPv4-mapped IPv6 shown as IPv4."""
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


@lru_cache(maxsize=4096)
def decode_proc_address(hexed: str, byteorder: str = sys.byteorder) -> tuple[str, int]:
    """``0100007F`` -> ``("127.0.0.1", 4)``; 32 hex digits -> an IPv6 address and 6.

    /proc/net prints each 32-bit word of the (network-order) address as a host-order integer,
    so on a little-endian host every group of four bytes comes out reversed.
    """
    if len(hexed) not in (8, 32):
        raise ValueError(f"not a /proc/net address: {hexed!r}")
    raw = bytes.fromhex(hexed)
    if byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return _text(raw), 4 if len(raw) == 4 else 6


def parse_proc_line(line: str, protocol: str) -> Row | None:
    """One line of /proc/net/{tcp,udp}{,6} as a row, or None if it is not a listener.

    Fields: ``sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...``.
    """
    fields = line.split()
    if len(fields) < 10 or fields[3] != _STATE_HEX[protocol]:  # the header's is "st"
        return None
    hexed, _, hexport = fields[1].partition(":")
    port = int(hexport, 16)
    if port == 0:
        return None
    address, family = decode_proc_address(hexed)
    return (protocol, address, port, family, int(fields[9]), int(fields[7]))


def parse_proc_table(text: str, protocol: str) -> list[Row]:
    """Every listener in the text of one /proc/net table (its header line is skipped)."""
    _check_protocol(protocol)
    state = f" {_STATE_HEX[protocol]} "
    rows = []
    for line in text.splitlines()[1:]:
        if state in line:  # cheap pre-filter; parse_proc_line checks the field itself
            row = parse_proc_line(line, protocol)
            if row is not None:
                rows.append(row)
    return rows


# struct nlmsghdr {len, type, flags, seq, pid} then struct inet_diag_msg {family, state, timer,
# retrans, inet_diag_sockid {sport, dport (big-endian), src[16], dst[16], if, cookie[2]},
# expires, rqueue, wqueue, uid, inode}; attributes follow, skipped by the message length.
_NLMSG = struct.Struct("=IH")
_DIAG = struct.Struct("=IH10xB3x2s2x16s40xII")
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_SOCK_DIAG_BY_FAMILY = 20
_NETLINK_SOCK_DIAG = 4
_NLM_F_REQUEST_DUMP = 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_ROOT | NLM_F_MATCH
_REQUEST = struct.Struct("=IHHIIBBBxI48x")  # nlmsghdr + inet_diag_req_v2 (sockid left zero)


def parse_diag_messages(buf: bytes | memoryview, protocol: str, rows: list[Row]) -> bool:
    """Append the sockets in one datagram of a sock_diag dump to ``rows``.

    Returns True when the datagram ends the dump; raises OSError for an NLMSG_ERROR.
    """
    offset, end = 0, len(buf)
    names: dict[bytes, str] = {}  # most listeners share a few addresses
    while offset + 16 <= end:
        if offset + _DIAG.size <= end:  # the hot path: one unpack per socket
            length, kind, family, sport, src, uid, inode = _DIAG.unpack_from(buf, offset)
            if kind == _SOCK_DIAG_BY_FAMILY and length >= _DIAG.size:
                port = sport[0] << 8 | sport[1]
                if port:
                    if family != socket.AF_INET6:
                        src = src[:4]
                    address = names.get(src)
                    if address is None:
                        address = names[src] = _text(src)
                    rows.append((protocol, address, port, 6 if len(src) == 16 else 4, inode, uid))
                offset += (length + 3) & ~3
                continue
        length, kind = _NLMSG.unpack_from(buf, offset)
        if _ends_dump(buf, offset, kind, length):
            return True
        offset += (length + 3) & ~3
    return False


def _ends_dump(buf: bytes | memoryview, offset: int, kind: int, length: int) -> bool:
    """True for NLMSG_DONE; raises for NLMSG_ERROR or a malformed message; skips the rest."""
    if kind == _NLMSG_DONE:
        return True
    if kind == _NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", buf, offset + 16)
        raise OSError(-code, os.strerror(-code))
    if length < 16 or kind == _SOCK_DIAG_BY_FAMILY:  # too short for its header or its socket
        raise OSError(errno.EPROTO, f"malformed sock_diag message (type {kind}, {length} bytes)")
    return False


# --- reading the kernel's tables -------------------------------------------------------------


def _netlink_rows(protocol: str, family: socket.AddressFamily) -> list[Row]:
    request = _REQUEST.pack(
        _REQUEST.size,
        _SOCK_DIAG_BY_FAMILY,
        _NLM_F_REQUEST_DUMP,
        1,
        0,
        family,
        _IPPROTO[protocol],
        0,
        1 << _STATE[protocol],
    )
    rows: list[Row] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(5.0)
        sock.send(request)
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        while True:
            size = sock.recv_into(buf)
            if size == 0 or parse_diag_messages(view[:size], protocol, rows):
                return rows


def _proc_rows(protocol: str, family: int) -> list[Row]:
    path = f"/proc/net/{protocol}{'6' if family == 6 else ''}"
    try:
        with open(path, encoding="ascii") as f:
            return parse_proc_table(f.read(), protocol)
    except FileNotFoundError:  # the family is not configured (IPv6 disabled)
        return []


def _table_rows(protocol: str, family: int, af: socket.AddressFamily, method: str) -> list[Row]:
    if method != "proc":
        try:
            return _netlink_rows(protocol, af)
        except OSError:
            if method == "netlink":
                raise
    return _proc_rows(protocol, family)


def read_listeners(protocols: Iterable[str] = PROTOCOLS, method: str = "auto") -> list[Row]:
    """Rows of every listener of the given protocols, from netlink or, failing it, /proc.

    ``method`` is "auto", "netlink" (no fallback) or "proc"; the last two are for tests and
    benchmarks.
    """
    wanted = _check_protocols(protocols)
    if method not in ("auto", "netlink", "proc"):
        raise InvalidInput("method", method, "auto, netlink or proc")
    return [row for p in wanted for family, af in _FAMILIES for row in _table_rows(p, family, af, method)]


def _check_protocols(protocols: Iterable[str]) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(protocols))
    for protocol in wanted:
        _check_protocol(protocol)
    return wanted


def _check_protocol(protocol: str) -> None:
    if protocol not in _STATE:
        raise InvalidInput(Kind("protocol"), protocol, "tcp or udp")


# --- the wildcard rules --------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _normal(address: str) -> tuple[str, int]:
    """Canonical text and family of a query address; IPv4-mapped IPv6 counts as IPv4."""
    if address in ("", "*"):
        return "", 0
    host = address.removeprefix("[").removesuffix("]")
    for af in (socket.AF_INET, socket.AF_INET6):
        try:
            text = _text(socket.inet_pton(af, host))
        except OSError:
            continue
        return text, 6 if ":" in text else 4
    raise InvalidInput(Kind("address"), address, "an IP address, '*' or ''")


def blocks(listener: Listener, address: str) -> bool:
    """Whether ``listener`` stops a server binding ``address`` on the same port and protocol.

    Asking for a wildcard ("0.0.0.0", "::", "" or "*") is blocked by every listener. A listener
    on "0.0.0.0" blocks every IPv4 address; one on "::" blocks every address, IPv4 too, since it
    is dual-stack unless IPV6_V6ONLY was set, which the socket tables do not show. Any other
    listener blocks only its own address.
    """
    text, family = _normal(address)
    if text in WILDCARDS or listener.address == "::":
        return True
    if listener.address == "0.0.0.0":
        return family == 4
    return listener.address == text


# --- who holds a socket --------------------------------------------------------------------------


@lru_cache(maxsize=256)
def user_name(uid: int) -> str:
    """The user name of ``uid``, or the number as text when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _process_uid(pid: int) -> int | None:
    for line in _read_bytes(f"/proc/{pid}/status").splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[2])  # real, effective, saved, fs: ps shows the effective
    return None


def read_process(pid: int) -> ProcessInfo:
    """Name, user and command line of ``pid``; empty text for what could not be read."""
    name = _read_bytes(f"/proc/{pid}/comm").rstrip(b"\n").decode(errors="replace")
    argv = _read_bytes(f"/proc/{pid}/cmdline").rstrip(b"\0").split(b"\0")
    uid = _process_uid(pid)
    user = "" if uid is None else user_name(uid)
    return ProcessInfo(pid, name, user, b" ".join(argv).decode(errors="replace"))


def _pids(preferred_uids: set[int]) -> list[int]:
    """Every pid: those run by a user who owns a wanted socket first, then in ascending order,
    so a pre-forking server's parent is named before its workers."""

    def key(pid: int) -> tuple[bool, int]:
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return True, pid
        return uid not in preferred_uids, pid

    return sorted((int(name) for name in os.listdir("/proc") if name.isdigit()), key=key)


def _socket_inode(link: str | None) -> int | None:
    if link is None or not link.startswith("socket:["):
        return None
    return int(link[8:-1])


class _FdTable:
    """One process's /proc/<pid>/fd, opened once: PermissionError when it is not ours to read,
    FileNotFoundError when the process has exited."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd = os.open(f"/proc/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
        self._names: list[str] | None = None

    def __enter__(self) -> _FdTable:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

    def count(self) -> int:
        """How many fds are open: Linux >= 6.2 gives it as the size, saving a listing."""
        return os.fstat(self._fd).st_size or len(self.names())

    def names(self) -> list[str]:
        if self._names is None:
            self._names = os.listdir(self._fd)
        return self._names

    def link(self, name: str) -> str | None:
        try:
            return os.readlink(name, dir_fd=self._fd)
        except FileNotFoundError:  # no such fd, or closed meanwhile
            return None


_PROBE_MIN_FDS = 256  # from this many fds, bisect a process's table by inode before reading it all
_PROBE_STEPS = 16  # fds tried from a bisection point to find a socket (gaps, files, pipes)
_PROBE_SLACK = 64  # fd numbers past the count that may still be open (closed fds leave gaps)
_PROBE_COST = 32  # reads one bisection takes, roughly, at 10,000 fds


class ListenerScan:
    """A snapshot of the host's listeners, read when the scan is made.

    Owners are found on demand by :meth:`owners` and cached, as is every socket link read while
    finding them.
    """

    def __init__(self, protocols: Iterable[str] = PROTOCOLS) -> None:
        self.protocols = _check_protocols(protocols)
        self._rows = read_listeners(self.protocols)
        self._listeners: tuple[Listener, ...] | None = None
        self._by_port: dict[tuple[str, int], list[Row]] | None = None
        self._lookups = 0
        self._holder: dict[str, int] = {}  # "socket:[inode]" -> pid, for every link read
        self._done: set[int] = set()  # pids whose fds were all read
        self._processes: dict[int, ProcessInfo] = {}
        self._owners: dict[int, ProcessInfo | None] = {}
        self._unreadable = False

    @property
    def listeners(self) -> tuple[Listener, ...]:
        if self._listeners is None:
            self._listeners = tuple(Listener(*row) for row in self._rows)
        return self._listeners

    def on_port(self, port: int, protocol: str = "tcp") -> list[Listener]:
        """Every listener on ``port``, whatever its address."""
        _check_protocol(protocol)
        return [Listener(*row) for row in self._rows_on(port, protocol)]

    def blocking(self, port: int, protocol: str = "tcp", address: str = "0.0.0.0") -> list[Listener]:
        """The listeners that stop a server binding ``address``:``port`` (see :func:`blocks`)."""
        _normal(address)  # reject a malformed address even when nothing listens on the port
        return [listener for listener in self.on_port(port, protocol) if blocks(listener, address)]

    def owners(self, listeners: Iterable[Listener]) -> dict[int, ProcessInfo | None]:
        """inode -> the process holding it; None when it could not be attributed.

        A socket shared by several processes (a pre-forking server, socket activation) is
        attributed to one of them.
        """
        wanted = list(listeners)
        missing = {f"socket:[{x.inode}]": x.inode for x in wanted if x.inode not in self._owners}
        if missing:
            self._resolve(missing, {x.uid for x in wanted})
        return {x.inode: self._owners[x.inode] for x in wanted}

    @property
    def complete_attribution(self) -> bool:
        """False when a listener asked about went unattributed while some process's fds could not
        be read (portctl is not root): its owner may be among them."""
        return not (self._unreadable and None in self._owners.values())

    def _rows_on(self, port: int, protocol: str) -> list[Row]:
        """A linear pass for the first few ports asked about, an index from then on."""
        self._lookups += 1
        if self._by_port is None and self._lookups <= 8:
            return [row for row in self._rows if row[2] == port and row[0] == protocol]
        if self._by_port is None:
            self._by_port = {}
            for row in self._rows:
                self._by_port.setdefault((row[0], row[2]), []).append(row)
        return self._by_port.get((protocol, port), [])

    # Finding owners: every process's socket links are read, those of the users owning the wanted
    # sockets first, until nothing is missing. A process with many fds is first bisected by inode,
    # which finds a socket among 10,000 in ~15 reads instead of 10,000: a process's sockets
    # usually have increasing inodes in fd order (inodes come from per-CPU batches of a global
    # counter, so not always). When bisection misses, the process is read in full after the others.

    def _resolve(self, missing: dict[str, int], uids: set[int]) -> None:
        for link in [link for link in missing if link in self._holder]:
            self._claim(missing, link, self._holder[link])
        if missing:
            self._search(missing, uids)
        for inode in missing.values():
            self._owners[inode] = None

    def _claim(self, missing: dict[str, int], link: str, pid: int) -> None:
        self._owners[missing.pop(link)] = self._process(pid)

    def _search(self, missing: dict[str, int], uids: set[int]) -> None:
        large: list[int] = []
        for pid in _pids(uids):
            if pid not in self._done and self._visit(pid, missing, large):
                return
        for pid in large:
            if pid not in self._done and self._visit(pid, missing, None):
                return

    def _visit(self, pid: int, missing: dict[str, int], large: list[int] | None) -> bool:
        """Look through ``pid``'s fds (only bisect it when it is large and ``large`` is given,
        noting it there); True once nothing is missing."""
        try:
            with _FdTable(pid) as table:
                count = table.count()
                if large is not None and count >= _PROBE_MIN_FDS:
                    large.append(pid)
                    self._probe(table, count, missing)
                else:
                    self._read_all(table, missing)
        except PermissionError:
            self._unreadable = True
        except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
            pass
        return not missing

    def _read_all(self, table: _FdTable, missing: dict[str, int]) -> None:
        for name in table.names():
            self._note(table, name, missing)
            if not missing:
                return
        self._done.add(table.pid)

    def _note(self, table: _FdTable, name: str, missing: dict[str, int]) -> str | None:
        """Read one fd link, record it when it is a socket and claim it when it is wanted."""
        link = table.link(name)
        if link is not None and link.startswith("socket:"):
            self._holder[link] = table.pid
            if link in missing:
                self._claim(missing, link, table.pid)
        return link

    def _probe(self, table: _FdTable, count: int, missing: dict[str, int]) -> None:
        """Bisect for each missing socket, unless so many are missing that reading is cheaper."""
        if len(missing) * _PROBE_COST > count:
            self._read_all(table, missing)
            return
        for link, inode in list(missing.items()):
            if link in missing:
                self._bisect(table, count, link, inode, missing)

    def _bisect(self, table: _FdTable, count: int, link: str, inode: int, missing: dict[str, int]) -> None:
        low, high = 0, count + _PROBE_SLACK
        while low <= high and link in missing:
            middle = (low + high) // 2
            found = self._socket_from(table, middle, high, missing)
            if found is None or found[1] > inode:
                high = middle - 1
            elif found[1] < inode:
                low = found[0] + 1
            else:
                return

    def _socket_from(
        self, table: _FdTable, start: int, high: int, missing: dict[str, int]
    ) -> tuple[int, int] | None:
        """The first socket fd at or after ``start`` (a few tried at most) and its inode."""
        for fd in range(start, min(start + _PROBE_STEPS, high + 1)):
            inode = _socket_inode(self._note(table, str(fd), missing))
            if inode is not None:
                return fd, inode
        return None

    def _process(self, pid: int) -> ProcessInfo:
        info = self._processes.get(pid)
        if info is None:
            info = self._processes[pid] = read_process(pid)
        return info
