"""``keras-mmoe train``: trains a multi-task model and exports it for TF Serving.

With no arguments: MMoE (8 experts x 16 units, towers of 8) on the MMoE paper's synthetic data
(d=100, task correlation 0.5, 20,000 rows, 80% to train on), 10 epochs of Adam at 0.01; then it
prints each task's held-out MSE beside the MSE of predicting the training mean, saves
``saved_models/<name>.keras`` with its training record ``<name>.json``, and exports the next
SavedModel version ``saved_models/<name>/<version>/`` carrying the same record in
``assets.extra/keras_mmoe.json``. ``keras-mmoe evaluate`` reads the record of the model it scores,
so it scores the rows that model held out. An existing ``<name>.keras`` is only replaced with
``--overwrite``.

``--model cgc`` and ``--model ple`` (Progressive Layered Extraction, ``--num-levels`` levels,
default 2) give each task ``--num-task-experts`` experts of its own besides
``--num-shared-experts`` shared ones; by default MMoE's ``--num-experts`` (8) are split as
``keras_mmoe.models.matched_budget_kwargs`` splits them: half shared, the rest evenly between the
tasks (4 shared + 2 per task), which keeps CGC within 3% of MMoE's parameter count (PLE's second
level adds small experts on the 16-wide level outputs).

Example::

    keras-mmoe train --epochs 3 --num-experts 4 --out-dir saved_models
    keras-mmoe train --model ple --num-levels 2 --num-shared-experts 4 --num-task-experts 2
    keras-mmoe train --config train.toml --epochs 10     # the file's settings, 10 epochs
"""

from __future__ import annotations

import argparse
import os
import sys

from keras_mmoe import _validation
from keras_mmoe.cli import common, sources
from keras_mmoe.cli.evaluate import predict_keras
from keras_mmoe.cli.common import (
    CLIError,
    add_command,
    check_version_free,
    correlation,
    import_tensorflow,
    positive_float,
    positive_int,
    rate,
    say,
    seed,
)

MODEL_CHOICES = ("mmoe", "omoe", "cgc", "ple", "shared_bottom", "single_task")
#: Models with task and shared experts, and the flags that size them (only they accept these flags).
PROGRESSIVE = ("cgc", "ple")
_PROGRESSIVE_FLAGS = {"num_shared_experts": PROGRESSIVE, "num_task_experts": PROGRESSIVE, "num_levels": ("ple",)}
#: ``>= 0`` integers: expert counts of CGC/PLE (0 shared or 0 per task is allowed, not both).
non_negative_int = common._argument_type(_validation.check_non_negative_int, int, "a non-negative integer",
                                         "non_negative_int")
#: Fewest rows --samples accepts: 80% train, and a held-out split of at least 2 rows to score.
MIN_SAMPLES = 10
#: Settings that describe the run (recorded); the rest (paths, --overwrite) do not change the model.
_NOT_RECORDED = ("func", "command", "config", "out_dir", "name", "version", "overwrite")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "train", help="train a multi-task model on synthetic data and export it for TF Serving",
                    description=__doc__)
    p.add_argument("--model", choices=MODEL_CHOICES, default="mmoe", help="architecture")
    p.add_argument("--name", default=None, help="model name under --out-dir (default: <model>_synthetic)")
    p.add_argument("--out-dir", default="saved_models", help="where the .keras file, its record and the export go")
    p.add_argument("--version", type=positive_int, default=None, help="export version (default: the next free one)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing <name>.keras and its record (and the --version given, if it exists)")
    p.add_argument("--epochs", type=positive_int, default=10, help="training epochs")
    p.add_argument("--batch-size", type=positive_int, default=256, help="batch size")
    p.add_argument("--samples", type=positive_int, default=20_000,
                   help=f"synthetic rows, 80%% to train on and 20%% held out (at least {MIN_SAMPLES})")
    p.add_argument("--dim", type=positive_int, default=100, help="synthetic input dimension d")
    p.add_argument("--correlation", type=correlation, default=0.5,
                   help="task correlation p in [-1, 1], the cosine of the tasks' weight vectors")
    p.add_argument("--num-experts", type=positive_int, default=8,
                   help="experts (mmoe, omoe); cgc, ple: experts per level, split by default into half shared "
                   "and the rest evenly between the tasks")
    p.add_argument("--num-shared-experts", type=non_negative_int, default=None,
                   help="cgc, ple: shared experts per level (default: half of --num-experts)")
    p.add_argument("--num-task-experts", type=non_negative_int, default=None,
                   help="cgc, ple: experts of each task per level (default: the rest of --num-experts split "
                   "evenly between the tasks, at least 1)")
    p.add_argument("--num-levels", type=positive_int, default=None,
                   help="ple: extraction levels (default 2; --model cgc is one level)")
    p.add_argument("--expert-units", type=positive_int, nargs="+", default=[16], metavar="UNITS",
                   help="hidden units of each expert, or of the shared bottom / single-task network")
    p.add_argument("--tower-units", type=positive_int, nargs="+", default=[8], metavar="UNITS",
                   help="hidden units of each task tower")
    p.add_argument("--expert-dropout-rate", type=rate, default=0.0,
                   help="expert dropout on the gates' softmax in [0, 1), the YouTube fix (mmoe, omoe, cgc, ple)")
    p.add_argument("--learning-rate", type=positive_float, default=0.01, help="Adam learning rate")
    p.add_argument("--seed", type=seed, default=0, help="seed of the data, the split and the weights")
    p.set_defaults(func=run)
    return p


def check_progressive_flags(args: argparse.Namespace) -> None:
    """CLIError for a CGC/PLE sizing flag given to a model that does not use it, or for no expert at all."""
    for flag, models in _PROGRESSIVE_FLAGS.items():
        if getattr(args, flag, None) is not None and args.model not in models:
            hint = " (cgc is one level; use --model ple)" if flag == "num_levels" and args.model == "cgc" else ""
            raise CLIError(f"--{flag.replace('_', '-')} applies to --model {' or '.join(models)}, not "
                           f"{args.model}{hint}")
    if args.num_shared_experts == 0 and args.num_task_experts == 0:
        raise CLIError("--num-shared-experts 0 and --num-task-experts 0 leave the task gates no expert; "
                       "give at least one")


def progressive_sizes(args: argparse.Namespace, num_tasks: int) -> dict:
    """``num_shared_experts``, ``num_task_experts`` (and ``num_levels`` for ple) of ``--model cgc/ple``
    (``{}`` for other models): the flags given, the rest from ``--num-experts`` split as
    :func:`keras_mmoe.models.matched_budget_kwargs` splits MMoE's experts (half shared, the rest
    evenly between the ``num_tasks`` tasks, at least one each)."""
    check_progressive_flags(args)
    if args.model not in PROGRESSIVE:
        return {}
    shared = args.num_shared_experts
    if shared is None:
        shared = max(1, args.num_experts // 2)
    own = args.num_task_experts
    if own is None:
        own = max(1, (args.num_experts - shared) // num_tasks)
    sizes = {"num_shared_experts": shared, "num_task_experts": own}
    if args.model == "ple":
        sizes["num_levels"] = 2 if args.num_levels is None else args.num_levels
    return sizes


def build_model(args: argparse.Namespace, input_dim: int, tasks: dict):
    """The ``--model`` architecture for ``input_dim`` features and ``tasks`` ({name: kind})."""
    from keras_mmoe import models

    common = dict(tower_units=tuple(args.tower_units))
    if args.model in ("mmoe", "omoe"):
        return models.BUILDERS[args.model](
            input_dim, tasks, num_experts=args.num_experts, expert_units=tuple(args.expert_units),
            expert_dropout_rate=args.expert_dropout_rate, seed=args.seed, **common,
        )
    if args.model in PROGRESSIVE:
        return models.BUILDERS[args.model](
            input_dim, tasks, expert_units=tuple(args.expert_units), expert_dropout_rate=args.expert_dropout_rate,
            seed=args.seed, **progressive_sizes(args, len(tasks)), **common,
        )
    if args.model == "shared_bottom":
        return models.build_shared_bottom(input_dim, tasks, bottom_units=tuple(args.expert_units), **common)
    return models.build_single_task(input_dim, tasks, hidden_units=tuple(args.expert_units), **common)


def run(args: argparse.Namespace) -> int:
    from keras_mmoe import saving

    if args.samples < MIN_SAMPLES:
        raise CLIError(f"--samples must be at least {MIN_SAMPLES} (80% to train on, 20% held out to score), "
                       f"received {args.samples}")
    name = args.name or f"{args.model}_synthetic"
    keras_path = os.path.join(args.out_dir, f"{name}.keras")
    record_file = saving.record_path(keras_path)
    base_dir = os.path.join(args.out_dir, name)
    existing = [p for p in (keras_path, record_file) if os.path.exists(p)]
    if existing and not args.overwrite:  # before the (slow) training
        raise CLIError(f"{existing[0]} already exists (from an earlier train); pass --overwrite to replace "
                       "it and its record, or choose another --name or --out-dir")
    check_version_free(base_dir, args.version, args.overwrite)
    check_progressive_flags(args)  # before the slow part

    flavor = import_tensorflow()
    import tensorflow as tf

    import keras_mmoe
    from keras_mmoe._keras import keras
    from keras_mmoe.metrics import describe, task_metrics
    from keras_mmoe.models import compile_kwargs
    from keras_mmoe.serving import export_for_serving

    tf.random.set_seed(args.seed)
    keras.utils.set_random_seed(args.seed)
    data = sources.synthetic_training_data(
        {"source": "synthetic", "samples": args.samples, "dim": args.dim, "correlation": args.correlation,
         "seed": args.seed})
    for note in data.notes:
        say(note)

    model = build_model(args, data.input_dim, data.tasks)
    sizes = progressive_sizes(args, len(data.tasks))
    vars(args).update(sizes)  # the record keeps the CGC/PLE sizes used
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), **compile_kwargs(data.tasks))
    layout = ""
    if sizes:
        layout = (f"{sizes['num_shared_experts']} shared + {sizes['num_task_experts']} per-task experts"
                  + (f" x {sizes['num_levels']} levels" if "num_levels" in sizes else "") + ", ")
    say(f"training {args.model} ({layout}{model.count_params()} parameters) for {args.epochs} epochs")
    held_out = data.held_out
    model.fit(
        data.train(args.batch_size, args.seed),
        validation_data=tf.data.Dataset.from_tensor_slices((held_out.features, held_out.labels)).batch(1024),
        epochs=args.epochs,
        shuffle=False,  # the dataset shuffles itself (a seeded buffer over all training rows)
        verbose=1 if sys.stdout.isatty() else 2,
    )
    predictions = predict_keras(model, held_out.features, 1024)
    metrics = {}
    for task, kind in data.tasks.items():
        metrics[task] = task_metrics(kind, held_out.labels[task], predictions[task], held_out.train_labels[task])
        say(f"held-out {task}: {describe(kind, metrics[task])}")

    record = {
        "written_by": "keras-mmoe train",
        "keras_mmoe_version": keras_mmoe.__version__,
        "keras_flavor": flavor,
        "tensorflow": tf.__version__,
        "model": args.model,
        "tasks": data.tasks,
        "data": data.settings,
        "training": {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_RECORDED},
        "held_out_rows": len(next(iter(held_out.labels.values()))),
        "held_out_metrics": metrics,
    }
    version_dir = export_for_serving(model, base_dir, version=args.version, overwrite=args.overwrite,
                                     metadata=record)
    say(f"exported SavedModel for TF Serving (with its training record): {version_dir}")
    saving.save_keras_model(model, keras_path, overwrite=args.overwrite)
    saving.write_json(record_file, dict(record, export_version=int(os.path.basename(version_dir))))
    say(f"saved Keras model {keras_path} and its training record {record_file}")
    print(version_dir)
    return 0
