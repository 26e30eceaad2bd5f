"""Micro-benchmark: MMoELayer (stacked-kernel experts) against a per-expert Dense loop.

Both implement the same math (paper eq. 6-8) with the same parameter count: experts are
MLPs, one softmax gate per task, the gated mixture per task. The loop version is written
the way most existing implementations are: one ``Dense`` per expert layer, a Python loop
over experts, outputs stacked. Timings are of compiled ``tf.function`` steps (a training
step = forward + MSE loss + gradients + Adam update; inference = forward), taken
alternately A, B, A, B... in one process so that machine load affects both alike; the
reported figure is the median over repeats, and the ratio is loop / MMoELayer.

    python benchmarks/bench_layers.py                 # both sizes, Keras 3
    TF_USE_LEGACY_KERAS=1 python benchmarks/bench_layers.py
    python benchmarks/bench_layers.py --size census --repeats 30
"""

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_mmoe import KERAS_FLAVOR, MMoELayer  # noqa: E402
from keras_mmoe._keras import keras  # noqa: E402

SIZES = {
    # MMoE paper census-income setting: 499 inputs, 8 experts x 16 units, 2 tasks.
    "census": dict(input_dim=499, num_experts=8, expert_units=(16,), num_tasks=2, batch=1024, repeats=30),
    # A larger production-like setting.
    "large": dict(input_dim=499, num_experts=32, expert_units=(256, 128), num_tasks=2, batch=4096, repeats=7),
}


class LoopMMoE(keras.layers.Layer):
    """Reference implementation: one Dense per expert layer, a Python loop over experts."""

    def __init__(self, num_experts, expert_units, num_tasks, **kwargs):
        super().__init__(**kwargs)
        self.expert_layers = [
            keras.layers.Dense(u, activation="relu", name=f"expert_{i}_{j}")
            for i in range(num_experts)
            for j, u in enumerate(expert_units)
        ]
        self.depth = len(expert_units)
        self.num_experts = num_experts
        self.gate_layers = [keras.layers.Dense(num_experts, name=f"gate_{t}") for t in range(num_tasks)]

    def call(self, inputs):
        outs = []
        for i in range(self.num_experts):
            h = inputs
            for j in range(self.depth):
                h = self.expert_layers[i * self.depth + j](h)
            outs.append(h)
        experts = tf.stack(outs, axis=1)  # (batch, E, u)
        results = []
        for gate in self.gate_layers:
            g = tf.nn.softmax(gate(inputs), axis=-1)
            results.append(tf.reduce_sum(g[:, :, None] * experts, axis=1))
        return results


def make_model(kind, cfg):
    x = keras.Input((cfg["input_dim"],), name="features")
    if kind == "mmoe_layer":
        outs = MMoELayer(cfg["num_experts"], cfg["expert_units"], num_tasks=cfg["num_tasks"], seed=0)(x)
    else:
        outs = LoopMMoE(cfg["num_experts"], cfg["expert_units"], cfg["num_tasks"])(x)
    outputs = [keras.layers.Dense(1, name=f"task_{t}")(o) for t, o in enumerate(outs)]
    return keras.Model(x, outputs)


def make_steps(model):
    optimizer = keras.optimizers.Adam(1e-3)
    variables = model.trainable_variables

    @tf.function
    def train_step(x, ys):
        with tf.GradientTape() as tape:
            preds = model(x, training=True)
            loss = tf.add_n([tf.reduce_mean(tf.square(p - y)) for p, y in zip(preds, ys)])
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function
    def predict_step(x):
        return model(x, training=False)

    return train_step, predict_step


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy(), out)  # wait for the result
    return time.perf_counter() - start


def run_size(name, cfg, repeats=None):
    repeats = repeats or cfg["repeats"]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(cfg["batch"], cfg["input_dim"])).astype("float32"))
    ys = [tf.constant(rng.normal(size=(cfg["batch"], 1)).astype("float32")) for _ in range(cfg["num_tasks"])]
    models = {kind: make_model(kind, cfg) for kind in ("mmoe_layer", "dense_loop")}
    params = {kind: int(sum(np.prod(v.shape) for v in m.trainable_variables)) for kind, m in models.items()}
    assert params["mmoe_layer"] == params["dense_loop"], params
    steps = {kind: make_steps(m) for kind, m in models.items()}
    for kind in models:  # trace and warm up
        for _ in range(3):
            timed(steps[kind][0], x, ys)
            timed(steps[kind][1], x)
    times = {(kind, what): [] for kind in models for what in ("train", "predict")}
    for _ in range(repeats):
        for kind in models:
            times[(kind, "train")].append(timed(steps[kind][0], x, ys))
            times[(kind, "predict")].append(timed(steps[kind][1], x))
    result = {"size": name, **{k: v for k, v in cfg.items() if k != "repeats"}, "repeats": repeats,
              "trainable_params": params["mmoe_layer"]}
    for what in ("train", "predict"):
        a = statistics.median(times[("mmoe_layer", what)])
        b = statistics.median(times[("dense_loop", what)])
        result[f"{what}_ms_mmoe_layer"] = round(a * 1e3, 2)
        result[f"{what}_ms_dense_loop"] = round(b * 1e3, 2)
        result[f"{what}_speedup"] = round(b / a, 2)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES) + ["all"], default="all")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per step kind (median)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    sizes = sorted(SIZES) if args.size == "all" else [args.size]
    print(f"keras {KERAS_FLAVOR}, tensorflow {tf.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    results = []
    for name in sizes:
        r = run_size(name, SIZES[name], args.repeats)
        results.append(r)
        print(f"{name}: params {r['trainable_params']}, batch {r['batch']}, repeats {r['repeats']}")
        for what in ("train", "predict"):
            print(f"  {what:8s} MMoELayer {r[f'{what}_ms_mmoe_layer']:9.2f} ms   dense loop "
                  f"{r[f'{what}_ms_dense_loop']:9.2f} ms   speedup x{r[f'{what}_speedup']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"keras": KERAS_FLAVOR, "tensorflow": tf.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
