"""Blue-green port switching: two colors of a service on two ports, one live pointer.

Keys (under the store's own prefix)::

    bluegreen/<environment>/<service>/live     the live color and the history of flips (JSON)
    allocations/<host>/<environment>/<service>_<color>   each color's port (an allocation)
    registry/<environment>/<service>/<id>/entry           each color's instances, meta color=...

The pointer is one key, so one compare-and-set orders a flip and the record of it; a store
without compare-and-set is refused before anything is read. The pointer's record and its
encoding are :class:`portctl.records.LivePointer`'s; reading which color serves is
:mod:`portctl.routing.live`'s; the health gate and the flip are in
:mod:`portctl.routing._cutover`. This module is the use case: deploy a color, cut over to it,
roll back, and show both colors.

``live`` may be null: the service's instances without a color serve (a service that adopts
blue-green keeps serving from its plain instances until its first cutover).

The stored value keeps times as seconds since the epoch; the ``to_dict()`` of the records a
caller gets back (status, cutover results) gives them as ISO 8601 UTC strings.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from portctl import _validate
from portctl.backends.base import Capability, Entry, Expect, Store
from portctl.config.settings import Settings
from portctl.errors import (
    CapabilityMissing,
    InvalidInput,
    KeyExists,
    PortctlError,
    ServiceNotFound,
    VersionConflict,
)
from portctl.host.kernel import BindResult
from portctl.keys import pointer_key, pointer_prefix
from portctl.ports.allocator import AllocationResult, PortAllocator
from portctl.records import COLOR_FORM, COLORS, LivePointer, check_color
from portctl.registry.entries import CheckSpec, Instance, Registry
from portctl.routing._cutover import (
    CutoverConflict,
    CutoverRefused,
    HealthGate,
    Probe,
    Progress,
    check_window,
    default_actor,
    describe,
    write_flip,
)
from portctl.routing._results import BlueGreenStatus, ColorState, CutoverResult, Deployed
from portctl.routing.live import color_of, other, pointer_of, read_pointer

__all__ = [
    "DEPLOY_REQUIRED",
    "REQUIRED",
    "BlueGreen",
    "BlueGreenStatus",
    "ColorState",
    "CutoverConflict",
    "CutoverRefused",
    "CutoverResult",
    "Deployed",
    "parse_color_check",
    "parse_window",
]

REQUIRED = Capability.CAS
DEPLOY_REQUIRED = Capability.CAS | Capability.TXN  # the color's allocation and registration


def color_allocation(service: str, color: str) -> str:
    """The allocation that holds a color's port: ``api`` in green is ``api_green``."""
    name = f"{service}_{color}"
    if len(name) > 63:
        raise InvalidInput("NAME", service, "a service name of at most 57 characters for blue-green")
    return name


def require(store: Store, needed: Capability) -> None:
    """Refuse a store that cannot do what blue-green needs, saying why it needs it."""
    try:
        store.require(needed)
    except CapabilityMissing as e:
        hint = "blue-green writes its live pointer with compare-and-set; the file, etcd and consul stores can"
        raise CapabilityMissing(store.url, e.capability, hint) from None


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
        self._gate = HealthGate(self.registry, probe, self._stop, clock)

    # Reading ------------------------------------------------------------------------------

    def _env(self, environment: str | None) -> str:
        return self.settings.policy.environment(environment)

    def pointer(self, service: str, environment: str | None = None) -> LivePointer | None:
        env = self._env(environment)
        return read_pointer(self.store, env, _validate.service_name(service, "NAME"))

    def status(self, service: str, environment: str | None = None) -> BlueGreenStatus:
        env = self._env(environment)
        pointer = self.pointer(service, env)
        everything = self.registry.instances(service, env)
        colored = [i for i in everything if color_of(i.entry) is not None]
        if pointer is None and not colored:
            known = sorted({k.split("/")[2] for k in (e.key for e in self.store.list(pointer_prefix(env)))})
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
            guard = Expect(pointer_key(env, service), pointer.version if pointer is not None else None)
            try:
                instance = self.registry.register(
                    service,
                    port=port,
                    address=None if address is None else _validate.host(address, "address"),
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
                "check", check.url, "an HTTP URL on the color's port: write it as http://HOST:{port}/PATH"
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
        if self._gate.instances(service, env, None):
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
        check_window(min_healthy, "min_healthy")
        check_window(drain, "drain")
        entry = self.store.get(pointer_key(env, service))
        pointer = pointer_of(entry) if entry else LivePointer(service, env, None)
        live = pointer.live
        if to is None:
            if live is None:
                raise InvalidInput("to", None, f"{COLOR_FORM}: no color of {service} is live in {env} yet")
            to = other(live)
        target = check_color(to, "to")
        if target == live:
            raise CutoverRefused(
                f"{target} is already the live color of {service} in {env}; nothing to do "
                f"(to switch back, cut over to {other(target)} or run: portctl bluegreen rollback {service})"
            )
        instances = self._gate.deployed(service, env, target)
        probes = self._gate.window(service, env, target, min_healthy, progress)
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
        check_window(drain, "drain")
        entry = self.store.get(pointer_key(env, service))
        pointer = pointer_of(entry) if entry else None
        if entry is None or pointer is None or not pointer.history:
            raise CutoverRefused(
                f"{service} has no cutover to roll back in {env} (its blue-green history is empty); "
                f"to change the live color run: portctl bluegreen cutover {service} --to COLOR"
            )
        target = pointer.history[-1].from_color
        instances = self._gate.deployed(service, env, target)
        passed, probes = self._gate.round(instances, progress)
        if not passed:
            raise CutoverRefused(
                f"rollback of {service} to {describe(target)} refused: none of its {len(instances)} "
                f"instance(s) passed its check; start it, then run the rollback again"
            )
        return self._flip(pointer, target, entry, probes, drain, actor, "rollback", instances, progress)

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
        write_flip(self.store, pointer, pointer.flipped(target, actor, now, drain, kind), entry, kind)
        progress(
            f"{pointer.service}: {describe(pointer.live)} -> {describe(target)}; draining for {drain:g}s"
        )
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

    from portctl.registry.checks import parse_check

    spec = parse_check(text.replace("{port}", "1") if text else text, **options)
    if spec.kind == "http" and text and "{port}" in text:
        return replace(spec, url=text.strip())
    return spec


def parse_window(value: str, field_name: str) -> float:
    """A duration for ``--min-healthy`` and ``--drain``; ``0`` or ``0s`` switch the wait off."""
    from portctl.registry.checks import parse_duration

    if value in ("0", "0s", "0ms"):
        return 0.0
    return parse_duration(value, field_name)
