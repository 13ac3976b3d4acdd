"""Validation of every name that becomes a store key, a path or a port."""

from __future__ import annotations

import re
from collections.abc import Mapping

from portctl.errors import InvalidInput, Kind

# A service name is one DNS label in lowercase, with '_' allowed because the standard names
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


def service_name(value: str, field: str = Kind("service")) -> str:
    if not isinstance(value, str) or not _SERVICE_NAME.fullmatch(value):
        raise InvalidInput(field, value, SERVICE_NAME_FORM)
    return value


def host(value: str, field: str = Kind("host")) -> str:
    """A host name, or an IPv4 or IPv6 address (``::1``, ``[::1]`` and ``fe80::1%eth0`` too)."""
    if isinstance(value, str) and _is_ip(value.removeprefix("[").removesuffix("]")):
        return value
    if not isinstance(value, str) or not _HOST.fullmatch(value) or ".." in value:
        raise InvalidInput(field, value, HOST_FORM)
    return value


HOST_ID_FORM = "a host name or address usable as a key: letters, digits, '.', '-', '_' or ':' (no brackets)"


def host_identity(value: str, field: str = Kind("host")) -> str:
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


# Only ASCII digits, nothing around them: int() would also take ' 80', '8_080', '٨٠٨٢' or '²'
# (and raise on the last), and converting thousands of digits is refused by Python itself.
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)
DIGITS_FORM = "digits 0-9 only, no spaces or signs"


def shown(value: object, limit: int = 40) -> object:
    """``value`` as an error message shows it: a long string cut to its start and its length."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... ({len(value)} characters)"
    return value


def integer(value: object, field: str, low: int, high: int, expected: str) -> int:
    """An int in [low, high], from an int or a string of ASCII digits (CLI, TOML, URLs)."""
    if isinstance(value, str):
        significant = value.lstrip("0")
        if not _DIGITS.fullmatch(value) or len(significant) > len(str(high)):
            raise InvalidInput(field, shown(value), expected)
        value = int(significant or "0")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(field, shown(value), expected)
    return value


def port(value: object, field: str = Kind("port"), *, low: int = 1) -> int:
    """A TCP/UDP port as an int in [low, 65535]; strings of ASCII digits are accepted (CLI, TOML)."""
    return integer(value, field, low, 65535, f"an integer from {low} to 65535 ({DIGITS_FORM})")


def count(value: object, field: str, low: int = 1, high: int = 100) -> int:
    """A count such as ``--failures-before-critical``: an int, or ASCII digits, in [low, high]."""
    return integer(value, field, low, high, f"a count from {low} to {high} ({DIGITS_FORM})")


def protocol(value: str, field: str = Kind("protocol")) -> str:
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
    value = float(text) if _DECIMAL.fullmatch(text) and len(text) <= 16 else 0.0
    if not 0 < value <= 300:
        raise InvalidInput(field, shown(text), "seconds per call, more than 0 and at most 300 (e.g. 2.5)")
    return value


# Meta follows Consul's rules on every store, so an entry always migrates to Consul, and the
# keys portctl and Consul write themselves are refused: a user's could be taken for theirs.
META_KEY_FORM = (
    "a key of 1-128 ASCII letters, digits, '_' or '-', not starting with 'portctl-' (reserved "
    "for portctl) or 'consul-' (reserved by Consul)"
)
_META_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}", re.ASCII)
META_RESERVED = ("portctl-", "consul-")
META_VALUE_MAX = 512
META_PAIRS_MAX = 60  # Consul's 64, less the four portctl adds there


def meta(pairs: Mapping[str, str], field: str = "meta") -> dict[str, str]:
    """Registration metadata: keys of Consul's form, one-line printable values."""
    if len(pairs) > META_PAIRS_MAX:
        raise InvalidInput(field, f"{len(pairs)} pairs", f"at most {META_PAIRS_MAX} pairs")
    for name, value in pairs.items():
        if not _META_KEY.fullmatch(str(name)) or str(name).lower().startswith(META_RESERVED):
            raise InvalidInput(field, shown(name), META_KEY_FORM)
        if not isinstance(value, str) or len(value) > META_VALUE_MAX or not one_line(value):
            raise InvalidInput(
                f"{field} {name}",
                shown(value),
                f"a value of at most {META_VALUE_MAX} printable characters on one line "
                "(no newline, tab or other control character)",
            )
    return dict(pairs)


def one_line(text: str) -> bool:
    """No control, format or line-separator character: what a terminal or a log line shows as is."""
    import unicodedata

    return not any(unicodedata.category(ch) in _UNPRINTABLE for ch in text)


_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
