"""Runtime service discovery: service names to URLs, from the registry and the allocations.

>>> from portctl.discovery import ServiceDiscovery
>>> with ServiceDiscovery("file:///var/lib/portctl/store.json") as discovery:  # doctest: +SKIP
...     discovery.get_service_url("redis")
'redis://127.0.0.1:6380'

Apps that want one call use the module-level :func:`get_service_url`, over a default
:class:`ServiceDiscovery` made on first use with the store the CLI would choose; tests replace it
with :func:`set_default`.
"""

from portctl.discovery._resolver import ServiceDiscovery, get_service_url, set_default

__all__ = ["ServiceDiscovery", "get_service_url", "set_default"]
