"""Your own data, end to end: spec -> statistics -> model -> fit -> ``.keras`` + SavedModel -> evaluate.

The functions ``keras-mmoe train --spec`` and ``keras-mmoe evaluate --spec`` are thin layers over::

    spec = keras_mmoe.data.load_spec("spec.toml")
    result = keras_mmoe.workflow.train(spec)                  # plan, statistics, fit, save, export
    keras_mmoe.workflow.evaluate(result.keras_path, spec, files=["data/test.csv"], group_by="user_id")

or, step by step: :func:`~keras_mmoe.data.compute_statistics`, :func:`build_model`,
:func:`compile_model`, ``model.fit(make_dataset(spec, "train"), ...)``, :func:`export`.
The ``[model]`` table picks a builder of :data:`keras_mmoe.models.BUILDERS` by ``architecture``;
its other keys are that builder's keyword arguments (``cgc`` and ``ple`` also take ``num_experts``,
split as ``keras-mmoe train --model ple`` splits it). ``[train] mixed_precision`` is the builder's
``dtype``, ``[train] jit_compile`` the ``model.compile`` argument. ``train(spec, distribution=...)``
trains on ``tf.distribute`` through :func:`keras_mmoe.training.fit` instead of ``model.fit``.
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
from keras_mmoe import saving as _saving
from keras_mmoe._keras import keras
from keras_mmoe.data.pipeline import data_errors, make_dataset, parsed_batches, resolve_source, translate_error
from keras_mmoe.data.pipeline import DataError
from keras_mmoe.data.spec import Spec, SpecError, load_spec, parse_spec
from keras_mmoe.data.statistics import Statistics, compute_statistics, describe
from keras_mmoe.features.preprocessing import build_preprocessing, label_scaling, serving_options
from keras_mmoe.serving import export_for_serving

#: Builder arguments a spec sets itself (from its features, tasks and ``[train]``), never from ``[model]``.
_SET_BY_SPEC = ("inputs", "tasks", "features", "output_scaling", "dtype", "name")
#: Architectures with task and shared experts: ``num_experts`` (default 8) is split between them
#: (:func:`keras_mmoe.models.split_experts`) when ``num_shared_experts`` / ``num_task_experts`` are not given.
PROGRESSIVE = ("cgc", "ple")
#: ``num_experts`` of a cgc / ple spec that does not give it (MMoE's default).
DEFAULT_NUM_EXPERTS = 8


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
    """Checks ``[model]`` against its builder's arguments, and ``[train] mixed_precision`` against the
    builder (before any data is read). Raises :class:`~keras_mmoe.data.SpecError` naming the key."""
    builder, params = _builder(spec)
    allowed = [p for p in params if p not in _SET_BY_SPEC]
    if spec.architecture in PROGRESSIVE:
        allowed = ["num_experts", *allowed]
    for key in spec.model_kwargs:
        if key not in allowed:
            raise SpecError(f"{spec.source}: [model]: unknown key {key!r} for architecture {spec.architecture!r}; "
                            f"valid keys: architecture, {', '.join(allowed)}")
    budget = spec.model_kwargs.get("num_experts")
    if spec.architecture in PROGRESSIVE and budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise SpecError(f"{spec.source}: [model]: `num_experts` must be a positive integer, received {budget!r}")
    if spec.train.mixed_precision != "float32" and "dtype" not in params:
        takes = sorted(name for name, b in architectures().items() if "dtype" in inspect.signature(b).parameters)
        raise SpecError(f"{spec.source}: [train]: `mixed_precision` = {spec.train.mixed_precision!r} needs an "
                        f"architecture whose layers take a dtype ({', '.join(takes)}); {spec.architecture!r} does not")


def model_arguments(spec) -> dict:
    """The builder's keyword arguments: ``[model]`` (cgc / ple: ``num_experts`` split into
    ``num_shared_experts`` and ``num_task_experts`` where not given, ``num_levels`` 2 for ple), the
    ``[train]`` seed when ``[model]`` gives none, and ``dtype`` from ``[train] mixed_precision``."""
    spec = load_spec(spec)
    check_model_section(spec)
    _, params = _builder(spec)
    kwargs = dict(spec.model_kwargs)
    if spec.architecture in PROGRESSIVE:
        budget = kwargs.pop("num_experts", DEFAULT_NUM_EXPERTS)
        shared = kwargs.get("num_shared_experts")
        try:
            shared, own = _models.split_experts(budget, len(spec.tasks), shared)
        except ValueError as error:
            raise SpecError(f"{spec.source}: [model] ({spec.architecture}): {error}") from None
        kwargs.setdefault("num_shared_experts", shared)
        kwargs.setdefault("num_task_experts", own)
        if spec.architecture == "ple":
            kwargs.setdefault("num_levels", 2)
    if "seed" in params and "seed" not in kwargs:
        kwargs["seed"] = spec.train.seed
    if spec.train.mixed_precision != "float32":
        kwargs["dtype"] = spec.train.mixed_precision
    return kwargs


def build_model(spec, statistics: Statistics, *, name: Optional[str] = None) -> keras.Model:
    """The spec's model: its preprocessing (:func:`~keras_mmoe.features.build_preprocessing`) feeding the
    ``[model]`` architecture (:func:`model_arguments`), one output per task (regression tasks with
    ``normalize_label`` in the label's units). Uncompiled; see :func:`compile_model`."""
    spec = load_spec(spec)
    kwargs = model_arguments(spec)
    builder, _ = _builder(spec)
    inputs, encoded = build_preprocessing(spec, statistics)
    tasks = {t.name: t.type for t in spec.tasks}
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
    """Compiles ``model`` with :func:`compile_kwargs`, Adam at ``[train] learning_rate`` and
    ``jit_compile`` from ``[train] jit_compile``. With ``[train] mixed_precision = "mixed_float16"``
    the optimizer is wrapped in a ``LossScaleOptimizer`` (float16 gradients underflow without it)."""
    spec = load_spec(spec)
    optimizer = optimizer or keras.optimizers.Adam(spec.train.learning_rate)
    if spec.train.mixed_precision == "mixed_float16" and not isinstance(
            optimizer, keras.mixed_precision.LossScaleOptimizer):
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, jit_compile=spec.train.jit_compile, **compile_kwargs(spec, statistics))
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
    """What :func:`train` produced.

    Attributes:
        model: the trained Keras model.
        keras_path: ``<out_dir>/<name>.keras`` (written by the chief only, under a strategy).
        version_dir: the export's version directory; None on a worker that is not the chief.
        statistics: the statistics pass's :class:`~keras_mmoe.data.Statistics`.
        history: ``{metric: [value per epoch]}``.
        record: the training record written beside the ``.keras`` file (``<name>.json``) and into
            the export (``assets.extra/keras_mmoe.json``).
        fit_result: the :class:`keras_mmoe.training.FitResult` of a run with a ``distribution``.
    """

    model: keras.Model
    keras_path: str
    version_dir: Optional[str]
    statistics: Statistics
    history: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    fit_result: object = None


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def check_train_options(spec, distribution=None) -> None:
    """SpecError for ``[train]`` settings the run cannot honour: ``jit_compile`` with a categorical
    or multi_categorical feature (XLA cannot compile vocabulary lookups); with a ``distribution``
    (the :mod:`keras_mmoe.training` loop), ``mixed_float16`` (the loop does not scale losses) and
    ``jit_compile`` (the loop's step holds cross-replica calls that XLA cannot compile)."""
    spec = load_spec(spec)
    looked_up = [f.name for f in spec.features if f.type != "numeric"]
    if spec.train.jit_compile and looked_up:
        # Keras 3 turns XLA off for such a model (with a warning); tf-keras fails in the first step.
        raise SpecError(f"{spec.source}: [train]: `jit_compile` = true: the model looks up the {spec.feature(looked_up[0]).type} "
                        f"feature {looked_up[0]!r} in a vocabulary table, which XLA cannot compile; set jit_compile "
                        "= false (XLA applies to specs whose features are all numeric)")
    if distribution is None:
        return
    if spec.train.mixed_precision == "mixed_float16":
        raise SpecError(f"{spec.source}: [train]: `mixed_precision` = 'mixed_float16' needs loss scaling, which the "
                        f"distributed training loop (strategy {distribution.name!r}) does not do; use "
                        "'mixed_bfloat16', or train without a strategy")
    if spec.train.jit_compile:
        raise SpecError(f"{spec.source}: [train]: `jit_compile` = true is a model.compile setting; the distributed "
                        f"training loop (strategy {distribution.name!r}) runs without XLA: set it to false, or "
                        "train without a strategy")


def _json_value(value):
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (str, bool, int, type(None))):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (np.integer, np.floating)):
        return _json_value(value.item())
    return repr(value)


def training_record(spec, statistics: Statistics, history: dict, model: keras.Model, *,
                    distribution=None, fit_result=None) -> dict:
    """The training record of a spec's run (JSON values): what ``keras-mmoe evaluate`` reads to know
    the spec of a model (``data.spec`` with ``data.base_dir``, the directory its paths are relative
    to), the settings and the statistics pass's counts, and the last epoch's validation metrics."""
    import keras_mmoe

    spec = load_spec(spec)
    source = os.path.abspath(spec.source) if os.path.isfile(spec.source) else None
    validation = {}
    for t in spec.tasks:
        values = {}
        for metric in ("loss", "auc", "rmse"):
            series = history.get(f"val_{t.name}_{metric}")
            if series:
                values[metric] = float(series[-1])
        if values:
            validation[t.name] = values
    training = {
        "epochs": spec.train.epochs, "batch_size": spec.train.batch_size, "learning_rate": spec.train.learning_rate,
        "seed": spec.train.seed, "mixed_precision": spec.train.mixed_precision, "jit_compile": spec.train.jit_compile,
        "max_bad_rows": spec.data.max_bad_rows,
        "strategy": distribution.name if distribution is not None else None,
        "replicas": distribution.num_replicas if distribution is not None else 1,
    }
    if fit_result is not None:
        training.update(steps=fit_result.global_step, resumed_from=fit_result.resumed_from,
                        epochs_done=fit_result.epochs_done)
    return _json_value({
        "written_by": "keras_mmoe.workflow.train",
        "keras_mmoe_version": keras_mmoe.__version__,
        "keras_flavor": keras_mmoe.KERAS_FLAVOR,
        "tensorflow": tf.__version__,
        "model": spec.architecture,
        "model_arguments": {k: v for k, v in model_arguments(spec).items()},
        "parameters": int(model.count_params()),
        "tasks": {t.name: t.type for t in spec.tasks},
        "data": {"source": "spec", "spec": spec.to_dict(), "base_dir": os.path.abspath(spec.base_dir),
                 "spec_file": source},
        "training": training,
        "statistics": {"rows": statistics.rows, "bad_rows": statistics.bad_rows,
                       "validation_rows": statistics.validation_rows,
                       "validation_bad_rows": statistics.validation_bad_rows,
                       "train_files": list(statistics.train_files),
                       "validation_files": list(statistics.validation_files)},
        "validation_metrics": validation,
    })


def spec_from_record(record: dict, where: str = "the training record") -> Spec:
    """The spec a training record was trained with (its paths relative to the recorded ``base_dir``).

    Raises:
        ValueError: the record holds no spec (e.g. a model trained on the built-in data).
    """
    data = record.get("data") if isinstance(record, dict) else None
    if not isinstance(data, dict) or data.get("source") != "spec" or not isinstance(data.get("spec"), dict):
        raise ValueError(f"{where} holds no spec (the model was not trained with one); give the spec")
    base_dir = data.get("base_dir") or "."
    spec = parse_spec(data["spec"], base_dir=base_dir, source=data.get("spec_file") or where)
    return spec


def _fit_distributed(spec, statistics, distribution, log, callbacks, checkpoint_dir, checkpoint_every_steps):
    """:func:`keras_mmoe.training.fit` on the spec's data: each worker reads its shard of the files
    (whole files when there are enough, else every n-th row); ``[train] batch_size`` is the global batch."""
    from keras_mmoe import training

    steps_per_epoch = None
    if distribution.coordinator is not None:  # parameter servers: each worker repeats its own copy
        steps_per_epoch = max(1, math.ceil(statistics.rows / spec.train.batch_size))
        log(f"parameter-server training: {steps_per_epoch} steps an epoch ({statistics.rows} train rows / "
            f"global batch {spec.train.batch_size})")

    def train_fn(input_context):
        return make_dataset(spec, "train", input_context=input_context)

    def validation_fn(input_context):
        return make_dataset(spec, "validation", input_context=input_context)

    weights = compile_kwargs(spec, statistics)["loss_weights"]
    return training.fit(
        lambda: build_model(spec, statistics),
        train_fn,
        {t.name: t.type for t in spec.tasks},
        distribution=distribution,
        validation_dataset_fn=validation_fn if statistics.validation_rows > 0 else None,
        epochs=spec.train.epochs,
        steps_per_epoch=steps_per_epoch,
        optimizer=lambda: keras.optimizers.Adam(spec.train.learning_rate),
        loss_weights=weights,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every_steps=checkpoint_every_steps,
        callbacks=[_EpochLog(spec, log, spec.train.epochs), *callbacks],
        verbose=0,
        log=log,
    )


def train(
    spec,
    *,
    out_dir: Optional[str] = None,
    name: Optional[str] = None,
    overwrite: bool = False,
    epochs: Optional[int] = None,
    version: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
    callbacks: Sequence = (),
    metadata: Optional[dict] = None,
    distribution=None,
    checkpoint_dir: Optional[str] = None,
    checkpoint_every_steps: Optional[int] = None,
) -> TrainResult:
    """Trains the spec's model on its files, saves ``<out_dir>/<name>.keras``, exports the next version.

    Steps: check the spec; one statistics pass (rows, bad rows, vocabularies, means); print the plan;
    build and compile the model; fit on the streaming train split with the validation split's
    metrics each epoch; save and export, each with the training record (:func:`training_record`,
    updated with ``metadata``): ``<name>.json`` beside the ``.keras`` file and
    ``assets.extra/keras_mmoe.json`` in the version. Nothing is written unless every step
    succeeded: the ``.keras`` file is written under a temporary name and renamed after the export
    succeeded, the record last.

    Args:
        spec: a :class:`~keras_mmoe.data.Spec`, a spec file, or a dict.
        out_dir, name, epochs: override ``[train]`` (the command line's flags).
        overwrite: replace an existing ``<name>.keras`` and its record (and ``version``, if given and present).
        version: the export version (default: the next free one).
        log: called with each progress line (default: no output).
        callbacks: more Keras callbacks for ``fit`` (or the distributed loop).
        metadata: entries added to (or replacing those of) the training record.
        distribution: a :class:`keras_mmoe.training.Distribution` (from
            :func:`keras_mmoe.training.make_distribution`, created first in the program): train with
            :func:`keras_mmoe.training.fit` under its strategy; only the chief saves and exports.
            Parameter-server training runs ``ceil(train rows / batch_size)`` steps an epoch.
        checkpoint_dir, checkpoint_every_steps: with ``distribution``: checkpoints a killed run
            resumes from (see :func:`keras_mmoe.training.fit`); removed after the export.

    Raises:
        SpecError, DataError (ValueErrors): bad spec or data, one line.
        FileExistsError: ``<name>.keras`` (or its record) exists and ``overwrite`` is False.
    """
    spec = load_spec(spec)
    changes = {k: v for k, v in (("out_dir", out_dir), ("name", name), ("epochs", epochs)) if v is not None}
    if changes:
        spec = spec.replace_train(**changes)
    if distribution is None and (checkpoint_dir is not None or checkpoint_every_steps is not None):
        raise ValueError("`checkpoint_dir` and `checkpoint_every_steps` need a `distribution` (the training loop "
                         "of keras_mmoe.training; make_distribution('none') for one device)")
    log = log or (lambda message: None)
    out_dir, name = spec.train.out_dir, spec.train.name
    keras_path = os.path.join(out_dir, f"{name}.keras")
    record_file = _saving.record_path(keras_path)
    base_dir = os.path.join(out_dir, name)
    for path in (keras_path, record_file):
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} already exists; choose another name or overwrite it")
    check_model_section(spec)
    check_train_options(spec, distribution)
    if metadata is not None:
        _saving.check_metadata(metadata)

    train_files = resolve_source(spec, "train").files
    log(f"reading the train files: {', '.join(train_files[:3])}" + (", ..." if len(train_files) > 3 else ""))
    statistics = compute_statistics(spec)
    for line in describe(spec, statistics):
        log(line)

    keras.utils.set_random_seed(spec.train.seed)
    settings = (f"{spec.train.epochs} epoch(s), batch size {spec.train.batch_size}, learning rate "
                f"{spec.train.learning_rate:g}" + (f", {spec.train.mixed_precision}" if spec.train.mixed_precision
                                                    != "float32" else "") + (", XLA" if spec.train.jit_compile else ""))
    fit_result = None
    with data_errors(spec), warnings.catch_warnings():
        # Keras 3 warns at the end of every first pass over a dataset of unknown length; it is expected here.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        warnings.filterwarnings("ignore", message="`shuffle=True` was passed")  # the dataset shuffles itself
        if distribution is None:
            model = build_model(spec, statistics)
            compile_model(model, spec, statistics)
            log(f"model: {spec.architecture}, {model.count_params()} parameters; training {settings}")
            train_data = make_dataset(spec, "train")
            validation_data = make_dataset(spec, "validation") if statistics.validation_rows > 0 else None
            history = model.fit(train_data, validation_data=validation_data, epochs=spec.train.epochs, verbose=0,
                                callbacks=[_EpochLog(spec, log, spec.train.epochs), *callbacks]).history
        else:
            log(f"model: {spec.architecture}; training {settings} (global batch) on strategy {distribution.name}")
            fit_result = _fit_distributed(spec, statistics, distribution, log, callbacks, checkpoint_dir,
                                          checkpoint_every_steps)
            model, history = fit_result.model, fit_result.history
    history = {k: [float(v) for v in vs] for k, vs in history.items()}
    record = training_record(spec, statistics, history, model, distribution=distribution, fit_result=fit_result)
    record.update(metadata or {})

    if distribution is not None and not distribution.is_chief:
        log(f"{distribution.task_type} {distribution.task_id} done; the chief saves and exports")
        return TrainResult(model, keras_path, None, statistics, history, record, fit_result)
    os.makedirs(out_dir, exist_ok=True)
    temp_path = os.path.join(out_dir, f".tmp-{name}-{secrets.token_hex(4)}.keras")
    options = dict(serving_options(spec), metadata=record)
    try:
        if fit_result is None:
            model.save(temp_path)
            version_dir = export(model, spec, base_dir, version, overwrite=overwrite, metadata=record)
        else:
            from keras_mmoe.training import save_and_export

            # Saved, reloaded outside the strategy and exported from there; the checkpoints are removed last.
            version_dir = save_and_export(fit_result, temp_path, base_dir, version=version, overwrite=overwrite,
                                          **options)
        os.replace(temp_path, keras_path)
    except BaseException:
        _remove(temp_path)
        raise
    record = dict(record, export_version=int(os.path.basename(version_dir)))
    _saving.write_json(record_file, record)
    log(f"saved {keras_path} and its training record {record_file}; exported {version_dir}")
    return TrainResult(model, keras_path, version_dir, statistics, history, record, fit_result)


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
