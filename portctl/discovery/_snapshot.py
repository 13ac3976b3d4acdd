"""A resolver's snapshot: one environment's registry, allocation and blue-green keys, turned
into a ready answer per service name (and per service and color). Pure (no I/O): the resolver
rebuilds it on every store change and swaps it in whole, so a lookup is one dict access.

A service with a blue-green pointer answers with its live color's instances; each color
also answers on its own (``color=``), for smoke tests of the idle one. A service that never
used blue-green has neither, and answers as before.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from portctl import _validate
from portctl.backends.base import Entry
from portctl.errors import InvalidInput, Kind, StoreCorrupt
from portctl.keys import allocation_key, allocations_prefix, pointer_key, pointer_prefix, registry_prefix
from portctl.ports.allocator import Allocation
from portctl.records import COLORS, LivePointer
from portctl.registry.entries import Instance, Status, instances_from
from portctl.routing.live import color_of, live_pointers, not_serving_reason, serving

SERVICE_HOST_ENV = "SERVICE_HOST"
# An allocation names a port on this host, not an address; 127.0.0.1 is also what a registration
# without --address records, so a service's URL keeps its form when it goes from allocated to
# registered, and no client tries ::1 first where "localhost" resolves to both.
ALLOCATION_ADDRESS = "127.0.0.1"
DEFAULT_SCHEMES: Mapping[str, str] = {"postgres": "postgresql", "redis": "redis", "nginx_https": "https"}
DEFAULT_SCHEME = "http"
_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432, "redis": 6379}
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}
_RANK = {Status.PASSING: 0, Status.WARNING: 1, Status.CRITICAL: 2}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,31}$")
SCHEME_FORM = "a URL scheme such as http, https, postgresql or redis"
_OVERRIDE = re.compile(r"^PORTCTL_([A-Z0-9_]+)_URL$")
_schemes_seen: set[str] = set()  # schemes already validated: the hot path checks them once


def checked_scheme(scheme: str) -> str:
    if scheme in _schemes_seen:
        return scheme
    if not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme):
        raise InvalidInput(Kind("scheme"), scheme, SCHEME_FORM)
    if len(_schemes_seen) < 256:
        _schemes_seen.add(scheme)
    return scheme


def service_host(environ: Mapping[str, str]) -> str | None:
    """``SERVICE_HOST``, checked: a host name or an IP address (IPv6 with or without brackets)."""
    value = environ.get(SERVICE_HOST_ENV, "").strip()
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value.removeprefix("[").removesuffix("]")))
    except ValueError:
        return _validate.host(value, SERVICE_HOST_ENV)


def override_variable(name: str) -> str:
    """The twelve-factor override of a service's URL: ``admin_ui`` -> ``PORTCTL_ADMIN_UI_URL``."""
    return "PORTCTL_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_URL"


@dataclass(frozen=True, slots=True)
class Answer:
    """Where one service is: its URL with its own scheme, and the parts to build others."""

    url: str
    host: str
    port: int
    netloc: str  # host:port, an IPv6 host in brackets
    verbatim: bool = False  # an environment override: returned as given, whatever the scheme asked

    def with_scheme(self, scheme: str) -> str:
        if self.verbatim:
            return self.url
        return f"{checked_scheme(scheme)}://{self.netloc}"


def address_answer(host: str, port: int, scheme: str) -> Answer:
    host = host.strip("[]")
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Answer(f"{scheme}://{netloc}", host, port, netloc)


def override_answer(name: str, environ: Mapping[str, str]) -> Answer | None:
    """The answer ``PORTCTL_<NAME>_URL`` gives, if set; InvalidInput if it is not a usable URL."""
    variable = override_variable(name)
    url = environ.get(variable)
    if not url:
        return None
    expected = "a URL with a host and a port, e.g. http://10.0.0.5:8080"
    if not _validate.one_line(url) or any(ch.isspace() for ch in url):  # urlsplit drops tabs
        raise InvalidInput(variable, url, f"{expected}, on one line with no spaces")
    try:
        parts = urlsplit(url)
        written = _written_port(parts.netloc, f"{variable} port")
    except ValueError:
        raise InvalidInput(variable, url, expected) from None
    port = _DEFAULT_PORTS.get(parts.scheme) if written is None else written
    if not parts.scheme or not parts.hostname or port is None:
        raise InvalidInput(variable, url, expected)
    netloc = f"[{parts.hostname}]:{port}" if ":" in parts.hostname else f"{parts.hostname}:{port}"
    return Answer(url, parts.hostname, port, netloc, verbatim=True)


def _written_port(netloc: str, field: str) -> int | None:
    """The port after the host; None when none is written (or ':' alone: the scheme's default).
    Port 0 and anything but ASCII digits are refused (InvalidInput, a ValueError)."""
    address = netloc.rpartition("@")[2]
    if address.startswith("[") and "]" not in address:
        raise ValueError(address)
    tail = address.rpartition("]")[2] if address.startswith("[") else address
    text = tail.rpartition(":")[2] if ":" in tail else ""
    return _validate.port(text, field) if text else None


@dataclass(frozen=True)
class Context:
    """What shapes the answers besides the store: environment, host, environment variables."""

    environment: str
    host: str  # this host's name in the store (Settings.host), whose allocations count
    service_host: str | None = None  # SERVICE_HOST: the address every answer uses
    environ: Mapping[str, str] = field(default_factory=dict)  # the PORTCTL_*_URL variables

    @classmethod
    def of(cls, environment: str, host: str, environ: Mapping[str, str]) -> Context:
        overrides = {k: v for k, v in environ.items() if _OVERRIDE.match(k)}
        return cls(environment, host, service_host(environ), overrides)

    def prefixes_of(self, names: Iterable[str]) -> tuple[str, ...]:
        """The store keys the answers for ``names`` come from, and no others: each one's
        registry, live pointer and allocation on this host."""
        env, found = self.environment, []
        for name in names:
            found += [registry_prefix(env, name), allocation_key(self.host, env, name)]
            found.append(pointer_key(env, name))
        return tuple(found)

    @property
    def prefixes(self) -> tuple[str, str, str]:
        """The store keys a resolver keeps: its environment's registry and blue-green pointers,
        and its host's allocations."""
        env = self.environment
        return registry_prefix(env), allocations_prefix(self.host, env), pointer_prefix(env)


@dataclass(frozen=True, slots=True)
class View:
    """One immutable snapshot of answers; swapped whole, never changed."""

    healthy: Mapping[str, Answer]  # answers with healthy_only=True
    every: Mapping[str, Answer]  # answers with healthy_only=False
    unhealthy: Mapping[str, str]  # service -> why no instance is healthy (the error's "where")
    known: tuple[str, ...]  # registered or allocated in this environment
    deadline: float = math.inf  # the time a lookup must take the slow path (TTL expiry, stale limit)
    colors_healthy: Mapping[tuple[str, str], Answer] = field(default_factory=dict)  # (service, color)
    colors_every: Mapping[tuple[str, str], Answer] = field(default_factory=dict)
    colors_unhealthy: Mapping[tuple[str, str], str] = field(default_factory=dict)
    stale_since: float | None = None  # when the store was last read, while it is unreachable
    error: Exception | None = None  # why it is unreachable

    def went_stale(self, since: float, max_stale: float, error: Exception) -> View:
        """This view, served as the last known good while the store is unreachable."""
        since = since if self.stale_since is None else self.stale_since
        return replace(self, deadline=since + max_stale, stale_since=since, error=error)


EMPTY = View({}, {}, {}, ())  # before the first read


def build_view(entries: Iterable[Entry], context: Context, now: float) -> View:
    """The answers the store's entries give; health is judged as of ``now``."""
    registry_prefix, allocation_prefix, bluegreen_prefix = context.prefixes
    kept = list(entries)
    registered = [e for e in kept if e.key.startswith(registry_prefix)]
    allocations = _allocations(e for e in kept if e.key.startswith(allocation_prefix))
    # One bad key makes its own service unanswerable, naming the key; the others still answer.
    bad_pointers: dict[str, StoreCorrupt] = {}
    pointers = live_pointers(
        (e for e in kept if e.key.startswith(bluegreen_prefix)), context.environment, bad_pointers
    )
    by_service: dict[str, list[Instance]] = {}
    for instance in instances_from(registered, now, corrupt=[]):
        by_service.setdefault(instance.entry.service, []).append(instance)
    healthy: dict[str, Answer] = {}
    every: dict[str, Answer] = {}
    unhealthy: dict[str, str] = {}
    colors = _Colors()
    for service, group in by_service.items():
        if service in bad_pointers:
            unhealthy[service] = str(bad_pointers[service])
            continue
        colors.add(service, group, context)
        pointer = pointers.get(service)
        live = serving(group, pointer)
        if not live:
            unhealthy[service] = not_serving_reason(service, group, pointer, context.environment)
            continue
        best = min(live, key=lambda i: (_RANK[i.status], i.entry.id))
        every[service] = _instance_answer(best, context)
        if best.status == Status.CRITICAL:
            unhealthy[service] = _none_healthy(live, context.environment, pointer)
        else:
            healthy[service] = every[service]
    for alloc in allocations:
        if alloc.service not in by_service:
            address = context.service_host or ALLOCATION_ADDRESS
            answer = address_answer(address, alloc.port, _default_scheme(alloc.service))
            healthy[alloc.service] = every[alloc.service] = answer
    known = tuple(sorted(set(by_service) | {a.service for a in allocations}))
    _apply_overrides(known, context, healthy, every, unhealthy)
    return View(
        healthy,
        every,
        unhealthy,
        known,
        _next_expiry(by_service, now),
        colors.healthy,
        colors.every,
        colors.unhealthy,
    )


class _Colors:
    """Each color of each blue-green service answers on its own, whether live or not."""

    def __init__(self) -> None:
        self.healthy: dict[tuple[str, str], Answer] = {}
        self.every: dict[tuple[str, str], Answer] = {}
        self.unhealthy: dict[tuple[str, str], str] = {}

    def add(self, service: str, group: list[Instance], context: Context) -> None:
        for color in COLORS:
            mine = [i for i in group if color_of(i.entry) == color]
            if not mine:
                continue
            best = min(mine, key=lambda i: (_RANK[i.status], i.entry.id))
            key = (service, color)
            self.every[key] = _instance_answer(best, context)
            if best.status == Status.CRITICAL:
                self.unhealthy[key] = f"healthy in color {color} ({_count(mine)}, all critical)"
            else:
                self.healthy[key] = self.every[key]


def _allocations(entries: Iterable[Entry]) -> list[Allocation]:
    found = []
    for entry in entries:
        with contextlib.suppress(StoreCorrupt):  # a bad record: its service is just not known
            found.append(_allocation(entry))
    return found


def _allocation(entry: Entry) -> Allocation:
    try:
        return Allocation.from_dict(json.loads(entry.value), entry.key)
    except (ValueError, RecursionError) as e:  # InvalidInput is a ValueError too; JSON too deep
        raise StoreCorrupt(entry.key, f"the allocation record is not valid ({e})") from e


def _instance_answer(instance: Instance, context: Context) -> Answer:
    entry = instance.entry
    address = context.service_host or _reachable(entry.address, entry.host, context.host)
    scheme = entry.meta.get("scheme", "")
    if not _SCHEME.fullmatch(scheme):
        scheme = _default_scheme(entry.service)
    return address_answer(address, entry.port, scheme)


def _reachable(address: str, instance_host: str, this_host: str) -> str:
    """A wildcard address means every interface of the instance's host: loopback here, else
    that host's name."""
    if address not in _WILDCARDS:
        return address
    return _WILDCARDS[address] if instance_host == this_host else instance_host


def _default_scheme(service: str) -> str:
    return DEFAULT_SCHEMES.get(service, DEFAULT_SCHEME)


def _count(group: list[Instance]) -> str:
    return f"{len(group)} instance{'s' if len(group) != 1 else ''} registered"


def _none_healthy(group: list[Instance], environment: str, pointer: LivePointer | None = None) -> str:
    where = f"healthy in {environment}"
    if pointer is not None and pointer.live is not None:
        where += f" in its live color {pointer.live}"
    return f"{where} ({_count(group)}, {'all' if len(group) != 1 else 'it is'} critical)"


def _apply_overrides(
    known: tuple[str, ...],
    context: Context,
    healthy: dict[str, Answer],
    every: dict[str, Answer],
    unhealthy: dict[str, str],
) -> None:
    """PORTCTL_<NAME>_URL wins over the store. A malformed one is left out here, so a lookup of
    that name takes the slow path and raises InvalidInput naming the variable."""
    names = set(known)
    for variable in context.environ:
        match = _OVERRIDE.match(variable)
        name = match.group(1).lower() if match else ""
        if name and _valid_name(name):
            names.add(name)
    for name in names:
        try:
            answer = override_answer(name, context.environ)
        except InvalidInput:
            healthy.pop(name, None)
            every.pop(name, None)
            continue
        if answer is not None:
            healthy[name] = every[name] = answer
            unhealthy.pop(name, None)


def _valid_name(name: str) -> bool:
    try:
        _validate.service_name(name)
    except InvalidInput:
        return False
    return True


def _next_expiry(by_service: Mapping[str, list[Instance]], now: float) -> float:
    """When the first healthy TTL instance turns critical with no renewal: the answers must be
    rebuilt then, though the store itself does not change."""
    expiries = [
        i.health.expires_at
        for group in by_service.values()
        for i in group
        if i.status != Status.CRITICAL and i.health.expires_at is not None and i.health.expires_at > now
    ]
    return min(expiries, default=math.inf)
