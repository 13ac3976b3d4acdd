"""Copy a whole store - allocations, registrations, blue-green colors - into another store.

The target must be empty (under its prefix): a migration never merges into, or overwrites, a
registry someone uses. Keys are written with create-if-absent in batches of one transaction
each; a registration's lease goes with it. Afterwards both stores are read back and compared,
key by key, so a report of success means the target holds exactly what the source held.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from portctl.backends.base import Capability, Create, Entry, Store
from portctl.errors import InvalidInput, PortctlError, StoreError
from portctl.keys import instance_prefix, parse_registry_key

__all__ = ["BATCH", "MigrationReport", "migrate"]

BATCH = 64  # keys per transaction; etcd allows 128 operations per txn by default


@dataclass(frozen=True)
class MigrationReport:
    source: str
    target: str
    copied: int
    by_kind: dict[str, int] = field(default_factory=dict)  # "allocations": 14, "registry": 6, ...

    def to_dict(self) -> dict[str, object]:
        return {"from": self.source, "to": self.target, "copied": self.copied, "by_kind": self.by_kind}


def migrate(source: Store, target: Store) -> MigrationReport:
    """Copy every key of ``source`` into the empty ``target``; verify; report what was copied."""
    if source.url == target.url:
        raise InvalidInput("to", target.url, "a store other than the one migrated from")
    present = target.list("")
    if present:
        raise InvalidInput(
            "to",
            target.url,
            f"an empty store (it already holds {len(present)} key(s), e.g. {present[0].key}); "
            "choose a new file, or a new key prefix such as etcd://HOST:2379/portctl2",
        )
    entries = source.list("")
    leases = _leases(entries)
    written: list[Entry] = []
    try:
        for start in range(0, len(entries), BATCH):
            batch = entries[start : start + BATCH]
            done = target.transact(
                [Create(e.key, e.value, e.ttl or leases.get(instance_prefix(e.key))) for e in batch]
            )
            written.extend(done.values())
        _verify(entries, target)
    except PortctlError as e:
        raise _undo(target, written, e) from e
    kinds = Counter(e.key.split("/", 1)[0] for e in entries)
    return MigrationReport(source.url, target.url, len(entries), dict(sorted(kinds.items())))


def _leases(entries: list[Entry]) -> dict[str, float]:
    """Registration leases by instance, for stores that do not report an entry's TTL."""
    found: dict[str, float] = {}
    for e in entries:
        parsed = parse_registry_key(e.key)
        if parsed is not None and parsed[3] == "entry":
            try:
                lease = json.loads(e.value).get("lease")
            except (ValueError, AttributeError):
                continue
            if isinstance(lease, (int, float)) and lease > 0:
                found[instance_prefix(e.key)] = float(lease)
    return found


def _is_health(key: str) -> bool:
    parsed = parse_registry_key(key)
    return parsed is not None and parsed[3] == "health"


def _undo(target: Store, written: list[Entry], error: PortctlError) -> PortctlError:
    """Take back what a failed migration wrote, so it can simply be run again."""
    left = 0
    for entry in written:
        try:
            target.delete(entry.key, entry.version)
        except PortctlError:
            left += 1
    if not written:
        return error
    if left:
        return StoreError(
            f"migration to {target.url} failed: {error}; {left} of the {len(written)} key(s) it "
            "wrote could not be taken back (they were changed or the store is unreachable): "
            "clear the target, or migrate to a new prefix"
        )
    return StoreError(
        f"migration to {target.url} failed: {error}; the {len(written)} key(s) it wrote were "
        "taken back, so the target is empty again; the source was not changed"
    )


def _verify(entries: list[Entry], target: Store) -> None:
    want = {e.key: e.value for e in entries}
    have = {e.key: e.value for e in target.list("")}
    missing = sorted(want.keys() - have.keys())
    # Health is re-measured where the target runs its own checks (Consul): it must exist, but
    # its value is the target's to decide.
    measured = Capability.RUNS_CHECKS in target.capabilities
    differ = sorted(
        k for k in want.keys() & have.keys() if want[k] != have[k] and not (measured and _is_health(k))
    )
    if missing or differ:
        first = (missing or differ)[0]
        raise StoreError(
            f"the copy in {target.url} does not match: {len(missing)} key(s) missing, "
            f"{len(differ)} different (first: {first}); the source was not changed"
        )
