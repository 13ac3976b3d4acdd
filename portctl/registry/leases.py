"""Keeping leased registrations alive (``register --lease``), for ``register --keep-alive`` and
``portctl agent`` alike.

A lease is renewed every third of its length. An entry whose lease ran out while its keeper
could not renew it (the process was paused, or cut off from the store, for longer than the
lease) is written again on a new lease. An entry that vanished although it was renewed within
its lease was deregistered on purpose, elsewhere, and is let go. Times come from a monotonic
clock: it counts on while the process is stopped, so a pause is seen for what it is.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterable

from portctl.errors import StoreUnavailable
from portctl.registry.entries import Instance, Registry

__all__ = ["LeaseKeeper", "Renewal"]

_Key = tuple[str, str]  # (environment, id)


class Renewal(enum.Enum):
    NOT_DUE = "not due"  # renewed less than a third of the lease ago
    RENEWED = "renewed"
    REWRITTEN = "rewritten"  # its lease had run out unrenewed: written again on a new lease
    GONE = "gone"  # deregistered elsewhere: let go


class LeaseKeeper:
    """Renews the leases of the instances it is given; remembers when it last renewed each."""

    def __init__(self, registry: Registry, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.clock = clock
        self._kept: dict[_Key, tuple[Instance, float]] = {}

    def renew(self, instance: Instance, *, due: bool = False) -> Renewal:
        """Renew ``instance``'s lease if a third of it has passed since the last renewal (or
        ``due``). Raises :class:`StoreUnavailable` when the store cannot be reached; the next
        call then knows how long the lease went unrenewed."""
        lease = instance.entry.lease
        if lease is None:
            return Renewal.NOT_DUE
        key = _key(instance)
        now = self.clock()  # the renewed lease starts no earlier than this
        previous = self._kept.get(key)
        if previous is not None and not due and now - previous[1] < lease / 3:
            self._kept[key] = (instance, previous[1])
            return Renewal.NOT_DUE
        # Rewrite only what ran out unrenewed: gone since a recent renewal means deregistered.
        unrenewed = previous is not None and now - previous[1] >= lease
        outcome = self.registry.keep_alive(instance, rewrite=unrenewed)
        if outcome is None and previous is not None and self.clock() - previous[1] >= lease:
            # Paused between reading the clock and reaching the store: the lease may have run
            # out meanwhile, so "gone" is no proof of a deregistration.
            outcome = self.registry.keep_alive(instance, rewrite=True)
        if outcome is None:
            self._kept.pop(key, None)
            return Renewal.GONE
        self._kept[key] = (instance, now)
        return Renewal.REWRITTEN if outcome else Renewal.RENEWED

    def renew_all(self, present: Iterable[Instance]) -> list[Instance]:
        """One pass over the instances now registered: renew each leased one that is due, and
        write again each kept one that vanished because its lease ran out unrenewed. The
        instances written again, in order."""
        present = list(present)
        rewritten = self._restore_vanished({_key(i) for i in present})
        for instance in present:
            if self.renew(instance) is Renewal.REWRITTEN:
                rewritten.append(instance)
        return rewritten

    def _restore_vanished(self, present: set[_Key]) -> list[Instance]:
        now = self.clock()
        restored = []
        for key, (instance, renewed_at) in list(self._kept.items()):
            if key in present:
                continue
            if now - renewed_at >= (instance.entry.lease or 0.0):  # expired unrenewed: ours
                self.registry.keep_alive(instance)  # if this fails, the next pass tries again
                restored.append(instance)
            del self._kept[key]
        return restored

    def keep(
        self,
        instance: Instance,
        stop: threading.Event,
        *,
        on_unreachable: Callable[[StoreUnavailable], None] | None = None,
        on_rewritten: Callable[[Instance], None] | None = None,
        renewed_at: float | None = None,
    ) -> bool:
        """Keep one instance alive until ``stop`` is set (True) or it is deregistered elsewhere
        (False). The store being unreachable goes to ``on_unreachable`` and the keeper tries
        again a third of a lease later; a rewrite after a lapse goes to ``on_rewritten``.

        ``renewed_at`` (on :attr:`clock`) is when the call that granted the lease began (the
        registration): a lease that ran out before the keeper started lapsed unrenewed, and
        is written again. Default: now."""
        lease = instance.entry.lease or 1.0
        self._kept[_key(instance)] = (instance, self.clock() if renewed_at is None else renewed_at)
        while not stop.wait(lease / 3):
            try:
                outcome = self.renew(instance, due=True)
            except StoreUnavailable as e:
                if on_unreachable is not None:
                    on_unreachable(e)
                continue
            if outcome is Renewal.GONE:
                return False
            if outcome is Renewal.REWRITTEN and on_rewritten is not None:
                on_rewritten(instance)
        return True


def _key(instance: Instance) -> _Key:
    return (instance.entry.environment, instance.entry.id)
