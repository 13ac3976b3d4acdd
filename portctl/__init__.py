"""portctl: find what holds each port, allocate conflict-free ports, keep services discoverable.

The names below are the public API; every other module may change without notice.

The package, one layer per line; each imports only the layers below it (an import-linter
contract in ``pyproject.toml`` enforces it)::

    cli/, testing/   the commands (parse, one library call, render); store and registry contracts
    operations/      whole-host and whole-store operations: doctor, free, conflict resolution,
                     migrate
    discovery/       ServiceDiscovery: snapshots kept current by the change feed, the disk cache
    routing/         blue-green (live pointer read side, cutover) | compose/: files, ports,
                     override, stacks, deploy, check
    registry/        service entries with health checks, probes, the lease keeper, the agent
    ports/           the allocator, and the files it writes (.env.ports, port_config.json)
    host/            kernel ports, listeners, containers, holders, TCP answers | config/: the
                     port policy, the config file, the store's selection order
    backends/        the store interface and its stores: JSON file, etcd, Consul
    records, keys    the records layers share (JSON encoding); every store key, built and parsed
    _validate        every name that becomes a key, a path or a port
    errors           the one exception tree
"""

from functools import cache
from typing import TYPE_CHECKING, Any

from portctl._version import __version__ as __version__

# The public API is this file's re-exports, ``from module import Name as Name`` (the form type
# checkers take as a re-export): the one list. At run time the names below are imported on first
# use, so `portctl --version` and scripts that need one name start fast; ``__all__`` and where
# each name lives are read from this block once, by parsing this file (see _public_names).
if TYPE_CHECKING:
    from portctl.backends import Capability as Capability
    from portctl.backends import Entry as Entry
    from portctl.backends import Store as Store
    from portctl.backends import open_store as open_store
    from portctl.config.policy import Policy as Policy
    from portctl.config.policy import ServiceSpec as ServiceSpec
    from portctl.config.policy import ServiceType as ServiceType
    from portctl.config.policy import default_policy as default_policy
    from portctl.config.settings import Settings as Settings
    from portctl.config.settings import StoreChoice as StoreChoice
    from portctl.config.settings import load_settings as load_settings
    from portctl.config.settings import resolve_store as resolve_store
    from portctl.discovery import ServiceDiscovery as ServiceDiscovery
    from portctl.discovery import get_service_url as get_service_url
    from portctl.errors import CapabilityMissing as CapabilityMissing
    from portctl.errors import DockerUnavailable as DockerUnavailable
    from portctl.errors import ExtraMissing as ExtraMissing
    from portctl.errors import InvalidInput as InvalidInput
    from portctl.errors import KeyExists as KeyExists
    from portctl.errors import NotFound as NotFound
    from portctl.errors import OutputUnavailable as OutputUnavailable
    from portctl.errors import PortConflict as PortConflict
    from portctl.errors import PortctlError as PortctlError
    from portctl.errors import RangeExhausted as RangeExhausted
    from portctl.errors import ServiceNotFound as ServiceNotFound
    from portctl.errors import StoreCorrupt as StoreCorrupt
    from portctl.errors import StoreDenied as StoreDenied
    from portctl.errors import StoreError as StoreError
    from portctl.errors import StoreTimeout as StoreTimeout
    from portctl.errors import StoreUnavailable as StoreUnavailable
    from portctl.errors import VersionConflict as VersionConflict
    from portctl.host.kernel import bind_test as bind_test
    from portctl.host.kernel import kernel_ports as kernel_ports
    from portctl.operations.doctor import DoctorReport as DoctorReport
    from portctl.operations.doctor import Verdict as Verdict
    from portctl.operations.doctor import doctor as doctor
    from portctl.operations.free import FreePlan as FreePlan
    from portctl.operations.free import FreeReport as FreeReport
    from portctl.operations.free import free as free
    from portctl.operations.free import plan_free as plan_free
    from portctl.operations.resolve import Resolver as Resolver
    from portctl.operations.resolve import ResolveReport as ResolveReport
    from portctl.ports.allocator import Allocation as Allocation
    from portctl.ports.allocator import AllocationResult as AllocationResult
    from portctl.ports.allocator import PortAllocator as PortAllocator
    from portctl.ports.events import EventLog as EventLog
    from portctl.records import CheckSpec as CheckSpec
    from portctl.records import Event as Event
    from portctl.records import ServiceEntry as ServiceEntry
    from portctl.records import Status as Status
    from portctl.registry.entries import Instance as Instance
    from portctl.registry.entries import Registry as Registry
    from portctl.registry.entries import Verified as Verified
    from portctl.registry.health import run_check as run_check
    from portctl.registry.leases import LeaseKeeper as LeaseKeeper
    from portctl.routing.bluegreen import BlueGreen as BlueGreen
    from portctl.routing.bluegreen import CutoverConflict as CutoverConflict
    from portctl.routing.bluegreen import CutoverRefused as CutoverRefused


def __getattr__(name: str) -> Any:
    """A public name, imported from its home on first use and kept here (so asked only once)."""
    if name == "__all__":
        value: Any = sorted(_public_names())
    else:
        module = _public_names().get(name) if not name.startswith("_") else None
        if module is None:
            raise AttributeError(f"module 'portctl' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


@cache
def _public_names() -> dict[str, str]:
    """Name -> home module of every re-export in this file, parsed from its source once.

    Names starting with ``_`` never get here (``from portctl import _validate`` asks for a
    submodule), so only a public name, a submodule or a typo pays for the parse (~1.5 ms).
    """
    return _reexports(_own_source())


def _own_source() -> str:
    """This file's text, through its loader (so a zipped install works too)."""
    get_source = getattr(__spec__.loader, "get_source", None)
    source = get_source(__name__) if get_source is not None else None
    if source is None:  # an install without sources: the list of names is this file's text
        raise ImportError("portctl's public names are read from portctl/__init__.py, which is not installed")
    return str(source)


def _reexports(source: str) -> dict[str, str]:
    """``from m import A as A`` at the top level or under ``if TYPE_CHECKING:``, as name -> m."""
    import ast

    tree = ast.parse(source)
    nodes = [*tree.body]
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            nodes.extend(node.body)
    return {
        a.name: node.module
        for node in nodes
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        for a in node.names
        if a.asname == a.name
    }
