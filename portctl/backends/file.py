"""The JSON-file store: the default, for one host, with no server.

On disk (``schema`` 1)::

    {"format": "portctl-store", "schema": 1, "revision": 7, "compacted": 0,
     "entries": {"allocations/web-1/production/postgres":
                   {"value": "{...}", "version": 7, "ttl": null, "expires": null}},
     "deleted": {"ports/web-1/tcp/5432": 6}}

* Every write holds an exclusive ``flock`` on ``<path>.lock`` (processes and threads alike),
  re-reads the file, checks every condition, and replaces the file atomically: a temp file in
  the same folder (``<path>.<pid>.<thread>.tmp``) holding every byte (``write(2)`` may write
  fewer than asked, as on a nearly full disk), fsync, ``os.replace``, fsync of the folder. A
  write that fails - disk full, read-only, I/O error - leaves the old file in place and raises
  :class:`~portctl.errors.StoreUnavailable`. The previous file is kept as ``<path>.bak`` (a
  hard link, no copy). Temp files of writers killed mid-write are removed by the next writer.
* ``revision`` counts writes; each key written takes the revision as its version; deletions
  leave a tombstone so :meth:`JsonFileStore.watch` can report them. Only the newest
  ``TOMBSTONES`` tombstones are kept; a watcher older than that gets ``reset=True``, like an
  etcd watch on a compacted revision.
* Readers take no lock (``os.replace`` is atomic) and re-parse only when the file's inode,
  mtime or size changed. A file that vanishes after this store object read it is an outage
  (:class:`~portctl.errors.StoreUnavailable`), not an empty registry; a new process that
  finds no file starts an empty store.
* A file that is empty, not JSON, not ours or from a newer schema is refused with
  :class:`~portctl.errors.StoreCorrupt` and never overwritten.
* New files are created ``0o644``: only the owner may write.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from portctl import _validate
from portctl.backends.base import (
    Capability,
    Change,
    ChangeBatch,
    Create,
    Delete,
    Entry,
    Expect,
    Operation,
    Put,
    Store,
    check_operations,
)
from portctl.errors import (
    InvalidInput,
    KeyExists,
    Kind,
    NotFound,
    StoreCorrupt,
    StoreTimeout,
    StoreUnavailable,
    VersionConflict,
)

FORMAT = "portctl-store"
SCHEMA = 1
TOMBSTONES = 1000
FILE_MODE = 0o644
LOCK_TIMEOUT = 10.0
POLL_INTERVAL = 0.02
# Errors of the filesystem rather than of the path: a write may succeed later, elsewhere.
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})
_TEMP_TAIL = re.compile(r"\.\d+\.\d+\.tmp")  # after the store's file name: .<pid>.<thread>.tmp

Doc = dict[str, Any]


def _empty_doc() -> Doc:
    return {
        "format": FORMAT,
        "schema": SCHEMA,
        "revision": 0,
        "compacted": 0,
        "entries": {},
        "deleted": {},
    }


@dataclass(frozen=True)
class _Stamp:
    inode: int
    mtime_ns: int
    size: int


class JsonFileStore(Store):
    scheme: ClassVar[str] = "file"
    capabilities: ClassVar[Capability] = Capability.CAS | Capability.TXN | Capability.WATCH | Capability.TTL

    def __init__(self, path: str, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.path = os.path.abspath(path)
        self.lock_path = self.path + ".lock"
        self.backup_path = self.path + ".bak"
        self.lock_timeout = lock_timeout
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder) and self.path != default_path():
            raise InvalidInput(
                "store",
                self.path,
                f"a path in an existing folder ({folder} does not exist: create it, or choose "
                "another path with --store or PORTCTL_STORE)",
            )
        kind = _kind_of(self.path)
        if kind is not None:
            raise InvalidInput(Kind("store"), self.path, f"a file path, not {kind}")
        self._mutex = threading.RLock()
        self._stamp: _Stamp | None = None
        self._doc: Doc = _empty_doc()
        self._bytes = b""
        self._keys: list[str] | None = None  # sorted keys of self._doc, built on demand
        self._entries: dict[str, tuple[int, Entry]] = {}
        self._swept = False  # temp files of dead writers removed (once per store object)

    @classmethod
    def from_url(cls, url: str) -> JsonFileStore:
        return cls(path_from_url(url))

    @property
    def url(self) -> str:
        return "file://" + self.path

    def describe(self) -> str:
        doc = self._read()
        return (
            f"JSON file {self.path} (schema {SCHEMA}, revision {doc['revision']}, {len(doc['entries'])} keys)"
        )

    # Reading ---------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        _validate.key(key)
        with self._mutex:
            raw = self._read()["entries"].get(key)
            if raw is None or _expired(raw, time.time()):
                return None
            return self._entry(key, raw)

    def list(self, prefix: str = "") -> list[Entry]:
        _validate.prefix(prefix)
        now = time.time()
        with self._mutex:
            entries = self._read()["entries"]
            if self._keys is None:
                self._keys = sorted(entries)
            keys = self._keys
            found = []
            for i in range(bisect.bisect_left(keys, prefix), len(keys)):
                key = keys[i]
                if not key.startswith(prefix):
                    break
                raw = entries[key]
                if not _expired(raw, now):
                    found.append(self._entry(key, raw))
            return found

    def _entry(self, key: str, raw: dict[str, Any]) -> Entry:
        """Entries are rebuilt only for keys whose version changed since the last read."""
        cached = self._entries.get(key)
        if cached is None or cached[0] != raw["version"]:
            cached = (raw["version"], _entry(key, raw))
            self._entries[key] = cached
        return cached[1]

    def position(self) -> str:
        return str(self._read()["revision"])

    def watch(self, prefix: str, position: str, timeout: float) -> ChangeBatch:
        _validate.prefix(prefix)
        since = _position(position)
        deadline = time.monotonic() + timeout
        while True:
            doc = self._read()
            if _has_expired(doc, prefix):
                # Purge, so the expiry shows as a delete; a reader that may not write (another
                # user's store) still watches, and sees the expiry when a writer purges.
                with contextlib.suppress(StoreUnavailable):
                    doc = self._write_locked([])
            batch = _changes_since(doc, prefix, since)
            if batch.changes or batch.reset or time.monotonic() >= deadline:
                return batch
            time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))

    # Writing ---------------------------------------------------------------------------

    def transact(self, operations: Sequence[Operation]) -> dict[str, Entry]:
        check_operations(operations)
        doc = self._write_locked(operations)
        return {
            op.key: _entry(op.key, doc["entries"][op.key])
            for op in operations
            if isinstance(op, (Create, Put))
        }

    def refresh(self, key: str) -> Entry:
        _validate.key(key)
        with self._locked():
            doc = self._read_for_write()
            raw = doc["entries"].get(key)
            now = time.time()
            if raw is None or _expired(raw, now):
                raise NotFound(f"key {key!r} does not exist or its TTL already expired")
            if raw.get("ttl"):
                new = dict(doc)
                new["entries"] = dict(doc["entries"])
                new["entries"][key] = {**raw, "expires": now + raw["ttl"]}
                self._replace(new)
                raw = new["entries"][key]
        return _entry(key, raw)

    def _write_locked(self, operations: Sequence[Operation]) -> Doc:
        with self._locked():
            doc = self._read_for_write()
            new = _apply(doc, operations, time.time())
            if new is not doc:
                self._replace(new)
            return new

    # File handling ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            _create_default_folder(self.path)
            fd = self._open_lock()
            try:
                self._flock(fd)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the lock

    def _open_lock(self) -> int:
        # O_NONBLOCK: a named pipe in the lock's place must not hang the open.
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.lock_path, flags, FILE_MODE)
        except OSError as e:
            kind = _kind_of(self.lock_path)
            raise (self._bad_lock(kind) if kind else _unwritable(self.path, e)) from e
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            os.close(fd)
            raise self._bad_lock(kind)
        return fd

    def _bad_lock(self, kind: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"lock file {self.lock_path} is {kind}, not a regular file, so store {self.path} "
            f"cannot be locked for writing; remove {self.lock_path} (portctl makes a new one) "
            "or choose another store path with --store or PORTCTL_STORE"
        )

    def _flock(self, fd: int) -> None:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreTimeout(
                        f"store {self.path} is locked by another process for over "
                        f"{self.lock_timeout:g}s ({self.lock_path}); retry, or find the holder "
                        f"with: fuser {self.lock_path}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.01)
            else:
                return

    def _read(self) -> Doc:
        with self._mutex:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                if self._doc["revision"] > 0:
                    # It was there when last read: a vanished file is an outage (an unmounted
                    # volume, a bad deploy), not an empty registry, until it is restored.
                    raise StoreUnavailable(
                        f"store {self.path} disappeared (it held revision {self._doc['revision']}); "
                        f"restore it (a copy may be {self.backup_path}), or start an empty store "
                        "by running portctl again"
                    ) from None
                self._set_doc(_empty_doc(), b"")
                self._stamp = None
                return self._doc
            except OSError as e:
                raise StoreUnavailable(f"cannot read store {self.path}: {e.strerror}") from e
            kind = _kind(st.st_mode)
            if kind is not None:  # reading a named pipe would hang
                raise StoreUnavailable(
                    f"store {self.path} is {kind}, not a regular file; move it aside, or choose "
                    "another path with --store or PORTCTL_STORE"
                )
            stamp = _Stamp(st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._parse()
                self._stamp = stamp
            return self._doc

    def _read_for_write(self) -> Doc:
        # Under the lock, trust only the bytes on disk: a stat stamp can repeat when an inode is
        # reused within one mtime tick. Comparing bytes still spares the parse.
        self._stamp = None
        return self._read()

    def _parse(self) -> Doc:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self._set_doc(_empty_doc(), b"")
            return self._doc
        except OSError as e:
            raise StoreUnavailable(f"cannot read store {self.path}: {e.strerror}") from e
        if data != self._bytes or not data:
            self._set_doc(parse_document(data, self.path, self._backup()), data)
        return self._doc

    def _set_doc(self, doc: Doc, data: bytes) -> None:
        if doc is not self._doc:
            self._keys = None
            if len(self._entries) > 2 * len(doc["entries"]) + 64:
                self._entries.clear()  # forget deleted keys now and then
        self._doc, self._bytes = doc, data

    def _backup(self) -> str | None:
        return self.backup_path if os.path.exists(self.backup_path) else None

    def _replace(self, doc: Doc) -> None:
        """Replace the file with ``doc``, under the lock. On any failure the old file stays."""
        data = json.dumps(doc, separators=(",", ":")).encode()
        tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            self._sweep_dead_temps()
            write_new_file(tmp, data, _mode_of(self.path))
            self._keep_backup()
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _unwritable(self.path, e) from e
        try:
            fsync_folder(os.path.dirname(self.path))
        except OSError as e:
            raise StoreUnavailable(
                f"store {self.path} was written, but syncing its folder failed ({e.strerror}): "
                "the write may not survive a power cut; check the disk"
            ) from e
        st = os.stat(self.path)
        self._stamp = _Stamp(st.st_ino, st.st_mtime_ns, st.st_size)
        self._set_doc(doc, data)

    def _keep_backup(self) -> None:
        if not os.path.exists(self.path):
            return
        kind = _kind_of(self.backup_path)
        if kind is not None:
            raise StoreUnavailable(
                f"backup {self.backup_path} is {kind}, not a regular file, so store {self.path} "
                f"was left as it was; move {self.backup_path} aside and retry"
            )
        link = self.backup_path + ".tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.link(self.path, link)
        os.replace(link, self.backup_path)

    def _sweep_dead_temps(self) -> None:
        """Remove the temp files of writers killed mid-write (once per store object: every
        one-shot command sweeps, a long-running agent at its first write).

        Which writers are dead is proven by the lock, not by pids: a writer creates its temp
        file only while it holds the lock, and renames or removes it before letting go; the
        kernel releases a killed writer's lock with its descriptors. We hold the lock, so no
        live writer is between creating and renaming a temp file: every temp file here is a
        dead writer's. Unlike a pid check, this holds for a pid reused since and for writers
        in other pid namespaces (containers sharing the folder)."""
        if self._swept:
            return
        folder, name = os.path.split(self.path)
        with contextlib.suppress(OSError):  # a folder we may write but not list: nothing to sweep
            with os.scandir(folder) as found:
                dead = [
                    e.path
                    for e in found
                    if e.name.startswith(name) and _TEMP_TAIL.fullmatch(e.name[len(name) :])
                ]
            for path in dead:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._swept = True


# Pure document logic, shared by reads and writes ---------------------------------------


def path_from_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
        raise InvalidInput(
            Kind("store"), url, "file:///absolute/path/store.json (or file:relative/path.json)"
        )
    return unquote(parts.path)


def parse_document(data: bytes, path: str, backup: str | None) -> Doc:
    if not data.strip():
        raise StoreCorrupt(path, "the file is empty (truncated write or disk full?)", backup)
    try:
        doc = json.loads(data)
    except RecursionError as e:
        raise StoreCorrupt(path, "the file nests JSON deeper than any portctl store does", backup) from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise StoreCorrupt(path, f"the file is not valid JSON{where}", backup) from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StoreCorrupt(path, f'the file is not a portctl store (no "format": "{FORMAT}")', backup)
    schema = doc.get("schema")
    if not isinstance(schema, int) or schema < 1:
        raise StoreCorrupt(path, f"schema {schema!r} is not a schema number", backup)
    if schema > SCHEMA:
        raise StoreCorrupt(
            path,
            f"it was written by a newer portctl (schema {schema}; this one reads up to {SCHEMA})",
            advice="upgrade portctl to use it",
        )
    _check_shape(doc, path, backup)
    return doc


def _check_shape(doc: Doc, path: str, backup: str | None) -> None:
    ints = all(isinstance(doc.get(k), int) for k in ("revision", "compacted"))
    maps = isinstance(doc.get("entries"), dict) and isinstance(doc.get("deleted"), dict)
    if not (ints and maps):
        raise StoreCorrupt(path, "the file lacks revision, compacted, entries or deleted", backup)
    for key, raw in doc["entries"].items():
        if not (
            isinstance(raw, dict)
            and isinstance(raw.get("value"), str)
            and isinstance(raw.get("version"), int)
        ):
            raise StoreCorrupt(path, f"entry {key!r} is malformed", backup)


def _expired(raw: dict[str, Any], now: float) -> bool:
    expires = raw.get("expires")
    return expires is not None and expires <= now


def _has_expired(doc: Doc, prefix: str) -> bool:
    now = time.time()
    return any(k.startswith(prefix) and _expired(r, now) for k, r in doc["entries"].items())


def _entry(key: str, raw: dict[str, Any]) -> Entry:
    return Entry(key, raw["value"], str(raw["version"]), raw.get("ttl"))


def _position(position: str) -> int:
    if not position.isdigit():
        raise InvalidInput("position", position, "a position returned by this file store")
    return int(position)


def _changes_since(doc: Doc, prefix: str, since: int) -> ChangeBatch:
    revision = doc["revision"]
    if since < doc["compacted"] or since > revision:
        return ChangeBatch(str(revision), (), reset=True)
    found: list[tuple[int, Change]] = []
    for key, raw in doc["entries"].items():
        if raw["version"] > since and key.startswith(prefix):
            found.append((raw["version"], Change("put", key, _entry(key, raw))))
    for key, rev in doc["deleted"].items():
        if rev > since and key.startswith(prefix) and key not in doc["entries"]:
            found.append((rev, Change("delete", key, None)))
    found.sort(key=lambda pair: (pair[0], pair[1].key))
    return ChangeBatch(str(revision), tuple(change for _, change in found))


def _apply(doc: Doc, operations: Sequence[Operation], now: float) -> Doc:
    """The document after ``operations``, or ``doc`` itself when nothing changes."""
    entries: dict[str, Any] = doc["entries"]
    live = {k: r for k, r in entries.items() if not _expired(r, now)}
    for op in operations:
        _check_condition(op, live.get(op.key))
    expired = entries.keys() - live.keys()
    writes = [op for op in operations if not isinstance(op, Expect)]
    if not writes and not expired:
        return doc
    revision = doc["revision"] + 1
    new_entries = dict(live)
    deleted = dict(doc["deleted"])
    for key in expired:
        deleted[key] = revision
    for op in writes:
        if isinstance(op, Delete):
            if new_entries.pop(op.key, None) is not None:
                deleted[op.key] = revision
        else:
            new_entries[op.key] = _raw(op, revision, now, live.get(op.key))
            deleted.pop(op.key, None)
    compacted = doc["compacted"]
    if len(deleted) > TOMBSTONES:
        ordered = sorted(deleted.items(), key=lambda kv: kv[1])
        cut = len(deleted) - TOMBSTONES
        compacted = max(compacted, ordered[cut - 1][1])
        deleted = dict(ordered[cut:])
    return {
        "format": FORMAT,
        "schema": SCHEMA,
        "revision": revision,
        "compacted": compacted,
        "entries": new_entries,
        "deleted": deleted,
    }


def _check_condition(op: Operation, current: dict[str, Any] | None) -> None:
    have = None if current is None else str(current["version"])
    if isinstance(op, Create) and have is not None:
        raise KeyExists(op.key)
    expected = None if isinstance(op, Create) else op.version
    conditional = isinstance(op, (Put, Expect)) or (isinstance(op, Delete) and expected is not None)
    if conditional and have != expected:
        raise VersionConflict(op.key)


def _raw(op: Create | Put, revision: int, now: float, current: dict[str, Any] | None) -> dict[str, Any]:
    if op.ttl is None and isinstance(op, Put) and op.keep_ttl and current is not None and current.get("ttl"):
        # A put without a TTL keeps the key's TTL and expiry, as etcd's ignore_lease does.
        return {"value": op.value, "version": revision, "ttl": current["ttl"], "expires": current["expires"]}
    expires = now + op.ttl if op.ttl else None
    return {"value": op.value, "version": revision, "ttl": op.ttl, "expires": expires}


def _mode_of(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o777 & ~0o022
    except FileNotFoundError:
        return FILE_MODE


def _kind(mode: int) -> str | None:
    """What a file of ``mode`` is, when it is not a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket"}
    return kinds.get(stat.S_IFMT(mode), "a device")


def _kind_of(path: str) -> str | None:
    """What is at ``path`` when it is neither a regular file nor absent."""
    try:
        return _kind(os.stat(path).st_mode)
    except OSError:
        return None


def _unwritable(path: str, e: OSError) -> StoreUnavailable:
    folder = os.path.dirname(path)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreUnavailable(
            f"cannot write store {path}: {e.strerror} in {folder}; it was left as it was; choose "
            "a writable path with --store or PORTCTL_STORE, or fix the folder's permissions"
        )
    if e.errno in DISK_ERRORS:
        return StoreUnavailable(
            f"cannot write store {path}: {e.strerror}; it was left as it was: free space in "
            f"{folder} and retry"
        )
    return StoreUnavailable(f"cannot write store {path}: {e.strerror}; it was left as it was")


# Durable writes, shared with the files portctl writes for other tools (portctl.ports.documents) --


def write_new_file(path: str, data: bytes, mode: int, *, durable: bool = True) -> None:
    """Create ``path``, which must not exist, holding every byte of ``data`` (fsynced if
    ``durable``). ``write(2)`` may write fewer bytes than asked - on a nearly full disk it
    writes what fits, and only the next call fails with ENOSPC - so it is called until all
    are written; any failure raises OSError and leaves a part-written ``path`` to remove."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            if written <= 0:  # never for a regular file; refuse to loop forever regardless
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            view = view[written:]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The default location: its folder is made by the first write, never by a read -------------


def default_path() -> str:
    """``/var/lib/portctl/store.json`` as root, else ``$XDG_STATE_HOME/portctl/store.json``
    (``~/.local/state/portctl/store.json``). Its folder may not exist yet."""
    if os.geteuid() == 0:
        return "/var/lib/portctl/store.json"
    state = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG spec: a relative value is ignored
        state = os.path.expanduser("~/.local/state")
    return os.path.join(os.path.abspath(state), "portctl", "store.json")


def _create_default_folder(path: str) -> None:
    """Create the default store's folder before its first write: a read-only command never
    needs it, so it works for a user whose home does not exist (``nobody``)."""
    folder = os.path.dirname(path)
    if os.path.isdir(folder) or path != default_path():
        return
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
    except OSError as e:
        also = "" if os.geteuid() == 0 else ", or set XDG_STATE_HOME to a writable folder"
        raise StoreUnavailable(
            f"cannot create the store folder {folder}: {e.strerror}; choose a writable path "
            f"with --store or PORTCTL_STORE{also}"
        ) from e
