"""Training throughput (examples/s) of keras_mmoe.training.fit by strategy and number of workers.

Each configuration is a fresh set of processes on this machine: ``none`` (one process, no
strategy), the same with Keras's own ``model.fit`` instead of the package's loop, ``multi-worker`` with 1 worker and with 2 workers (local processes on 127.0.0.1), and
``mirrored`` on 2 logical CPU devices. Same model, data and global batch everywhere; the figure of
a run is the median examples/s over its epochs after the first (which traces the step function).
Configurations alternate within each repeat; the table gives the median over repeats.

    python benchmarks/bench_distributed.py                        # Keras 3
    TF_USE_LEGACY_KERAS=1 python benchmarks/bench_distributed.py  # tf-keras
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "none": ("none", 1, None),
    "none, Keras model.fit": ("fit", 1, None),
    "multi-worker, 1 worker": ("multi-worker", 1, None),
    "multi-worker, 2 workers": ("multi-worker", 2, None),
    "mirrored, 2 logical CPUs": ("mirrored", 1, 2),
}


def train(args):
    """One process of a configuration: trains and prints ``RESULT {json}``."""
    from keras_mmoe import training

    distribution = training.make_distribution("none" if args.strategy == "fit" else args.strategy, devices=args.devices)

    import numpy as np

    from keras_mmoe.data import make_synthetic
    from keras_mmoe.models import build_mmoe

    data = make_synthetic(args.rows, dim=args.dim, seed=0)
    tasks = {name: "regression" for name in data.task_names}
    dataset_fn = training.in_memory_dataset_fn({"features": data.x}, data.y, args.batch_size, seed=0)
    if args.strategy == "fit":
        rate = float(np.median(keras_fit_rates(args, data, tasks, dataset_fn)[1:]))
    else:
        result = training.fit(
            lambda: build_mmoe(args.dim, tasks, num_experts=8, expert_units=16, seed=0),
            dataset_fn, tasks, distribution=distribution, epochs=args.epochs, verbose=0, log=None,
        )
        rate = float(np.median(result.examples_per_second[1:]))
    print("RESULT " + json.dumps({"examples_per_second": rate}), flush=True)


def keras_fit_rates(args, data, tasks, dataset_fn):
    """examples/s of each epoch of Keras's ``model.fit`` on the same model and data."""
    import time as clock

    import tensorflow as tf

    from keras_mmoe._keras import keras
    from keras_mmoe.models import build_mmoe, compile_kwargs

    model = build_mmoe(args.dim, tasks, num_experts=8, expert_units=16, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), **compile_kwargs(tasks))
    rates = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = clock.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            rates.append(args.rows / (clock.perf_counter() - self.started))

    model.fit(dataset_fn(tf.distribute.InputContext()), epochs=args.epochs, verbose=0, callbacks=[Timer()])
    return rates


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_config(name, args):
    strategy, workers, devices = CONFIGS[name]
    command = [sys.executable, os.path.abspath(__file__), "--train", "--strategy", strategy,
               "--rows", str(args.rows), "--dim", str(args.dim), "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs)]
    if devices:
        command += ["--devices", str(devices)]
    envs = [dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")]
    if strategy == "multi-worker":
        cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
        envs = [dict(envs[0], TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
                for i in range(workers)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for env in envs]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{err[-3000:]}")
    result = json.loads([line for line in outputs[0][0].splitlines() if line.startswith("RESULT ")][-1][7:])
    return result["examples_per_second"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="none", help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=131072, help="synthetic training rows (default 131072)")
    p.add_argument("--dim", type=int, default=100, help="input dimension (default 100)")
    p.add_argument("--batch-size", type=int, default=1024, help="global batch (default 1024)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is not counted (default 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG")
    args = p.parse_args()
    if args.train:
        return train(args)

    import tensorflow as tf

    from keras_mmoe import KERAS_FLAVOR

    print(f"uptime: {os.popen('uptime').read().strip()}")
    print(f"TensorFlow {tf.__version__}, {KERAS_FLAVOR}, {os.cpu_count()} CPUs; {args.rows} rows, input {args.dim}, "
          f"MMoE 8 experts x 16, 2 regression tasks, global batch {args.batch_size}, {args.epochs} epochs per run")
    rates = {name: [] for name in args.configs}
    for repeat in range(args.repeats):
        for name in args.configs:
            started = time.perf_counter()
            rates[name].append(run_config(name, args))
            print(f"  repeat {repeat + 1} {name}: {rates[name][-1]:,.0f} examples/s ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    base = statistics.median(rates[args.configs[0]])
    print(f"\n| configuration | examples/s (median of {args.repeats}) | relative to {args.configs[0]} |")
    print("|---|---|---|")
    for name in args.configs:
        rate = statistics.median(rates[name])
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")
    print(f"uptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
