"""The committed example export (saved_models/example_mmoe/1) answers its golden requests, in a
process that never imports keras_mmoe, through TF2 loading and the TF1 session loader TF Serving uses."""

import json
import os

import numpy as np

from conftest import REPO_ROOT, run_python

BASE = os.path.join(REPO_ROOT, "saved_models", "example_mmoe")


def test_example_export_matches_golden_outputs_in_a_fresh_process():
    golden = json.load(open(os.path.join(BASE, "golden.json")))
    result = run_python(f"""
import json, sys, numpy as np, tensorflow as tf
golden = json.load(open({os.path.join(BASE, "golden.json")!r}))
path = {os.path.join(BASE, "1")!r}
x = np.array(golden["inputs"]["features"], np.float32)
fn = tf.saved_model.load(path).signatures["serving_default"]
tf2 = {{k: v.numpy().tolist() for k, v in fn(features=tf.constant(x)).items()}}
with tf.compat.v1.Session(graph=tf.Graph()) as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    sig = meta.signature_def["serving_default"]
    fetches = {{k: v.name for k, v in sig.outputs.items()}}
    tf1 = {{k: v.tolist() for k, v in sess.run(fetches, {{sig.inputs["features"].name: x}}).items()}}
assert "keras_mmoe" not in sys.modules
print(json.dumps({{"tf2": tf2, "tf1": tf1}}))
""")
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(golden["outputs"]) == {"y1", "y2"}
    for loader in ("tf2", "tf1"):
        for task, expected in golden["outputs"].items():
            np.testing.assert_allclose(got[loader][task], expected, rtol=1e-5, atol=1e-6)


def test_example_export_passes_the_serving_op_check():
    from keras_mmoe.serving import check_serving_ops, list_versions

    assert list_versions(BASE) == {1: "1"}
    report = check_serving_ops(os.path.join(BASE, "1"))
    assert report.ok, report
