"""Timing helpers shared by the benchmark scripts: alternate the candidates, take medians.

Every candidate is a zero-argument callable returning tensors. ``measure`` warms each one up,
then calls them in turn (A, B, C, A, B, C, ...) so that the machine's load affects all of them
alike, and reports per candidate the median wall time and the median CPU time of the process
(user + system, all threads). On a machine shared with other jobs the CPU time is the steadier
figure: wall time there also measures how the scheduler treats one large multi-threaded
operation against many small ones (see benchmarks/README.md), CPU time only the work done.
"""

import os
import platform
import statistics
import time

import tensorflow as tf


def _wait(result):
    """Blocks until every tensor of ``result`` is computed."""
    for t in tf.nest.flatten(result):
        if hasattr(t, "numpy"):
            t.numpy()


def measure(fns, repeats, warmup=3):
    """Times ``fns`` (``{name: callable}``) alternately; returns ``{name: {"wall_ms", "cpu_ms", ...}}``."""
    for fn in fns.values():
        for _ in range(warmup):
            _wait(fn())
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            _wait(fn())
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return {
        name: {
            "wall_ms": round(statistics.median(wall[name]) * 1e3, 3),
            "cpu_ms": round(statistics.median(cpu[name]) * 1e3, 3),
            "wall_min_ms": round(min(wall[name]) * 1e3, 3),
            "repeats": repeats,
        }
        for name in fns
    }


def load_average():
    """The 1-minute load average (other jobs on the machine), rounded."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on Linux/macOS
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment():
    """Versions and machine, for the record of a benchmark run."""
    from keras_mmoe import KERAS_FLAVOR

    return {
        "keras": KERAS_FLAVOR,
        "tensorflow": tf.__version__,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1min": load_average(),
    }


def ratio(baseline, candidate, key="wall_ms"):
    """``baseline / candidate`` of one figure: above 1 means the candidate is faster."""
    return round(baseline[key] / candidate[key], 3)
