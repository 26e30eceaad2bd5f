"""Benchmark: K training runs as one vectorized model (reproduce.replicas) vs K Keras runs.

For one model (MMoE, OMoE or Shared-Bottom at the synthetic study's sizes, or the census sizes)
it times, alternately in one process:

* a **Keras run**: build + compile + ``model.fit`` of ``--epochs`` epochs with validation after
  every epoch, as the studies train one run (a sequential study costs K of these);
* an **engine run**: K replicas built, stacked and trained the same epochs by
  :class:`keras_mmoe.reproduce.replicas.ReplicaTrainer`.

Reported per K: seconds per epoch in steady state (the median epoch after the first, which
includes tracing) and the one-time cost (total minus epochs x steady epoch); the speedup is
K x Keras epoch / engine epoch, what a long run saves. ``--determinism`` instead times Keras and
engine runs in fresh processes alternating with and without
``tf.config.experimental.enable_op_determinism()`` (it cannot be switched off in a process).

    python benchmarks/bench_replicas.py --model mmoe --replicas 1 10 20 60
    python benchmarks/bench_replicas.py --size census --model mmoe --replicas 1 10 30
    python benchmarks/bench_replicas.py --determinism --model mmoe --replicas 20
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

SIZES = {
    # The synthetic study (MMoE paper section 5): d = 100, 16,000 train / 4,000 validation rows.
    "synthetic": dict(dim=100, rows=16_000, val_rows=4_000, batch=256, kind="regression"),
    # Census-income: 517 encoded columns, 199,523 train / 49,881 validation rows, batch 1024.
    "census": dict(dim=517, rows=199_523, val_rows=49_881, batch=1024, kind="binary"),
}


def make_data(size, seed=0):
    from keras_mmoe.reproduce import replicas as R

    rng = np.random.default_rng(seed)
    n = size["rows"] + size["val_rows"]
    x = rng.standard_normal((n, size["dim"]), dtype=np.float32)
    y = x[:, :2] + 0.1 * rng.standard_normal((n, 2), dtype=np.float32)
    if size["kind"] == "binary":
        y = (y > 0).astype(np.float32)
    r = size["rows"]
    return R.ReplicaData(x[None, :r], y[None, :r], x[None, r:], y[None, r:])


def build(name, size, seed, tasks):
    from keras_mmoe._keras import keras
    from keras_mmoe.models import BUILDERS, matched_budget_kwargs

    keras.utils.set_random_seed(seed)
    sizes = matched_budget_kwargs(size["dim"], 2, num_experts=8, expert_units=16, tower_units=(8,))[name]
    extra = {"seed": seed} if name != "shared_bottom" else {}
    return BUILDERS[name](size["dim"], tasks, name=name, **sizes, **extra)


def _cpu():
    t = os.times()
    return t.user + t.system


def keras_run(name, size, data, epochs, seed=0):
    """One study-style Keras run; returns (total seconds, [(wall, CPU) seconds of each epoch])."""
    import tensorflow as tf

    from keras_mmoe._keras import keras
    from keras_mmoe.models import compile_kwargs

    tasks = {"y1": size["kind"], "y2": size["kind"]}
    keras.backend.clear_session()
    start, start_cpu = time.perf_counter(), _cpu()
    model = build(name, size, seed, tasks)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), **compile_kwargs(tasks))
    x, y = data.x_train[0], data.y_train[0]
    train = tf.data.Dataset.from_tensor_slices(({"features": x}, {"y1": y[:, :1], "y2": y[:, 1:]}))
    train = train.shuffle(len(x), seed=seed).batch(size["batch"]).prefetch(2)
    val = ({"features": data.x_val[0]}, {"y1": data.y_val[0][:, :1], "y2": data.y_val[0][:, 1:]})
    marks = [(start, start_cpu)]
    timer = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: marks.append((time.perf_counter(), _cpu())))
    model.fit(train, validation_data=val, validation_batch_size=1024, epochs=epochs, verbose=0, callbacks=[timer])
    total = time.perf_counter() - start
    return total, [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]


def engine_run(name, size, data, epochs, replicas):
    """K replicas trained ``epochs`` epochs; returns (total seconds, [(wall, CPU) seconds of each epoch])."""
    from keras_mmoe._keras import keras
    from keras_mmoe.reproduce import replicas as R

    tasks = {"y1": size["kind"], "y2": size["kind"]}
    keras.backend.clear_session()
    start, start_cpu = time.perf_counter(), _cpu()
    models = [build(name, size, s, tasks) for s in range(replicas)]
    stack = R.ReplicaStack(models, tasks)
    del models
    trainer = R.ReplicaTrainer(stack, [1e-3] * replicas, size["batch"])
    marks = [(start, start_cpu)]
    trainer.fit(data, [0] * replicas, range(replicas), epochs,
                progress=lambda e, r: marks.append((time.perf_counter(), _cpu())))
    total = time.perf_counter() - start
    return total, [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]


def steady(epoch_times, which=0):
    """Median wall (``which=0``) or CPU (``which=1``) seconds of the epochs after the first."""
    values = [e[which] for e in epoch_times]
    return statistics.median(values[1:]) if len(values) > 1 else values[0]


def compare(args):
    size = SIZES[args.size]
    data = make_data(size)
    results = {"keras": []}
    for k in args.replicas:
        results[k] = []
    for _ in range(args.repeats):
        for k in args.replicas:  # alternate: Keras run, engine run K, Keras run, ...
            results["keras"].append(keras_run(args.model, size, data, args.epochs))
            results[k].append(engine_run(args.model, size, data, args.epochs, k))
    keras_epoch = statistics.median(steady(e) for _, e in results["keras"])
    keras_total = statistics.median(t for t, _ in results["keras"])
    rows = [dict(what="Keras run", replicas=1, epoch_s=keras_epoch, one_time_s=keras_total - args.epochs * keras_epoch,
                 cpu_epoch_s=statistics.median(steady(e, 1) for _, e in results["keras"]))]
    for k in args.replicas:
        epoch = statistics.median(steady(e) for _, e in results[k])
        total = statistics.median(t for t, _ in results[k])
        rows.append(dict(what="engine", replicas=k, epoch_s=epoch, one_time_s=total - args.epochs * epoch,
                         cpu_epoch_s=statistics.median(steady(e, 1) for _, e in results[k]),
                         speedup=k * keras_epoch / epoch))
    return rows


def determinism(args):
    """Fresh processes alternating op determinism off / on; per-epoch steady-state seconds."""
    times = {False: {"keras": [], "engine": []}, True: {"keras": [], "engine": []}}
    for _ in range(args.repeats):
        for flag in (False, True):
            command = [sys.executable, __file__, "--child", "--size", args.size, "--model", args.model,
                       "--epochs", str(args.epochs), "--replicas", str(args.replicas[0])]
            if flag:
                command.append("--op-determinism")
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            times[flag]["keras"].append(child["keras"])
            times[flag]["engine"].append(child["engine"])
    rows = []
    for what in ("keras", "engine"):
        row = dict(what=what, replicas=1 if what == "keras" else args.replicas[0])
        for i, kind in enumerate(("epoch_s", "cpu_epoch_s")):
            off = statistics.median(t[i] for t in times[False][what])
            on = statistics.median(t[i] for t in times[True][what])
            row.update({f"off_{kind}": off, f"on_{kind}": on, f"ratio_{kind}": on / off})
        rows.append(row)
    return rows


def child(args):
    import tensorflow as tf

    if args.op_determinism:
        tf.config.experimental.enable_op_determinism()
    size = SIZES[args.size]
    data = make_data(size)
    _, keras_epochs = keras_run(args.model, size, data, args.epochs)
    _, engine_epochs = engine_run(args.model, size, data, args.epochs, args.replicas[0])
    print(json.dumps({"keras": [steady(keras_epochs), steady(keras_epochs, 1)],
                      "engine": [steady(engine_epochs), steady(engine_epochs, 1)]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="synthetic")
    parser.add_argument("--model", choices=["mmoe", "omoe", "shared_bottom"], default="mmoe")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 10, 20, 60])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first includes tracing)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--determinism", action="store_true", help="time op determinism on vs off instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--op-determinism", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from keras_mmoe import KERAS_FLAVOR

    load = os.getloadavg()
    rows = determinism(args) if args.determinism else compare(args)
    print(json.dumps(dict(model=args.model, size=args.size, epochs=args.epochs, repeats=args.repeats,
                          keras=KERAS_FLAVOR, cpus=os.cpu_count(), machine=platform.machine(),
                          load_before=load, load_after=os.getloadavg(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
