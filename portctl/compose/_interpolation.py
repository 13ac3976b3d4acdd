"""Compose's variable interpolation, and the project's ``.env`` file it reads variables from.

``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
``${VAR:+replacement}`` (and their forms without ``:``), nested up to
:data:`MAX_INTERPOLATION_DEPTH` levels; ``$$`` is a literal ``$``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

from portctl.compose._excerpt import clip, excerpt
from portctl.compose._yaml import read_text
from portctl.errors import InvalidInput

__all__ = ["ENV_LINE_FORM", "INTERPOLATION_FORM", "MAX_INTERPOLATION_DEPTH", "Interpolation", "read_dotenv"]

INTERPOLATION_FORM = (
    "$VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, "
    "${VAR:+replacement}, ${VAR+replacement}, or $$ for a literal $"
)
ENV_LINE_FORM = "KEY=VALUE lines (optionally 'export KEY=VALUE', quoted values, # comments)"
MAX_INTERPOLATION_DEPTH = 16  # ${A:-${B:-...}} levels
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


@dataclass
class Interpolation:
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
                excerpt(self.raw),
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
        return InvalidInput(self.field, excerpt(self.raw), INTERPOLATION_FORM)

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
        message = clip(self.run(argument)[0]) or "required variable"
        raise InvalidInput(self.field, excerpt(self.raw), f"{name} to be {condition} ({message})")


# The .env file ---------------------------------------------------------------------------------


def read_dotenv(path: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``KEY=VALUE`` lines; values may be quoted and refer to earlier keys or the environment."""
    values: dict[str, str] = {}
    lines = read_text(path, ".env file").splitlines()
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
            raise InvalidInput(f"{path}: line {first + 1}", excerpt(lines[first]), ENV_LINE_FORM)
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
            values[key] = Interpolation({**environ, **values}, field, value).run(value)[0]
    return values


def _quoted_value(text: str, field: str, lookup: Mapping[str, str]) -> str:
    quote = text[0]
    end = 1
    while end < len(text) and text[end] != quote:
        end += 2 if quote == '"' and text[end] == "\\" else 1
    if end >= len(text) or text[end + 1 :].strip()[:1] not in ("", "#"):
        raise InvalidInput(field, excerpt(text), ENV_LINE_FORM)
    body = text[1:end]
    if quote == "'":
        return body
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    body = re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(0)), body)
    return Interpolation(lookup, field, text).run(body)[0]
