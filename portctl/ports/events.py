"""The event log: what portctl did to ports by itself, kept in the store for ``portctl events``.

Each event is a key of its own, created once (create-if-absent, so two writers never overwrite
each other's events) under ``events/<host>/``; keys sort by time. A host keeps its newest
:data:`KEEP` events: recording one prunes the oldest beyond that, so the log never grows
without bound. Corrupt keys are skipped and counted, never fatal: the log is a record of what
happened, not something a command's success depends on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from portctl.backends.base import Store
from portctl.errors import KeyExists, StoreCorrupt, VersionConflict
from portctl.keys import event_key, events_prefix, parse_event_key
from portctl.records import Event, parse_event

__all__ = ["KEEP", "EventLog", "EventsRead"]

KEEP = 1000  # events kept per host


@dataclass(frozen=True)
class EventsRead:
    events: list[Event]  # oldest first
    corrupt: list[str]  # keys under events/ that are not events


class EventLog:
    """One store's event log, written as ``host``."""

    def __init__(self, store: Store, host: str, keep: int = KEEP) -> None:
        self.store = store
        self.host = host
        self.keep = keep

    def record(self, event: Event) -> Event:
        """Store ``event`` (its ``host`` is this log's) and prune the oldest beyond ``keep``."""
        at_ns = int(event.at * 1e9)
        for _ in range(5):
            key = event_key(self.host, at_ns, os.urandom(4).hex())
            stored = replace(event, host=self.host, key=key)
            try:
                self.store.create(key, stored.to_json())
            except KeyExists:
                continue  # the same nanosecond and nonce: draw another nonce
            self._prune()
            return stored
        raise VersionConflict(events_prefix(self.host), "could not find a free event key")

    def read(
        self,
        *,
        all_hosts: bool = False,
        since: float | None = None,
        service: str | None = None,
        environment: str | None = None,
    ) -> EventsRead:
        """The events of this host (or every host), oldest first, filtered."""
        found: list[Event] = []
        corrupt: list[str] = []
        for entry in self.store.list(events_prefix(None if all_hosts else self.host)):
            try:
                event = parse_event(entry)
            except StoreCorrupt:
                corrupt.append(entry.key)
                continue
            if _wanted(event, since, service, environment):
                found.append(event)
        found.sort(key=lambda e: (e.at, e.key))
        return EventsRead(found, corrupt)

    def _prune(self) -> None:
        mine = sorted(e.key for e in self.store.list(events_prefix(self.host)) if parse_event_key(e.key))
        for key in mine[: max(0, len(mine) - self.keep)]:
            self.store.delete(key)  # another writer may have pruned it first: then nothing to do


def _wanted(event: Event, since: float | None, service: str | None, environment: str | None) -> bool:
    return (
        (since is None or event.at >= since)
        and (service is None or event.service == service)
        and (environment is None or event.environment == environment)
    )
