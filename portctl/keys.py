"""The store's key layout: every key portctl writes is built and parsed here, nowhere else."""

from __future__ import annotations

import re

# Blue-green live pointers

BLUEGREEN_PREFIX = "bluegreen/"
_POINTER_KEY = re.compile(r"^bluegreen/([^/]+)/([^/]+)/live$")


def pointer_key(environment: str, service: str) -> str:
    """``bluegreen/<environment>/<service>/live``: the one key a cutover compares and sets."""
    return f"{BLUEGREEN_PREFIX}{environment}/{service}/live"


def pointer_prefix(environment: str) -> str:
    """The prefix under which every live pointer of ``environment`` lives."""
    return f"{BLUEGREEN_PREFIX}{environment}/"


def parse_pointer_key(key: str) -> tuple[str, str] | None:
    """``(environment, service)`` of a live pointer's key; None for any other key."""
    match = _POINTER_KEY.match(key)
    return (match.group(1), match.group(2)) if match else None
