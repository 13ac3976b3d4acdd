"""The Consul store's change feed: blocking queries held open in daemon threads.

One :class:`Follower` per endpoint (the KV prefix, and ``/v1/health/state/any``) keeps a blocking
query open, by Consul's documented rules for them:

* the first query has no index (it answers at once); each next one sends the
  ``X-Consul-Index`` of the last answer, with a ``wait``;
* an index that went backwards (a snapshot restore, a rebuilt cluster) is reset to 0, which
  re-reads at once, and the reset is counted so watchers re-read everything;
* an index below 1 is taken as 1, so a zero index never turns into a busy loop;
* queries are rate-limited (``MIN_INTERVAL`` apart), and back off while Consul fails;
* an answer identical to the last one (a wait that timed out, or an index that moved for
  something else) is ignored.

Watchers wait on :class:`Feed` in memory: :meth:`Feed.wait_beyond` wakes when a follower
publishes a changed answer, an index reset or an error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from portctl.backends._retry import network_cause
from portctl.errors import StoreError, StoreUnavailable

WAIT = 5.0  # seconds a blocking query is held by Consul before it answers unchanged
MIN_INTERVAL = 0.01  # at most 100 queries a second per follower
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0

Fetch = Callable[[int, float], tuple[int, str]]  # (index, wait) -> (X-Consul-Index, body)


@dataclass(frozen=True)
class Mark:
    """Where the feed stands: answers published, index resets seen, and a current error."""

    generation: int
    resets: int
    health_generation: int
    error: StoreError | None = None


class Feed:
    """The followers of one store and what they last saw."""

    def __init__(self, fetch_kv: Fetch, fetch_health: Fetch) -> None:
        self.cond = threading.Condition()
        self.generation = 0
        self.resets = 0
        self.health_generation = 0
        self.kv_body: str | None = None
        self.health_body: str | None = None
        self.kv_seen = False
        self.errors: dict[str, StoreError] = {}
        self._stop = threading.Event()
        self._followers = [Follower("kv", fetch_kv, self), Follower("health", fetch_health, self)]
        for follower in self._followers:
            follower.start()

    def mark(self) -> Mark:
        with self.cond:
            return self._mark()

    def _mark(self) -> Mark:
        error = next(iter(self.errors.values()), None)
        return Mark(self.generation, self.resets, self.health_generation, error)

    def wait_beyond(self, mark: Mark, deadline: float) -> Mark:
        """Block until the feed moves past ``mark`` (a new answer, a reset, an error) or the
        deadline passes; where it stands then."""
        with self.cond:
            while True:
                now = self._mark()
                moved = (now.generation, now.resets) != (mark.generation, mark.resets)
                remaining = deadline - time.monotonic()
                if moved or now.error is not None or remaining <= 0:
                    return now
                self.cond.wait(remaining)

    def publish(self, name: str, body: str | None, reset: bool) -> None:
        with self.cond:
            self.errors.pop(name, None)
            if reset:
                self.resets += 1
            if name == "kv":
                self.kv_body = body
                self.kv_seen = True
            else:
                self.health_body = body
                self.health_generation += 1
            if self.kv_seen:  # until the KV prefix has answered once there is nothing to compare
                self.generation += 1
            self.cond.notify_all()

    def failed(self, name: str, error: StoreError) -> None:
        with self.cond:
            self.errors[name] = error
            self.cond.notify_all()

    def recovered(self, name: str) -> None:
        with self.cond:
            if self.errors.pop(name, None) is not None:
                self.cond.notify_all()

    @property
    def stopped(self) -> threading.Event:
        return self._stop

    def stop(self) -> None:
        """Stop following; a query in flight ends within its wait, in its daemon thread."""
        self._stop.set()


class Follower(threading.Thread):
    def __init__(self, name: str, fetch: Fetch, feed: Feed) -> None:
        super().__init__(name=f"portctl-consul-{name}", daemon=True)
        self.key = name
        self.fetch = fetch
        self.feed = feed
        self.index = 0
        self.body: str | None = None

    def run(self) -> None:
        stop = self.feed.stopped
        started = 0.0
        delay = BACKOFF_FIRST
        while not stop.is_set():
            pause = MIN_INTERVAL - (time.monotonic() - started)
            if pause > 0 and stop.wait(pause):
                return
            started = time.monotonic()
            try:
                index, body = self.fetch(self.index, WAIT)
            except StoreError as e:
                self.feed.failed(self.key, e)
            except Exception as e:  # noqa: BLE001 - a follower must survive its client's surprises
                self.feed.failed(self.key, StoreUnavailable(f"following Consul failed ({network_cause(e)})"))
            else:
                delay = BACKOFF_FIRST
                self._answer(index, body)
                continue
            if stop.wait(delay):
                return
            delay = min(delay * 2, BACKOFF_MAX)

    def _answer(self, index: int, body: str) -> None:
        if index < self.index:
            # The index went backwards: start again from 0 (answers at once) and tell watchers.
            self.index = 0
            self.body = body
            self.feed.publish(self.key, body, reset=True)
            return
        self.index = max(index, 1)
        if body == self.body:
            self.feed.recovered(self.key)
            return
        self.body = body
        self.feed.publish(self.key, body, reset=False)
