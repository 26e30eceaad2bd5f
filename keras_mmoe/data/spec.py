"""The data spec: which files, which columns are features of which type, which are task labels.

A spec is a TOML or JSON file (or a dict) with the tables ``[data]``, ``[[features]]``,
``[[tasks]]``, ``[model]`` and ``[train]``; :func:`load_spec` reads and checks it and returns a
:class:`Spec`. Every unknown key, type or value is reported in one line naming the spec file,
the table and the entry. Pure Python (no TensorFlow): the pipeline, the preprocessing, the
model and the command line all read the same :class:`Spec`.

>>> spec = load_spec({"data": {"train": ["train.csv"]},
...                   "features": [{"name": "age", "type": "numeric", "default": 0.0}],
...                   "tasks": [{"name": "click", "label": "clicked", "type": "binary"}]})
>>> spec.features[0].default, spec.tasks[0].label
(0.0, 'clicked')
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

FEATURE_TYPES = ("numeric", "categorical", "multi_categorical")
TASK_TYPES = ("binary", "regression")
FORMATS = ("csv", "tfrecord")
ENCODINGS = ("embedding", "one_hot")
COMBINERS = ("mean", "sum")
CATEGORICAL_DTYPES = ("string", "int64")
#: ``[train] mixed_precision``: the Keras dtype policy of the model's mixture layer and towers.
MIXED_PRECISION = ("float32", "mixed_bfloat16", "mixed_float16")

#: An int64 id of -1 means "missing": never in a vocabulary, it maps to the OOV index.
MISSING_ID = -1
#: Default size of a feature embedding when the spec gives none.
DEFAULT_EMBEDDING_DIM = 8

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class SpecError(ValueError):
    """A spec that cannot be used: one line naming the file, the entry and the value received."""


# ------------------------------------------------------------------------------------- tables


@dataclass
class DataSpec:
    """``[data]``: the files and how to read them."""

    train: list
    validation: list = field(default_factory=list)
    format: Optional[str] = None
    delimiter: str = ","
    validation_fraction: float = 0.1
    max_bad_rows: int = 0
    shuffle_buffer: int = 10_000  # rows: the train rows are shuffled within windows of this many, as read


@dataclass
class FeatureSpec:
    """One ``[[features]]`` entry: a raw column and how the model encodes it."""

    name: str
    type: str
    column: Optional[str] = None
    # numeric
    default: Optional[float] = None
    missing_indicator: bool = False
    normalize: bool = False
    # categorical and multi_categorical
    dtype: str = "string"
    max_tokens: Optional[int] = None
    min_count: int = 1
    vocabulary_file: Optional[str] = None
    hash_bins: Optional[int] = None
    embedding_dim: Optional[int] = None
    encoding: str = "embedding"
    # multi_categorical
    separator: str = "|"
    combiner: str = "mean"

    @property
    def key(self) -> str:
        """The column (CSV) or feature key (tf.Example) the feature is read from."""
        return self.column or self.name

    @property
    def vocabulary_source(self) -> str:
        """``"hash"``, ``"file"`` or ``"learned"`` (from the train files); ``"none"`` for numbers."""
        if self.type == "numeric":
            return "none"
        if self.hash_bins is not None:
            return "hash"
        return "file" if self.vocabulary_file is not None else "learned"


@dataclass
class TaskSpec:
    """One ``[[tasks]]`` entry: a model output trained on a label column."""

    name: str
    label: str
    type: str
    loss_weight: float = 1.0
    normalize_label: bool = False


@dataclass
class TrainSpec:
    """``[train]``: optimization settings and where the trained model goes."""

    epochs: int = 3
    batch_size: int = 1024
    learning_rate: float = 1e-3
    seed: int = 0
    out_dir: str = "saved_models"
    name: str = "model"
    mixed_precision: str = "float32"
    jit_compile: bool = False


@dataclass
class Spec:
    """A checked spec; paths in it are relative to ``base_dir`` (the spec file's directory)."""

    data: DataSpec
    features: list
    tasks: list
    model: dict = field(default_factory=lambda: {"architecture": "mmoe"})
    train: TrainSpec = field(default_factory=TrainSpec)
    base_dir: str = "."
    source: str = "spec"

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"the spec has no feature {name!r}; its features are {[f.name for f in self.features]}")

    @property
    def architecture(self) -> str:
        return self.model.get("architecture", "mmoe")

    @property
    def model_kwargs(self) -> dict:
        """The ``[model]`` table without ``architecture``: keyword arguments of the model builder."""
        return {k: v for k, v in self.model.items() if k != "architecture"}

    def resolve_path(self, path: str) -> str:
        """``path`` relative to the spec file's directory (absolute paths unchanged)."""
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(self.base_dir, path))

    def columns(self) -> list:
        """Every column the spec reads: feature columns, then label columns (each once, in order)."""
        seen = []
        for key in [f.key for f in self.features] + [t.label for t in self.tasks]:
            if key not in seen:
                seen.append(key)
        return seen

    def to_dict(self) -> dict:
        """The spec as the plain tables of the file format (defaults left out)."""
        data = _non_defaults(self.data, DataSpec(train=[])) | {"train": list(self.data.train)}
        if self.data.validation:
            data.pop("validation_fraction", None)  # implied (0) by the validation files
        return {
            "data": data,
            "features": [_non_defaults(f, FeatureSpec(f.name, f.type)) | {"name": f.name, "type": f.type}
                         for f in self.features],
            "tasks": [_non_defaults(t, TaskSpec(t.name, t.label, t.type)) | {"name": t.name, "label": t.label,
                                                                             "type": t.type}
                      for t in self.tasks],
            "model": dict(self.model),
            "train": _non_defaults(self.train, TrainSpec()),
        }

    def replace_train(self, **changes: Any) -> "Spec":
        """A copy whose ``[train]`` values are replaced (checked like the file's)."""
        values = {f.name: getattr(self.train, f.name) for f in fields(TrainSpec)}
        values.update(changes)
        reader = _Reader(self.source)
        train = reader.table("[train]", values, TrainSpec, _TRAIN_CHECKS)
        train.learning_rate = float(train.learning_rate)
        return Spec(self.data, self.features, self.tasks, self.model, train, self.base_dir, self.source)

    def replace_data(self, **changes: Any) -> "Spec":
        """A copy whose ``[data]`` values are replaced (checked like the file's; e.g. ``max_bad_rows``)."""
        unknown = sorted(set(changes) - {"max_bad_rows", "shuffle_buffer"})
        if unknown:
            raise ValueError(f"replace_data changes `max_bad_rows` and `shuffle_buffer`, received {unknown}")
        reader = _Reader(self.source)
        for key, value in changes.items():
            reader.value("[data]", key, value, _DATA_CHECKS[key])
        data = DataSpec(**{f.name: getattr(self.data, f.name) for f in fields(DataSpec)})
        for key, value in changes.items():
            setattr(data, key, value)
        return Spec(data, self.features, self.tasks, self.model, self.train, self.base_dir, self.source)


#: What :func:`load_spec` (and every function taking a ``spec``) accepts: a :class:`Spec`, a
#: ``.toml`` / ``.json`` spec file, or a dict of its tables.
SpecLike = Union[Spec, str, "os.PathLike[str]", dict]


def _non_defaults(obj, default_obj):
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value != getattr(default_obj, f.name):
            out[f.name] = list(value) if isinstance(value, list) else value
    return out


# ------------------------------------------------------------------------------------- checks


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_at_least(low):
    def check(v):
        if not _is_int(v) or v < low:
            return f"must be an integer >= {low}"
        return None
    return check


def _positive_number(v):
    if not _is_number(v) or not v > 0 or not math.isfinite(v):
        return "must be a number > 0"
    return None


def _finite_number(v):
    if not _is_number(v) or not math.isfinite(v):
        return "must be a finite number"
    return None


def _bool(v):
    return None if isinstance(v, bool) else "must be true or false"


def _string(v):
    return None if isinstance(v, str) and v else "must be a non-empty string"


def _name(v):
    if not isinstance(v, str) or not _NAME.match(v):
        return "must be a name of letters, digits and underscores starting with a letter"
    return None


def _choice(options):
    def check(v):
        return None if v in options else f"must be one of {list(options)}"
    return check


def _one_char(v):
    if not isinstance(v, str) or len(v) != 1 or v in '"\n\r':
        return "must be one character (not a quote or a line break)"
    return None


def _fraction(v):
    if not _is_number(v) or not 0.0 <= v < 1.0:
        return "must be a number in [0, 1)"
    return None


def _patterns(v):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(p, str) and p for p in v):
        return "must be a file pattern or a non-empty list of them"
    return None


_DATA_CHECKS = {
    "train": _patterns,
    "validation": _patterns,
    "format": _choice(FORMATS),
    "delimiter": _one_char,
    "validation_fraction": _fraction,
    "max_bad_rows": _int_at_least(0),
    "shuffle_buffer": _int_at_least(1),
}

_TRAIN_CHECKS = {
    "epochs": _int_at_least(1),
    "batch_size": _int_at_least(1),
    "learning_rate": _positive_number,
    "seed": _int_at_least(0),
    "out_dir": _string,
    "name": _name,
    "mixed_precision": _choice(MIXED_PRECISION),
    "jit_compile": _bool,
}

_COMMON_FEATURE_CHECKS = {"name": _name, "type": _choice(FEATURE_TYPES), "column": _string}
_VOCABULARY_CHECKS = {
    "max_tokens": _int_at_least(2),
    "min_count": _int_at_least(1),
    "vocabulary_file": _string,
    "hash_bins": _int_at_least(1),
    "embedding_dim": _int_at_least(1),
}
_FEATURE_CHECKS = {
    "numeric": {"default": _finite_number, "missing_indicator": _bool, "normalize": _bool},
    "categorical": {**_VOCABULARY_CHECKS, "dtype": _choice(CATEGORICAL_DTYPES), "encoding": _choice(ENCODINGS)},
    "multi_categorical": {**_VOCABULARY_CHECKS, "separator": _string, "combiner": _choice(COMBINERS)},
}

_TASK_CHECKS = {
    "name": _name,
    "label": _string,
    "type": _choice(TASK_TYPES),
    "loss_weight": _positive_number,
    "normalize_label": _bool,
}

_TOP_LEVEL = ("data", "features", "tasks", "model", "train")


class _Reader:
    """Checks tables against their allowed keys; errors are prefixed with the spec's source."""

    def __init__(self, source):
        self.source = source

    def fail(self, where, message):
        raise SpecError(f"{self.source}: {where}: {message}")

    def keys(self, where, table, allowed, required=()):
        if not isinstance(table, dict):
            self.fail(where, f"must be a table, received {type(table).__name__} {table!r}")
        for key in table:
            if key not in allowed:
                self.fail(where, f"unknown key {key!r}; valid keys: {', '.join(allowed)}")
        for key in required:
            if key not in table:
                self.fail(where, f"missing required key {key!r}")

    def value(self, where, key, value, check):
        problem = check(value)
        if problem:
            self.fail(where, f"`{key}` {problem}, received {value!r}")

    def table(self, where, table, cls, checks, required=()):
        self.keys(where, table, list(checks), required)
        for key, value in table.items():
            self.value(where, key, value, checks[key])
        values = dict(table)
        for key in ("train", "validation"):
            if cls is DataSpec and isinstance(values.get(key), str):
                values[key] = [values[key]]
        return cls(**values)


def _feature(reader, index, entry):
    where = f"[[features]] #{index + 1}"
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        where += f" {entry['name']!r}"
    if not isinstance(entry, dict):
        reader.fail(where, f"must be a table, received {entry!r}")
    for key in ("name", "type"):
        if key not in entry:
            reader.fail(where, f"missing required key {key!r}")
    reader.value(where, "type", entry["type"], _COMMON_FEATURE_CHECKS["type"])
    kind = entry["type"]
    checks = {**_COMMON_FEATURE_CHECKS, **_FEATURE_CHECKS[kind]}
    reader.keys(f"{where} ({kind})", entry, list(checks))
    for key, value in entry.items():
        reader.value(where, key, value, checks[key])
    spec = FeatureSpec(**entry)
    if kind == "numeric" and spec.default is not None:
        spec.default = float(spec.default)
    if kind == "numeric" and spec.missing_indicator and spec.default is None:
        reader.fail(where, "`missing_indicator` needs a `default` (without one, a missing value is an error)")
    if kind != "numeric":
        sources = [k for k in ("hash_bins", "vocabulary_file") if entry.get(k) is not None]
        learned = [k for k in ("max_tokens", "min_count") if k in entry]
        if len(sources) > 1 or (sources and learned):
            reader.fail(where, f"choose one vocabulary: `max_tokens`/`min_count` (learned from the train files), "
                               f"`vocabulary_file` or `hash_bins`; received {sources + learned}")
        if spec.encoding == "one_hot" and "embedding_dim" in entry:
            reader.fail(where, "`embedding_dim` applies to encoding = \"embedding\", not \"one_hot\"")
        if spec.embedding_dim is None and spec.encoding == "embedding":
            spec.embedding_dim = DEFAULT_EMBEDDING_DIM
    return spec


def _task(reader, index, entry):
    where = f"[[tasks]] #{index + 1}"
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        where += f" {entry['name']!r}"
    task = reader.table(where, entry, TaskSpec, _TASK_CHECKS, required=("name", "label", "type"))
    task.loss_weight = float(task.loss_weight)
    if task.normalize_label and task.type != "regression":
        reader.fail(where, "`normalize_label` applies to regression tasks only")
    return task


def _model(reader, table):
    if table is None:
        return {"architecture": "mmoe"}
    if not isinstance(table, dict):
        reader.fail("[model]", f"must be a table, received {table!r}")
    table = dict(table)
    table.setdefault("architecture", "mmoe")
    reader.value("[model]", "architecture", table["architecture"], _name)
    reserved = sorted(set(table) & {"inputs", "tasks", "features", "output_scaling"})
    if reserved:
        reader.fail("[model]", f"{reserved} are set from the spec's features and tasks, not in [model]")
    if "dtype" in table:
        reader.fail("[model]", f"`dtype` is set by [train] mixed_precision ({' | '.join(MIXED_PRECISION)}), "
                               f"received dtype = {table['dtype']!r}")
    return table


def parse_spec(tables: dict, *, base_dir: str = ".", source: str = "spec") -> Spec:
    """Checks the tables of a spec (as read from TOML or JSON) and returns a :class:`Spec`."""
    reader = _Reader(source)
    reader.keys("top level", tables, _TOP_LEVEL, required=("data", "features", "tasks"))
    data_table = tables["data"]
    data = reader.table("[data]", data_table, DataSpec, _DATA_CHECKS, required=("train",))
    if data.validation and isinstance(data_table, dict) and "validation_fraction" in data_table:
        reader.fail("[data]", "give `validation` (files) or `validation_fraction` (a share of the train rows), not both")
    if data.validation:
        data.validation_fraction = 0.0
    data.validation_fraction = float(data.validation_fraction)

    entries = tables["features"]
    if not isinstance(entries, list) or not entries:
        reader.fail("[[features]]", f"must list at least one feature, received {entries!r}")
    features = [_feature(reader, i, e) for i, e in enumerate(entries)]
    tasks_entries = tables["tasks"]
    if not isinstance(tasks_entries, list) or not tasks_entries:
        reader.fail("[[tasks]]", f"must list at least one task, received {tasks_entries!r}")
    tasks = [_task(reader, i, e) for i, e in enumerate(tasks_entries)]

    names = [f.name for f in features]
    for name in names:
        if names.count(name) > 1:
            reader.fail("[[features]]", f"the feature name {name!r} is used twice")
    task_names = [t.name for t in tasks]
    for t in tasks:
        if task_names.count(t.name) > 1:
            reader.fail("[[tasks]]", f"the task name {t.name!r} is used twice")
        if t.name in names:
            reader.fail(f"[[tasks]] {t.name!r}", "a task cannot have the name of a feature (both name model layers)")
        users = [f.name for f in features if f.key == t.label]
        if users:
            reader.fail(f"[[tasks]] {t.name!r}",
                        f"the label column {t.label!r} is also read by the feature {users[0]!r} (the label would leak)")
    train = reader.table("[train]", tables.get("train", {}), TrainSpec, _TRAIN_CHECKS)
    train.learning_rate = float(train.learning_rate)
    model = _model(reader, tables.get("model"))
    return Spec(data, features, tasks, model, train, base_dir=base_dir, source=source)


def load_spec(source: SpecLike, *, base_dir: Optional[str] = None) -> Spec:
    """Reads and checks a spec: a ``.toml`` or ``.json`` file, or a dict of its tables.

    Relative paths in the spec (file patterns, vocabulary files) are relative to ``base_dir``:
    by default the spec file's directory, or the current directory for a dict.

    Raises:
        SpecError (a ValueError): unknown key, type or value; the message names the file and entry.
        OSError: the file cannot be read.
    """
    if isinstance(source, Spec):
        return source
    if isinstance(source, dict):
        return parse_spec(source, base_dir=base_dir or ".", source="spec")
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"spec file not found: {path}")
    try:
        if path.endswith(".toml"):
            import tomllib

            with open(path, "rb") as f:
                tables = tomllib.load(f)
        elif path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                tables = json.load(f)
        else:
            raise SpecError(f"{path}: a spec file must end in .toml or .json")
    except SpecError:
        raise
    except (ValueError, UnicodeDecodeError) as error:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise SpecError(f"{path}: cannot parse: {error}") from None
    if not isinstance(tables, dict):
        raise SpecError(f"{path}: must hold tables, received {type(tables).__name__}")
    return parse_spec(tables, base_dir=base_dir or os.path.dirname(path) or ".", source=path)


# ------------------------------------------------------------------------------------- writing


def toml_value(value: Any) -> str:
    """One TOML value (strings, numbers, booleans and lists of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no value for {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {type(value).__name__} {value!r} to TOML")


def _toml_table(header, table, comments=None):
    lines = [header]
    for key, value in table.items():
        comment = (comments or {}).get(key)
        lines.append(f"{key} = {toml_value(value)}" + (f"  # {comment}" if comment else ""))
    return lines


def spec_to_toml(spec: Union[Spec, dict], comments: Optional[dict] = None) -> str:
    """The spec as TOML text that :func:`load_spec` reads back to the same spec.

    ``comments`` maps ``("features", name)`` or ``("tasks", name)`` to a comment line written
    above that entry (``spec infer`` uses it for the missing rates and cardinalities it saw).
    """
    tables = spec.to_dict() if isinstance(spec, Spec) else spec
    comments = comments or {}
    lines = _toml_table("[data]", tables["data"]) + [""]
    for kind in ("features", "tasks"):
        for entry in tables[kind]:
            note = comments.get((kind, entry["name"]))
            if note:
                lines.append(f"# {note}")
            ordered = {k: entry[k] for k in ("name", "type") if k in entry}
            ordered.update({k: v for k, v in entry.items() if k not in ordered})
            lines += _toml_table(f"[[{kind}]]", ordered) + [""]
    lines += _toml_table("[model]", tables.get("model", {"architecture": "mmoe"})) + [""]
    lines += _toml_table("[train]", tables.get("train", {}))
    return "\n".join(lines) + "\n"
