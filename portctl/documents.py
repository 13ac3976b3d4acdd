"""Files portctl writes for other tools: ``.env.ports`` and ``port_config.json``.

``port_config.json`` (schema 1)::

    {
      "format": "portctl-ports",
      "schema": 1,
      "generated_at": "2026-11-27T12:00:00Z",
      "allocations": [
        {"service": "postgres", "environment": "production", "host": "web-1",
         "port": 5433, "protocol": "tcp", "type": "database",
         "allocated_at": "2026-11-27T11:58:02Z"}
      ]
    }

Allocations are sorted by host, environment, service, so the file diffs cleanly in review.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from portctl import _validate
from portctl.allocation import Allocation
from portctl.errors import InvalidInput

__all__ = ["env_name", "export_document", "parse_export", "render_env", "write_atomically"]

EXPORT_FORMAT = "portctl-ports"
EXPORT_SCHEMA = 1


env_name = _validate.port_variable


def render_env(allocations: Sequence[Allocation], environment: str, host: str) -> str:
    lines = [f"# portctl: {environment} ports on {host}"]
    lines += [f"{env_name(a.service)}={a.port}" for a in sorted(allocations, key=lambda a: a.service)]
    return "\n".join(lines) + "\n"


def export_document(allocations: Sequence[Allocation]) -> dict[str, Any]:
    ordered = sorted(allocations, key=lambda a: (a.host, a.environment, a.service))
    return {
        "format": EXPORT_FORMAT,
        "schema": EXPORT_SCHEMA,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "allocations": [a.to_dict() for a in ordered],
    }


def parse_export(text: str, source: str) -> list[Allocation]:
    """Read a ``port_config.json``; every record is validated before anything is used."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(
            source, f"line {e.lineno} column {e.colno}", "valid JSON (a port_config.json)"
        ) from e
    if not isinstance(doc, dict) or not isinstance(doc.get("allocations"), list):
        raise InvalidInput(source, type(doc).__name__, 'an object with an "allocations" list')
    schema = doc.get("schema", EXPORT_SCHEMA)
    if not isinstance(schema, int) or schema > EXPORT_SCHEMA:
        raise InvalidInput(f"{source}: schema", schema, f"schema {EXPORT_SCHEMA} or older (upgrade portctl)")
    return [Allocation.from_dict(raw, f"allocations[{i}]") for i, raw in enumerate(doc["allocations"])]


def write_atomically(path: str, text: str, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a part.
    ``durable=False`` skips the fsync, for files that may be lost in a power cut (caches)."""
    folder = os.path.dirname(os.path.abspath(path))
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
