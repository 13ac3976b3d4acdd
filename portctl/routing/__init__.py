"""Routing traffic to services: blue-green's live pointer and its health-gated cutover, and the
router and monitoring configuration rendered from the registry.
"""
