"""Runtime service discovery (``ServiceDiscovery``, ``get_service_url``) lives here.

It resolves service entries registered in a store; see the README's roadmap for its status.
"""
