"""Which Compose files a command reads when it is given no ``-f``: the lookup Compose does.

As ``docker compose`` (compose-go's ``WithConfigFileEnv`` then ``WithDefaultConfigPath``):

1. ``COMPOSE_FILE`` from the environment, else from the ``.env`` file of the folder: its paths,
   split on ``COMPOSE_PATH_SEPARATOR`` (default ``:``, ``;`` on Windows), relative to the folder;
2. else, in the folder and then in each parent folder until one has it, the first of
   ``compose.yaml``, ``compose.yml``, ``docker-compose.yml``, ``docker-compose.yaml``, followed by
   the first override file beside it (``compose.override.yml``, ``compose.override.yaml``,
   ``docker-compose.override.yml``, ``docker-compose.override.yaml``) whatever the base's name.

An override is read by Compose only in the second case: ``docker compose -f FILE`` reads FILE
alone, which is why ``portctl deploy`` prints the whole command it ran.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from portctl.errors import InvalidInput

__all__ = ["DEFAULT_FILES", "OVERRIDE_FILES", "ComposeFiles", "find_compose_files"]

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
OVERRIDE_FILES = (
    "compose.override.yml",
    "compose.override.yaml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
)


@dataclass(frozen=True)
class ComposeFiles:
    files: tuple[str, ...]  # absolute paths, in the order Compose merges them
    source: str  # why these: "COMPOSE_FILE", "COMPOSE_FILE in /app/.env", "default names in /app"
    override: str | None = None  # the default override file among ``files``, if one was found


def find_compose_files(
    directory: str | None = None, environ: Mapping[str, str] | None = None
) -> ComposeFiles:
    """The files ``docker compose`` run in ``directory`` (default: the current one) would read.

    Raises :class:`~portctl.errors.InvalidInput` (field ``-f``) when there are none."""
    directory = os.path.abspath(directory or os.getcwd())
    environ = os.environ if environ is None else environ
    dotenv = os.path.join(directory, ".env")
    settings = _dotenv_settings(dotenv)
    if environ.get("COMPOSE_FILE"):
        return _from_variable(environ["COMPOSE_FILE"], directory, {**settings, **environ}, "COMPOSE_FILE")
    if settings.get("COMPOSE_FILE"):
        merged = {**settings, **environ}
        return _from_variable(settings["COMPOSE_FILE"], directory, merged, f"COMPOSE_FILE in {dotenv}")
    return _by_default_names(directory)


def _from_variable(value: str, directory: str, settings: Mapping[str, str], source: str) -> ComposeFiles:
    separator = settings.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
    paths = [os.path.join(directory, p) for p in value.split(separator) if p]
    return ComposeFiles(tuple(os.path.normpath(p) for p in paths), source)


def _by_default_names(start: str) -> ComposeFiles:
    folder = start
    while True:
        base = _first(folder, DEFAULT_FILES)
        if base is not None:
            override = _first(folder, OVERRIDE_FILES)
            files = (base,) if override is None else (base, override)
            return ComposeFiles(files, f"default names in {folder}", override)
        parent = os.path.dirname(folder)
        if parent == folder:
            raise InvalidInput(
                "-f",
                None,
                f"a Compose file: none of {', '.join(DEFAULT_FILES)} is in {start} or a parent "
                "folder, and COMPOSE_FILE is not set; name one with -f FILE",
            )
        folder = parent


def _first(folder: str, names: tuple[str, ...]) -> str | None:
    return next((os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))), None)


def _dotenv_settings(path: str) -> dict[str, str]:
    """The ``COMPOSE_*`` lines of a ``.env`` file (unquoted); {} when there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    found = {}
    for line in lines:
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and key.strip().startswith("COMPOSE_"):
            found[key.strip()] = _unquoted(value.strip())
    return found


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value.split(" #", 1)[0].strip()
