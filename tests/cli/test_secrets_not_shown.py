"""A password written into an endpoint is never echoed, whichever way the endpoint arrives."""

from __future__ import annotations

import pytest

from .conftest import error_line


@pytest.mark.parametrize(
    "endpoints",
    ["http://root:s3cretPW@127.0.0.1:23790", "http://root:s3cretPW@127.0.0.1", "root:s3cretPW@h:2379"],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_a_password_in_etcdctl_endpoints_is_never_shown(run, endpoints, as_json):
    flags = ["--json"] if as_json else []
    result = run(*flags, "status", env={"PORTCTL_STORE": "etcd://", "ETCDCTL_ENDPOINTS": endpoints})
    assert result.returncode == 2
    assert "s3cretPW" not in result.stdout + result.stderr
    if not as_json:
        assert "ETCDCTL_ENDPOINTS" in error_line(result)
