"""Service entries with health checks, in any store.

Keys (under the store's own prefix)::

    registry/<environment>/<service>/<id>/entry    the registration (JSON, ServiceEntry)
    registry/<environment>/<service>/<id>/health   its health (JSON, HealthRecord)

Health is kept apart from the entry so that checks rewrite only the small health key, and a
change feed on ``registry/`` tells resolvers about both. The health policy is the same for every
store: ``passing``, ``warning`` or ``critical``; a TTL check that was not renewed in time is
critical whoever reads it; flap damping needs ``successes_before_passing`` passing results in a
row before a service turns passing, and ``failures_before_critical`` failures before it turns
critical (see :func:`damp`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from portctl import _validate
from portctl.backends.base import Create, Delete, Entry, Expect, Operation, Put, Store
from portctl.config.settings import Settings
from portctl.errors import InvalidInput, NotFound, Param, ServiceNotFound, StoreCorrupt, VersionConflict
from portctl.keys import entry_key, health_key, registry_prefix
from portctl.ports.allocator import PortAllocator
from portctl.records import (
    CheckSpec,
    HealthRecord,
    ServiceEntry,
    Status,
    expiry_text,
    parse_entry,
    parse_health,
    valid_instance_id,
)
from portctl.registry.checks import (
    _is_local,
    _listening_pid,
    _url_port,
    check_host,
)

if TYPE_CHECKING:
    pass

__all__ = [
    "CheckSpec",
    "HealthRecord",
    "Instance",
    "Registry",
    "ServiceEntry",
    "Status",
    "Verified",
    "damp",
]


def damp(
    record: HealthRecord,
    result: Status,
    output: str,
    check: CheckSpec,
    now: float,
    duration: float | None = None,
) -> HealthRecord:
    """The health after one more check result, with flap damping: a change of status needs
    ``successes_before_passing`` (to passing) or ``failures_before_critical`` (to critical)
    results in a row; warning applies at once. ``duration``: how long the check took."""
    if result == record.status:
        return replace(record, output=output, updated_at=now, pending=None, streak=0, duration=duration)
    streak = record.streak + 1 if record.pending == result else 1
    needed = {Status.PASSING: check.successes_before_passing, Status.CRITICAL: check.failures_before_critical}
    if streak < needed.get(result, 1):
        return replace(
            record, output=output, updated_at=now, pending=result, streak=streak, duration=duration
        )
    since = (record.critical_since or now) if result == Status.CRITICAL else None
    return HealthRecord(result, output, now, None, 0, since, record.expires_at, duration)


def _expired_at(record: HealthRecord, now: float) -> float | None:
    """When ``record``'s TTL expired, or None if it has none or it has not expired yet."""
    if record.expires_at is not None and now >= record.expires_at:
        return record.expires_at
    return None


@dataclass(frozen=True)
class Instance:
    entry: ServiceEntry
    health: HealthRecord
    status: Status  # effective now (an expired TTL reads as critical)

    @property
    def output(self) -> str:
        """The check's output, true now: an expired TTL says when it expired."""
        return self.health.output_now(self.entry.check.ttl)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.entry.to_dict(),
            "status": self.status.value,
            "output": self.output,
            "updated_at": self.health.updated_at,
        }


class Registry:
    """Registrations and their health for one environment set, in one store."""

    def __init__(self, store: Store, settings: Settings | None = None) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.policy = self.settings.policy
        self.host = self.settings.host

    # Registering -----------------------------------------------------------------------

    def register(
        self,
        service: str,
        *,
        port: int | None = None,
        address: str | None = None,
        instance_id: str | None = None,
        tags: Sequence[str] = (),
        meta: Mapping[str, str] | None = None,
        check: CheckSpec | None = None,
        environment: str | None = None,
        pid: int | None = None,
        probe: Callable[[ServiceEntry], tuple[Status, str]] | None = None,
        lease: float | None = None,
        guard: Sequence[Expect] = (),
    ) -> Instance:
        """Register (or re-register) one instance. Without ``port`` the service's allocation in
        this environment gives it. ``probe`` (e.g. :func:`portctl.registry.health.run_check`) runs the
        TCP or HTTP check once, so the entry starts with a real status. With ``lease`` the
        entry and its health vanish unless kept alive (:meth:`keep_alive`) within that many
        seconds, by the registering process or ``portctl agent``. ``guard`` conditions go into
        the registration's transaction: if one fails, nothing is written and its
        :class:`VersionConflict` is raised at once."""
        env = self.policy.environment(environment)
        _validate.service_name(service)
        meta = _validate.meta(meta or {})
        check = check or CheckSpec("tcp")
        if lease is not None and not 1 <= lease <= 86400:
            raise InvalidInput("lease", lease, "a duration from 1s to 24h")
        port = self._port(service, env, port)
        address = _validate.host(address, "address") if address is not None else "127.0.0.1"
        self._check_target(check, port, env, address)
        default_id = f"{service}-{re.sub(r'[^a-z0-9._-]+', '-', self.host.lower()).strip('-.')}-{port}"
        instance = valid_instance_id(instance_id or default_id)
        taken = [i.entry.service for i in self.instances(environment=env) if i.entry.id == instance]
        if taken and taken[0] != service:
            raise InvalidInput(
                "instance_id", instance, f"an id no other service uses in {env} ({taken[0]} has it)"
            )
        for tag in tags:
            _validate.service_name(tag, "tags")
        if pid is None and _is_local(address):
            pid = _listening_pid(address, port)
        entry = ServiceEntry(
            instance,
            service,
            env,
            self.host,
            address,
            port,
            tuple(tags),
            meta,
            check,
            time.time(),
            pid,
            lease,
        )
        initial = probe(entry) if probe is not None and check.kind in ("tcp", "http") else None
        self._write(entry, self._first_health(check, initial), guard)
        return self.instance(instance, env)

    def _port(self, service: str, env: str, port: int | None) -> int:
        if port is not None:
            return _validate.port(port, "port")
        allocator = PortAllocator(self.store, self.settings)
        allocation = allocator.get(service, env)
        if allocation is None:
            known = [a.service for a in allocator.allocations(env)]
            hint = f"portctl allocate --service {service}"
            raise ServiceNotFound(
                service, known, (f"allocated in {env}; give ", Param("port"), f" N, or run: {hint}")
            )
        return allocation.port

    def _check_target(self, check: CheckSpec, port: int, env: str, address: str) -> None:
        if check.kind != "http" or check.url is None:
            return
        check_host(check.url, address)
        target = _url_port(urlsplit(check.url).netloc)
        allocated = {a.port for a in PortAllocator(self.store, self.settings).allocations(env)}
        if target != port and target not in allocated:
            raise InvalidInput(
                "check",
                check.url,
                f"an HTTP URL on the service's port {port} or another "
                "allocated port (nobody allocated the port it names)",
            )

    @staticmethod
    def _first_health(check: CheckSpec, initial: tuple[Status, str] | None) -> HealthRecord:
        now = time.time()
        if check.kind == "none":
            return HealthRecord(Status.PASSING, "no check", now)
        if check.kind == "ttl":
            return HealthRecord(Status.CRITICAL, "waiting for the first TTL pass", now, critical_since=now)
        if initial is None:
            return HealthRecord(Status.CRITICAL, "not checked yet", now, critical_since=now)
        status, output = initial
        return HealthRecord(status, output, now, critical_since=now if status == Status.CRITICAL else None)

    def _write(self, entry: ServiceEntry, health: HealthRecord, guard: Sequence[Expect] = ()) -> None:
        ekey = entry_key(entry.environment, entry.service, entry.id)
        hkey = health_key(entry.environment, entry.service, entry.id)
        for _ in range(20):
            current, current_health = self.store.get(ekey), self.store.get(hkey)
            ops: list[Operation] = [
                _upsert(ekey, json.dumps(entry.to_dict(), sort_keys=True), current, entry.lease),
                _upsert(hkey, json.dumps(health.to_dict(), sort_keys=True), current_health, entry.lease),
                *guard,
            ]
            try:
                self.store.transact(ops)
            except VersionConflict as e:
                if any(e.key == g.key for g in guard):
                    raise
                continue
            return
        raise VersionConflict(ekey, f"gave up registering {entry.id!r}: the store kept changing")

    def deregister(self, instance_id: str, environment: str | None = None) -> ServiceEntry:
        found = self.instance(instance_id, environment)
        e = found.entry
        self.store.transact(
            [
                Delete(entry_key(e.environment, e.service, e.id)),
                Delete(health_key(e.environment, e.service, e.id)),
            ]
        )
        return e

    def keep_alive(self, instance: Instance, *, rewrite: bool = True) -> bool | None:
        """Restart the lease of a leased registration: False when renewed. If the entry is gone
        and ``rewrite`` is true - its keeper knows the lease ran out unrenewed (paused, or cut
        off from the store, for longer than the lease) - the entry and its last health are
        written again on a new lease: True. Gone and not rewritten (it was deregistered on
        purpose): None."""
        e = instance.entry
        if e.lease is None:
            return False
        try:
            self.store.refresh(entry_key(e.environment, e.service, e.id))
            self.store.refresh(health_key(e.environment, e.service, e.id))
        except NotFound:
            if not rewrite:
                return None
            self._write(e, instance.health)
            return True
        return False

    def mark_expired(self, entry: ServiceEntry, now: float) -> tuple[HealthRecord | None, bool]:
        """Write a TTL that expired unrenewed (by ``now``) as critical, so that change feeds and
        watchers see it: the health after, None if the entry is gone, and whether this call
        wrote it (False when it was renewed, or marked critical, meanwhile)."""
        key = health_key(entry.environment, entry.service, entry.id)
        store = self.store
        for _ in range(20):
            current = store.get(key)
            if current is None:
                return None, False
            record = parse_health(current)
            expires_at = _expired_at(record, now)
            if record.status == Status.CRITICAL or expires_at is None:
                return record, False  # renewed, or marked critical, meanwhile
            expired = replace(
                record,
                status=Status.CRITICAL,
                output=expiry_text(expires_at, entry.check.ttl),
                updated_at=time.time(),
                pending=None,
                streak=0,
                critical_since=expires_at,
            )
            try:
                store.compare_and_set(key, json.dumps(expired.to_dict(), sort_keys=True), current.version)
            except VersionConflict:
                continue
            return expired, True
        raise VersionConflict(key, f"gave up marking the expired TTL of {entry.id!r} critical")

    def deregister_unchanged(self, entry: ServiceEntry) -> bool:
        """Remove ``entry`` if it is still the registration judged; False if it changed or went.
        The entry key is deleted on its version, so a service that re-registered meanwhile
        stays registered."""
        ekey = entry_key(entry.environment, entry.service, entry.id)
        hkey = health_key(entry.environment, entry.service, entry.id)
        store = self.store
        current = store.get(ekey)
        if current is None or parse_entry(current) != entry:
            return False
        try:
            store.transact([Delete(ekey, current.version), Delete(hkey)])
        except VersionConflict:
            return False
        return True

    # Health ------------------------------------------------------------------------------

    def record_result(
        self, instance: Instance, result: Status, output: str, duration: float | None = None
    ) -> HealthRecord | None:
        """Apply one check result with damping; None if the entry was deregistered meanwhile.
        ``duration``: the seconds the check took (shown as the instance's check latency)."""
        e = instance.entry
        key = health_key(e.environment, e.service, e.id)
        for _ in range(20):
            current = self.store.get(key)
            if current is None:
                return None
            record = damp(parse_health(current), result, output, e.check, time.time(), duration)
            try:
                self.store.compare_and_set(key, json.dumps(record.to_dict(), sort_keys=True), current.version)
            except VersionConflict:
                continue
            return record
        raise VersionConflict(key, f"gave up recording health of {e.id!r}")

    def ttl(
        self, instance_id: str, status: Status, output: str = "", environment: str | None = None
    ) -> Instance:
        """``portctl ttl pass|warn|fail ID``: set a TTL check's status for another TTL period."""
        _ttl_note(output)
        found = self.instance(instance_id, environment)
        e = found.entry
        if e.check.kind != "ttl" or e.check.ttl is None:
            raise InvalidInput(
                "ID", instance_id, f"an instance with a TTL check ({e.id} has a {e.check.kind} check)"
            )
        key = health_key(e.environment, e.service, e.id)
        for _ in range(20):
            current = self.store.get(key)
            previous = parse_health(current) if current is not None else found.health
            now = time.time()
            since = (previous.critical_since or now) if status == Status.CRITICAL else None
            record = HealthRecord(
                status, output or f"ttl {status.value}", now, None, 0, since, now + e.check.ttl
            )
            try:
                self.store.transact([_keep_ttl(key, json.dumps(record.to_dict(), sort_keys=True), current)])
            except VersionConflict:
                continue  # the agent wrote this health key meanwhile: apply ours on top
            break
        else:
            raise VersionConflict(key, f"gave up recording the TTL of {e.id!r}")
        return self.instance(instance_id, e.environment)

    def verify(
        self,
        environment: str | None = None,
        *,
        probe: Callable[[ServiceEntry], tuple[Status, str]] | None = None,
    ) -> list[Verified]:
        """Check every instance registered in ``environment`` now: TCP and HTTP checks run
        (``probe``, by default :func:`portctl.registry.health.run_check`) and their results are
        recorded with flap damping; TTL and unchecked instances report their last status. Each
        result is the check's own, undamped: what answers right now."""
        if probe is None:
            from portctl.registry.health import run_check

            probe = run_check
        out = []
        for inst in self.instances(environment=environment):
            status, output = inst.status, inst.output
            if inst.entry.check.kind in ("tcp", "http"):
                started = time.monotonic()
                status, output = probe(inst.entry)
                self.record_result(inst, status, output, time.monotonic() - started)
            out.append(Verified(inst, status, output))
        return out

    # Reading -----------------------------------------------------------------------------

    def instances(
        self, service: str | None = None, environment: str | None = None, *, all_environments: bool = False
    ) -> list[Instance]:
        if all_environments:
            prefix = registry_prefix()
        else:
            env = self.policy.environment(environment)
            prefix = registry_prefix(env, _validate.service_name(service) if service else None)
        return instances_from(self.store.list(prefix))

    def instance(self, instance_id: str, environment: str | None = None) -> Instance:
        valid_instance_id(instance_id)
        candidates = [i for i in self.instances(environment=environment) if i.entry.id == instance_id]
        if not candidates:
            known = [i.entry.id for i in self.instances(environment=environment)]
            raise NotFound(
                f"no registered instance {instance_id!r}" + (f"; known: {', '.join(known)}" if known else "")
            )
        return candidates[0]


@dataclass(frozen=True)
class Verified:
    """One instance as :meth:`Registry.verify` found it."""

    instance: Instance
    status: Status  # the check's result now (undamped), or the last status if it is not run
    output: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.instance.to_dict(), "status": self.status.value, "output": self.output}


def instances_from(
    entries: Sequence[Entry], now: float | None = None, corrupt: list[StoreCorrupt] | None = None
) -> list[Instance]:
    """Join entry and health keys into instances (pure: resolvers use it on their snapshots).

    A key that does not parse raises :class:`StoreCorrupt`; with a ``corrupt`` list it is
    added there and skipped instead, so one bad key does not hide every other service."""
    now = time.time() if now is None else now
    registered: dict[str, ServiceEntry] = {}
    health: dict[str, HealthRecord] = {}
    for item in entries:
        base, _, leaf = item.key.rpartition("/")
        try:
            if leaf == "entry":
                registered[base] = parse_entry(item)
            elif leaf == "health":
                health[base] = parse_health(item)
        except StoreCorrupt as bad:
            if corrupt is None:
                raise
            corrupt.append(bad)
    out = []
    for base, e in registered.items():
        record = health.get(base, HealthRecord(Status.CRITICAL, "no health recorded"))
        out.append(Instance(e, record, record.effective(now)))
    return sorted(out, key=lambda i: (i.entry.environment, i.entry.service, i.entry.id))


def _upsert(key: str, value: str, current: Entry | None, ttl: float | None = None) -> Operation:
    """Create ``key``, or overwrite it with exactly ``ttl`` (None: no TTL any more)."""
    if current is None:
        return Create(key, value, ttl)
    return Put(key, value, current.version, ttl, keep_ttl=False)


NOTE_MAX = 4096  # Consul keeps at most 4 KiB of a check's output


def _ttl_note(text: str) -> None:
    """A TTL check's note is shown in tables, logs and Consul's UI: one printable line."""
    if len(text) > NOTE_MAX or not _validate.one_line(text):
        raise InvalidInput(
            "output",
            text,
            f"text of at most {NOTE_MAX} printable characters on one line (no newline, tab or other "
            "control character)",
        )


def _keep_ttl(key: str, value: str, current: Entry | None) -> Operation:
    """Create ``key``, or overwrite its value keeping whatever TTL it has."""
    return Create(key, value) if current is None else Put(key, value, current.version)
