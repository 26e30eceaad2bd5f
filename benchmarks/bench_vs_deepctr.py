"""keras-mmoe's ``build_mmoe`` against DeepCTR 0.9.4's ``MMOE``: same math, outputs checked equal.

DeepCTR is an optional dependency of this benchmark only (keras-mmoe does not need it):

    pip install deepctr==0.9.4      # pulls only h5py and requests; uses the installed TensorFlow

Both models are built for the same architecture: experts with bias and ReLU, linear gates
*without* bias (DeepCTR's gates have none: ``gate_use_bias=False`` here), the gated mixture,
towers with ReLU and one sigmoid output per task. DeepCTR's output is ``Dense(1, no bias)``
followed by a global bias; keras-mmoe's is ``Dense(1)``: the same function. keras-mmoe's
weights are copied into the DeepCTR model, and the float32 predictions of the two are checked
equal (max abs difference printed, the script stops above 1e-5) before anything is timed.

Timed, alternately in one process (``timing.measure``): a compiled training step
(``tf.function``: forward, binary cross-entropy of each task + the model's regularization
losses, gradients, Adam) and a compiled predict step, for keras-mmoe in float32, in float32
with XLA (``jit_compile=True``), under the ``mixed_bfloat16`` policy, and under both, against
DeepCTR in float32 (DeepCTR has no mixed precision). Ratio = DeepCTR time / keras-mmoe time,
above 1 = keras-mmoe faster. Wall and CPU time are both reported (see timing.py).

DeepCTR 0.9.4 is written for tf.keras 2 (tf-keras); it also builds and runs under Keras 3's
``tf.keras``, and the equality check tells whether its outputs are right there:

    TF_USE_LEGACY_KERAS=1 python benchmarks/bench_vs_deepctr.py             # both sizes
    python benchmarks/bench_vs_deepctr.py --size census --repeats 30        # Keras 3
    python benchmarks/bench_vs_deepctr.py --variants float32 mixed_bfloat16 --json out.json
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")  # one tf.function per model and step: no retracing warnings

import timing  # noqa: E402  (same directory)
from keras_mmoe._keras import keras  # noqa: E402
from keras_mmoe.models import build_mmoe  # noqa: E402

SIZES = {
    # The MMoE paper's census-income setting.
    "census": dict(input_dim=499, num_experts=8, expert_units=(16,), tower_units=(8,), batch=1024,
                   predict_batch=1024, repeats=30),
    # A production-like setting (DeepCTR's default expert and tower sizes, 32 experts).
    "large": dict(input_dim=499, num_experts=32, expert_units=(256, 128), tower_units=(64,), batch=4096,
                  predict_batch=1024, repeats=7),
}
TASKS = ("task_0", "task_1")
VARIANTS = ("float32", "float32_xla", "mixed_bfloat16", "mixed_bfloat16_xla")


def import_deepctr():
    """Imports DeepCTR's MMOE, or exits with how to install it."""
    try:
        import types

        import requests

        # DeepCTR asks PyPI for a newer version in a thread at import: answer "no data" instead.
        requests.get = lambda *args, **kwargs: types.SimpleNamespace(status_code=0, text="")
    except ImportError:
        pass
    try:
        from deepctr.feature_column import DenseFeat
        from deepctr.models import MMOE
    except ImportError as err:
        sys.exit(f"DeepCTR is not installed ({err}); install it with: pip install deepctr==0.9.4")
    return MMOE, DenseFeat


def build_keras_mmoe(cfg, dtype=None):
    inputs = keras.Input((cfg["input_dim"],), name="features")
    return build_mmoe(
        inputs, list(TASKS), num_experts=cfg["num_experts"], expert_units=cfg["expert_units"],
        tower_units=cfg["tower_units"], gate_use_bias=False, seed=0, dtype=dtype, name="keras_mmoe",
    )


def build_deepctr(cfg):
    MMOE, DenseFeat = import_deepctr()
    return MMOE(
        [DenseFeat("features", cfg["input_dim"])], num_experts=cfg["num_experts"],
        expert_dnn_hidden_units=cfg["expert_units"], tower_dnn_hidden_units=cfg["tower_units"],
        gate_dnn_hidden_units=(), task_types=("binary",) * len(TASKS), task_names=TASKS, seed=1024,
    )


def copy_weights(ours, theirs, cfg):
    """Sets the DeepCTR model's weights to the keras-mmoe model's."""
    layer = ours.get_layer("mmoe")
    bank = layer.expert_bank
    kernels = [k.numpy() for k in bank.kernels]
    biases = [b.numpy() for b in bank.biases]
    for i in range(cfg["num_experts"]):
        expert = theirs.get_layer(f"expert_{i}")
        for j in range(len(cfg["expert_units"])):
            expert.kernels[j].assign(kernels[j][:, i, :] if j == 0 else kernels[j][i])
            expert.bias[j].assign(biases[j][i])
    dense_1 = [lyr for lyr in theirs.layers if type(lyr).__name__ == "Dense" and lyr.name.startswith("dense")]
    for t, task in enumerate(TASKS):
        theirs.get_layer(f"gate_softmax_{task}").kernel.assign(layer.gates[t].logits_layer.kernel.numpy())
        tower = theirs.get_layer(f"tower_{task}")
        for j in range(len(cfg["tower_units"])):
            mine = ours.get_layer(f"{task}_tower_{j}")
            tower.kernels[j].assign(mine.kernel.numpy())
            tower.bias[j].assign(mine.bias.numpy())
        out = ours.get_layer(task)
        # DeepCTR: Dense(1, use_bias=False) -> PredictionLayer (global bias, sigmoid), per task in order.
        dense_1[t].kernel.assign(out.kernel.numpy())
        theirs.get_layer(task).global_bias.assign(out.bias.numpy())


def as_list(outputs):
    return [outputs[t] for t in TASKS] if isinstance(outputs, dict) else list(outputs)


def make_steps(model, jit_compile=False):
    optimizer = keras.optimizers.Adam(1e-3)
    variables = model.trainable_variables
    bce = keras.losses.BinaryCrossentropy()

    @tf.function(jit_compile=jit_compile)
    def train_step(x, ys):
        with tf.GradientTape() as tape:
            preds = as_list(model(x, training=True))
            loss = tf.add_n([bce(y, p) for p, y in zip(preds, ys)])
            if model.losses:
                loss += tf.add_n(model.losses)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function(jit_compile=jit_compile)
    def predict_step(x):
        return as_list(model(x, training=False))

    return train_step, predict_step


def same_function(name, ours, deepctr, check, what=""):
    """Checks the two models have the same parameter count and float32 outputs on ``check``
    (exits otherwise); returns (parameter count, max difference, our outputs)."""
    params = {"keras_mmoe": ours.count_params(), "deepctr": deepctr.count_params()}
    if params["keras_mmoe"] != params["deepctr"]:
        sys.exit(f"parameter counts differ: {params}")
    a = np.concatenate([p.numpy() for p in as_list(ours(check, training=False))], axis=1)
    b = np.concatenate([p.numpy() for p in as_list(deepctr(check, training=False))], axis=1)
    max_diff = float(np.abs(a - b).max())
    print(f"{name}{what}: {params['keras_mmoe']} parameters each; "
          f"max |keras-mmoe - DeepCTR| over {len(check)} rows = {max_diff:.2e}")
    if not max_diff <= 1e-5:
        sys.exit("outputs differ: the two models do not compute the same function")
    return params["keras_mmoe"], max_diff, a


def time_against_deepctr(name, cfg, models, data, repeats, params, max_diff):
    """Times every model's train and predict step, alternating in this process, and prints and
    returns each against DeepCTR's. ``models``: {"deepctr": (model, False), variant: (model, jit)}."""
    x, ys, xp = data
    fns = {}
    for key, (model, jit) in models.items():
        train_step, predict_step = make_steps(model, jit)
        fns[(key, "train")] = lambda s=train_step: s(x, ys)
        fns[(key, "predict")] = lambda s=predict_step: s(xp)
    load_before = timing.load_average()
    times = timing.measure(fns, repeats)
    result = {"size": name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k != "repeats"},
              "repeats": repeats, "params": params, "max_abs_diff_float32": max_diff,
              "load_before": load_before, "load_after": timing.load_average(), "times": {}}
    variants = [k for k in models if k != "deepctr"]
    width = max(12, max(map(len, variants)))
    for what in ("train", "predict"):
        base = times[("deepctr", what)]
        result["times"][f"deepctr_{what}"] = base
        print(f"  {what:8s} DeepCTR {'float32':{width + 3}s} wall {base['wall_ms']:9.2f} ms  cpu {base['cpu_ms']:9.2f} ms")
        for variant in variants:
            t = times[(variant, what)]
            t = dict(t, ratio_wall=timing.ratio(base, t), ratio_cpu=timing.ratio(base, t, "cpu_ms"))
            result["times"][f"{variant}_{what}"] = t
            print(f"  {what:8s} keras-mmoe {variant:{width}s} wall {t['wall_ms']:9.2f} ms  cpu {t['cpu_ms']:9.2f} ms"
                  f"   DeepCTR / keras-mmoe: wall x{t['ratio_wall']}, cpu x{t['ratio_cpu']}")
    print(f"  load {load_before} -> {result['load_after']}")
    return result


def make_inputs(cfg):
    """(x, labels, predict batch): seeded random inputs of the size's shapes."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(cfg["batch"], cfg["input_dim"])).astype("float32"))
    ys = [tf.constant(rng.integers(0, 2, size=(cfg["batch"], 1)).astype("float32")) for _ in TASKS]
    return x, ys, x[: cfg["predict_batch"]]


def run_size(name, cfg, variants, repeats=None):
    data = make_inputs(cfg)
    check = data[0][:256]
    reference = build_keras_mmoe(cfg)
    deepctr = build_deepctr(cfg)
    copy_weights(reference, deepctr, cfg)
    params, max_diff, a = same_function(name, reference, deepctr, check)
    models = {"deepctr": (deepctr, False)}
    for variant in variants:
        dtype = "mixed_bfloat16" if variant.startswith("mixed_bfloat16") else None
        model = reference if variant == "float32" else build_keras_mmoe(cfg, dtype)
        if model is not reference:
            model.set_weights(reference.get_weights())
        models[variant] = (model, variant.endswith("_xla"))
        if variant != "float32":
            out = np.concatenate([p.numpy() for p in as_list(model(check, training=False))], axis=1)
            print(f"  {variant}: max |difference| from float32 = {np.abs(out - a).max():.2e}")
    return time_against_deepctr(name, cfg, models, data, repeats or cfg["repeats"], params, max_diff)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES) + ["all"], default="all")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per step (median)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="keras-mmoe variants to time against DeepCTR float32 (default: all)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    env = timing.environment()
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    sizes = sorted(SIZES) if args.size == "all" else [args.size]
    results = [run_size(name, SIZES[name], args.variants, args.repeats) for name in sizes]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "command": " ".join(sys.argv), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
