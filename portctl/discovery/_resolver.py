"""ServiceDiscovery: service names to URLs, from a snapshot that follows the store's change feed."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable
from types import TracebackType

from portctl import _validate
from portctl.backends import open_store
from portctl.backends.base import Capability, ChangeBatch, Entry, Store
from portctl.config.settings import ENV_ENV, Settings, load_settings, resolve_store
from portctl.discovery import _cache
from portctl.discovery._snapshot import (
    ALLOCATION_ADDRESS,
    DEFAULT_SCHEME,
    DEFAULT_SCHEMES,
    EMPTY,
    Answer,
    Context,
    View,
    address_answer,
    build_view,
    override_answer,
)
from portctl.errors import InvalidInput, Kind, ServiceNotFound, StoreError, StoreUnavailable
from portctl.ports.allocator import PortAllocator
from portctl.records import check_color

__all__ = ["ServiceDiscovery", "get_service_url", "set_default"]

# The file store's watch is itself a 20 ms stat poll, so a short wait costs nothing and lets
# close() return quickly; on a network store each wait is one held request.
_FILE_WATCH_TIMEOUT = 0.2
_NETWORK_WATCH_TIMEOUT = 5.0
_POLL_INTERVAL = 1.0  # stores without a change feed are re-read this often
_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0  # while the store is unreachable, back off between these
_SAVE_EVERY = 1.0  # seconds between cache writes while the store changes
_clock = time.time


class ServiceDiscovery:
    """Resolves service names to URLs in one environment, from an in-memory snapshot.

    A name resolves, in order, to:

    1. ``PORTCTL_<NAME>_URL`` (the name upper-cased, other characters than letters and digits
       as ``_``): that URL verbatim, for twelve-factor deployments;
    2. its registered instances in the environment. With ``healthy_only`` (the default) only
       healthy ones count - passing, and warning too (degraded but serving). The choice is
       deterministic, not round-robin: the best status (passing before warning), then the lowest
       instance id, so every caller and connection pool agrees and the answer changes only when
       the registry does. Spreading load is a router's job;
    3. when the service has no registered instance at all, its allocation in the environment on
       this host (``Settings.host``), at 127.0.0.1 - what a registration without ``--address``
       records, so the URL keeps its form when the service is registered later;
    4. with ``allocate_missing``, a new allocation; else :class:`~portctl.errors.ServiceNotFound`
       naming the services known (registered or allocated).

    ``SERVICE_HOST`` replaces the address of every answer from the store. A wildcard address
    (0.0.0.0, ::) becomes loopback for an instance on this host, else its host's name. The
    scheme is the ``scheme`` argument, else the instance's ``scheme`` meta, else postgresql for
    postgres, redis for redis, https for nginx_https, else http.

    Answers are precomputed whenever the snapshot changes: a lookup does no I/O. Environment
    variables are read then too (start, each store change, :meth:`refresh`); a name missing from
    the snapshot reads them at the call. A daemon thread follows the store's change feed; with
    ``watch=False`` only :meth:`refresh` re-reads.

    A resolver that follows the store (``watch=True``), or is given ``cache_file`` or
    ``save_cache=True``, saves each read to its cache file (mode 0600; by default one per store,
    environment and host in ``$XDG_CACHE_HOME/portctl`` or ``~/.cache/portctl``, where files
    unused for a week are pruned). A one-shot resolver (``watch=False``, as ``portctl url``) only
    reads it. A cache that cannot be written is skipped: discovery works without it, and with no
    usable cache folder (no home) none is kept. While the store is unreachable or corrupt,
    the last known good answers are served - from memory, or from the cache file when starting -
    and :attr:`stale` gives their age (health stays as last read: TTL checks cannot be renewed
    in an outage either); beyond ``max_stale`` seconds a lookup raises
    :class:`~portctl.errors.StoreUnavailable`. The thread recovers when the store comes back.
    A resolver that can neither read its store nor find a cache file raises StoreUnavailable
    when it is created.

    ``only`` names the services a resolver answers (``portctl url NAME``: one); it then reads
    just their keys - registrations, live pointer, allocation - in one request where the store
    can (etcd), so a one-shot lookup costs the same in a registry of ten services or ten
    thousand. Another name is refused (:class:`~portctl.errors.InvalidInput`); a "not found"
    still names every known service, read for that message only.
    """

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        environment: str | None = None,
        settings: Settings | None = None,
        cache_file: str | None = None,
        max_stale: float = 300.0,
        allocate_missing: bool = False,
        watch: bool = True,
        save_cache: bool | None = None,
        only: Iterable[str] | None = None,
    ) -> None:
        self._settings = settings or load_settings()
        self._environment = self._settings.policy.environment(
            environment if environment is not None else os.environ.get(ENV_ENV) or None, "environment"
        )
        if not max_stale > 0:
            raise InvalidInput("max_stale", max_stale, "a positive number of seconds")
        self._max_stale = float(max_stale)
        self._allocate_missing = allocate_missing
        self._owns_store = not isinstance(store, Store)
        if not isinstance(store, Store):
            store = open_store(resolve_store(store, self._settings).url)
        self._store: Store = store
        url, env, host = self._store.url, self._environment, self._settings.host
        self._only = None if only is None else frozenset(_validate.service_name(n) for n in only)
        context = Context(env, host)
        self._prefixes = context.prefixes if self._only is None else context.prefixes_of(sorted(self._only))
        self._under = tuple(p for p in self._prefixes if p.endswith("/"))
        self._exact = frozenset(p for p in self._prefixes if not p.endswith("/"))  # not api-v2 for api
        self._identity = {"store": url, "environment": env, "host": host}
        self._cache_file = cache_file or _cache.default_path(url, env, host)
        self._saves = (watch or cache_file is not None) if save_cache is None else save_cache
        self._prune = cache_file is None  # only the default folder holds only our files
        self._lock = threading.RLock()  # for writers (reads, rebuilds); lookups never take it
        self._view: View = EMPTY
        self._entries: dict[str, Entry] = {}
        self._position: str | None = None  # None: re-read everything before following changes
        self._confirmed_at = 0.0  # when the store last answered
        self._saved_at = 0.0
        self._unsaved = False  # entries changed since the cache file was written
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._start()
        if watch:
            self._thread = threading.Thread(target=self._follow, name="portctl-discovery", daemon=True)
            self._thread.start()

    # Lookups: the hot path is a dict access and, with a scheme, one format -------------

    def get_service_url(
        self, name: str, *, scheme: str | None = None, healthy_only: bool = True, color: str | None = None
    ) -> str:
        """The URL of ``name``, e.g. ``postgresql://127.0.0.1:5433``: for a blue-green service, of
        its live color; with ``color='green'``, of that color whether live or not (smoke tests)."""
        answer = (
            self._lookup(name, healthy_only)
            if color is None
            else self._color_answer(name, color, healthy_only)
        )
        return answer.url if scheme is None else answer.with_scheme(scheme)

    def get_service_address(
        self, name: str, *, healthy_only: bool = True, color: str | None = None
    ) -> tuple[str, int]:
        """``(host, port)`` of ``name``; an IPv6 host without brackets. For a ``PORTCTL_<NAME>_URL``
        without a port, the scheme's usual one (http 80, https 443, postgresql 5432, redis 6379).
        ``color`` as for :meth:`get_service_url`."""
        answer = (
            self._lookup(name, healthy_only)
            if color is None
            else self._color_answer(name, color, healthy_only)
        )
        return answer.host, answer.port

    def _lookup(self, name: str, healthy_only: bool) -> Answer:
        view = self._view
        answer = (view.healthy if healthy_only else view.every).get(name)
        if answer is None or _clock() >= view.deadline:  # or, with ``only``, a name not read
            return self._answer(name, healthy_only)
        return answer

    def get_all_services(self, *, healthy_only: bool = True) -> dict[str, str]:
        """Every service that resolves now, by name: registered, allocated or overridden."""
        view = self._usable_view()
        table = view.healthy if healthy_only else view.every
        return {name: table[name].url for name in sorted(table)}

    @property
    def environment(self) -> str:
        return self._environment

    @property
    def cache_file(self) -> str | None:
        """Where the last known good answers are kept; None when there is no cache folder."""
        return self._cache_file

    @property
    def stale(self) -> float | None:
        """Age in seconds of the answers served while the store is unreachable; None when fresh."""
        since = self._view.stale_since
        return None if since is None else max(0.0, _clock() - since)

    def _answer(self, name: str, healthy_only: bool) -> Answer:
        """The slow path: names not in the snapshot, expired TTLs, a stale snapshot."""
        _validate.service_name(name)
        self._check_only(name)
        override = override_answer(name, os.environ)
        if override is not None:
            return override
        view = self._usable_view()
        answer = (view.healthy if healthy_only else view.every).get(name)
        if answer is not None:
            return answer
        if name in view.unhealthy and (healthy_only or name not in view.every):
            raise ServiceNotFound(name, self._known(view), view.unhealthy[name])
        if self._allocate_missing and name not in view.every:
            return self._allocate(name)
        where = f"registered or allocated in {self._environment} on {self._settings.host}"
        raise ServiceNotFound(name, self._known(view), where)

    def _check_only(self, name: str) -> None:
        if self._only is not None and name not in self._only:
            names = ", ".join(sorted(self._only))
            raise InvalidInput("name", name, f"one of the names this resolver was made for ({names})")

    def _known(self, view: View) -> list[str]:
        """The services known in the environment, to name in a 'not found': a resolver made
        for some names only reads the rest now (only on this path), else its view has them."""
        if self._only is None:
            return list(view.known)
        try:
            entries = self._store.list_many(Context(self._environment, self._settings.host).prefixes)
            return list(build_view(entries, self._context(), _clock()).known)
        except StoreError:
            return list(view.known)

    def _color_answer(self, name: str, color: str, healthy_only: bool) -> Answer:
        """One color of a blue-green service. ``PORTCTL_<NAME>_URL`` does not apply: it names
        where the service is, not where one of its colors is."""
        view = self._view
        key = (name, color)
        answer = (view.colors_healthy if healthy_only else view.colors_every).get(key)
        if answer is not None and _clock() < view.deadline:
            return answer
        _validate.service_name(name)
        self._check_only(name)
        check_color(color, Kind("color"))
        view = self._usable_view()
        answer = (view.colors_healthy if healthy_only else view.colors_every).get(key)
        if answer is not None:
            return answer
        if key in view.colors_unhealthy:
            raise ServiceNotFound(name, self._known(view), view.colors_unhealthy[key])
        raise ServiceNotFound(name, self._known(view), f"deployed in color {color} in {self._environment}")

    def _usable_view(self) -> View:
        view = self._view
        now = _clock()
        if view.stale_since is not None:
            age = now - view.stale_since
            if age > self._max_stale:
                raise self._unavailable(view, age)
        elif now >= view.deadline:  # a TTL ran out: judge health again, from memory
            with self._lock:
                if self._view is view:
                    self._publish(now)
            view = self._view
        return view

    def _unavailable(self, view: View, age: float) -> StoreUnavailable:
        error = StoreUnavailable(
            f"store {self._store.url} is unreachable and the last known good answers are {age:.0f}s "
            f"old, over max_stale ({self._max_stale:g}s): {view.error}"
        )
        error.__cause__ = view.error
        return error

    def _allocate(self, name: str) -> Answer:
        allocation = PortAllocator(self._store, self._settings).allocate(name, environment=self._environment)
        with contextlib.suppress(StoreError):  # else served from the allocation; the thread catches up
            self.refresh()
        answer = self._view.every.get(name)
        if answer is not None:
            return answer
        context = self._context()
        address = context.service_host or ALLOCATION_ADDRESS
        return address_answer(address, allocation.allocation.port, DEFAULT_SCHEMES.get(name, DEFAULT_SCHEME))

    # Reading the store --------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the store now. A StoreError is raised after marking the answers stale (they
        are still served, within ``max_stale``)."""
        try:
            with self._lock:
                self._reload()
        except StoreError as e:
            self._went_stale(e)
            raise

    def _start(self) -> None:
        try:
            with self._lock:
                self._reload()
        except StoreError as e:
            self._start_from_cache(e)
        except BaseException:
            self._close_store()
            raise

    def _start_from_cache(self, error: StoreError) -> None:
        try:
            view = self._load_cache()
        except BaseException:
            self._close_store()
            raise
        if view is None:
            self._close_store()
            where = (
                f"there is no last known good answer in {self._cache_file}"
                if self._cache_file
                else "no cache of last known good answers is kept (set XDG_CACHE_HOME or HOME)"
            )
            raise StoreUnavailable(f"store {self._store.url} is unreachable and {where}: {error}") from error
        self._view = view.went_stale(self._saved_at, self._max_stale, error)

    def _load_cache(self) -> View | None:
        if self._cache_file is None:
            return None
        saved = _cache.load(self._cache_file, self._identity)
        if saved is None:
            return None
        entries = {entry.key: entry for entry in saved.entries if self._keeps(entry.key)}
        try:
            view = build_view(entries.values(), self._context(), saved.saved_at)
        except StoreError:
            return None  # a cache file holding a corrupt entry is no last known good
        self._entries = entries
        self._confirmed_at = self._saved_at = saved.saved_at
        return view

    def _reload(self) -> None:
        """Read every key the answers come from. Called with the lock held."""
        watching = Capability.WATCH in self._store.capabilities
        # One read where the store can (etcd): every prefix and the position, at one revision.
        found, position = self._store.snapshot_many(self._prefixes)
        entries = {e.key: e for e in found if self._keeps(e.key)}
        position = position if watching else ""
        now = _clock()
        self._entries, self._confirmed_at = entries, now
        self._publish(now)
        self._unsaved = True
        self._save_if_due(now, force=True)
        self._position = position  # only once the read is published: a failed build re-reads

    def _publish(self, now: float) -> None:
        """Rebuild the answers from the entries in memory and swap them in whole."""
        self._view = build_view(self._entries.values(), self._context(), now)

    def _save_if_due(self, now: float, *, force: bool = False) -> None:
        """Save the entries to the cache file: after a full read, at most once a second while
        they change, and now and then while they do not, so the file's ``saved_at`` stays an
        honest age for a resolver that starts during an outage."""
        if not self._saves or self._cache_file is None:
            return
        since = now - self._saved_at
        heartbeat = min(60.0, max(1.0, self._max_stale / 2))
        if force or (self._unsaved and since >= _SAVE_EVERY) or since >= heartbeat:
            saved = _cache.save(self._cache_file, self._identity, self._entries.values(), now)
            self._saved_at, self._unsaved = now, not saved  # a failed write is retried later
            if saved and self._prune:
                self._prune = False  # once per resolver
                _cache.prune(os.path.dirname(self._cache_file), now)

    def _went_stale(self, error: Exception) -> None:
        with self._lock:
            self._position = None
            self._view = self._view.went_stale(self._confirmed_at, self._max_stale, error)

    def _context(self) -> Context:
        return Context.of(self._environment, self._settings.host, os.environ)

    def _keeps(self, key: str) -> bool:
        return key in self._exact or key.startswith(self._under)

    # Following changes ------------------------------------------------------------------

    def _follow(self) -> None:
        delay = _RETRY_FIRST
        while not self._closed.is_set():
            try:
                self._step()
            except StoreError as e:
                self._went_stale(e)
            except Exception as e:  # noqa: BLE001 - a store plugin leaking its client's error must not kill the thread silently
                self._went_stale(StoreUnavailable(f"store {self._store.url} failed: {e!r}"))
            else:
                delay = _RETRY_FIRST
                continue
            self._closed.wait(delay)
            delay = min(delay * 2, _RETRY_MAX)

    def _step(self) -> None:
        if self._position is None:
            with self._lock:
                self._reload()
            return
        batch = self._wait_for_change(self._position)
        if not self._closed.is_set():
            with self._lock:
                self._apply(batch)

    def _wait_for_change(self, position: str) -> ChangeBatch:
        if Capability.WATCH not in self._store.capabilities:
            self._closed.wait(_POLL_INTERVAL)
            return ChangeBatch(position, reset=True)
        wait = _FILE_WATCH_TIMEOUT if self._store.scheme == "file" else _NETWORK_WATCH_TIMEOUT
        wait = max(0.01, min(wait, self._view.deadline - _clock()))
        return self._store.watch("", position, timeout=wait)

    def _apply(self, batch: ChangeBatch) -> None:
        """Apply one batch of the change feed. Called with the lock held."""
        if batch.reset or self._view.stale_since is not None:
            self._reload()  # a stale view is only ever replaced by a full read
            return
        changed = False
        for change in batch.changes:
            if not self._keeps(change.key):
                continue
            changed = True
            if change.entry is not None:
                self._entries[change.key] = change.entry
            else:
                self._entries.pop(change.key, None)
        now = _clock()
        if changed or now >= self._view.deadline:
            self._publish(now)
        self._position, self._confirmed_at = batch.position, now
        self._unsaved = self._unsaved or changed
        self._save_if_due(now)

    # Lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop following the store (the last answers stay served, frozen); idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=_NETWORK_WATCH_TIMEOUT + 1)
        self._close_store()

    def _close_store(self) -> None:
        if self._owns_store:
            self._store.close()

    def __enter__(self) -> ServiceDiscovery:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServiceDiscovery({self._store.url!r}, environment={self._environment!r})"


# The module-level convenience ---------------------------------------------------------------


class _DefaultSlot:
    """The instance behind :func:`get_service_url`: made on first use, replaceable by tests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.discovery: ServiceDiscovery | None = None
        self.owned = False  # made here (so closed here when replaced)

    def get(self) -> ServiceDiscovery:
        found = self.discovery
        if found is not None:
            return found
        with self.lock:
            if self.discovery is None:
                settings = load_settings()
                self.discovery = ServiceDiscovery(resolve_store(None, settings).url, settings=settings)
                self.owned = True
            return self.discovery

    def set(self, discovery: ServiceDiscovery | None) -> None:
        with self.lock:
            previous, owned = self.discovery, self.owned
            self.discovery, self.owned = discovery, False
        if owned and previous is not None and previous is not discovery:
            previous.close()


_default = _DefaultSlot()


def get_service_url(
    name: str, *, scheme: str | None = None, healthy_only: bool = True, color: str | None = None
) -> str:
    """``get_service_url('redis')`` over a default :class:`ServiceDiscovery`, made on first use
    with the store the CLI would choose (config file, ``PORTCTL_STORE``, the default file) and
    ``PORTCTL_ENV``. ``color='green'`` names one color of a blue-green service."""
    return _default.get().get_service_url(name, scheme=scheme, healthy_only=healthy_only, color=color)


def set_default(discovery: ServiceDiscovery | None) -> None:
    """Make ``discovery`` the instance behind :func:`get_service_url`; None resets it, so the
    next call makes a new one. A default made on first use is closed when replaced; one passed
    in here stays its owner's to close."""
    _default.set(discovery)
