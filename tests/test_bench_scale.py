"""bench/scale.py runs end to end on the JSON file store and prints a row for every operation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ("allocate", "release", "services", "render nginx", "get_service_url, cold", "cutover")


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )


def test_one_size_prints_every_operation_and_exits_0() -> None:
    done = run_bench("--sizes", "10", "--stores", "json", "--repeats", "2")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("json ")]
    for op in OPERATIONS:
        matching = [r for r in rows if " ".join(r[1:-4]) == op]
        assert matching, f"no row for {op} in:\n{done.stdout}"
        assert matching[0][-4] == "10"  # the entries column


def test_two_sizes_print_growth_and_a_verdict_per_operation() -> None:
    done = run_bench("--sizes", "10,20", "--stores", "json", "--repeats", "2")
    assert done.returncode == 0, done.stderr
    verdicts = [line for line in done.stdout.splitlines() if line.endswith("met") or "MISSED" in line]
    assert any(line.startswith("allocate, json: median at 20 entries / at 10") for line in verdicts)
    for op in OPERATIONS[1:]:
        assert any(line.startswith(f"{op}, json: growth per step") for line in verdicts), done.stdout


def test_sizes_out_of_order_are_refused_in_one_line() -> None:
    done = run_bench("--sizes", "100,10", "--stores", "json")
    assert done.returncode == 2
    assert "increasing order" in done.stderr
    assert "Traceback" not in done.stderr
