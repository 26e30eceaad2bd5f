"""The raw-feature encoder: names, shapes, adapted statistics, unseen categories, save/load.

Runs under Keras 3 and tf-keras (``TF_USE_LEGACY_KERAS=1``); the census model tests use the
first 3,000 rows of the real files.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import CENSUS_SAMPLE_DIR, CENSUS_SAMPLE_ROWS
from keras_mmoe._keras import IS_KERAS_3, keras
from keras_mmoe.data import load_census_income
from keras_mmoe.features import build_feature_encoder, census_feature_encoder, sanitize_feature_name
from keras_mmoe.features import sanitize_feature_names

ROWS = CENSUS_SAMPLE_ROWS

TOY = {
    "temperature": np.array([10.0, 20.0, 30.0, 40.0, 50.0, 10.0], np.float32),
    "color name": np.array(["red", "red", "red", "blue", "blue", "green"], object),
}


def _tensors(features):
    """Keras 3 ``predict`` rejects NumPy string arrays; feed tensors."""
    return {k: tf.constant(v) for k, v in features.items()}


def _encoder_model(**kwargs):
    inputs, encoded = build_feature_encoder(**kwargs)
    return inputs, keras.Model(inputs, encoded)


@pytest.fixture(scope="module")
def census_data():
    return load_census_income(CENSUS_SAMPLE_DIR, group=1, max_rows=ROWS, download=False, batch_size=256, seed=0)


# ------------------------------------------------------------------------------------------------
# Names


def test_sanitize_feature_name():
    assert sanitize_feature_name("class of worker") == "class_of_worker"
    assert sanitize_feature_name("fill inc questionnaire for veteran's admin") == "fill_inc_questionnaire_for_veteran_s_admin"
    assert sanitize_feature_name("migration code-change in msa") == "migration_code_change_in_msa"
    assert sanitize_feature_name(" userId ") == "userId"
    assert sanitize_feature_name("1st feature") == "f_1st_feature"
    with pytest.raises(ValueError, match=r"'--'"):
        sanitize_feature_name("--")
    with pytest.raises(ValueError, match=r"'a b' and 'a-b' both sanitize to 'a_b'"):
        sanitize_feature_names(["a b", "a-b"])


# ------------------------------------------------------------------------------------------------
# The generic encoder on toy data


def test_inputs_named_typed_and_shaped():
    inputs, model = _encoder_model(continuous=["temperature"], nominal=["color name"], adapt_data=TOY)
    assert sorted(inputs) == ["color_name", "temperature"]
    for key, x in inputs.items():
        assert x.name.split(":")[0] == key
        assert tuple(x.shape) == (None, 1)
    assert inputs["temperature"].dtype in ("float32", tf.float32)
    assert inputs["color_name"].dtype in ("string", tf.string)
    assert tuple(model.output.shape) == (None, 1 + 3 + 1)
    assert model.get_layer("color_name_lookup") is not None
    assert model.get_layer("temperature_normalization") is not None


def test_normalization_and_one_hot_match_numpy_reference():
    _, model = _encoder_model(continuous=["temperature"], nominal=["color name"], adapt_data=TOY)
    got = model.predict(_tensors({"temperature": TOY["temperature"][:, None], "color_name": TOY["color name"][:, None]}), verbose=0)
    t = TOY["temperature"].astype(np.float64)
    np.testing.assert_allclose(got[:, 0], (t - t.mean()) / t.std(), rtol=1e-5, atol=1e-6)
    # Vocabulary by decreasing frequency: [OOV], red (3), blue (2), green (1).
    expected = {"red": [0, 1, 0, 0], "blue": [0, 0, 1, 0], "green": [0, 0, 0, 1]}
    np.testing.assert_array_equal(got[:, 1:], [expected[c] for c in TOY["color name"]])


def test_unseen_category_maps_to_oov_one_hot():
    _, model = _encoder_model(continuous=["temperature"], nominal=["color name"], adapt_data=TOY)
    got = model.predict(
        _tensors({"temperature": np.array([[20.0], [20.0]], np.float32),
                  "color_name": np.array([["purple"], [""]], object)}),
        verbose=0,
    )
    np.testing.assert_array_equal(got[:, 1:], [[1, 0, 0, 0], [1, 0, 0, 0]])


def test_unseen_category_maps_to_oov_embedding_row():
    _, model = _encoder_model(
        continuous=[], nominal=["color name"], adapt_data=TOY, nominal_encoding="embedding", embedding_dim=5
    )
    assert tuple(model.output.shape) == (None, 5)
    table = model.get_layer("color_name_embedding").get_weights()[0]
    assert table.shape == (4, 5)
    got = model.predict(_tensors({"color_name": np.array([["purple"], ["red"], ["green"]], object)}), verbose=0)
    np.testing.assert_allclose(got, table[[0, 1, 3]], rtol=1e-6)


def test_max_tokens_sends_rare_categories_to_oov():
    _, model = _encoder_model(nominal=["color name"], adapt_data=TOY, max_tokens=3)
    assert tuple(model.output.shape) == (None, 3)  # OOV, red, blue
    got = model.predict(_tensors({"color_name": np.array([["green"], ["blue"]], object)}), verbose=0)
    np.testing.assert_array_equal(got, [[1, 0, 0], [0, 0, 1]])


def test_adapt_from_tf_data_equals_adapt_from_arrays():
    ds = tf.data.Dataset.from_tensor_slices(
        ({"temperature": TOY["temperature"][:, None], "color name": TOY["color name"][:, None].astype(str)},
         {"y": np.zeros((6, 1), np.float32)})
    ).batch(4)
    _, from_arrays = _encoder_model(continuous=["temperature"], nominal=["color name"], adapt_data=TOY)
    _, from_dataset = _encoder_model(continuous=["temperature"], nominal=["color name"], adapt_data=ds)
    x = _tensors({"temperature": np.array([[12.0], [45.0]], np.float32),
                  "color_name": np.array([["green"], ["nope"]], object)})
    np.testing.assert_allclose(from_dataset.predict(x, verbose=0), from_arrays.predict(x, verbose=0), rtol=1e-6)


def test_argument_errors():
    with pytest.raises(ValueError, match=r"nominal_encoding='bogus'"):
        build_feature_encoder(nominal=["color name"], adapt_data=TOY, nominal_encoding="bogus")
    with pytest.raises(ValueError, match=r"`adapt_data` is required.*None"):
        build_feature_encoder(nominal=["color name"])
    with pytest.raises(ValueError, match=r"no feature \['size'\]"):
        build_feature_encoder(nominal=["size"], adapt_data=TOY)
    with pytest.raises(ValueError, match=r"num_oov_indices=0"):
        build_feature_encoder(nominal=["color name"], adapt_data=TOY, num_oov_indices=0)
    with pytest.raises(ValueError, match=r"the string 'color name'"):
        build_feature_encoder(nominal="color name", adapt_data=TOY)
    with pytest.raises(ValueError, match=r"listed twice"):
        build_feature_encoder(continuous=["temperature"], nominal=["temperature"], adapt_data=TOY)
    with pytest.raises(ValueError, match=r"must hold strings, received float"):
        build_feature_encoder(nominal=["temperature"], adapt_data=TOY)
    with pytest.raises(ValueError, match=r"embedding_dim.*'color name'.*0"):
        build_feature_encoder(nominal=["color name"], adapt_data=TOY, nominal_encoding="embedding", embedding_dim=0)
    with pytest.raises(ValueError, match=r"NaN"):
        build_feature_encoder(continuous=["t"], adapt_data={"t": np.array([1.0, np.nan])})


# ------------------------------------------------------------------------------------------------
# Census


def test_census_encoder_dimension_and_inputs(census_data):
    inputs, encoded = census_feature_encoder(census_data)
    assert set(inputs) == set(census_data.feature_names)
    for key in census_data.continuous_features:
        assert inputs[key].dtype in ("float32", tf.float32)
    for key in census_data.nominal_features:
        assert inputs[key].dtype in ("string", tf.string)
    train = census_data.features["train"]
    categories = sum(len(set(train[k].ravel().tolist())) for k in census_data.nominal_features)
    # 7 continuous + one one-hot column per training category + one OOV column per nominal feature.
    assert encoded.shape[-1] == 7 + categories + 31

    _, embedded = census_feature_encoder(census_data, nominal_encoding="embedding", embedding_dim=4)
    assert embedded.shape[-1] == 7 + 31 * 4


def _census_model(census_data, nominal_encoding):
    inputs, encoded = census_feature_encoder(census_data, nominal_encoding=nominal_encoding, embedding_dim=4)
    outputs = {task: keras.layers.Dense(1, activation="sigmoid", name=task)(encoded) for task in census_data.task_names}
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss={t: "binary_crossentropy" for t in census_data.task_names},
        metrics={t: [keras.metrics.AUC(name="auc")] for t in census_data.task_names},
    )
    return model


def _probe_batch(census_data):
    """50 validation rows, one with categories never seen in training."""
    features = {k: v[:50].copy() for k, v in census_data.features["validation"].items()}
    features["class_of_worker"][0, 0] = "Astronaut"
    features["state_of_previous_residence"][1, 0] = "Atlantis"
    return _tensors(features)


@pytest.mark.parametrize("nominal_encoding", ["one_hot", "embedding"])
def test_census_model_fits_and_round_trips(census_data, nominal_encoding, tmp_path):
    model = _census_model(census_data, nominal_encoding)
    one_hot = nominal_encoding == "one_hot"
    validation = census_data.validation if one_hot else None
    history = model.fit(census_data.train, validation_data=validation, epochs=2 if one_hot else 1, verbose=0)
    for values in history.history.values():
        assert np.all(np.isfinite(values))
    if one_hot:
        # A logistic regression on the encoded features: marital status is easy from age & co.
        assert history.history["val_marital_auc"][-1] > 0.85
    probe = _probe_batch(census_data)
    before = model.predict(probe, verbose=0)
    assert np.all(np.isfinite(before["income"]))

    path = os.path.join(str(tmp_path), "census.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    after = restored.predict(probe, verbose=0)
    for task in census_data.task_names:
        np.testing.assert_allclose(after[task], before[task], rtol=1e-6, atol=1e-7)

    if not IS_KERAS_3 and nominal_encoding == "one_hot":
        # tf-keras's own SavedModel format, too.
        saved_dir = os.path.join(str(tmp_path), "census_tf")
        model.save(saved_dir, save_format="tf")
        restored_tf = keras.models.load_model(saved_dir)
        after_tf = restored_tf.predict(probe, verbose=0)
        for task in census_data.task_names:
            np.testing.assert_allclose(after_tf[task], before[task], rtol=1e-6, atol=1e-7)


def test_exported_saved_model_takes_raw_features(census_data, tmp_path):
    """A plain SavedModel of the census model is called with raw strings and floats only."""
    model = _census_model(census_data, "one_hot")
    probe = _probe_batch(census_data)
    expected = model.predict(probe, verbose=0)
    signature = {
        k: tf.TensorSpec([None, 1], tf.float32 if k in census_data.continuous_features else tf.string, name=k)
        for k in census_data.feature_names
    }
    serve = tf.function(lambda features: model(features, training=False), input_signature=[signature])
    export_dir = os.path.join(str(tmp_path), "export")
    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, export_dir, signatures={"serving_default": serve.get_concrete_function()})
    loaded = tf.saved_model.load(export_dir)
    fn = loaded.signatures["serving_default"]
    got = fn(**probe)
    for task in census_data.task_names:
        np.testing.assert_allclose(got[task].numpy(), expected[task], rtol=1e-6, atol=1e-7)
    assert set(fn.structured_input_signature[1]) == set(census_data.feature_names)
