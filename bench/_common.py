"""Helpers the benchmark scripts share: free ports to listen on, percentiles, a count argument."""

from __future__ import annotations

import argparse
import socket


def free_ports(count: int, start: int = 26000) -> list[int]:
    """``count`` ports from ``start`` up that nothing listens on now (below the ephemeral range)."""
    found: list[int] = []
    port = start
    while len(found) < count and port < 32000:
        try:
            with socket.socket() as s:
                s.bind(("0.0.0.0", port))
            found.append(port)
        except OSError:
            pass
        port += 1
    return found


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def positive(text: str) -> int:
    """An argparse type: a count of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of at least 1")
    return int(text)
