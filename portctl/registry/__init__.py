"""The service registry: entries with health checks in any store, the health probes the
agent runs, and the agent itself.
"""
