"""``keras-mmoe evaluate``: per-task metrics of a saved model on the rows it held out.

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

Example::

    keras-mmoe evaluate saved_models/mmoe_synthetic/1
    keras-mmoe evaluate saved_models/mmoe_synthetic.keras --gates --json results.json
    keras-mmoe evaluate census_export/1 --data-dir ~/data     # census settings from its record
"""

from __future__ import annotations

import argparse
import json
import os

from keras_mmoe.cli import sources
from keras_mmoe.cli.common import CLIError, add_command, correlation, import_tensorflow, positive_int, say, seed


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "evaluate",
                    help="per-task metrics (and gate diagnostics) of a .keras model or an exported SavedModel",
                    description=__doc__)
    p.add_argument("model", metavar="MODEL", help="a .keras file or an exported SavedModel version directory")
    p.add_argument("--data", choices=sorted(sources.SOURCES), default=None,
                   help="held-out data (default: the source in the model's training record)")
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


def run(args: argparse.Namespace) -> int:
    from keras_mmoe import saving

    path = args.model
    kind = saving.model_format(path)  # FileNotFoundError / ValueError naming the file
    is_export = kind in ("saved_model", "keras_saved_model")  # directories are called through their signature
    if args.gates and is_export:
        raise CLIError("--gates needs a .keras model (gate diagnostics read the model's MMoE, CGC or PLE layer)")
    record, where = find_record(path, kind, args.settings)
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

    if args.gates:
        from keras_mmoe.diagnostics import diagnose

        try:
            report = diagnose(model, keras_dataset(model, held_out.features, args.batch_size))
        except ValueError as error:
            raise CLIError(f"gate diagnostics: {error}") from None
        print(report.to_markdown())
        results["gates"] = report.to_dict()

    print(json.dumps(results["tasks"], indent=1))
    if args.json:
        saving.write_json(args.json, json.loads(json.dumps(results, default=float)))
        say(f"wrote {args.json}")
    return 0
