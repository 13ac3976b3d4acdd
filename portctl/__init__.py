"""portctl: find what holds each port, allocate conflict-free ports, keep services discoverable.

The names below are the public API; every other module may change without notice.
"""

from typing import TYPE_CHECKING, Any

from portctl._version import __version__

if TYPE_CHECKING:
    from portctl.allocation import Allocation, AllocationResult, PortAllocator
    from portctl.backends import Capability, Entry, Store, open_store
    from portctl.bluegreen import BlueGreen, CutoverConflict, CutoverRefused
    from portctl.config import Settings, StoreChoice, load_settings, resolve_store
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
    from portctl.kernel import bind_test, kernel_ports
    from portctl.policy import Policy, ServiceSpec, ServiceType, default_policy
    from portctl.registry import CheckSpec, Instance, Registry, ServiceEntry, Status

# Imported on first use, so `portctl --version` and scripts that need one name start fast.
_HOMES = {
    "Allocation": "portctl.allocation",
    "AllocationResult": "portctl.allocation",
    "PortAllocator": "portctl.allocation",
    "Capability": "portctl.backends",
    "Entry": "portctl.backends",
    "Store": "portctl.backends",
    "open_store": "portctl.backends",
    "BlueGreen": "portctl.bluegreen",
    "CutoverConflict": "portctl.bluegreen",
    "CutoverRefused": "portctl.bluegreen",
    "Settings": "portctl.config",
    "StoreChoice": "portctl.config",
    "load_settings": "portctl.config",
    "resolve_store": "portctl.config",
    "bind_test": "portctl.kernel",
    "kernel_ports": "portctl.kernel",
    "Policy": "portctl.policy",
    "ServiceSpec": "portctl.policy",
    "ServiceType": "portctl.policy",
    "default_policy": "portctl.policy",
    "ServiceDiscovery": "portctl.discovery",
    "get_service_url": "portctl.discovery",
    "CheckSpec": "portctl.registry",
    "Instance": "portctl.registry",
    "Registry": "portctl.registry",
    "ServiceEntry": "portctl.registry",
    "Status": "portctl.registry",
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
