"""The last known good snapshot on disk, for a resolver that starts while its store is down.

One file per store, environment and host (``discovery-<hash>.json`` in ``$XDG_CACHE_HOME/portctl``
or ``~/.cache/portctl``), mode 0600, written atomically::

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from portctl.backends.base import Entry
from portctl.documents import write_atomically

FORMAT = "portctl-discovery-cache"
SCHEMA = 1
FILE_MODE = 0o600
FOLDER_MODE = 0o700


@dataclass(frozen=True)
class Saved:
    entries: tuple[Entry, ...]
    saved_at: float


def default_path(store_url: str, environment: str, host: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    digest = hashlib.sha256(f"{store_url}\n{environment}\n{host}".encode()).hexdigest()[:12]
    return os.path.join(base, "portctl", f"discovery-{digest}.json")


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
    except OSError:
        return False
    return True


def load(path: str, identity: dict[str, str]) -> Saved | None:
    """The snapshot saved for this store, environment and host; None if absent or unusable."""
    with contextlib.suppress(OSError, ValueError):
        with open(path, "rb") as f:
            doc = json.loads(f.read())
        if _matches(doc, identity):
            entries = tuple(
                Entry(str(key), str(raw["value"]), str(raw["version"])) for key, raw in doc["entries"].items()
            )
            return Saved(entries, float(doc["saved_at"]))
    return None


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
