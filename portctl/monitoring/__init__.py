"""Monitoring: what the registry, the allocations and the host's ports look like, for people
and for Prometheus.

``snapshot`` gathers one view (store, port scan, Docker) within a time budget, keeping the last
known values of a source that does not answer; ``metrics`` turns a view into Prometheus series;
``page`` into the status page and its JSON; ``server`` serves them (``portctl serve``);
``rules`` and ``dashboard`` render the alert rules and the Grafana dashboard.
"""
