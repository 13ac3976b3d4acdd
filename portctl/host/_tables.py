"""The kernel's socket tables, read for listeners: one NETLINK_SOCK_DIAG dump per protocol and
family, in which the kernel itself keeps only LISTEN (TCP) or unconnected (UDP) sockets, or
/proc/net/{tcp,udp}{,6} where netlink is refused (a seccomp filter, a missing ``*_diag`` module).

Pure parsers of both formats, and :func:`read_listeners`, which gives rows, not objects: who
holds a socket is :mod:`portctl.host.listeners`' question.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Iterable
from functools import lru_cache

from portctl.errors import InvalidInput, Kind

__all__ = [
    "PROTOCOLS",
    "Row",
    "address_text",
    "check_protocol",
    "check_protocols",
    "decode_proc_address",
    "parse_diag_messages",
    "parse_proc_line",
    "parse_proc_table",
    "read_listeners",
]

PROTOCOLS = ("tcp", "udp")

_TCP_LISTEN = 10  # TCP_LISTEN in include/net/tcp_states.h; "0A" in /proc/net/tcp
_UDP_UNCONNECTED = 7  # TCP_CLOSE: a bound, unconnected UDP socket; "07" in /proc/net/udp
_STATE = {"tcp": _TCP_LISTEN, "udp": _UDP_UNCONNECTED}
_STATE_HEX = {protocol: f"{state:02X}" for protocol, state in _STATE.items()}
_IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_FAMILIES = ((4, socket.AF_INET), (6, socket.AF_INET6))

# A row is a Listener's fields in order; Listener objects are built only for the rows asked
# about, because a frozen dataclass costs ~1 us to create and a busy host has 10,000 rows.
Row = tuple[str, str, int, int, int, int]


# --- pure parsing -----------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def address_text(raw: bytes) -> str:
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
    return address_text(raw), 4 if len(raw) == 4 else 6


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
    check_protocol(protocol)
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
                        address = names[src] = address_text(src)
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
    wanted = check_protocols(protocols)
    if method not in ("auto", "netlink", "proc"):
        raise InvalidInput("method", method, "auto, netlink or proc")
    return [row for p in wanted for family, af in _FAMILIES for row in _table_rows(p, family, af, method)]


def check_protocols(protocols: Iterable[str]) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(protocols))
    for protocol in wanted:
        check_protocol(protocol)
    return wanted


def check_protocol(protocol: str) -> None:
    if protocol not in _STATE:
        raise InvalidInput(Kind("protocol"), protocol, "tcp or udp")
