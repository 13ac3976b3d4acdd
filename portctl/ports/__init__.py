"""Port allocation and the files it writes: the allocator that never gives one (host, port,
protocol) to two services, and the ``.env.ports`` / ``port_config.json`` documents, written
atomically.
"""
