"""How a message quotes a value from a Compose or .env file: short, and never rendered whole.

A hostile file can hold a value of megabytes or a structure nested thousands deep; messages
quote at most :data:`ECHO_LIMIT` characters of it, built without rendering the rest.
"""

from __future__ import annotations

import json
import reprlib

__all__ = ["ECHO_LIMIT", "Excerpt", "as_written", "clip", "excerpt", "quoted"]

ECHO_LIMIT = 80  # characters of a file's value quoted in a message


class Excerpt:
    """A value from a file as a message quotes it: at most :data:`ECHO_LIMIT` characters,
    built without rendering the whole value."""

    def __init__(self, value: object) -> None:
        self.text = "null" if value is None else clip(REPR.repr(value))

    def __repr__(self) -> str:
        return self.text


REPR = reprlib.Repr()
REPR.maxlevel, REPR.maxstring, REPR.maxother, REPR.maxlong = 2, ECHO_LIMIT, ECHO_LIMIT, ECHO_LIMIT
REPR.maxlist = REPR.maxtuple = REPR.maxdict = REPR.maxset = 4


def clip(text: str) -> str:
    return text if len(text) <= ECHO_LIMIT else text[: ECHO_LIMIT - 1] + "…"


def quoted(text: str) -> str:
    """``text`` quoted for a message, clipped."""
    return clip(repr(text[: ECHO_LIMIT + 1]))


def excerpt(value: object) -> object:
    """``value`` for InvalidInput: None stays None ("missing"), anything else is clipped."""
    return None if value is None else Excerpt(value)


def as_written(value: object) -> str:
    """A value as the file wrote it, for messages: JSON-like, clipped."""
    if isinstance(value, str):
        return clip(json.dumps(value[: ECHO_LIMIT + 1]))
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return clip(REPR.repr(value))
