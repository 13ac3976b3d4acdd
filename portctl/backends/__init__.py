"""Stores, chosen by URL scheme.

Built-in schemes resolve from a table without scanning installed packages (start-up stays
fast); any other scheme is looked up in the ``portctl.stores`` entry-point group, so a
third-party store installs like a plugin. A store's client library is imported only here, when
a URL of its scheme is opened.
"""

from __future__ import annotations

import importlib
import re

from portctl.backends.base import (
    Capability,
    Change,
    ChangeBatch,
    Create,
    Delete,
    Entry,
    Expect,
    Operation,
    Put,
    Store,
)
from portctl.errors import ExtraMissing, InvalidInput, Kind

__all__ = [
    "Capability",
    "Change",
    "ChangeBatch",
    "Create",
    "Delete",
    "Entry",
    "Expect",
    "Operation",
    "Put",
    "Store",
    "known_schemes",
    "open_store",
    "store_class",
]

ENTRY_POINT_GROUP = "portctl.stores"

_BUILTIN = {
    "file": "portctl.backends.file:JsonFileStore",
    "etcd": "portctl.backends.etcd:EtcdStore",
    "etcd+https": "portctl.backends.etcd:EtcdStore",
    "consul": "portctl.backends.consul:ConsulStore",
    "consul+https": "portctl.backends.consul:ConsulStore",
}

_EXTRAS = {"etcd": "etcd", "etcd+https": "etcd", "consul": "consul", "consul+https": "consul"}

URL_FORM = (
    "a store URL such as file:///var/lib/portctl/store.json, etcd://127.0.0.1:2379 or consul://127.0.0.1:8500"
)


def _load(scheme: str, target: str) -> type[Store]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        missing = e.name or ""
        if missing.partition(".")[0] == "portctl":
            raise  # our own module is broken: a bug, not a missing extra
        # e.g. etcd3gw, py-consul or requests absent, or an incompatible version of one
        extra = _EXTRAS.get(scheme)
        install = f"pip install 'portctl[{extra}]'" if extra else f"the package that provides {scheme}://"
        raise ExtraMissing(scheme.partition("+")[0], missing or str(e), install) from e
    cls: type[Store] = getattr(module, attr)
    return cls


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_schemes() -> list[str]:
    return sorted(set(_BUILTIN) | set(_entry_points()))


def store_class(scheme: str) -> type[Store]:
    target = _BUILTIN.get(scheme) or _entry_points().get(scheme)
    if target is None:
        raise InvalidInput(Kind("store"), f"{scheme}://", f"one of the schemes {', '.join(known_schemes())}")
    return _load(scheme, target)


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def open_store(url: str, require: Capability = Capability.NONE) -> Store:
    """Open the store ``url`` names and check it can do what ``require`` asks.

    >>> store = open_store("file:///tmp/portctl-doc.json")  # doctest: +SKIP
    """
    # Only the scheme is read here: urlsplit would raise on a stray '[' the store refuses in words.
    scheme = _SCHEME.match(url)
    if not scheme:
        raise InvalidInput(Kind("store"), url, URL_FORM)
    cls = store_class(scheme.group(1).lower())
    missing = require & ~cls.capabilities
    if missing:
        # Checked before connecting: a cutover on a store without compare-and-set fails here,
        # not halfway through.
        from portctl.errors import CapabilityMissing

        raise CapabilityMissing(url, ", ".join(missing.names()))
    return cls.from_url(url)
