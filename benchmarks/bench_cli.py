"""Whole-process times of the command line: `keras-mmoe --help` and a bad flag against
`python -c "import tensorflow"` (alternating, ratio per pair), and the default `keras-mmoe train`.

    python benchmarks/bench_cli.py                 # start-up, 7 pairs; default train, 3 runs
    python benchmarks/bench_cli.py --runs 5 --skip-train

Runs the `keras-mmoe` found next to this Python (set PYTHONPATH to a checkout to time its code).
Wall seconds from a monotonic clock, CPU seconds (user + system) from the finished children's
rusage; medians over runs. The train runs write to a temporary directory.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

SCRIPT = os.path.join(os.path.dirname(sys.executable), "keras-mmoe")


def timed(argv):
    """(wall s, cpu s, exit code) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    code = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, code


def pair(name, a, b, runs):
    timed(a), timed(b)  # warm-up (file cache)
    rows = []
    for _ in range(runs):
        rows.append((timed(a), timed(b)))
    wall_a, wall_b = [r[0][0] for r in rows], [r[1][0] for r in rows]
    cpu_a, cpu_b = [r[0][1] for r in rows], [r[1][1] for r in rows]
    codes = sorted({r[0][2] for r in rows})
    print(f"| {name} (exit {codes}) | {statistics.median(wall_a):.2f} | {statistics.median(cpu_a):.2f} "
          f"| {statistics.median(wall_b):.2f} | {statistics.median(cpu_b):.2f} "
          f"| {statistics.median(x / y for x, y in zip(wall_a, wall_b)):.3f} "
          f"| {statistics.median(x / y for x, y in zip(cpu_a, cpu_b)):.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--train-runs", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    tensorflow = [sys.executable, "-c", "import tensorflow"]
    print("| command | wall s | cpu s | `import tensorflow` wall s | cpu s | wall ratio | cpu ratio |")
    print("|---|---|---|---|---|---|---|")
    pair("`keras-mmoe --help`", [SCRIPT, "--help"], tensorflow, args.runs)
    pair("`keras-mmoe train --epochs 0`", [SCRIPT, "train", "--epochs", "0"], tensorflow, args.runs)
    if args.skip_train:
        return
    walls, cpus = [], []
    for _ in range(args.train_runs):
        with tempfile.TemporaryDirectory() as out:
            wall, cpu, code = timed([SCRIPT, "train", "--out-dir", out])
        assert code == 0, code
        walls.append(wall)
        cpus.append(cpu)
    print(f"\n`keras-mmoe train` (defaults), {args.train_runs} runs: median {statistics.median(walls):.1f} s wall "
          f"(min {min(walls):.1f}, max {max(walls):.1f}), {statistics.median(cpus):.1f} s cpu")


if __name__ == "__main__":
    main()
