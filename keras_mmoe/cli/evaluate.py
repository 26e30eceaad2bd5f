"""``keras-mmoe evaluate``: per-task metrics of a saved model on held-out data.

MODEL is a ``.keras`` file (or, under tf-keras, an ``.h5`` file) or an exported SavedModel
version directory (``saved_models/<name>/<version>``, called through its ``serving_default``
signature with no Keras code). Data:

* ``--data synthetic`` (default): the synthetic draw the model was trained on, read from the
  ``<name>.json`` that ``keras-mmoe train`` writes next to ``<name>.keras`` (the same rows and the
  same held-out 20%), or from ``--settings FILE`` (for an export, ``<base>.json`` beside the
  model's base directory is tried too); the generator flags override it;
* ``--data census --group {1,2}``: the census-income test split (``--data-dir``, ``--max-rows``).

Prints per task: loss (binary cross-entropy or MSE), AUC (binary) or MSE (regression), and with
``--gates`` (Keras models) the gate diagnostics; ``--json PATH`` writes them.
"""

import json
import os

import numpy as np

from keras_mmoe.cli.common import CLIError, say
from keras_mmoe.metrics import task_metrics


def add_parser(subparsers):
    p = subparsers.add_parser(
        "evaluate",
        help="per-task metrics (and gate diagnostics) of a .keras model or an exported SavedModel",
        description=__doc__,
    )
    p.add_argument("model", metavar="MODEL", help="a .keras file or an exported SavedModel version directory")
    p.add_argument("--data", choices=("synthetic", "census"), default="synthetic", help="held-out data (default: synthetic)")
    p.add_argument("--settings", default=None, metavar="FILE",
                   help="synthetic data settings (default: the model's <name>.json written by train)")
    p.add_argument("--samples", type=int, default=None, help="synthetic rows (overrides the settings file)")
    p.add_argument("--dim", type=int, default=None, help="synthetic input dimension (overrides)")
    p.add_argument("--correlation", type=float, default=None, help="synthetic task correlation (overrides)")
    p.add_argument("--seed", type=int, default=None, help="synthetic data seed (overrides)")
    p.add_argument("--group", type=int, choices=(1, 2), default=1, help="census task group (default: 1)")
    p.add_argument("--data-dir", default=None, help="census data directory")
    p.add_argument("--max-rows", type=int, default=None, help="census: use only the first rows of each file")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="evaluate only these tasks")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--gates", action="store_true", help="also print gate diagnostics (Keras models only)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results to this JSON file")
    p.set_defaults(func=run)
    return p


# --- data ------------------------------------------------------------------------------------


def _settings_path(args):
    if args.settings:
        return args.settings
    model = os.path.normpath(args.model)
    candidates = [os.path.splitext(model)[0] + ".json"]
    if os.path.isdir(model):  # saved_models/<name>/<version> -> saved_models/<name>.json
        candidates.append(os.path.dirname(model) + ".json")
    return next((c for c in candidates if os.path.isfile(c)), None)


def synthetic_data(args):
    """``(features dict, labels dict, kinds)`` of the held-out synthetic split."""
    from keras_mmoe.data import make_synthetic

    settings = {}
    path = _settings_path(args)
    if path:
        if not os.path.isfile(path):
            raise CLIError(f"settings file not found: {path}")
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
        say(f"synthetic data settings from {path}")
    elif None in (args.samples, args.dim, args.correlation, args.seed):
        raise CLIError(
            "no training settings found next to the model; give --settings FILE or all of "
            "--samples, --dim, --correlation and --seed"
        )
    for key in ("samples", "dim", "correlation", "seed"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    data = make_synthetic(settings["samples"], dim=settings["dim"], correlation=settings["correlation"],
                          seed=settings["seed"])
    _, test = data.split(settings.get("train_fraction", 0.8), seed=settings["seed"])
    kinds = {t: "regression" for t in test.task_names}
    say(f"{len(test.x)} held-out synthetic rows (d={settings['dim']}, p={settings['correlation']}, seed {settings['seed']})")
    return test.features(), test.y, kinds


def census_data(args):
    from keras_mmoe.data import load_census_income

    data = load_census_income(args.data_dir, group=args.group, max_rows=args.max_rows)
    say(f"{data.num_rows['test']} census-income test rows, group {args.group}")
    return data.features["test"], data.labels["test"], {t: "binary" for t in data.task_names}


# --- models ----------------------------------------------------------------------------------


def _predict_saved_model(path, features, batch_size):
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


def input_names(model):
    """Names of a Keras model's inputs (dict keys for dict inputs)."""
    structure = model.input
    if isinstance(structure, dict):
        return list(structure)
    tensors = structure if isinstance(structure, (list, tuple)) else [structure]
    return [getattr(t, "name", "").split(":")[0] for t in tensors]


def _keras_dataset(model, features, batch_size):
    import tensorflow as tf

    names = input_names(model)
    missing = sorted(set(names) - set(features))
    if missing:
        raise CLIError(f"the data lacks the model's input feature(s) {missing}; it has {sorted(features)}")
    return tf.data.Dataset.from_tensor_slices({k: features[k] for k in names}).batch(batch_size)


def _predict_keras(model, features, batch_size):
    predictions = model.predict(_keras_dataset(model, features, batch_size), verbose=2)
    if not isinstance(predictions, dict):
        raise CLIError("evaluate needs a model with dict outputs keyed by task name (keras_mmoe.models builders)")
    return predictions


def run(args):
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, received {args.batch_size}")
    path = args.model
    is_saved_model = os.path.isdir(path)
    if is_saved_model and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise CLIError(f"{path} is a directory without saved_model.pb (give a version directory, e.g. NAME/1)")
    if not is_saved_model and not os.path.isfile(path):
        raise CLIError(f"model file not found: {path}")
    if args.gates and is_saved_model:
        raise CLIError("--gates needs a .keras model (gate diagnostics read the model's MMoE layer)")

    say("importing TensorFlow")
    features, labels, kinds = census_data(args) if args.data == "census" else synthetic_data(args)
    tasks = list(kinds)
    if args.tasks:
        unknown = [t for t in args.tasks if t not in kinds]
        if unknown:
            raise CLIError(f"unknown task(s) {unknown} for --tasks; the data's tasks are {tasks}")
        tasks = list(args.tasks)

    model = None
    if is_saved_model:
        say(f"calling the serving_default signature of {path}")
        predictions = _predict_saved_model(path, features, args.batch_size)
    else:
        from keras_mmoe.cli.export import load_keras_model

        say(f"loading {path}")
        model = load_keras_model(path)
        predictions = _predict_keras(model, features, args.batch_size)
    missing = [t for t in tasks if t not in predictions]
    if missing:
        raise CLIError(f"the model has no output for task(s) {missing}; its outputs are {sorted(predictions)}")

    results = {"model": path, "data": args.data, "rows": int(len(labels[tasks[0]])), "tasks": {}}
    for task in tasks:
        results["tasks"][task] = task_metrics(kinds[task], labels[task], predictions[task])
        say(f"{task}: " + ", ".join(f"{k} {v:.4f}" for k, v in results["tasks"][task].items()))

    if args.gates:
        from keras_mmoe.diagnostics import diagnose

        try:
            report = diagnose(model, _keras_dataset(model, features, args.batch_size))
        except ValueError as error:
            raise CLIError(f"gate diagnostics: {error}") from None
        print(report.to_markdown())
        results["gates"] = report.to_dict()

    print(json.dumps(results["tasks"], indent=1))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=float)
        say(f"wrote {args.json}")
    return 0
