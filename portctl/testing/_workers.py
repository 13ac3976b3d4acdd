"""Worker processes for the contract suite's races. Module-level so 'spawn' can import them."""

from __future__ import annotations

import json
from typing import Any

from portctl.backends import open_store
from portctl.errors import KeyExists, VersionConflict


def _wait(start: Any) -> None:
    start.wait(timeout=60)


def create_once(url: str, key: str, worker: int, start: Any) -> bool:
    """Try to create ``key``; True if this worker won."""
    store = open_store(url)
    try:
        _wait(start)
        store.create(key, json.dumps({"worker": worker}))
    except KeyExists:
        return False
    finally:
        store.close()
    return True


def increment(url: str, key: str, times: int, start: Any) -> list[int]:
    """Add one to the counter at ``key`` ``times`` times with compare-and-set; the values written."""
    store = open_store(url)
    written: list[int] = []
    try:
        _wait(start)
        while len(written) < times:
            entry = store.get(key)
            assert entry is not None
            value = int(entry.value) + 1
            try:
                store.compare_and_set(key, str(value), entry.version)
            except VersionConflict:
                continue
            written.append(value)
    finally:
        store.close()
    return written


def allocate_many(url: str, worker: int, count: int, host: str, start: Any) -> list[int]:
    """Allocate ``count`` services of type 'dynamic'; the ports they got."""
    from portctl.config.settings import Settings
    from portctl.ports.allocator import PortAllocator

    store = open_store(url)
    try:
        allocator = PortAllocator(store, Settings(host=host))
        _wait(start)
        return [
            allocator.allocate(f"race-w{worker}-{i}", type="dynamic").allocation.port for i in range(count)
        ]
    finally:
        store.close()


def allocate_same(url: str, count: int, host: str, start: Any) -> list[int]:
    """Allocate services ``shared-0``... that every worker asks for too; the ports it was told."""
    from portctl.config.settings import Settings
    from portctl.ports.allocator import PortAllocator

    store = open_store(url)
    try:
        allocator = PortAllocator(store, Settings(host=host))
        _wait(start)
        return [allocator.allocate(f"shared-{i}", type="dynamic").allocation.port for i in range(count)]
    finally:
        store.close()
