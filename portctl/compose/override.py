"""Writing the ``docker-compose.override.yml`` that moves a project's ports.

Compose *merges* ``ports:`` lists from an override file into the base file, so an override
that only lists the new port keeps the conflicting one too; :func:`render_override` tags each
list ``!override`` (Compose >= 2.24) so it replaces the base file's entries instead.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence

import yaml

from portctl import _validate
from portctl.compose.project import PortMapping
from portctl.errors import InvalidInput

__all__ = ["render_override"]

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _yaml_key(name: str) -> str:
    if _PLAIN_KEY.fullmatch(name) and yaml.safe_load(name) == name:
        return name
    return json.dumps(name)


def _short_form(mapping: PortMapping, field: str) -> str:
    target = _validate.port(mapping.target, f"{field}: target")
    published = (
        "" if mapping.published is None else str(_validate.port(mapping.published, f"{field}: published"))
    )
    suffix = "/udp" if _validate.protocol(mapping.protocol, f"{field}: protocol") == "udp" else ""
    if not mapping.host_ip:
        return f"{published}:{target}{suffix}" if published else f"{target}{suffix}"
    try:
        address = ipaddress.ip_address(mapping.host_ip)
    except ValueError as e:
        raise InvalidInput(
            f"{field}: host_ip", mapping.host_ip, "an IP address, e.g. 127.0.0.1 or ::1"
        ) from e
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{host}:{published}:{target}{suffix}"


def render_override(
    ports: Mapping[str, Sequence[PortMapping]], *, replace: bool = True, header: str = ""
) -> str:
    """YAML for a ``docker-compose.override.yml`` setting each given service's ports to exactly these.

    With ``replace`` the lists are tagged ``!override`` so Compose (>= 2.24) replaces the base
    file's ports instead of appending to them."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    if not ports:
        return "\n".join([*lines, "services: {}"]) + "\n"
    tag = " !override" if replace else ""
    lines.append("services:")
    for service in sorted(ports):
        entries = [_short_form(m, f"{service}.ports[{i}]") for i, m in enumerate(ports[service])]
        lines.append(f"  {_yaml_key(service)}:")
        lines.append(f"    ports:{tag}" + ("" if entries else " []"))
        lines += [f"      - {json.dumps(entry)}" for entry in entries]
    return "\n".join(lines) + "\n"
