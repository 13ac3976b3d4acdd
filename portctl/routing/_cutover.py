"""The cutover machinery: the health gate a color must pass, and the flip of its pointer.

A cutover is health-gated: every instance of the target color is probed with its own check
(:func:`portctl.registry.health.run_check`; TTL checks are read from the store) throughout the
``min_healthy`` window and once more when the window closes, right before the flip. One failed
probe refuses the cutover: a target that flaps is not one to send traffic to, and waiting for it
to settle would hide the flapping. Once every probe passed, the passes are recorded as the agent
would record them (enough for flap damping), so the new color's stored health is current when
resolvers switch to it; a refused cutover writes nothing.

The flip is one compare-and-set on the pointer's version read before the gate, so of two racing
cutovers one wins and the other raises :class:`CutoverConflict`.
"""

from __future__ import annotations

import getpass
import os
import threading
from collections.abc import Callable, Iterable, Sequence

from portctl.backends.base import Entry, Store
from portctl.errors import InvalidInput, NotFound, PortctlError, StoreCorrupt, VersionConflict
from portctl.keys import pointer_key
from portctl.records import LivePointer
from portctl.registry.entries import Instance, Registry, ServiceEntry, Status
from portctl.routing.live import color_of, read_pointer

__all__ = [
    "PROBE_EVERY",
    "CutoverConflict",
    "CutoverRefused",
    "HealthGate",
    "Probe",
    "Progress",
    "check_window",
    "default_actor",
    "describe",
    "write_flip",
]

PROBE_EVERY = 1.0  # seconds between probe rounds in the healthy window (shorter windows: 5 rounds)

Probe = Callable[[ServiceEntry], tuple[Status, str]]
Progress = Callable[[str], None]


class CutoverRefused(PortctlError):
    """A cutover or rollback that cannot go ahead; nothing was changed."""

    code = "cutover_refused"


class CutoverConflict(VersionConflict):
    """Another cutover changed the live color while this one was checking: it lost."""

    code = "cutover_conflict"


def describe(color: str | None) -> str:
    """A color as a message names it; None is the uncolored instances."""
    return color if color is not None else "the instances without a color"


def check_window(seconds: float, field_name: str) -> None:
    if not 0 <= seconds <= 24 * 3600:
        raise InvalidInput(field_name, seconds, "a duration from 0s to 24h")


def default_actor(host: str) -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = str(os.getuid())
    return f"{user}@{host}"


class HealthGate:
    """Probes the instances of a color: a healthy window before a cutover, one round before a
    rollback. ``stop`` interrupts a window (nothing was written)."""

    def __init__(
        self, registry: Registry, probe: Probe, stop: threading.Event, clock: Callable[[], float]
    ) -> None:
        self.registry = registry
        self._probe_check = probe
        self._stop = stop
        self._clock = clock

    def instances(self, service: str, env: str, color: str | None) -> list[Instance]:
        """The registered instances of one color of ``service`` (None: the uncolored ones)."""
        return [i for i in self.registry.instances(service, env) if color_of(i.entry) == color]

    def deployed(self, service: str, env: str, color: str | None) -> list[Instance]:
        """Like :meth:`instances`, but a color with no instance is refused."""
        found = self.instances(service, env, color)
        if not found:
            raise CutoverRefused(
                f"{describe(color)} of {service} is not deployed in {env} (no instance registered); "
                f"deploy it first: portctl bluegreen deploy {service} --color {color or 'COLOR'}"
            )
        return found

    def window(self, service: str, env: str, target: str, window: float, progress: Progress) -> int:
        """Probe every instance of ``target`` in rounds until ``window`` seconds have passed;
        the last round runs when the window has closed. Returns the number of probes. Results
        are recorded only once all passed: a refused cutover leaves the store as it was."""
        every = min(PROBE_EVERY, window / 5) if window else 0.0
        start = self._clock()
        passes: dict[str, tuple[Instance, int, str]] = {}
        shown = -1
        while True:
            instances = self.deployed(service, env, target)  # re-read: one may have been added
            elapsed = self._clock() - start
            for instance in instances:
                status, output = self.probe(instance)
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

    def round(self, instances: Sequence[Instance], progress: Progress) -> tuple[bool, int]:
        """One probe of each instance; whether any passed, and how many were probed."""
        passes = []
        for instance in instances:
            status, output = self.probe(instance)
            progress(f"{instance.entry.id}: {status.value} ({output})")
            if status == Status.PASSING:
                passes.append((instance, 1, output))
        self._record_passes(passes)
        return bool(passes), len(instances)

    def probe(self, instance: Instance) -> tuple[Status, str]:
        """Run an instance's check now; a TTL check is read from the store instead."""
        kind = instance.entry.check.kind
        if kind == "none":
            return Status.PASSING, "no check"
        if kind == "ttl":
            fresh = self.registry.instances(instance.entry.service, instance.entry.environment)
            now = [i for i in fresh if i.entry.id == instance.entry.id]
            return (now[0].status, now[0].output) if now else (Status.CRITICAL, "deregistered")
        return self._probe_check(instance.entry)

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
        for instance in self.deployed(service, env, target):
            if instance.status == Status.CRITICAL:
                needed = instance.entry.check.successes_before_passing
                raise CutoverRefused(
                    f"cutover of {service} to {target} refused: {instance.entry.id} passed its checks but "
                    f"its recorded health is still critical (it needs {needed} passing checks in a row); "
                    f"run the cutover again with a longer --min-healthy"
                )


def write_flip(store: Store, pointer: LivePointer, new: LivePointer, entry: Entry | None, kind: str) -> None:
    """Write ``new`` over ``pointer`` with compare-and-set on the version ``entry`` was read
    at (create it if there was none); a lost race raises :class:`CutoverConflict`."""
    key = pointer_key(pointer.environment, pointer.service)
    try:
        if entry is None:
            store.create(key, new.to_json())
        else:
            store.compare_and_set(key, new.to_json(), entry.version)
    except VersionConflict as e:
        raise _lost(store, pointer, new.live, kind) from e


def _lost(store: Store, pointer: LivePointer, target: str | None, kind: str) -> CutoverConflict:
    service, env = pointer.service, pointer.environment
    try:
        now = read_pointer(store, env, service)
    except (NotFound, StoreCorrupt):
        now = None
    by = f" (now {describe(now.live)}, set by {now.actor})" if now is not None else ""
    return CutoverConflict(
        pointer_key(env, service),
        f"{kind} of {service} to {describe(target)} lost: another cutover changed the live color "
        f"while this one was checking{by}; nothing was changed by this one; see: "
        f"portctl bluegreen status {service}",
    )
