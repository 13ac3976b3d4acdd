"""Reading a project's Docker Compose files, and writing the override that moves its ports.

:func:`load_compose` reads what portctl needs of a Compose project: its name, its folder and,
for every service, the ports it publishes. It follows the Compose specification for that part:

* files are merged by service; a later ``ports:`` list is appended to the earlier one (identical
  mappings kept once), replaced when tagged ``!override``, cleared when tagged ``!reset``;
* every port entry is interpolated (``$VAR``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$`` ...)
  from the environment over the project's ``.env`` file, per file, before the merge;
* short (``"127.0.0.1:8080:80/udp"``) and long (``{target: 80, published: 8080}``) syntax.

It is stricter than Compose where Compose would pick a random port or hand the kernel something
portctl cannot manage: a published port 0 or a host range for one container port, an unbracketed
IPv6 address, a protocol other than tcp or udp are refused with the form accepted.

:func:`render_override` writes ``docker-compose.override.yml`` text that sets services' ports,
tagged ``!override`` (Compose >= 2.24) so the base file's entries are replaced, not merged.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from portctl import _validate
from portctl.errors import InvalidInput, Kind

__all__ = ["ComposeProject", "PortMapping", "load_compose", "render_override"]

SHORT_FORM = 'HOST:CONTAINER, e.g. "8080:80", "127.0.0.1:8080:80" or "8080:80/udp"'
LONG_FORM = "a mapping with target (required) and optional published, host_ip, protocol (tcp or udp), mode"
PROJECT_NAME_FORM = "lowercase letters, digits, '_' or '-', starting with a letter or digit"
INTERPOLATION_FORM = (
    "$VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, "
    "${VAR:+replacement}, ${VAR+replacement}, or $$ for a literal $"
)
ENV_LINE_FORM = "KEY=VALUE lines (optionally 'export KEY=VALUE', quoted values, # comments)"
SERVICE_NAME_FORM = "service names that are strings of letters, digits, '.', '_' or '-'"

# Bounds on what a Compose file may make portctl do. Real files are far inside them; a file
# built to exhaust a YAML reader (aliases expanding 9^10-fold, 20,000 nested lists) is not.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64  # nesting levels of YAML collections
MAX_NODES = 50_000  # YAML nodes, counting each alias as the whole node it stands for
MAX_INTERPOLATION_DEPTH = 16  # ${A:-${B:-...}} levels
ECHO_LIMIT = 80  # characters of a file's value quoted in a message

_LONG_KEYS = frozenset({"target", "published", "host_ip", "protocol", "mode", "name", "app_protocol"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_DIGITS = re.compile(r"[0-9]+")
_RANGE = re.compile(r"([0-9]+)-([0-9]+)")
_PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")
_SERVICE_NAME = re.compile(r"[a-zA-Z0-9._-]+")


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


@dataclass(frozen=True)
class ComposeProject:
    files: tuple[str, ...]
    name: str
    directory: str
    services: dict[str, tuple[PortMapping, ...]]

    def mappings(self) -> list[PortMapping]:
        """Every mapping, in service order then index."""
        return [mapping for ports in self.services.values() for mapping in ports]


# --- YAML ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Override:
    """A value tagged ``!override``: it replaces what earlier files said."""

    value: Any


@dataclass(frozen=True)
class _Reset:
    """A value tagged ``!reset``: what earlier files said is dropped, whatever the value."""

    value: Any


class _Refused(yaml.MarkedYAMLError):
    """A file portctl will not read to the end: too deep, too big once expanded, ambiguous."""

    def __init__(self, mark: yaml.Mark | None, problem: str, expected: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.expected = expected


class _Loader(yaml.SafeLoader):
    """SafeLoader reading YAML 1.2 integers (``8080:80`` is a string, as Compose reads it) and
    the ``!override`` / ``!reset`` tags of Compose >= 2.24, within :data:`MAX_DEPTH` and
    :data:`MAX_NODES`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._composed = 0

    def fetch_flow_collection_start(self, TokenClass: type) -> None:  # noqa: N803 (PyYAML's name)
        # The scanner looks ahead over every open [ or { for a possible key: refuse early.
        if self.flow_level >= MAX_DEPTH:
            raise _too_deep(self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            raise _too_deep(self._next_mark())
        self._composed += 1
        if self._composed > MAX_NODES:
            raise _too_many(self._next_mark())
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _next_mark(self) -> yaml.Mark:
        return self.peek_event().start_mark  # type: ignore[no-untyped-call,no-any-return]

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > 64:  # int() of thousands of digits is refused by Python itself
            raise _Refused(node.start_mark, f"an integer of {len(node.value)} digits", "a port number")
        return super().construct_yaml_int(node)


def _too_deep(mark: yaml.Mark | None) -> _Refused:
    return _Refused(
        mark,
        f"nested deeper than {MAX_DEPTH} levels",
        f"a Compose file nested at most {MAX_DEPTH} levels deep",
    )


def _too_many(mark: yaml.Mark | None) -> _Refused:
    return _Refused(
        mark,
        f"more than {MAX_NODES} YAML nodes with its aliases expanded",
        f"a Compose file whose anchors and aliases expand to at most {MAX_NODES} nodes",
    )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    """Compose refuses a key given twice in one mapping; PyYAML would silently keep the last."""
    seen: dict[tuple[str, str], yaml.Node] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        first = seen.setdefault((key.tag, key.value), key)
        if first is not key:
            raise _Refused(
                key.start_mark,
                f"the key {_quoted(key.value)} is given twice (first at line {first.start_mark.line + 1})",
                "each key once in a mapping, as Compose requires",
            )


def _check_graph(root: yaml.Node) -> None:
    """Refuse a node graph whose aliases expand it beyond :data:`MAX_NODES`, or into itself.

    Aliases make the graph a DAG of shared nodes; each node is sized once, so this costs the
    size of the file, not of its expansion. Depth is bounded by :data:`MAX_DEPTH`."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known == -1:
            raise _Refused(
                node.start_mark, "an alias contains itself", "anchors that do not contain themselves"
            )
        if known is not None:
            return known
        sizes[id(node)] = -1
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(node)
        total = 1
        for child in _children(node):
            total += size(child)
            if total > MAX_NODES:
                raise _too_many(node.start_mark)
        sizes[id(node)] = total
        return total

    size(root)


_INT_TAG = "tag:yaml.org,2002:int"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _INT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT_TAG,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def _untagged(loader: _Loader, node: yaml.Node) -> Any:
    """The value the node would have without its tag."""
    if isinstance(node, yaml.ScalarNode):  # ``!reset null``, ``!override value``: the text is enough
        return loader.construct_scalar(node)
    plain: yaml.Node
    if isinstance(node, yaml.SequenceNode):
        plain = yaml.SequenceNode("tag:yaml.org,2002:seq", node.value, node.start_mark, node.end_mark)
    else:
        plain = yaml.MappingNode("tag:yaml.org,2002:map", node.value, node.start_mark, node.end_mark)
    return loader.construct_object(plain, deep=True)


def _construct_override(loader: _Loader, node: yaml.Node) -> _Override:
    return _Override(_untagged(loader, node))


def _construct_reset(loader: _Loader, node: yaml.Node) -> _Reset:
    return _Reset(_untagged(loader, node))


_Loader.add_constructor("!override", _construct_override)
_Loader.add_constructor("!reset", _construct_reset)
_Loader.add_constructor(_INT_TAG, _Loader.construct_yaml_int)


class _Excerpt:
    """A value from a file as a message quotes it: at most :data:`ECHO_LIMIT` characters,
    built without rendering the whole value."""

    def __init__(self, value: object) -> None:
        self.text = "null" if value is None else _clip(_REPR.repr(value))

    def __repr__(self) -> str:
        return self.text


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, ECHO_LIMIT, ECHO_LIMIT, ECHO_LIMIT
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def _clip(text: str) -> str:
    return text if len(text) <= ECHO_LIMIT else text[: ECHO_LIMIT - 1] + "…"


def _quoted(text: str) -> str:
    """``text`` quoted for a message, clipped."""
    return _clip(repr(text[: ECHO_LIMIT + 1]))


def _excerpt(value: object) -> object:
    """``value`` for InvalidInput: None stays None ("missing"), anything else is clipped."""
    return None if value is None else _Excerpt(value)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, _Override | _Reset) else value


def _read_text(path: str, what: str) -> str:
    limit = f"a {what} of at most {MAX_FILE_BYTES // (1024 * 1024)} MiB"
    try:
        with open(path, encoding="utf-8") as f:
            size = os.fstat(f.fileno()).st_size
            text = f.read(MAX_FILE_BYTES + 1) if size <= MAX_FILE_BYTES else ""
    except FileNotFoundError as e:
        raise InvalidInput(path, None, f"an existing {what}") from e
    except UnicodeDecodeError as e:
        raise InvalidInput(path, f"byte {e.start} is not UTF-8", f"a UTF-8 text {what}") from e
    except OSError as e:
        raise InvalidInput(path, e.strerror or str(e), f"a readable {what}") from e
    if size > MAX_FILE_BYTES or len(text) > MAX_FILE_BYTES:
        raise InvalidInput(path, f"{max(size, len(text)) / (1024 * 1024):.1f} MiB", limit)
    return text


def _parse_yaml(text: str, label: str) -> dict[Any, Any]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_graph(node)
        doc = _plain(loader.construct_document(node)) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "somewhere"
        expected = e.expected if isinstance(e, _Refused) else "valid YAML (a Compose file)"
        raise InvalidInput(label, f"{where}: {_clip(str(e.problem or e.context))}", expected) from e
    except yaml.YAMLError as e:
        raise InvalidInput(label, _clip(str(e)), "valid YAML (a Compose file)") from e
    finally:
        loader.dispose()
    if not isinstance(doc, dict):
        shown = "empty" if doc is None else f"a {type(doc).__name__}"
        raise InvalidInput(label, shown, "a mapping at the top level (services:, name:, ...)")
    return doc


# --- interpolation -------------------------------------------------------------------------------


@dataclass
class _Interpolation:
    """Interpolates one value; remembers the variables that came out empty, for messages."""

    lookup: Mapping[str, str]
    field: str
    raw: object
    blank: list[str] = dataclasses.field(default_factory=list)
    depth: int = 0

    def run(self, text: str) -> tuple[str, list[tuple[int, int, str]]]:
        """The text interpolated, and where each top-level expression's value is in it."""
        if self.depth >= MAX_INTERPOLATION_DEPTH:
            raise InvalidInput(
                self.field,
                _excerpt(self.raw),
                f"{INTERPOLATION_FORM}, nested at most {MAX_INTERPOLATION_DEPTH} levels deep",
            )
        self.depth += 1
        try:
            return self._run(text)
        finally:
            self.depth -= 1

    def _run(self, text: str) -> tuple[str, list[tuple[int, int, str]]]:
        out = ""
        spans: list[tuple[int, int, str]] = []
        i = 0
        while i < len(text):
            if text[i] != "$":
                dollar = text.find("$", i)
                end = len(text) if dollar == -1 else dollar
                out += text[i:end]
                i = end
                continue
            after = text[i + 1 : i + 2]
            if after == "$":
                out += "$"
                i += 2
                continue
            if after == "{":
                end = self._closing_brace(text, i + 2)
                name, value = self._braced(text[i + 2 : end])
                i = end + 1
            else:
                match = _NAME.match(text, i + 1)
                if not match:  # '$' before anything else is kept as written, as Compose does
                    out += "$"
                    i += 1
                    continue
                name, value = match.group(), self.lookup.get(match.group(), "")
                i = match.end()
            if not value:
                self.blank.append(name)
            spans.append((len(out), len(out) + len(value), name))
            out += value
        return out, spans

    def _bad(self) -> InvalidInput:
        return InvalidInput(self.field, _excerpt(self.raw), INTERPOLATION_FORM)

    def _closing_brace(self, text: str, start: int) -> int:
        depth = 1
        i = start
        while i < len(text):
            if text.startswith("$$", i):
                i += 2
            elif text.startswith("${", i):
                depth += 1
                i += 2
            else:
                if text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        return i
                i += 1
        raise self._bad()

    def _braced(self, inner: str) -> tuple[str, str]:
        match = _NAME.match(inner)
        if not match:
            raise self._bad()
        name, rest = match.group(), inner[match.end() :]
        if not rest:
            return name, self.lookup.get(name, "")
        operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
        if operator is None:
            raise self._bad()
        argument = rest[len(operator) :]
        value = self.lookup.get(name)
        usable = bool(value) if operator.startswith(":") else value is not None
        if operator in (":-", "-"):
            return name, value if usable and value is not None else self.run(argument)[0]
        if operator in (":+", "+"):
            return name, self.run(argument)[0] if usable else ""
        if usable and value is not None:
            return name, value
        condition = "set and not empty" if operator == ":?" else "set"
        message = _clip(self.run(argument)[0]) or "required variable"
        raise InvalidInput(self.field, _excerpt(self.raw), f"{name} to be {condition} ({message})")


# --- .env ----------------------------------------------------------------------------------------


def _read_dotenv(path: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``KEY=VALUE`` lines; values may be quoted and refer to earlier keys or the environment."""
    values: dict[str, str] = {}
    lines = _read_text(path, ".env file").splitlines()
    number = 0
    while number < len(lines):
        first = number
        line = lines[number].strip()
        number += 1
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, equals, rest = line.partition("=")
        key = key.strip()
        if not _ENV_KEY.fullmatch(key):
            raise InvalidInput(f"{path}: line {first + 1}", _excerpt(lines[first]), ENV_LINE_FORM)
        if not equals:  # a bare KEY takes its value from the environment
            continue
        rest = rest.strip()
        field = f"{path}: line {first + 1}"
        if rest[:1] in ("'", '"'):
            while rest.count(rest[0]) - rest.count("\\" + rest[0]) < 2 and number < len(lines):
                rest += "\n" + lines[number]
                number += 1
            values[key] = _quoted_value(rest, field, {**environ, **values})
        else:
            value = re.split(r"\s#", rest, maxsplit=1)[0].strip()
            values[key] = _Interpolation({**environ, **values}, field, value).run(value)[0]
    return values


def _quoted_value(text: str, field: str, lookup: Mapping[str, str]) -> str:
    quote = text[0]
    end = 1
    while end < len(text) and text[end] != quote:
        end += 2 if quote == '"' and text[end] == "\\" else 1
    if end >= len(text) or text[end + 1 :].strip()[:1] not in ("", "#"):
        raise InvalidInput(field, _excerpt(text), ENV_LINE_FORM)
    body = text[1:end]
    if quote == "'":
        return body
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    body = re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(0)), body)
    return _Interpolation(lookup, field, text).run(body)[0]


# --- ports ---------------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One item of a ports: list, while it is being read."""

    service: str
    field: str
    source: str
    shown: object
    interpolation: _Interpolation
    long: bool

    def bad(self, reason: str) -> InvalidInput:
        if not self.long and _shown(self.shown) != self.source:
            reason += f"; written {self.source}"
        if self.interpolation.blank:
            names = ", ".join(dict.fromkeys(self.interpolation.blank))
            reason += f"; {names} is unset or empty"
        if self.long:
            return InvalidInput(self.field, _excerpt(self.shown), f"{LONG_FORM} ({reason}), or {SHORT_FORM}")
        return InvalidInput(self.field, _excerpt(self.shown), f"{SHORT_FORM} ({reason})")

    def number(self, text: str, role: str) -> int:
        if not _DIGITS.fullmatch(text):
            raise self.bad(f"the {role} {_quoted(text)} is not a number" if text else f"the {role} is empty")
        if len(text.lstrip("0")) > 5:
            raise self.bad(f"the {role} {_clip(text)} is not from 1 to 65535")
        try:
            return _validate.port(text, self.field)
        except InvalidInput as e:
            raise self.bad(f"the {role} {_clip(text)} is not from 1 to 65535") from e

    def ports(self, text: str, role: str) -> list[int]:
        """A port, or a range ``8080-8081`` as its ports."""
        match = _RANGE.fullmatch(text)
        if not match:
            return [self.number(text, role)]
        low, high = self.number(match[1], role), self.number(match[2], role)
        if low > high:
            raise self.bad(f"the {role} range {_clip(text)} runs backwards")
        return list(range(low, high + 1))

    def protocol(self, text: str) -> str:
        if text.lower() not in _validate.PROTOCOLS:
            raise self.bad(f"the protocol {_quoted(text)} is not tcp or udp")
        return text.lower()

    def host_ip(self, text: str, version: int | None) -> str:
        try:
            address = ipaddress.ip_address(text)
        except ValueError as e:
            raise self.bad(f"the host address {_quoted(text)} is not an IP address") from e
        if version == 6 and address.version == 4:
            raise self.bad(f"only IPv6 addresses go in brackets; write {_clip(text)}:HOST:CONTAINER")
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
        raise entry.bad(f"unknown key {_quoted(unknown[0])}")
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


def _shown(value: object) -> str:
    """A value as the file wrote it, for messages: JSON-like, clipped."""
    if isinstance(value, str):
        return _clip(json.dumps(value[: ECHO_LIMIT + 1]))
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return _clip(_REPR.repr(value))


def _port_entry(
    raw: object, service: str, field: str, index: int, lookup: Mapping[str, str]
) -> list[PortMapping]:
    long = isinstance(raw, dict)
    if isinstance(raw, dict):
        source = ", ".join(f"{key}: {_shown(value)}" for key, value in raw.items())
    else:
        source = _shown(raw)
    shown = source if long else raw
    entry = _Entry(service, field, source, shown, _Interpolation(lookup, field, shown), long)
    if isinstance(raw, dict):
        return _long_syntax(entry, raw, index)
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise entry.bad(f"an entry is a string or a mapping, not a {type(raw).__name__}")
    return _short_syntax(entry, str(raw), index)


# --- merging -------------------------------------------------------------------------------------

# One file's ports: list of a service, each entry read: how it combines with earlier files.
_Ports = tuple[str, list[list[PortMapping]]]  # ("append" | "override" | "reset", entries)


def _service_ports(definition: dict[Any, Any], service: str, where: str, lookup: Mapping[str, str]) -> _Ports:
    raw = definition.get("ports")
    how = "override" if isinstance(raw, _Override) else "reset" if isinstance(raw, _Reset) else "append"
    if how == "reset":
        return how, []
    raw = _plain(raw)
    if raw is None:
        return how, []
    if not isinstance(raw, list):
        raise InvalidInput(f"{where}.ports", _excerpt(raw), f"a list of ports, each {SHORT_FORM}")
    return how, [_port_entry(item, service, f"{where}.ports[{i}]", i, lookup) for i, item in enumerate(raw)]


def _merge_file(
    merged: dict[str, list[list[PortMapping]]], doc: dict[Any, Any], label: str, lookup: Mapping[str, str]
) -> None:
    services = doc.get("services")
    if isinstance(services, _Override | _Reset):
        merged.clear()
    if isinstance(services, _Reset):
        return
    services = _plain(services)
    if services is None:
        return
    if not isinstance(services, dict):
        raise InvalidInput(
            f"{label}: services", _excerpt(services), "a mapping of service names to their definitions"
        )
    for key, value in services.items():
        if not isinstance(key, str) or not _SERVICE_NAME.fullmatch(key):
            raise InvalidInput(f"{label}: services", _Excerpt(key), SERVICE_NAME_FORM)
        name = key
        if isinstance(value, _Reset):
            merged.pop(name, None)
            continue
        definition = _plain(value)
        if definition is None:
            definition = {}
        if not isinstance(definition, dict):
            raise InvalidInput(
                f"{label}: services.{_clip(name)}",
                _excerpt(definition),
                "a mapping (the service's definition)",
            )
        how, entries = _service_ports(definition, name, f"{label}: services.{_clip(name)}", lookup)
        if isinstance(value, _Override) or how != "append" or name not in merged:
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
            raise InvalidInput("COMPOSE_PROJECT_NAME", _excerpt(given), PROJECT_NAME_FORM)
        return given
    source, raw = "project folder", os.path.basename(directory)
    for label, doc in docs:
        value = _plain(doc.get("name"))
        if value is not None:
            if not isinstance(value, str):
                raise InvalidInput(f"{label}: name", _excerpt(value), "a string (the project name)")
            source, raw = f"{label}: name", _Interpolation(lookup, f"{label}: name", value).run(value)[0]
    name = _normalized_name(raw)
    if not name:
        raise InvalidInput(source, _excerpt(raw), f"a project name with {PROJECT_NAME_FORM}")
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
    docs = [(str(path), _parse_yaml(_read_text(str(path), "Compose file"), str(path))) for path in files]
    paths = tuple(os.path.abspath(path) for path in files)
    directory = os.path.dirname(paths[0])
    environ = os.environ if environ is None else environ
    dotenv_path = env_file if env_file is not None else os.path.join(directory, ".env")
    dotenv = _read_dotenv(dotenv_path, environ) if env_file is not None or os.path.isfile(dotenv_path) else {}
    lookup = {**dotenv, **environ}
    merged: dict[str, list[list[PortMapping]]] = {}
    for label, doc in docs:
        _merge_file(merged, doc, label, lookup)
    services = {name: _numbered(name, entries) for name, entries in merged.items()}
    return ComposeProject(paths, _project_name(docs, directory, lookup), directory, services)


# --- override ------------------------------------------------------------------------------------


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
