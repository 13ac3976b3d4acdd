"""Every listener on the host, and who holds it: what ``lsof -i :PORT`` and ``ss -ltnp`` tell.

Listeners are read first, in one NETLINK_SOCK_DIAG dump per protocol and family in which the
kernel itself keeps only LISTEN (TCP) or unconnected (UDP) sockets; /proc/net/{tcp,udp}{,6} is the
fallback where netlink is refused (a seccomp filter, a missing ``*_diag`` module); both parsers
live in :mod:`portctl.host._tables` and are re-exported here. Owners are
found afterwards, and only for the listeners asked about, by reading ``/proc/<pid>/fd`` links
until every wanted socket inode is seen: the cost grows with sockets, not processes x files.
"""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from portctl.errors import InvalidInput, Kind
from portctl.host._tables import (
    PROTOCOLS,
    Row,
    address_text,
    check_protocol,
    check_protocols,
    decode_proc_address,
    parse_diag_messages,
    parse_proc_line,
    parse_proc_table,
    read_listeners,
)

__all__ = [
    "Listener",
    "ListenerScan",
    "ProcessInfo",
    "blocks",
    "decode_proc_address",
    "hidden_process",
    "parse_diag_messages",
    "parse_proc_line",
    "parse_proc_table",
    "read_listeners",
    "read_process",
    "unattributed_notice",
    "user_name",
]

WILDCARDS = frozenset({"0.0.0.0", "::", "", "*"})


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


# --- the wildcard rules --------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _normal(address: str) -> tuple[str, int]:
    """Canonical text and family of a query address; IPv4-mapped IPv6 counts as IPv4."""
    if address in ("", "*"):
        return "", 0
    host = address.removeprefix("[").removesuffix("]")
    for af in (socket.AF_INET, socket.AF_INET6):
        try:
            text = address_text(socket.inet_pton(af, host))
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


# Why root cannot see a socket's process: it is not in this PID namespace's /proc, /proc is
# mounted hidepid, or a capability is missing (CAP_SYS_PTRACE to read a non-dumpable process's fds).
_HIDDEN_FROM_ROOT = "in another PID namespace or hidden from this one (/proc hidepid or a missing capability)"


def hidden_process(command: str) -> str:
    """Why a socket's process is not named, and what to do, in words true for this user:
    ``command`` (``sudo portctl free 80``) is advice for a user who is not root; to root, who
    already is, the reason is the namespace or the capability, and the process is stopped from
    where it runs."""
    if os.geteuid() == 0:
        return f"its process is {_HIDDEN_FROM_ROOT}: stop it from where it runs"
    return f"its process is not visible to this user: run as root to see and stop it ({command})"


def unattributed_notice() -> str:
    """The note for sockets whose processes could not be named (see
    :attr:`ListenerScan.complete_attribution`), true for this user as :func:`hidden_process` is."""
    if os.geteuid() == 0:
        return f"some sockets' processes are {_HIDDEN_FROM_ROOT}: name them from where they run"
    return "some sockets' processes are not visible to this user: run as root to name them"


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
        self.protocols = check_protocols(protocols)
        self._rows = read_listeners(self.protocols)
        self._listeners: tuple[Listener, ...] | None = None
        self._by_port: dict[tuple[str, int], list[Row]] | None = None
        self._lookups = 0
        self._holder: dict[str, int] = {}  # "socket:[inode]" -> pid, for every link read
        self._sharers: dict[str, set[int]] = {}  # "socket:[inode]" -> every pid it was read in
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
        check_protocol(protocol)
        return [Listener(*row) for row in self._rows_on(port, protocol)]

    def blocking(self, port: int, protocol: str = "tcp", address: str = "0.0.0.0") -> list[Listener]:
        """The listeners that stop a server binding ``address``:``port`` (see :func:`blocks`)."""
        _normal(address)  # reject a malformed address even when nothing listens on the port
        return [listener for listener in self.on_port(port, protocol) if blocks(listener, address)]

    def owners(self, listeners: Iterable[Listener]) -> dict[int, ProcessInfo | None]:
        """inode -> the process holding it; None when it could not be attributed.

        A socket shared by several processes (a pre-forking server, socket activation) is
        attributed to one of them: the search stops as soon as every socket has an owner, which
        keeps ``who`` and ``check`` fast. :meth:`holders` names them all.
        """
        wanted = list(listeners)
        missing = {f"socket:[{x.inode}]": x.inode for x in wanted if x.inode not in self._owners}
        if missing:
            self._resolve(missing, {x.uid for x in wanted})
        return {x.inode: self._owners[x.inode] for x in wanted}

    def holders(self, listeners: Iterable[Listener]) -> dict[int, tuple[ProcessInfo, ...]]:
        """inode -> every process holding it (the one :meth:`owners` names first, the others in
        ascending pid order); empty when none could be seen.

        What stopping a socket's holders takes: a pre-forking server's workers keep the port
        after its master ends. Every fd of every readable process is read once for this (the
        links stay cached), so it costs a full walk of /proc where :meth:`owners` stops early.
        """
        wanted = list(listeners)
        first = self.owners(wanted)
        self._read_everything()
        found: dict[int, tuple[ProcessInfo, ...]] = {}
        for x in wanted:
            owner = first[x.inode]
            pids = sorted(self._sharers.get(f"socket:[{x.inode}]", ()))
            if owner is not None:
                pids = [owner.pid, *(pid for pid in pids if pid != owner.pid)]
            found[x.inode] = tuple(self._process(pid) for pid in pids)
        return found

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

    def _read_everything(self) -> None:
        """Every fd of every process not read in full yet (those this user may read)."""
        for pid in _pids(set()):
            if pid not in self._done:
                self._visit(pid, {}, None)

    def _read_all(self, table: _FdTable, missing: dict[str, int]) -> None:
        looking = bool(missing)  # reading for owners stops once none is missing
        for name in table.names():
            self._note(table, name, missing)
            if looking and not missing:
                return
        self._done.add(table.pid)

    def _note(self, table: _FdTable, name: str, missing: dict[str, int]) -> str | None:
        """Read one fd link, record it when it is a socket and claim it when it is wanted."""
        link = table.link(name)
        if link is not None and link.startswith("socket:"):
            self._holder.setdefault(link, table.pid)
            self._sharers.setdefault(link, set()).add(table.pid)
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
