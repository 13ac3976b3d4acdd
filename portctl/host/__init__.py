"""What this host says about its ports: the kernel's ranges and a bind test, every listener
and its process, Docker's published ports, who holds a port, and whether a TCP service answers.

Reads the machine only; it never touches a store.
"""
