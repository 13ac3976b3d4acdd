"""The YAML reader for Compose files: safe, bounded, and reading YAML as Compose does.

PyYAML's SafeLoader builds no objects, but it still reads 8080:80 as a base-60 integer, keeps
the last of two equal keys, and expands aliases without bound. This loader reads YAML 1.2
integers, refuses duplicate keys, knows the ``!override`` / ``!reset`` tags of Compose >= 2.24,
and stops at the bounds below. Real files are far inside them; a file built to exhaust a YAML
reader (aliases expanding 9^10-fold, 20,000 nested lists) is not.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from portctl.compose._excerpt import clip, quoted
from portctl.errors import InvalidInput

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "Override",
    "Reset",
    "parse_yaml",
    "plain",
    "read_text",
]

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64  # nesting levels of YAML collections
MAX_NODES = 50_000  # YAML nodes, counting each alias as the whole node it stands for


@dataclass(frozen=True)
class Override:
    """A value tagged ``!override``: it replaces what earlier files said."""

    value: Any


@dataclass(frozen=True)
class Reset:
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
                f"the key {quoted(key.value)} is given twice (first at line {first.start_mark.line + 1})",
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


def _construct_override(loader: _Loader, node: yaml.Node) -> Override:
    return Override(_untagged(loader, node))


def _construct_reset(loader: _Loader, node: yaml.Node) -> Reset:
    return Reset(_untagged(loader, node))


_Loader.add_constructor("!override", _construct_override)
_Loader.add_constructor("!reset", _construct_reset)
_Loader.add_constructor(_INT_TAG, _Loader.construct_yaml_int)


def plain(value: Any) -> Any:
    return value.value if isinstance(value, Override | Reset) else value


def read_text(path: str, what: str) -> str:
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


def parse_yaml(text: str, label: str) -> dict[Any, Any]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_graph(node)
        doc = plain(loader.construct_document(node)) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "somewhere"
        expected = e.expected if isinstance(e, _Refused) else "valid YAML (a Compose file)"
        raise InvalidInput(label, f"{where}: {clip(str(e.problem or e.context))}", expected) from e
    except yaml.YAMLError as e:
        raise InvalidInput(label, clip(str(e)), "valid YAML (a Compose file)") from e
    finally:
        loader.dispose()
    if not isinstance(doc, dict):
        shown = "empty" if doc is None else f"a {type(doc).__name__}"
        raise InvalidInput(label, shown, "a mapping at the top level (services:, name:, ...)")
    return doc
