"""A starting spec from the files themselves: types, cardinalities and missing rates of a sample.

:func:`infer_spec` reads the CSV header (or the tf.Example keys) and the first ``sample_rows``
rows, and writes a spec (TOML text) for the user to read and edit: every column that is not a
label becomes a feature, with a comment line saying what the sample showed. The rules:

* numbers only -> ``numeric`` with ``normalize = true``; with missing cells also
  ``default`` (the sample median) and ``missing_indicator = true``. Integer columns named like an
  id (``user_id``, ``itemId``) -> ``categorical`` instead;
* text -> ``categorical``; ``multi_categorical`` when at least 10% of the filled cells hold
  ``|`` or ``;`` (tf.Example: a bytes_list with several values; an int64_list is a
  ``categorical`` of int64 ids, as numeric features are float_list);
* at most 10 distinct values -> ``encoding = "one_hot"``; near-unique values -> ``hash_bins``;
  else an embedding of ``round(6 * distinct ** 0.25)`` (4 to 32) dimensions, and ``max_tokens`` when
  the sample already holds 1,000 distinct values or more.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence, Union

import numpy as np

from keras_mmoe.data import files as _files
from keras_mmoe.data.spec import TASK_TYPES, load_spec, spec_to_toml

#: Rows read by default.
SAMPLE_ROWS = 10_000
_NUMBER = re.compile(r"^\s*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*$")
_INTEGER = re.compile(r"^\s*[-+]?[0-9]{1,18}\s*$")
_NAN = re.compile(r"^\s*(?i:nan)\s*$")
_ID_NAME = re.compile(r"(^|[_\s-])(id|ID|Id)$|[a-z](Id|ID)$")
_SEPARATORS = ("|", ";")
_NAME_INVALID = re.compile(r"[^0-9A-Za-z_]+")


def _name(column: str, taken: set) -> str:
    name = _NAME_INVALID.sub("_", column).strip("_") or "column"
    if name[0].isdigit():
        name = "f_" + name
    base, k = name, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _parse_labels(labels) -> dict:
    if isinstance(labels, dict):
        items = list(labels.items())
    else:
        items = []
        for item in labels:
            column, sep, kind = str(item).rpartition(":")
            if not sep or not column:
                raise ValueError(f"a label must be COLUMN:TYPE (TYPE one of {list(TASK_TYPES)}), received {item!r}")
            items.append((column, kind))
    if not items:
        raise ValueError("at least one label COLUMN:TYPE is needed (e.g. clicked:binary)")
    for column, kind in items:
        if kind not in TASK_TYPES:
            raise ValueError(f"label {column!r}: unknown type {kind!r}; choose one of {list(TASK_TYPES)}")
    return dict(items)


def _sniff_delimiter(path):
    if path.endswith((".tsv", ".tsv.gz")):
        return "\t"
    with _files.open_text(path) as f:
        header = f.readline()
    counts = {d: header.count(d) for d in (",", "\t", ";")}
    return max(counts, key=counts.get) if max(counts.values()) > 0 else ","


def _embedding_or_one_hot(entry, distinct):
    if distinct <= 10:
        entry["encoding"] = "one_hot"
    else:
        entry["embedding_dim"] = int(min(32, max(4, round(6 * distinct ** 0.25))))


def _categorical_entry(entry, distinct, filled, what="values"):
    notes = [f"{distinct} distinct {what}"]
    if filled >= 100 and distinct > 0.5 * filled:
        entry["hash_bins"] = 100_000
        entry["embedding_dim"] = 16
        notes.append("near-unique in the sample: hashed")
        return notes
    if distinct >= 1000:
        entry["max_tokens"] = 100_000
    if entry["type"] == "multi_categorical":
        entry["embedding_dim"] = int(min(32, max(4, round(6 * max(distinct, 1) ** 0.25))))
    else:
        _embedding_or_one_hot(entry, distinct)
    return notes


def _csv_columns(paths, delimiter, sample_rows):
    header, cells, rows = None, None, 0
    for _, _, row_header, row in _files.csv_rows(paths, delimiter, limit=sample_rows):
        if header is None:
            header = row_header
            cells = {c: [] for c in header}
        if len(row) != len(header):
            continue
        for c, v in zip(header, row):
            cells[c].append(v)
        rows += 1
    if header is None:
        header = _files.read_header(paths[0], delimiter)
        cells = {c: [] for c in header}
    return header, cells, rows


def _infer_csv_feature(column, values, name):
    filled = [v for v in values if v.strip() and not _NAN.match(v)]
    missing = len(values) - len(filled)
    rate = missing / len(values) if values else 0.0
    notes = [f"sample: {100 * rate:.1f}% missing"]
    if not filled:
        return None, f"column {column!r}: empty in the sample, left out"
    entry = {"name": name}
    if name != column:
        entry["column"] = column
    numeric = all(_NUMBER.match(v) for v in filled)
    if numeric and not (_ID_NAME.search(column) and all(_INTEGER.match(v) for v in filled)):
        numbers = np.array([float(v) for v in filled])
        entry.update(type="numeric", normalize=True)
        if missing:
            median = float(np.median(numbers))
            entry.update(default=float(round(median, 6)), missing_indicator=True)
            notes.append("default = the sample median")
        notes.append(f"min {numbers.min():.6g}, max {numbers.max():.6g}")
        return entry, "; ".join(notes)
    separator = next((s for s in _SEPARATORS if sum(s in v for v in filled) >= 0.1 * len(filled)), None)
    if separator is not None:
        entry.update(type="multi_categorical", separator=separator, combiner="mean")
        tokens = [t for v in filled for t in v.split(separator) if t]
        notes += _categorical_entry(entry, len(set(tokens)), len(tokens), "tokens")
        notes.append(f"{len(tokens) / len(values):.2f} tokens a row")
    else:
        entry["type"] = "categorical"
        notes += _categorical_entry(entry, len(set(filled)), len(filled))
    return entry, "; ".join(notes)


def _tfrecord_columns(paths, sample_rows):
    import tensorflow as tf

    kinds, values, present, rows = {}, {}, {}, 0
    for path in paths:
        dataset = tf.data.TFRecordDataset(path, compression_type=_files.compression_type(path))
        for record in dataset.take(sample_rows - rows).as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            rows += 1
            for key, feature in example.features.feature.items():
                kind = feature.WhichOneof("kind")
                if kind is None:
                    continue
                kinds.setdefault(key, kind)
                vs = list(getattr(feature, kind).value)
                values.setdefault(key, []).append(vs)
                if vs:
                    present[key] = present.get(key, 0) + 1
        if rows >= sample_rows:
            break
    return kinds, values, present, rows


def _infer_tfrecord_feature(key, kind, values, present, rows, name):
    missing = rows - present
    notes = [f"sample: {100 * missing / max(rows, 1):.1f}% missing"]
    entry = {"name": name}
    if name != key:
        entry["column"] = key
    flat = [v for vs in values for v in vs]
    if not flat:
        return None, f"feature {key!r}: empty in the sample, left out"
    if kind == "float_list":
        entry.update(type="numeric", normalize=True)
        if missing:
            entry.update(default=float(round(float(np.median(flat)), 6)), missing_indicator=True)
            notes.append("default = the sample median")
        return entry, "; ".join(notes)
    multi = any(len(vs) > 1 for vs in values)
    if kind == "int64_list":  # numeric features are float_list; int64 values are read as ids
        entry.update(type="categorical", dtype="int64")
        notes.append("int64_list: integer ids")
    elif multi:
        entry.update(type="multi_categorical", separator="|", combiner="mean")
    else:
        entry["type"] = "categorical"
    notes += _categorical_entry(entry, len(set(flat)), len(flat), "tokens" if multi else "values")
    return entry, "; ".join(notes)


def infer_spec(
    files: Union[str, Sequence[str]],
    labels: Union[Sequence[str], dict],
    *,
    sample_rows: int = SAMPLE_ROWS,
    delimiter: Optional[str] = None,
    base_dir: str = ".",
) -> str:
    """A spec (TOML text) for ``files`` with the ``labels`` as tasks; check it, edit it, then train.

    Args:
        files: file patterns (CSV or TFRecord), written to ``[data] train`` as given.
        labels: ``["clicked:binary", "watch_seconds:regression"]`` or ``{column: type}``; each
            becomes a task named after its column.
        sample_rows: rows read from the first files.
        delimiter: CSV delimiter (default: guessed from the header line).
        base_dir: directory the patterns are relative to.

    Returns:
        TOML text that :func:`~keras_mmoe.data.load_spec` reads (checked before it is returned).
    """
    patterns = [files] if isinstance(files, str) else list(files)
    if isinstance(sample_rows, bool) or not isinstance(sample_rows, int) or sample_rows < 1:
        raise ValueError(f"`sample_rows` must be a positive integer, received: sample_rows={sample_rows!r}")
    label_types = _parse_labels(labels)
    paths = _files.resolve_patterns(patterns, base_dir, what="spec infer")
    fmt = _files.files_format(paths, what="spec infer")
    data = {"train": patterns}
    features, tasks, comments, skipped = [], [], {}, []
    taken = set()
    if fmt == "csv":
        delimiter = delimiter or _sniff_delimiter(paths[0])
        if delimiter != ",":
            data["delimiter"] = delimiter
        header, cells, rows = _csv_columns(paths, delimiter, sample_rows)
        columns = header
    else:
        kinds, values, present, rows = _tfrecord_columns(paths, sample_rows)
        columns = sorted(kinds)
    unknown = [c for c in label_types if c not in columns]
    if unknown:
        raise ValueError(f"{paths[0]}: no column {unknown[0]!r} for the label; the columns are: {', '.join(columns)}")
    for column in columns:
        if column in label_types:
            continue
        name = _name(column, taken)
        if fmt == "csv":
            entry, note = _infer_csv_feature(column, cells[column], name)
        else:
            entry, note = _infer_tfrecord_feature(column, kinds[column], values[column], present.get(column, 0),
                                                  rows, name)
        if entry is None:
            skipped.append(note)
            taken.discard(name)
            continue
        features.append(entry)
        comments[("features", name)] = note
    for column, kind in label_types.items():
        name = _name(column, taken)
        task = {"name": name, "label": column, "type": kind}
        if fmt == "csv":
            vs = [float(v) for v in cells[column] if _NUMBER.match(v)]
        else:
            vs = [float(v) for vv in values.get(column, []) for v in vv]
        if kind == "regression":
            task["normalize_label"] = True
            if vs:
                comments[("tasks", name)] = f"sample: mean {np.mean(vs):.6g}, std {np.std(vs):.6g}"
        elif vs:
            comments[("tasks", name)] = f"sample: positive rate {np.mean(np.array(vs) == 1):.4f}"
        tasks.append(task)
    if not features:
        raise ValueError(f"{paths[0]}: no column left for features besides the labels")
    tables = {
        "data": data,
        "features": features,
        "tasks": tasks,
        "model": {"architecture": "mmoe", "num_experts": 8, "expert_units": [64, 32], "tower_units": [16]},
        "train": {"epochs": 3, "batch_size": 1024, "learning_rate": 0.001},
    }
    head = [f"# Inferred from {rows} rows of {len(paths)} file(s) ({', '.join(paths[:3])}"
            f"{', ...' if len(paths) > 3 else ''}); check every entry before training."]
    head += [f"# {note}" for note in skipped]
    text = "\n".join(head) + "\n\n" + spec_to_toml(tables, comments)
    import tomllib

    load_spec(tomllib.loads(text), base_dir=base_dir)  # the output always loads
    return text
