"""portctl: find what holds each port, allocate conflict-free ports, keep services discoverable.

The names below are the public API; every other module may change without notice.
"""

from typing import TYPE_CHECKING, Any

from portctl._version import __version__

if TYPE_CHECKING:
    from portctl.backends import Capability, Entry, Store, open_store
    from portctl.config.policy import Policy, ServiceSpec, ServiceType, default_policy
    from portctl.config.settings import Settings, StoreChoice, load_settings, resolve_store
    from portctl.discovery import ServiceDiscovery, get_service_url
    from portctl.errors import (
        CapabilityMissing,
        DockerUnavailable,
        ExtraMissing,
        InvalidInput,
        KeyExists,
        NotFound,
        OutputUnavailable,
        PortConflict,
        PortctlError,
        RangeExhausted,
        ServiceNotFound,
        StoreCorrupt,
        StoreDenied,
        StoreError,
        StoreTimeout,
        StoreUnavailable,
        VersionConflict,
    )
    from portctl.host.kernel import bind_test, kernel_ports
    from portctl.ports.allocator import Allocation, AllocationResult, PortAllocator
    from portctl.registry.entries import CheckSpec, Instance, Registry, ServiceEntry, Status
    from portctl.routing.bluegreen import BlueGreen, CutoverConflict, CutoverRefused

# Imported on first use, so `portctl --version` and scripts that need one name start fast.
_HOMES = {
    "Allocation": "portctl.ports.allocator",
    "AllocationResult": "portctl.ports.allocator",
    "PortAllocator": "portctl.ports.allocator",
    "Capability": "portctl.backends",
    "Entry": "portctl.backends",
    "Store": "portctl.backends",
    "open_store": "portctl.backends",
    "BlueGreen": "portctl.routing.bluegreen",
    "CutoverConflict": "portctl.routing.bluegreen",
    "CutoverRefused": "portctl.routing.bluegreen",
    "Settings": "portctl.config.settings",
    "StoreChoice": "portctl.config.settings",
    "load_settings": "portctl.config.settings",
    "resolve_store": "portctl.config.settings",
    "bind_test": "portctl.host.kernel",
    "kernel_ports": "portctl.host.kernel",
    "Policy": "portctl.config.policy",
    "ServiceSpec": "portctl.config.policy",
    "ServiceType": "portctl.config.policy",
    "default_policy": "portctl.config.policy",
    "ServiceDiscovery": "portctl.discovery",
    "get_service_url": "portctl.discovery",
    "CheckSpec": "portctl.registry.entries",
    "Instance": "portctl.registry.entries",
    "Registry": "portctl.registry.entries",
    "ServiceEntry": "portctl.registry.entries",
    "Status": "portctl.registry.entries",
}


def __getattr__(name: str) -> Any:
    import importlib

    module = _HOMES.get(name)
    if module is None:
        if name in __all__:
            module = "portctl.errors"
        else:
            raise AttributeError(f"module 'portctl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Allocation",
    "AllocationResult",
    "BlueGreen",
    "Capability",
    "CapabilityMissing",
    "CheckSpec",
    "CutoverConflict",
    "CutoverRefused",
    "DockerUnavailable",
    "Entry",
    "ExtraMissing",
    "Instance",
    "InvalidInput",
    "KeyExists",
    "NotFound",
    "OutputUnavailable",
    "Policy",
    "PortAllocator",
    "PortConflict",
    "PortctlError",
    "RangeExhausted",
    "Registry",
    "ServiceDiscovery",
    "ServiceEntry",
    "ServiceNotFound",
    "ServiceSpec",
    "ServiceType",
    "Settings",
    "Status",
    "Store",
    "StoreChoice",
    "StoreCorrupt",
    "StoreDenied",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "VersionConflict",
    "__version__",
    "bind_test",
    "default_policy",
    "get_service_url",
    "kernel_ports",
    "load_settings",
    "open_store",
    "resolve_store",
]
