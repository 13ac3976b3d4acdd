"""Blue-green port switching: two colors of a service on two ports, one live pointer.

Keys (under the store's own prefix)::

    bluegreen/<environment>/<service>/live     the live color and the history of flips (JSON)
    allocations/<host>/<environment>/<service>_<color>   each color's port (an allocation)
    registry/<environment>/<service>/<id>/entry           each color's instances, meta color=...

The pointer is one key, so one compare-and-set orders a flip and the record of it; a store
without compare-and-set is refused before anything is read. Its value::

    {"format": "portctl-bluegreen", "schema": 1, "service": "api", "environment": "production",
     "live": "green", "previous": "blue", "changed_at": 1767225600.0, "actor": "deploy@web-1",
     "drain_until": 1767225630.0,
     "history": [{"at": 1767225600.0, "actor": "deploy@web-1", "from": "blue", "to": "green",
                  "kind": "cutover"}]}

``live`` may be null: the service's instances without a color serve (a service that adopts
blue-green keeps serving from its plain instances until its first cutover). The history keeps
the last :data:`HISTORY_LIMIT` cutovers and rollbacks.

Which instances serve (:func:`serving`): with a pointer naming a color, that color's
instances; otherwise the instances without a color. A service that never used blue-green has
neither pointer nor colors, so it resolves exactly as before.

A cutover is health-gated: every instance of the target color is probed with its own check
(:func:`portctl.registry.health.run_check`; TTL checks are read from the store) throughout the
``min_healthy`` window and once more when the window closes, right before the flip. One failed
probe refuses the cutover: a target that flaps is not one to send traffic to, and waiting for it
to settle would hide the flapping. Once every probe passed, the passes are recorded as the agent
would record them (enough for flap damping), so the new color's stored health is current when
resolvers switch to it; a refused cutover writes nothing.

The stored value keeps times as seconds since the epoch; the ``to_dict()`` of the records a
caller gets back (status, cutover results) gives them as ISO 8601 UTC strings.
"""

from __future__ import annotations

import getpass
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from portctl import _validate
from portctl.backends.base import Capability, Check, Entry, Store
from portctl.config.settings import Settings
from portctl.errors import (
    CapabilityMissing,
    InvalidInput,
    KeyExists,
    NotFound,
    PortctlError,
    ServiceNotFound,
    StoreCorrupt,
    VersionConflict,
)
from portctl.host.kernel import BindResult
from portctl.ports.allocator import AllocationResult, PortAllocator
from portctl.registry.entries import CheckSpec, Instance, Registry, ServiceEntry, Status

__all__ = [
    "COLORS",
    "HISTORY_LIMIT",
    "BlueGreen",
    "BlueGreenStatus",
    "ColorState",
    "CutoverConflict",
    "CutoverRefused",
    "CutoverResult",
    "Deployed",
    "Flip",
    "LivePointer",
    "check_color",
    "live_pointers",
    "pointer_key",
    "serving",
]

COLORS = ("blue", "green")
COLOR_FORM = "blue or green"
HISTORY_LIMIT = 20
FORMAT = "portctl-bluegreen"
SCHEMA = 1
REQUIRED = Capability.CAS
DEPLOY_REQUIRED = Capability.CAS | Capability.TXN  # the color's allocation and registration
PROBE_EVERY = 1.0  # seconds between probe rounds in the healthy window (shorter windows: 5 rounds)


class CutoverRefused(PortctlError):
    """A cutover or rollback that cannot go ahead; nothing was changed."""

    code = "cutover_refused"


class CutoverConflict(VersionConflict):
    """Another cutover changed the live color while this one was checking: it lost."""

    code = "cutover_conflict"


def check_color(value: object, field_name: str = "--color") -> str:
    if value not in COLORS:
        raise InvalidInput(field_name, value, COLOR_FORM)
    return str(value)


def other(color: str | None) -> str | None:
    return None if color is None else COLORS[1 - COLORS.index(color)]


def pointer_key(environment: str, service: str) -> str:
    return f"bluegreen/{environment}/{service}/live"


def color_of(entry: ServiceEntry) -> str | None:
    color = entry.meta.get("color")
    return color if color in COLORS else None


def color_allocation(service: str, color: str) -> str:
    """The allocation that holds a color's port: ``api`` in green is ``api_green``."""
    name = f"{service}_{color}"
    if len(name) > 63:
        raise InvalidInput("NAME", service, "a service name of at most 57 characters for blue-green")
    return name


# The pointer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flip:
    """One cutover or rollback in the history."""

    at: float
    actor: str
    from_color: str | None
    to_color: str | None
    kind: str  # "cutover" or "rollback"

    def stored(self) -> dict[str, Any]:
        """As the pointer's stored value holds it (``at`` in seconds since the epoch)."""
        return {
            "at": self.at,
            "actor": self.actor,
            "from": self.from_color,
            "to": self.to_color,
            "kind": self.kind,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.stored(), "at": iso_utc(self.at)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Flip:
        return cls(float(raw["at"]), str(raw["actor"]), raw.get("from"), raw.get("to"), str(raw["kind"]))


@dataclass(frozen=True)
class LivePointer:
    service: str
    environment: str
    live: str | None
    previous: str | None = None
    changed_at: float = 0.0
    actor: str = ""
    drain_until: float | None = None
    history: tuple[Flip, ...] = ()
    version: str = ""  # the store's version token of the key this was read from

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "schema": SCHEMA,
            "service": self.service,
            "environment": self.environment,
            "live": self.live,
            "previous": self.previous,
            "changed_at": self.changed_at,
            "actor": self.actor,
            "drain_until": self.drain_until,
            "history": [f.stored() for f in self.history[-HISTORY_LIMIT:]],
        }
        return json.dumps(doc, sort_keys=True)

    def flipped(self, to: str | None, actor: str, now: float, drain: float, kind: str) -> LivePointer:
        flip = Flip(now, actor, self.live, to, kind)
        return LivePointer(
            self.service,
            self.environment,
            to,
            self.live,
            now,
            actor,
            now + drain,
            (*self.history, flip)[-HISTORY_LIMIT:],
        )


def parse_pointer(entry: Entry) -> LivePointer:
    try:
        return _pointer_from(json.loads(entry.value), entry.version)
    except RecursionError as e:
        raise StoreCorrupt(entry.key, "the blue-green pointer is not valid (JSON nested too deeply)") from e
    except (ValueError, KeyError, TypeError) as e:
        raise StoreCorrupt(entry.key, f"the blue-green pointer is not valid ({e})") from e


def _pointer_from(doc: Any, version: str) -> LivePointer:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} record")
    if int(doc.get("schema", 0)) > SCHEMA:
        raise ValueError(f"schema {doc['schema']} is newer than this portctl reads ({SCHEMA})")
    live, previous = doc.get("live"), doc.get("previous")
    for color in (live, previous):
        if color is not None:
            check_color(color, "live")
    return LivePointer(
        str(doc["service"]),
        str(doc["environment"]),
        live,
        previous,
        float(doc.get("changed_at", 0.0)),
        str(doc.get("actor", "")),
        doc.get("drain_until"),
        tuple(Flip.from_dict(f) for f in doc.get("history", [])),
        version,
    )


_POINTER = re.compile(r"^bluegreen/([^/]+)/([^/]+)/live$")


def live_pointers(
    entries: Iterable[Entry], environment: str, corrupt: dict[str, StoreCorrupt] | None = None
) -> dict[str, LivePointer]:
    """The pointers among ``entries`` of one environment, by service. A pointer that does not
    parse raises :class:`StoreCorrupt`; with a ``corrupt`` dict it is put there, by service."""
    out: dict[str, LivePointer] = {}
    for entry in entries:
        match = _POINTER.match(entry.key)
        if match and match.group(1) == environment:
            try:
                out[match.group(2)] = parse_pointer(entry)
            except StoreCorrupt as e:
                if corrupt is None:
                    raise
                corrupt[match.group(2)] = e
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


# Results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    service: str
    environment: str
    color: str
    instance: Instance
    live: bool  # the first color of a service goes live at once: nothing served before it

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "environment": self.environment,
            "color": self.color,
            "live": self.live,
            "instance": self.instance.to_dict(),
        }


@dataclass(frozen=True)
class ColorState:
    color: str
    port: int | None  # its allocation on this host, if any
    instances: tuple[Instance, ...]
    live: bool
    draining: bool

    @property
    def state(self) -> str:
        if self.live:
            return "live"
        if self.draining:
            return "draining"
        return "idle" if self.instances else "not deployed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "color": self.color,
            "port": self.port,
            "state": self.state,
            "live": self.live,
            "instances": [i.to_dict() for i in self.instances],
        }


@dataclass(frozen=True)
class BlueGreenStatus:
    service: str
    environment: str
    pointer: LivePointer | None
    colors: tuple[ColorState, ...]
    uncolored: tuple[Instance, ...] = ()

    @property
    def live(self) -> str | None:
        return self.pointer.live if self.pointer else None

    def to_dict(self) -> dict[str, Any]:
        p = self.pointer
        return {
            "service": self.service,
            "environment": self.environment,
            "live": self.live,
            "changed_at": iso_utc(p.changed_at) if p and p.changed_at else None,
            "actor": p.actor if p else None,
            "drain_until": iso_utc(p.drain_until) if p and p.drain_until else None,
            "colors": [c.to_dict() for c in self.colors],
            "uncolored": [i.to_dict() for i in self.uncolored],
            "history": [f.to_dict() for f in (p.history if p else ())],
        }


@dataclass(frozen=True)
class CutoverResult:
    service: str
    environment: str
    kind: str  # "cutover" or "rollback"
    from_color: str | None
    to_color: str | None
    actor: str
    flipped_at: float
    probes: int  # checks run on the target before the flip
    drain: float
    drained: bool  # False when the wait was interrupted (the flip stands)
    instances: tuple[str, ...] = field(default=())  # the target's instance ids

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "environment": self.environment,
            "kind": self.kind,
            "from": self.from_color,
            "to": self.to_color,
            "actor": self.actor,
            "flipped_at": iso_utc(self.flipped_at),
            "probes": self.probes,
            "drain": self.drain,
            "drained": self.drained,
            "instances": list(self.instances),
        }


Probe = Callable[[ServiceEntry], tuple[Status, str]]
Progress = Callable[[str], None]


def require(store: Store, needed: Capability) -> None:
    """Refuse a store that cannot do what blue-green needs, saying why it needs it."""
    try:
        store.require(needed)
    except CapabilityMissing as e:
        hint = "blue-green writes its live pointer with compare-and-set; the file, etcd and consul stores can"
        raise CapabilityMissing(store.url, e.capability, hint) from None


def default_actor(host: str) -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        import os

        user = str(os.getuid())
    return f"{user}@{host}"


def iso_utc(seconds: float) -> str:
    """``2026-11-27T14:00:12.345Z``: seconds since the epoch as ISO 8601 UTC."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _no_progress(_: str) -> None:
    pass


def _claimed_bind(port: int, protocol: str) -> BindResult:
    return BindResult(True)


# The operations -----------------------------------------------------------------------------


class BlueGreen:
    """Deploy, cut over, roll back and inspect the colors of services in one store.

    ``probe`` runs one TCP or HTTP check (default :func:`portctl.registry.health.run_check`);
    ``stop`` interrupts a healthy window (nothing flips) or a drain (the flip stands).
    """

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        probe: Probe | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        require(store, REQUIRED)
        self.store = store
        self.settings = settings or Settings()
        self.registry = Registry(store, self.settings)
        if probe is None:
            from portctl.registry.health import run_check

            probe = run_check
        self._probe_check = probe
        self._stop = stop or threading.Event()
        self._clock = clock

    # Reading ------------------------------------------------------------------------------

    def _env(self, environment: str | None) -> str:
        return self.settings.policy.environment(environment)

    def pointer(self, service: str, environment: str | None = None) -> LivePointer | None:
        env = self._env(environment)
        entry = self.store.get(pointer_key(env, _validate.service_name(service, "NAME")))
        return parse_pointer(entry) if entry is not None else None

    def _instances(self, service: str, env: str, color: str | None) -> list[Instance]:
        return [i for i in self.registry.instances(service, env) if color_of(i.entry) == color]

    def status(self, service: str, environment: str | None = None) -> BlueGreenStatus:
        env = self._env(environment)
        pointer = self.pointer(service, env)
        everything = self.registry.instances(service, env)
        colored = [i for i in everything if color_of(i.entry) is not None]
        if pointer is None and not colored:
            known = sorted({k.split("/")[2] for k in (e.key for e in self.store.list(f"bluegreen/{env}/"))})
            raise ServiceNotFound(service, known, f"deployed with blue-green in {env}")
        allocator = PortAllocator(self.store, self.settings)
        now = self._clock()
        states = []
        for color in COLORS:
            allocation = allocator.get(color_allocation(service, color), env)
            live = pointer is not None and pointer.live == color
            draining = (
                pointer is not None
                and pointer.previous == color
                and not live
                and pointer.drain_until is not None
                and now < pointer.drain_until
            )
            mine = tuple(i for i in colored if color_of(i.entry) == color)
            states.append(ColorState(color, allocation.port if allocation else None, mine, live, draining))
        uncolored = tuple(i for i in everything if color_of(i.entry) is None)
        return BlueGreenStatus(service, env, pointer, tuple(states), uncolored)

    # Deploying ----------------------------------------------------------------------------

    def deploy(
        self,
        service: str,
        color: str,
        *,
        port: int | None = None,
        check: CheckSpec | None = None,
        address: str | None = None,
        environment: str | None = None,
        actor: str | None = None,
    ) -> Deployed:
        """Allocate ``color``'s port and register the color's instance on it.

        Without ``port`` a free port of the service's type is allocated (``api_green``); with
        one, it is recorded even if something already listens there (the color, started
        first). The first color of a service with no other instance goes live at once; a
        color that is live is refused: deploy to the idle one and cut over.
        """
        require(self.store, DEPLOY_REQUIRED)
        env = self._env(environment)
        _validate.service_name(service, "NAME")
        color = check_color(color)
        pointer = self.pointer(service, env)
        if pointer is not None and pointer.live == color:
            raise CutoverRefused(
                f"{color} is the live color of {service} in {env}: deploying over it would change "
                f"what serves without a health gate; deploy to {other(color)} and cut over to it"
            )
        check = check or CheckSpec("tcp")
        self._precheck(check, port, env)
        result = self._allocate(service, color, env, port)
        allocation = result.allocation
        try:
            instance, pointer = self._register_color(
                service, color, env, check, address, allocation.port, pointer
            )
        except PortctlError:
            if result.changed and result.previous_port is None:  # leave the store as found
                PortAllocator(self.store, self.settings).release(allocation.service, env)
            elif result.changed and result.previous_port is not None:
                self._allocate(service, color, env, result.previous_port)  # move it back
            raise
        went_live = pointer is None and self._go_live_first(service, color, env, actor)
        return Deployed(service, env, color, instance, went_live)

    def _register_color(
        self,
        service: str,
        color: str,
        env: str,
        check: CheckSpec,
        address: str | None,
        port: int,
        pointer: LivePointer | None,
    ) -> tuple[Instance, LivePointer | None]:
        """Register the color's instance only while ``color`` is not live: the pointer's
        version read before goes into the registration's transaction as a guard, so a cutover
        to this color landing meanwhile is never followed by an ungated change of what serves.
        Any other change of the pointer (another color going live) just means: read, go on."""
        for _ in range(5):
            guard = Check(pointer_key(env, service), pointer.version if pointer is not None else None)
            try:
                instance = self.registry.register(
                    service,
                    port=port,
                    address=None if address is None else _validate.host(address, "--address"),
                    instance_id=self._instance_id(service, color),
                    tags=(color,),
                    meta={"color": color},
                    check=_with_port(check, port),
                    environment=env,
                    probe=self._probe_check,
                    guard=[guard],
                )
            except VersionConflict as e:
                if e.key != guard.key:
                    raise
                pointer = self.pointer(service, env)
                if pointer is not None and pointer.live == color:
                    raise CutoverRefused(
                        f"{color} went live for {service} in {env} while it was being deployed; "
                        f"nothing was registered: check portctl bluegreen status {service}"
                    ) from e
                continue
            return instance, pointer
        raise CutoverConflict(
            pointer_key(env, service), f"the live color of {service} in {env} kept changing; deploy again"
        )

    def _precheck(self, check: CheckSpec, port: int | None, env: str) -> None:
        """Refuse an HTTP check the registration would refuse, before the port is allocated."""
        if check.kind != "http" or not check.url or "{port}" in check.url:
            return
        target = urlsplit(check.url).port
        allocated = {a.port for a in PortAllocator(self.store, self.settings).allocations(env)}
        if target != port and target not in allocated:
            raise InvalidInput(
                "--check", check.url, "an HTTP URL on the color's port: write it as http://HOST:{port}/PATH"
            )

    def _allocate(self, service: str, color: str, env: str, port: int | None) -> AllocationResult:
        spec = self.settings.policy.spec(service)
        name = color_allocation(service, color)
        if port is None:
            allocator = PortAllocator(self.store, self.settings)
            return allocator.allocate(name, type=spec.type, environment=env)
        allocator = PortAllocator(self.store, self.settings, bind=_claimed_bind)
        return allocator.allocate(name, port=port, type=spec.type, environment=env)

    def _instance_id(self, service: str, color: str) -> str:
        host = re.sub(r"[^a-z0-9._-]+", "-", self.settings.host.lower()).strip("-.")
        return f"{service}-{color}-{host}"[:128]

    def _go_live_first(self, service: str, color: str, env: str, actor: str | None) -> bool:
        if self._instances(service, env, None):
            return False  # plain instances serve until the first cutover
        now = self._clock()
        first = LivePointer(service, env, color, None, now, actor or default_actor(self.settings.host))
        try:
            self.store.create(pointer_key(env, service), first.to_json())
        except KeyExists:
            return False  # another deploy made a color live first
        return True

    # Cutting over -------------------------------------------------------------------------

    def cutover(
        self,
        service: str,
        *,
        to: str | None = None,
        min_healthy: float = 10.0,
        drain: float = 30.0,
        environment: str | None = None,
        actor: str | None = None,
        progress: Progress = _no_progress,
    ) -> CutoverResult:
        """Flip the live color of ``service`` to ``to`` (default: the other color).

        The target must pass every probe for ``min_healthy`` seconds and once more right
        before the flip; the flip is a compare-and-set on the pointer's version read at the
        start, so of two racing cutovers one wins and the other raises
        :class:`CutoverConflict`. After the flip the old color stays registered and this
        call waits ``drain`` seconds (the longest a client may keep using the old answer)
        before it returns.
        """
        env = self._env(environment)
        _validate.service_name(service, "NAME")
        _check_window(min_healthy, "--min-healthy")
        _check_window(drain, "--drain")
        entry = self.store.get(pointer_key(env, service))
        pointer = parse_pointer(entry) if entry else LivePointer(service, env, None)
        live = pointer.live
        if to is None:
            if live is None:
                raise InvalidInput("--to", None, f"{COLOR_FORM}: no color of {service} is live in {env} yet")
            to = other(live)
        target = check_color(to, "--to")
        if target == live:
            raise CutoverRefused(
                f"{target} is already the live color of {service} in {env}; nothing to do "
                f"(to switch back, cut over to {other(target)} or run: portctl bluegreen rollback {service})"
            )
        instances = self._deployed(service, env, target)
        probes = self._healthy_window(service, env, target, min_healthy, progress)
        return self._flip(pointer, target, entry, probes, drain, actor, "cutover", instances, progress)

    def rollback(
        self,
        service: str,
        *,
        drain: float = 30.0,
        environment: str | None = None,
        actor: str | None = None,
        progress: Progress = _no_progress,
    ) -> CutoverResult:
        """Undo the last flip: one probe round of the previous color (at least one instance
        must pass; no window, a rollback is for when the live color is failing), then one
        compare-and-set."""
        env = self._env(environment)
        _validate.service_name(service, "NAME")
        _check_window(drain, "--drain")
        entry = self.store.get(pointer_key(env, service))
        pointer = parse_pointer(entry) if entry else None
        if entry is None or pointer is None or not pointer.history:
            raise CutoverRefused(
                f"{service} has no cutover to roll back in {env} (its blue-green history is empty); "
                f"to change the live color run: portctl bluegreen cutover {service} --to COLOR"
            )
        target = pointer.history[-1].from_color
        instances = self._deployed(service, env, target)
        passed, probes = self._probe_round(instances, progress)
        if not passed:
            raise CutoverRefused(
                f"rollback of {service} to {_name(target)} refused: none of its {len(instances)} "
                f"instance(s) passed its check; start it, then run the rollback again"
            )
        return self._flip(pointer, target, entry, probes, drain, actor, "rollback", instances, progress)

    def _deployed(self, service: str, env: str, color: str | None) -> list[Instance]:
        found = self._instances(service, env, color)
        if not found:
            raise CutoverRefused(
                f"{_name(color)} of {service} is not deployed in {env} (no instance registered); "
                f"deploy it first: portctl bluegreen deploy {service} --color {color or 'COLOR'}"
            )
        return found

    def _healthy_window(self, service: str, env: str, target: str, window: float, progress: Progress) -> int:
        """Probe every instance of ``target`` in rounds until ``window`` seconds have passed;
        the last round runs when the window has closed. Returns the number of probes. Results
        are recorded only once all passed: a refused cutover leaves the store as it was."""
        every = min(PROBE_EVERY, window / 5) if window else 0.0
        start = self._clock()
        passes: dict[str, tuple[Instance, int, str]] = {}
        shown = -1
        while True:
            instances = self._deployed(service, env, target)  # re-read: one may have been added
            elapsed = self._clock() - start
            for instance in instances:
                status, output = self._probe(instance)
                if status != Status.PASSING:
                    raise CutoverRefused(
                        f"cutover of {service} to {target} refused: {instance.entry.id} failed its check "
                        f"{elapsed:.1f}s into the {window:g}s healthy window ({status.value}: {output}); "
                        f"nothing was changed; fix it and run the cutover again"
                    )
                count = passes.get(instance.entry.id, (instance, 0, ""))[1]
                passes[instance.entry.id] = (instance, count + 1, output)
            if elapsed >= window:
                break
            if int(elapsed) != shown:
                shown = int(elapsed)
                progress(f"{target}: {len(instances)} instance(s) passing for {shown}s of {window:g}s")
            if self._stop.wait(max(0.0, min(every, window - elapsed))):
                raise CutoverRefused(f"cutover of {service} to {target} interrupted; nothing was changed")
        self._record_passes(passes.values())
        self._require_recorded_health(service, env, target)
        return sum(count for _, count, _ in passes.values())

    def _record_passes(self, passes: Iterable[tuple[Instance, int, str]]) -> None:
        """Record the passes as the agent would have: enough of them for flap damping."""
        for instance, count, output in passes:
            if instance.entry.check.kind not in ("tcp", "http"):
                continue
            for _ in range(min(count, max(1, instance.entry.check.successes_before_passing))):
                if self.registry.record_result(instance, Status.PASSING, output) is None:
                    break

    def _require_recorded_health(self, service: str, env: str, target: str) -> None:
        """Resolvers read the stored health: flap damping may keep it critical after passes."""
        for instance in self._deployed(service, env, target):
            if instance.status == Status.CRITICAL:
                needed = instance.entry.check.successes_before_passing
                raise CutoverRefused(
                    f"cutover of {service} to {target} refused: {instance.entry.id} passed its checks but "
                    f"its recorded health is still critical (it needs {needed} passing checks in a row); "
                    f"run the cutover again with a longer --min-healthy"
                )

    def _probe_round(self, instances: Sequence[Instance], progress: Progress) -> tuple[bool, int]:
        passes = []
        for instance in instances:
            status, output = self._probe(instance)
            progress(f"{instance.entry.id}: {status.value} ({output})")
            if status == Status.PASSING:
                passes.append((instance, 1, output))
        self._record_passes(passes)
        return bool(passes), len(instances)

    def _probe(self, instance: Instance) -> tuple[Status, str]:
        kind = instance.entry.check.kind
        if kind == "none":
            return Status.PASSING, "no check"
        if kind == "ttl":
            fresh = self.registry.instances(instance.entry.service, instance.entry.environment)
            now = [i for i in fresh if i.entry.id == instance.entry.id]
            return (now[0].status, now[0].output) if now else (Status.CRITICAL, "deregistered")
        return self._probe_check(instance.entry)

    def _flip(
        self,
        pointer: LivePointer,
        target: str | None,
        entry: Entry | None,
        probes: int,
        drain: float,
        actor: str | None,
        kind: str,
        instances: Sequence[Instance],
        progress: Progress,
    ) -> CutoverResult:
        actor = actor or default_actor(self.settings.host)
        now = self._clock()
        new = pointer.flipped(target, actor, now, drain, kind)
        key = pointer_key(pointer.environment, pointer.service)
        try:
            if entry is None:
                self.store.create(key, new.to_json())
            else:
                self.store.compare_and_set(key, new.to_json(), entry.version)
        except VersionConflict as e:
            raise self._lost(pointer, target, kind) from e
        progress(f"{pointer.service}: {_name(pointer.live)} -> {_name(target)}; draining for {drain:g}s")
        drained = not self._stop.wait(drain) if drain else True
        return CutoverResult(
            pointer.service,
            pointer.environment,
            kind,
            pointer.live,
            target,
            actor,
            now,
            probes,
            drain,
            drained,
            tuple(i.entry.id for i in instances),
        )

    def _lost(self, pointer: LivePointer, target: str | None, kind: str) -> CutoverConflict:
        service, env = pointer.service, pointer.environment
        try:
            now = self.pointer(service, env)
        except (NotFound, StoreCorrupt):
            now = None
        by = f" (now {_name(now.live)}, set by {now.actor})" if now is not None else ""
        return CutoverConflict(
            pointer_key(env, service),
            f"{kind} of {service} to {_name(target)} lost: another cutover changed the live color "
            f"while this one was checking{by}; nothing was changed by this one; see: "
            f"portctl bluegreen status {service}",
        )


def _name(color: str | None) -> str:
    return color if color is not None else "the instances without a color"


def _check_window(seconds: float, field_name: str) -> None:
    if not 0 <= seconds <= 24 * 3600:
        raise InvalidInput(field_name, seconds, "a duration from 0s to 24h")


def _with_port(check: CheckSpec, port: int) -> CheckSpec:
    """``--check http://127.0.0.1:{port}/health``: the color's port is known only now."""
    if check.url and "{port}" in check.url:
        from dataclasses import replace

        return replace(check, url=check.url.replace("{port}", str(port)))
    return check


def parse_color_check(text: str | None, **options: Any) -> CheckSpec:
    """``--check`` for a color: the registry's forms, where an HTTP URL may say ``{port}`` for
    the color's port (known once it is allocated), e.g. ``http://127.0.0.1:{port}/health``."""
    from dataclasses import replace

    from portctl.registry.entries import parse_check

    spec = parse_check(text.replace("{port}", "1") if text else text, **options)
    if spec.kind == "http" and text and "{port}" in text:
        return replace(spec, url=text.strip())
    return spec


def parse_window(value: str, field_name: str) -> float:
    """A duration for ``--min-healthy`` and ``--drain``; ``0`` or ``0s`` switch the wait off."""
    from portctl.registry.entries import parse_duration

    if value in ("0", "0s", "0ms"):
        return 0.0
    return parse_duration(value, field_name)
