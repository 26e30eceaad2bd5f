"""Learned uncertainty weighting (keras_mmoe.weighting): the loss against NumPy, learning, fit, saving."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe.data import make_synthetic
from keras_mmoe.models import build_mmoe
from keras_mmoe.weighting import UncertaintyWeightedModel, UncertaintyWeighting

TASKS = {"y1": "regression", "y2": "regression"}


def test_layer_loss_matches_numpy_and_config_round_trips():
    layer = UncertaintyWeighting(["a", "b", "c"], initial_log_variance=0.5)
    layer.build()
    s = np.array([0.3, -1.2, 2.0], "float32")
    layer.log_variance.assign(s)
    losses = [tf.constant(v) for v in (0.7, 2.5, 0.1)]
    expected = np.sum(np.exp(-s) * np.array([0.7, 2.5, 0.1]) + s)
    assert float(layer(losses)) == pytest.approx(expected, rel=1e-6)
    as_dict = {"c": losses[2], "a": losses[0], "b": losses[1]}
    assert float(layer(as_dict)) == pytest.approx(expected, rel=1e-6)
    assert layer.task_weights() == pytest.approx({"a": np.exp(-0.3), "b": np.exp(1.2), "c": np.exp(-2.0)})
    clone = UncertaintyWeighting.from_config(layer.get_config())
    assert clone.task_names == ["a", "b", "c"] and clone.initial_log_variance == 0.5


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="'a'"):
        UncertaintyWeighting(["a", "a"])
    with pytest.raises(ValueError, match="initial_log_variance='big'"):
        UncertaintyWeighting(["a"], initial_log_variance="big")
    layer = UncertaintyWeighting(["a", "b"])
    with pytest.raises(ValueError, match=r"Unknown task\(s\) \['z'\]"):
        layer({"a": tf.constant(1.0), "z": tf.constant(1.0)})
    with pytest.raises(ValueError, match="Expected 2 task losses, received 1"):
        layer([tf.constant(1.0)])
    with pytest.raises(ValueError, match="must be a Keras model"):
        UncertaintyWeightedModel("model", TASKS)


def _data(noise, rows=3000, seed=0):
    d = make_synthetic(rows, 20, 0.9, seed=seed)
    rng = np.random.default_rng(seed)
    y = {"y1": d.y["y1"], "y2": d.y["y2"] + rng.normal(0, noise, d.y["y2"].shape).astype("float32")}
    return {"features": d.x}, y


def _model(initial=0.0):
    base = build_mmoe(20, TASKS, num_experts=4, expert_units=8, seed=0)
    model = UncertaintyWeightedModel(base, TASKS, initial_log_variance=initial)
    model.compile(optimizer=keras.optimizers.Adam(0.02),
                  metrics={t: [keras.metrics.MeanSquaredError(name="mse")] for t in TASKS})
    return model


def test_compute_loss_matches_numpy_on_a_batch():
    x, y = _data(1.0, rows=64)
    model = _model(initial=0.4)
    model.weighting.build()
    model.weighting.log_variance.assign([0.4, -0.3])
    pred = model(x)
    total = float(model.compute_loss(x=x, y=y, y_pred=pred))
    mse = [np.mean((y[t] - pred[t].numpy()) ** 2) for t in TASKS]
    s = np.array([0.4, -0.3])
    assert total == pytest.approx(np.sum(np.exp(-s) * mse + s), rel=1e-5)
    with pytest.raises(ValueError, match=r"Task\(s\) \['y2'\] missing"):
        model.compute_loss(x=x, y={"y1": y["y1"]}, y_pred=pred)


def test_fit_learns_lower_weight_for_the_noisy_task_and_logs_it(tmp_path):
    x, y = _data(3.0)
    model = _model()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(128)
    history = model.fit(ds, epochs=3, verbose=0)
    keys = set(history.history)
    assert {"loss", "y1_loss", "y2_loss", "y1_weight", "y2_weight", "y1_mse", "y2_mse"} <= keys
    weights = model.task_weights()
    assert weights["y2"] < weights["y1"] and weights["y2"] < 0.8  # moved from exp(0) = 1
    assert history.history["y2_weight"][-1] < history.history["y2_weight"][0]
    # The unweighted task loss equals the compiled MSE metric (same data, same predictions).
    assert history.history["y2_loss"][-1] == pytest.approx(history.history["y2_mse"][-1], rel=0.05)
    results = model.evaluate(ds, verbose=0, return_dict=True)
    assert results["y2_weight"] == pytest.approx(weights["y2"], rel=1e-5)

    path = os.path.join(str(tmp_path), "weighted.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    probe = {"features": x["features"][:7]}
    np.testing.assert_allclose(restored.predict(probe, verbose=0)["y1"], model.predict(probe, verbose=0)["y1"],
                               rtol=1e-6, atol=1e-7)
    assert restored.task_weights() == pytest.approx(weights)
    # The serving model is the wrapped one: same outputs, no training-only weights.
    np.testing.assert_allclose(model.model.predict(probe, verbose=0)["y2"], model.predict(probe, verbose=0)["y2"])
    assert not any("log_variance" in w.name for w in model.model.weights)
