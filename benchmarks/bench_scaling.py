"""How the training step's cost grows with the number of experts and with the batch size.

Three implementations of the same MMoE (experts 499 -> 256 -> 128 with ReLU, linear gates
without bias, towers of 64, one sigmoid output per task, two tasks):

* ``MMoELayer``: ``build_mmoe(..., gate_use_bias=False)``;
* ``Dense loop``: one ``Dense`` per expert layer and a Python loop over experts
  (``bench_layers.LoopMMoE``, gates without bias), the same towers;
* ``DeepCTR``: DeepCTR 0.9.4's ``MMOE`` (optional: ``pip install deepctr==0.9.4``; without it,
  or with ``--no-deepctr``, only the first two).

Two sweeps: ``num_experts`` in 4, 8, 16, 32, 64 at batch 1024, and batch in 256 ... 8192 at
16 experts. At each point the three training steps (compiled ``tf.function``: forward, binary
cross-entropy, gradients, Adam) alternate in one process (timing.measure); medians of wall and
CPU time. Writes a table (stdout, ``--json``) and a PNG plot (``--plot``).

    python benchmarks/bench_scaling.py --plot benchmarks/scaling.png --json scaling.json
    TF_USE_LEGACY_KERAS=1 python benchmarks/bench_scaling.py --repeats 5
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bench_layers  # noqa: E402  (same directory)
import bench_vs_deepctr  # noqa: E402
import timing  # noqa: E402
from keras_mmoe._keras import keras  # noqa: E402

BASE = dict(input_dim=499, num_experts=16, expert_units=(256, 128), tower_units=(64,), batch=1024)
EXPERTS = (4, 8, 16, 32, 64)
BATCHES = (256, 512, 1024, 2048, 4096, 8192)
IMPLEMENTATIONS = ("MMoELayer", "Dense loop", "DeepCTR")


def build_loop(cfg):
    x = keras.Input((cfg["input_dim"],), name="features")
    outs = bench_layers.LoopMMoE(cfg["num_experts"], cfg["expert_units"], len(bench_vs_deepctr.TASKS),
                                 gate_use_bias=False)(x)
    outputs = {}
    for t, (task, o) in enumerate(zip(bench_vs_deepctr.TASKS, outs)):
        for j, u in enumerate(cfg["tower_units"]):
            o = keras.layers.Dense(u, activation="relu", name=f"{task}_tower_{j}")(o)
        outputs[task] = keras.layers.Dense(1, activation="sigmoid", name=task)(o)
    return keras.Model(x, outputs)


def measure_point(cfg, implementations, repeats):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(cfg["batch"], cfg["input_dim"])).astype("float32"))
    ys = [tf.constant(rng.integers(0, 2, size=(cfg["batch"], 1)).astype("float32")) for _ in bench_vs_deepctr.TASKS]
    builders = {"MMoELayer": bench_vs_deepctr.build_keras_mmoe, "Dense loop": build_loop,
                "DeepCTR": bench_vs_deepctr.build_deepctr}
    fns, params = {}, {}
    for name in implementations:
        model = builders[name](cfg)
        params[name] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        train_step, _ = bench_vs_deepctr.make_steps(model)
        fns[name] = lambda s=train_step: s(x, ys)
    if len(set(params.values())) != 1:
        raise AssertionError(f"parameter counts differ: {params}")
    return timing.measure(fns, repeats, warmup=2), params[implementations[0]]


def plot(results, path, implementations):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex="col")
    for col, (sweep, key, label) in enumerate((("experts", "num_experts", "number of experts (batch 1024)"),
                                               ("batch", "batch", "batch size (16 experts)"))):
        points = [r for r in results if r["sweep"] == sweep]
        xs = [p[key] for p in points]
        for row, metric in enumerate(("cpu_ms", "wall_ms")):
            ax = axes[row][col]
            for name, style in zip(implementations, ("o-", "s--", "^:")):
                ax.plot(xs, [p["times"][name][metric] for p in points], style, label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(xs)
            ax.set_xticklabels([str(v) for v in xs])
            ax.grid(True, which="both", alpha=0.3)
            ax.set_ylabel(("CPU" if metric == "cpu_ms" else "wall") + " time per training step (ms)")
            if row == 1:
                ax.set_xlabel(label)
            ax.legend()
    env = results[0]["environment"]
    fig.suptitle(f"MMoE training step (experts 499-256-128, towers 64, 2 tasks), {env['keras']}, "
                 f"TF {env['tensorflow']}, {env['cores']} cores; median of {results[0]['repeats']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-deepctr", action="store_true")
    parser.add_argument("--sweeps", nargs="+", choices=("experts", "batch"), default=["experts", "batch"])
    parser.add_argument("--plot", default=None, help="write the PNG plot here")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    implementations = [n for n in IMPLEMENTATIONS if not (n == "DeepCTR" and args.no_deepctr)]
    env = timing.environment()
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    points = [("experts", dict(BASE, num_experts=e)) for e in EXPERTS if "experts" in args.sweeps]
    points += [("batch", dict(BASE, batch=b)) for b in BATCHES if "batch" in args.sweeps]
    results = []
    print("| sweep | experts | batch | params | " + " | ".join(f"{n} cpu / wall ms" for n in implementations)
          + " | loop / MMoELayer (cpu) | DeepCTR / MMoELayer (cpu) |")
    for sweep, cfg in points:
        load = timing.load_average()
        times, params = measure_point(cfg, implementations, args.repeats)
        results.append(dict(sweep=sweep, num_experts=cfg["num_experts"], batch=cfg["batch"], params=params,
                            times=times, repeats=args.repeats, load_before=load, load_after=timing.load_average(),
                            environment=env))
        mine = times["MMoELayer"]["cpu_ms"]
        cells = " | ".join(f"{times[n]['cpu_ms']:.1f} / {times[n]['wall_ms']:.1f}" for n in implementations)
        ratios = " | ".join(f"{times[n]['cpu_ms'] / mine:.2f}" if n in times else "-" for n in ("Dense loop", "DeepCTR"))
        print(f"| {sweep} | {cfg['num_experts']} | {cfg['batch']} | {params} | {cells} | {ratios} |", flush=True)
    if args.plot:
        plot(results, args.plot, implementations)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "command": " ".join(sys.argv), "results": results}, f, indent=2)


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
