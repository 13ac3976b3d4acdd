"""Run every benchmark and print its table: ``python bench/run.py``."""

from __future__ import annotations

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
BENCHMARKS = [
    "startup.py",
    "allocate_race.py",
    "check_scan.py",
    "doctor.py",
    "discovery.py",
    "etcd.py",
    "consul_store.py",
    "bluegreen.py",
    "scrape.py",
]


def main() -> int:
    failed = 0
    for name in BENCHMARKS:
        print(f"\n== {name} ==", flush=True)
        failed |= subprocess.run([sys.executable, str(HERE / name)], check=False).returncode
    return failed


if __name__ == "__main__":
    sys.exit(main())
