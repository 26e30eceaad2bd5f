"""``infer_spec``: a starting spec from CSV and TFRecord files (types, cardinalities, missing rates)."""

import tomllib

import numpy as np
import pytest

from keras_mmoe.data import compute_statistics, infer_spec, load_spec
import spec_data
from spec_data import make_table, write_csv, write_tfrecord


@pytest.fixture(scope="module")
def table():
    return make_table(400, seed=3)


def _by_name(tables):
    return {f["name"]: f for f in tables["features"]}, {t["name"]: t for t in tables["tasks"]}


def test_infer_from_csv(tmp_path, table):
    write_csv(str(tmp_path / "part-0.csv"), table)
    write_csv(str(tmp_path / "part-1.csv"), table)
    text = infer_spec(["part-*.csv"], ["clicked:binary", "watch_seconds:regression"], base_dir=str(tmp_path))
    assert text.startswith("# Inferred from 800 rows of 2 file(s)")
    tables = tomllib.loads(text)
    features, tasks = _by_name(tables)
    assert tables["data"] == {"train": ["part-*.csv"]}
    age_missing = sum(v is None for v in table["age"]) / 400
    assert features["age"]["type"] == "numeric" and features["age"]["missing_indicator"] is True
    assert features["age"]["default"] == pytest.approx(np.median([v for v in table["age"] if v is not None]))
    assert f"# sample: {100 * age_missing:.1f}% missing" in text
    assert features["income"] == {"name": "income", "type": "numeric", "normalize": True}
    assert features["country"] == {"name": "country", "type": "categorical", "encoding": "one_hot"}
    assert features["device"]["type"] == "numeric"  # integers not named like an id stay numbers
    assert features["tags"]["type"] == "multi_categorical" and features["tags"]["separator"] == "|"
    assert features["user"]["type"] == "categorical" and features["user"]["embedding_dim"] == 13
    assert tasks["clicked"] == {"name": "clicked", "type": "binary", "label": "clicked"}
    assert tasks["watch_seconds"]["normalize_label"] is True
    # The output is a working spec: statistics run on it.
    spec = load_spec(tables, base_dir=str(tmp_path))
    stats = compute_statistics(spec)
    assert stats.rows + stats.validation_rows == 800 and 0.05 < stats.validation_rows / 800 < 0.15


def test_infer_ids_hashing_and_renamed_columns(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["user_id,Item Id,score,y"] + [f"{i},{rng.integers(0, 5)},{rng.random():.3f},{i % 2}" for i in range(300)]
    (tmp_path / "d.tsv").write_text("\n".join(lines).replace(",", "\t") + "\n")
    tables = tomllib.loads(infer_spec("d.tsv", {"y": "binary"}, base_dir=str(tmp_path)))
    features, _ = _by_name(tables)
    assert tables["data"]["delimiter"] == "\t"
    assert features["user_id"]["type"] == "categorical" and features["user_id"]["hash_bins"] == 100_000
    assert features["Item_Id"] == {"name": "Item_Id", "type": "categorical", "column": "Item Id", "encoding": "one_hot"}
    assert features["score"]["type"] == "numeric"


def test_infer_from_tfrecord(tmp_path, table):
    write_tfrecord(str(tmp_path / "t.tfrecord.gz"), table)
    tables = tomllib.loads(infer_spec("t.tfrecord.gz", ["clicked:binary"], base_dir=str(tmp_path)))
    features, tasks = _by_name(tables)
    assert features["age"]["type"] == "numeric" and "default" in features["age"]
    assert features["device"] == {"name": "device", "type": "categorical", "dtype": "int64", "encoding": "one_hot"}
    assert features["tags"]["type"] == "multi_categorical"
    assert features["country"]["type"] == "categorical"
    assert "watch_seconds" in features  # not a label here: a feature
    spec = load_spec(tables, base_dir=str(tmp_path))
    assert compute_statistics(spec).features["device"].vocabulary


def test_infer_errors(tmp_path, table):
    write_csv(str(tmp_path / "a.csv"), table)
    with pytest.raises(ValueError, match=r"a.csv: no column 'click' for the label; the columns are: age, income"):
        infer_spec("a.csv", ["click:binary"], base_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"label 'clicked': unknown type 'bool'"):
        infer_spec("a.csv", ["clicked:bool"], base_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"a label must be COLUMN:TYPE"):
        infer_spec("a.csv", ["clicked"], base_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="the pattern b.csv"):
        infer_spec("b.csv", ["clicked:binary"], base_dir=str(tmp_path))
