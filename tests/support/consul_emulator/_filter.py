"""Consul's ``?filter=`` expression language (go-bexpr), compiled to a predicate over answers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from ._state import ConsulError

_FILTER_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(`[^`]*`)|(==|!=|\(|\))|([^\s()"`=!]+))')
Predicate = Callable[[Any], bool]


def compile_filter(text: str) -> Predicate:
    """A predicate for Consul's ``?filter=`` expression language (go-bexpr): selectors such as
    ``Service.Tags`` or ``Meta.env``; ``==``, ``!=``, ``in``, ``not in``, ``contains``,
    ``matches``, ``is empty``, ``is not empty``; ``and``, ``or``, ``not`` and parentheses."""
    try:
        parser = _FilterParser(_filter_tokens(text))
        predicate = parser.either()
        if parser.tokens:
            raise ValueError(f"unexpected {parser.tokens[0][1]!r}")
    except ValueError as e:
        raise ConsulError(400, f"Failed to create boolean expression evaluator: {e}") from e
    return predicate


def _filter_tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while text[position:].strip():
        match = _FILTER_TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"invalid character at {position}")
        quoted, raw, punct, word = match.groups()
        if quoted is not None:
            tokens.append(("value", json.loads(quoted)))
        elif raw is not None:
            tokens.append(("value", raw[1:-1]))
        else:
            tokens.append(("punct", punct) if punct else ("word", word))
        position = match.end()
    return tokens


class _FilterParser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens

    def take(self, *words: str) -> bool:
        if self.tokens and self.tokens[0][0] != "value" and self.tokens[0][1] in words:
            self.tokens.pop(0)
            return True
        return False

    def next(self, kind: str) -> str:
        if not self.tokens or self.tokens[0][0] != kind:
            found = self.tokens[0][1] if self.tokens else "the end"
            raise ValueError(f"expected a {kind}, found {found!r}")
        return self.tokens.pop(0)[1]

    def either(self) -> Predicate:
        left = self.both()
        while self.take("or"):
            right, first = self.both(), left
            left = lambda item, a=first, b=right: a(item) or b(item)  # noqa: E731
        return left

    def both(self) -> Predicate:
        left = self.unary()
        while self.take("and"):
            right, first = self.unary(), left
            left = lambda item, a=first, b=right: a(item) and b(item)  # noqa: E731
        return left

    def unary(self) -> Predicate:
        if self.take("not"):
            inner = self.unary()
            return lambda item: not inner(item)
        if self.take("("):
            inner = self.either()
            if not self.take(")"):
                raise ValueError("missing ')'")
            return inner
        if self.tokens and self.tokens[0][0] == "value":
            value = self.next("value")
            negate = self.take("not")
            if not self.take("in"):
                raise ValueError("expected 'in' after a value")
            return _negated(negate, _matcher("contains", _selector(self.next("word")), value))
        return self.match(_selector(self.next("word")))

    def match(self, select: Callable[[Any], Any]) -> Predicate:
        if self.take("is"):
            negate = self.take("not")
            if not self.take("empty"):
                raise ValueError("expected 'empty'")
            return _negated(negate, lambda item: not select(item))
        if self.tokens and self.tokens[0] in (("punct", "=="), ("punct", "!=")):
            negate = self.tokens.pop(0)[1] == "!="
            return _negated(negate, _matcher("==", select, self.literal()))
        negate = self.take("not")
        for op in ("contains", "matches"):
            if self.take(op):
                return _negated(negate, _matcher(op, select, self.literal()))
        raise ValueError("expected an operator (==, !=, contains, matches, in, is empty)")

    def literal(self) -> str:
        if self.tokens and self.tokens[0][0] in ("value", "word"):
            return self.tokens.pop(0)[1]
        raise ValueError("expected a value")


def _negated(negate: bool, predicate: Predicate) -> Predicate:
    return (lambda item: not predicate(item)) if negate else predicate


def _selector(path: str) -> Callable[[Any], Any]:
    parts = path.split(".")

    def select(item: Any) -> Any:
        for part in parts:
            item = item.get(part) if isinstance(item, dict) else None
        return item

    return select


def _matcher(op: str, select: Callable[[Any], Any], value: str) -> Predicate:
    def test(item: Any) -> bool:
        found = select(item)
        if op == "contains":
            return value in found if isinstance(found, (list, dict, str)) else False
        if op == "matches":
            return isinstance(found, str) and re.search(value, found) is not None
        if isinstance(found, bool):
            return str(found).lower() == value.lower()
        return str("" if found is None else found) == value

    return test
