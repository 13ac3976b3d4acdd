"""The backend-neutral store interface.

A store is a small key/value registry with the operations every engine portctl supports can
do atomically: the JSON file (lock + atomic replace), etcd (txn on revisions) and Consul (KV
``cas`` and ``/v1/txn``). Engine details - Consul's ModifyIndex and sessions, etcd's revisions
and leases - stay inside each store: the interface speaks only of

* an opaque **version** token per entry (changes on every write of that key),
* **conditional operations** (create-if-absent, compare-and-set, delete-if-version) that may be
  grouped into one all-or-nothing :meth:`Store.transact`,
* a **TTL** per entry, kept alive with :meth:`Store.refresh`,
* a **change feed**: :meth:`Store.watch` from an opaque position; a position the store can no
  longer serve (compacted history, an index that went backwards) comes back as ``reset=True``,
  and the reader re-reads with :meth:`Store.list`.

What a store can do is declared, as :class:`Capability` flags, and checked when it is opened.
One of them is about meaning, not mechanics: ``RUNS_CHECKS``. A store with it (Consul) runs the
registered health checks itself: an instance's health key is derived from the checks it runs
(never stored), and writing a health key records a check result, so what is read back is the
store's own verdict. The registry contract (``portctl.testing``), the agent and ``migrate``
ask this flag; no code above the stores tests key suffixes or store classes to find out.

Keys (built and parsed only in :mod:`portctl.keys`) are relative, '/'-separated and validated (no '..', no empty segments), so a store that
lives under a key prefix can never be escaped.
"""

from __future__ import annotations

import abc
import builtins
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from portctl import _validate
from portctl.errors import CapabilityMissing, InvalidInput

__all__ = [
    "Capability",
    "Change",
    "ChangeBatch",
    "Create",
    "Delete",
    "Entry",
    "Expect",
    "Operation",
    "Put",
    "Store",
]


class Capability(enum.Flag):
    """What a store can do; declared by each store class, checked when it is opened."""

    NONE = 0
    CAS = enum.auto()  # conditional writes on a version token
    TXN = enum.auto()  # several conditional operations as one atomic unit
    WATCH = enum.auto()  # a change feed from a position
    TTL = enum.auto()  # entries that vanish unless refreshed
    MULTI_HOST = enum.auto()  # one registry shared by many hosts
    RUNS_CHECKS = enum.auto()  # the store runs registered checks itself: health is derived from them, a health write is a check result

    def names(self) -> list[str]:
        return [c.name.lower().replace("_", "-") for c in Capability if c and c in self and c.name]


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    version: str
    ttl: float | None = None


@dataclass(frozen=True)
class Change:
    kind: Literal["put", "delete"]
    key: str
    entry: Entry | None  # None for a delete


@dataclass(frozen=True)
class ChangeBatch:
    position: str
    changes: tuple[Change, ...] = ()
    reset: bool = False  # the position was too old: re-read everything with list()


@dataclass(frozen=True)
class Create:
    """Write ``value`` at ``key`` only if the key is absent."""

    key: str
    value: str
    ttl: float | None = None


@dataclass(frozen=True)
class Put:
    """Write ``value`` at ``key`` only if its version is still ``version`` (compare-and-set).

    With ``ttl`` the key gets a new TTL from now. Without, it keeps the TTL it had (if any)
    and that TTL's deadline - a value update is not a keep-alive - unless ``keep_ttl`` is
    False: then the key no longer expires."""

    key: str
    value: str
    version: str
    ttl: float | None = None
    keep_ttl: bool = True


@dataclass(frozen=True)
class Delete:
    """Remove ``key``; with a version, only if it still has that version."""

    key: str
    version: str | None = None


@dataclass(frozen=True)
class Expect:
    """Write nothing; fail the transaction unless ``key`` has ``version`` (None: is absent)."""

    key: str
    version: str | None


Operation = Create | Put | Delete | Expect


class Store(abc.ABC):
    """A registry engine. Subclasses declare ``capabilities`` and ``scheme``."""

    scheme: ClassVar[str]
    capabilities: ClassVar[Capability]

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str) -> Store:
        """Open the store a URL names (``file:///path``, ``etcd://h:2379``, ...)."""

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The URL this store was opened with, credentials removed."""

    @abc.abstractmethod
    def get(self, key: str) -> Entry | None:
        """The entry at ``key`` with its version, or None."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[Entry]:
        """Every live entry whose key starts with ``prefix``, sorted by key."""

    @abc.abstractmethod
    def transact(self, operations: Sequence[Operation]) -> dict[str, Entry]:
        """Apply every operation or none.

        Returns the new entries written, by key. Raises :class:`~portctl.errors.KeyExists` when a
        :class:`Create` finds its key, :class:`~portctl.errors.VersionConflict` when any other
        condition fails; nothing is written then.
        """

    @abc.abstractmethod
    def refresh(self, key: str) -> Entry:
        """Restart the TTL of ``key`` (keep-alive). Raises NotFound if it already expired."""

    def snapshot(self, prefix: str = "") -> tuple[builtins.list[Entry], str]:
        """Every entry under ``prefix`` and a position to watch from, read together: a reader
        that re-reads after ``reset=True`` and watches from here loses and repeats nothing.
        Stores that can read both at one revision override this."""
        position = self.position()
        return self.list(prefix), position

    def list_many(self, prefixes: Sequence[str]) -> builtins.list[Entry]:
        """:meth:`list` of several prefixes (sorted by key, a key once). Stores that can read
        them in one request override this."""
        found = {e.key: e for prefix in prefixes for e in self.list(prefix)}
        return sorted(found.values(), key=lambda e: e.key)

    def snapshot_many(self, prefixes: Sequence[str]) -> tuple[builtins.list[Entry], str]:
        """:meth:`snapshot` of several prefixes at once (sorted by key, a key once even if two
        prefixes overlap). Stores that can read them in one request override this."""
        if not prefixes:
            return [], self.position()
        entries, position = self.snapshot(prefixes[0])
        found = {e.key: e for e in entries}
        for prefix in prefixes[1:]:
            found.update((e.key, e) for e in self.list(prefix))
        return sorted(found.values(), key=lambda e: e.key), position

    @abc.abstractmethod
    def position(self) -> str:
        """The change-feed position now; watch from here to see only later changes."""

    @abc.abstractmethod
    def watch(self, prefix: str, position: str, timeout: float) -> ChangeBatch:
        """Changes under ``prefix`` after ``position``; blocks up to ``timeout`` seconds for one."""

    def close(self) -> None:  # noqa: B027 - optional hook; stores without resources need nothing
        """Release connections, watches and leases."""

    def describe(self) -> str:
        """One line for ``portctl status``."""
        return self.url

    # Conveniences built on transact(), so every store gets the same semantics.

    def create(self, key: str, value: str, ttl: float | None = None) -> Entry:
        return self.transact([Create(key, value, ttl)])[key]

    def compare_and_set(self, key: str, value: str, version: str, ttl: float | None = None) -> Entry:
        return self.transact([Put(key, value, version, ttl)])[key]

    def delete(self, key: str, version: str | None = None) -> None:
        self.transact([Delete(key, version)])

    def landed(self, operations: Sequence[Operation]) -> dict[str, Entry] | None:
        """After a transaction whose answer was lost and whose retry failed its conditions: the
        entries it wrote if the store now holds exactly what it wrote (the first try landed),
        else None. Stores call this before reporting a conflict for a retried transaction."""
        written: dict[str, Entry] = {}
        for op in operations:
            current = self.get(op.key)
            if isinstance(op, Delete):
                if current is not None:
                    return None
            elif isinstance(op, (Create, Put)):
                if current is None or current.value != op.value:
                    return None
                written[op.key] = current
        return written

    def require(self, needed: Capability) -> None:
        """Fail at once, naming the capability, if this store cannot do what is asked."""
        missing = needed & ~self.capabilities
        if missing:
            raise CapabilityMissing(self.url, ", ".join(missing.names()))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_operations(operations: Sequence[Operation]) -> None:
    """Validate keys and reject two operations on one key (ambiguous in every engine)."""
    seen: set[str] = set()
    for op in operations:
        _validate.key(op.key)
        if op.key in seen:
            raise InvalidInput("transaction", op.key, "each key at most once in one transaction")
        seen.add(op.key)
        ttl = getattr(op, "ttl", None)
        if ttl is not None and ttl <= 0:
            raise InvalidInput(f"ttl of {op.key}", ttl, "a positive number of seconds")


# The old name, for the modules not yet renamed on this branch; remove it with the last use.
