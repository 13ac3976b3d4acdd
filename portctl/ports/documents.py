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
import errno
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

from portctl import _validate
from portctl.backends.file import DISK_ERRORS, fsync_folder, write_new_file
from portctl.errors import InvalidInput, OutputUnavailable
from portctl.ports.allocator import Allocation

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
    except RecursionError as e:
        raise InvalidInput(
            source, "JSON nested too deeply", "a port_config.json (a list of allocation objects)"
        ) from e
    except json.JSONDecodeError as e:
        raise InvalidInput(
            source, f"line {e.lineno} column {e.colno}", "valid JSON (a port_config.json)"
        ) from e
    except ValueError as e:  # an integer beyond Python's 4300-digit limit
        raise InvalidInput(
            source,
            "integer too long",
            "a port_config.json (ports of at most 5 digits)",
            problem="holds an integer of thousands of digits",
        ) from e
    if not isinstance(doc, dict) or not isinstance(doc.get("allocations"), list):
        raise InvalidInput(
            source,
            type(doc).__name__,
            'an object with an "allocations" list (portctl export writes one)',
            problem=f"holds a JSON {_json_kind(doc)}, not a port_config.json",
        )
    schema = doc.get("schema", EXPORT_SCHEMA)
    if not isinstance(schema, int) or schema > EXPORT_SCHEMA:
        raise InvalidInput(f"{source}: schema", schema, f"schema {EXPORT_SCHEMA} or older (upgrade portctl)")
    return [Allocation.from_dict(raw, f"allocations[{i}]") for i, raw in enumerate(doc["allocations"])]


def _json_kind(doc: object) -> str:
    """What a JSON document holds, in JSON's words."""
    if isinstance(doc, dict):
        return 'object without an "allocations" list'
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return kinds.get(type(doc), "null")


def _disk_fix(error: OSError) -> tuple[str, ...]:
    """What to do about a filesystem that refused a write, when it is not the default advice."""
    if error.errno == errno.EROFS:
        return ("the filesystem is mounted read-only: write elsewhere, or remount it read-write",)
    if error.errno == errno.EIO:
        return ("the disk reported an I/O error: check it, or write elsewhere",)
    return ()


def _regular_destination(path: str) -> str:
    """Where a write of ``path`` lands: the target of a symlink, which must be a regular file
    or not exist yet (replacing ``/dev/null`` or a pipe with a file would break what uses it)."""
    import stat

    real = os.path.realpath(path)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return real
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket"
        raise InvalidInput("output", path, f"a regular file to write ({real} is {kind})")
    return real


def write_atomically(path: str, text: str, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a part.

    A call that returns wrote every byte and (``durable``) fsynced the file and its folder;
    ``durable=False`` skips the fsyncs, for files that may be lost in a power cut (caches). On
    any failure the old file stays. A full, over-quota, read-only or failing filesystem raises
    :class:`~portctl.errors.OutputUnavailable`; other ``OSError`` (no such folder, permission
    denied) propagate, for the caller to name its parameter. Temp files of writers killed
    mid-write are removed (see :func:`_writer_is_dead`). A symlink is written through (its
    target is replaced); a folder, device, pipe or socket in the file's place is refused."""
    import secrets

    path = _regular_destination(path)

    folder = os.path.dirname(os.path.abspath(path))
    _remove_dead_temps(path)
    tmp = f"{path}.{_writer_id()}.{secrets.token_hex(4)}.tmp"
    try:
        write_new_file(tmp, text.encode(), mode, durable=durable)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in DISK_ERRORS:
            raise OutputUnavailable(path, e.strerror or str(e), *_disk_fix(e)) from e
        raise
    if durable:
        try:
            fsync_folder(folder)
        except OSError as e:
            raise OutputUnavailable(path, f"written, but syncing its folder failed ({e.strerror})") from e


# Temp files are named <path>.<pid>-<start>-<pidns>.<random>.tmp: who wrote them, to tell later.
_TEMP_TAIL = re.compile(r"\.(\d+)-(\d+)-(\d+)\.[0-9a-f]{8}\.tmp")


def _writer_id() -> str:
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}-{_pid_namespace()}"


def _start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _writer_is_dead(pid: int, start: int, namespace: int) -> bool:
    """Whether the writer that named a temp file has certainly exited.

    Pids are only comparable within one pid namespace, so a temp file from another (a
    container sharing the folder) is never judged. Within ours, the writer is dead when no
    process has its pid, or when the process that has it now started at another time (the pid
    was reused). A process we may not signal (EPERM) exists; without /proc (start time 0) only
    an absent pid proves death."""
    if namespace != _pid_namespace() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    now = _start_time(pid)
    return start != 0 and now is not None and now != start


def _remove_dead_temps(path: str) -> None:
    folder, name = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(folder)
    except OSError:
        return  # the write itself reports what is wrong with the folder
    for other in names:
        found = other.startswith(name) and _TEMP_TAIL.fullmatch(other[len(name) :])
        if found and _writer_is_dead(*(int(g) for g in found.groups())):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, other))
