"""ServiceDiscovery refuses an empty environment as every other reader does."""

from __future__ import annotations

import pytest

from portctl.discovery import ServiceDiscovery
from portctl.errors import InvalidInput


def test_an_empty_environment_is_refused_not_taken_for_the_default(tmp_path) -> None:
    with pytest.raises(InvalidInput, match=r"^environment: '' is not valid; expected one of production"):
        ServiceDiscovery(f"file://{tmp_path}/store.json", environment="", watch=False)
