"""What every command shares: the common options, error handling, and the opened store."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from portctl.cli._output import GLOBAL, InputProblem, fail, note
from portctl.cli._params import Exit, Option
from portctl.errors import InvalidInput, PortctlError

if TYPE_CHECKING:  # the library is imported by the commands that run it
    from portctl.backends.base import Store
    from portctl.compose.project import ComposeProject
    from portctl.config.settings import Settings, StoreChoice
    from portctl.host.containers import DockerScan
    from portctl.ports.allocator import PortAllocator

StoreOption = Annotated[
    str | None,
    Option(
        "--store",
        metavar="URL",
        help="Store URL (file:///path.json or a path, etcd://..., consul://...). Default: "
        "$PORTCTL_STORE, then the config file's store, then the default JSON file.",
        show_default=False,
    ),
]
AddressOption = Annotated[
    str | None,
    Option("--address", metavar="A", help="Where it answers (default 127.0.0.1).", show_default=False),
]
JsonOption = Annotated[bool, Option("--json", help="Print a JSON envelope for scripts.")]
EnvOption = Annotated[
    str | None,
    Option(
        "--env",
        "-e",
        envvar="PORTCTL_ENV",
        metavar="ENV",
        help="Environment: production, development, staging or one from the config.",
        show_default=False,
    ),
]


ComposeFilesOption = Annotated[
    list[str] | None,
    Option(
        "--file",
        "-f",
        metavar="FILE",
        help="A compose file (repeatable, merged in order like docker compose -f).",
        show_default=False,
    ),
]


def load_project(files: list[str] | None) -> ComposeProject | None:
    """The compose project of ``-f`` files, or None without any."""
    return require_project(files) if files else None


def require_project(files: list[str] | None) -> ComposeProject:
    if not files:
        raise InvalidInput("-f", None, "one or more compose files, e.g. -f docker-compose.production.yml")
    from portctl.compose.project import load_compose

    return load_compose(files)


@dataclass
class Opened:
    settings: Settings
    choice: StoreChoice
    store: Store

    def allocator(self, docker: DockerScan | None = None) -> PortAllocator:
        """An allocator that also refuses ports containers publish. Docker is asked (and its
        client imported) only when a candidate port passes the bind test."""
        checker: list[Callable[[int, str], str | None]] = []

        def published(port: int, protocol: str) -> str | None:
            if not checker:
                from portctl.host.containers import publisher

                checker.append(publisher(docker))
            return checker[0](port, protocol)

        from portctl.ports.allocator import PortAllocator

        return PortAllocator(self.store, self.settings, published=published)


def confirm(yes: bool, question: str, declined: str = "nothing was changed") -> None:
    """Go ahead with --yes, or when a person on a terminal says yes; a 'no' changes nothing,
    says so, and exits 1."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise InputProblem("--yes", None, "there is no terminal to confirm on: add --yes to go ahead")
    import typer  # only to ask a person

    if not typer.confirm(question, default=False, err=True):
        note(f"not confirmed: {declined}")
        raise Exit(1)


@contextlib.contextmanager
def handled(as_json: bool) -> Iterator[None]:
    """Turn a PortctlError into its message and exit code; let the command's own exits through."""
    try:
        yield
    except PortctlError as error:
        fail(as_json, error)


def store_flag(flag: str | None) -> str | None:
    """The command's --store, else the one given before the command."""
    return flag or GLOBAL.store


@contextlib.contextmanager
def opened(flag: str | None) -> Iterator[Opened]:
    from portctl.backends import open_store
    from portctl.config.settings import load_settings, resolve_store

    settings = load_settings()
    choice = resolve_store(store_flag(flag), settings)
    store = open_store(choice.url)
    try:
        yield Opened(settings, choice, store)
    finally:
        store.close()
