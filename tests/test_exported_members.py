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
        "run_check",
        "LeaseKeeper",
        "Verified",
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
        "doctor",
        "DoctorReport",
        "Verdict",
        "plan_free",
        "free",
        "FreePlan",
        "FreeReport",
        "Resolver",
        "ResolveReport",
        "EventLog",
        "Event",
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


def _fresh_python(code: str) -> str:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout


def test_importing_portctl_imports_no_submodule_until_a_name_is_used():
    code = (
        "import sys, portctl\n"
        "print(sorted(m for m in sys.modules if m.startswith('portctl.')))\n"
        "portctl.PortAllocator\n"
        "print('portctl.ports.allocator' in sys.modules, 'portctl.routing.bluegreen' in sys.modules)\n"
    )
    before, after = _fresh_python(code).splitlines()
    assert before == "['portctl._version']"
    assert after == "True False"  # only the home of the name asked for


def test_a_star_import_brings_every_public_name():
    code = "from portctl import *\nprint(sorted(n for n in dir() if not n.startswith('__')))\n"
    import ast

    names = set(ast.literal_eval(_fresh_python(code)))
    assert names == set(portctl.__all__) - {"__version__"}
