"""Docker Compose projects: finding their files, reading their ports, writing the override
that moves them, joining a stack with its allocations, deploying it, and checking it.
"""
