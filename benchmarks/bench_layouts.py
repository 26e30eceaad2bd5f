"""Which way of computing the deeper expert layers is cheaper, over a grid of shapes?

The first expert layer is always one matmul for all experts, ``(batch, d) @ (d, E*u1)``. For
the deeper layers there are two candidate layouts, both written here in plain TensorFlow with
the same variables, gates and mixture (a batched matmul ``(batch, T, E) @ (batch, E, u)``):

* ``bmm``: transpose to ``(E, batch, u)``, one batched matmul per layer over the experts,
  transpose back;
* ``split``: split the first layer's output into the E experts' ``(batch, u)`` blocks and run
  one matmul (with bias and activation, fused by TensorFlow) per expert and layer, then stack;
* ``split_all``: every layer per expert, the first one too: the first kernel viewed as
  ``(d, E, u1)`` and unstacked into the E experts' ``(d, u1)`` kernels (one op whose gradient is
  one stack, unlike E slices of the flat kernel, whose gradients are E kernel-sized tensors);

and, as the reference, the per-expert ``loop`` (one matmul per expert for every layer, outputs
stacked, mixture by multiply-and-sum, as most implementations are written). Each candidate's
training step (forward, squared loss on a linear head per task, gradients, SGD update) and
forward pass are timed alternately in one process (timing.measure), at every point of the grid
(experts x expert sizes x batch). The figure of merit is CPU time (timing.py explains why on a
shared machine); the layer chooses its layout from the shapes with the rule this grid supports
(keras_mmoe/layers/experts.py).

    python benchmarks/bench_layouts.py [--repeats 5] [--json layouts.json]
"""

import argparse
import itertools
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import timing  # noqa: E402  (same directory)

D, T = 499, 2
EXPERTS = (4, 16, 64)
UNITS = ((16, 8), (64, 32), (256, 128), (128, 64, 32))
BATCHES = (512, 4096)
LAYOUTS = ("loop", "bmm", "split", "loop_bmm", "split_all")


class Problem:
    def __init__(self, num_experts, units, batch, dtype, in_dim=D):
        rng = np.random.default_rng(0)
        self.E, self.units, self.dtype, self.D = num_experts, units, dtype, in_dim

        def var(*shape):
            return tf.Variable((rng.normal(size=shape) * 0.05).astype("float32"))

        dims = (in_dim,) + tuple(units)
        self.kernels = [var(in_dim, num_experts * units[0])] + [
            var(num_experts, dims[i], dims[i + 1]) for i in range(1, len(units))
        ]
        self.biases = [var(num_experts * units[0])] + [var(num_experts, u) for u in units[1:]]
        self.gates = [var(in_dim, num_experts) for _ in range(T)]
        self.heads = [var(units[-1], 1) for _ in range(T)]
        self.variables = self.kernels + self.biases + self.gates + self.heads
        self.x = tf.constant(rng.normal(size=(batch, in_dim)).astype("float32"))
        self.ys = [tf.constant(rng.normal(size=(batch, 1)).astype("float32")) for _ in range(T)]

    def c(self, v):
        return tf.cast(v, self.dtype)

    def gate_weights(self, x):  # (batch, T, E), softmax in float32
        return tf.stack([self.c(tf.nn.softmax(tf.matmul(x, g))) for g in self.gates], axis=1)

    def experts(self, x, layout):
        E, c = self.E, self.c
        xx = c(x)
        if layout in ("loop", "loop_bmm"):
            outs = []
            u0 = self.units[0]
            for e in range(E):
                h = tf.nn.relu(tf.nn.bias_add(tf.matmul(xx, c(self.kernels[0][:, e * u0:(e + 1) * u0])),
                                              c(self.biases[0][e * u0:(e + 1) * u0])))
                for k, b in zip(self.kernels[1:], self.biases[1:]):
                    h = tf.nn.relu(tf.nn.bias_add(tf.matmul(h, c(k[e])), c(b[e])))
                outs.append(h)
            return tf.stack(outs, axis=1)
        if layout == "split_all":
            u0 = self.units[0]
            kernels = tf.unstack(tf.reshape(c(self.kernels[0]), (self.D, E, u0)), num=E, axis=1)
            biases = tf.unstack(tf.reshape(c(self.biases[0]), (E, u0)), num=E)
            pieces = [tf.nn.relu(tf.nn.bias_add(tf.matmul(xx, w), bb)) for w, bb in zip(kernels, biases)]
            for k, b in zip(self.kernels[1:], self.biases[1:]):
                pieces = [tf.nn.relu(tf.nn.bias_add(tf.matmul(p, w), bb))
                          for p, w, bb in zip(pieces, tf.unstack(c(k)), tf.unstack(c(b)))]
            return tf.stack(pieces, axis=1)
        h = tf.nn.relu(tf.nn.bias_add(tf.matmul(xx, c(self.kernels[0])), c(self.biases[0])))
        h = tf.reshape(h, (-1, E, self.units[0]))
        if len(self.units) == 1:
            return h
        if layout == "bmm":
            h = tf.transpose(h, (1, 0, 2))
            for k, b in zip(self.kernels[1:], self.biases[1:]):
                h = tf.nn.relu(tf.matmul(h, c(k)) + c(b)[:, None, :])
            return tf.transpose(h, (1, 0, 2))
        pieces = tf.unstack(h, num=E, axis=1)
        for k, b in zip(self.kernels[1:], self.biases[1:]):
            pieces = [tf.nn.relu(tf.nn.bias_add(tf.matmul(p, w), bb))
                      for p, w, bb in zip(pieces, tf.unstack(c(k)), tf.unstack(c(b)))]
        return tf.stack(pieces, axis=1)

    def outputs(self, x, layout):
        h = self.experts(x, layout)
        g = self.gate_weights(x)
        if layout == "loop":  # loop_bmm: the loop's experts, mixed by one batched matmul
            return [tf.reduce_sum(tf.expand_dims(g[:, t], -1) * h, axis=1) for t in range(T)]
        return tf.unstack(tf.matmul(g, h), num=T, axis=1)

    def steps(self, layout):
        @tf.function(autograph=False)
        def train():
            with tf.GradientTape() as tape:
                outs = self.outputs(self.x, layout)
                loss = tf.add_n([tf.reduce_mean(tf.square(tf.cast(tf.matmul(o, self.c(w)), tf.float32) - y))
                                 for o, w, y in zip(outs, self.heads, self.ys)])
            for v, g in zip(self.variables, tape.gradient(loss, self.variables)):
                v.assign_sub(1e-4 * g)
            return loss

        @tf.function(autograph=False)
        def predict():
            return tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in self.outputs(self.x, layout)])

        return train, predict


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--json", default=None)
    parser.add_argument("--experts", type=int, nargs="+", default=list(EXPERTS))
    parser.add_argument("--units", nargs="+", default=[",".join(map(str, u)) for u in UNITS],
                        help="expert layer sizes, comma-separated per shape (default: the grid)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--input-dim", type=int, default=D, help=f"input width d (default {D})")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS,
                        help="the layouts to time (all are checked against the loop)")
    args = parser.parse_args()
    layouts = args.layouts
    env = timing.environment()
    print(", ".join(f"{k} {v}" for k, v in env.items()), f"compute dtype {args.dtype}")
    print("| experts | units | batch | step | " + " | ".join(f"{n} cpu ms" for n in layouts)
          + " | split / bmm (cpu) | split_all / split (cpu) | " + " | ".join(f"{n} wall ms" for n in layouts) + " |")
    results = []
    units_grid = [tuple(int(u) for u in text.split(",")) for text in args.units]
    for num_experts, units, batch in itertools.product(args.experts, units_grid, args.batches):
        problem = Problem(num_experts, units, batch, tf.as_dtype(args.dtype), args.input_dim)
        ref = [o.numpy() for o in problem.outputs(problem.x, "loop")]
        fns = {}
        for layout in LAYOUTS:
            out = [o.numpy() for o in problem.outputs(problem.x, layout)]
            assert all(np.allclose(a.astype("float32"), b.astype("float32"), rtol=2e-2, atol=2e-2)
                       for a, b in zip(out, ref)), layout
            if layout in layouts:
                train, predict = problem.steps(layout)
                fns[(layout, "train")], fns[(layout, "predict")] = train, predict
        load = timing.load_average()
        times = timing.measure(fns, args.repeats, warmup=2)
        for what in ("train", "predict"):
            t = {layout: times[(layout, what)] for layout in layouts}

            def ratio(a, b):
                return round(t[a]["cpu_ms"] / t[b]["cpu_ms"], 3) if a in t and b in t else None

            row = dict(num_experts=num_experts, units=list(units), batch=batch, step=what, load_before=load,
                       load_after=timing.load_average(), **t, split_over_bmm_cpu=ratio("split", "bmm"),
                       split_all_over_split_cpu=ratio("split_all", "split"))
            results.append(row)
            print(f"| {num_experts} | {units} | {batch} | {what} | "
                  + " | ".join(f"{t[n]['cpu_ms']:.2f}" for n in layouts)
                  + f" | {row['split_over_bmm_cpu']} | {row['split_all_over_split_cpu']} | "
                  + " | ".join(f"{t[n]['wall_ms']:.2f}" for n in layouts) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "command": " ".join(sys.argv), "dtype": args.dtype, "results": results},
                      f, indent=2)


if __name__ == "__main__":
    main()
