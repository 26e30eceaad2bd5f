"""A small ranking-like table with every feature type and missing value, written as CSV and TFRecord.

Used by the spec, pipeline and spec-model tests. Columns:

    age       float, ~15% missing (numeric with a default and an indicator)
    income    float, never missing (numeric without default, normalized)
    country   string, ~10% missing, one rare value (categorical, embedding)
    device    int64 id, ~10% missing (categorical int64, one_hot)
    tags      0-3 tokens of 6, joined by "|" (multi_categorical)
    user      group id u0..u19 (not a feature: evaluation's group_by)
    clicked   0/1, depends on age, country and tags
    watch_seconds  float in the hundreds, depends on income and device
"""

import gzip
import math
import os

import numpy as np

COUNTRIES = ["US", "FR", "DE", "JP", "BR"]
TAGS = ["mobile", "tablet", "desktop", "tv", "watch", "car"]
COLUMNS = ["age", "income", "country", "device", "tags", "user", "clicked", "watch_seconds"]

SPEC = {
    "data": {"train": ["train-*.csv"], "validation_fraction": 0.2},
    "features": [
        {"name": "age", "type": "numeric", "default": 40.0, "missing_indicator": True, "normalize": True},
        {"name": "income", "type": "numeric", "normalize": True},
        {"name": "country", "type": "categorical", "embedding_dim": 3},
        {"name": "device", "type": "categorical", "dtype": "int64", "encoding": "one_hot"},
        {"name": "tags", "type": "multi_categorical", "embedding_dim": 4, "combiner": "mean"},
    ],
    "tasks": [
        {"name": "click", "label": "clicked", "type": "binary"},
        {"name": "watch", "label": "watch_seconds", "type": "regression", "normalize_label": True,
         "loss_weight": 0.5},
    ],
    "model": {"architecture": "mmoe", "num_experts": 3, "expert_units": [8], "tower_units": [4]},
    "train": {"epochs": 1, "batch_size": 64, "learning_rate": 0.01},
}


def make_table(n, seed=0):
    """``{column: list}``; missing cells are None; tags are lists of tokens."""
    rng = np.random.default_rng(seed)
    age = np.round(rng.uniform(18, 70, n), 1)
    income = np.round(rng.lognormal(10, 0.5, n), 2)
    country = rng.choice(COUNTRIES, n, p=[0.4, 0.25, 0.2, 0.1, 0.05])
    device = rng.integers(100, 108, n)
    tags = [list(rng.choice(TAGS, k, replace=False)) for k in rng.integers(0, 4, n)]
    user = [f"u{k}" for k in rng.integers(0, 20, n)]
    logit = 0.05 * (age - 40) + (country == "US") * 1.0 + np.array([("mobile" in t) * 1.0 for t in tags]) - 0.5
    clicked = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    watch = np.round(300 + 0.002 * income + 20 * (device - 100) + rng.normal(0, 30, n), 1)
    table = {
        "age": [None if m else float(a) for a, m in zip(age, rng.random(n) < 0.15)],
        "income": [float(v) for v in income],
        "country": [None if m else str(c) for c, m in zip(country, rng.random(n) < 0.1)],
        "device": [None if m else int(d) for d, m in zip(device, rng.random(n) < 0.1)],
        "tags": tags,
        "user": user,
        "clicked": [int(c) for c in clicked],
        "watch_seconds": [float(w) for w in watch],
    }
    return table


def _cell(column, value):
    if value is None:
        return ""
    if column == "tags":
        return "|".join(value)
    return str(value)


def csv_lines(table, columns=COLUMNS):
    n = len(table["age"])
    lines = [",".join(columns)]
    for i in range(n):
        lines.append(",".join(_cell(c, table[c][i]) for c in columns))
    return lines


def write_csv(path, table, rows=None, columns=COLUMNS):
    lines = csv_lines(table, columns)
    body = [lines[0]] + [lines[1 + i] for i in (rows if rows is not None else range(len(lines) - 1))]
    text = "\n".join(body) + "\n"
    if path.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def example(table, i):
    """The tf.train.Example of row ``i``: missing values are absent features."""
    import tensorflow as tf

    feature = {}
    for column in COLUMNS:
        value = table[column][i]
        if value is None:
            continue
        if column in ("age", "income", "watch_seconds"):
            feature[column] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        elif column in ("device", "clicked"):
            feature[column] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        elif column == "tags":
            feature[column] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.encode() for t in value]))
        else:
            feature[column] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_tfrecord(path, table, rows=None, examples=None):
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP" if path.endswith(".gz") else "")
    with tf.io.TFRecordWriter(path, options) as writer:
        if examples is not None:
            for e in examples:
                writer.write(e if isinstance(e, bytes) else e.SerializeToString())
        else:
            for i in rows if rows is not None else range(len(table["age"])):
                writer.write(example(table, i).SerializeToString())
    return path


def write_shards(directory, table, num_shards, fmt="csv", gz=False, prefix="train"):
    """Rows split round-robin over ``num_shards`` files; returns their paths."""
    n = len(table["age"])
    suffix = (".csv" if fmt == "csv" else ".tfrecord") + (".gz" if gz else "")
    paths = []
    for s in range(num_shards):
        path = os.path.join(directory, f"{prefix}-{s:02d}{suffix}")
        rows = range(s, n, num_shards)
        (write_csv if fmt == "csv" else write_tfrecord)(path, table, rows)
        paths.append(path)
    return paths


def reference_inputs(table, rows=None):
    """The raw model inputs the pipeline must yield for ``rows``: NaN / "" / -1 for missing, tags joined."""
    rows = list(range(len(table["age"]))) if rows is None else list(rows)

    def num(v):
        return math.nan if v is None else float(v)

    return {
        "age": np.array([num(table["age"][i]) for i in rows], np.float32),
        "income": np.array([num(table["income"][i]) for i in rows], np.float32),
        "country": np.array([(table["country"][i] or "").encode() for i in rows], object),
        "device": np.array([-1 if table["device"][i] is None else table["device"][i] for i in rows], np.int64),
        "tags": np.array(["|".join(table["tags"][i]).encode() for i in rows], object),
        "click": np.array([table["clicked"][i] for i in rows], np.float32),
        "watch": np.array([table["watch_seconds"][i] for i in rows], np.float32),
    }
