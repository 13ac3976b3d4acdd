"""Validation of every name that becomes a store key, a path or a port."""

from __future__ import annotations

import re

from portctl.errors import InvalidInput

# A service name is one DNS label in lowercase, with '_' allowed because the plan's own names
# use it (admin_ui, mcp_memory). Consul's DNS interface shows '_' as '-'.
SERVICE_NAME_FORM = (
    "1-63 characters: lowercase letters, digits, '_' or '-', starting with a letter "
    "and ending with a letter or digit (e.g. postgres, admin_ui, mcp-tools)"
)
_SERVICE_NAME = re.compile(r"^[a-z](?:[a-z0-9_-]{0,61}[a-z0-9])?$")

HOST_FORM = "a host name or IP address: letters, digits, '.', '-', ':' or '_', at most 253"
_HOST = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._:-]{0,251}[A-Za-z0-9_])?$")

KEY_FORM = "'/'-separated segments of letters, digits, '.', '_', '-', ':' or '@', none of them '.' or '..'"
_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9._:@-]+$")

PROTOCOLS = ("tcp", "udp")


def service_name(value: str, field: str = "service") -> str:
    if not isinstance(value, str) or not _SERVICE_NAME.fullmatch(value):
        raise InvalidInput(field, value, SERVICE_NAME_FORM)
    return value


def host(value: str, field: str = "host") -> str:
    """A host name, or an IPv4 or IPv6 address (``::1``, ``[::1]`` and ``fe80::1%eth0`` too)."""
    if isinstance(value, str) and _is_ip(value.removeprefix("[").removesuffix("]")):
        return value
    if not isinstance(value, str) or not _HOST.fullmatch(value) or ".." in value:
        raise InvalidInput(field, value, HOST_FORM)
    return value


HOST_ID_FORM = "a host name or address usable as a key: letters, digits, '.', '-', '_' or ':' (no brackets)"


def host_identity(value: str, field: str = "host") -> str:
    """This host's name in the store: a host (see :func:`host`) that is also one key segment."""
    host(value, field)
    if not _KEY_SEGMENT.fullmatch(value) or value in (".", ".."):
        raise InvalidInput(field, value, HOST_ID_FORM)
    return value


def port_variable(service: str) -> str:
    """The environment variable a service's port goes in: ``admin_ui`` -> ``ADMIN_UI_PORT``."""
    return re.sub(r"[^A-Z0-9]", "_", service.upper()) + "_PORT"


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def port(value: object, field: str = "port", *, low: int = 1) -> int:
    """A TCP/UDP port as an int in [low, 65535]; strings of digits are accepted (CLI, TOML)."""
    expected = f"an integer from {low} to 65535"
    if isinstance(value, bool):
        raise InvalidInput(field, value, expected)
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise InvalidInput(field, value, expected)
        value = int(value)
    if not isinstance(value, int) or not low <= value <= 65535:
        raise InvalidInput(field, value, expected)
    return value


def protocol(value: str, field: str = "protocol") -> str:
    if value not in PROTOCOLS:
        raise InvalidInput(field, value, " or ".join(PROTOCOLS))
    return value


def key(value: str, field: str = "key") -> str:
    """A store key: relative, no empty, '.' or '..' segments, so no prefix can be escaped."""
    if not isinstance(value, str) or not value or value.startswith("/") or value.endswith("/"):
        raise InvalidInput(field, value, KEY_FORM)
    for segment in value.split("/"):
        if segment in (".", "..") or not _KEY_SEGMENT.fullmatch(segment):
            raise InvalidInput(field, value, KEY_FORM)
    return value


def prefix(value: str, field: str = "prefix") -> str:
    """A key prefix: empty (everything) or a key, optionally ending in '/'."""
    if value == "":
        return value
    key(value.removesuffix("/"), field)
    return value


def call_timeout(text: str | None, default: float, field: str = "store URL option timeout") -> float:
    """Seconds a store call may take, from a URL option such as ``?timeout=2.5``."""
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 300:
        raise InvalidInput(field, text, "seconds per call, more than 0 and at most 300")
    return value
