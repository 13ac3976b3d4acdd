"""The etcd v3 store: one registry shared by many hosts.

URL forms::

    etcd://h1:2379,h2:2379,h3:2379            keys under /portctl/
    etcd://h1:2379/team-a                     keys under /team-a/
    etcd+https://h1:2379?cacert=ca.pem&cert=client.pem&key=client-key.pem
    etcd:///team-a                            endpoints from ETCDCTL_ENDPOINTS
    etcd://alice@h1:2379?password_file=/run/secrets/etcd   user alice, password from a file

Options in the query: ``timeout`` (seconds per call, default 5), ``cacert``, ``cert``, ``key``,
``password_file``. etcdctl's variables are honoured when the URL does not say:
``ETCDCTL_ENDPOINTS``, ``ETCDCTL_USER`` (``user`` or ``user:password``), ``ETCDCTL_PASSWORD``,
``ETCDCTL_CACERT``, ``ETCDCTL_CERT``, ``ETCDCTL_KEY``. A password is never accepted in the URL,
so it never shows in argv or a process list.

Mapping of the neutral interface (``portctl/backends/base.py``):

* a key ``k`` lives at ``<prefix>k``; a version is the key's ``mod_revision``;
* :meth:`transact` is one etcd txn: ``Create`` compares ``create_revision == 0``, ``Put``,
  ``Expect`` and a versioned ``Delete`` compare ``mod_revision``; a failed txn reads the compared
  keys in its failure branch to name the one that failed;
* a TTL is a lease granted for the write; :meth:`refresh` keeps the key's lease alive; a put
  without a TTL keeps the key's lease (``ignore_lease``);
* the change feed is etcd's watch from ``position + 1``; a compacted position answers
  ``reset=True`` and :meth:`snapshot` re-reads at one revision, so a reader that re-watches
  from there neither loses nor repeats an event.

The client is etcd3gw (etcd's JSON gateway; no protobuf) with, added in
:mod:`portctl.backends._etcd_gateway`: failover across endpoints, password auth with the token
renewed when etcd says it expired, a timeout on every call, and the shared retry policy for
transient errors. The URL and etcdctl's variables are read in :mod:`portctl.backends._etcd_url`;
a watch stream is read in :mod:`portctl.backends._etcd_watch`.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from portctl import _validate
from portctl.backends._etcd_gateway import Compacted, Connection, b64, entry_of, range_end, unb64
from portctl.backends._etcd_url import DEFAULT_PREFIX, EtcdOptions, parse_url
from portctl.backends._etcd_watch import Follower, socket_of
from portctl.backends.base import (
    Capability,
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
    NotFound,
    StoreDenied,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)

__all__ = ["DEFAULT_PREFIX", "EtcdOptions", "EtcdStore", "parse_url"]

MAX_FOLLOWERS = 8  # idle watch streams kept open per store


class EtcdStore(Store):
    """Allocations, registrations and colors in etcd v3, under one key prefix."""

    scheme: ClassVar[str] = "etcd"
    capabilities: ClassVar[Capability] = (
        Capability.CAS | Capability.TXN | Capability.WATCH | Capability.TTL | Capability.MULTI_HOST
    )

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self.prefix = options.prefix
        self._connection = Connection(options)
        self._watch_lock = threading.Lock()
        self._followers: dict[tuple[str, str], Follower] = {}  # idle streams, by where they go on
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> EtcdStore:
        return cls(parse_url(url))

    @property
    def url(self) -> str:
        return self.options.url

    def describe(self) -> str:
        return f"{self.url} (etcd, {len(self.options.endpoints)} endpoint(s), keys under {self.prefix})"

    # Reading -----------------------------------------------------------------------------

    def _range(self, prefix: str, revision: int | None = None) -> dict[str, Any]:
        _validate.prefix(prefix)
        full = self.prefix + prefix
        body: dict[str, Any] = {"key": b64(full), "range_end": range_end(full)}
        if revision is not None:
            body["revision"] = str(revision)
        return self._connection.call("/kv/range", body)

    def _entry(self, kv: Mapping[str, Any]) -> Entry:
        return entry_of(kv, self.prefix)

    def get(self, key: str) -> Entry | None:
        _validate.key(key)
        answer = self._connection.call("/kv/range", {"key": b64(self.prefix + key)})
        kvs = answer.get("kvs") or []
        return self._entry(kvs[0]) if kvs else None

    def list(self, prefix: str = "") -> list[Entry]:
        return self.snapshot(prefix)[0]

    def snapshot(self, prefix: str = "") -> tuple[builtins.list[Entry], str]:
        answer = self._range(prefix)
        entries = sorted((self._entry(kv) for kv in answer.get("kvs") or []), key=lambda e: e.key)
        return entries, str(answer["header"]["revision"])

    def list_many(self, prefixes: Sequence[str]) -> builtins.list[Entry]:
        return self.snapshot_many(prefixes)[0]

    def snapshot_many(self, prefixes: Sequence[str]) -> tuple[builtins.list[Entry], str]:
        """One txn of range reads: every prefix at one revision, in one request."""
        if not prefixes:
            return [], self.position()
        ranges = []
        for prefix in prefixes:
            _validate.prefix(prefix)
            full = self.prefix + prefix
            ranges.append({"request_range": {"key": b64(full), "range_end": range_end(full)}})
        answer = self._connection.call("/kv/txn", {"success": ranges})
        found: dict[str, Entry] = {}
        for response in answer.get("responses") or []:
            for kv in (response.get("response_range") or {}).get("kvs") or []:
                entry = self._entry(kv)
                found[entry.key] = entry
        return sorted(found.values(), key=lambda e: e.key), str(answer["header"]["revision"])

    def position(self) -> str:
        answer = self._connection.call("/kv/range", {"key": b64(self.prefix), "count_only": True})
        return str(answer["header"]["revision"])

    # Writing -----------------------------------------------------------------------------

    def transact(self, operations: Sequence[Operation]) -> dict[str, Entry]:
        check_operations(operations)
        if not operations:
            return {}
        leases = self._grant_leases(operations)
        body = self._txn(operations, leases)
        unanswered = 0  # tries that may have landed

        def send() -> dict[str, Any]:
            nonlocal unanswered
            try:
                return self._connection.once("/kv/txn", body)
            except StoreUnavailable as e:
                unanswered += getattr(e, "reached", True)
                raise

        try:
            answer = self._connection.each(send)
        except StoreUnavailable:
            raise  # the txn may have landed: its leases must live (unused ones expire)
        except BaseException:
            self._revoke(leases.values())
            raise
        if not answer.get("succeeded"):
            if unanswered:
                # The first try's answer was lost: it may have landed, and this retry then
                # failed on our own write. If the store holds what we wrote, it did.
                landed = self.landed(operations)
                if landed is not None:
                    return landed
            else:
                self._revoke(leases.values())
            raise self._failure(operations, answer)
        revision = str(answer["header"]["revision"])
        return {
            op.key: Entry(op.key, op.value, revision, op.ttl)
            for op in operations
            if isinstance(op, (Create, Put))
        }

    def _grant_leases(self, operations: Sequence[Operation]) -> dict[float, str]:
        leases: dict[float, str] = {}
        for op in operations:
            ttl = getattr(op, "ttl", None)
            if ttl is not None and ttl not in leases:
                # etcd leases are whole seconds, and etcd raises a TTL below its minimum.
                answer = self._connection.call("/lease/grant", {"TTL": max(1, math.ceil(ttl))})
                leases[ttl] = str(answer["ID"])
        return leases

    def _revoke(self, leases: Iterable[str]) -> None:
        for lease in leases:
            with contextlib.suppress(StoreError, Compacted):  # an unused lease expires on its own
                self._connection.call("/kv/lease/revoke", {"ID": lease})

    def _txn(self, operations: Sequence[Operation], leases: Mapping[float, str]) -> dict[str, Any]:
        compare: list[dict[str, Any]] = []
        success: list[dict[str, Any]] = []
        failure: list[dict[str, Any]] = []
        for op in operations:
            key = b64(self.prefix + op.key)
            condition = _condition(op)
            if condition is not None:
                compare.append({"key": key, **condition})
                failure.append({"request_range": {"key": key}})
            if isinstance(op, (Create, Put)):
                put: dict[str, Any] = {"key": key, "value": b64(op.value)}
                if op.ttl is not None:
                    put["lease"] = leases[op.ttl]
                elif isinstance(op, Put) and op.keep_ttl:
                    put["ignore_lease"] = True
                success.append({"request_put": put})
            elif isinstance(op, Delete):
                success.append({"request_delete_range": {"key": key}})
        return {"compare": compare, "success": success, "failure": failure}

    def _failure(self, operations: Sequence[Operation], answer: Mapping[str, Any]) -> Exception:
        current: dict[str, str] = {}
        for response in answer.get("responses") or []:
            for kv in (response.get("response_range") or {}).get("kvs") or []:
                current[unb64(kv["key"])[len(self.prefix) :]] = str(kv["mod_revision"])
        for op in operations:
            have = current.get(op.key)
            if isinstance(op, Create) and have is not None:
                return KeyExists(op.key)
            expected = None if isinstance(op, Create) else op.version
            conditional = isinstance(op, (Put, Expect)) or (isinstance(op, Delete) and expected is not None)
            if conditional and have != expected:
                return VersionConflict(op.key)
        return VersionConflict(operations[0].key)  # changed and changed back between the reads

    def refresh(self, key: str) -> Entry:
        _validate.key(key)
        answer = self._connection.call("/kv/range", {"key": b64(self.prefix + key)})
        kvs = answer.get("kvs") or []
        if not kvs:
            raise NotFound(f"key {key!r} does not exist or its TTL already expired")
        lease = kvs[0].get("lease")
        if lease and lease != "0":
            kept = self._connection.call("/lease/keepalive", {"ID": lease})
            ttl = (kept.get("result") or kept).get("TTL")
            if not ttl or int(ttl) <= 0:
                raise NotFound(f"key {key!r}: its lease expired")
            return Entry(key, unb64(kvs[0].get("value", "")), str(kvs[0]["mod_revision"]), float(ttl))
        return self._entry(kvs[0])

    # Change feed -------------------------------------------------------------------------

    def watch(self, prefix: str, position: str, timeout: float) -> ChangeBatch:
        """Changes after ``position``. A reader that goes on from the position it was last
        given keeps one watch stream open (read by a thread), so a change costs no request.
        Each open stream serves one reader at a time: it is taken out of the pool while read."""
        _validate.prefix(prefix)
        if not position.isdigit():
            raise InvalidInput("position", position, "a position returned by this etcd store")
        with self._watch_lock:
            if self._closed:
                raise StoreUnavailable(f"the store {self.url} is closed")
            follower = self._followers.pop((prefix, position), None)
        if follower is None or follower.closed:
            follower = self._follow(prefix, position)
        item = follower.next(timeout)
        if item is None or (isinstance(item, ChangeBatch) and not item.reset):
            self._put_back(follower)
            return item if item is not None else ChangeBatch(position)
        follower.close()
        if isinstance(item, StoreDenied) and self.options.user and "invalid auth token" in str(item):
            self._connection.authenticate()  # the token expired: renew it; the next call reopens
            return ChangeBatch(position)
        if isinstance(item, Exception):
            raise item
        return item

    def _put_back(self, follower: Follower) -> None:
        with self._watch_lock:
            key = (follower.prefix, follower.position)
            if self._closed or key in self._followers:
                follower.close()
                return
            self._followers[key] = follower
            while len(self._followers) > MAX_FOLLOWERS:  # readers that went away
                self._followers.pop(next(iter(self._followers))).close()

    def _follow(self, prefix: str, position: str) -> Follower:
        full = self.prefix + prefix
        request = {
            "create_request": {
                "key": b64(full),
                "range_end": range_end(full),
                "start_revision": str(int(position) + 1),
            }
        }
        try:
            response = self._connection.watch_stream(request)
        except StoreDenied as e:
            if self.options.user is None or "invalid auth token" not in str(e):
                raise
            self._connection.authenticate()
            response = self._connection.watch_stream(request)
        sock = socket_of(response)
        if sock is not None:
            sock.settimeout(None)  # the headers came within the timeout; the stream may be quiet
        return Follower(self._connection, self.prefix, prefix, position, response)

    def compact(self, revision: str | None = None) -> None:
        """Drop history before ``revision`` (now, by default), as etcd's auto-compaction does."""
        target = revision or self.position()
        self._connection.call("/kv/compaction", {"revision": target, "physical": True})

    def close(self) -> None:
        with self._watch_lock:
            self._closed = True
            followers, self._followers = list(self._followers.values()), {}
        for follower in followers:
            follower.close()
        self._connection.close()


def _condition(op: Operation) -> dict[str, Any] | None:
    if isinstance(op, Create) or (isinstance(op, Expect) and op.version is None):
        return {"target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    version = op.version if isinstance(op, (Put, Expect, Delete)) else None
    if version is None:
        return None
    if not version.isdigit():
        version = "-1"  # a version from another store never matches
    return {"target": "MOD", "result": "EQUAL", "mod_revision": version}
