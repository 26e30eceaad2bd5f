"""Latency and throughput of exported census-income models, loaded in a fresh process.

Three models on the same raw census-income features (7 float, 31 string inputs, encoded
inside the model by ``census_feature_encoder``: normalization and one-hot lookups, 517 columns
on the full training file), exported with ``keras_mmoe.serving.export_for_serving``:

* ``mmoe``: ``build_mmoe`` with the census benchmark's sizes (8 experts x 16, towers of 8);
* ``mlp``: a plain Keras MLP on the same encoded features, one hidden ReLU layer sized to the
  MMoE's parameter count, one sigmoid output per task: what the MMoE adds over the simplest
  model with the same encoder and the same signatures;
* ``mmoe_bf16``: the MMoE built with ``dtype="mixed_bfloat16"`` (``--no-bfloat16`` skips it);
  the fresh process prints its signatures' dtypes: what a bfloat16 model serves in.

The weights are as initialized (``--epochs`` trains them first; latency does not depend on
the values). A second Python process, which never imports keras_mmoe, loads each export with
``tf.saved_model.load`` and calls, alternately model by model:

* ``serving_default`` with raw feature tensors, and ``predict_examples`` with serialized
  ``tf.train.Example`` (the cost of parsing them), at batch 1, 16 and 256: p50 and p99 latency;
* both at batch 1024: throughput in examples per second.

Rows are test rows of the census file. ::

    python benchmarks/bench_serving.py --data-dir DIR [--calls 400] [--json out.json]
    TF_USE_LEGACY_KERAS=1 python benchmarks/bench_serving.py --data-dir DIR
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CHILD = r'''
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf
assert "keras_mmoe" not in sys.modules
args = json.loads(sys.argv[1])
rows = np.load(args["rows"], allow_pickle=True)
names = [n for n in rows.files]
loaded = {name: tf.saved_model.load(path) for name, path in args["exports"].items()}
report = {"signatures": {}, "latency": {}, "throughput": {}}
for name, obj in loaded.items():
    sigs = {}
    for key, fn in obj.signatures.items():
        inputs = {k: v.dtype.name for k, v in fn.structured_input_signature[1].items()}
        outputs = {k: v.dtype.name for k, v in fn.structured_outputs.items()}
        sigs[key] = {"inputs": sorted(set(inputs.values())), "outputs": outputs}
    report["signatures"][name] = sigs

def feature(value):
    if isinstance(value, (bytes, str)):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode() if isinstance(value, str) else value]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))

def batch(n):
    idx = np.arange(n) % len(rows[names[0]])
    raw = {}
    for k in names:
        col = rows[k][idx]
        raw[k] = tf.constant(col.astype(str) if col.dtype == object else col.astype("float32"))
    examples = [tf.train.Example(features=tf.train.Features(feature={k: feature(rows[k][i, 0]) for k in names}))
                .SerializeToString() for i in idx]
    return raw, tf.constant(examples)

def call(name, signature, raw, examples):
    fn = loaded[name].signatures[signature]
    out = fn(**raw) if signature == "serving_default" else fn(examples=examples)
    for t in out.values():
        t.numpy()
    return out

# The two signatures give the same predictions.
raw, examples = batch(64)
for name in loaded:
    a, b = call(name, "serving_default", raw, examples), call(name, "predict_examples", raw, examples)
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6)

for size in args["batches"]:
    raw, examples = batch(size)
    calls = max(20, args["calls"] // max(1, size // 16)) if size > 16 else args["calls"]
    times = {(n, s): [] for n in loaded for s in ("serving_default", "predict_examples")}
    for key in times:
        for _ in range(5):
            call(key[0], key[1], raw, examples)
    for _ in range(calls):
        for key in times:
            start = time.perf_counter()
            call(key[0], key[1], raw, examples)
            times[key].append(time.perf_counter() - start)
    for (n, s), v in times.items():
        v = np.array(v) * 1e3
        report["latency"].setdefault(n, {}).setdefault(s, {})[str(size)] = {
            "p50_ms": round(float(np.percentile(v, 50)), 3), "p99_ms": round(float(np.percentile(v, 99)), 3),
            "calls": calls}

size = args["throughput_batch"]
raw, examples = batch(size)
for key in [(n, s) for n in loaded for s in ("serving_default", "predict_examples")]:
    call(key[0], key[1], raw, examples)
totals = {(n, s): 0.0 for n in loaded for s in ("serving_default", "predict_examples")}
for _ in range(args["throughput_calls"]):
    for key in totals:
        start = time.perf_counter()
        call(key[0], key[1], raw, examples)
        totals[key] += time.perf_counter() - start
for (n, s), seconds in totals.items():
    report["throughput"].setdefault(n, {})[s] = round(size * args["throughput_calls"] / seconds, 1)
print("REPORT " + json.dumps(report))
'''


def build_and_export(args, out_dir):
    from keras_mmoe._keras import keras
    from keras_mmoe.data import load_census_income
    from keras_mmoe.features import census_feature_encoder
    from keras_mmoe.models import build_mmoe, compile_kwargs, functional_model, matched_budget_kwargs
    from keras_mmoe.serving import export_for_serving

    import numpy as np

    data = load_census_income(args.data_dir, group=1, max_rows=args.max_rows)
    tasks = list(data.task_names)
    exports, params = {}, {}
    variants = ["mmoe", "mlp"] + ([] if args.no_bfloat16 else ["mmoe_bf16"])
    for name in variants:
        keras.utils.set_random_seed(0)
        inputs, encoded = census_feature_encoder(data)
        sizes = matched_budget_kwargs(int(encoded.shape[-1]), num_tasks=len(tasks))["mmoe"]
        if name == "mlp":
            target = params["mmoe"]
            d, n = int(encoded.shape[-1]), len(tasks)
            # d*h + h (hidden) + n*(h + 1) (outputs) closest to the MMoE's trainable count.
            extra = sum(int(np.prod(v.shape)) for v in functional_model(inputs, encoded).trainable_weights)
            hidden = max(1, round((target - extra - n) / (d + 1 + n)))
            h = keras.layers.Dense(hidden, activation="relu", name="hidden")(encoded)
            outputs = {t: keras.layers.Dense(1, activation="sigmoid", name=t)(h) for t in tasks}
            model = functional_model(inputs, outputs, name="mlp")
        else:
            model = build_mmoe(inputs, tasks, features=encoded, seed=0,
                               dtype="mixed_bfloat16" if name == "mmoe_bf16" else None, **sizes)
        params[name] = int(sum(int(np.prod(v.shape)) for v in model.trainable_weights))
        if args.epochs:
            model.compile(keras.optimizers.Adam(1e-3), **compile_kwargs(tasks))
            model.fit(data.train, epochs=args.epochs, verbose=0)
        exports[name] = export_for_serving(model, os.path.join(out_dir, name), version=1)
    rows = {k: v[:2048] for k, v in data.features["test"].items()}
    rows_path = os.path.join(out_dir, "rows.npz")
    np.savez(rows_path, **{k: (v.astype(object) if v.dtype.kind in "OUS" else v) for k, v in rows.items()})
    return exports, params, rows_path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="census data directory (see load_census_income)")
    parser.add_argument("--max-rows", type=int, default=None, help="rows read per file (the encoder adapts on them)")
    parser.add_argument("--epochs", type=int, default=0, help="train the models first (default: no)")
    parser.add_argument("--calls", type=int, default=400, help="timed calls per model and signature at batch <= 16")
    parser.add_argument("--throughput-calls", type=int, default=20)
    parser.add_argument("--no-bfloat16", action="store_true", help="skip the mixed_bfloat16 MMoE export")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import timing

    env = timing.environment()
    with tempfile.TemporaryDirectory() as out_dir:
        exports, params, rows_path = build_and_export(args, out_dir)
        child_args = dict(exports=exports, rows=rows_path, batches=[1, 16, 256], calls=args.calls,
                          throughput_batch=1024, throughput_calls=args.throughput_calls)
        load_before = timing.load_average()
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(child_args)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"serving process failed:\n{proc.stderr[-4000:]}")
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("REPORT "))[7:])
    report.update(environment=env, params=params, load_before=load_before, load_after=timing.load_average(),
                  command=" ".join(sys.argv))
    print(", ".join(f"{k} {v}" for k, v in env.items()), f"(load after {report['load_after']})")
    print("trainable parameters:", params)
    for name, sigs in report["signatures"].items():
        for key, sig in sigs.items():
            print(f"  {name} {key}: inputs {sig['inputs']}, outputs {sig['outputs']}")
    for name, sigs in report["latency"].items():
        for sig, by_size in sigs.items():
            cells = "  ".join(f"b{size}: p50 {v['p50_ms']:.3f} p99 {v['p99_ms']:.3f} ms" for size, v in by_size.items())
            print(f"  {name:10s} {sig:17s} {cells}  |  b1024: {report['throughput'][name][sig]:.0f} ex/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
