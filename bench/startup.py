"""Start-up cost: `portctl --version` and `portctl status` on the JSON store, beside a bare
interpreter start measured in the same run. Target: status within 150 ms of `python -c pass`.

    python bench/startup.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def measure(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    portctl = shutil.which("portctl", path=os.path.dirname(sys.executable)) or "portctl"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PORTCTL_STORE": os.path.join(tmp, "store.json")}
        subprocess.run(
            [portctl, "allocate", "--all"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "portctl --version": [portctl, "--version"],
            "portctl status": [portctl, "status"],
        }
        # Interleave the cases so machine noise falls on all of them alike.
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, argv in cases.items():
                results[name] += measure(argv, 1, env)
    base = statistics.median(results["python -c pass"])
    print(f"{'command':<22}{'median ms':>10}{'p90 ms':>9}{'over bare':>11}")
    for name, times in results.items():
        med = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"{name:<22}{med:>10.1f}{p90:>9.1f}{med - base:>+11.1f}")
    over = statistics.median(results["portctl status"]) - base
    verdict = "met" if over <= 150 else "MISSED"
    print(f"\ntarget: status within 150 ms of a bare start -> {verdict} ({over:.0f} ms)")


if __name__ == "__main__":
    main()
