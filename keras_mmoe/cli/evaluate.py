"""``keras-mmoe evaluate``: per-task metrics of a saved model on the rows it held out, or on your files.

MODEL is a ``.keras`` file (or, under tf-keras, an ``.h5`` file) or an exported SavedModel
version directory (``saved_models/<name>/<version>``, called through its ``serving_default``
signature with no Keras code). The data come from the training record of what is scored: a
version's own ``assets.extra/keras_mmoe.json``, or the ``<name>.json`` beside ``<name>.keras``
(``--settings FILE`` gives another record). So a model trained on the synthetic data is scored on
its own held-out 20%, and a census model from ``keras-mmoe reproduce census --data-seed N`` on the
test half of its own split. ``--data`` and the data flags replace recorded settings (said aloud,
since the rows then differ); without a record they are required.

Prints per task the loss and MSE (regression) or AUC (binary), each beside the constant
prediction learned from the training labels (the training mean; the base rate), and with
``--gates`` (Keras models) the gate diagnostics (every gate of an MMoE, CGC or PLE layer);
``--json PATH`` writes them.

**Your own files.** A model trained with ``keras-mmoe train --spec`` carries its spec in its
record; ``--spec FILE`` gives one (for a model without a record, or to read the files
differently). ``--data FILES`` (patterns, relative to the current directory) are scored; without
it, the spec's validation split (its ``validation`` files, or the ``validation_fraction`` of the
train rows the model held out). Per task: AUC, cross-entropy and calibration (mean prediction /
mean label) for binary tasks, RMSE and MAE in the label's units for regression tasks; with
``--group-by COLUMN`` (a user or query id column of the files, not necessarily a feature) also
GAUC: each group's AUC weighted by its rows, groups holding one class skipped and counted.
``--max-bad-rows N`` skips up to N malformed rows (counted). A bad column, file or row is one line
naming it, exit code 2.

Example::

    keras-mmoe evaluate saved_models/mmoe_synthetic/1
    keras-mmoe evaluate saved_models/mmoe_synthetic.keras --gates --json results.json
    keras-mmoe evaluate census_export/1 --data-dir ~/data     # census settings from its record
    keras-mmoe evaluate saved_models/ranker/1 --data "data/test-*.csv.gz" --group-by user_id
    keras-mmoe evaluate ranker.keras --spec spec.toml --data data/test.csv --json scores.json
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

from keras_mmoe.cli import common, sources
from keras_mmoe.cli.common import CLIError, add_command, correlation, import_tensorflow, positive_int, say, seed


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "evaluate",
                    help="per-task metrics (and gate diagnostics) of a .keras model or an exported SavedModel",
                    description=__doc__)
    p.add_argument("model", metavar="MODEL", help="a .keras file or an exported SavedModel version directory")
    p.add_argument("--data", nargs="+", default=None, metavar="SOURCE|FILES",
                   help=f"held-out data: a built-in source ({', '.join(sorted(sources.SOURCES))}; default: the source "
                   "in the model's training record), or, for a model trained with a spec, file patterns to score "
                   "(default: the spec's validation split)")
    p.add_argument("--spec", default=None, metavar="FILE",
                   help="the data spec the model was trained with (default: the one in its training record)")
    p.add_argument("--group-by", default=None, metavar="COLUMN",
                   help="spec models: also GAUC of binary tasks over the groups of this column (e.g. a user id)")
    p.add_argument("--max-bad-rows", type=common.non_negative_int, default=None, metavar="N",
                   help="spec models: skip up to N malformed rows (counted) and fail beyond (default: the spec's)")
    p.add_argument("--settings", default=None, metavar="FILE",
                   help="a training record to take the data settings from (default: the model's own)")
    p.add_argument("--samples", type=positive_int, default=None, help="synthetic rows (replaces the recorded value)")
    p.add_argument("--dim", type=positive_int, default=None, help="synthetic input dimension (replaces)")
    p.add_argument("--correlation", type=correlation, default=None, help="synthetic task correlation (replaces)")
    p.add_argument("--seed", type=seed, default=None, help="synthetic data and split seed (replaces)")
    p.add_argument("--group", type=int, choices=(1, 2), default=None, help="census task group (replaces; default 1)")
    p.add_argument("--data-seed", type=seed, default=None,
                   help="census validation/test split seed (replaces; default 0)")
    p.add_argument("--max-rows", type=positive_int, default=None, help="census: only the first rows of each file (replaces)")
    p.add_argument("--data-dir", default=None,
                   help="census data directory (default: $KERAS_MMOE_DATA_DIR or ~/.keras_mmoe/data)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="evaluate only these tasks")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="prediction batch size")
    p.add_argument("--gates", action="store_true", help="also print gate diagnostics (Keras models only)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results to this JSON file")
    p.set_defaults(func=run)
    return p


# --- the model's record ----------------------------------------------------------------------


def find_record(model_path: str, kind: str, settings_file: str | None) -> tuple[dict | None, str | None]:
    """``(record, where)``: the training record of what is scored, or ``(None, None)``."""
    from keras_mmoe import saving

    if settings_file:
        return saving.read_record(settings_file), settings_file
    if kind in ("saved_model", "keras_saved_model"):
        record = saving.read_metadata(model_path)
        if record is not None:
            return record, os.path.join(model_path, saving.METADATA_DIR, saving.METADATA_FILE)
        return None, None
    path = saving.record_path(model_path)
    if os.path.isfile(path):
        return saving.read_record(path), path
    return None, None


def recorded_data(record: dict | None, where: str | None) -> dict | None:
    """The ``data`` settings of a training record, checked."""
    if record is None:
        return None
    data = record.get("data")
    if not isinstance(data, dict) or data.get("source") not in sources.SOURCES:
        raise CLIError(f"{where} is not a keras-mmoe training record: it has no 'data' entry naming one of the "
                       f"sources {sorted(sources.SOURCES)}")
    return data


# --- models ----------------------------------------------------------------------------------


def input_names(model) -> list[str]:
    """Names of a Keras model's inputs (dict keys for dict inputs)."""
    structure = model.input
    if isinstance(structure, dict):
        return list(structure)
    tensors = structure if isinstance(structure, (list, tuple)) else [structure]
    return [getattr(t, "name", "").split(":")[0] for t in tensors]


def keras_dataset(model, features: dict, batch_size: int):
    """A batched ``tf.data.Dataset`` of the model's inputs, taken by name from ``features``."""
    import tensorflow as tf

    names = input_names(model)
    missing = sorted(set(names) - set(features))
    if missing:
        raise CLIError(f"the data lacks the model's input feature(s) {missing}; it has {sorted(features)}")
    return tf.data.Dataset.from_tensor_slices({k: features[k] for k in names}).batch(batch_size)


def predict_keras(model, features: dict, batch_size: int) -> dict:
    """``{output name: np.ndarray}`` of a Keras model with dict outputs."""
    predictions = model.predict(keras_dataset(model, features, batch_size), verbose=0)
    if not isinstance(predictions, dict):
        raise CLIError("evaluate needs a model with dict outputs keyed by task name (keras_mmoe.models builders)")
    return predictions


def predict_saved_model(path: str, features: dict, batch_size: int) -> dict:
    """``{output name: np.ndarray}`` of an export's ``serving_default`` signature."""
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    if "serving_default" not in loaded.signatures:
        raise CLIError(f"{path} has no serving_default signature; signatures: {sorted(loaded.signatures)}")
    fn = loaded.signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    missing = sorted(set(specs) - set(features))
    if missing:
        raise CLIError(f"the data lacks the model's input feature(s) {missing}; it has {sorted(features)}")
    rows = len(next(iter(features.values())))
    outputs = {}
    for start in range(0, rows, batch_size):
        feed = {k: tf.constant(features[k][start:start + batch_size], dtype=specs[k].dtype) for k in specs}
        for name, value in fn(**feed).items():
            outputs.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


#: Flags of the built-in data sources (not of a spec's files).
_SOURCE_FLAGS = ("samples", "dim", "correlation", "seed", "group", "data_seed", "max_rows", "data_dir")
#: Flags of spec models only.
_SPEC_FLAGS = ("group_by", "max_bad_rows")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run(args: argparse.Namespace) -> int:
    from keras_mmoe import saving

    path = args.model
    kind = saving.model_format(path)  # FileNotFoundError / ValueError naming the file
    is_export = kind in ("saved_model", "keras_saved_model")  # directories are called through their signature
    if args.gates and is_export:
        raise CLIError("--gates needs a .keras model (gate diagnostics read the model's MMoE, CGC or PLE layer)")
    record, where = find_record(path, kind, args.settings)
    if args.spec is not None or (record or {}).get("data", {}).get("source") == "spec":
        return run_spec(args, path, record, where)
    given = [name for name in _SPEC_FLAGS if getattr(args, name) is not None]
    if given:
        raise CLIError(f"{_flag(given[0])} applies to models trained on your own files: give --spec FILE")
    if args.data is not None:
        if len(args.data) != 1 or args.data[0] not in sources.SOURCES:
            raise CLIError(f"--data takes a built-in source ({', '.join(sorted(sources.SOURCES))}) for this model, "
                           f"received {' '.join(args.data)}; to score files, give the spec they follow (--spec FILE)")
        args.data = args.data[0]
    recorded = recorded_data(record, where)
    source_name = args.data or (recorded["source"] if recorded else None)
    if source_name is None:
        raise CLIError(f"no training record for {path} (train and export write one); give --settings FILE "
                       "(a training record), or --data census, or --data synthetic with --samples, --dim, "
                       "--correlation and --seed")
    if recorded and recorded["source"] != source_name:
        say(f"scoring on --data {source_name}, not the recorded {recorded['source']} data")
        recorded = None
    source = sources.SOURCES[source_name]
    settings = source.settings(args, recorded)
    if where and recorded:
        say(f"data settings from the training record {where}")

    import_tensorflow()
    held_out = source.held_out(settings, args)
    say(held_out.description)
    kinds = dict(held_out.kinds)
    if record and isinstance(record.get("tasks"), dict) and recorded:
        kinds.update({t: k for t, k in record["tasks"].items() if t in kinds})
    tasks = list(kinds)
    if args.tasks:
        unknown = [t for t in args.tasks if t not in kinds]
        if unknown:
            raise CLIError(f"unknown task(s) {unknown} for --tasks; the data's tasks are {tasks}")
        tasks = list(args.tasks)

    model = None
    if is_export:
        say(f"calling the serving_default signature of {path}")
        predictions = predict_saved_model(path, held_out.features, args.batch_size)
    else:
        say(f"loading {path}")
        model = saving.load_keras_model(path)
        predictions = predict_keras(model, held_out.features, args.batch_size)
    missing = [t for t in tasks if t not in predictions]
    if missing:
        raise CLIError(f"the model has no output for task(s) {missing}; its outputs are {sorted(predictions)}")

    from keras_mmoe.metrics import describe, task_metrics

    results = {"model": path, "data": settings, "rows": int(len(held_out.labels[tasks[0]])), "tasks": {}}
    for task in tasks:
        metrics = task_metrics(kinds[task], held_out.labels[task], predictions[task], held_out.train_labels[task])
        results["tasks"][task] = metrics
        say(f"{task}: {describe(kinds[task], metrics)}")

    def gate_report():
        from keras_mmoe.diagnostics import diagnose

        return diagnose(model, keras_dataset(model, held_out.features, args.batch_size))

    return _report(results, args, gate_report)


def _report(results: dict, args: argparse.Namespace, gate_report) -> int:
    """The end of every evaluate: the gates' report with ``--gates`` (``gate_report()`` builds
    it), the task metrics as JSON on stdout, and ``--json`` written; returns the exit code 0."""
    from keras_mmoe import saving

    if args.gates:
        try:
            report = gate_report()
        except ValueError as error:
            raise CLIError(f"gate diagnostics: {error}") from None
        print(report.to_markdown())
        results["gates"] = report.to_dict()
    print(json.dumps(results["tasks"], indent=1))
    if args.json:
        saving.write_json(args.json, json.loads(json.dumps(results, default=float)))
        say(f"wrote {args.json}")
    return 0


# --- your own files: a spec ------------------------------------------------------------------


def describe_spec_metrics(metrics: dict) -> str:
    """One line of a task's metrics from :func:`keras_mmoe.workflow.evaluate`."""
    if "auc" in metrics:
        text = (f"AUC {metrics['auc']:.4f}, loss {metrics['loss']:.4f}, calibration {metrics['calibration']:.4f} "
                "(mean prediction / mean label)")
        if "gauc" in metrics:
            text += (f", GAUC {metrics['gauc']:.4f} over {metrics['gauc_groups']} groups "
                     f"({metrics['gauc_skipped_groups']} holding one class skipped)")
        return text
    return f"RMSE {metrics['rmse']:.4g}, MAE {metrics['mae']:.4g} (label units)"


def run_spec(args: argparse.Namespace, path: str, record: dict | None, where: str | None) -> int:
    """Scores a spec model on files (``keras_mmoe.workflow.evaluate``)."""
    given = [name for name in _SOURCE_FLAGS if getattr(args, name) is not None]
    if given:
        raise CLIError(f"{_flag(given[0])} applies to the built-in data sources; a spec model is scored on files "
                       "(--data FILES)")
    if args.spec is not None and not os.path.isfile(args.spec):
        raise CLIError(f"spec file not found: {args.spec}")
    import_tensorflow()
    from keras_mmoe import saving, workflow
    from keras_mmoe.data import load_spec

    if args.spec is not None:
        spec = load_spec(args.spec)
    else:
        spec = workflow.spec_from_record(record, where)
        say(f"spec from the training record {where}")
    if args.max_bad_rows is not None:
        spec = spec.replace_data(max_bad_rows=args.max_bad_rows)
    files = [os.path.abspath(os.path.expanduser(p)) for p in args.data] if args.data else None
    task_names = [t.name for t in spec.tasks]
    if args.tasks:
        unknown = [t for t in args.tasks if t not in task_names]
        if unknown:
            raise CLIError(f"unknown task(s) {unknown} for --tasks; the spec's tasks are {task_names}")
    what = f"{len(args.data)} pattern(s)" if files else "the spec's validation split"
    say(f"scoring {path} on {what}" + (f", groups of {args.group_by!r}" if args.group_by else ""))
    result = workflow.evaluate(path, spec, files, group_by=args.group_by, batch_size=args.batch_size)
    tasks = list(args.tasks or task_names)
    say(f"{result['rows']} rows of {len(result['files'])} file(s)"
        + (f" ({result['bad_rows']} malformed rows skipped)" if result["bad_rows"] else ""))
    results = {"model": path, "spec": spec.source, "files": result["files"], "rows": result["rows"],
               "bad_rows": result["bad_rows"], "group_by": args.group_by,
               "tasks": {t: result["tasks"][t] for t in tasks}}
    for task in tasks:
        say(f"{task}: {describe_spec_metrics(results['tasks'][task])}")
    model = saving.load_keras_model(path) if args.gates else None

    def gate_report():
        from keras_mmoe.data import make_dataset
        from keras_mmoe.diagnostics import diagnose

        with warnings.catch_warnings():  # Keras 3 warns at the end of a dataset of unknown length
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            return diagnose(model, make_dataset(spec, "validation", files=files, batch_size=args.batch_size,
                                                shuffle=False).map(lambda x, y: x))

    return _report(results, args, gate_report)
