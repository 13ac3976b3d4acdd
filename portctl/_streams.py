"""What a command does when its reader goes away (``portctl status | head -1``)."""

from __future__ import annotations

import os
import sys

__all__ = ["reader_gone"]


def reader_gone() -> int:
    """Exit 1 without a word, as typer does: stdout is pointed at /dev/null, so the flush at exit
    has nowhere to fail (the way Python's documentation handles a broken pipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1
