"""keras_mmoe.tfrs: MMoE in a tfrs.models.Model with one Ranking task per task (tf-keras only)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_python
from keras_mmoe import IS_KERAS_3

TASKS = {"click": "binary", "watch": "regression"}
needs_tf_keras = pytest.mark.skipif(
    IS_KERAS_3, reason="TFRS runs only on tf-keras; these tests run in the suite's TF_USE_LEGACY_KERAS=1 pass"
)


@pytest.mark.skipif(not IS_KERAS_3, reason="the Keras 3 import error is checked in the Keras 3 pass")
def test_import_under_keras_3_says_to_set_tf_use_legacy_keras():
    with pytest.raises(ImportError, match="TF_USE_LEGACY_KERAS=1"):
        import keras_mmoe.tfrs  # noqa: F401


def _data(rows=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8)).astype("float32")
    country = rng.choice(["de", "fr", "us"], size=(rows, 1))
    logit = 2 * x[:, :1] - x[:, 1:2] + (country == "us")
    features = {"dense": x, "country": country}
    labels = {"click": (logit + rng.normal(size=(rows, 1)) > 0).astype("float32"),
              "watch": (x[:, 2:3] * 3 + logit).astype("float32")}
    return features, labels


def _network(features):
    from keras_mmoe._keras import keras
    from keras_mmoe.models import build_mmoe

    dense = keras.Input((8,), name="dense")
    country = keras.Input((1,), dtype=tf.string, name="country")
    lookup = keras.layers.StringLookup(vocabulary=["de", "fr", "us"], output_mode="one_hot", name="country_lookup")
    encoded = keras.layers.Concatenate()([dense, lookup(country)])
    return build_mmoe({"dense": dense, "country": country}, TASKS, features=encoded, num_experts=4,
                      expert_units=8, seed=0)


@needs_tf_keras
def test_fit_evaluate_and_export_served_in_a_fresh_process(tmp_path):
    from keras_mmoe._keras import keras
    from keras_mmoe.serving import export_for_serving
    from keras_mmoe.tfrs import MMoERankingModel

    features, labels = _data()
    model = MMoERankingModel(_network(features), TASKS, loss_weights={"watch": 0.1})
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    train = tf.data.Dataset.from_tensor_slices((features, labels)).batch(128)
    history = model.fit(train, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    results = model.evaluate(train, return_dict=True, verbose=0)
    assert {"click_auc", "watch_rmse", "loss", "total_loss"} <= set(results)
    assert results["click_auc"] > 0.8

    # The loss is the weighted sum of the tasks' own losses (NumPy reference on one batch).
    batch = {k: v[:256] for k, v in features.items()}
    pred = model(batch)
    p = np.clip(pred["click"].numpy(), 1e-7, 1 - 1e-7)
    y = labels["click"][:256]
    bce = np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    mse = np.mean((labels["watch"][:256] - pred["watch"].numpy()) ** 2)
    loss = float(model.compute_loss((batch, {k: v[:256] for k, v in labels.items()})))
    assert loss == pytest.approx(bce + 0.1 * mse, rel=1e-4)
    # TFRS-style dict batches (labels inside the features dict) give the same loss.
    merged = dict(batch, **{k: v[:256] for k, v in labels.items()})
    assert float(model.compute_loss(merged)) == pytest.approx(loss, rel=1e-6)

    version_dir = export_for_serving(model.model, str(tmp_path / "ranker"))
    probe = {"dense": features["dense"][:5], "country": np.array([["us"], ["de"], ["xx"], ["fr"], ["us"]])}
    expected = {k: v.numpy().ravel().tolist() for k, v in model.model(probe).items()}
    result = run_python(f"""
import json, sys, numpy as np, tensorflow as tf
fn = tf.saved_model.load({version_dir!r}).signatures["serving_default"]
out = fn(dense=tf.constant({features["dense"][:5].tolist()!r}, tf.float32),
         country=tf.constant([["us"], ["de"], ["xx"], ["fr"], ["us"]]))
assert "keras_mmoe" not in sys.modules
print(json.dumps({{k: v.numpy().ravel().tolist() for k, v in out.items()}}))
""")
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for task in TASKS:
        np.testing.assert_allclose(got[task], expected[task], rtol=1e-5, atol=1e-6)


@needs_tf_keras
def test_bad_arguments():
    from keras_mmoe.tfrs import MMoERankingModel

    net = _network(_data(10)[0])
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['like'\]"):
        MMoERankingModel(net, TASKS, loss_weights={"like": 1.0})
    with pytest.raises(ValueError, match="must be a tf-keras Model"):
        MMoERankingModel("net", TASKS)
    model = MMoERankingModel(net, TASKS)
    features, labels = _data(10)
    with pytest.raises(ValueError, match=r"no label for task\(s\) \['watch'\]"):
        model.compute_loss(dict(features, click=labels["click"]))
    with pytest.raises(KeyError, match="Unknown task 'like'"):
        model.task("like")
