"""The committed example export (saved_models/example_mmoe/1) answers its golden requests, and
rejects NaN and inf, in a process that never imports keras_mmoe, through TF2 loading and the TF1
session loader TF Serving uses."""

import json
import os

import numpy as np
import pytest

from conftest import REPO_ROOT, run_python

BASE = os.path.join(REPO_ROOT, "saved_models", "example_mmoe")

FRESH_PROCESS = r"""
import json, sys, numpy as np, tensorflow as tf
golden = json.load(open(GOLDEN))
x = np.array(golden["inputs"]["features"], np.float32)

def examples(rows):
    return np.array([tf.train.Example(features=tf.train.Features(feature={"features": tf.train.Feature(
        float_list=tf.train.FloatList(value=row))})).SerializeToString() for row in rows], dtype=object)

nan, inf = x.copy(), x.copy()
nan[1, 5], inf[2, 0] = np.nan, -np.inf
feeds = {"ok": x, "nan": nan, "inf": inf}
answers, errors = {}, {}

def run(label, call):
    try:
        answers[label] = {k: np.asarray(v).tolist() for k, v in call().items()}
    except tf.errors.InvalidArgumentError as error:
        errors[label] = str(error)

loaded = tf.saved_model.load(PATH)
for name, rows in feeds.items():
    run(f"tf2/serving_default/{name}", lambda: loaded.signatures["serving_default"](features=tf.constant(rows)))
    run(f"tf2/predict_examples/{name}",
        lambda: loaded.signatures["predict_examples"](examples=tf.constant(examples(rows))))
with tf.compat.v1.Session(graph=tf.Graph()) as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], PATH)
    for signature, key in (("serving_default", "features"), ("predict_examples", "examples")):
        sig = meta.signature_def[signature]
        fetches = {k: v.name for k, v in sig.outputs.items()}
        for name, rows in feeds.items():
            feed = rows if key == "features" else examples(rows)
            run(f"tf1/{signature}/{name}", lambda: sess.run(fetches, {sig.inputs[key].name: feed}))
assert "keras_mmoe" not in sys.modules
print(json.dumps({"answers": answers, "errors": errors}))
"""


def test_example_export_matches_golden_outputs_and_rejects_nan_and_inf_in_a_fresh_process():
    golden = json.load(open(os.path.join(BASE, "golden.json")))
    code = FRESH_PROCESS.replace("GOLDEN", repr(os.path.join(BASE, "golden.json"))).replace(
        "PATH", repr(os.path.join(BASE, "1")))
    result = run_python(code)
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(golden["outputs"]) == {"y1", "y2"}
    for loader in ("tf2", "tf1"):
        for signature in ("serving_default", "predict_examples"):
            answer = got["answers"][f"{loader}/{signature}/ok"]
            for task, expected in golden["outputs"].items():
                np.testing.assert_allclose(answer[task], expected, rtol=1e-5, atol=1e-6)
            for bad, kind in (("nan", "NaN"), ("inf", "Inf")):
                label = f"{loader}/{signature}/{bad}"
                assert label not in got["answers"], f"{label}: a prediction was returned for a non-finite input"
                message = got["errors"][label]
                assert "input 'features' holds NaN or inf" in message and f"Tensor had {kind} values" in message


def test_example_export_passes_the_serving_op_check():
    from keras_mmoe.serving import check_serving_ops, list_versions

    assert list_versions(BASE) == {1: "1"}
    report = check_serving_ops(os.path.join(BASE, "1"))
    assert report.ok, report
    assert "CheckNumerics" in report.ops


def test_example_export_carries_its_training_record_and_evaluate_scores_its_held_out_rows(tmp_path):
    """The version holds the record of the run that made it (assets.extra/keras_mmoe.json), so
    `keras-mmoe evaluate saved_models/example_mmoe/1` scores the rows that run held out and finds
    the metrics recorded at training time: a model that has learned (> 90% variance explained)."""
    from keras_mmoe.cli.main import main

    record = json.load(open(os.path.join(BASE, "1", "assets.extra", "keras_mmoe.json")))
    assert record["written_by"] == "keras-mmoe train" and record["data"]["seed"] == 7
    assert record["training"]["num_experts"] == 4 and record["training"]["expert_units"] == [8]
    result = tmp_path / "scored.json"
    assert main(["evaluate", os.path.join(BASE, "1"), "--json", str(result)]) == 0
    scored = json.loads(result.read_text())
    for task in ("y1", "y2"):
        assert scored["tasks"][task]["mse"] == pytest.approx(record["held_out_metrics"][task]["mse"], rel=1e-4)
        assert scored["tasks"][task]["variance_explained"] > 0.9
