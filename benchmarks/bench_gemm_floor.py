"""How much of a training step is matrix multiplication? The GEMM floor of the large size.

At the large size of ``bench_layers.py`` (input 499, 32 experts x (256, 128), batch 4096) a
training step costs about 93 GFLOP of matrix products, whichever way the experts are laid out:

    forward    x W1 (4096x499 @ 499x256, per expert)         33.5 GFLOP
               h1 W2 (4096x256 @ 256x128, per expert)         8.6 GFLOP
    backward   dW1 = x^T dh1                                  33.5 GFLOP
               dW2 = h1^T dh2, dh1 = dh2 W2^T                17.2 GFLOP
    (no gradient with respect to the model input)

This script times exactly these products, alone, in compiled ``tf.function`` s (outputs
reduced to a scalar in the graph, so no copy to NumPy is timed), in two layouts:

* ``per-expert``: 32 independent matmuls per product, as the Dense-loop implementation runs them;
* ``stacked``: one matmul over all experts for the first layer and one batched matmul for the
  second, as ``MMoELayer`` runs them;

and, in the same process, the forward pass, forward + gradients and the full training step of
both implementations from ``bench_layers.py`` (which part of the step differs). The ratio full
step / GEMM floor shows how much of a step is left for anything a better layout could remove.
Wall and CPU time are both reported (timing.py); on a shared machine the CPU time is steadier.

    python benchmarks/bench_gemm_floor.py [--repeats 7]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bench_layers  # noqa: E402  (same directory)
import timing  # noqa: E402

B, D, E, U1, U2 = 4096, 499, 32, 256, 128


def gemm_functions():
    rng = np.random.default_rng(0)

    def t(*shape):
        return tf.constant(rng.normal(size=shape).astype("float32"))

    x = t(B, D)
    w1, w2 = t(D, E * U1), t(E, U1, U2)
    h1, dh2 = t(E, B, U1), t(E, B, U2)
    dh1_flat = t(B, E * U1)
    w1s = [w1[:, i * U1:(i + 1) * U1] for i in range(E)]
    h1s, w2s, dh2s = list(tf.unstack(h1)), list(tf.unstack(w2)), list(tf.unstack(dh2))
    dh1s = [dh1_flat[:, i * U1:(i + 1) * U1] for i in range(E)]

    @tf.function
    def per_expert():
        total = 0.0
        for i in range(E):
            total += tf.reduce_sum(tf.matmul(x, w1s[i]))                       # forward layer 1
            total += tf.reduce_sum(tf.matmul(h1s[i], w2s[i]))                  # forward layer 2
            total += tf.reduce_sum(tf.matmul(x, dh1s[i], transpose_a=True))    # dW1
            total += tf.reduce_sum(tf.matmul(h1s[i], dh2s[i], transpose_a=True))  # dW2
            total += tf.reduce_sum(tf.matmul(dh2s[i], w2s[i], transpose_b=True))  # dh1
        return total

    @tf.function
    def stacked():
        total = tf.reduce_sum(tf.matmul(x, w1))
        total += tf.reduce_sum(tf.matmul(h1, w2))
        total += tf.reduce_sum(tf.matmul(x, dh1_flat, transpose_a=True))
        total += tf.reduce_sum(tf.matmul(h1, dh2, transpose_a=True))
        total += tf.reduce_sum(tf.matmul(dh2, w2, transpose_b=True))
        return total

    return {"GEMM floor, per-expert": per_expert, "GEMM floor, stacked": stacked}


def forward_and_gradients(model, x, ys):
    """Compiled forward pass and forward + gradients (no optimizer) of ``model``, scalar outputs."""
    variables = model.trainable_variables

    @tf.function
    def forward():
        return tf.add_n([tf.reduce_sum(p) for p in model(x, training=True)])

    @tf.function
    def gradients():
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_mean(tf.square(p - y)) for p, y in zip(model(x, training=True), ys)])
        return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(loss, variables)])

    return forward, gradients


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    cfg = bench_layers.SIZES["large"]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(cfg["batch"], cfg["input_dim"])).astype("float32"))
    ys = [tf.constant(rng.normal(size=(cfg["batch"], 1)).astype("float32")) for _ in range(cfg["num_tasks"])]
    fns = dict(gemm_functions())
    for kind in ("mmoe_layer", "dense_loop"):
        model = bench_layers.make_model(kind, cfg)
        train_step, _ = bench_layers.make_steps(model)
        fns[f"forward, {kind}"], fns[f"forward+gradients, {kind}"] = forward_and_gradients(model, x, ys)
        fns[f"full training step, {kind}"] = lambda step=train_step: step(x, ys)
    load_before = timing.load_average()
    times = timing.measure(fns, args.repeats, warmup=2)
    gflop = 2 * B * E * (2 * D * U1 + 3 * U1 * U2) / 1e9
    forward_gflop = 2 * B * E * (D * U1 + U1 * U2) / 1e9
    print(", ".join(f"{k} {v}" for k, v in timing.environment().items()))
    print(f"large size: {gflop:.1f} GFLOP of matrix products per training step "
          f"({forward_gflop:.1f} in the forward pass); median of {args.repeats}; "
          f"load {load_before} -> {timing.load_average()}")
    for name, t in times.items():
        work = forward_gflop if name.startswith("forward,") else gflop
        print(f"  {name:36s} wall {t['wall_ms']:8.1f} ms ({work / t['wall_ms'] * 1e3:4.0f} GFLOP/s)   "
              f"cpu {t['cpu_ms']:8.1f} ms")
    for key in ("wall_ms", "cpu_ms"):
        floor = min(times["GEMM floor, stacked"][key], times["GEMM floor, per-expert"][key])
        print(f"  {key[:-3]:4s}: full step / fastest GEMM floor: MMoELayer "
              f"{times['full training step, mmoe_layer'][key] / floor:.2f}, Dense loop "
              f"{times['full training step, dense_loop'][key] / floor:.2f}")


if __name__ == "__main__":
    main()
