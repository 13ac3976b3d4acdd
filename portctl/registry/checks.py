"""The checks a registration can carry, as users write them: ``tcp``, ``http://HOST:PORT/PATH``,
``ttl:15s`` or ``none``, durations, and the rule that an HTTP check targets the instance's own
host."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from portctl import _validate
from portctl.errors import InvalidInput, Param
from portctl.records import (
    CheckSpec,
)

if TYPE_CHECKING:
    from ipaddress import IPv4Address, IPv6Address


DURATION_FORM = "a duration like 500ms, 15s, 10m or 1h (a number and a unit: ms, s, m, h)"
_DURATION = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,12})?)(ms|s|m|h)", re.ASCII)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
CHECK_FORM = "tcp, http://HOST:PORT/PATH (or https://), ttl:DURATION such as ttl:15s, or none"
CHECK_HOST_FORM = "an HTTP URL on the instance's own address {address}{loopback}"
CHECK_HOST_HINT = ("; give ", Param("address"), " to register the instance at another address")
LOOPBACK_FORMS = "localhost, 127.0.0.1 (any 127.x.x.x) or [::1]"


def parse_duration(value: str | float, field_name: str = "duration") -> float:
    """Seconds in a duration string; bare numbers are refused (``15`` is ambiguous), and so
    are spaces around it and digits other than ASCII 0-9."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if not match:
            raise InvalidInput(field_name, _validate.shown(value), DURATION_FORM)
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= 30 * 24 * 3600:
        expected = DURATION_FORM + ", more than 0 and at most 30 days"
        raise InvalidInput(field_name, _validate.shown(value), expected)
    return seconds


def parse_check(
    text: str | None,
    *,
    interval: str | None = None,
    timeout: str | None = None,
    deregister_after: str | None = None,
    successes_before_passing: int | str = 1,
    failures_before_critical: int | str = 1,
) -> CheckSpec:
    """A check from the CLI's ``--check`` form; ``None`` means a TCP check. Counts may be
    given as ints or as strings of ASCII digits."""
    text = text or "tcp"
    kind, url, ttl = "tcp", None, None
    if text.startswith("ttl:"):
        kind, ttl = "ttl", parse_duration(text.removeprefix("ttl:"), "check ttl")
    elif text.startswith(("http://", "https://")):
        kind, url = "http", _check_url(text)
    elif text in ("tcp", "none"):
        kind = text
    else:
        raise InvalidInput("check", _validate.shown(text), CHECK_FORM)
    successes = _validate.count(successes_before_passing, "successes_before_passing")
    failures = _validate.count(failures_before_critical, "failures_before_critical")
    return CheckSpec(
        kind=kind,
        url=url,
        interval=parse_duration(interval, "interval") if interval else 5.0,
        timeout=parse_duration(timeout, "timeout") if timeout else 2.0,
        ttl=ttl,
        deregister_after=parse_duration(deregister_after, "deregister_after") if deregister_after else None,
        successes_before_passing=successes,
        failures_before_critical=failures,
    )


def _check_url(text: str) -> str:
    if len(text) > 2048 or not _validate.one_line(text) or any(ch.isspace() for ch in text):
        # urllib would silently drop a tab or newline, so the URL checked is not the one shown.
        # Not echoed: it may hold a password, refused below.
        raise InvalidInput(
            "check",
            "a URL with spaces, control characters or over 2048 characters",
            "http://HOST:PORT/PATH on one line, without spaces",
        )
    try:
        parts = urlsplit(text)
    except ValueError as e:  # an unclosed [ of an IPv6 address
        raise InvalidInput("check", "a URL that does not parse", f"http://HOST:PORT/PATH ({e})") from e
    port = _url_port(parts.netloc)
    if parts.username is not None or parts.password is not None:
        # It would sit in the store for every reader to see, and urllib would not send it.
        raise InvalidInput(
            "check", "a URL with credentials", "http://HOST:PORT/PATH without user or password"
        )
    if not parts.hostname or port is None:
        raise InvalidInput("check", text, "http://HOST:PORT/PATH with a host and a port from 1 to 65535")
    _validate.host(parts.hostname, "check host")
    return text


def _url_port(netloc: str) -> int | None:
    """The port of ``host:port`` or ``[v6]:port``, if it is one (ASCII digits, 1-65535)."""
    hostport = netloc.rpartition("@")[2]
    _, colon, text = hostport.rpartition("]")[2].rpartition(":")
    try:
        return _validate.port(text) if colon else None
    except InvalidInput:
        return None


def _bare_host(text: str) -> str:
    return text.removeprefix("[").removesuffix("]").lower()


def _ip(text: str) -> IPv4Address | IPv6Address | None:
    import ipaddress

    try:
        return ipaddress.ip_address(_bare_host(text))
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8, ::1 and ::ffff:127.x.x.x (which Python 3.11 does not count)."""
    ip = _ip(host)
    if ip is None:
        return _bare_host(host) == "localhost"
    mapped = ip.ipv4_mapped if ip.version == 6 else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _listening_pid(address: str, port: int) -> int | None:
    """The process already listening where an instance answers: recorded as the instance's
    process, so that whatever holds the port later can be told apart from it."""
    from portctl.host.listeners import ListenerScan

    scan = ListenerScan()
    owners = scan.owners(scan.blocking(port, "tcp", address))
    return next((owner.pid for owner in owners.values() if owner is not None), None)


def _is_local(address: str) -> bool:
    """An address this host's loopback reaches: a loopback one, or a wildcard (0.0.0.0, ::)."""
    ip = _ip(address)
    return _is_loopback(address) or (ip is not None and ip.is_unspecified)


def _same_host(a: str, b: str) -> bool:
    ip_a, ip_b = _ip(a), _ip(b)
    if ip_a is not None or ip_b is not None:
        return ip_a == ip_b
    return _bare_host(a).rstrip(".") == _bare_host(b).rstrip(".")


def check_host(url: str, address: str) -> None:
    """Refuse an HTTP check that does not target the instance: its host must be the instance's
    ``address``, or - when that address is loopback or a wildcard - any loopback form
    (``localhost``, ``127.x.x.x``, ``[::1]``)."""
    host = urlsplit(url).hostname or ""
    local = _is_local(address)
    if _same_host(host, address) or (local and _is_loopback(host)):
        return
    loopback = f" or a loopback address ({LOOPBACK_FORMS})" if local else ""
    raise InvalidInput(
        "check", url, (CHECK_HOST_FORM.format(address=address, loopback=loopback), *CHECK_HOST_HINT)
    )
