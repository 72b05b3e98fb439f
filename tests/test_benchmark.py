"""The overhead benchmark still runs and prints its table (its numbers are read by people,
not asserted: the machines are shared and noisy)."""

import re
import subprocess
import sys

from helpers import ROOT


def test_overhead_benchmark_prints_its_table():
    proc = subprocess.run(
        [sys.executable, "benchmarks/overhead.py", "--rounds", "1", "--workload", "digits-cnn"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    row = re.search(
        r"^\| digits-cnn \| (\d+) \| ([\d.]+) \| ([\d.]+) \| -?\d+ \| ([\d.]+) \| [\d.]+ to [\d.]+ \|$",
        proc.stdout,
        re.M,
    )
    assert row, proc.stdout
    steps, hand, ours, ratio = int(row[1]), float(row[2]), float(row[3]), float(row[4])
    assert steps > 40 and hand > 0 and ours > 0
    assert abs(ratio - ours / hand) < 0.002
