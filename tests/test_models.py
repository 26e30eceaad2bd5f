"""Model builders (paper section 5 models) and the synthetic data generator (section 3.2)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe import MMoELayer
from keras_mmoe._keras import keras
from keras_mmoe.data import make_synthetic
from keras_mmoe.models import BUILDERS, build_mmoe, build_omoe, compile_kwargs, normalize_tasks

TASKS = {"y1": "regression", "y2": "regression"}


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(num_samples=3000, dim=20, correlation=0.9, seed=3)


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_weights_cosine_is_the_correlation_and_labels_correlate_less():
    for p in (1.0, 0.9, 0.5, 0.0, -0.5):
        data = make_synthetic(num_samples=20000, dim=50, correlation=p, seed=1)
        assert abs(data.weights_cosine - p) < 1e-9
        assert data.x.shape == (20000, 50) and data.x.dtype == np.float32
        assert data.y["y1"].shape == (20000, 1)
        if p > 0:
            assert data.label_correlation < p  # nonlinear sine terms lower it
        np.testing.assert_allclose(
            data.label_correlation, np.corrcoef(data.y["y1"][:, 0], data.y["y2"][:, 0])[0, 1], rtol=1e-6
        )
    hi, lo = make_synthetic(20000, correlation=0.9, seed=2), make_synthetic(20000, correlation=0.5, seed=2)
    assert hi.label_correlation > lo.label_correlation


def test_synthetic_labels_follow_the_recipe():
    data = make_synthetic(num_samples=500, dim=10, correlation=1.0, num_sine_terms=0, noise_stddev=0.0, seed=0)
    # With no sine terms or noise, p = 1 makes the two tasks identical linear functions of x.
    np.testing.assert_allclose(data.y["y1"], data.y["y2"], atol=1e-5)
    w, *_ = np.linalg.lstsq(data.x, data.y["y1"][:, 0], rcond=None)
    assert abs(np.linalg.norm(w) - 1.0) < 1e-4  # scale c = 1
    noisy = make_synthetic(num_samples=500, dim=10, correlation=1.0, num_sine_terms=0, noise_stddev=0.5, seed=0)
    assert abs(np.std(noisy.y["y1"] - data.y["y1"]) - 0.5) < 0.06


def test_synthetic_is_reproducible_and_splits_and_batches(synthetic):
    again = make_synthetic(num_samples=3000, dim=20, correlation=0.9, seed=3)
    np.testing.assert_array_equal(synthetic.x, again.x)
    train, test = synthetic.split(0.8, seed=0)
    assert len(train.x) == 2400 and len(test.x) == 600
    features, labels = next(iter(train.dataset(batch_size=32)))
    assert features["features"].shape == (32, 20) and sorted(labels) == ["y1", "y2"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(correlation=1.5), "correlation.*1.5"),
        (dict(num_samples=0), "num_samples.*0"),
        (dict(dim=1), "dim.*1"),
        (dict(noise_stddev=-1.0), "noise_stddev"),
        (dict(task_names=("a", "a")), "task_names"),
    ],
)
def test_synthetic_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(**kwargs)


# --------------------------------------------------------------------------- builders


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_each_builder_trains_on_tf_data_with_dict_outputs(kind, synthetic):
    model = BUILDERS[kind](synthetic.x.shape[1], TASKS)
    assert list(model.input_names if hasattr(model, "input_names") else ["features"]) == ["features"]
    model.compile(keras.optimizers.Adam(0.01), **compile_kwargs(TASKS))
    history = model.fit(synthetic.dataset(batch_size=128), epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert {"y1_mse", "y2_mse"} <= set(history.history)
    out = model.predict(synthetic.features(), verbose=0, batch_size=512)
    assert sorted(out) == ["y1", "y2"] and out["y1"].shape == (3000, 1)


def test_paper_section_5_parameter_budgets_are_comparable():
    """MMoE/OMoE: 8 experts x 16 units, towers of 8; Shared-Bottom: a 113-unit bottom."""
    counts = {
        "mmoe": build_mmoe(100, TASKS).count_params(),
        "omoe": build_omoe(100, TASKS).count_params(),
        "shared_bottom": BUILDERS["shared_bottom"](100, TASKS).count_params(),
    }
    assert counts["mmoe"] == 8 * (100 * 16 + 16) + 2 * (100 * 8 + 8) + 2 * (16 * 8 + 8 + 9)
    assert counts["omoe"] == counts["mmoe"] - (100 * 8 + 8)
    for n in counts.values():
        assert 12_000 < n < 16_000


def test_binary_tasks_output_probabilities_and_gate_weights_output(rng):
    inputs = {"a": keras.Input((3,), name="a"), "b": keras.Input((2,), name="b")}
    model = build_mmoe(inputs, ["click", "buy"], num_experts=3, expert_units=4, return_gate_weights=True)
    x = {"a": rng.normal(size=(10, 3)).astype("float32"), "b": rng.normal(size=(10, 2)).astype("float32")}
    out = model(x)
    assert sorted(out) == ["buy", "click", "gate_weights"]
    assert ((out["click"].numpy() > 0) & (out["click"].numpy() < 1)).all()
    np.testing.assert_allclose(out["gate_weights"].numpy().sum(-1), 1.0, rtol=1e-5)
    assert isinstance(model.get_layer("mmoe"), MMoELayer)


def test_gate_features_feed_the_gates(rng):
    features = keras.Input((6,), name="features")
    context = keras.Input((2,), name="context")
    model = build_mmoe({"features": features, "context": context}, TASKS, features=features,
                       gate_features=context, num_experts=3, expert_units=4)
    assert model.get_layer("mmoe").gates[0].logits_layer.kernel.shape == (2, 3)


def test_mixed_precision_model_outputs_float32(synthetic):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_mmoe(20, TASKS)
    out = model(synthetic.features())
    assert out["y1"].dtype == tf.float32
    model.compile("adam", **compile_kwargs(TASKS))
    model.fit(synthetic.dataset(batch_size=256), epochs=1, verbose=0)


def test_task_specs_and_compile_kwargs_errors():
    assert list(normalize_tasks(["a", "b"]).items()) == [("a", "binary"), ("b", "binary")]
    with pytest.raises(ValueError, match="unknown kind 'ranking'"):
        normalize_tasks({"a": "ranking"})
    with pytest.raises(ValueError, match=r"unknown tasks \['c'\]"):
        compile_kwargs({"a": "binary"}, loss_weights={"c": 1.0})
    with pytest.raises(ValueError, match="duplicates"):
        normalize_tasks(["a", "a"])
    with pytest.raises(ValueError, match="cannot feed the model directly"):
        build_mmoe({"s": keras.Input((1,), dtype="string", name="s")}, ["a"])
