"""A spec's model: preprocessing against a NumPy reference, architectures, label units, training,
saving, the export answering raw rows in a fresh process, and evaluation.

Small data (300 rows), one or two epochs; runs under Keras 3 and tf-keras.
"""

import copy
import glob
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe import metrics, workflow
from keras_mmoe._keras import keras
from keras_mmoe.data import DataError, SpecError, compute_statistics, load_spec, make_dataset
from keras_mmoe.features import FillMissing, MissingIndicator, SplitTokens, TokenPooling, build_preprocessing
from keras_mmoe.features import serving_options
import spec_data
from spec_data import SPEC, make_table, reference_inputs, write_csv, write_shards
from serving_models import verify_in_subprocess

N = 300


@pytest.fixture(scope="module")
def table():
    return make_table(N, seed=2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, table):
    directory = tmp_path_factory.mktemp("spec_data")
    write_shards(str(directory), table, 2)
    return directory


@pytest.fixture(scope="module")
def spec(data_dir):
    return load_spec(SPEC, base_dir=str(data_dir))


@pytest.fixture(scope="module")
def stats(spec):
    return compute_statistics(spec)


def edge_rows():
    """Raw rows a serving request may carry: missing values, unseen categories, several tokens."""
    return {
        "age": np.array([np.nan, 33.0, 80.0, np.nan], np.float32),
        "income": np.array([20000.0, 5000.0, 80000.0, 30000.0], np.float32),
        "country": np.array([b"", b"Atlantis", b"US", b"FR"], object),
        "device": np.array([-1, 999, 101, 103], np.int64),
        "tags": np.array([b"", b"mobile|tablet|never-seen", b"tv", b"||car|"], object),
    }


def _column(values):
    return tf.constant(np.asarray(values).reshape(-1, 1))


def _feed(rows):
    return {k: _column(v) for k, v in rows.items() if k not in ("click", "watch")}


def _reference_encoding(model, spec, stats, rows):
    """The encoded features computed in NumPy from the statistics and the embedding tables."""
    parts = []
    f = {x.name: x for x in spec.features}
    age = rows["age"].astype(np.float64)
    parts.append(np.isnan(age)[:, None].astype(np.float64))
    filled = np.where(np.isnan(age), f["age"].default, age)
    fs = stats.features["age"]
    parts.append(((filled - fs.mean) / math.sqrt(fs.variance))[:, None])
    fs = stats.features["income"]
    parts.append(((rows["income"] - fs.mean) / math.sqrt(fs.variance))[:, None])
    vocab = stats.features["country"].vocabulary
    table = model.get_layer("country_embedding").get_weights()[0]
    ids = [1 + vocab.index(c.decode()) if c.decode() in vocab else 0 for c in rows["country"]]
    parts.append(table[ids])
    vocab = stats.features["device"].vocabulary
    one_hot = np.zeros((len(rows["device"]), len(vocab) + 1))
    for i, d in enumerate(rows["device"]):
        one_hot[i, 1 + vocab.index(d) if d in vocab else 0] = 1.0
    parts.append(one_hot)
    vocab = stats.features["tags"].vocabulary
    table = model.get_layer("tags_embedding").get_weights()[0]
    pooled = []
    for cell in rows["tags"]:
        tokens = [t for t in cell.decode().split("|") if t]
        vectors = [table[2 + vocab.index(t) if t in vocab else 1] for t in tokens]
        pooled.append(np.mean(vectors, axis=0) if vectors else np.zeros(table.shape[1]))
    parts.append(np.array(pooled))
    return np.concatenate(parts, axis=1)


def test_preprocessing_matches_a_numpy_reference(spec, stats, table):
    inputs, encoded = build_preprocessing(spec, stats)
    assert {k: v.dtype for k, v in inputs.items()} in (
        {"age": "float32", "income": "float32", "country": "string", "device": "int64", "tags": "string"},
        {"age": tf.float32, "income": tf.float32, "country": tf.string, "device": tf.int64, "tags": tf.string})
    model = keras.Model(inputs, encoded)
    rows = {k: v for k, v in reference_inputs(table, range(40)).items() if k not in ("click", "watch")}
    for batch in (rows, edge_rows()):
        got = np.asarray(model(_feed(batch)))
        np.testing.assert_allclose(got, _reference_encoding(model, spec, stats, batch), rtol=1e-5, atol=1e-5)
    # Unseen and missing categories share the OOV index: identical embedding rows.
    got = np.asarray(model(_feed(edge_rows())))
    country = slice(3, 6)
    np.testing.assert_array_equal(got[0, country], got[1, country])


def test_sum_combiner_and_hash_bins_match_references(data_dir, table):
    tables = copy.deepcopy(SPEC)
    tables["features"][4].update(combiner="sum", hash_bins=16)
    tables["features"][2].update(hash_bins=8)
    spec = load_spec(tables, base_dir=str(data_dir))
    stats = compute_statistics(spec)
    inputs, encoded = build_preprocessing(spec, stats)
    full = keras.Model(inputs, encoded)
    model = keras.Model(inputs, {"country": full.get_layer("country_embedding_flat").output,
                                 "tags": full.get_layer("tags_pooling").output})
    rows = edge_rows()
    out = model(_feed(rows))
    country_table = model.get_layer("country_embedding").get_weights()[0]
    tags_table = model.get_layer("tags_embedding").get_weights()[0]

    def bucket(value, bins):  # Hashing with a mask: "" -> 0, else 1 + FarmHash64 bucket
        return 0 if value == b"" else 1 + int(tf.strings.to_hash_bucket_fast([value], bins)[0])

    expected_country = country_table[[bucket(c, 8) for c in rows["country"]]]
    np.testing.assert_allclose(np.asarray(out["country"]), expected_country, rtol=1e-6)
    expected_tags = [sum((tags_table[bucket(t.encode(), 16)] for t in c.decode().split("|") if t), np.zeros(4))
                     for c in rows["tags"]]
    np.testing.assert_allclose(np.asarray(out["tags"]), np.array(expected_tags), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", [FillMissing(1.5), MissingIndicator(), SplitTokens(";"), TokenPooling("sum")])
def test_preprocessing_layers_round_trip_their_config(layer):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="fill_value"):
        FillMissing(float("nan"))
    with pytest.raises(ValueError, match="combiner"):
        TokenPooling("max")
    with pytest.raises(ValueError, match="separator"):
        SplitTokens("")


@pytest.mark.parametrize("architecture, kwargs", [
    ("mmoe", {"num_experts": 2, "expert_units": 4, "tower_units": [3], "expert_dropout_rate": 0.1}),
    ("omoe", {"num_experts": 2, "expert_units": 4}),
    ("shared_bottom", {"bottom_units": [6]}),
    ("single_task", {"hidden_units": [5]}),
    ("cross_stitch", {"hidden_units": [5]}),
    ("l2_constrained", {"hidden_units": [5]}),
    ("tensor_factorization", {"hidden_units": [5]}),
    ("ple", {"num_levels": 2, "num_shared_experts": 2, "num_task_experts": 1, "expert_units": 4}),
    ("cgc", {"num_shared_experts": 2, "num_task_experts": 1, "expert_units": 4}),
])
def test_every_architecture_builds_from_the_spec(data_dir, stats, architecture, kwargs):
    tables = copy.deepcopy(SPEC)
    tables["model"] = {"architecture": architecture, **kwargs}
    spec = load_spec(tables, base_dir=str(data_dir))
    model = workflow.build_model(spec, stats)
    assert sorted(model.output) == ["click", "watch"] and sorted(str(t.name).split(":")[0] for t in model.inputs) == sorted(f.name for f in spec.features)
    out = model(_feed(edge_rows()), training=False)
    assert out["click"].shape == (4, 1) and np.all(np.isfinite(out["watch"]))
    watch = model.get_layer("watch").get_config()
    assert watch["scale"] == pytest.approx(math.sqrt(stats.labels["watch"].variance))
    assert watch["offset"] == pytest.approx(stats.labels["watch"].mean)


@pytest.mark.parametrize("model_table, message", [
    ({"architecture": "moe"}, r"\[model\]: unknown architecture 'moe'; choose one of \['cgc', 'cross_stitch', "),
    ({"architecture": "mmoe", "num_expert": 3}, r"\[model\]: unknown key 'num_expert' for architecture 'mmoe'; "
                                                 r"valid keys: architecture, gate_features, num_experts"),
    ({"architecture": "mmoe", "num_experts": 0}, r"\[model\] \(mmoe\): `num_experts` must be a positive integer"),
])
def test_model_section_errors(data_dir, stats, model_table, message):
    tables = copy.deepcopy(SPEC)
    tables["model"] = model_table
    with pytest.raises(SpecError, match=message):
        workflow.build_model(load_spec(tables, base_dir=str(data_dir)), stats)


def test_loss_weights_standardize_the_regression_loss(spec, stats):
    kwargs = workflow.compile_kwargs(spec, stats)
    assert kwargs["loss_weights"]["click"] == 1.0
    assert kwargs["loss_weights"]["watch"] == pytest.approx(0.5 / stats.labels["watch"].variance)
    assert sorted(kwargs["metrics"]) == ["click", "watch"]


def test_normalize_label_trains_in_label_units(data_dir, table):
    """With normalize_label the predictions land near the labels (hundreds of seconds) after two
    short epochs; without it, a tower starting near 0 is still far away."""
    means = {}
    for normalize in (True, False):
        tables = copy.deepcopy(SPEC)
        tables["tasks"][1]["normalize_label"] = normalize
        tables["train"].update(epochs=2, learning_rate=0.01)
        spec = load_spec(tables, base_dir=str(data_dir))
        stats = compute_statistics(spec)
        keras.utils.set_random_seed(0)
        model = workflow.compile_model(workflow.build_model(spec, stats), spec, stats)
        model.fit(make_dataset(spec, "train"), epochs=2, verbose=0)
        means[normalize] = float(np.mean(model.predict(make_dataset(spec, "validation"), verbose=0)["watch"]))
    label_mean, label_std = stats.labels["watch"].mean, math.sqrt(stats.labels["watch"].variance)
    assert abs(means[True] - label_mean) < label_std, means
    assert abs(means[False] - label_mean) > 3 * label_std, means


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("out")
    lines = []
    spec_path = data_dir / "spec.toml"
    from keras_mmoe.data import spec_to_toml

    spec_path.write_text(spec_to_toml(load_spec(SPEC)))
    result = workflow.train(str(spec_path), out_dir=str(out), name="ranker", log=lines.append)
    return result, lines, out, str(spec_path)


def test_train_prints_the_plan_trains_saves_and_exports(trained, table):
    result, lines, out, _ = trained
    text = "\n".join(lines)
    assert "train: 2 file(s), " in text and "validation: " in text
    assert f"feature country (categorical): vocabulary {len(result.statistics.features['country'].vocabulary) + 1} incl. OOV" in text
    assert "feature tags (multi_categorical): vocabulary 7 incl. OOV (6 distinct)" in text
    assert "task watch (regression, label 'watch_seconds', loss weight 0.5)" in text
    epoch = [line for line in lines if line.startswith("epoch 1/1")]
    assert epoch and "validation: click AUC " in epoch[0] and "watch RMSE " in epoch[0]
    assert result.statistics.rows + result.statistics.validation_rows == N
    assert os.path.isfile(out / "ranker.keras")
    assert result.version_dir == os.path.join(str(out), "ranker", "1")
    assert os.path.isfile(os.path.join(result.version_dir, "saved_model.pb"))
    assert not glob.glob(str(out / ".tmp*")) and not glob.glob(str(out / "ranker" / ".tmp*"))
    rmse = result.history["val_watch_rmse"][-1]
    assert 0 < rmse < 10 * math.sqrt(result.statistics.labels["watch"].variance)


def test_saved_model_loads_and_predicts_the_same(trained):
    result, _, _, _ = trained
    import keras_mmoe  # noqa: F401

    loaded = keras.models.load_model(result.keras_path, compile=False)
    feed = _feed(edge_rows())
    for task in ("click", "watch"):
        np.testing.assert_allclose(np.asarray(loaded(feed)[task]), np.asarray(result.model(feed)[task]), rtol=1e-6)


def test_train_refuses_to_overwrite_and_a_failed_run_leaves_nothing(trained, tmp_path, table, monkeypatch):
    result, _, out, spec_path = trained
    with pytest.raises(FileExistsError, match="ranker.keras already exists"):
        workflow.train(spec_path, out_dir=str(out), name="ranker")
    # Bad data: fails in the statistics pass; nothing written.
    lines = spec_data.csv_lines(table)
    lines[3] = lines[3].replace(",0,", ",5,").replace(",1,", ",5,")
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    bad = copy.deepcopy(SPEC)
    bad["data"]["train"] = ["bad.csv"]
    with pytest.raises(DataError, match=r"bad.csv: line 4: column 'clicked'"):
        workflow.train(load_spec(bad, base_dir=str(tmp_path)), out_dir=str(tmp_path / "o"), name="m")
    assert not os.path.exists(tmp_path / "o")
    # A failure at export time: no .keras, no version, no temporary file.
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(workflow, "export_for_serving", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        workflow.train(spec_path, out_dir=str(tmp_path / "o2"), name="m")
    assert os.listdir(tmp_path / "o2") == []


def _examples(rows):
    """tf.train.Example per row with the feature absent where the value is missing."""
    serialized = []
    for i in range(len(rows["age"])):
        feature = {}
        if not np.isnan(rows["age"][i]):
            feature["age"] = tf.train.Feature(float_list=tf.train.FloatList(value=[rows["age"][i]]))
        feature["income"] = tf.train.Feature(float_list=tf.train.FloatList(value=[rows["income"][i]]))
        if rows["country"][i]:
            feature["country"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[rows["country"][i]]))
        if rows["device"][i] != -1:
            feature["device"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[rows["device"][i]]))
        tokens = [t for t in rows["tags"][i].split(b"|") if t]
        if tokens:
            feature["tags"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=tokens))
        serialized.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return np.array(serialized, dtype=object)


def test_export_answers_raw_rows_in_a_fresh_process(trained, table, tmp_path):
    result, _, _, _ = trained
    rows = {k: v for k, v in reference_inputs(table, range(30)).items() if k not in ("click", "watch")}
    batches = {}
    for key, batch in (("table", rows), ("edge", edge_rows())):
        batches[key] = {"raw": {k: np.asarray(v).reshape(-1, 1) for k, v in batch.items()}, "examples": _examples(batch)}
    results, messages = verify_in_subprocess([{"key": "spec", "path": result.version_dir, "batches": batches}],
                                             str(tmp_path))
    assert messages["keras_mmoe_imported"] is False and messages["spec/unregistered"] == []
    for key, batch in (("table", rows), ("edge", edge_rows())):
        expected = {k: np.asarray(v) for k, v in result.model(_feed(batch), training=False).items()}
        for loader in ("tf2", "tf1"):
            for signature in ("serving_default", "predict_examples"):
                for task in ("click", "watch"):
                    np.testing.assert_allclose(results[f"spec/{loader}/{signature}/{key}/{task}"], expected[task],
                                               rtol=1e-5, atol=1e-5, err_msg=f"{loader} {signature} {key} {task}")
    # The regression output is in seconds, not standardized.
    assert np.mean(results["spec/tf2/serving_default/table/watch"]) > 100


def test_serving_options_follow_the_spec(spec):
    options = serving_options(spec)
    assert options["example_separators"] == {"tags": "|"}
    assert options["example_defaults"]["country"] == "" and options["example_defaults"]["device"] == -1
    assert math.isnan(options["example_defaults"]["age"]) and "income" not in options["example_defaults"]
    assert options["allow_non_finite"] == ["age"]


def test_evaluate_keras_and_saved_model_agree_with_references(trained, data_dir, table, tmp_path):
    result, _, _, spec_path = trained
    write_csv(str(tmp_path / "test.csv"), table, rows=range(0, N, 2))
    files = [str(tmp_path / "test.csv")]
    from_keras = workflow.evaluate(result.keras_path, spec_path, files, group_by="user")
    from_export = workflow.evaluate(result.version_dir, spec_path, files, group_by="user")
    from_model = workflow.evaluate(result.model, spec_path, files, group_by="user")
    assert from_keras["rows"] == N // 2 and from_keras["bad_rows"] == 0
    # The reference: predictions of the in-memory model on the same rows, metrics from keras_mmoe.metrics.
    rows = reference_inputs(table, range(0, N, 2))
    out = result.model(_feed({k: v for k, v in rows.items() if k not in ("click", "watch")}), training=False)
    click, watch = np.asarray(out["click"]).ravel(), np.asarray(out["watch"]).ravel()
    users = np.array(table["user"])[::2]
    gauc, used, skipped = metrics.group_auc(rows["click"], click, users)
    expected = {
        "click": {"auc": metrics.roc_auc(rows["click"], click), "loss": metrics.binary_crossentropy(rows["click"], click),
                  "calibration": click.mean() / rows["click"].mean(), "gauc": gauc, "gauc_groups": used,
                  "gauc_skipped_groups": skipped},
        "watch": {"rmse": float(np.sqrt(np.mean((rows["watch"] - watch) ** 2))),
                  "mae": float(np.mean(np.abs(rows["watch"] - watch)))},
    }
    for got in (from_keras, from_model, from_export):
        for task, values in expected.items():
            for name, value in values.items():
                # The SavedModel's graph may differ from Keras by one float32 ulp, which can split the exact
                # ties of a barely trained model's scores: its ranking metrics get a looser tolerance.
                loose = got is from_export and name in ("auc", "gauc")
                assert got["tasks"][task][name] == pytest.approx(value, rel=1e-4, abs=0.01 if loose else 1e-6), (
                    task, name)
    assert expected["click"]["gauc_groups"] + expected["click"]["gauc_skipped_groups"] == len(set(users))


def test_evaluate_errors(trained, tmp_path):
    result, _, _, spec_path = trained
    with pytest.raises(FileNotFoundError, match="the pattern nothing.csv"):
        workflow.evaluate(result.keras_path, spec_path, ["nothing.csv"])
    with pytest.raises(ValueError, match=r"no column 'nobody' \(requested column\)"):
        workflow.evaluate(result.keras_path, spec_path, group_by="nobody")
    with pytest.raises(FileNotFoundError, match="without saved_model.pb"):
        workflow.evaluate(str(tmp_path), spec_path)
