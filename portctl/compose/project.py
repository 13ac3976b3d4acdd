"""Reading a project's Docker Compose files: its name, its folder and the ports of its services.

:func:`load_compose` reads what portctl needs of a Compose project: its name, its folder and,
for every service, the ports it publishes. It follows the Compose specification for that part:

* files are merged by service; a later ``ports:`` list is appended to the earlier one (identical
  mappings kept once), replaced when tagged ``!override``, cleared when tagged ``!reset``;
* every port entry is interpolated (``$VAR``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$`` ...)
  from the environment over the project's ``.env`` file, per file, before the merge;
* short (``"127.0.0.1:8080:80/udp"``) and long (``{target: 80, published: 8080}``) syntax.

The parts live in private modules: the bounded YAML reader (``_yaml``), interpolation and the
``.env`` file (``_interpolation``), one ``ports:`` item (``_ports``), and how messages quote a
file (``_excerpt``). Writing the override that moves the ports is :mod:`portctl.compose.override`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from portctl.compose._excerpt import Excerpt, clip, excerpt
from portctl.compose._interpolation import Interpolation, read_dotenv
from portctl.compose._ports import SHORT_FORM, PortMapping, port_entry
from portctl.compose._yaml import Override, Reset, parse_yaml, plain, read_text
from portctl.errors import InvalidInput, Kind

__all__ = ["ComposeProject", "PortMapping", "load_compose"]

PROJECT_NAME_FORM = "lowercase letters, digits, '_' or '-', starting with a letter or digit"
SERVICE_NAME_FORM = "service names that are strings of letters, digits, '.', '_' or '-'"

_PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SERVICE_NAME = re.compile(r"[a-zA-Z0-9._-]+")


@dataclass(frozen=True)
class ComposeProject:
    files: tuple[str, ...]
    name: str
    directory: str
    services: dict[str, tuple[PortMapping, ...]]

    def mappings(self) -> list[PortMapping]:
        """Every mapping, in service order then index."""
        return [mapping for ports in self.services.values() for mapping in ports]


# --- merging -------------------------------------------------------------------------------------

# One file's ports: list of a service, each entry read: how it combines with earlier files.
_Ports = tuple[str, list[list[PortMapping]]]  # ("append" | "override" | "reset", entries)


def _service_ports(definition: dict[Any, Any], service: str, where: str, lookup: Mapping[str, str]) -> _Ports:
    raw = definition.get("ports")
    how = "override" if isinstance(raw, Override) else "reset" if isinstance(raw, Reset) else "append"
    if how == "reset":
        return how, []
    raw = plain(raw)
    if raw is None:
        return how, []
    if not isinstance(raw, list):
        raise InvalidInput(f"{where}.ports", excerpt(raw), f"a list of ports, each {SHORT_FORM}")
    return how, [port_entry(item, service, f"{where}.ports[{i}]", i, lookup) for i, item in enumerate(raw)]


def _merge_file(
    merged: dict[str, list[list[PortMapping]]], doc: dict[Any, Any], label: str, lookup: Mapping[str, str]
) -> None:
    services = doc.get("services")
    if isinstance(services, Override | Reset):
        merged.clear()
    if isinstance(services, Reset):
        return
    services = plain(services)
    if services is None:
        return
    if not isinstance(services, dict):
        raise InvalidInput(
            f"{label}: services", excerpt(services), "a mapping of service names to their definitions"
        )
    for key, value in services.items():
        if not isinstance(key, str) or not _SERVICE_NAME.fullmatch(key):
            raise InvalidInput(f"{label}: services", Excerpt(key), SERVICE_NAME_FORM)
        name = key
        if isinstance(value, Reset):
            merged.pop(name, None)
            continue
        definition = plain(value)
        if definition is None:
            definition = {}
        if not isinstance(definition, dict):
            raise InvalidInput(
                f"{label}: services.{clip(name)}",
                excerpt(definition),
                "a mapping (the service's definition)",
            )
        how, entries = _service_ports(definition, name, f"{label}: services.{clip(name)}", lookup)
        if isinstance(value, Override) or how != "append" or name not in merged:
            merged[name] = entries
        else:
            merged[name].extend(entries)


def _numbered(service: str, entries: list[list[PortMapping]]) -> tuple[PortMapping, ...]:
    """The merged list's mappings, each with its index in it; identical ones kept once, as Compose does."""
    seen: set[tuple[str, int, int | None, str]] = set()
    result: list[PortMapping] = []
    for index, mappings in enumerate(entries):
        for mapping in mappings:
            key = (mapping.host_ip, mapping.target, mapping.published, mapping.protocol)
            if key not in seen:
                seen.add(key)
                result.append(dataclasses.replace(mapping, service=service, index=index))
    return tuple(result)


# --- project -------------------------------------------------------------------------------------


def _normalized_name(value: str) -> str:
    """Compose's normalization: lowercase, keep [a-z0-9_-], drop leading '_' and '-'."""
    return re.sub(r"[^a-z0-9_-]", "", value.lower()).lstrip("_-")


def _project_name(docs: list[tuple[str, dict[Any, Any]]], directory: str, lookup: Mapping[str, str]) -> str:
    given = lookup.get("COMPOSE_PROJECT_NAME", "")
    if given:
        if not _PROJECT_NAME.fullmatch(given):
            raise InvalidInput("COMPOSE_PROJECT_NAME", excerpt(given), PROJECT_NAME_FORM)
        return given
    source, raw = "project folder", os.path.basename(directory)
    for label, doc in docs:
        value = plain(doc.get("name"))
        if value is not None:
            if not isinstance(value, str):
                raise InvalidInput(f"{label}: name", excerpt(value), "a string (the project name)")
            source, raw = f"{label}: name", Interpolation(lookup, f"{label}: name", value).run(value)[0]
    name = _normalized_name(raw)
    if not name:
        raise InvalidInput(source, excerpt(raw), f"a project name with {PROJECT_NAME_FORM}")
    return name


def load_compose(
    files: Sequence[str], *, env_file: str | None = None, environ: Mapping[str, str] | None = None
) -> ComposeProject:
    """Read Compose files as ``docker compose -f FILE -f FILE ...`` would, for their ports.

    Variables come from ``environ`` (default: ``os.environ``) over the ``.env`` file: ``env_file``
    if given, else ``.env`` in the project folder (the first file's folder) if there is one. The
    project name is, as in Compose: ``COMPOSE_PROJECT_NAME`` (environment or ``.env``), else the
    last top-level ``name:``, else the project folder's name, normalized.
    """
    if isinstance(files, str):
        raise InvalidInput(Kind("files"), files, "a list of Compose files, not one string")
    if not files:
        raise InvalidInput(Kind("files"), None, "at least one Compose file")
    docs = [(str(path), parse_yaml(read_text(str(path), "Compose file"), str(path))) for path in files]
    paths = tuple(os.path.abspath(path) for path in files)
    directory = os.path.dirname(paths[0])
    environ = os.environ if environ is None else environ
    dotenv_path = env_file if env_file is not None else os.path.join(directory, ".env")
    dotenv = read_dotenv(dotenv_path, environ) if env_file is not None or os.path.isfile(dotenv_path) else {}
    lookup = {**dotenv, **environ}
    merged: dict[str, list[list[PortMapping]]] = {}
    for label, doc in docs:
        _merge_file(merged, doc, label, lookup)
    services = {name: _numbered(name, entries) for name, entries in merged.items()}
    return ComposeProject(paths, _project_name(docs, directory, lookup), directory, services)
