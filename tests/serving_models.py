"""Helpers of the serving tests: small models, input batches, and the separate-process verifier.

The verifier script runs in a fresh Python process that imports only TensorFlow, NumPy and the
tensorflow-serving-api protos (never keras_mmoe, asserted at its end): it loads each export
with ``tf.saved_model.load`` and with the TF1 session loader (TF Serving's C++ path), runs every
signature on the given batches, replays the warmup records, checks the ops, and writes all
results to an .npz file for the test to compare with in-memory predictions.
"""

import json
import os

import numpy as np
import tensorflow as tf

from conftest import run_python
from keras_mmoe._keras import keras

CITIES = ["paris", "lima", "oslo", "kyoto"]
SEGMENTS = ["a", "b", "c"]


def build_feature_model(seed=0, dropout=0.5):
    """Dict inputs of every kind the exporter supports, dict outputs (binary + regression), Dropout.

    Inputs: ``numeric`` float32 (3,), ``count`` int32 scalar, ``city`` string scalar
    (StringLookup -> Embedding), ``segment`` string (1,) (StringLookup one-hot).
    """
    keras.utils.set_random_seed(seed)
    numeric = keras.Input((3,), dtype="float32", name="numeric")
    count = keras.Input((), dtype="int32", name="count")
    city = keras.Input((), dtype="string", name="city")
    segment = keras.Input((1,), dtype="string", name="segment")
    city_ids = keras.layers.StringLookup(vocabulary=CITIES, name="city_lookup")(city)
    city_vec = keras.layers.Embedding(len(CITIES) + 1, 4, name="city_embedding")(city_ids)
    segment_vec = keras.layers.StringLookup(vocabulary=SEGMENTS, output_mode="one_hot", name="segment_lookup")(segment)
    count_vec = keras.layers.Reshape((1,), name="count_column")(keras.layers.Rescaling(0.1, name="count_scale")(count))
    h = keras.layers.Concatenate(name="concat")([numeric, count_vec, city_vec, segment_vec])
    h = keras.layers.Dense(16, activation="relu", name="hidden")(h)
    h = keras.layers.Dropout(dropout, name="dropout")(h)
    outputs = {
        "click": keras.layers.Dense(1, activation="sigmoid", name="click")(h),
        "value": keras.layers.Dense(1, name="value")(h),
    }
    return keras.Model({"numeric": numeric, "count": count, "city": city, "segment": segment}, outputs, name="features")


def feature_batch(n, seed=0):
    """``n`` rows for :func:`build_feature_model`, about a third with city/segment never seen."""
    rng = np.random.default_rng(seed)
    cities = np.array(CITIES + ["atlantis", "", "Paris"], dtype=object)  # the last three are unseen
    segments = np.array(SEGMENTS + ["zz"], dtype=object)
    return {
        "numeric": rng.normal(size=(n, 3)).astype(np.float32),
        "count": rng.integers(0, 50, size=(n,)).astype(np.int32),
        "city": np.array([c.encode() for c in rng.choice(cities, n)], dtype=object),
        "segment": np.array([[s.encode()] for s in rng.choice(segments, n)], dtype=object),
    }


def to_tensors(inputs):
    return {k: tf.constant(v) for k, v in inputs.items()}


def predict(model, inputs, training=False):
    """In-memory predictions as ``{name: np.ndarray}``."""
    outputs = model(to_tensors(inputs), training=training)
    return {k: np.asarray(v) for k, v in outputs.items()}


VERIFY_SCRIPT = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry
from tensorflow_serving.apis import prediction_log_pb2

config = json.load(open(sys.argv[1]))
results = {}
messages = {}

def store(prefix, outputs):
    for name, value in outputs.items():
        results[f"{prefix}/{name}"] = np.asarray(value)

for case in config["cases"]:
    path, key = case["path"], case["key"]
    data = np.load(case["data"], allow_pickle=True)
    batches = {}
    for item in data.files:
        batch, kind, name = item.split("/")
        batches.setdefault(batch, {}).setdefault(kind, {})[name] = data[item]

    def expect_error(label, run):
        # Batches named bad-... must fail: keep the error message (or NO ERROR).
        try:
            run()
            messages[label] = "NO ERROR"
        except Exception as error:
            messages[label] = f"{type(error).__name__}: {error}"

    # (a) TF2 loader, every signature.
    loaded = tf.saved_model.load(path)
    for batch, kinds in batches.items():
        for sig_name, feed in (("serving_default", kinds["raw"]), ("predict_examples", kinds.get("examples"))):
            if feed is None:
                continue
            fn = loaded.signatures[sig_name]
            run = lambda: fn(**{k: tf.constant(v) for k, v in feed.items()})
            if batch.startswith("bad-"):
                expect_error(f"{key}/tf2/{sig_name}/{batch}", run)
                continue
            store(f"{key}/tf2/{sig_name}/{batch}", {k: v.numpy() for k, v in run().items()})

    # (b) TF1 session loader, feeding and fetching the signatures' tensor names.
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        for batch, kinds in batches.items():
            for sig_name, feed in (("serving_default", kinds["raw"]), ("predict_examples", kinds.get("examples"))):
                if feed is None:
                    continue
                sig = meta_graph.signature_def[sig_name]
                assert sig.method_name == "tensorflow/serving/predict", sig.method_name
                assert set(sig.inputs) == set(feed), (sorted(sig.inputs), sorted(feed))
                fetches = {k: v.name for k, v in sig.outputs.items()}
                run = lambda: sess.run(fetches, {sig.inputs[k].name: v for k, v in feed.items()})
                if batch.startswith("bad-"):
                    expect_error(f"{key}/tf1/{sig_name}/{batch}", run)
                    continue
                store(f"{key}/tf1/{sig_name}/{batch}", run())
        if "predict_examples" in meta_graph.signature_def:
            # Feed through a callable, as TF Serving's C++ session does: no client-side shape check.
            from tensorflow.core.protobuf import config_pb2
            sig = meta_graph.signature_def["predict_examples"]
            options = config_pb2.CallableOptions(feed=[sig.inputs["examples"].name],
                                                 fetch=[v.name for v in sig.outputs.values()])
            run = sess._make_callable_from_options(options)
            one_d = max((b["examples"]["examples"] for n, b in batches.items() if "examples" in b
                         and not n.startswith("bad-")), key=len)
            messages[f"{key}/tf1_callable_1d_rows"] = int(run(one_d)[0].shape[0])
            for label, bad in (("2d", one_d.reshape(-1, 1)), ("scalar", one_d[0])):
                try:
                    run(bad)
                    messages[f"{key}/tf1_{label}_examples"] = "NO ERROR"
                except Exception as error:
                    messages[f"{key}/tf1_{label}_examples"] = f"{type(error).__name__}: {error}"

    # Warmup records, replayed against the TF2-loaded signatures.
    warmup = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    if os.path.exists(warmup):
        for i, record in enumerate(tf.data.TFRecordDataset(warmup).as_numpy_iterator()):
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            feed = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            fn = loaded.signatures[request.model_spec.signature_name]
            out = fn(**{k: tf.constant(v) for k, v in feed.items()})
            store(f"{key}/warmup/{i}/{request.model_spec.signature_name}", {k: v.numpy() for k, v in out.items()})
            for k, v in feed.items():
                results[f"{key}/warmup_inputs/{i}/{k}"] = v

    # Op check: every op in the graph and its function library is registered; no Python callbacks.
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(open(os.path.join(path, "saved_model.pb"), "rb").read())
    ops = set()
    for mg in sm.meta_graphs:
        functions = {f.signature.name for f in mg.graph_def.library.function}
        ops |= {n.op for n in mg.graph_def.node}
        for f in mg.graph_def.library.function:
            ops |= {n.op for n in f.node_def}
        ops -= functions
    messages[f"{key}/ops"] = sorted(ops)
    messages[f"{key}/unregistered"] = sorted(op for op in ops if op_def_registry.get(op) is None)

messages["keras_mmoe_imported"] = any(m == "keras_mmoe" or m.startswith("keras_mmoe.") for m in sys.modules)
messages["keras_imported"] = [m for m in ("keras", "tf_keras") if m in sys.modules]
np.savez(config["results"], **results)
json.dump(messages, open(config["messages"], "w"))
"""


def verify_in_subprocess(cases, work_dir):
    """Runs :data:`VERIFY_SCRIPT` on ``cases`` (dicts: key, path, batches) in a fresh process.

    ``batches`` maps a batch name to ``{"raw": {name: array}, "examples": 1-D bytes array or None}``;
    a batch named ``bad-...`` must fail, and its error is kept in the messages under
    ``<key>/<tf1|tf2>/<signature>/<batch>`` ("NO ERROR" if it did not fail).
    Returns ``(results, messages)``: the .npz outputs keyed ``<key>/<tf1|tf2>/<signature>/<batch>/<output>``
    (and ``<key>/warmup/<i>/<signature>/<output>``), and the JSON messages.
    """
    config_cases = []
    for case in cases:
        data = {}
        for batch, kinds in case["batches"].items():
            for name, value in kinds["raw"].items():
                data[f"{batch}/raw/{name}"] = value
            if kinds.get("examples") is not None:
                data[f"{batch}/examples/examples"] = np.asarray(kinds["examples"], dtype=object)
        data_path = os.path.join(work_dir, f"{case['key']}_inputs.npz")
        np.savez(data_path, **data)
        config_cases.append({"key": case["key"], "path": case["path"], "data": data_path})
    config = {
        "cases": config_cases,
        "results": os.path.join(work_dir, "results.npz"),
        "messages": os.path.join(work_dir, "messages.json"),
    }
    config_path = os.path.join(work_dir, "config.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    script_path = os.path.join(work_dir, "verify.py")
    with open(script_path, "w") as f:
        f.write(VERIFY_SCRIPT)
    # `python -c` with the script read from a file keeps run_python's fresh-process contract.
    run_python(f"import sys; sys.argv = ['verify.py', {config_path!r}]; exec(open({script_path!r}).read())")
    results = dict(np.load(config["results"], allow_pickle=True))
    with open(config["messages"]) as f:
        messages = json.load(f)
    return results, messages
