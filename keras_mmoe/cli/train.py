"""``keras-mmoe train``: trains a multi-task model and exports it for TF Serving.

With no arguments: MMoE (8 experts x 16 units, towers of 8) on the MMoE paper's synthetic data
(d=100, task correlation 0.5, 20,000 rows, 80% to train on), 10 epochs of Adam at 0.01; then it
prints each task's held-out MSE beside the MSE of predicting the training mean, saves
``saved_models/<name>.keras`` with its training record ``<name>.json``, and exports the next
SavedModel version ``saved_models/<name>/<version>/`` carrying the same record in
``assets.extra/keras_mmoe.json``. ``keras-mmoe evaluate`` reads the record of the model it scores,
so it scores the rows that model held out. An existing ``<name>.keras`` is only replaced with
``--overwrite``.

``--spec spec.toml`` trains on your own files instead (``keras_mmoe.workflow.train``): it prints
the plan (files, rows, features with their vocabulary sizes, tasks), trains with each task's
validation AUC (binary) or RMSE (regression, in the label's units) every epoch, saves
``<out-dir>/<name>.keras`` with its record and exports the next version, whose record holds the
spec, so ``keras-mmoe evaluate VERSION --data FILES`` needs no ``--spec``. The spec's ``[train]``
settings apply; ``--epochs``, ``--batch-size``, ``--learning-rate``, ``--seed``, ``--out-dir``,
``--name``, ``--mixed-precision``, ``--jit-compile`` and ``--max-bad-rows`` replace them (flags
win, as over ``--config``). The model comes from the spec's ``[model]`` table, so the model and
synthetic-data flags do not apply. Bad data beyond ``--max-bad-rows``, a spec mistake or a
pattern matching no file stops the run with one line naming the file, line and column (or the
spec key), exit code 2, and nothing written.

``--strategy`` (with ``--spec``) trains through ``keras_mmoe.training``'s loop on
``tf.distribute``: ``mirrored`` (the local GPUs; ``--devices N`` splits the CPU into N logical
devices), ``multi-worker`` and ``parameter-server`` (the cluster from ``TF_CONFIG``; run the same
command on every task), or ``none``. The spec's ``batch_size`` is the global batch; each worker
reads its share of the files (every n-th file when there are at least as many files as workers,
else every n-th row); only the chief writes the ``.keras`` file and the export.
``--checkpoint-dir DIR`` saves checkpoints every epoch (and every ``--checkpoint-every-steps``
steps) that the same command, started again after a crash, resumes from.

``--mixed-precision mixed_bfloat16`` computes the experts, gates and towers in bfloat16 (float32
variables and outputs); ``--jit-compile`` compiles the training step with XLA. ``mixed_float16``
and ``--jit-compile`` need ``model.fit`` (no ``--strategy``).

``--model cgc`` and ``--model ple`` (Progressive Layered Extraction, ``--num-levels`` levels,
default 2) give each task ``--num-task-experts`` experts of its own besides
``--num-shared-experts`` shared ones; by default MMoE's ``--num-experts`` (8) are split as
``keras_mmoe.models.split_experts`` splits them: half shared, the rest evenly between the
tasks (4 shared + 2 per task), which keeps CGC within 3% of MMoE's parameter count (PLE's second
level adds small experts on the 16-wide level outputs). A spec's ``architecture = "ple"`` uses
the same split of its ``num_experts``.

Example::

    keras-mmoe train --epochs 3 --num-experts 4 --out-dir saved_models
    keras-mmoe train --model ple --num-levels 2 --num-shared-experts 4 --num-task-experts 2
    keras-mmoe train --config train.toml --epochs 10     # the file's settings, 10 epochs
    keras-mmoe train --spec spec.toml --name ranker --epochs 5 --max-bad-rows 100
    keras-mmoe train --spec spec.toml --strategy mirrored --devices 2 --checkpoint-dir ckpt
"""

from __future__ import annotations

import argparse
import os
import sys

from keras_mmoe.cli import sources
from keras_mmoe.cli.evaluate import predict_keras
from keras_mmoe.cli.common import (
    CLIError,
    add_command,
    check_version_free,
    correlation,
    import_tensorflow,
    non_negative_int,
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
#: Fewest rows --samples accepts: 80% train, and a held-out split of at least 2 rows to score.
MIN_SAMPLES = 10
#: Settings that describe the run (recorded); the rest (paths, --overwrite) do not change the model.
_NOT_RECORDED = ("func", "command", "config", "out_dir", "name", "version", "overwrite", "spec", "max_bad_rows",
                 "strategy", "devices", "checkpoint_dir", "checkpoint_every_steps")
#: ``--mixed-precision`` choices: Keras dtype policies of the experts, gates and towers.
MIXED_PRECISION = ("float32", "mixed_bfloat16", "mixed_float16")
#: ``--strategy`` choices (keras_mmoe.training.STRATEGIES, listed here so --help needs no TensorFlow).
STRATEGIES = ("none", "mirrored", "multi-worker", "parameter-server")

#: Defaults of the built-in data path. The parser's defaults are None, so that with --spec a flag
#: given (on the command line or in --config) is told from one left out: the spec's value applies.
BUILTIN_DEFAULTS = {
    "model": "mmoe", "out_dir": "saved_models", "epochs": 10, "batch_size": 256, "samples": 20_000, "dim": 100,
    "correlation": 0.5, "num_experts": 8, "expert_units": [16], "tower_units": [8], "expert_dropout_rate": 0.0,
    "learning_rate": 0.01, "seed": 0, "mixed_precision": "float32", "jit_compile": False,
}
#: Flags of the built-in data and model, and where a spec says the same.
_BUILTIN_ONLY = {
    "model": "[model] architecture", "samples": None, "dim": None, "correlation": None,
    "num_experts": "[model] num_experts", "num_shared_experts": "[model] num_shared_experts",
    "num_task_experts": "[model] num_task_experts", "num_levels": "[model] num_levels",
    "expert_units": "[model] expert_units", "tower_units": "[model] tower_units",
    "expert_dropout_rate": "[model] expert_dropout_rate",
}
#: Flags that replace the spec's ``[train]`` values.
_SPEC_TRAIN_FLAGS = ("epochs", "batch_size", "learning_rate", "seed", "out_dir", "name", "mixed_precision",
                     "jit_compile")
#: Flags of --spec only.
_SPEC_ONLY = ("max_bad_rows", "strategy", "devices", "checkpoint_dir", "checkpoint_every_steps")


def _default(text: str, name: str, spec_key: str | None = None) -> str:
    value = BUILTIN_DEFAULTS[name]
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    return f"{text} (default: {value})" + (f"; with --spec, the spec's {spec_key}" if spec_key else "")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "train",
                    help="train a multi-task model on synthetic data or your own files (--spec) and export it for "
                    "TF Serving", description=__doc__)
    p.add_argument("--spec", default=None, metavar="FILE",
                   help="a data spec (TOML or JSON: files, features, tasks, [model], [train]): train on your own "
                   "CSV or TFRecord files instead of the synthetic data")
    p.add_argument("--model", choices=MODEL_CHOICES, default=None, help=_default("architecture", "model"))
    p.add_argument("--name", default=None,
                   help="model name under --out-dir (default: <model>_synthetic; with --spec, the spec's [train] name)")
    p.add_argument("--out-dir", default=None, help=_default("where the .keras file, its record and the export go",
                                                            "out_dir", "[train] out_dir"))
    p.add_argument("--version", type=positive_int, default=None, help="export version (default: the next free one)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing <name>.keras and its record (and the --version given, if it exists)")
    p.add_argument("--epochs", type=positive_int, default=None, help=_default("training epochs", "epochs", "[train] epochs"))
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=_default("batch size", "batch_size", "[train] batch_size (the global batch under --strategy)"))
    p.add_argument("--samples", type=positive_int, default=None,
                   help=_default(f"synthetic rows, 80%% to train on and 20%% held out (at least {MIN_SAMPLES})", "samples"))
    p.add_argument("--dim", type=positive_int, default=None, help=_default("synthetic input dimension d", "dim"))
    p.add_argument("--correlation", type=correlation, default=None,
                   help=_default("task correlation p in [-1, 1], the cosine of the tasks' weight vectors", "correlation"))
    p.add_argument("--num-experts", type=positive_int, default=None,
                   help=_default("experts (mmoe, omoe); cgc, ple: experts per level, split by default into half shared "
                                 "and the rest evenly between the tasks", "num_experts"))
    p.add_argument("--num-shared-experts", type=non_negative_int, default=None,
                   help="cgc, ple: shared experts per level (default: half of --num-experts)")
    p.add_argument("--num-task-experts", type=non_negative_int, default=None,
                   help="cgc, ple: experts of each task per level (default: the rest of --num-experts split "
                   "evenly between the tasks, at least 1)")
    p.add_argument("--num-levels", type=positive_int, default=None,
                   help="ple: extraction levels (default 2; --model cgc is one level)")
    p.add_argument("--expert-units", type=positive_int, nargs="+", default=None, metavar="UNITS",
                   help=_default("hidden units of each expert, or of the shared bottom / single-task network",
                                 "expert_units"))
    p.add_argument("--tower-units", type=positive_int, nargs="+", default=None, metavar="UNITS",
                   help=_default("hidden units of each task tower", "tower_units"))
    p.add_argument("--expert-dropout-rate", type=rate, default=None,
                   help=_default("expert dropout on the gates' softmax in [0, 1), the YouTube fix (mmoe, omoe, cgc, "
                                 "ple)", "expert_dropout_rate"))
    p.add_argument("--learning-rate", type=positive_float, default=None,
                   help=_default("Adam learning rate", "learning_rate", "[train] learning_rate"))
    p.add_argument("--seed", type=seed, default=None,
                   help=_default("seed of the data, the split and the weights", "seed", "[train] seed"))
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=None,
                   help=_default("dtype policy of the experts, gates and towers (float32 variables and outputs)",
                                 "mixed_precision", "[train] mixed_precision"))
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                   help=_default("compile the training step with XLA (model.compile(jit_compile=True))", "jit_compile",
                                 "[train] jit_compile"))
    p.add_argument("--max-bad-rows", type=non_negative_int, default=None,
                   help="--spec: skip up to N malformed rows (counted and reported) and fail beyond "
                   "(default: the spec's [data] max_bad_rows, 0)")
    p.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="--spec: train on tf.distribute through keras_mmoe.training's loop (multi-worker and "
                   "parameter-server read TF_CONFIG; default: model.fit on one device)")
    p.add_argument("--devices", type=positive_int, default=None,
                   help="--strategy mirrored: split the CPU into N logical devices (CPU machines, tests)")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="--spec: save checkpoints here every epoch and resume from the newest one (storage every "
                   "worker reads; implies --strategy none when no strategy is given)")
    p.add_argument("--checkpoint-every-steps", type=positive_int, default=None, metavar="N",
                   help="--checkpoint-dir: also save every N steps")
    p.set_defaults(func=run)
    return p


def fill_builtin_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Sets the built-in data path's defaults on the flags left out (``None``); returns ``args``."""
    for name, value in BUILTIN_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, list(value) if isinstance(value, list) else value)
    return args


def check_progressive_flags(args: argparse.Namespace) -> None:
    """CLIError for a CGC/PLE sizing flag given to a model that does not use it, or for no expert at all."""
    fill_builtin_defaults(args)
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
    (``{}`` for other models): the flags given, the rest from ``--num-experts`` split by
    :func:`keras_mmoe.models.split_experts` (half shared, the rest evenly between the ``num_tasks``
    tasks, at least one each), as a spec's ``architecture = "ple"`` splits its ``num_experts``."""
    check_progressive_flags(args)
    if args.model not in PROGRESSIVE:
        return {}
    from keras_mmoe.models import split_experts

    shared, own = split_experts(args.num_experts, num_tasks, args.num_shared_experts)
    if args.num_task_experts is not None:
        own = args.num_task_experts
    sizes = {"num_shared_experts": shared, "num_task_experts": own}
    if args.model == "ple":
        sizes["num_levels"] = 2 if args.num_levels is None else args.num_levels
    return sizes


def build_model(args: argparse.Namespace, input_dim: int, tasks: dict):
    """The ``--model`` architecture for ``input_dim`` features and ``tasks`` ({name: kind}), its layers
    under the ``--mixed-precision`` dtype policy."""
    from keras_mmoe import models

    fill_builtin_defaults(args)
    shared = dict(tower_units=tuple(args.tower_units))
    if args.mixed_precision != "float32":
        shared["dtype"] = args.mixed_precision
    if args.model in ("mmoe", "omoe"):
        return models.BUILDERS[args.model](
            input_dim, tasks, num_experts=args.num_experts, expert_units=tuple(args.expert_units),
            expert_dropout_rate=args.expert_dropout_rate, seed=args.seed, **shared,
        )
    if args.model in PROGRESSIVE:
        return models.BUILDERS[args.model](
            input_dim, tasks, expert_units=tuple(args.expert_units), expert_dropout_rate=args.expert_dropout_rate,
            seed=args.seed, **progressive_sizes(args, len(tasks)), **shared,
        )
    if args.model == "shared_bottom":
        return models.build_shared_bottom(input_dim, tasks, bottom_units=tuple(args.expert_units), **shared)
    return models.build_single_task(input_dim, tasks, hidden_units=tuple(args.expert_units), **shared)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_existing(keras_path: str, base_dir: str, args: argparse.Namespace) -> None:
    """CLIError when ``<name>.keras`` or its record exists (without --overwrite) or the --version does."""
    from keras_mmoe import saving

    existing = [p for p in (keras_path, saving.record_path(keras_path)) if os.path.exists(p)]
    if existing and not args.overwrite:  # before the (slow) training
        raise CLIError(f"{existing[0]} already exists (from an earlier train); pass --overwrite to replace "
                       "it and its record, or choose another --name or --out-dir")
    check_version_free(base_dir, args.version, args.overwrite)


def run(args: argparse.Namespace) -> int:
    if args.spec is not None:
        return run_spec(args)
    given = [name for name in _SPEC_ONLY if getattr(args, name, None) is not None]
    if given:
        raise CLIError(f"{_flag(given[0])} applies to training on your own files: give --spec FILE")
    return run_builtin(args)


# --- your own files: --spec ------------------------------------------------------------------


def check_spec_flags(args: argparse.Namespace) -> None:
    """CLIError for a flag of the built-in data or model given with ``--spec``, or flags that need others."""
    for name, key in _BUILTIN_ONLY.items():
        if getattr(args, name, None) is not None:
            where = f"set {key} in the spec" if key else "the data are the spec's files"
            raise CLIError(f"{_flag(name)} applies to the built-in synthetic data, not to --spec ({where})")
    if args.devices is not None and args.strategy != "mirrored":
        raise CLIError(f"--devices splits the CPU for --strategy mirrored, received --strategy {args.strategy}")
    if args.checkpoint_every_steps is not None and args.checkpoint_dir is None:
        raise CLIError("--checkpoint-every-steps needs --checkpoint-dir")
    if not os.path.isfile(args.spec):
        raise CLIError(f"spec file not found: {args.spec}")


def spec_with_flags(args: argparse.Namespace):
    """The spec of ``--spec`` with the flags given replacing its ``[train]`` (and ``max_bad_rows``)
    values; a CLIError for a flag of the built-in data or model."""
    check_spec_flags(args)
    from keras_mmoe.data.spec import load_spec  # (keras_mmoe.data loads TensorFlow)

    spec = load_spec(args.spec)
    changes = {name: getattr(args, name) for name in _SPEC_TRAIN_FLAGS if getattr(args, name) is not None}
    if changes:
        spec = spec.replace_train(**changes)
    if args.max_bad_rows is not None:
        spec = spec.replace_data(max_bad_rows=args.max_bad_rows)
    return spec


def run_spec(args: argparse.Namespace) -> int:
    check_spec_flags(args)  # flag mistakes answer before TensorFlow loads
    import_tensorflow()
    spec = spec_with_flags(args)
    keras_path = os.path.join(spec.train.out_dir, f"{spec.train.name}.keras")
    base_dir = os.path.join(spec.train.out_dir, spec.train.name)
    check_existing(keras_path, base_dir, args)
    strategy = args.strategy or ("none" if args.checkpoint_dir is not None else None)
    distribution = None
    if strategy is not None:
        from keras_mmoe import training

        # First, before any tensor exists (a parameter-server worker or ps serves here until stopped).
        distribution = training.make_distribution(strategy, devices=args.devices, log=say)
    from keras_mmoe import workflow

    result = workflow.train(
        spec, overwrite=args.overwrite, version=args.version, log=say,
        metadata={"written_by": "keras-mmoe train --spec"}, distribution=distribution,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every_steps=args.checkpoint_every_steps,
    )
    if result.version_dir is not None:
        for task, values in result.record.get("validation_metrics", {}).items():
            say(f"validation {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
        print(result.version_dir)
    return 0


# --- the built-in synthetic data -------------------------------------------------------------


def run_builtin(args: argparse.Namespace) -> int:
    from keras_mmoe import saving

    fill_builtin_defaults(args)
    if args.samples < MIN_SAMPLES:
        raise CLIError(f"--samples must be at least {MIN_SAMPLES} (80% to train on, 20% held out to score), "
                       f"received {args.samples}")
    name = args.name or f"{args.model}_synthetic"
    keras_path = os.path.join(args.out_dir, f"{name}.keras")
    record_file = saving.record_path(keras_path)
    base_dir = os.path.join(args.out_dir, name)
    check_existing(keras_path, base_dir, args)
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
    optimizer = keras.optimizers.Adam(args.learning_rate)
    if args.mixed_precision == "mixed_float16":
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)  # float16 gradients underflow without it
    model.compile(optimizer=optimizer, jit_compile=args.jit_compile, **compile_kwargs(data.tasks))
    layout = ""
    if sizes:
        layout = (f"{sizes['num_shared_experts']} shared + {sizes['num_task_experts']} per-task experts"
                  + (f" x {sizes['num_levels']} levels" if "num_levels" in sizes else "") + ", ")
    precision = (f", {args.mixed_precision}" if args.mixed_precision != "float32" else "") + (
        ", XLA" if args.jit_compile else "")
    say(f"training {args.model} ({layout}{model.count_params()} parameters{precision}) for {args.epochs} epochs")
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
