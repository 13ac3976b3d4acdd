"""The public face: everything in ``portctl.__all__`` is importable and documented."""

from __future__ import annotations

import portctl


def test_every_public_name_resolves():
    for name in portctl.__all__:
        assert getattr(portctl, name) is not None, name


def test_public_names_are_what_users_import():
    expected = {
        "PortAllocator",
        "Allocation",
        "AllocationResult",
        "open_store",
        "Store",
        "Capability",
        "Entry",
        "Settings",
        "StoreChoice",
        "load_settings",
        "resolve_store",
        "Policy",
        "ServiceSpec",
        "ServiceType",
        "default_policy",
        "bind_test",
        "kernel_ports",
        "PortctlError",
        "InvalidInput",
        "CapabilityMissing",
        "NotFound",
        "ServiceNotFound",
        "PortConflict",
        "RangeExhausted",
        "VersionConflict",
        "KeyExists",
        "StoreError",
        "StoreUnavailable",
        "StoreTimeout",
        "StoreCorrupt",
        "StoreDenied",
        "DockerUnavailable",
        "OutputUnavailable",
        "ExtraMissing",
        "__version__",
        "ServiceDiscovery",
        "get_service_url",
        "Registry",
        "ServiceEntry",
        "CheckSpec",
        "Status",
        "Instance",
        "BlueGreen",
        "CutoverRefused",
        "CutoverConflict",
    }
    assert set(portctl.__all__) == expected


def test_every_error_is_a_portctl_error():
    for name in portctl.__all__:
        value = getattr(portctl, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, portctl.PortctlError), name


def test_package_ships_type_information():
    import importlib.resources

    assert importlib.resources.files("portctl").joinpath("py.typed").is_file()


def test_every_error_of_the_tree_is_exported():
    import portctl.errors

    assert set(portctl.errors.__all__) <= set(portctl.__all__)
