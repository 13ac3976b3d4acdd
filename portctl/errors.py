"""The one exception tree of portctl.

Every error the library raises on purpose is a :class:`PortctlError`; the CLI catches that
class only and maps each branch to an exit code::

    PortctlError
    ├── InvalidInput(field, value, expected)      exit 2  bad name, port, URL, config value
    │   ├── CapabilityMissing(store, capability)  exit 2  store cannot do what was asked
    │   └── ExtraMissing(store, module, install)  exit 2  the store's client library is not installed
    ├── NotFound                                  exit 1
    │   └── ServiceNotFound(name, known)
    ├── PortConflict(port, protocol, holder)      exit 1  port taken in the store or on the host
    ├── RangeExhausted(service, type)             exit 1  no free port left to choose
    ├── VersionConflict(key)                      exit 1  compare-and-set lost a race
    │   └── KeyExists(key)                                create-if-absent found the key
    ├── StoreError                                exit 3
    │   ├── StoreUnavailable                              server down, file unreadable
    │   │   └── StoreTimeout
    │   ├── StoreDenied(store, credential)                wrong password, ACL token refused
    │   └── StoreCorrupt(path, backup)                    refused, never overwritten
    ├── DockerUnavailable(endpoint, why)          exit 3  a command that needs Docker cannot reach it
    └── OutputUnavailable(path, why)              exit 3  disk full, over quota, read-only, I/O error

Stores translate their client library's exceptions into this tree at their own boundary,
chaining the original with ``raise ... from``.

Errors name the library's parameters, never a command-line flag: ``InvalidInput("lease", ...)``
reads ``lease: 0.5 is not valid; ...``. An error keeps its message in parts, the parameters it
names marked as :class:`Param` (an :class:`InvalidInput`'s field is one, unless it is a
:class:`Kind`), so that a command line can show each as its own flag
(:meth:`PortctlError.spelled`), and ``params`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = [
    "CapabilityMissing",
    "DockerUnavailable",
    "ExtraMissing",
    "InvalidInput",
    "KeyExists",
    "NotFound",
    "OutputUnavailable",
    "PortConflict",
    "PortctlError",
    "RangeExhausted",
    "ServiceNotFound",
    "StoreCorrupt",
    "StoreDenied",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "VersionConflict",
]


class Param(str):
    """A parameter's Python name inside an error message (``Param("port")``): shown as it is
    by the library, and as the caller's own spelling of it (a CLI flag, ``--port``) by
    :meth:`PortctlError.spelled`."""

    __slots__ = ()


class Kind(str):
    """An :class:`InvalidInput` field that says what kind of value was refused (``Kind("port")``
    for any port) rather than which parameter held it: shown as it is everywhere."""

    __slots__ = ()


Parts = str | Sequence[str]  # text, or text in pieces where a Param marks a parameter


def _pieces(text: Parts) -> tuple[str, ...]:
    return (text,) if isinstance(text, str) else tuple(text)


class PortctlError(Exception):
    """Base of every error portctl raises on purpose.

    Its message may be given in parts (``PortctlError("give ", Param("port"), " too")``); the
    message is their text, with each parameter under its Python name."""

    code = "error"

    def __init__(self, *parts: object) -> None:
        self.parts: tuple[str, ...] = tuple(p if isinstance(p, str) else str(p) for p in parts)
        super().__init__("".join(self.parts))

    @property
    def message(self) -> str:
        return str(self)

    @property
    def params(self) -> tuple[str, ...]:
        """The parameters (Python names) the message names, in order."""
        return tuple(str(p) for p in self.parts if isinstance(p, Param))

    def spelled(self, spell: Callable[[str], str]) -> str:
        """The message with each parameter it names written as ``spell`` writes that name (a
        CLI: as the flag of its option), so the library need not know any flag."""
        if not self.params:
            return self.message
        return "".join(spell(str(p)) if isinstance(p, Param) else p for p in self.parts)


class InvalidInput(PortctlError, ValueError):
    """A value given by a user or a config file is not of the accepted form."""

    code = "invalid_input"

    def __init__(self, field: str, value: object, expected: Parts, *, problem: str = "") -> None:
        """``field`` is the parameter that held ``value`` (``check``), optionally followed by
        which part of it (``check ttl``), or a :class:`Kind`, or a place in a file. ``expected``
        may name parameters too, as parts with :class:`Param`. ``problem`` says what is wrong
        in words, for a value whose repr would not (a JSON document's kind); otherwise the
        message shows the value, clipped if long."""
        wanted = _pieces(expected)
        self.field = field
        self.value = value
        self.expected = "".join(wanted)
        shown = problem or ("missing" if value is None else f"{clipped(value)} is not valid")
        super().__init__(*_field_parts(field), f": {shown}; expected ", *wanted)


def _field_parts(field: str) -> tuple[str, ...]:
    """A field as message parts: its leading word is a parameter when it is a Python name."""
    name, space, rest = field.partition(" ")
    if isinstance(field, Kind) or not name.isidentifier():
        return (str(field),)
    return (Param(name), space + rest) if space else (Param(name),)


SHOWN_MAX = 200  # a long file path still shows whole


def clipped(value: object) -> str:
    """``repr(value)`` for a message: a long value cut to its first characters and its length,
    so no caller echoes a megabyte (or fails on an integer too long to convert)."""
    if isinstance(value, str) and len(value) > SHOWN_MAX:
        return f"{value[:SHOWN_MAX]!r}…({len(value)} characters)"
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit
        return "an integer of thousands of digits"
    return text if len(text) <= SHOWN_MAX else f"{text[:SHOWN_MAX]}…({len(text)} characters)"


class CapabilityMissing(InvalidInput):
    """The chosen store lacks a capability the operation needs (checked when it is opened)."""

    code = "capability_missing"

    def __init__(self, store: str, capability: str, hint: str = "") -> None:
        expected = f"a store that supports {capability}"
        if hint:
            expected += f" ({hint})"
        super().__init__(Kind("store"), store, expected)
        self.capability = capability


class ExtraMissing(InvalidInput):
    """The store a URL names needs a client library that is not installed (an install extra)."""

    code = "extra_missing"

    def __init__(self, store: str, module: str, install: str) -> None:
        self.field, self.value, self.expected = "store", store, install
        self.module = module
        # Its own wording, not InvalidInput's "... is not valid": the URL is fine.
        PortctlError.__init__(
            self, f"the {store} store needs {module}, which is not installed; install it with: {install}"
        )


class NotFound(PortctlError, LookupError):
    code = "not_found"


class ServiceNotFound(NotFound):
    def __init__(self, name: str, known: list[str] | None = None, where: Parts = "") -> None:
        """``where`` ends "service NAME is not ...", and may name parameters (as parts)."""
        self.name = name
        self.known = sorted(known or [])
        text = [f"service {name!r} is not ", *(_pieces(where) if where else ("known",))]
        if self.known:
            shown = ", ".join(self.known[:20])
            more = f" and {len(self.known) - 20} more" if len(self.known) > 20 else ""
            text.append(f"; known: {shown}{more}")
        super().__init__(*text)


class PortConflict(PortctlError):
    """A port is already held: by another service in the store, or by something on the host.

    ``holder`` says who, e.g. ``allocated to postgres (production)`` or ``in use on this host
    (0.0.0.0:5432/tcp already in use)``."""

    code = "port_conflict"

    def __init__(self, port: int, protocol: str, holder: str, hint: str = "") -> None:
        self.port = port
        self.protocol = protocol
        self.holder = holder
        text = f"port {port}/{protocol} is not available: {holder}"
        if hint:
            text += f"; {hint}"
        super().__init__(text)


class RangeExhausted(PortctlError):
    """Every candidate port for a service was taken, in use, or not ours to choose."""

    code = "range_exhausted"

    def __init__(self, service: str, where: str, skipped: list[str]) -> None:
        self.service = service
        self.skipped = skipped
        text = f"no free port for {service!r} in {where}"
        if skipped:
            text += " (" + "; ".join(skipped[:5]) + ("; ..." if len(skipped) > 5 else "") + ")"
        super().__init__(text, "; free one, or give ", Param("port"), " or ", Param("type"))


class VersionConflict(PortctlError):
    """A compare-and-set or conditional delete lost: the key changed since it was read."""

    code = "version_conflict"

    def __init__(self, key: str, detail: str = "") -> None:
        self.key = key
        super().__init__(detail or f"key {key!r} changed since it was read")


class KeyExists(VersionConflict):
    code = "key_exists"

    def __init__(self, key: str) -> None:
        super().__init__(key, f"key {key!r} already exists")


class StoreError(PortctlError):
    code = "store_error"


class StoreUnavailable(StoreError):
    code = "store_unavailable"


class StoreTimeout(StoreUnavailable):
    code = "store_timeout"


class StoreDenied(StoreError):
    """The store answered but refused our credentials. Never retried; never shows the secret."""

    code = "store_denied"

    def __init__(self, store: str, credential: str, detail: str = "") -> None:
        self.store = store
        self.credential = credential
        text = f"store {store} refused the request: {detail or 'permission denied'}; check {credential}"
        super().__init__(text)


class StoreCorrupt(StoreError):
    """The store's data cannot be trusted; it is left exactly as found."""

    code = "store_corrupt"

    def __init__(self, path: str, problem: str, backup: str | None = None, advice: str = "") -> None:
        self.path = path
        self.problem = problem
        self.backup = backup
        key = not path.startswith("/") and "://" not in path  # one key of a store, not a file
        text = f"{'key' if key else 'store'} {path} is unusable: {problem}; it was left untouched"
        if key and not advice:
            advice = "delete or rewrite that key (portctl deregister, release or bluegreen deploy)"
        if advice:
            text += f"; {advice}"
        elif backup:
            text += f"; the previous good copy is {backup} (restore it with: cp {backup} {path})"
        else:
            text += "; move it aside to start an empty store"
        super().__init__(text)


class DockerUnavailable(PortctlError):
    """Docker is absent, stopped or refuses us, and the command cannot go on without it."""

    code = "docker_unavailable"

    def __init__(self, endpoint: str, why: str) -> None:
        self.endpoint = endpoint
        self.why = why
        super().__init__(f"Docker at {endpoint}: {why}")


class OutputUnavailable(PortctlError):
    """A file portctl writes for other tools (``-o``, an override, a cache) cannot be written
    because of its filesystem, not its path: full, over quota, read-only or failing. The file
    that was there is left exactly as it was."""

    code = "output_unavailable"

    def __init__(self, path: str, why: str, fix: str = "free space there, or write elsewhere") -> None:
        self.path = path
        self.why = why
        super().__init__(f"cannot write {path}: {why}; it was left as it was ({fix})")
