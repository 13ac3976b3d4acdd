"""Reading blue-green's live pointers: which color of a service takes traffic.

Keys (under the store's own prefix)::

    bluegreen/<environment>/<service>/live     the live color and the history of flips (JSON)
    registry/<environment>/<service>/<id>/entry           each color's instances, meta color=...

Which instances serve (:func:`serving`): with a pointer naming a color, that color's
instances; otherwise the instances without a color. A service that never used blue-green has
neither pointer nor colors, so it resolves exactly as before. Resolvers and renderers read
here; changing the pointer is :class:`portctl.routing.bluegreen.BlueGreen`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from portctl.backends.base import Entry, Store
from portctl.errors import StoreCorrupt
from portctl.keys import parse_pointer_key, pointer_key
from portctl.records import COLORS, LivePointer, parse_pointer
from portctl.registry.entries import Instance, ServiceEntry

__all__ = [
    "color_of",
    "live_pointers",
    "not_serving_reason",
    "other",
    "pointer_of",
    "read_pointer",
    "serving",
]


def other(color: str | None) -> str | None:
    """The other color (None stays None: no color has no other)."""
    return None if color is None else COLORS[1 - COLORS.index(color)]


def color_of(entry: ServiceEntry) -> str | None:
    """The color an instance was deployed as; None for a plain (uncolored) instance."""
    color = entry.meta.get("color")
    return color if color in COLORS else None


def pointer_of(entry: Entry) -> LivePointer:
    """The pointer a store entry holds, with the entry's version token."""
    return parse_pointer(entry.key, entry.value, entry.version)


def read_pointer(store: Store, environment: str, service: str) -> LivePointer | None:
    """The live pointer of ``service`` as stored now; None if it never had one."""
    entry = store.get(pointer_key(environment, service))
    return pointer_of(entry) if entry is not None else None


def live_pointers(
    entries: Iterable[Entry], environment: str, corrupt: dict[str, StoreCorrupt] | None = None
) -> dict[str, LivePointer]:
    """The pointers among ``entries`` of one environment, by service. A pointer that does not
    parse raises :class:`StoreCorrupt`; with a ``corrupt`` dict it is put there, by service."""
    out: dict[str, LivePointer] = {}
    for entry in entries:
        where = parse_pointer_key(entry.key)
        if where is None or where[0] != environment:
            continue
        service = where[1]
        try:
            out[service] = pointer_of(entry)
        except StoreCorrupt as e:
            if corrupt is None:
                raise
            corrupt[service] = e
    return out


def serving(instances: Sequence[Instance], pointer: LivePointer | None) -> list[Instance]:
    """The instances of one service that take traffic: the live color's, or, with no color
    live, those without a color (a service that never used blue-green: all of them)."""
    live = pointer.live if pointer is not None else None
    return [i for i in instances if color_of(i.entry) == live]


def not_serving_reason(
    service: str, instances: Sequence[Instance], pointer: LivePointer | None, env: str
) -> str:
    """Why a registered service has no instance that takes traffic (for ServiceNotFound)."""
    if pointer is not None and pointer.live is not None:
        return f"live in {env} (its live color {pointer.live} has no instance registered)"
    deployed = sorted({c for i in instances if (c := color_of(i.entry))})
    return (
        f"live in {env} (color {', '.join(deployed)} is deployed but no color is live; "
        f"run: portctl bluegreen cutover {service} --to {deployed[0]})"
    )
