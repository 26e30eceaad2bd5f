"""``keras-mmoe train``: the main job. Trains a multi-task model and exports it for TF Serving.

With no arguments: MMoE (8 experts x 16 units, towers of 8) on the paper's synthetic data
(d=100, correlation 0.5), a few epochs, then saves ``saved_models/<name>.keras`` and exports
a SavedModel to ``saved_models/<name>/<version>/``; ``<name>.json`` records the data settings
so that ``keras-mmoe evaluate saved_models/<name>.keras`` (or ``.../<name>/<version>``) scores
the same held-out rows. Prints Keras progress per epoch and the test MSE per task.

Example::

    keras-mmoe train --epochs 3 --num-experts 4 --out-dir saved_models
    keras-mmoe train --config train.toml --epochs 10     # the file's settings, 10 epochs
"""

import json
import os
import sys

from keras_mmoe.cli.common import CLIError, check_positive, check_version_free, import_tensorflow, say

MODEL_CHOICES = ("mmoe", "omoe", "shared_bottom", "single_task")
TRAIN_FRACTION = 0.8  # the rest is the held-out split that train and evaluate score


def add_parser(subparsers):
    p = subparsers.add_parser(
        "train",
        help="train a multi-task model on synthetic data and export it for TF Serving",
        description=__doc__,
    )
    p.add_argument("--model", choices=MODEL_CHOICES, default="mmoe", help="architecture (default: mmoe)")
    p.add_argument("--name", default=None, help="model name under --out-dir (default: <model>_synthetic)")
    p.add_argument("--out-dir", default="saved_models", help="where the .keras file and the export go")
    p.add_argument("--version", type=int, default=None, help="export version (default: next free)")
    p.add_argument("--overwrite", action="store_true", help="replace the export version if it exists")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    p.add_argument("--samples", type=int, default=20_000,
                   help="synthetic rows, 80%% train and 20%% held out (default: 20000)")
    p.add_argument("--dim", type=int, default=100, help="synthetic input dimension d (default: 100)")
    p.add_argument("--correlation", type=float, default=0.5,
                   help="task correlation p in [-1, 1], the cosine of the tasks' weight vectors (default: 0.5)")
    p.add_argument("--num-experts", type=int, default=8, help="experts (mmoe, omoe; default: 8)")
    p.add_argument("--expert-units", type=int, nargs="+", default=[16], metavar="UNITS",
                   help="hidden units of each expert, or of the shared bottom / single-task network (default: 16)")
    p.add_argument("--tower-units", type=int, nargs="+", default=[8], metavar="UNITS",
                   help="hidden units of each task tower (default: 8)")
    p.add_argument("--expert-dropout-rate", type=float, default=0.0,
                   help="expert dropout on the gates' softmax in [0, 1), the YouTube fix (default: 0)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the weights (default: 0)")
    p.set_defaults(func=run)
    return p


def _check(args):
    check_positive(args, "epochs", "batch_size", "samples", "dim", "num_experts")
    for flag in ("expert_units", "tower_units"):
        if min(getattr(args, flag)) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be >= 1, received {getattr(args, flag)}")
    if args.samples < 5:
        raise CLIError(f"--samples must be >= 5 (80/20 split), received {args.samples}")
    if not 0.0 <= args.expert_dropout_rate < 1.0:
        raise CLIError(f"--expert-dropout-rate must be in [0, 1), received {args.expert_dropout_rate}")
    if not -1.0 <= args.correlation <= 1.0:
        raise CLIError(f"--correlation must be in [-1, 1], received {args.correlation}")
    if not args.learning_rate > 0:
        raise CLIError(f"--learning-rate must be > 0, received {args.learning_rate}")
    if args.version is not None and args.version < 1:
        raise CLIError(f"--version must be a positive integer, received {args.version}")


def build_model(args, tasks):
    from keras_mmoe import models

    common = dict(tower_units=tuple(args.tower_units))
    if args.model in ("mmoe", "omoe"):
        return models.BUILDERS[args.model](
            args.dim, tasks, num_experts=args.num_experts, expert_units=tuple(args.expert_units),
            expert_dropout_rate=args.expert_dropout_rate, seed=args.seed, **common,
        )
    if args.model == "shared_bottom":
        return models.build_shared_bottom(args.dim, tasks, bottom_units=tuple(args.expert_units), **common)
    return models.build_single_task(args.dim, tasks, hidden_units=tuple(args.expert_units), **common)


def run(args):
    _check(args)
    name = args.name or f"{args.model}_synthetic"
    keras_path = os.path.join(args.out_dir, f"{name}.keras")
    base_dir = os.path.join(args.out_dir, name)

    check_version_free(base_dir, args.version, args.overwrite)  # before the (slow) training
    flavor = import_tensorflow()
    import tensorflow as tf

    from keras_mmoe._keras import keras
    from keras_mmoe.data import make_synthetic
    from keras_mmoe.models import compile_kwargs
    from keras_mmoe.serving import export_for_serving

    tf.random.set_seed(args.seed)
    keras.utils.set_random_seed(args.seed)
    say(f"generating {args.samples} synthetic rows (d={args.dim}, p={args.correlation})")
    data = make_synthetic(args.samples, dim=args.dim, correlation=args.correlation, seed=args.seed)
    train, test = data.split(TRAIN_FRACTION, seed=args.seed)
    say(f"label correlation measured: {data.label_correlation:.4f}")
    tasks = {t: "regression" for t in data.task_names}

    model = build_model(args, tasks)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), **compile_kwargs(tasks))
    say(f"training {args.model} ({model.count_params()} parameters) for {args.epochs} epochs")
    verbose = 1 if sys.stdout.isatty() else 2
    model.fit(
        train.dataset(args.batch_size, seed=args.seed),
        validation_data=test.dataset(args.batch_size, shuffle=False),
        epochs=args.epochs,
        verbose=verbose,
    )
    results = model.evaluate(test.dataset(args.batch_size, shuffle=False), verbose=0, return_dict=True)
    for task in tasks:
        say(f"test {task}: mse {results[f'{task}_mse']:.4f}")

    os.makedirs(args.out_dir, exist_ok=True)
    model.save(keras_path)
    say(f"saved Keras model: {keras_path}")
    version_dir = export_for_serving(model, base_dir, version=args.version, overwrite=args.overwrite)
    say(f"exported SavedModel for TF Serving: {version_dir}")
    settings_path = os.path.join(args.out_dir, f"{name}.json")
    params = data.params
    settings = {
        "written_by": "keras-mmoe train",
        "model": args.model,
        "keras_flavor": flavor,
        "tasks": tasks,
        "data": {"source": "synthetic", "samples": args.samples, "dim": args.dim,
                 "correlation": args.correlation, "scale": params["scale"],
                 "num_sine_terms": params["num_sine_terms"], "noise_stddev": params["noise_stddev"],
                 "task_names": list(data.task_names), "seed": args.seed,
                 "train_fraction": TRAIN_FRACTION, "split_seed": args.seed},
        "arguments": {k: v for k, v in sorted(vars(args).items()) if k not in ("func", "command", "config")},
        "test_rows": len(test.x),
        "test_metrics": {k: float(v) for k, v in results.items()},
        "keras_model": os.path.abspath(keras_path),
        "export": os.path.abspath(version_dir),
    }
    with open(settings_path, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1)
    say(f"saved data settings (for keras-mmoe evaluate): {settings_path}")
    print(version_dir)
    return 0
