"""Settings: the port policy (service types, ranges, standard services, environments), the
config file that extends it, the store's selection order and this host's identity.
"""
