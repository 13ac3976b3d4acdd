"""Router and monitoring configuration rendered from the registry.

* **nginx**: one ``upstream <service> { server HOST:PORT; ... }`` per service, for a file
  included in ``http {}`` (``proxy_pass http://<service>;``).
* **haproxy**: one ``backend <service>`` per service with a ``server`` line per instance, for a
  file given to haproxy as another ``-f`` after the main config.
* **prometheus**: ``file_sd_configs`` targets (JSON), one group per service and color.

Routers get what resolvers get: a blue-green service's live color, others' registered
instances; healthy ones only (passing or warning). A service with none keeps its upstream with
one placeholder server marked ``down`` (nginx refuses an empty upstream; clients get a 502
that says what is wrong, not a config that no longer loads). Prometheus gets every instance,
healthy or not, of every color, labelled ``color`` and ``live``, so dashboards show the idle
color and the dead instances too.

:func:`install` writes a rendering atomically and runs the reload command; when the reload
fails, the previous file is put back, so the router keeps (and, on its next reload, loads) the
config it was running. :class:`Follower` re-renders on every change of the store with a quiet
period: a burst of changes (a deploy registering many instances, a cutover recording probe
results) causes one render and one reload.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from portctl.backends.base import Capability, Entry, Store
from portctl.errors import InvalidInput, PortctlError, StoreCorrupt, StoreError
from portctl.keys import pointer_prefix, registry_prefix
from portctl.ports.documents import write_atomically
from portctl.registry.entries import Instance, Status, instances_from
from portctl.routing.live import color_of, live_pointers, serving

__all__ = [
    "TARGETS",
    "Follower",
    "Installed",
    "ReloadFailed",
    "install",
    "reload_command",
    "render",
    "render_entries",
]

TARGETS = ("nginx", "haproxy", "prometheus")
TARGET_FORM = "nginx, haproxy or prometheus"
PLACEHOLDER = "127.0.0.1:9"  # the discard port: never a real backend, marked down anyway
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}
RELOAD_TIMEOUT = 60.0


class ReloadFailed(PortctlError):
    """The reload command failed; the previous file was put back."""

    code = "reload_failed"


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise InvalidInput("TARGET", target, TARGET_FORM)
    return target


@dataclass(frozen=True)
class Server:
    name: str  # the instance id
    host: str
    port: int
    status: Status
    color: str | None
    live: bool

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Backend:
    service: str
    live_color: str | None
    servers: tuple[Server, ...]  # routers: the healthy serving ones; prometheus: all


def _server(instance: Instance, this_host: str, live: bool) -> Server:
    e = instance.entry
    host = e.address
    if host in _WILDCARDS:
        host = _WILDCARDS[host] if e.host == this_host else e.host
    return Server(e.id, host.strip("[]"), e.port, instance.status, color_of(e), live)


def _grouped(entries: Sequence[Entry], environment: str, now: float) -> dict[str, list[Instance]]:
    prefix = registry_prefix(environment)
    by_service: dict[str, list[Instance]] = {}
    # A key that does not parse is left out (and a bad pointer serves nothing), so one bad
    # key never stops the routes of every other service.
    for instance in instances_from([e for e in entries if e.key.startswith(prefix)], now, corrupt=[]):
        by_service.setdefault(instance.entry.service, []).append(instance)
    return by_service


def backends(
    entries: Sequence[Entry], environment: str, this_host: str, now: float, *, every: bool = False
) -> list[Backend]:
    """Per service: with ``every=False`` the serving instances that are healthy (what a router
    sends traffic to); with ``every=True`` all of them, of every color (what monitoring scrapes)."""
    bad: dict[str, StoreCorrupt] = {}
    pointers = live_pointers(entries, environment, bad)
    out = []
    for service, group in sorted(_grouped(entries, environment, now).items()):
        if service in bad:
            out.append(Backend(service, None, ()))
            continue
        pointer = pointers.get(service)
        live_ids = {i.entry.id for i in serving(group, pointer)}
        chosen = (
            group if every else [i for i in group if i.entry.id in live_ids and i.status != Status.CRITICAL]
        )
        servers = tuple(_server(i, this_host, i.entry.id in live_ids) for i in chosen)
        out.append(Backend(service, pointer.live if pointer else None, servers))
    return out


def _header(comment: str, environment: str, source: str) -> list[str]:
    return [f"{comment} Rendered by portctl from {source or 'the registry'} ({environment}); do not edit."]


def _nginx(items: list[Backend], environment: str, source: str) -> str:
    lines = _header("#", environment, source)
    for b in items:
        lines += ["", f"upstream {b.service} {{"]
        if b.live_color:
            lines.append(f"    # live color: {b.live_color}")
        for s in b.servers:
            lines.append(f"    server {s.address};  # {s.name} {s.status.value}")
        if not b.servers:
            lines.append(f"    server {PLACEHOLDER} down;  # no healthy instance")
        lines.append("}")
    return "\n".join(lines) + "\n"


def _haproxy(items: list[Backend], environment: str, source: str) -> str:
    lines = _header("#", environment, source)
    for b in items:
        lines += ["", f"backend {b.service}"]
        if b.live_color:
            lines.append(f"    # live color: {b.live_color}")
        lines.append("    balance roundrobin")
        for s in b.servers:
            lines.append(f"    server {s.name} {s.address}  # {s.status.value}")
        if not b.servers:
            lines.append("    # no healthy instance: haproxy answers 503")
    return "\n".join(lines) + "\n"


def _prometheus(items: list[Backend], environment: str) -> str:
    groups = []
    for b in items:
        colors: dict[str | None, list[Server]] = {}
        for s in b.servers:
            colors.setdefault(s.color, []).append(s)
        for color, servers in sorted(colors.items(), key=lambda kv: kv[0] or ""):
            labels = {"job": b.service, "service": b.service, "environment": environment}
            if color is not None:
                labels["color"] = color
            labels["live"] = "true" if servers[0].live else "false"
            groups.append({"targets": sorted(s.address for s in servers), "labels": labels})
    return json.dumps(groups, indent=2, sort_keys=True) + "\n"


def render_entries(
    target: str,
    entries: Iterable[Entry],
    environment: str,
    this_host: str,
    *,
    source: str = "",
    now: float | None = None,
) -> str:
    """The ``target`` config the store's ``entries`` give (pure: no I/O)."""
    check_target(target)
    kept = list(entries)
    when = time.time() if now is None else now
    if target == "prometheus":
        return _prometheus(backends(kept, environment, this_host, when, every=True), environment)
    items = backends(kept, environment, this_host, when)
    return (_nginx if target == "nginx" else _haproxy)(items, environment, source)


def read_entries(store: Store, environment: str) -> list[Entry]:
    return [*store.list(registry_prefix(environment)), *store.list(pointer_prefix(environment))]


def render(store: Store, target: str, environment: str, this_host: str) -> str:
    """The ``target`` config for one environment of ``store``, read now."""
    check_target(target)
    return render_entries(target, read_entries(store, environment), environment, this_host, source=store.url)


# Writing and reloading ----------------------------------------------------------------------


def reload_command(text: str | None) -> list[str] | None:
    """``--reload 'nginx -s reload'``: split as a shell would split words, run without a shell."""
    if text is None:
        return None
    import shlex
    import shutil

    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise InvalidInput("reload", text, f"a command line with balanced quotes ({e})") from None
    if not argv:
        raise InvalidInput("reload", text, "a command such as 'nginx -s reload'")
    if shutil.which(argv[0]) is None:
        raise InvalidInput("reload", argv[0], "a program on PATH or a path to one")
    return argv


@dataclass(frozen=True)
class Installed:
    path: str
    changed: bool  # False: the file already said this; nothing was written or reloaded
    reloaded: bool
    reload_seconds: float | None = None


def install(path: str, text: str, reload: Sequence[str] | None = None) -> Installed:
    """Write ``text`` to ``path`` atomically when it differs, then run ``reload``. A reload that
    fails (non-zero exit, no such program, timeout) puts the previous file back (or removes the
    file, if there was none) and raises :class:`ReloadFailed`."""
    try:
        with open(path, "rb") as f:
            previous: bytes | None = f.read()
    except FileNotFoundError:
        previous = None
    except OSError as e:
        raise InvalidInput("output", path, f"a file portctl can read and write ({e.strerror})") from None
    if previous == text.encode():
        return Installed(path, False, False)
    mode = os.stat(path).st_mode & 0o777 if previous is not None else 0o644
    try:
        write_atomically(path, text, mode=mode)
    except OSError as e:
        raise InvalidInput("output", path, f"a file in a writable folder ({e.strerror})") from None
    if not reload:
        return Installed(path, True, False)
    started = time.perf_counter()
    problem = _run_reload(reload)
    if problem is None:
        return Installed(path, True, True, time.perf_counter() - started)
    if previous is None:
        os.unlink(path)
        kept = f"{path} was removed again"
    else:
        write_atomically(path, previous.decode(), mode=mode)
        kept = f"{path} was put back as it was"
    import shlex

    raise ReloadFailed(f"reload command failed ({problem}): {shlex.join(reload)}; {kept}")


def _run_reload(argv: Sequence[str]) -> str | None:
    """None on success, else a one-line reason."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=RELOAD_TIMEOUT, check=False)
    except FileNotFoundError:
        return f"{argv[0]}: no such program"
    except subprocess.TimeoutExpired:
        return f"still running after {RELOAD_TIMEOUT:g}s"
    except OSError as e:
        return f"{argv[0]}: {e.strerror}"
    if done.returncode == 0:
        return None
    said = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
    return f"exit {done.returncode}" + (f": {said[-1]}" if said else "")


# Following the store ------------------------------------------------------------------------

Event = Callable[[str], None]

# The longest one watch call of a follower blocks: a set ``stop`` ends the follower within it.
STOP_LATENCY = 0.2


class Follower:
    """Re-render ``target`` into ``path`` whenever the store changes, and reload the router.

    A change starts a quiet period of ``quiet`` seconds; every further change restarts it, and
    when it passes with no change the config is rendered once. ``max_wait`` bounds the delay
    under a constant stream of changes. A rendering equal to the file is not written and not
    reloaded (health writes that change nothing a router sees cost nothing). The config is also
    rendered every ``heartbeat`` seconds, so a TTL that ran out without any write still takes
    its instance out. A store that cannot be read keeps the last config in place and is retried;
    a failed reload puts the previous file back and is reported, and the next change tries again.
    ``on_event`` receives one line per render, reload or error (the CLI prints them).
    """

    def __init__(
        self,
        store: Store,
        target: str,
        environment: str,
        this_host: str,
        path: str,
        *,
        reload: Sequence[str] | None = None,
        quiet: float = 1.0,
        max_wait: float = 10.0,
        heartbeat: float = 5.0,
        on_event: Event | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        check_target(target)
        self.store, self.target, self.environment, self.host = store, target, environment, this_host
        self.path, self.reload = path, reload
        self.quiet, self.max_wait, self.heartbeat = quiet, max(max_wait, quiet), heartbeat
        self.on_event = on_event or (lambda _: None)
        self.stop = stop or threading.Event()
        self.reloads = 0
        self.failures = 0
        self._prefixes = (registry_prefix(environment), pointer_prefix(environment))
        self._refused: str | None = None  # the last rendering whose reload failed

    def once(self, *, retry_refused: bool = True) -> Installed:
        """Render and install now. Without ``retry_refused``, a rendering whose reload already
        failed is not tried again (the heartbeat must not reload a broken router every time)."""
        text = render(self.store, self.target, self.environment, self.host)
        if not retry_refused and text == self._refused:
            return Installed(self.path, False, False)
        try:
            done = install(self.path, text, self.reload)
        except ReloadFailed:
            self._refused = text
            raise
        self._refused = None
        return done

    def run(self) -> None:
        """Render now, then follow the store until ``stop`` is set."""
        position = self._render_now()
        first_change: float | None = None
        last_change = 0.0
        last_render = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if first_change is not None:
                due = min(last_change + self.quiet, first_change + self.max_wait)
            else:
                due = last_render + self.heartbeat
            if now >= due:
                position = self._render_now(retry_refused=first_change is not None) or position
                first_change, last_render = None, time.monotonic()
                continue
            try:
                changed, position = self._wait(position, due - now)
            except StoreError as e:
                self.on_event(f"store unreachable, keeping {self.path} as it is: {e}")
                self.stop.wait(1.0)
                continue
            if changed:
                last_change = time.monotonic()
                first_change = first_change if first_change is not None else last_change

    def _wait(self, position: str | None, timeout: float) -> tuple[bool, str | None]:
        if position is None or Capability.WATCH not in self.store.capabilities:
            self.stop.wait(min(timeout, 1.0))
            return position is None, position
        # Watch in short slices, so a stop (Ctrl-C, SIGTERM) is seen between two of them.
        batch = self.store.watch("", position, timeout=max(0.01, min(timeout, STOP_LATENCY)))
        changed = batch.reset or any(c.key.startswith(self._prefixes) for c in batch.changes)
        return changed, batch.position

    def _render_now(self, *, retry_refused: bool = True) -> str | None:
        """Render and install; the store's position read before it, or None if the store could
        not be read (a failed reload waits for the next change instead)."""
        try:
            position = self.store.position() if Capability.WATCH in self.store.capabilities else ""
        except PortctlError as e:
            self.on_event(f"cannot read the store: {e}")
            return None
        try:
            done = self.once(retry_refused=retry_refused)
        except ReloadFailed as e:
            self.failures += 1
            self.on_event(str(e))
            return position
        except PortctlError as e:
            self.on_event(f"cannot render {self.path}: {e}")
            return None
        if done.reloaded:
            self.reloads += 1
            self.on_event(f"rendered {self.path} and reloaded in {done.reload_seconds or 0.0:.2f}s")
        elif done.changed:
            self.on_event(f"rendered {self.path}")
        return position
