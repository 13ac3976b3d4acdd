"""One item of a service's ``ports:`` list, in short or long syntax, read into mappings.

Short (``"127.0.0.1:8080:80/udp"``) and long (``{target: 80, published: 8080}``) syntax, each
interpolated first. Stricter than Compose where Compose would pick a random port or hand the
kernel something portctl cannot manage: a published port 0 or a host range for one container
port, an unbracketed IPv6 address, a protocol other than tcp or udp are refused with the form
accepted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from portctl import _validate
from portctl.compose._excerpt import as_written, clip, excerpt, quoted
from portctl.compose._interpolation import Interpolation
from portctl.errors import InvalidInput

__all__ = ["LONG_FORM", "SHORT_FORM", "PortMapping", "port_entry"]

SHORT_FORM = 'HOST:CONTAINER, e.g. "8080:80", "127.0.0.1:8080:80" or "8080:80/udp"'
LONG_FORM = "a mapping with target (required) and optional published, host_ip, protocol (tcp or udp), mode"

_LONG_KEYS = frozenset({"target", "published", "host_ip", "protocol", "mode", "name", "app_protocol"})
_DIGITS = re.compile(r"[0-9]+")
_RANGE = re.compile(r"([0-9]+)-([0-9]+)")


@dataclass(frozen=True)
class PortMapping:
    """One published container port of a service, after interpolation and range expansion."""

    service: str
    index: int  # position in the service's merged ports: list, before range expansion
    target: int
    published: int | None  # None: no fixed host port ("80", or long form without published)
    protocol: str  # "tcp" | "udp"
    host_ip: str  # "" for all addresses, else e.g. "127.0.0.1" or "::1" (no brackets)
    variable: str | None  # VAR when the published port is exactly one ${VAR...} expression
    source: str  # the entry as written, before interpolation


@dataclass
class _Entry:
    """One item of a ports: list, while it is being read."""

    service: str
    field: str
    source: str
    shown: object
    interpolation: Interpolation
    long: bool

    def bad(self, reason: str) -> InvalidInput:
        if not self.long and as_written(self.shown) != self.source:
            reason += f"; written {self.source}"
        if self.interpolation.blank:
            names = ", ".join(dict.fromkeys(self.interpolation.blank))
            reason += f"; {names} is unset or empty"
        if self.long:
            return InvalidInput(self.field, excerpt(self.shown), f"{LONG_FORM} ({reason}), or {SHORT_FORM}")
        return InvalidInput(self.field, excerpt(self.shown), f"{SHORT_FORM} ({reason})")

    def number(self, text: str, role: str) -> int:
        if not _DIGITS.fullmatch(text):
            raise self.bad(f"the {role} {quoted(text)} is not a number" if text else f"the {role} is empty")
        if len(text.lstrip("0")) > 5:
            raise self.bad(f"the {role} {clip(text)} is not from 1 to 65535")
        try:
            return _validate.port(text, self.field)
        except InvalidInput as e:
            raise self.bad(f"the {role} {clip(text)} is not from 1 to 65535") from e

    def ports(self, text: str, role: str) -> list[int]:
        """A port, or a range ``8080-8081`` as its ports."""
        match = _RANGE.fullmatch(text)
        if not match:
            return [self.number(text, role)]
        low, high = self.number(match[1], role), self.number(match[2], role)
        if low > high:
            raise self.bad(f"the {role} range {clip(text)} runs backwards")
        return list(range(low, high + 1))

    def protocol(self, text: str) -> str:
        if text.lower() not in _validate.PROTOCOLS:
            raise self.bad(f"the protocol {quoted(text)} is not tcp or udp")
        return text.lower()

    def host_ip(self, text: str, version: int | None) -> str:
        try:
            address = ipaddress.ip_address(text)
        except ValueError as e:
            raise self.bad(f"the host address {quoted(text)} is not an IP address") from e
        if version == 6 and address.version == 4:
            raise self.bad(f"only IPv6 addresses go in brackets; write {clip(text)}:HOST:CONTAINER")
        return str(address)

    def mappings(self, published: list[int] | None, targets: list[int], **common: Any) -> list[PortMapping]:
        if published is None:
            return [PortMapping(self.service, published=None, target=t, **common) for t in targets]
        if len(published) != len(targets):
            if len(targets) == 1:
                raise self.bad("a host port range for one container port is not supported; publish one port")
            raise self.bad("the host and container ranges are not of the same length")
        return [
            PortMapping(self.service, published=p, target=t, **common)
            for p, t in zip(published, targets, strict=True)
        ]


def _variable(spans: list[tuple[int, int, str]], start: int, end: int) -> str | None:
    return next((name for low, high, name in spans if (low, high) == (start, end)), None)


def _short_syntax(entry: _Entry, raw: str, index: int) -> list[PortMapping]:
    text, spans = entry.interpolation.run(raw)
    entry.shown = text
    body, slash, protocol = text.rpartition("/") if "/" in text else (text, "", "tcp")
    if slash and not body:
        raise entry.bad("the container port is missing")
    host_ip, published, start = "", "", 0
    if body.startswith("["):
        address, bracket, rest = body[1:].partition("]")
        if not bracket or not rest.startswith(":") or rest.count(":") != 2:
            raise entry.bad('a bracketed address is followed by :HOST:CONTAINER, e.g. "[::1]:8080:80"')
        host_ip = entry.host_ip(address, 6)
        start = len(address) + 3
        published, _, target = rest[1:].partition(":")
    else:
        parts = body.split(":")
        if len(parts) > 3:
            raise entry.bad('an IPv6 host address needs brackets, e.g. "[::1]:8080:80"')
        target = parts[-1]
        if len(parts) == 3:
            host_ip = entry.host_ip(parts[0], 4)
            start = len(parts[0]) + 1
        if len(parts) >= 2:
            published = parts[-2]
            if not published and not host_ip:
                raise entry.bad("the host port is empty")
    targets = entry.ports(target, "container port")
    ports = entry.ports(published, "host port") if published else None
    variable = _variable(spans, start, start + len(published)) if published else None
    common = {"index": index, "protocol": entry.protocol(protocol), "host_ip": host_ip}
    return entry.mappings(ports, targets, variable=variable, source=entry.source, **common)


def _scalar_text(entry: _Entry, value: object, key: str) -> tuple[str, list[tuple[int, int, str]]]:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise entry.bad(f"{key} is a {type(value).__name__}")
    if isinstance(value, int):
        return str(value), []
    return entry.interpolation.run(value)


def _long_syntax(entry: _Entry, raw: dict[Any, Any], index: int) -> list[PortMapping]:
    unknown = sorted(str(key) for key in raw if key not in _LONG_KEYS)
    if unknown:
        raise entry.bad(f"unknown key {quoted(unknown[0])}")
    if raw.get("target") is None:
        raise entry.bad("target is missing")
    target, _ = _scalar_text(entry, raw["target"], "target")
    targets = [entry.number(target, "container port")]
    ports, variable = None, None
    if raw.get("published") is not None:
        published, spans = _scalar_text(entry, raw["published"], "published")
        if published:
            ports = entry.ports(published, "host port")
            variable = _variable(spans, 0, len(published))
        elif spans:
            raise entry.bad("the host port is empty")
    host_ip = ""
    if raw.get("host_ip") not in (None, ""):
        address, _ = _scalar_text(entry, raw["host_ip"], "host_ip")
        host_ip = entry.host_ip(address, None) if address else ""
    protocol = "tcp"
    if raw.get("protocol") not in (None, ""):
        protocol = entry.protocol(_scalar_text(entry, raw["protocol"], "protocol")[0] or "tcp")
    common = {"index": index, "protocol": protocol, "host_ip": host_ip}
    return entry.mappings(ports, targets, variable=variable, source=entry.source, **common)


def port_entry(
    raw: object, service: str, field: str, index: int, lookup: Mapping[str, str]
) -> list[PortMapping]:
    long = isinstance(raw, dict)
    if isinstance(raw, dict):
        source = ", ".join(f"{key}: {as_written(value)}" for key, value in raw.items())
    else:
        source = as_written(raw)
    shown = source if long else raw
    entry = _Entry(service, field, source, shown, Interpolation(lookup, field, shown), long)
    if isinstance(raw, dict):
        return _long_syntax(entry, raw, index)
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise entry.bad(f"an entry is a string or a mapping, not a {type(raw).__name__}")
    return _short_syntax(entry, str(raw), index)
