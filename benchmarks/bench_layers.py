"""Micro-benchmark: MMoELayer (stacked-kernel experts) against a per-expert Dense loop.

Both implement the same math (paper eq. 6-8) with the same parameter count: experts are
MLPs, one softmax gate per task, the gated mixture per task. The loop version is written
the way most existing implementations are: one ``Dense`` per expert layer, a Python loop
over experts, outputs stacked. Timings are of compiled ``tf.function`` steps (a training
step = forward + MSE loss + gradients + Adam update; inference = forward), taken
alternately A, B, A, B... in one process so that machine load affects both alike; the
reported figures are the medians over repeats of the wall time and of the process's CPU
time (timing.py), and the ratio is loop / MMoELayer.

    python benchmarks/bench_layers.py                 # both sizes, Keras 3
    TF_USE_LEGACY_KERAS=1 python benchmarks/bench_layers.py
    python benchmarks/bench_layers.py --size census --repeats 30
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import timing  # noqa: E402  (same directory)
from keras_mmoe import MMoELayer  # noqa: E402
from keras_mmoe._keras import keras  # noqa: E402

SIZES = {
    # MMoE paper census-income setting: 499 inputs, 8 experts x 16 units, 2 tasks.
    "census": dict(input_dim=499, num_experts=8, expert_units=(16,), num_tasks=2, batch=1024, repeats=30),
    # A larger production-like setting.
    "large": dict(input_dim=499, num_experts=32, expert_units=(256, 128), num_tasks=2, batch=4096, repeats=7),
}


class LoopMMoE(keras.layers.Layer):
    """Reference implementation: one Dense per expert layer, a Python loop over experts."""

    def __init__(self, num_experts, expert_units, num_tasks, gate_use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.expert_layers = [
            keras.layers.Dense(u, activation="relu", name=f"expert_{i}_{j}")
            for i in range(num_experts)
            for j, u in enumerate(expert_units)
        ]
        self.depth = len(expert_units)
        self.num_experts = num_experts
        self.gate_layers = [
            keras.layers.Dense(num_experts, use_bias=gate_use_bias, name=f"gate_{t}") for t in range(num_tasks)
        ]

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


def run_size(name, cfg, repeats=None):
    repeats = repeats or cfg["repeats"]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(cfg["batch"], cfg["input_dim"])).astype("float32"))
    ys = [tf.constant(rng.normal(size=(cfg["batch"], 1)).astype("float32")) for _ in range(cfg["num_tasks"])]
    models = {kind: make_model(kind, cfg) for kind in ("mmoe_layer", "dense_loop")}
    params = {kind: int(sum(np.prod(v.shape) for v in m.trainable_variables)) for kind, m in models.items()}
    assert params["mmoe_layer"] == params["dense_loop"], params
    fns = {}
    for kind, model in models.items():
        train_step, predict_step = make_steps(model)
        fns[(kind, "train")] = lambda step=train_step: step(x, ys)
        fns[(kind, "predict")] = lambda step=predict_step: step(x)
    load_before = timing.load_average()
    times = timing.measure(fns, repeats)
    result = {"size": name, **{k: v for k, v in cfg.items() if k != "repeats"}, "repeats": repeats,
              "trainable_params": params["mmoe_layer"], "load_before": load_before,
              "load_after": timing.load_average()}
    for what in ("train", "predict"):
        a, b = times[("mmoe_layer", what)], times[("dense_loop", what)]
        result[f"{what}_mmoe_layer"] = a
        result[f"{what}_dense_loop"] = b
        result[f"{what}_speedup_wall"] = timing.ratio(b, a)
        result[f"{what}_speedup_cpu"] = timing.ratio(b, a, "cpu_ms")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES) + ["all"], default="all")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per step kind (median)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    env = timing.environment()
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    sizes = sorted(SIZES) if args.size == "all" else [args.size]
    results = []
    for name in sizes:
        r = run_size(name, SIZES[name], args.repeats)
        results.append(r)
        print(f"{name}: params {r['trainable_params']}, batch {r['batch']}, repeats {r['repeats']}, "
              f"load {r['load_before']} -> {r['load_after']}")
        for what in ("train", "predict"):
            a, b = r[f"{what}_mmoe_layer"], r[f"{what}_dense_loop"]
            print(f"  {what:8s} MMoELayer wall {a['wall_ms']:9.2f} ms cpu {a['cpu_ms']:9.2f} ms   dense loop wall "
                  f"{b['wall_ms']:9.2f} ms cpu {b['cpu_ms']:9.2f} ms   speedup wall x{r[f'{what}_speedup_wall']} "
                  f"cpu x{r[f'{what}_speedup_cpu']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "command": " ".join(sys.argv), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
