"""Export variants and errors: gate weights (from an output or from the MMoELayer, MMoE and
OMoE), missing tf.Example features, models that cannot be served, bad warmup inputs.

These run in-process (``tf.saved_model.load``); the separate-process and TF1-loader proofs are
in test_serving_export.py.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe.models import build_cgc, build_mmoe, build_omoe, build_ple
from keras_mmoe.serving import example_feature_spec, export_for_serving, input_specs, make_examples
from serving_models import build_feature_model, feature_batch, predict

ATOL = 1e-5
TASKS = {"ctr": "binary", "time": "regression", "rating": "regression"}


def run_signature(path, signature, **feed):
    fn = tf.saved_model.load(path).signatures[signature]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in feed.items()}).items()}


def gate_models(builder, seed=5):
    keras.utils.set_random_seed(seed)
    x = keras.Input((5,), name="x")
    sizes = (dict(num_experts=4) if builder in (build_mmoe, build_omoe)
             else dict(num_shared_experts=2, num_task_experts=2))
    reference = builder({"x": x}, TASKS, expert_units=3, tower_units=(3,),
                        expert_dropout_rate=0.3, return_gate_weights=True, seed=seed, **sizes)
    tasks_only = keras.Model(reference.input, {t: reference.output[t] for t in TASKS})
    return reference, tasks_only


def expected_with_gates(reference, inputs):
    out = predict(reference, inputs)
    expected = {t: out[t] for t in TASKS}
    expected.update({f"{t}_gate_weights": out["gate_weights"][:, k, :] for k, t in enumerate(TASKS)})
    return expected


@pytest.mark.parametrize("builder", [build_mmoe, build_omoe, build_cgc, build_ple], ids=["mmoe", "omoe", "cgc", "ple"])
def test_gate_weights_from_the_layer_and_from_a_model_output(tmp_path, builder):
    reference, tasks_only = gate_models(builder)
    inputs = {"x": np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)}
    expected = expected_with_gates(reference, inputs)
    for model in (tasks_only, reference):  # from the MMoELayer's gates; from the `gate_weights` output
        path = export_for_serving(model, str(tmp_path), include_gate_weights=True)
        for signature, feed in (("serving_default", inputs), ("predict_examples", {"examples": make_examples(inputs)})):
            got = run_signature(path, signature, **feed)
            assert sorted(got) == sorted(expected)
            for name, value in expected.items():
                np.testing.assert_allclose(got[name], value, atol=ATOL, rtol=0, err_msg=f"{signature} {name}")
        weights = got["ctr_gate_weights"]
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    if builder is build_omoe:
        np.testing.assert_allclose(got["ctr_gate_weights"], got["time_gate_weights"])
    else:
        assert not np.allclose(got["ctr_gate_weights"], got["time_gate_weights"])


def test_without_include_gate_weights_only_task_outputs_are_served(tmp_path):
    reference, _ = gate_models(build_mmoe)
    path = export_for_serving(reference, str(tmp_path), examples_signature=False)
    out = run_signature(path, "serving_default", x=np.zeros((2, 5), np.float32))
    assert sorted(out) == sorted(TASKS)


def test_include_gate_weights_needs_an_mmoe_layer(tmp_path):
    with pytest.raises(ValueError, match="exactly one MMoELayer"):
        export_for_serving(build_feature_model(), str(tmp_path), include_gate_weights=True)
    assert os.listdir(tmp_path) == []


def test_missing_optional_features_take_their_defaults_and_a_missing_required_one_fails(tmp_path):
    model = build_feature_model()
    defaults = {"count": 5, "city": "", "segment": "b"}
    path = export_for_serving(model, str(tmp_path), example_defaults=defaults)
    full = feature_batch(6, seed=3)
    partial = {"numeric": full["numeric"]}  # count, city and segment absent from every Example
    got = run_signature(path, "predict_examples", examples=make_examples(partial))
    filled = dict(partial, count=np.full((6,), 5, np.int32), city=np.array([b""] * 6, dtype=object),
                  segment=np.array([[b"b"]] * 6, dtype=object))
    for name, value in predict(model, filled).items():
        np.testing.assert_allclose(got[name], value, atol=ATOL, rtol=0)
    # Present features are read, not defaulted.
    got = run_signature(path, "predict_examples", examples=make_examples(full))
    np.testing.assert_allclose(got["value"], predict(model, full)["value"], atol=ATOL, rtol=0)
    without_numeric = {k: v for k, v in full.items() if k != "numeric"}
    with pytest.raises(tf.errors.InvalidArgumentError, match="numeric"):
        run_signature(path, "predict_examples", examples=make_examples(without_numeric))


def test_example_feature_spec_from_the_model():
    spec = example_feature_spec(build_feature_model())
    assert spec == {
        "numeric": tf.io.FixedLenFeature((3,), tf.float32),
        "count": tf.io.FixedLenFeature((), tf.int64),
        "city": tf.io.FixedLenFeature((), tf.string),
        "segment": tf.io.FixedLenFeature((1,), tf.string),
    }  # all required by default
    zeros = example_feature_spec(build_feature_model(), "zeros")
    assert zeros["numeric"].default_value == [0.0, 0.0, 0.0] and zeros["count"].default_value == 0
    assert zeros["city"].default_value == b"" and zeros["segment"].default_value == [b""]
    with pytest.raises(ValueError, match=r"features the model does not have: \['citty'\]"):
        example_feature_spec(build_feature_model(), {"citty": "x"})
    with pytest.raises(ValueError, match="`example_defaults` must be None, 'zeros' or a dict, received: 'zero'"):
        example_feature_spec(build_feature_model(), "zero")


def _dense_head(x):
    return {"y": keras.layers.Dense(1, name="y")(x)}


@pytest.mark.filterwarnings("ignore:When providing `inputs` as a dict")
def test_models_that_cannot_be_served_get_clear_errors(tmp_path):
    a, spaced = keras.Input((2,), name="a"), keras.Input((2,), name="my feature")
    cases = [
        (keras.Model({"my feature": a}, _dense_head(a)), r"input name 'my feature'"),
        (keras.Model(spaced, keras.layers.Dense(1, name="y")(spaced)),
         r"keras.Input named 'my feature'"),
        (keras.Model({"examples": a}, _dense_head(a)), "reserved"),
    ]
    flag = keras.Input((1,), dtype="bool", name="flag")
    cases.append((keras.Model({"flag": flag}, _dense_head(keras.layers.Rescaling(1.0)(flag))), "dtype bool"))
    sequence = keras.Input((None,), dtype="float32", name="sequence")
    cases.append((keras.Model({"sequence": sequence}, _dense_head(keras.layers.GlobalAveragePooling1D()(
        keras.layers.Reshape((-1, 1))(sequence)))), "unknown non-batch dimension.*examples_signature=False"))
    for model, message in cases:
        with pytest.raises(ValueError, match=message):
            export_for_serving(model, str(tmp_path))
    assert os.listdir(tmp_path) == []  # nothing written for any of them
    with pytest.raises(ValueError, match="must be a keras.Model"):
        input_specs(lambda x: x)
    # A variable-length input is fine for the raw signature alone.
    path = export_for_serving(cases[-1][0], str(tmp_path), examples_signature=False)
    assert run_signature(path, "serving_default", sequence=np.ones((2, 4), np.float32))["y"].shape == (2, 1)


def test_bad_warmup_inputs_are_clear_errors(tmp_path):
    model = build_feature_model()
    good = feature_batch(2)
    with pytest.raises(ValueError, match=r"missing \['segment'\], unknown \['segmnt'\]"):
        bad = {k: v for k, v in good.items() if k != "segment"}
        export_for_serving(model, str(tmp_path), warmup_inputs=dict(bad, segmnt=good["segment"]))
    with pytest.raises(ValueError, match="disagree on the batch size"):
        export_for_serving(model, str(tmp_path), warmup_inputs=dict(good, numeric=good["numeric"][:1]))
    with pytest.raises(ValueError, match=r"'numeric' has rows of shape \(2,\)"):
        export_for_serving(model, str(tmp_path), warmup_inputs=dict(good, numeric=good["numeric"][:, :2]))
    assert os.listdir(tmp_path) == []


def test_warmup_without_tensorflow_serving_api_says_what_to_install(tmp_path, monkeypatch):
    for name in ("tensorflow_serving", "tensorflow_serving.apis"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install keras-mmoe\[serving\]"):
        export_for_serving(build_feature_model(), str(tmp_path), warmup_inputs=feature_batch(2))
    assert os.listdir(tmp_path) == []


def test_allow_non_finite_passes_the_named_float_inputs_unchecked(tmp_path):
    """The escape hatch for models that impute missing values themselves; the names are validated."""
    x, g = keras.Input((3,), name="x"), keras.Input((2,), name="g")
    model = keras.Model({"x": x, "g": g}, {"y": keras.layers.Dense(1, name="y")(keras.layers.Concatenate()([x, g]))})
    path = export_for_serving(model, str(tmp_path), allow_non_finite=["x"])
    feed = {"x": np.array([[np.nan, 1.0, np.inf]], np.float32), "g": np.ones((1, 2), np.float32)}
    for signature, args in (("serving_default", feed), ("predict_examples", {"examples": make_examples(feed)})):
        out = run_signature(path, signature, **args)
        assert out["y"].shape == (1, 1)  # no error for x: the model is trusted to handle NaN and inf
    with pytest.raises(tf.errors.InvalidArgumentError, match="input 'g' holds NaN or inf"):
        run_signature(path, "serving_default", x=feed["x"], g=np.array([[np.nan, 0.0]], np.float32))
    feature_model = build_feature_model()
    for bad, message in ((["nope"], r"'nope', which is not an input of the model; its inputs are \['city'"),
                         (["count"], r"'count', a int32 input; only float inputs can hold NaN or inf"),
                         ("numeric", "must be a list of float input names, received: allow_non_finite='numeric'")):
        with pytest.raises(ValueError, match=message):
            export_for_serving(feature_model, str(tmp_path / "other"), allow_non_finite=bad)
    assert not (tmp_path / "other").exists()
