"""Existing Keras models export as they are: one input or a list of inputs, one output or a list of
outputs, an MMoELayer nested in a sub-model.

Signature inputs are named after the ``keras.Input`` names and outputs after the layers that produce
them (task names for an MMoELayer's own outputs). Every export is loaded in one fresh process that
never imports keras_mmoe, through ``tf.saved_model.load`` and the TF1 session loader (TF Serving's
path), and both signatures are compared with the in-memory model. Runs under Keras 3 and tf-keras.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe.layers import MMoELayer
from keras_mmoe.serving import describe_signatures, export_for_serving, make_examples
from serving_models import CITIES, verify_in_subprocess

ATOL = 1e-5


def single_model():
    """One unnamed-structure input, one output: ``x`` -> ``score``."""
    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    return keras.Model(x, keras.layers.Dense(1, activation="sigmoid", name="score")(h), name="single")


def list_model():
    """A list of inputs (float and string) and a list of outputs named by their Dense layers."""
    num = keras.Input((3,), name="num")
    city = keras.Input((1,), dtype="string", name="city")
    city_vec = keras.layers.StringLookup(vocabulary=CITIES, output_mode="one_hot", name="city_lookup")(city)
    joined = keras.layers.Concatenate(name="concat")([num, city_vec])
    h = keras.layers.Dense(8, activation="relu", name="hidden")(joined)
    outputs = [keras.layers.Dense(1, activation="sigmoid", name="click")(h), keras.layers.Dense(1, name="value")(h)]
    return keras.Model([num, city], outputs, name="lists")


def mmoe_tower_model():
    """MMoELayer with its gate input given by keyword, then per-task Dense layers named after the tasks."""
    x, g = keras.Input((5,), name="x"), keras.Input((2,), name="g")
    layer = MMoELayer(3, 4, task_names=["click", "buy"], expert_dropout_rate=0.3, seed=1, name="mmoe")
    click, buy = layer(x, gate_inputs=g)
    outputs = [keras.layers.Dense(1, activation="sigmoid", name="click")(click),
               keras.layers.Dense(1, activation="sigmoid", name="buy")(buy)]
    return keras.Model([x, g], outputs, name="mmoe_towers")


def mmoe_direct_model():
    """The MMoELayer's own outputs (gate input by position) are the model's outputs: named by its tasks."""
    x, g = keras.Input((5,), name="x"), keras.Input((2,), name="g")
    a, b = MMoELayer(2, 3, task_names=["a", "b"], seed=2, name="mmoe")(x, g)
    return keras.Model([x, g], [a, b], name="mmoe_direct")


def nested_model():
    """The MMoELayer inside a nested Functional model; one input, dict outputs."""
    inner_in = keras.Input((3,), name="inner_in")
    a, b = MMoELayer(2, 3, task_names=["a", "b"], seed=3, name="inner_mmoe")(inner_in)
    inner = keras.Model(inner_in, [a, b], name="inner")
    x = keras.Input((5,), name="x")
    ya, yb = inner(keras.layers.Dense(3, name="bottom")(x))
    outputs = {"a": keras.layers.Dense(1, name="a")(ya), "b": keras.layers.Dense(1, name="b")(yb)}
    return keras.Model(x, outputs, name="nested")


def batch(key, n, seed):
    rng = np.random.default_rng(seed)
    if key == "single":
        return {"x": rng.normal(size=(n, 4)).astype(np.float32)}
    if key == "lists":
        cities = np.array([c.encode() for c in rng.choice(CITIES + ["atlantis"], n)], dtype=object)
        return {"num": rng.normal(size=(n, 3)).astype(np.float32), "city": cities.reshape(n, 1)}
    if key == "nested":
        return {"x": rng.normal(size=(n, 5)).astype(np.float32)}
    return {"x": rng.normal(size=(n, 5)).astype(np.float32), "g": rng.normal(size=(n, 2)).astype(np.float32)}


def expected(key, model, inputs):
    """In-memory outputs, named by hand (not by the code under test)."""
    t = {k: tf.constant(v) for k, v in inputs.items()}
    if key == "single":
        return {"score": np.asarray(model(t["x"], training=False))}
    if key == "lists":
        click, value = model([t["num"], t["city"]], training=False)
        return {"click": np.asarray(click), "value": np.asarray(value)}
    if key == "nested":
        out = model(t["x"], training=False)
        result = {k: np.asarray(v) for k, v in out.items()}
        layer = model.get_layer("inner").get_layer("inner_mmoe")
        hidden = model.get_layer("bottom")(t["x"])
        weights = np.asarray(layer.gate_weights(hidden))
        result.update(a_gate_weights=weights[:, 0], b_gate_weights=weights[:, 1])
        return result
    first, second = model([t["x"], t["g"]], training=False)
    names = ["click", "buy"] if key == "mmoe_towers" else ["a", "b"]
    result = {names[0]: np.asarray(first), names[1]: np.asarray(second)}
    if key == "mmoe_towers":
        weights = np.asarray(model.get_layer("mmoe").gate_weights(t["x"], t["g"]))
        result.update(click_gate_weights=weights[:, 0], buy_gate_weights=weights[:, 1])
    return result


BUILDERS = {"single": single_model, "lists": list_model, "mmoe_towers": mmoe_tower_model,
            "mmoe_direct": mmoe_direct_model, "nested": nested_model}
WITH_GATES = {"mmoe_towers", "nested"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("existing")
    keras.utils.set_random_seed(0)
    models, paths, cases, wanted = {}, {}, [], {}
    for key, build in BUILDERS.items():
        models[key] = model = build()
        paths[key] = export_for_serving(model, str(root / key), include_gate_weights=key in WITH_GATES)
        batches = {"b1": batch(key, 1, seed=1), "b50": batch(key, 50, seed=2)}
        cases.append({"key": key, "path": paths[key],
                      "batches": {b: {"raw": v, "examples": make_examples(v)} for b, v in batches.items()}})
        wanted[key] = {b: expected(key, model, v) for b, v in batches.items()}
    work = root / "verify"
    work.mkdir()
    results, messages = verify_in_subprocess(cases, str(work))
    return {"models": models, "paths": paths, "expected": wanted, "results": results, "messages": messages}


def test_signatures_are_named_after_the_inputs_and_the_output_layers(exported):
    names = {
        "single": (["x"], ["score"]),
        "lists": (["city", "num"], ["click", "value"]),
        "mmoe_towers": (["g", "x"], ["buy", "buy_gate_weights", "click", "click_gate_weights"]),
        "mmoe_direct": (["g", "x"], ["a", "b"]),
        "nested": (["x"], ["a", "a_gate_weights", "b", "b_gate_weights"]),
    }
    for key, (inputs, outputs) in names.items():
        sigs = describe_signatures(exported["paths"][key])
        assert sorted(sigs["serving_default"]["inputs"]) == inputs, key
        for signature in ("serving_default", "predict_examples"):
            assert sorted(sigs[signature]["outputs"]) == outputs, (key, signature)
    lists = describe_signatures(exported["paths"]["lists"])["serving_default"]["inputs"]
    assert (lists["city"]["dtype"], lists["city"]["shape"]) == ("string", [None, 1])


@pytest.mark.parametrize("loader", ["tf2", "tf1"])
def test_a_fresh_process_gets_the_in_memory_outputs(exported, loader):
    assert exported["messages"]["keras_mmoe_imported"] is False
    results, checked = exported["results"], 0
    for key, batches in exported["expected"].items():
        for signature in ("serving_default", "predict_examples"):
            for name_of_batch, outputs in batches.items():
                prefix = f"{key}/{loader}/{signature}/{name_of_batch}/"
                assert sorted(k[len(prefix):] for k in results if k.startswith(prefix)) == sorted(outputs), prefix
                for name, value in outputs.items():
                    np.testing.assert_allclose(results[prefix + name], value, atol=ATOL, rtol=0, err_msg=prefix + name)
                    checked += 1
    assert checked == 2 * 2 * (1 + 2 + 4 + 2 + 4)
    for key in BUILDERS:
        assert exported["messages"][f"{key}/unregistered"] == []


class _TwoOutputs(keras.layers.Layer):
    def call(self, x):
        return [x, 2.0 * x]


@pytest.mark.filterwarnings("ignore")
def test_only_real_conflicts_are_errors(tmp_path):
    x = keras.Input((2,), name="x")
    first, second = _TwoOutputs(name="split")(x)
    shared = keras.layers.Dense(1, name="y")
    inner = keras.Model(x, [keras.layers.Dense(1, name="p")(x), keras.layers.Dense(1, name="q")(x)], name="inner")
    y = keras.Input((2,), name="y_in")
    cases = [
        (keras.Model(x, [first, second]), r"output 0 of layer 'split', which has several outputs and no task name"),
        (keras.Model(x, [shared(x), shared(keras.layers.Dense(2, name="h")(x))]),
         "does not come from a layer called once"),
        (keras.Model(y, inner(y)), "does not come from a layer called once.*nested model"),
        (keras.Model({"a": [x, y]}, keras.layers.Dense(1, name="z")(keras.layers.Concatenate()([x, y]))),
         "not nested structures"),
    ]
    for model, message in cases:
        with pytest.raises(ValueError, match=message):
            export_for_serving(model, str(tmp_path))
    assert list(tmp_path.iterdir()) == []
