"""The spec: TOML and JSON files, defaults, relative paths, and one clear line for each mistake."""

import copy
import json
import os

import pytest

from keras_mmoe.data import SpecError, load_spec, parse_spec, spec_to_toml
from spec_data import SPEC

TOML = """
[data]
train = ["data/train-*.csv.gz"]
validation = ["data/valid.csv"]
delimiter = ","

[[features]]
name = "age"
type = "numeric"
default = 0.0
missing_indicator = true
normalize = true

[[features]]
name = "country"
type = "categorical"
max_tokens = 10000
min_count = 1
embedding_dim = 8

[[features]]
name = "tags"
type = "multi_categorical"
separator = "|"
embedding_dim = 8
combiner = "mean"

[[tasks]]
name = "click"
label = "clicked"
type = "binary"
loss_weight = 1.0

[[tasks]]
name = "watch"
label = "watch_seconds"
type = "regression"
normalize_label = true

[model]
architecture = "mmoe"
num_experts = 8
expert_units = [64, 32]
tower_units = [16]
expert_dropout_rate = 0.1

[train]
epochs = 3
batch_size = 1024
learning_rate = 0.001
"""


def test_the_issue_example_loads_from_toml_and_json(tmp_path):
    path = tmp_path / "conf" / "spec.toml"
    path.parent.mkdir()
    path.write_text(TOML)
    spec = load_spec(str(path))
    assert spec.data.train == ["data/train-*.csv.gz"] and spec.data.validation == ["data/valid.csv"]
    assert spec.data.validation_fraction == 0.0  # validation files replace the fraction
    age, country, tags = spec.features
    assert (age.default, age.missing_indicator, age.normalize) == (0.0, True, True)
    assert (country.max_tokens, country.min_count, country.embedding_dim, country.encoding) == (10000, 1, 8, "embedding")
    assert (tags.separator, tags.combiner, tags.vocabulary_source) == ("|", "mean", "learned")
    assert [(t.name, t.label, t.type, t.loss_weight, t.normalize_label) for t in spec.tasks] == [
        ("click", "clicked", "binary", 1.0, False), ("watch", "watch_seconds", "regression", 1.0, True)]
    assert spec.architecture == "mmoe"
    assert spec.model_kwargs == {"num_experts": 8, "expert_units": [64, 32], "tower_units": [16],
                                 "expert_dropout_rate": 0.1}
    assert (spec.train.epochs, spec.train.batch_size, spec.train.learning_rate) == (3, 1024, 0.001)
    # Paths are relative to the spec file's directory.
    assert spec.resolve_path("data/valid.csv") == os.path.join(str(tmp_path), "conf", "data", "valid.csv")
    assert spec.columns() == ["age", "country", "tags", "clicked", "watch_seconds"]

    import tomllib

    json_path = tmp_path / "conf" / "spec.json"
    json_path.write_text(json.dumps(tomllib.loads(TOML)))
    assert load_spec(str(json_path)).to_dict() == spec.to_dict()


def test_defaults():
    spec = load_spec({"data": {"train": "a.csv"}, "features": [{"name": "x", "type": "categorical"}],
                      "tasks": [{"name": "y", "label": "y", "type": "binary"}]})
    assert spec.data.train == ["a.csv"] and spec.data.validation_fraction == 0.1 and spec.data.max_bad_rows == 0
    assert spec.features[0].embedding_dim == 8 and spec.features[0].dtype == "string"
    assert spec.model == {"architecture": "mmoe"}
    assert (spec.train.epochs, spec.train.batch_size, spec.train.seed, spec.train.name) == (3, 1024, 0, "model")
    assert spec.base_dir == "."


def test_toml_round_trip():
    import tomllib

    for tables in (SPEC, tomllib.loads(TOML)):
        spec = load_spec(tables)
        again = parse_spec(tomllib.loads(spec_to_toml(spec)))
        assert again.to_dict() == spec.to_dict()
        assert again.data == spec.data and again.features == spec.features and again.tasks == spec.tasks


def _with(change):
    tables = copy.deepcopy(SPEC)
    change(tables)
    return tables


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(extra={}), r"spec: top level: unknown key 'extra'; valid keys: data, features, tasks, model, train"),
    (lambda t: t.pop("tasks"), r"top level: missing required key 'tasks'"),
    (lambda t: t["data"].update(trian=["x"]), r"\[data\]: unknown key 'trian'; valid keys: train, validation"),
    (lambda t: t["data"].update(train=[]), r"\[data\]: `train` must be a file pattern or a non-empty list of them, received \[\]"),
    (lambda t: t["data"].update(format="parquet"), r"\[data\]: `format` must be one of \['csv', 'tfrecord'\], received 'parquet'"),
    (lambda t: t["data"].update(delimiter=";;"), r"`delimiter` must be one character"),
    (lambda t: t["data"].update(validation_fraction=1.0), r"`validation_fraction` must be a number in \[0, 1\), received 1.0"),
    (lambda t: t["data"].update(validation=["v.csv"]), r"give `validation` \(files\) or `validation_fraction`"),
    (lambda t: t["data"].update(max_bad_rows=-1), r"`max_bad_rows` must be an integer >= 0, received -1"),
    (lambda t: t["features"][0].update(type="number"),
     r"\[\[features\]\] #1 'age': `type` must be one of \['numeric', 'categorical', 'multi_categorical'\], received 'number'"),
    (lambda t: t["features"][1].update(separator="|"),
     r"\[\[features\]\] #2 'income' \(numeric\): unknown key 'separator'; valid keys: name, type, column, default"),
    (lambda t: t["features"][2].update(default="US"), r"#3 'country' \(categorical\): unknown key 'default'"),
    (lambda t: t["features"][2].update(max_tokens=1), r"#3 'country': `max_tokens` must be an integer >= 2, received 1"),
    (lambda t: t["features"][2].update(embedding_dim=0), r"`embedding_dim` must be an integer >= 1, received 0"),
    (lambda t: t["features"][2].update(hash_bins=100, max_tokens=10), r"choose one vocabulary"),
    (lambda t: t["features"][3].update(embedding_dim=4), r"`embedding_dim` applies to encoding = \"embedding\""),
    (lambda t: t["features"][4].update(combiner="max"), r"`combiner` must be one of \['mean', 'sum'\], received 'max'"),
    (lambda t: t["features"][0].pop("default"), r"#1 'age': `missing_indicator` needs a `default`"),
    (lambda t: t["features"][0].update(default=float("nan")), r"`default` must be a finite number, received nan"),
    (lambda t: t["features"][0].update(name="1age"), r"`name` must be a name of letters, digits and underscores"),
    (lambda t: t["features"][1].update(name="age"), r"the feature name 'age' is used twice"),
    (lambda t: t["tasks"][0].update(type="multiclass"), r"\[\[tasks\]\] #1 'click': `type` must be one of \['binary', 'regression'\]"),
    (lambda t: t["tasks"][0].update(normalize_label=True), r"#1 'click': `normalize_label` applies to regression tasks only"),
    (lambda t: t["tasks"][0].update(loss_weight=0), r"`loss_weight` must be a number > 0, received 0"),
    (lambda t: t["tasks"][0].pop("label"), r"#1 'click': missing required key 'label'"),
    (lambda t: t["tasks"][0].update(name="age"), r"\[\[tasks\]\] 'age': a task cannot have the name of a feature"),
    (lambda t: t["tasks"][0].update(label="age"), r"the label column 'age' is also read by the feature 'age'"),
    (lambda t: t["model"].update(features=3), r"\[model\]: \['features'\] are set from the spec's features and tasks"),
    (lambda t: t["train"].update(epochs=0), r"\[train\]: `epochs` must be an integer >= 1, received 0"),
    (lambda t: t["train"].update(optimizer="sgd"), r"\[train\]: unknown key 'optimizer'"),
])
def test_each_mistake_is_one_line_naming_the_entry(change, message):
    with pytest.raises(SpecError, match=message) as info:
        load_spec(_with(change))
    assert "\n" not in str(info.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "spec.toml"
    bad.write_text("[data\ntrain = 1")
    with pytest.raises(SpecError, match=rf"{bad}: cannot parse: "):
        load_spec(str(bad))
    wrong = tmp_path / "spec.toml"
    wrong.write_text(TOML.replace("combiner = \"mean\"", "combiner = \"mean\"\nweights = 2"))
    with pytest.raises(SpecError, match=rf"{wrong}: \[\[features\]\] #3 'tags' \(multi_categorical\): unknown key 'weights'"):
        load_spec(str(wrong))
    with pytest.raises(FileNotFoundError, match="spec file not found"):
        load_spec(str(tmp_path / "nope.toml"))
    other = tmp_path / "spec.yaml"
    other.write_text("a: 1")
    with pytest.raises(SpecError, match="must end in .toml or .json"):
        load_spec(str(other))


def test_replace_train_checks_values():
    spec = load_spec(SPEC)
    assert spec.replace_train(name="ranker", out_dir="out").train.name == "ranker"
    with pytest.raises(SpecError, match=r"\[train\]: `name` must be a name"):
        spec.replace_train(name="a b")
