"""The click exception the CLI turns into one line, wherever this typer keeps click (typer
0.28 vendors it; older releases use the ``click`` package): the base of ``typer.BadParameter``."""

from __future__ import annotations

import importlib
from typing import Any

import typer

__all__ = ["UsageError", "current_context", "is_help_request"]

UsageError: type[Any] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def is_help_request(error: BaseException) -> bool:
    """``portctl`` alone, or a group without its command: click shows the help for it."""
    return type(error).__name__ == "NoArgsIsHelpError"


def current_context() -> Any:
    """The click context of the command being run, or None outside one."""
    globals_module = importlib.import_module(UsageError.__module__.rpartition(".")[0] + ".globals")
    return globals_module.get_current_context(silent=True)
