"""Micro-benchmark: CGC's experts as one ExpertBank per task plus a shared one, or as one fused bank.

CGCLayer keeps one :class:`ExpertBank` per task and one shared (``T + 1`` banks), because at
deeper PLE levels each bank reads a different input. At the first level every bank reads the
same input, so the ``T m + s`` experts could be one fused bank (one matmul) sliced into the
task and shared groups. This measures what that would save: forward + gradients of the
experts and their slicing (a compiled ``tf.function``), ratio = separate / fused; and, for
scale, a whole training step (forward, MSE, gradients, Adam) of ``build_cgc`` against
``build_mmoe`` with the same experts (MMoE: one bank), ratio = CGC / MMoE. Each pair
alternates A, B, A, B... in one process; figures are medians over repeats.

    python benchmarks/bench_cgc_banks.py
    TF_USE_LEGACY_KERAS=1 python benchmarks/bench_cgc_banks.py
"""

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from keras_mmoe import KERAS_FLAVOR  # noqa: E402
from keras_mmoe._keras import keras  # noqa: E402
from keras_mmoe.layers import ExpertBank  # noqa: E402
from keras_mmoe.models import build_cgc, build_mmoe  # noqa: E402

SIZES = {
    # Census-like: 499 inputs, 2 tasks, 2 experts per task + 4 shared, 16 units (8 experts, as MMoE's 8 x 16).
    "census": dict(input_dim=499, num_tasks=2, task_experts=2, shared_experts=4, units=(16,), batch=1024, repeats=200),
    # Larger: 2 tasks, 8 experts per task + 16 shared (32 experts) of (256, 128) units.
    "large": dict(input_dim=499, num_tasks=2, task_experts=8, shared_experts=16, units=(256, 128), batch=4096,
                  repeats=7),
}


def make_steps(cfg):
    t, m, s, d = cfg["num_tasks"], cfg["task_experts"], cfg["shared_experts"], cfg["input_dim"]
    x = tf.random.stateless_normal((cfg["batch"], d), seed=(0, 1))
    fused = ExpertBank(t * m + s, cfg["units"], seed=0, name="fused")
    fused.build((None, d))
    banks = [ExpertBank(m, cfg["units"], seed=10 + k, name=f"task_{k}") for k in range(t)]
    banks.append(ExpertBank(s, cfg["units"], seed=99, name="shared"))
    for bank in banks:
        bank.build((None, d))

    @tf.function
    def fused_step():
        with tf.GradientTape() as tape:
            parts = tf.split(fused(x), [m] * t + [s], axis=1)
            loss = tf.add_n([tf.reduce_sum(p) for p in parts])
        return tape.gradient(loss, fused.trainable_variables)

    @tf.function
    def separate_step():
        variables = [v for bank in banks for v in bank.trainable_variables]
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(bank(x)) for bank in banks])
        return tape.gradient(loss, variables)

    return fused_step, separate_step


def make_train_steps(cfg):
    """Whole-model training steps (forward, MSE, gradients, Adam) of build_mmoe and build_cgc, same experts."""
    t, m, s, d = cfg["num_tasks"], cfg["task_experts"], cfg["shared_experts"], cfg["input_dim"]
    tasks = {f"t{k}": "regression" for k in range(t)}
    x = tf.random.stateless_normal((cfg["batch"], d), seed=(0, 2))
    models = {
        "mmoe": build_mmoe(d, tasks, num_experts=t * m + s, expert_units=cfg["units"], seed=0),
        "cgc": build_cgc(d, tasks, num_shared_experts=s, num_task_experts=m, expert_units=cfg["units"], seed=0),
    }
    steps = {}
    for name, model in models.items():
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(model.trainable_variables)

        @tf.function
        def step(model=model, optimizer=optimizer):
            with tf.GradientTape() as tape:
                out = model({"features": x}, training=True)
                loss = tf.add_n([tf.reduce_mean(tf.square(v)) for v in out.values()])
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        steps[name] = step
    return steps["mmoe"], steps["cgc"]


def alternate(a, b, repeats):
    """Median milliseconds of ``a`` and ``b``, called alternately after a warm-up."""
    for _ in range(3):  # trace and warm up
        a(), b()
    times = ([], [])
    for _ in range(repeats):
        for i, step in enumerate((a, b)):
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), step())
            times[i].append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def run(size, repeats):
    cfg = SIZES[size]
    repeats = repeats or cfg["repeats"]
    fused_ms, separate_ms = alternate(*make_steps(cfg), repeats)
    mmoe_ms, cgc_ms = alternate(*make_train_steps(cfg), repeats)
    return dict(size=size, keras=KERAS_FLAVOR, repeats=repeats,
                experts_fused_ms=round(fused_ms, 2), experts_separate_ms=round(separate_ms, 2),
                experts_ratio=round(separate_ms / fused_ms, 3),
                train_mmoe_ms=round(mmoe_ms, 2), train_cgc_ms=round(cgc_ms, 2), train_ratio=round(cgc_ms / mmoe_ms, 3))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), nargs="+", default=sorted(SIZES))
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    print(json.dumps(dict(machine=platform.machine(), cpus=os.cpu_count(), tf=tf.__version__,
                          load=os.getloadavg())))
    for size in args.size:
        print(json.dumps(run(size, args.repeats)))


if __name__ == "__main__":
    main()
