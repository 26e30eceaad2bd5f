"""Does bfloat16 (or XLA) training change census-income test AUC? Same seeds, float32 beside it.

The census-income MMoE of the paper's benchmark (raw features encoded inside the model by
``census_feature_encoder``, 8 experts x 16 units, towers of 8, Adam 1e-3, batch 1024, early
stopping on the main task's validation AUC with patience 2, best weights restored) is trained
once per seed and variant:

* ``float32``: the reference;
* ``mixed_bfloat16``: ``build_mmoe(..., dtype="mixed_bfloat16")``: the MMoE layer and the
  towers' hidden layers compute in bfloat16, variables, outputs and losses stay float32;
* ``float32_xla`` / ``mixed_bfloat16_xla``: the same compiled with ``jit_compile=True``.

For one seed every variant starts from the same initial weights (``seed`` of the layer) and
sees the same shuffled batches, so the AUC difference is the effect of the arithmetic (plus
the nondeterminism of multi-threaded float sums). The variants of one seed run one after the
other, so machine load affects them alike. Reported: test AUC per task, the difference from
float32 per seed, its mean, and the mean training seconds per epoch.

    python benchmarks/bench_precision_census.py --data-dir DIR [--runs 3] [--epochs 10]
        [--variants float32 mixed_bfloat16] [--json out.json]

``--data-dir`` is the directory holding ``census-income/census-income.{data,test}.gz`` (as for
``keras_mmoe.data.load_census_income``; absent files are downloaded there).
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import timing  # noqa: E402  (same directory)
from keras_mmoe._keras import keras  # noqa: E402
from keras_mmoe.data import load_census_income  # noqa: E402
from keras_mmoe.features import census_feature_encoder  # noqa: E402
from keras_mmoe.models import build_mmoe, compile_kwargs, matched_budget_kwargs  # noqa: E402

VARIANTS = ("float32", "mixed_bfloat16", "float32_xla", "mixed_bfloat16_xla")


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)

    def on_train_begin(self, logs=None):
        self.seconds = []


def train_one(data, variant, seed, epochs, patience):
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    inputs, encoded = census_feature_encoder(data)
    sizes = matched_budget_kwargs(int(encoded.shape[-1]), num_tasks=len(data.task_names))["mmoe"]
    dtype = "mixed_bfloat16" if variant.startswith("mixed_bfloat16") else None
    model = build_mmoe(inputs, list(data.task_names), features=encoded, seed=seed, dtype=dtype, **sizes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=variant.endswith("_xla"),
                  **compile_kwargs(data.task_names))
    monitor = f"val_{data.main_task}_auc"
    stop = keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=patience, restore_best_weights=True)
    timer = EpochTimer()
    model.fit(data.dataset("train", seed=seed), validation_data=data.validation, epochs=epochs,
              callbacks=[stop, timer], verbose=0)
    results = model.evaluate(data.test, verbose=0, return_dict=True)
    return {
        "variant": variant,
        "seed": seed,
        "epochs_trained": len(timer.seconds),
        "seconds_per_epoch": statistics.median(timer.seconds),
        "test_auc": {task: float(results[f"{task}_auc"]) for task in data.task_names},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="census data directory (see load_census_income)")
    parser.add_argument("--group", type=int, default=1, choices=(1, 2))
    parser.add_argument("--runs", type=int, default=3, help="seeds 0..runs-1 (default 3)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--max-rows", type=int, default=None, help="only the first rows of each file (smoke runs)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["float32", "mixed_bfloat16"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if "float32" not in args.variants:
        args.variants = ["float32"] + args.variants
    env = timing.environment()
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    data = load_census_income(args.data_dir, group=args.group, max_rows=args.max_rows)
    runs = []
    for seed in range(args.runs):
        for variant in args.variants:
            record = train_one(data, variant, seed, args.epochs, args.patience)
            runs.append(record)
            print(f"seed {seed} {variant:19s} epochs {record['epochs_trained']:2d} "
                  f"({record['seconds_per_epoch']:.1f} s each)  test AUC "
                  + ", ".join(f"{t} {v:.4f}" for t, v in record["test_auc"].items()), flush=True)
    summary = {}
    for variant in args.variants:
        mine = [r for r in runs if r["variant"] == variant]
        entry = {"seconds_per_epoch": statistics.median(r["seconds_per_epoch"] for r in mine),
                 "epochs_trained": [r["epochs_trained"] for r in mine]}
        for task in data.task_names:
            aucs = [r["test_auc"][task] for r in mine]
            ref = [r["test_auc"][task] for r in runs if r["variant"] == "float32"]
            diffs = [a - b for a, b in zip(aucs, ref)]
            entry[task] = {"mean_auc": statistics.mean(aucs), "diff_from_float32": diffs,
                           "mean_diff": statistics.mean(diffs), "max_abs_diff": max(abs(d) for d in diffs)}
        summary[variant] = entry
    print(f"summary over {args.runs} seeds (load {env['load_average_1min']} -> {timing.load_average()}):")
    for variant, entry in summary.items():
        print(f"  {variant:19s} {entry['seconds_per_epoch']:.1f} s/epoch  "
              + "  ".join(f"{t} AUC {entry[t]['mean_auc']:.4f} (diff mean {entry[t]['mean_diff']:+.4f}, "
                          f"max |diff| {entry[t]['max_abs_diff']:.4f})" for t in data.task_names))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "command": " ".join(sys.argv), "runs": runs, "summary": summary}, f,
                      indent=2)


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
