"""Your own data, end to end: spec -> statistics -> model -> fit -> ``.keras`` + SavedModel -> evaluate.

The functions ``keras-mmoe train --spec`` and ``keras-mmoe evaluate --spec`` are thin layers over::

    spec = keras_mmoe.data.load_spec("spec.toml")
    result = keras_mmoe.workflow.train(spec)                  # plan, statistics, fit, save, export
    keras_mmoe.workflow.evaluate(result.keras_path, spec, files=["data/test.csv"], group_by="user_id")

or, step by step: :func:`~keras_mmoe.data.compute_statistics`, :func:`build_model`,
:func:`compile_model`, ``model.fit(make_dataset(spec, "train"), ...)``, :func:`export`.
The ``[model]`` table picks a builder of :data:`keras_mmoe.models.BUILDERS` by ``architecture``;
its other keys are that builder's keyword arguments.
"""

from __future__ import annotations

import inspect
import math
import os
import secrets
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_mmoe import metrics as _metrics
from keras_mmoe import models as _models
from keras_mmoe._keras import keras
from keras_mmoe.data.pipeline import data_errors, make_dataset, parsed_batches, resolve_source, translate_error
from keras_mmoe.data.pipeline import DataError
from keras_mmoe.data.spec import Spec, SpecError, load_spec
from keras_mmoe.data.statistics import Statistics, compute_statistics, describe
from keras_mmoe.features.preprocessing import build_preprocessing, label_scaling, serving_options
from keras_mmoe.serving import export_for_serving

#: Builder arguments a spec sets itself (from its features and tasks), never from ``[model]``.
_SET_BY_SPEC = ("inputs", "tasks", "features", "output_scaling")


def architectures() -> dict:
    """``{architecture: builder}`` a spec's ``[model] architecture`` may name (:data:`keras_mmoe.models.BUILDERS`)."""
    return dict(_models.BUILDERS)


def _builder(spec):
    builders = architectures()
    builder = builders.get(spec.architecture)
    if builder is None:
        raise SpecError(f"{spec.source}: [model]: unknown architecture {spec.architecture!r}; "
                        f"choose one of {sorted(builders)}")
    params = inspect.signature(builder).parameters
    if not all(p in params for p in ("features", "output_scaling")):
        raise SpecError(f"{spec.source}: [model]: the builder of {spec.architecture!r} takes no `features` / "
                        "`output_scaling` arguments, so it cannot read a spec's preprocessed features")
    return builder, params


def check_model_section(spec: Spec) -> None:
    """Checks ``[model]`` against its builder's arguments (before any data is read)."""
    builder, params = _builder(spec)
    allowed = [p for p in params if p not in _SET_BY_SPEC and p != "name"]
    for key in spec.model_kwargs:
        if key not in allowed:
            raise SpecError(f"{spec.source}: [model]: unknown key {key!r} for architecture {spec.architecture!r}; "
                            f"valid keys: architecture, {', '.join(allowed)}")


def build_model(spec, statistics: Statistics, *, name: Optional[str] = None) -> keras.Model:
    """The spec's model: its preprocessing (:func:`~keras_mmoe.features.build_preprocessing`) feeding the
    ``[model]`` architecture, one output per task (regression tasks with ``normalize_label`` in the
    label's units). Uncompiled; see :func:`compile_model`."""
    spec = load_spec(spec)
    check_model_section(spec)
    builder, params = _builder(spec)
    inputs, encoded = build_preprocessing(spec, statistics)
    tasks = {t.name: t.type for t in spec.tasks}
    kwargs = dict(spec.model_kwargs)
    if "seed" in params and "seed" not in kwargs:
        kwargs["seed"] = spec.train.seed
    scaling = label_scaling(spec, statistics)
    try:
        return builder(inputs, tasks, features=encoded, output_scaling=scaling or None,
                       name=name or spec.train.name, **kwargs)
    except (TypeError, ValueError) as error:
        raise SpecError(f"{spec.source}: [model] ({spec.architecture}): {error}") from None


def compile_kwargs(spec, statistics: Statistics) -> dict:
    """``loss``, ``loss_weights`` and ``metrics`` for ``model.compile``.

    Binary tasks: binary cross-entropy, AUC. Regression tasks: mean squared error, RMSE in the
    label's units; with ``normalize_label`` the loss weight is divided by the label's variance,
    which makes the loss the squared error of the standardized label.
    """
    spec = load_spec(spec)
    scaling = label_scaling(spec, statistics)
    loss, weights, metrics = {}, {}, {}
    for t in spec.tasks:
        if t.type == "binary":
            loss[t.name] = keras.losses.BinaryCrossentropy(name=f"{t.name}_loss")
            metrics[t.name] = [keras.metrics.AUC(name="auc")]
        else:
            loss[t.name] = keras.losses.MeanSquaredError(name=f"{t.name}_loss")
            metrics[t.name] = [keras.metrics.RootMeanSquaredError(name="rmse")]
        std = scaling.get(t.name, (1.0, 0.0))[0]
        weights[t.name] = t.loss_weight / (std * std)
    return {"loss": loss, "loss_weights": weights, "metrics": metrics}


def compile_model(model: keras.Model, spec, statistics: Statistics, optimizer=None) -> keras.Model:
    """Compiles ``model`` with :func:`compile_kwargs` and Adam at ``[train] learning_rate``."""
    spec = load_spec(spec)
    optimizer = optimizer or keras.optimizers.Adam(spec.train.learning_rate)
    model.compile(optimizer=optimizer, **compile_kwargs(spec, statistics))
    return model


def export(model: keras.Model, spec, base_dir: str, version: Optional[int] = None, **kwargs) -> str:
    """Exports a spec's model for TF Serving with the spec's serving rules
    (:func:`~keras_mmoe.features.serving_options`); returns the version directory."""
    options = serving_options(load_spec(spec))
    options.update(kwargs)
    return export_for_serving(model, base_dir, version, **options)


# ------------------------------------------------------------------------------------ training


class _EpochLog(keras.callbacks.Callback):
    """One line per epoch: losses and each task's validation metric (AUC, RMSE in label units)."""

    def __init__(self, spec, log, epochs):
        super().__init__()
        self.spec, self.log, self.epochs = spec, log, epochs

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"loss {logs['loss']:.4f}"] if "loss" in logs else []
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = []
            for t in self.spec.tasks:
                metric = "auc" if t.type == "binary" else "rmse"
                value = logs.get(f"{prefix}{t.name}_{metric}")
                if value is not None:
                    values.append(f"{t.name} {metric.upper() if metric == 'auc' else 'RMSE'} {value:.4f}")
            if values:
                parts.append(f"{label}: " + ", ".join(values))
        self.log(f"epoch {epoch + 1}/{self.epochs}: " + "; ".join(parts))


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model: keras.Model
    keras_path: str
    version_dir: str
    statistics: Statistics
    history: dict = field(default_factory=dict)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def train(
    spec,
    *,
    out_dir: Optional[str] = None,
    name: Optional[str] = None,
    overwrite: bool = False,
    epochs: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
    callbacks: Sequence = (),
) -> TrainResult:
    """Trains the spec's model on its files, saves ``<out_dir>/<name>.keras``, exports the next version.

    Steps: check the spec; one statistics pass (rows, bad rows, vocabularies, means); print the plan;
    build and compile the model; fit on the streaming train split with the validation split's
    metrics each epoch; save and export. Nothing is written unless every step succeeded: the
    ``.keras`` file is written under a temporary name and renamed after the export succeeded.

    Args:
        spec: a :class:`~keras_mmoe.data.Spec`, a spec file, or a dict.
        out_dir, name, epochs: override ``[train]`` (the command line's flags).
        overwrite: replace an existing ``<name>.keras`` (the export is always a new version).
        log: called with each progress line (default: no output).
        callbacks: more Keras callbacks for ``fit``.

    Raises:
        SpecError, DataError (ValueErrors): bad spec or data, one line.
        FileExistsError: ``<name>.keras`` exists and ``overwrite`` is False.
    """
    spec = load_spec(spec)
    changes = {k: v for k, v in (("out_dir", out_dir), ("name", name), ("epochs", epochs)) if v is not None}
    if changes:
        spec = spec.replace_train(**changes)
    log = log or (lambda message: None)
    out_dir, name = spec.train.out_dir, spec.train.name
    keras_path = os.path.join(out_dir, f"{name}.keras")
    base_dir = os.path.join(out_dir, name)
    if os.path.exists(keras_path) and not overwrite:
        raise FileExistsError(f"{keras_path} already exists; choose another name or overwrite it")
    check_model_section(spec)

    train_files = resolve_source(spec, "train").files
    log(f"reading the train files: {', '.join(train_files[:3])}" + (", ..." if len(train_files) > 3 else ""))
    statistics = compute_statistics(spec)
    for line in describe(spec, statistics):
        log(line)

    keras.utils.set_random_seed(spec.train.seed)
    model = build_model(spec, statistics)
    compile_model(model, spec, statistics)
    log(f"model: {spec.architecture}, {model.count_params()} parameters; training {spec.train.epochs} epoch(s), "
        f"batch size {spec.train.batch_size}, learning rate {spec.train.learning_rate:g}")
    train_data = make_dataset(spec, "train")
    has_validation = statistics.validation_rows > 0
    validation_data = make_dataset(spec, "validation") if has_validation else None
    with data_errors(spec), warnings.catch_warnings():
        # Keras 3 warns at the end of every first pass over a dataset of unknown length; it is expected here.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        warnings.filterwarnings("ignore", message="`shuffle=True` was passed")  # the dataset shuffles itself
        history = model.fit(train_data, validation_data=validation_data, epochs=spec.train.epochs, verbose=0,
                            callbacks=[_EpochLog(spec, log, spec.train.epochs), *callbacks])

    os.makedirs(out_dir, exist_ok=True)
    temp_path = os.path.join(out_dir, f".tmp-{name}-{secrets.token_hex(4)}.keras")
    try:
        model.save(temp_path)
        version_dir = export(model, spec, base_dir)
        os.replace(temp_path, keras_path)
    except BaseException:
        _remove(temp_path)
        raise
    log(f"saved {keras_path}; exported {version_dir}")
    return TrainResult(model, keras_path, version_dir, statistics,
                       {k: [float(v) for v in vs] for k, vs in history.history.items()})


# ------------------------------------------------------------------------------------ evaluation


def _predictor(model):
    """``(predict(features) -> {task: array}, input names)`` for a Keras model, a .keras file or a SavedModel."""
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "saved_model.pb")):
                raise FileNotFoundError(f"{path} is a directory without saved_model.pb (give a version directory)")
            loaded = tf.saved_model.load(path)
            if "serving_default" not in loaded.signatures:
                raise ValueError(f"{path} has no serving_default signature; it has {sorted(loaded.signatures)}")
            fn = loaded.signatures["serving_default"]
            specs = fn.structured_input_signature[1]

            def predict_saved(features):
                out = fn(**{k: tf.cast(features[k], specs[k].dtype) for k in specs})
                return {k: v.numpy() for k, v in out.items()}

            predict_saved.keep_alive = loaded  # the signature needs its object alive
            return predict_saved, list(specs)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model file not found: {path}")
        import keras_mmoe  # noqa: F401  (registers the package's layers)

        model = keras.models.load_model(path, compile=False)
    if not isinstance(model, keras.Model):
        raise ValueError("`model` must be a Keras model with named inputs (a spec model), a .keras file "
                         f"or an exported SavedModel version directory, received: {type(model).__name__}")
    names = [str(t.name).split(":")[0] for t in model.inputs]  # the inputs take features by name

    def predict_keras(features):
        out = model({k: features[k] for k in names}, training=False)
        if not isinstance(out, dict):
            raise ValueError("the model must return a dict of outputs keyed by task name")
        return {k: np.asarray(v) for k, v in out.items()}

    return predict_keras, names


def evaluate(
    model,
    spec,
    files: Optional[Sequence[str]] = None,
    *,
    group_by: Optional[str] = None,
    batch_size: int = 4096,
) -> dict:
    """Per-task metrics of ``model`` on files described by ``spec``.

    Args:
        model: a Keras model, a ``.keras`` file, or an exported SavedModel version directory
            (called through ``serving_default``, no keras_mmoe code involved).
        spec: the spec the model was trained with (columns, types, labels).
        files: file patterns to score (default: the spec's validation split).
        group_by: a column (a user or query id): binary tasks also get GAUC over its groups.
        batch_size: rows per prediction batch.

    Returns:
        ``{"rows": n, "bad_rows": k, "tasks": {task: metrics}}``; binary tasks: ``auc``, ``loss``
        (cross-entropy), ``calibration`` (mean prediction / mean label) and, with ``group_by``,
        ``gauc``, ``gauc_groups``, ``gauc_skipped_groups`` (groups holding one class); regression
        tasks: ``rmse`` and ``mae`` in the label's units.
    """
    spec = load_spec(spec)
    predict, names = _predictor(model)
    missing = sorted(set(names) - {f.name for f in spec.features})
    if missing:
        raise ValueError(f"the model's inputs {missing} are not features of the spec ({spec.source})")
    split = "validation"
    source = resolve_source(spec, split, files)
    extra = [group_by] if group_by else []
    labels = {t.name: [] for t in spec.tasks}
    predictions = {t.name: [] for t in spec.tasks}
    groups, bad, first = [], 0, None
    limit = spec.data.max_bad_rows
    dataset = parsed_batches(spec, split, files=files, batch_size=batch_size, extra_columns=extra, source=source)
    try:
        for batch in dataset:
            messages = batch["messages"].numpy()
            bad += len(messages)
            if len(messages) and first is None:
                first = messages[0].decode("utf-8", errors="replace")
            if bad > limit:
                raise DataError(first if limit == 0 else f"more than max_bad_rows={limit} malformed rows in "
                                f"{source.what}; the first: {first}")
            if int(tf.size(next(iter(batch["labels"].values())))) == 0:
                continue
            out = predict(batch["features"])
            for t in spec.tasks:
                if t.name not in out:
                    raise ValueError(f"the model has no output for task {t.name!r}; its outputs are {sorted(out)}")
                labels[t.name].append(batch["labels"][t.name].numpy().ravel())
                predictions[t.name].append(np.asarray(out[t.name], np.float64).ravel())
            if group_by:
                groups.append(batch["extras"][group_by].numpy())
    except tf.errors.OpError as error:
        translated = translate_error(error, spec, source)
        if translated is not None:
            raise translated from None
        raise
    rows = sum(len(a) for a in labels[spec.tasks[0].name])
    if rows == 0:
        raise DataError(f"{source.files[0]}: no data row to evaluate in {len(source.files)} file(s)")
    result = {"rows": rows, "bad_rows": bad, "files": list(source.files), "tasks": {}}
    group_values = np.concatenate(groups) if group_by else None
    for t in spec.tasks:
        y, p = np.concatenate(labels[t.name]), np.concatenate(predictions[t.name])
        if t.type == "binary":
            m = {"auc": _metrics.roc_auc(y, p), "loss": _metrics.binary_crossentropy(y, p),
                 "calibration": _metrics.calibration(y, p)}
            if group_by:
                m["gauc"], m["gauc_groups"], m["gauc_skipped_groups"] = _metrics.group_auc(y, p, group_values)
        else:
            m = {"rmse": _metrics.rmse(y, p), "mae": float(np.mean(np.abs(y - p)))}
        result["tasks"][t.name] = {k: (float(v) if isinstance(v, float) and not math.isnan(v) else v)
                                   for k, v in m.items()}
    return result
