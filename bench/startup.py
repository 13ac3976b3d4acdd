"""Start-up cost, beside a bare interpreter start measured in the same run (whole processes,
interleaved, medians), and the allocations per second eight scripts get calling
`portctl allocate` in a loop on one JSON store.

Targets: `portctl --version` and `portctl url NAME` within 50 ms of `python -c pass`;
`portctl --help` within 100 ms; 8 looping scripts: at least 30 allocations/s in total.

    python bench/startup.py [--runs 15] [--loops 25]

Python is run as users run it: with the package's bytecode compiled (pip compiles it on
install; PYTHONDONTWRITEBYTECODE=1 would otherwise make every start compile every module).
"""

from __future__ import annotations

import argparse
import compileall
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import positive

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "portctl"


def once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return (time.perf_counter() - start) * 1000


def loop_allocations(portctl: str, env: dict[str, str], scripts: int, loops: int) -> float:
    """Allocations per second, in total, of ``scripts`` concurrent loops of ``loops`` each."""

    def script(n: int) -> None:
        for i in range(loops):
            subprocess.run(
                [portctl, "allocate", f"loop-{n}-{i}"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )

    threads = [threading.Thread(target=script, args=(n,)) for n in range(scripts)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return scripts * loops / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=positive, default=15)
    parser.add_argument("--loops", type=positive, default=25, help="allocations per looping script")
    args = parser.parse_args()
    compileall.compile_dir(str(PACKAGE), quiet=1)
    portctl = shutil.which("portctl", path=os.path.dirname(sys.executable)) or "portctl"
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PORTCTL_CONFIG")}
        env |= {"PORTCTL_STORE": os.path.join(tmp, "store.json"), "PORTCTL_HOST": "bench-host"}
        subprocess.run([portctl, "allocate", "api"], env=env, stdout=subprocess.DEVNULL, check=True)
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "portctl --version": [portctl, "--version"],
            "portctl url api": [portctl, "url", "api"],
            "portctl --help": [portctl, "--help"],
            "portctl status": [portctl, "status"],
            "portctl env": [portctl, "env"],
        }
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):  # interleaved, so machine noise falls on all alike
            for name, argv in cases.items():
                results[name].append(once(argv, env))
        rate = loop_allocations(portctl, env, 8, args.loops)
    base = statistics.median(results["python -c pass"])
    print(f"{'command':<22}{'median ms':>10}{'p90 ms':>9}{'over bare':>11}")
    for name, times in results.items():
        med = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"{name:<22}{med:>10.1f}{p90:>9.1f}{med - base:>+11.1f}")
    print()
    for name, limit in (("portctl --version", 50), ("portctl url api", 50), ("portctl --help", 100)):
        over = statistics.median(results[name]) - base
        verdict = "met" if over <= limit else "MISSED"
        print(f"target: {name} within {limit} ms of a bare start -> {verdict} ({over:+.0f} ms)")
    verdict = "met" if rate >= 30 else "MISSED"
    print(f"target: 8 scripts looping `portctl allocate` >= 30 allocations/s -> {verdict} ({rate:.1f}/s)")


if __name__ == "__main__":
    main()
