"""The last known good snapshot on disk, for a resolver that starts while its store is down.

One file per store, environment and host (``discovery-<hash>.json`` in ``$XDG_CACHE_HOME/portctl``
or ``~/.cache/portctl``), mode 0600, written atomically by resolvers that follow the store (a
one-shot lookup only reads it). A relative ``XDG_CACHE_HOME`` is ignored, as the XDG spec says,
and a home folder that does not exist is not created: then no cache is kept. Files in the
default folder not written for ``PRUNE_AFTER`` (a week: far past any sensible ``max_stale``) are
removed when a resolver saves its own. The cache is a convenience: a file that cannot be written
or read is no error, only no last known good answer::

    {"format": "portctl-discovery-cache", "schema": 1, "store": "file:///...",
     "environment": "production", "host": "web-1", "saved_at": 1767225600.0,
     "entries": {"registry/production/api/api-web-1-8000/entry": {"value": "{...}", "version": "7"}}}

The raw keys are kept rather than the answers, so a resolver that loads them applies its own
environment (``SERVICE_HOST``, ``PORTCTL_<NAME>_URL``) exactly as it does to a live read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from portctl.backends.base import Entry
from portctl.errors import InvalidInput, OutputUnavailable
from portctl.ports.documents import write_atomically

FORMAT = "portctl-discovery-cache"
SCHEMA = 1
FILE_MODE = 0o600
FOLDER_MODE = 0o700
PRUNE_AFTER = 7 * 86400.0
_NAME = re.compile(r"discovery-[0-9a-f]{12}\.json")


@dataclass(frozen=True)
class Saved:
    entries: tuple[Entry, ...]
    saved_at: float


def default_folder() -> str | None:
    """``$XDG_CACHE_HOME/portctl``, else ``~/.cache/portctl``; None when neither is usable."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "portctl")
    home = os.path.expanduser("~")
    if os.path.isabs(home) and os.path.isdir(home):
        return os.path.join(home, ".cache", "portctl")
    return None


def default_path(store_url: str, environment: str, host: str) -> str | None:
    folder = default_folder()
    if folder is None:
        return None
    digest = hashlib.sha256(f"{store_url}\n{environment}\n{host}".encode()).hexdigest()[:12]
    return os.path.join(folder, f"discovery-{digest}.json")


def prune(folder: str, now: float | None = None) -> None:
    """Remove the cache files in ``folder`` not written for ``PRUNE_AFTER`` seconds: of stores
    or environments no resolver has used for that long (a live one re-saves at least every
    minute). Other files are left alone."""
    cutoff = (time.time() if now is None else now) - PRUNE_AFTER
    with contextlib.suppress(OSError), os.scandir(folder) as found:
        old = [e.path for e in found if _NAME.fullmatch(e.name) and e.stat().st_mtime < cutoff]
    for path in old:
        with contextlib.suppress(OSError):
            os.unlink(path)


def save(path: str, identity: dict[str, str], entries: Iterable[Entry], saved_at: float) -> bool:
    """Write the snapshot; False if the file cannot be written (the cache is a convenience:
    a read-only home must not stop discovery)."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "schema": SCHEMA,
        **identity,
        "saved_at": saved_at,
        "entries": {e.key: {"value": e.value, "version": e.version} for e in entries},
    }
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=FOLDER_MODE, exist_ok=True)
        # No fsync: a cache lost in a power cut is unreadable or old, and load() then ignores
        # it or serves it marked stale, both of which are right for a cache.
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        write_atomically(path, text, mode=FILE_MODE, durable=False)
    except (OSError, OutputUnavailable, InvalidInput):  # InvalidInput: not a regular file
        return False
    return True


def load(path: str, identity: dict[str, str]) -> Saved | None:
    """The snapshot saved for this store, environment and host; None if absent or unusable."""
    with contextlib.suppress(OSError, ValueError, RecursionError):  # RecursionError: nested too deep
        doc = json.loads(_read_regular(path))
        if _matches(doc, identity):
            entries = tuple(
                Entry(str(key), str(raw["value"]), str(raw["version"])) for key, raw in doc["entries"].items()
            )
            return Saved(entries, float(doc["saved_at"]))
    return None


def _read_regular(path: str) -> bytes:
    """The bytes of ``path`` if it is a regular file (a named pipe would hang the read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read()


def _matches(doc: object, identity: dict[str, str]) -> bool:
    return (
        isinstance(doc, dict)
        and doc.get("format") == FORMAT
        and doc.get("schema") == SCHEMA
        and all(doc.get(k) == v for k, v in identity.items())
        and isinstance(doc.get("saved_at"), (int, float))
        and isinstance(doc.get("entries"), dict)
        and all(_is_entry(raw) for raw in doc["entries"].values())
    )


def _is_entry(raw: object) -> bool:
    return isinstance(raw, dict) and "value" in raw and "version" in raw
