"""The one retry policy for calls to a store server (etcd, Consul).

A call that fails with :class:`~portctl.errors.StoreUnavailable` (connection refused or reset,
a timeout, a cluster with no leader) is tried once more after a short random pause, on the next
endpoint when the store has several. Nothing else is retried: a conflict
(:class:`~portctl.errors.VersionConflict`), a refused credential
(:class:`~portctl.errors.StoreDenied`) and bad input are answers, not accidents.

Retrying a conditional write never applies it twice: every write portctl sends is guarded by
versions, so one that did land the first time (its answer lost) fails its condition the second
time. That failure is then ours, not a conflict: a store that retried a write checks whether it
holds what was written (:meth:`~portctl.backends.base.Store.landed`) before reporting one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random

from portctl.errors import StoreUnavailable

__all__ = ["ATTEMPTS", "retried"]

T = TypeVar("T")

ATTEMPTS = 2  # the first try and one retry


def retried(call: Callable[[], T], before_retry: Callable[[], None] | None = None) -> T:
    """Run ``call``; on a transient store error run ``before_retry`` (e.g. switch endpoint) and
    try once more. The last error is raised unchanged."""

    def prepare(_state: object) -> None:
        if before_retry is not None:
            before_retry()

    for attempt in Retrying(
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_random(0.02, 0.1),
        retry=retry_if_exception_type(StoreUnavailable),
        before_sleep=prepare,
        reraise=True,
    ):
        with attempt:
            return call()
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover
