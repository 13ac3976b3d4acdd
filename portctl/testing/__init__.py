"""Test support shipped with portctl, so a third-party store can prove itself.

Subclass :class:`StoreContract` in a pytest module and give it a ``store_url`` fixture that
yields the URL of a fresh, empty store::

    import pytest
    from portctl.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store_url(self, tmp_path):
            yield "mystore://..."

Every store that ships with portctl runs this same suite. :class:`RegistryContract`, subclassed
the same way, runs register / health / lease / deregister through ``portctl.Registry`` on the
store, its expectations depending on whether the store runs checks itself
(``Capability.RUNS_CHECKS``).
"""

from portctl.testing.registry_contract import RegistryContract
from portctl.testing.store_contract import StoreContract

__all__ = ["RegistryContract", "StoreContract"]
