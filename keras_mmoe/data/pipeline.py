"""Streaming ``tf.data`` pipelines over the files of a spec: CSV (plain or gzip) and TFRecord.

:func:`make_dataset` yields ``(features, labels)`` batches: one ``(batch, 1)`` tensor per feature,
raw as a serving request would carry it (numbers float32 with NaN for a missing value; strings
with ``""`` for a missing one; int64 ids with -1; a multi_categorical cell as its joined string),
and one float32 ``(batch, 1)`` label per task. The preprocessing inside the model
(:func:`keras_mmoe.features.build_preprocessing`) applies the spec's rules to them.

How: file names -> (optional shuffle, shard) -> interleave of per-file readers (blocks of rows,
each row with its file index and line number) -> bounded shuffle (each window of
``shuffle_buffer`` rows permuted at once) -> batches -> one vectorized parse per batch
(``tf.io.decode_csv`` / ``tf.io.parse_example``) that also checks every row (field count,
numbers, labels, missing values) -> drop bad rows and the other split's rows (a hash of the row
decides: deterministic) -> rebatch -> prefetch. Rows travel in blocks and batches throughout:
no step handles one row at a time. A bad row becomes one line
``FILE: line N: column 'C': what was received`` (:class:`DataError`); ``max_bad_rows`` skips up
to that many per pass over the data and fails beyond.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_mmoe.data import files as _files
from keras_mmoe.data.spec import MISSING_ID, Spec, SpecLike, load_spec

#: Rows whose hash falls below ``validation_fraction * HASH_BUCKETS`` form the validation split.
HASH_BUCKETS = 1 << 30
#: A row's position is ``file index * POSITION_BASE + line number`` (one int64).
POSITION_BASE = 1 << 40
#: Files read at once by the interleave.
CYCLE_LENGTH = 8
#: Rows a file reader hands to the interleave at once.
READ_BLOCK = 256
#: Rows parsed at once by :func:`make_dataset` (at least; more with a larger batch size): parsing
#: 8192 rows at once took 9% less CPU than batches of 1024 on the benchmark table.
PARSE_ROWS = 8192
#: Records read per file (first files only) to learn the tf.Example value kinds of the labels.
PROBE_RECORDS = 100

_MARK = "@@keras_mmoe.data@@"

# Row problem codes (0: fine).
_OK, _SYNTAX, _NOT_NUMBER, _NOT_FINITE, _NO_DEFAULT, _NOT_INTEGER, _LABEL_MISSING, _NOT_BINARY, _MULTI = range(9)
_REASONS = [
    "",
    "",
    "cannot parse '{}' as a number",
    "'{}' is not a finite number",
    "missing value, and the feature has no `default` in the spec",
    "'{}' is not an integer id",
    "missing label",
    "a binary label must be 0 or 1, received '{}'",
    "expected one value, received {}",
]
_SHOWS_VALUE = [False, False, True, True, False, True, False, True, True]

# Decimal numbers only: a subset of what tf.strings.to_number accepts (it also takes hex and "inf").
_NUMBER = r"\s*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*"
_NAN = r"\s*(?i:nan)\s*"
_INTEGER = r"\s*[-+]?[0-9]{1,18}\s*"
# What the fast path decodes with typed defaults (tf.io.decode_csv takes all of it); anything else is
# checked cell by cell. Empty = missing.
_STRICT_NUMBER = r"(?:-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|(?i:nan))?"
_STRICT_INTEGER = r"(?:-?[0-9]{1,18})?"


class DataError(ValueError):
    """Bad data: one line naming the file, the line (or record) and the column."""


def _field_regex(delimiter):
    d = re.escape(delimiter)
    return f'(?:[^{d}"]*|"(?:[^"]|"")*")'


# ---------------------------------------------------------------------------------- sources


@dataclass
class Source:
    """A resolved list of files and how to read them (see :func:`resolve_source`)."""

    files: list
    format: str
    delimiter: str = ","
    header: Optional[list] = None
    kinds: dict = field(default_factory=dict)  # TFRecord: key -> "float" | "int64" | "bytes"
    what: str = "files"

    def column_index(self, column: str, role: str) -> int:
        if column not in self.header:
            raise ValueError(f"{self.files[0]}: line 1: no column {column!r} ({role}); "
                             f"the header has: {', '.join(self.header)}")
        return self.header.index(column)


def resolve_source(spec: Spec, split: str = "train", files: Optional[Sequence[str]] = None) -> Source:
    """The files of ``split`` (``"train"``, ``"validation"``) or the given ``files`` patterns.

    Checks what can be checked without reading the data: every pattern matches a file, one
    format, CSV headers name every column of the spec, TFRecord value kinds of the first records.
    """
    if files is not None:
        patterns, what = list(files), "data files"
        if isinstance(files, str):
            patterns = [files]
    elif split == "validation" and spec.data.validation:
        patterns, what = spec.data.validation, "[data] validation"
    elif split in ("train", "validation"):
        if split == "validation" and spec.data.validation_fraction == 0:
            raise ValueError(f"{spec.source}: [data]: no validation data (no `validation` files and "
                             "validation_fraction = 0)")
        patterns, what = spec.data.train, "[data] train"
    else:
        raise ValueError(f"`split` must be 'train' or 'validation', received: split={split!r}")
    paths = _files.resolve_patterns(patterns, spec.base_dir, what=f"{spec.source}: {what}")
    fmt = _files.files_format(paths, spec.data.format, what=f"{spec.source}: {what}")
    source = Source(paths, fmt, spec.data.delimiter, what=what)
    if fmt == "csv":
        source.header = _files.common_header(paths, spec.data.delimiter)
    else:
        source.kinds = _probe_kinds(spec, paths)
    return source


def _expected_kind(feature):
    if feature.type == "numeric":
        return "float"
    if feature.type == "categorical" and feature.dtype == "int64":
        return "int64"
    return "bytes"


def _probe_kinds(spec, paths, extra_columns=()):
    """Value kinds of the spec's keys in the first records; a feature of the wrong kind is an error."""
    seen = {}
    for path in paths[:4]:
        dataset = tf.data.TFRecordDataset(path, compression_type=_files.compression_type(path)).take(PROBE_RECORDS)
        try:
            for number, record in enumerate(dataset.as_numpy_iterator(), start=1):
                example = tf.train.Example.FromString(record)
                for key, value in example.features.feature.items():
                    kind = value.WhichOneof("kind")
                    if kind is not None:
                        seen.setdefault(key, (kind.replace("_list", ""), path, number))
        except (tf.errors.OpError, ValueError) as error:
            raise DataError(f"{path}: cannot read tf.train.Example records: {_op_message(error)}") from None
    for feature in spec.features:
        if feature.key in seen:
            kind, path, number = seen[feature.key]
            expected = _expected_kind(feature)
            if kind != expected:
                hint = ' (set dtype = "int64" for integer ids)' if feature.type == "categorical" and kind == "int64" else ""
                raise DataError(f"{path}: record {number}: feature {feature.key!r} ({feature.type}) must be a "
                                f"{expected}_list, received a {kind}_list{hint}")
    kinds = {}
    for task in spec.tasks:
        kind = seen.get(task.label, ("float",))[0]
        if kind == "bytes":
            _, path, number = seen[task.label]
            raise DataError(f"{path}: record {number}: feature {task.label!r} (label of task {task.name!r}) "
                            "must be a float_list or an int64_list, received a bytes_list")
        kinds[task.label] = kind
    return kinds


# ---------------------------------------------------------------------------------- parsing


class _Checks:
    """Collects per-row problem codes, received values and descriptions of the checked items.

    A block's received values may be given as a function returning them: it is called only for a
    batch holding a bad row (formatting every number of every batch as text for the messages
    took 40% of the TFRecord parse)."""

    def __init__(self):
        self.codes, self.values, self.names = [], [], []

    def add(self, name, code, value):
        self.add_block([name], tf.reshape(code, [-1, 1]), tf.reshape(value, [-1, 1]))

    def add_block(self, names, codes, values):
        """Several items at once: ``codes`` and ``values`` (strings, or a function returning them)
        of shape (batch, len(names))."""
        self.names.extend(names)
        self.codes.append(tf.cast(codes, tf.int32))
        self.values.append(values)

    def tensors(self):
        """``(codes, values)``: the codes of shape (batch, items), and a function returning the
        values of the same shape."""
        parts = list(self.values)
        return tf.concat(self.codes, axis=1), lambda: tf.concat([v() if callable(v) else v for v in parts], axis=1)


def _first_and_count(ragged, default):
    """Each row's first value (``default`` for an empty row) and its number of values."""
    padded = tf.concat([ragged.flat_values, tf.cast(tf.reshape(default, [1]), ragged.dtype)], axis=0)
    count = ragged.row_lengths()
    empty = tf.size(ragged.flat_values, out_type=ragged.row_splits.dtype)
    return tf.gather(padded, tf.where(count > 0, ragged.row_splits[:-1], empty)), count


def _number_checks(text):
    """(value float32 with NaN for missing, missing, code) of a batch of number strings."""
    missing = tf.logical_or(tf.equal(tf.strings.length(tf.strings.strip(text)), 0),
                            tf.strings.regex_full_match(text, _NAN))
    ok = tf.strings.regex_full_match(text, _NUMBER)
    value = tf.strings.to_number(tf.where(ok, text, "0"), tf.float32)
    code = tf.where(missing, _OK, tf.where(ok, tf.where(tf.math.is_finite(value), _OK, _NOT_FINITE), _NOT_NUMBER))
    value = tf.where(missing | ~ok, np.float32("nan"), value)
    return value, missing, code


class _Parser:
    """The batched parse of one :class:`Source` for one spec (CSV or TFRecord)."""

    def __init__(self, spec, source, extra_columns=(), split_range=None, return_buckets=False):
        self.spec, self.source = spec, source
        self.return_buckets = return_buckets
        self.extra_columns = list(extra_columns)
        self.split_range = split_range  # (low, high) hash buckets kept, or None for all rows
        self.file_names = tf.constant(source.files)
        if source.format == "csv":
            self._setup_csv()

    # -- CSV ------------------------------------------------------------------------------
    def _setup_csv(self):
        source = self.source
        wanted = {}
        for f in self.spec.features:
            wanted.setdefault(f.key, source.column_index(f.key, f"feature {f.name!r}"))
        for t in self.spec.tasks:
            wanted.setdefault(t.label, source.column_index(t.label, f"label of task {t.name!r}"))
        for c in self.extra_columns:
            wanted.setdefault(c, source.column_index(c, "requested column"))
        self.columns = sorted(wanted, key=wanted.get)
        self.select = [wanted[c] for c in self.columns]
        n = len(source.header)
        d = re.escape(source.delimiter)
        fld = _field_regex(source.delimiter)
        self.row_regex = f"{fld}(?:{d}{fld}){{{n - 1}}}" if n > 1 else fld
        self.num_fields = n
        self.dummy = source.delimiter * (n - 1)
        # The fast path: a row matching the strict pattern (plain decimal numbers and ids, or empty)
        # is decoded with typed defaults, no per-cell checks; a batch with any other row, or with a
        # problem, takes the checked path (:meth:`_checked_csv`).
        kinds = {}
        for f in self.spec.features:
            kind = "number" if f.type == "numeric" else ("integer" if f.dtype == "int64" and f.type == "categorical"
                                                          else "text")
            kinds.setdefault(f.key, set()).add(kind)
        for t in self.spec.tasks:
            kinds.setdefault(t.label, set()).add("number")
        for c in self.extra_columns:
            kinds.setdefault(c, set()).add("text")
        self.fast = all(len(k) == 1 for k in kinds.values())
        if self.fast:
            kinds = {k: next(iter(v)) for k, v in kinds.items()}
            patterns = {"number": _STRICT_NUMBER, "integer": _STRICT_INTEGER}
            fields = [patterns.get(kinds.get(c), fld) for c in source.header]
            fields = [f if f == fld else f'(?:{f}|"{f}")' for f in fields]
            self.strict_regex = d.join(fields)
            defaults = {"number": tf.constant([np.nan], tf.float32), "integer": tf.constant([MISSING_ID], tf.int64)}
            self.typed_defaults = [defaults.get(kinds.get(c), tf.constant([""])) for c in self.columns]

    def _describe(self, key, role):
        where = "column" if self.source.format == "csv" else "feature"
        return f"{where} {key!r}" + (f" ({role})" if role else "") + ": "

    def _raw_csv(self, lines):
        syntax_ok = tf.strings.regex_full_match(lines, self.row_regex)
        safe = tf.where(syntax_ok, lines, self.dummy)
        cells = tf.io.decode_csv(safe, [[""]] * len(self.columns), field_delim=self.source.delimiter,
                                 select_cols=self.select)
        return syntax_ok, dict(zip(self.columns, cells))

    def _csv_batch(self, lines):
        """``(features, labels, extras, names, codes, values, syntax_ok)`` of a batch of lines."""
        names = []

        def checked_path():
            features, labels, extras, checks, syntax_ok = self._checked_csv(lines)
            names[:] = checks.names
            codes, values = checks.tensors()
            return features, labels, extras, codes, values(), syntax_ok

        if not self.fast:
            return self._with_names(checked_path(), names)
        matched = tf.strings.regex_full_match(lines, self.strict_regex)
        strict = matched | tf.equal(tf.strings.length(lines), 0)  # blank lines are dropped later
        cells = dict(zip(self.columns, tf.io.decode_csv(
            tf.where(matched, lines, self.dummy), self.typed_defaults, field_delim=self.source.delimiter,
            select_cols=self.select)))
        numeric = [f for f in self.spec.features if f.type == "numeric"]
        value = tf.stack([cells[f.key] for f in numeric] + [cells[t.label] for t in self.spec.tasks], axis=1)
        missing = tf.math.is_nan(value)
        no_default = np.array([f.default is None for f in numeric] + [True] * len(self.spec.tasks))
        binary = np.array([False] * len(numeric) + [t.type == "binary" for t in self.spec.tasks])
        problem = (missing & no_default) | tf.math.is_inf(value)
        problem |= binary & ~missing & ~(tf.equal(value, 0.0) | tf.equal(value, 1.0))
        clean = tf.reduce_all(strict) & ~tf.reduce_any(problem)
        items = len(numeric) + len(self.spec.tasks) + sum(
            1 for f in self.spec.features if f.type == "categorical" and f.dtype == "int64")

        def fast_path():
            features = {}
            for j, f in enumerate(numeric):
                features[f.name] = value[:, j:j + 1]
            for f in self.spec.features:
                if f.type != "numeric":
                    features[f.name] = cells[f.key][:, None]
            features = {f.name: features[f.name] for f in self.spec.features}
            labels = {t.name: value[:, len(numeric) + j:len(numeric) + j + 1] for j, t in enumerate(self.spec.tasks)}
            extras = {c: cells[c] for c in self.extra_columns}
            batch = tf.shape(lines)[0]
            return (features, labels, extras, tf.zeros([batch, items], tf.int32), tf.fill([batch, items], ""),
                    tf.ones_like(strict))

        return self._with_names(tf.cond(clean, fast_path, checked_path), names)

    @staticmethod
    def _with_names(result, names):
        features, labels, extras, codes, values, syntax_ok = result
        return features, labels, extras, names, codes, values, syntax_ok

    def _checked_csv(self, lines):
        syntax_ok, cells = self._raw_csv(lines)
        checks = _Checks()
        features, labels = {}, {}
        # Every number (numeric features, then labels) is checked at once, as one (batch, k) block.
        numeric = [f for f in self.spec.features if f.type == "numeric"]
        keys = [f.key for f in numeric] + [t.label for t in self.spec.tasks]
        text = tf.stack([cells[k] for k in keys], axis=1)
        value, missing, code = _number_checks(text)
        is_feature = np.array([True] * len(numeric) + [False] * len(self.spec.tasks))
        no_default = np.array([f.default is None for f in numeric] + [False] * len(self.spec.tasks))
        binary = np.array([False] * len(numeric) + [t.type == "binary" for t in self.spec.tasks])
        code = tf.where(missing & no_default, _NO_DEFAULT, code)
        code = tf.where(missing & ~is_feature, _LABEL_MISSING, code)
        not_binary = ~(tf.equal(value, 0.0) | tf.equal(value, 1.0))
        code = tf.where(tf.equal(code, _OK) & binary & not_binary, _NOT_BINARY, code)
        names = [self._describe(f.key, "" if f.key == f.name else f"feature {f.name!r}") for f in numeric]
        names += [self._describe(t.label, f"label of task {t.name!r}") for t in self.spec.tasks]
        checks.add_block(names, code, text)
        for j, f in enumerate(numeric):
            features[f.name] = value[:, j:j + 1]
        for j, t in enumerate(self.spec.tasks):
            labels[t.name] = value[:, len(numeric) + j:len(numeric) + j + 1]
        for f in self.spec.features:
            text = cells[f.key]
            if f.type == "categorical" and f.dtype == "int64":
                role = "" if f.key == f.name else f"feature {f.name!r}"
                missing = tf.equal(tf.strings.length(tf.strings.strip(text)), 0)
                ok = tf.strings.regex_full_match(text, _INTEGER)
                value = tf.strings.to_number(tf.where(ok, tf.strings.strip(text), "0"), tf.int64)
                checks.add(self._describe(f.key, role), tf.where(missing | ok, _OK, _NOT_INTEGER), text)
                features[f.name] = tf.where(missing | ~ok, tf.constant(MISSING_ID, tf.int64), value)[:, None]
            elif f.type != "numeric":
                features[f.name] = text[:, None]
        features = {f.name: features[f.name] for f in self.spec.features}
        extras = {c: cells[c] for c in self.extra_columns}
        return features, labels, extras, checks, syntax_ok

    @staticmethod
    def _label_code(task, value, missing, code):
        code = tf.where(missing, _LABEL_MISSING, code)
        if task.type == "binary":
            binary = tf.logical_or(tf.equal(value, 0.0), tf.equal(value, 1.0))
            code = tf.where(tf.equal(code, _OK) & ~binary, _NOT_BINARY, code)
        return code

    # -- TFRecord -------------------------------------------------------------------------
    def _tfrecord_batch(self, records):
        kinds = {"float": tf.float32, "int64": tf.int64, "bytes": tf.string}
        spec = {}
        for f in self.spec.features:
            spec[f.key] = tf.io.RaggedFeature(kinds[_expected_kind(f)])
        for t in self.spec.tasks:
            spec.setdefault(t.label, tf.io.RaggedFeature(kinds[self.source.kinds.get(t.label, "float")]))
        for c in self.extra_columns:
            spec.setdefault(c, tf.io.RaggedFeature(tf.string))
        # Ragged (not sparse) values: each row's count and first value come from the row splits at the
        # cost of a gather; a feature with several values is one bad row, not a failed batch.
        parsed = tf.io.parse_example(records, spec)
        checks = _Checks()
        features, labels = {}, {}
        # Numbers (numeric features, then labels) are checked at once as one (batch, k) block, and
        # the value counts of single-valued categories as another.
        numeric = [f for f in self.spec.features if f.type == "numeric"]
        firsts, counts = [], []
        for f in numeric:
            first, count = _first_and_count(parsed[f.key], np.float32("nan"))
            firsts.append(first)
            counts.append(count)
        for t in self.spec.tasks:
            first, count = _first_and_count(parsed[t.label], 0)
            firsts.append(tf.where(count > 0, tf.cast(first, tf.float32), np.float32("nan")))
            counts.append(count)
        value, count = tf.stack(firsts, axis=1), tf.stack(counts, axis=1)
        missing = tf.math.is_nan(value)
        is_feature = np.array([True] * len(numeric) + [False] * len(self.spec.tasks))
        no_default = np.array([f.default is None for f in numeric] + [False] * len(self.spec.tasks))
        binary = np.array([False] * len(numeric) + [t.type == "binary" for t in self.spec.tasks])
        code = tf.where(missing | tf.math.is_finite(value), _OK, _NOT_FINITE)
        code = tf.where(missing & no_default, _NO_DEFAULT, code)
        code = tf.where(missing & ~is_feature, _LABEL_MISSING, code)
        not_binary = ~(tf.equal(value, 0.0) | tf.equal(value, 1.0))
        code = tf.where(tf.equal(code, _OK) & binary & not_binary, _NOT_BINARY, code)
        code = tf.where(count > 1, _MULTI, code)

        def shown(count=count, value=value):  # bound now: `count` is reused below
            return tf.where(count > 1, tf.strings.as_string(count), tf.strings.as_string(value))

        names = [self._describe(f.key, "" if f.key == f.name else f"feature {f.name!r}") for f in numeric]
        names += [self._describe(t.label, f"label of task {t.name!r}") for t in self.spec.tasks]
        checks.add_block(names, code, shown)
        for j, f in enumerate(numeric):
            features[f.name] = value[:, j:j + 1]
        for j, t in enumerate(self.spec.tasks):
            labels[t.name] = value[:, len(numeric) + j:len(numeric) + j + 1]
        single = [f for f in self.spec.features if f.type == "categorical"]
        counts = []
        for f in single:
            first, n = _first_and_count(parsed[f.key], MISSING_ID if f.dtype == "int64" else "")
            features[f.name] = first[:, None]
            counts.append(n)
        if single:
            count = tf.stack(counts, axis=1)
            names = [self._describe(f.key, "" if f.key == f.name else f"feature {f.name!r}") for f in single]
            checks.add_block(names, tf.where(count > 1, _MULTI, _OK), lambda count=count: tf.strings.as_string(count))
        for f in self.spec.features:
            if f.type == "multi_categorical":
                features[f.name] = tf.strings.reduce_join(parsed[f.key], axis=1, separator=f.separator)[:, None]
        features = {f.name: features[f.name] for f in self.spec.features}
        extras = {c: tf.strings.reduce_join(parsed[c], axis=1, separator=" ") for c in self.extra_columns}
        return features, labels, extras, checks, tf.ones_like(records, tf.bool)

    # -- both -----------------------------------------------------------------------------
    def __call__(self, position, records):
        """Parses one batch; returns a dict of the kept rows and the problems found."""
        bucket = None
        if self.split_range is not None or self.return_buckets:
            bucket = tf.strings.to_hash_bucket_fast(records, HASH_BUCKETS)
        if self.split_range is not None:  # the other split's rows are dropped before parsing
            low, high = self.split_range
            in_split = tf.where((bucket >= low) & (bucket < high))[:, 0]
            position, records = tf.gather(position, in_split), tf.gather(records, in_split)
        if self.source.format == "csv":
            features, labels, extras, names, codes, values, syntax_ok = self._csv_batch(records)
            blank = tf.equal(tf.strings.length(records), 0)
        else:
            features, labels, extras, checks, syntax_ok = self._tfrecord_batch(records)
            names = checks.names
            codes, values = checks.tensors()
            blank = tf.zeros_like(syntax_ok)
        has_problem = tf.reduce_any(tf.not_equal(codes, _OK), axis=1)
        bad = ~blank & (~syntax_ok | has_problem)
        keep = ~blank & ~bad
        messages = tf.cond(
            tf.reduce_any(bad),
            lambda: self._messages(bad, syntax_ok, codes, values, names, position, records),
            lambda: tf.zeros([0], tf.string))
        out = {"features": features, "labels": labels, "extras": extras}
        if self.return_buckets:
            out["buckets"] = bucket
        # Rows are dropped (one gather per tensor) only in the batches that hold bad or blank rows.
        flat = tf.nest.flatten(out)
        flat = tf.cond(tf.reduce_all(keep), lambda: flat,
                       lambda: [tf.gather(t, tf.where(keep)[:, 0]) for t in flat])
        out = tf.nest.pack_sequence_as(out, flat)
        out["messages"] = messages
        return out

    def _messages(self, bad, syntax_ok, codes, values, names, position, records):
        """One line per bad row: ``FILE: line N: column 'C': problem (received ...)``."""
        codes = tf.boolean_mask(codes, bad)
        first_item = tf.argmax(tf.cast(tf.not_equal(codes, _OK), tf.int32), axis=1, output_type=tf.int32)
        code = tf.gather(codes, first_item, batch_dims=1)
        values = values() if callable(values) else values
        values = tf.gather(tf.boolean_mask(values, bad), first_item, batch_dims=1)
        values = tf.strings.substr(values, 0, 80)
        unit = "line" if self.source.format == "csv" else "record"
        position = tf.boolean_mask(position, bad)
        prefix = tf.strings.join([tf.gather(self.file_names, position // POSITION_BASE), f": {unit} ",
                                  tf.strings.as_string(position % POSITION_BASE), ": "])
        reason_parts = [tf.constant([r.split("{}")[0] for r in _REASONS]), tf.constant(
            [r.split("{}")[1] if "{}" in r else "" for r in _REASONS])]
        shown = tf.where(tf.gather(_SHOWS_VALUE, code), values, "")
        item = tf.strings.join([tf.gather(names, first_item), tf.gather(reason_parts[0], code), shown,
                                tf.gather(reason_parts[1], code)])
        if self.source.format == "csv":
            lines = tf.boolean_mask(records, bad)
            unquoted = tf.strings.regex_replace(lines, '"(?:[^"]|"")*"', "")
            delim = re.escape(self.source.delimiter)
            found = tf.strings.length(unquoted) - tf.strings.length(tf.strings.regex_replace(unquoted, delim, "")) + 1
            syntax = tf.where(
                tf.equal(found, self.num_fields),
                "malformed quotes (a quote inside an unquoted field, or an unclosed quote)",
                tf.strings.join([f"expected {self.num_fields} fields (the header's), found ",
                                 tf.strings.as_string(found)]))
            item = tf.where(tf.boolean_mask(syntax_ok, bad), item, syntax)
        return tf.strings.join([prefix, item])


# ---------------------------------------------------------------------------------- datasets


def _shards(input_context, num_shards, shard_index):
    if input_context is not None:
        return input_context.num_input_pipelines, input_context.input_pipeline_id
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"`num_shards` must be a positive integer, received: num_shards={num_shards!r}")
    if isinstance(shard_index, bool) or not isinstance(shard_index, int) or not 0 <= shard_index < num_shards:
        raise ValueError(f"`shard_index` must be an integer in [0, {num_shards}), received: shard_index={shard_index!r}")
    return num_shards, shard_index


def _records(source, shuffle, seed, num_shards, shard_index):
    """Blocks (of up to READ_BLOCK rows) of ``(position, text)`` of every data row of ``source``,
    interleaved by file; a position is ``file index * POSITION_BASE + line (or record) number``."""
    n = len(source.files)
    files = tf.data.Dataset.from_tensor_slices((
        tf.range(n, dtype=tf.int32), source.files, [_files.compression_type(p) for p in source.files]))
    by_data = num_shards > 1 and n < num_shards
    if num_shards > 1 and not by_data:
        files = files.shard(num_shards, shard_index)
        n = len(range(shard_index, len(source.files), num_shards))
    if shuffle and not by_data and n > 1:
        files = files.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    csv = source.format == "csv"

    def one_file(index, path, compression):
        if csv:
            rows, start = tf.data.TextLineDataset(path, compression_type=compression, buffer_size=1 << 20).skip(1), 2
        else:
            rows, start = tf.data.TFRecordDataset(path, compression_type=compression, buffer_size=1 << 20), 1
        first = tf.cast(index, tf.int64) * POSITION_BASE + start

        def positions(block, texts):  # one int64 per row: file index and line number
            return first + block * READ_BLOCK + tf.range(tf.shape(texts, out_type=tf.int64)[0]), texts

        # Files are read in blocks of rows: the interleave's threads hand over blocks, not rows,
        # which took 40% less CPU than row by row on the benchmark table.
        return rows.batch(READ_BLOCK).enumerate().map(positions)

    blocks = files.interleave(one_file, cycle_length=max(1, min(n, CYCLE_LENGTH)),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if by_data:
        blocks = blocks.unbatch().shard(num_shards, shard_index).batch(READ_BLOCK)
    return blocks


def _shuffle_windows(blocks, window, seed):
    """Rows in windows of ``window`` consecutive rows (as read), each window randomly permuted.

    The bounded shuffle: one permutation and one gather per window instead of a shuffle buffer
    handling rows one by one (which took over a quarter of the pipeline's CPU on the benchmark table).
    Each pass over the data draws new permutations; the sequence is fixed by ``seed``."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True)

    def permute(rows, pair):
        position, texts = rows
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(texts)[0]), seed=pair)
        return tf.gather(position, order), tf.gather(texts, order)

    windows = tf.data.Dataset.zip((blocks.rebatch(window), seeds))
    return windows.map(permute, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _split_range(spec, split, files):
    fraction = spec.data.validation_fraction
    if files is not None or fraction == 0 or (split == "validation" and spec.data.validation):
        return None
    cut = int(round(fraction * HASH_BUCKETS))
    return (cut, HASH_BUCKETS) if split == "train" else (0, cut)


def parsed_batches(
    spec: Spec,
    split: str = "train",
    *,
    files: Optional[Sequence[str]] = None,
    batch_size: int = 1024,
    shuffle: bool = False,
    seed: Optional[int] = None,
    extra_columns: Sequence[str] = (),
    num_shards: int = 1,
    shard_index: int = 0,
    source: Optional[Source] = None,
    return_buckets: bool = False,
) -> tf.data.Dataset:
    """Batches of ``{"features", "labels", "extras", "messages"}``: the kept rows of the split, plus
    one message per bad row (the statistics pass and :func:`make_dataset` build on it).

    ``return_buckets=True`` keeps the rows of both splits of the train files and adds
    ``"buckets"``, each row's hash bucket (the validation split is ``bucket < fraction * HASH_BUCKETS``).
    """
    source = source or resolve_source(spec, split, files)
    split_range = None if return_buckets else _split_range(spec, split, files)
    parser = _Parser(spec, source, extra_columns, split_range, return_buckets)
    rows = _records(source, shuffle, seed, num_shards, shard_index)
    if shuffle:
        rows = _shuffle_windows(rows, spec.data.shuffle_buffer, seed)
    return rows.rebatch(batch_size).map(parser, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _limit_bad_rows(batches, max_bad_rows, what):
    """Fails the pass at the (max_bad_rows + 1)-th bad row; drops the messages."""

    def count(total, element):
        messages = element["messages"]
        # The row that goes over the limit: the (max_bad_rows - total + 1)-th bad row of this batch.
        over = tf.maximum(max_bad_rows - total, 0)
        last = tf.strings.reduce_join(messages[over:over + 1])
        total = total + tf.size(messages, out_type=tf.int64)
        if max_bad_rows == 0:
            text = tf.strings.join([_MARK, last, _MARK])
        else:
            text = tf.strings.join([_MARK, f"more than max_bad_rows={max_bad_rows} malformed rows in {what}; "
                                           "the last: ", last, _MARK])
        check = tf.debugging.Assert(total <= max_bad_rows, [text])
        with tf.control_dependencies([check]):
            out = tf.nest.map_structure(tf.identity, (element["features"], element["labels"]))
        return total, out

    return batches.scan(tf.constant(0, tf.int64), count)


def make_dataset(
    spec: SpecLike,
    split: str = "train",
    *,
    files: Optional[Sequence[str]] = None,
    batch_size: Optional[int] = None,
    shuffle: Optional[bool] = None,
    seed: Optional[int] = None,
    max_bad_rows: Optional[int] = None,
    input_context: Optional[tf.distribute.InputContext] = None,
    num_shards: int = 1,
    shard_index: int = 0,
) -> tf.data.Dataset:
    """The streaming ``(features, labels)`` dataset of a split of the spec's files.

    Args:
        spec: a :class:`~keras_mmoe.data.Spec` or what :func:`~keras_mmoe.data.load_spec` takes.
        split: ``"train"`` or ``"validation"`` (the spec's validation files, or the
            ``validation_fraction`` of the train rows chosen by a hash of the row: every row
            always lands in the same split).
        files: other file patterns to read in full instead (e.g. for evaluation); ``split`` is ignored.
        batch_size: rows per batch (default: the spec's ``[train] batch_size``; with
            ``input_context``, that global size divided among the replicas).
        shuffle: shuffle file order and rows (bounded: each window of ``[data] shuffle_buffer``
            consecutive rows, as read, is randomly permuted); default True for ``"train"``,
            False otherwise.
        seed: shuffle seed (default: ``[train] seed``).
        max_bad_rows: skip up to this many bad rows per pass over the data, fail beyond with
            :class:`DataError`-style message (default: ``[data] max_bad_rows``; 0 fails at the first).
        input_context: a ``tf.distribute.InputContext`` (``strategy.distribute_datasets_from_function``):
            this worker reads its shard; sets ``num_shards`` / ``shard_index``.
        num_shards, shard_index: read only shard ``shard_index`` of ``num_shards``: whole files
            when there are at least as many files as shards, else every ``num_shards``-th row.

    Returns:
        A ``tf.data.Dataset`` of ``(features, labels)``: dicts of ``(batch, 1)`` tensors keyed by
        feature name and task name. Bad rows raise ``tf.errors.InvalidArgumentError`` while iterating;
        :func:`data_errors` turns it into a one-line :class:`DataError`.
    """
    spec = load_spec(spec)
    num_shards, shard_index = _shards(input_context, num_shards, shard_index)
    if batch_size is None:
        batch_size = spec.train.batch_size
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, received: batch_size={batch_size!r}")
    shuffle = (split == "train" and files is None) if shuffle is None else shuffle
    seed = spec.train.seed if seed is None else seed
    max_bad_rows = spec.data.max_bad_rows if max_bad_rows is None else max_bad_rows
    source = resolve_source(spec, split, files)
    batches = parsed_batches(spec, split, files=files, batch_size=max(batch_size, PARSE_ROWS), shuffle=shuffle,
                             seed=seed, num_shards=num_shards, shard_index=shard_index, source=source)
    what = source.what if files is None else "the data files"
    return _limit_bad_rows(batches, max_bad_rows, what).rebatch(batch_size).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------- errors


def _op_message(error):
    return getattr(error, "message", None) or str(error)


def extract_data_error(error: BaseException) -> Optional[str]:
    """The one-line data error carried by a ``tf.errors.InvalidArgumentError``, if it is one."""
    text = _op_message(error)
    start = text.find(_MARK)
    if start < 0:
        return None
    end = text.find(_MARK, start + len(_MARK))
    message = text[start + len(_MARK): end if end > 0 else None]
    return message.replace("\\'", "'").replace('\\"', '"').replace("\\\\", "\\")


def diagnose_tfrecord(spec: Spec, source: Source) -> Optional[str]:
    """Finds the first record whose feature kind or length the batched parse cannot take
    (a message naming file, record and feature), or a file that cannot be read."""
    expected = {f.key: (_expected_kind(f), f) for f in spec.features}
    for path in source.files:
        dataset = tf.data.TFRecordDataset(path, compression_type=_files.compression_type(path))
        number = 0
        try:
            for number, record in enumerate(dataset.as_numpy_iterator(), start=1):
                example = tf.train.Example.FromString(record)
                for key, value in example.features.feature.items():
                    kind = (value.WhichOneof("kind") or "").replace("_list", "")
                    if key in expected and kind and kind != expected[key][0]:
                        return (f"{path}: record {number}: feature {key!r} ({expected[key][1].type}) must be a "
                                f"{expected[key][0]}_list, received a {kind}_list")
                    if key in source.kinds and kind and kind not in ("float", "int64"):
                        return f"{path}: record {number}: label feature {key!r} must be a float_list or an int64_list, received a {kind}_list"
                    if key in source.kinds and kind and kind != source.kinds[key]:
                        return (f"{path}: record {number}: label feature {key!r} is a {kind}_list here but a "
                                f"{source.kinds[key]}_list in the first records; use one kind in every record")
        except (tf.errors.OpError, ValueError) as error:
            return f"{path}: record {number + 1}: cannot read the record ({_op_message(error).splitlines()[0]})"
    return None


def translate_error(error: BaseException, spec: Spec, source: Optional[Source] = None) -> Optional[DataError]:
    """A :class:`DataError` for an error raised while iterating a dataset of ``spec``, or None."""
    if not isinstance(error, tf.errors.OpError):
        return None
    message = extract_data_error(error)
    if message is not None:
        return DataError(message)
    if source is not None and source.format == "tfrecord":
        found = diagnose_tfrecord(spec, source)
        if found:
            return DataError(found)
    if isinstance(error, tf.errors.DataLossError) and source is not None:
        for path in source.files:
            try:
                for _ in tf.data.TextLineDataset(path, compression_type=_files.compression_type(path)).batch(4096):
                    pass
            except tf.errors.OpError as inner:
                return DataError(f"{path}: the file is corrupted or truncated ({_op_message(inner).splitlines()[0]})")
    return None


class data_errors:
    """Context manager: errors raised by a spec's pipeline while iterating become one-line DataErrors.

    >>> with data_errors(spec):
    ...     model.fit(make_dataset(spec, "train"), epochs=1)
    """

    def __init__(self, spec: SpecLike, source: Optional[Source] = None) -> None:
        self.spec, self.source = load_spec(spec), source

    def __enter__(self) -> "data_errors":
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Any) -> bool:
        if exc is None or not isinstance(exc, tf.errors.OpError):
            return False
        sources = [self.source] if self.source is not None else []
        if not sources and extract_data_error(exc) is None:
            for split in ("train", "validation") if self.spec.data.validation else ("train",):
                try:
                    sources.append(resolve_source(self.spec, split))
                except (ValueError, OSError):
                    pass
        for source in sources or [None]:
            translated = translate_error(exc, self.spec, source)
            if translated is not None:
                raise translated from None
        return False
