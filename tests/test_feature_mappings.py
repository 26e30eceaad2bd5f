"""Models built here take features by name from any mapping: ``tf.data.experimental.make_csv_dataset``
yields an ``OrderedDict`` in the file's column order, which Keras 3 matched to a dict-input model by
position (fit failed with "Cast string to float is not supported", or, with only float columns,
silently swapped features). Runs under Keras 3 and tf-keras."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe.features import build_feature_encoder
from keras_mmoe.models import build_mmoe, build_shared_bottom, compile_kwargs, functional_model

TASKS = {"click": "binary", "spend": "regression"}


def write_csv(path, rows=24, seed=0):
    """Columns deliberately not in sorted order, plus a column the model does not use."""
    rng = np.random.default_rng(seed)
    lines = ["zone,row_id,hours,age,click,spend"]
    for i in range(rows):
        lines.append(f"{rng.choice(['north', 'south', 'east'])},{i},{rng.uniform(0, 40):.3f},"
                     f"{rng.uniform(18, 80):.3f},{rng.integers(0, 2)},{rng.normal():.4f}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def csv_dataset(path, batch_size=8):
    ds = tf.data.experimental.make_csv_dataset(path, batch_size=batch_size, num_epochs=1, shuffle=False)

    def split(features):
        labels = {task: tf.cast(features.pop(task), tf.float32) for task in TASKS}
        return features, labels

    return ds.map(split)


@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_make_csv_dataset_fits_and_predicts_by_name(tmp_path):
    path = write_csv(tmp_path / "train.csv")
    ds = csv_dataset(path)
    assert isinstance(next(iter(ds))[0], collections.OrderedDict)
    inputs, encoded = build_feature_encoder(continuous=["hours", "age"], nominal=["zone"], adapt_data=ds)
    keras.utils.set_random_seed(0)
    model = build_mmoe(inputs, TASKS, features=encoded, num_experts=2, expert_units=4, tower_units=(3,), seed=0)
    model.compile(optimizer="adam", **compile_kwargs(TASKS))
    history = model.fit(ds, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    from_csv = model.predict(ds.map(lambda x, y: x), verbose=0)
    # The same rows as a plain dict (flattened in sorted key order): the reference, by name.
    columns = {k: [] for k in ("age", "hours", "zone")}
    for features, _ in ds:
        for k in columns:
            columns[k].append(features[k].numpy())
    plain = {k: tf.constant(np.concatenate(v)[:, None]) for k, v in columns.items()}
    reference = model(plain, training=False)
    for task in TASKS:
        np.testing.assert_allclose(from_csv[task], np.asarray(reference[task]), atol=1e-6)


@pytest.mark.parametrize("builder", [build_mmoe, build_shared_bottom], ids=["mmoe", "shared_bottom"])
def test_float_features_in_another_order_are_not_swapped(builder):
    """Two float inputs of one shape: a positional match would silently swap them."""
    keras.utils.set_random_seed(1)
    inputs = {"a": keras.Input((2,), name="a"), "b": keras.Input((2,), name="b")}
    kwargs = {"num_experts": 2, "expert_units": 3} if builder is build_mmoe else {"bottom_units": (3,)}
    model = builder(inputs, TASKS, **kwargs)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 2)).astype("float32"), rng.normal(size=(5, 2)).astype("float32")
    by_name = model({"a": tf.constant(a), "b": tf.constant(b)})
    reordered = model(collections.OrderedDict([("b", tf.constant(b)), ("a", tf.constant(a))]))
    swapped = model({"a": tf.constant(b), "b": tf.constant(a)})
    for task in TASKS:
        np.testing.assert_allclose(np.asarray(reordered[task]), np.asarray(by_name[task]), atol=1e-6)
    assert not np.allclose(np.asarray(swapped["spend"]), np.asarray(by_name["spend"]))
    ds = tf.data.Dataset.from_tensor_slices(collections.OrderedDict([("b", b), ("a", a)])).batch(2)
    np.testing.assert_allclose(model.predict(ds, verbose=0)["spend"], np.asarray(by_name["spend"]), atol=1e-6)


def test_functional_model_for_a_head_of_ones_own_and_names_that_disagree():
    inputs, encoded = build_feature_encoder(continuous=["y", "x"], adapt_data={"y": [1.0, 2.0], "x": [0.0, 4.0]})
    model = functional_model(inputs, {"score": keras.layers.Dense(1, name="score")(encoded)})
    x, y = np.array([[1.0], [3.0]], "float32"), np.array([[2.0], [5.0]], "float32")
    by_name = model({"x": tf.constant(x), "y": tf.constant(y)})["score"]
    reordered = model(collections.OrderedDict([("y", tf.constant(y)), ("x", tf.constant(x))]))["score"]
    np.testing.assert_allclose(np.asarray(reordered), np.asarray(by_name), atol=1e-6)
    with pytest.raises(ValueError, match=r"key 'age' holds the keras.Input named 'years'.*name='age'"):
        build_mmoe({"age": keras.Input((1,), name="years")}, TASKS, num_experts=2, expert_units=2)
