"""One streaming pass over the train files: vocabularies, means and variances, missing rates, rows.

:func:`compute_statistics` reads the train split once with the same batched parse as
:func:`~keras_mmoe.data.make_dataset` (so it sees exactly the values the model will), and keeps
only running sums and per-value counts: memory grows with the number of distinct categories,
never with the number of rows. The result, a :class:`Statistics`, is what
:func:`keras_mmoe.features.build_preprocessing` builds the model's preprocessing layers from.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_mmoe.data import files as _files
from keras_mmoe.data.pipeline import HASH_BUCKETS, MISSING_ID, DataError, Source, parsed_batches, resolve_source
from keras_mmoe.data.pipeline import translate_error
from keras_mmoe.data.spec import Spec, SpecLike, load_spec
from keras_mmoe.features.split_tokens import split_tokens

#: Rows per batch of the statistics pass.
STATISTICS_BATCH_SIZE = 8192
#: Bad-row messages kept for the report.
KEPT_MESSAGES = 5


@dataclass
class FeatureStatistics:
    """What the train rows say about one feature."""

    name: str
    type: str
    count: int = 0  # rows with a value
    missing: int = 0  # rows without (empty cell, NaN, absent feature; for multi_categorical: no token)
    mean: Optional[float] = None  # numeric, over the present values
    variance: Optional[float] = None  # numeric, population variance of the present values
    vocabulary: Optional[list] = None  # categorical: kept values, most frequent first (None with hash_bins)
    distinct: Optional[int] = None  # distinct values (tokens) seen, before min_count / max_tokens
    tokens: int = 0  # multi_categorical: tokens in all rows

    @property
    def missing_rate(self) -> float:
        total = self.count + self.missing
        return self.missing / total if total else 0.0


@dataclass
class LabelStatistics:
    """What the train rows say about one task's label."""

    task: str
    type: str
    count: int = 0
    mean: float = 0.0
    variance: float = 0.0


@dataclass
class Statistics:
    """The result of :func:`compute_statistics` (JSON-serializable with :meth:`to_dict`)."""

    rows: int = 0
    bad_rows: int = 0
    validation_rows: int = 0
    validation_bad_rows: int = 0
    train_files: list = field(default_factory=list)
    validation_files: list = field(default_factory=list)
    features: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    bad_row_messages: list = field(default_factory=list)

    def vocabulary_size(self, spec: Spec, name: str) -> Optional[int]:
        """Indices of the feature's lookup, the OOV index included (None for numbers)."""
        feature = spec.feature(name)
        if feature.type == "numeric":
            return None
        if feature.hash_bins is not None:
            return feature.hash_bins + 1
        return len(self.features[name].vocabulary) + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Statistics":
        data = dict(data)
        data["features"] = {k: FeatureStatistics(**v) for k, v in data.get("features", {}).items()}
        data["labels"] = {k: LabelStatistics(**v) for k, v in data.get("labels", {}).items()}
        return cls(**data)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path: str) -> "Statistics":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


class _Moments:
    """Running count, mean and sum of squared deviations (Chan et al.'s pairwise update), float64."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values):
        values = np.asarray(values, np.float64).ravel()
        n_b = values.size
        if n_b == 0:
            return
        mean_b = float(values.mean())
        m2_b = float(np.square(values - mean_b).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    @property
    def variance(self):
        return self.m2 / self.n if self.n else 0.0


def _vocabulary(feature, counts, base_dir_resolver):
    """The kept vocabulary: the file's, or the learned one (min_count, then max_tokens; most frequent first)."""
    if feature.vocabulary_file is not None:
        return _files.read_vocabulary_file(base_dir_resolver(feature.vocabulary_file), feature.dtype)
    if feature.dtype == "int64":
        items = [(int(v), c) for v, c in counts.items() if v != MISSING_ID]
    else:
        items = [(v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v, c)
                 for v, c in counts.items() if v not in (b"", "")]
    items = [(v, c) for v, c in items if c >= feature.min_count]
    items.sort(key=lambda item: (-item[1], item[0]))
    if feature.max_tokens is not None:
        items = items[: feature.max_tokens - 1]
    return [v for v, _ in items]


@contextlib.contextmanager
def _gzip_checked(paths):
    """Verifies the gzip files of ``paths`` in a thread while the body runs (zlib releases the GIL);
    a truncated or corrupted file raises :class:`DataError`, before any error of the body."""
    gz = [p for p in paths if _files.is_gzip(p)]
    if not gz:
        yield
        return

    def verify():
        for path in gz:
            _files.verify_gzip(path)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(verify)
        try:
            yield
        except BaseException:
            _raise_gzip_error(future)
            raise
        _raise_gzip_error(future)


def _raise_gzip_error(future):
    try:
        future.result()
    except ValueError as error:
        raise DataError(str(error)) from None


def _token_map(spec):
    """A dataset map adding the split tokens of learned multi_categorical features (in TensorFlow)."""
    multi = [f for f in spec.features if f.type == "multi_categorical"]

    def add_tokens(element):
        element = dict(element)
        tokens = {}
        for f in multi:
            ragged = split_tokens(element["features"][f.name], f.separator)
            tokens[f.name] = ragged.flat_values
            tokens[f"{f.name}/rows"] = ragged.row_lengths()
        element["tokens"] = tokens
        return element

    return add_tokens


class _Accumulator:
    """Running sums and counts of the statistics pass; ``add`` takes one parsed batch (NumPy)."""

    def __init__(self, spec, stats, count_validation):
        self.spec, self.stats, self.count_validation = spec, stats, count_validation
        self.cut = int(round(spec.data.validation_fraction * HASH_BUCKETS))
        self.moments = {f.name: _Moments() for f in spec.features if f.type == "numeric"}
        self.label_moments = {t.name: _Moments() for t in spec.tasks}
        self.counts = {f.name: collections.Counter() for f in spec.features
                       if f.type != "numeric" and f.vocabulary_source == "learned"}
        self.missing, self.present, self.tokens = collections.Counter(), collections.Counter(), collections.Counter()
        self.bad = 0

    def add_bad(self, messages, limit, what):
        stats = self.stats
        self.bad += len(messages)
        for m in messages[: max(0, KEPT_MESSAGES - len(stats.bad_row_messages))]:
            stats.bad_row_messages.append(m.decode("utf-8", errors="replace"))
        if self.bad > limit:
            first = stats.bad_row_messages[0]
            if limit == 0:
                raise DataError(first)
            raise DataError(f"more than max_bad_rows={limit} malformed rows in {what} ({self.bad} so far); "
                            f"the first: {first}")

    def add(self, batch):
        train = batch["buckets"] >= self.cut
        if self.count_validation:
            self.stats.validation_rows += int((~train).sum())
        self.stats.rows += int(train.sum())
        for f in self.spec.features:
            values = batch["features"][f.name][train].ravel()
            if f.type == "numeric":
                is_missing = np.isnan(values)
                self.moments[f.name].add(values[~is_missing])
                n_missing = int(is_missing.sum())
            elif f.type == "multi_categorical":
                rows = batch["tokens"][f"{f.name}/rows"]
                tokens = batch["tokens"][f.name][np.repeat(train, rows)]
                self.tokens[f.name] += tokens.size
                n_missing = int((rows[train] == 0).sum())
                if f.name in self.counts:
                    self.counts[f.name].update(tokens.tolist())
            else:
                n_missing = int((values == MISSING_ID).sum()) if f.dtype == "int64" else int((values == b"").sum())
                if f.name in self.counts:
                    self.counts[f.name].update(values.tolist())
            self.missing[f.name] += n_missing
            self.present[f.name] += values.size - n_missing
        for t in self.spec.tasks:
            self.label_moments[t.name].add(batch["labels"][t.name][train])


def compute_statistics(
    spec: SpecLike,
    *,
    batch_size: int = STATISTICS_BATCH_SIZE,
    progress: Optional[Callable[[int], None]] = None,
) -> Statistics:
    """One streaming pass over the train files (and a row count of the validation files).

    Counts the rows of the train split, checks every row (a bad row fails the pass, or is skipped
    and counted when ``[data] max_bad_rows`` allows), and computes per feature the missing count,
    mean and variance of numbers, and the vocabulary (``max_tokens``, ``min_count``;
    ``vocabulary_file`` read as given; none for ``hash_bins``), and per task the label's mean and
    variance (binary: the positive rate).

    Raises:
        DataError: a bad row (file, line, column) beyond ``max_bad_rows``, a file that cannot be read.
        FileNotFoundError: a pattern that matches no file.
    """
    spec = load_spec(spec)
    stats = Statistics()
    train_source = resolve_source(spec, "train")
    stats.train_files = list(train_source.files)
    validation_source = resolve_source(spec, "validation") if spec.data.validation else None
    if validation_source is not None:
        stats.validation_files = list(validation_source.files)
    for f in spec.features:  # fail on a missing vocabulary file before the pass
        if f.vocabulary_file is not None:
            _files.read_vocabulary_file(spec.resolve_path(f.vocabulary_file), f.dtype)

    acc = _Accumulator(spec, stats, count_validation=validation_source is None)
    dataset = parsed_batches(spec, "train", batch_size=batch_size, source=train_source, return_buckets=True)
    dataset = dataset.map(_token_map(spec), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
    try:
        with _gzip_checked(train_source.files):
            for batch in dataset.as_numpy_iterator():
                acc.add_bad(batch["messages"], spec.data.max_bad_rows, train_source.what)
                acc.add(batch)
                if progress is not None:
                    progress(stats.rows)
    except tf.errors.OpError as error:
        translated = translate_error(error, spec, train_source)
        if translated is not None:
            raise translated from None
        raise
    stats.bad_rows = acc.bad

    if validation_source is not None:
        stats.validation_rows, stats.validation_bad_rows = count_rows(spec, "validation", source=validation_source)

    for f in spec.features:
        fs = FeatureStatistics(f.name, f.type, count=acc.present[f.name], missing=acc.missing[f.name])
        if f.type == "numeric":
            m = acc.moments[f.name]
            if m.n == 0:
                raise DataError(f"{train_source.files[0]}: the train rows hold no value of the numeric feature "
                                f"{f.name!r} (column {f.key!r}); mean and variance cannot be computed")
            fs.mean, fs.variance = m.mean, m.variance
        elif f.hash_bins is None:
            fs.vocabulary = _vocabulary(f, acc.counts.get(f.name, {}), spec.resolve_path)
            if f.name in acc.counts:
                fs.distinct = sum(1 for v in acc.counts[f.name] if v not in (b"", MISSING_ID))
            if not fs.vocabulary:
                raise DataError(f"{train_source.files[0]}: the train rows hold no value of the {f.type} feature "
                                f"{f.name!r} (column {f.key!r}) seen at least min_count={f.min_count} times; "
                                "its vocabulary would be empty")
        fs.tokens = acc.tokens[f.name]
        stats.features[f.name] = fs
    for t in spec.tasks:
        m = acc.label_moments[t.name]
        stats.labels[t.name] = LabelStatistics(t.name, t.type, count=m.n, mean=m.mean, variance=m.variance)
    if stats.rows == 0:
        raise DataError(f"{train_source.what}: no data row in the train split of {len(train_source.files)} file(s) "
                        f"({train_source.files[0]}, ...)")
    return stats


def count_rows(spec: SpecLike, split: str = "validation", *, files: Optional[Sequence[str]] = None,
               source: Optional[Source] = None,
               batch_size: int = STATISTICS_BATCH_SIZE) -> tuple:
    """``(rows, bad rows)`` of a split (or of ``files``), checking every row like the statistics pass."""
    spec = load_spec(spec)
    source = source or resolve_source(spec, split, files)
    try:
        with _gzip_checked(source.files):
            return _count_pass(spec, split, files, batch_size, source, spec.data.max_bad_rows)
    except tf.errors.OpError as error:
        translated = translate_error(error, spec, source)
        if translated is not None:
            raise translated from None
        raise


def _count_pass(spec, split, files, batch_size, source, limit):
    rows = bad = 0
    first = None
    counts = parsed_batches(spec, split, files=files, batch_size=batch_size, source=source).map(
        lambda b: (tf.size(next(iter(b["labels"].values()))), b["messages"]))
    for size, messages in counts.as_numpy_iterator():
        rows += int(size)
        bad += len(messages)
        if len(messages) and first is None:
            first = messages[0].decode("utf-8", errors="replace")
        if bad > limit:
            if limit == 0:
                raise DataError(first)
            raise DataError(f"more than max_bad_rows={limit} malformed rows in {source.what} ({bad} so far); "
                            f"the first: {first}")
    return rows, bad


def describe(spec: Spec, stats: Statistics) -> list:
    """The plan's lines: files, rows, and one line per feature and task."""
    lines = [f"train: {len(stats.train_files)} file(s), {stats.rows} rows"
             + (f" ({stats.bad_rows} malformed rows skipped)" if stats.bad_rows else "")]
    if stats.validation_files:
        lines.append(f"validation: {len(stats.validation_files)} file(s), {stats.validation_rows} rows"
                     + (f" ({stats.validation_bad_rows} malformed rows skipped)" if stats.validation_bad_rows else ""))
    elif stats.validation_rows:
        lines.append(f"validation: {stats.validation_rows} rows of the train files "
                     f"(validation_fraction {spec.data.validation_fraction:g}, split by a hash of the row)")
    for f in spec.features:
        fs = stats.features[f.name]
        miss = f", {100 * fs.missing_rate:.1f}% missing" if fs.missing else ""
        if f.type == "numeric":
            rules = [r for r, on in (("default", f.default is not None), ("indicator", f.missing_indicator),
                                     ("normalized", f.normalize)) if on]
            detail = f"mean {fs.mean:.4g}, std {math.sqrt(fs.variance):.4g}{miss}" + (
                f" ({', '.join(rules)})" if rules else "")
        else:
            size = stats.vocabulary_size(spec, f.name)
            source = {"hash": f"{f.hash_bins} hash bins", "file": "vocabulary file",
                      "learned": f"{fs.distinct} distinct"}[f.vocabulary_source]
            encoding = f"embedding {f.embedding_dim}" if f.encoding == "embedding" or f.type != "categorical" else "one_hot"
            detail = f"vocabulary {size} incl. OOV ({source}), {encoding}{miss}"
            if f.type == "multi_categorical" and fs.count:
                detail += f", {fs.tokens / max(1, fs.count + fs.missing):.2f} tokens a row, {f.combiner}"
        lines.append(f"feature {f.name} ({f.type}): {detail}")
    for t in spec.tasks:
        ls = stats.labels[t.name]
        if t.type == "binary":
            detail = f"positive rate {ls.mean:.4f}"
        else:
            detail = f"mean {ls.mean:.4g}, std {math.sqrt(ls.variance):.4g}" + (
                ", trained standardized" if t.normalize_label else "")
        lines.append(f"task {t.name} ({t.type}, label {t.label!r}, loss weight {t.loss_weight:g}): {detail}")
    return lines
