"""keras-mmoe's ``build_cgc`` / ``build_ple`` against DeepCTR 0.9.4's ``PLE``: same math, outputs checked equal.

DeepCTR is an optional dependency of this benchmark only (``pip install deepctr==0.9.4``).
The method is ``bench_vs_deepctr.py``'s (the MMoE comparison), for CGC (one level) and PLE.

Both sides compute the same function. DeepCTR's ``PLE`` builds, per level, one ``DNN``
(bias, ReLU on every layer) per expert: ``m`` for each task (reading the task's input) and
``s`` shared (reading the shared input). Task ``k``'s gate is ``Dense(m + s, no bias,
softmax)`` over task ``k``'s experts then the shared ones; every level but the last has a
shared gate, ``Dense(T m + s, no bias, softmax)`` over every task's experts in task order
then the shared ones; the mixture is ``reduce_sum(stack(experts) * gate)``. With
``gate_dnn_hidden_units=()`` the gates are linear. Towers: ``DNN`` (bias, ReLU), then
``Dense(1, no bias)`` and a global bias with a sigmoid: keras-mmoe's ``Dense(1, sigmoid)``.
keras-mmoe is built with ``gate_use_bias=False`` and otherwise its defaults (experts with
bias and ReLU, the same expert order in every gate); ``build_cgc`` for one level, ``build_ple``
for more. keras-mmoe's weights are copied into the DeepCTR model and the float32 predictions
are checked equal (max abs difference printed, the script stops above 1e-5) before timing.

Timed, alternately in one process (``timing.measure``): a compiled training step
(``tf.function``: forward, binary cross-entropy of each task + regularization losses,
gradients, Adam) and a compiled predict step, both float32 (``--xla`` adds keras-mmoe with
``jit_compile=True``). Ratio = DeepCTR time / keras-mmoe time, above 1 = keras-mmoe faster.
Wall and CPU time are both reported (see timing.py and benchmarks/README.md).

    TF_USE_LEGACY_KERAS=1 python benchmarks/bench_ple_vs_deepctr.py         # every size
    python benchmarks/bench_ple_vs_deepctr.py --size census_cgc census_ple --repeats 30
    python benchmarks/bench_ple_vs_deepctr.py --size large_cgc --json out.json
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")

import timing  # noqa: E402  (same directory)
from bench_vs_deepctr import import_deepctr, make_inputs, same_function, time_against_deepctr  # noqa: E402
from keras_mmoe._keras import keras  # noqa: E402
from keras_mmoe.models import build_cgc, build_ple  # noqa: E402

CENSUS = dict(input_dim=499, num_task_experts=2, num_shared_experts=4, expert_units=(16,), tower_units=(8,),
              batch=1024, predict_batch=1024, repeats=30)
LARGE = dict(input_dim=499, num_task_experts=8, num_shared_experts=16, expert_units=(256, 128), tower_units=(64,),
             batch=4096, predict_batch=1024, repeats=7)
SIZES = {
    # The census-income setting of the MMoE comparison: 2 tasks x 2 own experts + 4 shared = MMoE's 8 x 16.
    "census_cgc": dict(CENSUS, num_levels=1),
    "census_ple": dict(CENSUS, num_levels=2),
    # The large MMoE size's 32 experts x (256, 128) as 2 x 8 own + 16 shared, towers 64.
    "large_cgc": dict(LARGE, num_levels=1),
    "large_ple": dict(LARGE, num_levels=2),
}
TASKS = ("task_0", "task_1")


def build_keras_ple(cfg):
    inputs = keras.Input((cfg["input_dim"],), name="features")
    kwargs = dict(
        num_task_experts=cfg["num_task_experts"], num_shared_experts=cfg["num_shared_experts"],
        expert_units=cfg["expert_units"], tower_units=cfg["tower_units"], gate_use_bias=False, seed=0,
    )
    if cfg["num_levels"] == 1:
        return build_cgc(inputs, list(TASKS), name="keras_mmoe", **kwargs)
    return build_ple(inputs, list(TASKS), num_levels=cfg["num_levels"], name="keras_mmoe", **kwargs)


def build_deepctr(cfg):
    _, DenseFeat = import_deepctr()
    from deepctr.models import PLE

    return PLE(
        [DenseFeat("features", cfg["input_dim"])], shared_expert_num=cfg["num_shared_experts"],
        specific_expert_num=cfg["num_task_experts"], num_levels=cfg["num_levels"],
        expert_dnn_hidden_units=cfg["expert_units"], tower_dnn_hidden_units=cfg["tower_units"],
        gate_dnn_hidden_units=(), task_types=("binary",) * len(TASKS), task_names=TASKS, seed=1024,
    )


def levels_of(model):
    """keras-mmoe's CGC levels (CGCLayer objects), first to last."""
    names = [layer.name for layer in model.layers]
    return [model.get_layer("cgc")] if "cgc" in names else list(model.get_layer("ple").levels)


def copy_bank(bank, theirs, names):
    """Expert ``i`` of ``bank`` (stacked kernels) into DeepCTR's ``DNN`` layer ``names[i]``."""
    kernels = [k.numpy() for k in bank.kernels]
    biases = [b.numpy() for b in bank.biases]
    for i, name in enumerate(names):
        expert = theirs.get_layer(name)
        for j in range(len(kernels)):
            expert.kernels[j].assign(kernels[j][:, i, :] if j == 0 else kernels[j][i])
            expert.bias[j].assign(biases[j][i])


def copy_weights(ours, theirs, cfg):
    """Sets the DeepCTR model's weights to the keras-mmoe model's."""
    m, s = cfg["num_task_experts"], cfg["num_shared_experts"]
    for level_index, level in enumerate(levels_of(ours)):
        prefix = f"level_{level_index}_"
        for k, task in enumerate(TASKS):
            copy_bank(level.task_expert_banks[k], theirs, [f"{prefix}task_{task}_expert_specific_{j}" for j in range(m)])
            theirs.get_layer(f"{prefix}gate_softmax_specific_{task}").kernel.assign(
                level.gates[k].logits_layer.kernel.numpy()
            )
        copy_bank(level.shared_expert_bank, theirs, [f"{prefix}expert_shared_{j}" for j in range(s)])
        if level.return_shared:
            theirs.get_layer(f"{prefix}gate_softmax_shared").kernel.assign(
                level.gates[len(TASKS)].logits_layer.kernel.numpy()
            )
    # DeepCTR's logits: Dense(1, use_bias=False), the only auto-named Dense layers, one per task in order.
    dense_1 = [lyr for lyr in theirs.layers if type(lyr).__name__ == "Dense" and lyr.name.startswith("dense")]
    for t, task in enumerate(TASKS):
        tower = theirs.get_layer(f"tower_{task}")
        for j in range(len(cfg["tower_units"])):
            mine = ours.get_layer(f"{task}_tower_{j}")
            tower.kernels[j].assign(mine.kernel.numpy())
            tower.bias[j].assign(mine.bias.numpy())
        out = ours.get_layer(task)
        dense_1[t].kernel.assign(out.kernel.numpy())
        theirs.get_layer(task).global_bias.assign(out.bias.numpy())


def describe(cfg):
    return (f"{cfg['input_dim']} in, {cfg['num_levels']} level(s) of 2 x {cfg['num_task_experts']} task + "
            f"{cfg['num_shared_experts']} shared experts x {cfg['expert_units']}, towers {cfg['tower_units']}, "
            f"batch {cfg['batch']}")


def run_size(name, cfg, xla=False, repeats=None):
    data = make_inputs(cfg)
    ours = build_keras_ple(cfg)
    deepctr = build_deepctr(cfg)
    copy_weights(ours, deepctr, cfg)
    params, max_diff, _ = same_function(name, ours, deepctr, data[0][:256], f" ({describe(cfg)})")
    models = {"deepctr": (deepctr, False), "float32": (ours, False)}
    if xla:
        models["float32_xla"] = (ours, True)
    return time_against_deepctr(name, cfg, models, data, repeats or cfg["repeats"], params, max_diff)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", nargs="+", choices=sorted(SIZES) + ["all"], default=["all"])
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per step (median)")
    parser.add_argument("--xla", action="store_true", help="also time keras-mmoe with jit_compile=True")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    env = timing.environment()
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    sizes = list(SIZES) if "all" in args.size else args.size
    results = [run_size(name, SIZES[name], args.xla, args.repeats) for name in sizes]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "command": " ".join(sys.argv), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
